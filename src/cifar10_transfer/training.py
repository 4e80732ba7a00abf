"""Training engine: baselines, the frozen-backbone head stage and fine-tuning.

``run_experiment`` is what the CLI and the notebooks call. Each run writes a folder
with ``model.keras``, ``metrics.json``, ``history.csv`` and ``predictions.npz`` (the
test-set probabilities, so evaluation never re-runs the model).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from cifar10_transfer import (
    __version__,
    config,
    data,
    distribute,
    evaluation,
    fileio,
    models,
)

EXPERIMENTS = ("baseline_cnn", "two_layer_fc", "three_layer_cnn", "head", "finetune")
SCHEDULES = ("plateau", "cosine", "constant")
PLATEAU_FACTOR = 0.2  # ReduceLROnPlateau: multiply the learning rate by this...
PLATEAU_PATIENCE = 2  # ...after this many epochs without val_loss improvement
MIN_LEARNING_RATE = 1e-7
GRADUAL_DECAY = 0.5  # gradual unfreezing: each step's learning rate relative to the previous


# ---------------------------------------------------------------- environment


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and the backend (``keras.utils.set_random_seed``)."""
    keras.utils.set_random_seed(seed)


def configure_precision(precision: str = "auto") -> str:
    """Set the global dtype policy; "auto" is mixed bfloat16 on a GPU, float32 on a CPU."""
    if precision == "auto":
        has_gpu = any(d.startswith("gpu") for d in keras.distribution.list_devices())
        precision = "mixed_bfloat16" if has_gpu else "float32"
    if precision not in ("float32", "mixed_bfloat16", "mixed_float16"):
        raise ValueError(
            f"precision must be auto, float32, mixed_bfloat16 or mixed_float16, got {precision!r}"
        )
    keras.config.set_dtype_policy(precision)
    return precision


def _git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=config.CHECKOUT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return result.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _device_name() -> str:
    devices = keras.distribution.list_devices()
    if any(d.startswith("gpu") for d in devices):
        try:
            result = subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
            return result.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            return "gpu"
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def environment() -> dict:
    """Provenance of a run: code version, backend, library versions and device."""
    backend = keras.backend.backend()
    versions = {
        "python": platform.python_version(),
        "keras": keras.__version__,
        "numpy": np.__version__,
        "cifar10_transfer": __version__,
    }
    backend_module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend)
    if backend_module:
        versions[backend_module] = __import__(backend_module).__version__
    return {
        "backend": backend,
        "versions": versions,
        "device": _device_name(),
        "git_commit": _git_commit(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# ---------------------------------------------------------------- stages


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the epoch's learning rate to the logs (for history.csv and the curves)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(
                keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
            )


def _callbacks(out_dir: Path, schedule: str, patience: int, resume: bool, extra=()) -> list:
    callbacks = [
        keras.callbacks.TerminateOnNaN(),
        # Resume: restores the model, optimizer and epoch after Ctrl-C or a killed process.
        keras.callbacks.BackupAndRestore(str(out_dir / "backup")),
        keras.callbacks.EarlyStopping(
            monitor="val_accuracy", patience=patience, restore_best_weights=True
        ),
        keras.callbacks.ModelCheckpoint(
            str(out_dir / "checkpoint.keras"), monitor="val_accuracy", save_best_only=True
        ),
    ]
    if schedule == "plateau":
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss",
                factor=PLATEAU_FACTOR,
                patience=PLATEAU_PATIENCE,
                min_lr=MIN_LEARNING_RATE,
            )
        )
    # The logger must run before CSVLogger so the learning rate reaches history.csv.
    callbacks.append(LearningRateLogger())
    callbacks.append(keras.callbacks.CSVLogger(str(out_dir / "history.part.csv"), append=resume))
    return callbacks + list(extra)


def _optimizer(learning_rate: float, schedule: str, epochs: int, steps_per_epoch: int):
    if schedule not in SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            learning_rate, decay_steps=max(epochs * steps_per_epoch, 1)
        )
    return keras.optimizers.Adam(learning_rate)


def compile_model(
    model,
    learning_rate: float,
    schedule: str = "constant",
    epochs: int = 1,
    steps_per_epoch: int = 1,
    label_smoothing: float = 0.0,
) -> None:
    """Adam + categorical cross-entropy (one-hot targets, so label smoothing works)."""
    model.compile(
        optimizer=_optimizer(learning_rate, schedule, epochs, steps_per_epoch),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=["accuracy"],
    )


def one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(config.NUM_CLASSES, dtype="float32")[labels]


def fit(
    model,
    x_train,
    y_train,
    x_val,
    y_val,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    schedule: str,
    patience: int,
    label_smoothing: float,
    out_dir: Path,
    resume: bool = False,
    callbacks=(),
) -> pd.DataFrame:
    """Compile and fit one stage; return its history (one row per epoch)."""
    steps_per_epoch = int(np.ceil(len(x_train) / batch_size))
    compile_model(model, learning_rate, schedule, epochs, steps_per_epoch, label_smoothing)
    # On several machines each process feeds its own slice, batch_size / processes at a time.
    x_train, y_train, x_val, y_val = map(distribute.process_slice, (x_train, y_train, x_val, y_val))
    model.fit(
        x_train,
        one_hot(y_train),
        validation_data=(x_val, one_hot(y_val)),
        epochs=epochs,
        batch_size=batch_size // distribute.process_count(),
        shuffle=True,
        callbacks=_callbacks(out_dir, schedule, patience, resume, callbacks),
        verbose=1 if os.environ.get("CIFAR10_VERBOSE", "1") != "0" else 2,
    )
    part = out_dir / "history.part.csv"
    # CSVLogger numbers epochs from 0 per stage; run_experiment renumbers across stages.
    history = pd.read_csv(part).drop(columns=["epoch"])
    part.unlink()
    return history


def cached_features(model, splits, cache_file: Path, batch_size: int) -> dict:
    """Pooled backbone features for train/val/test, computed once and kept on disk."""
    if distribute.on_every_process(cache_file.exists()):
        with np.load(cache_file, allow_pickle=False) as stored:
            return {name: stored[name] for name in stored.files}
    extractor = models.feature_extractor(model)
    features = {}
    for split in ("train", "val", "test"):
        images = getattr(splits, f"x_{split}")
        print(f"extracting {split} features: {len(images)} images", flush=True)
        features[split] = distribute.predict(extractor, images, batch_size)
    if distribute.is_chief():
        with fileio.atomic_path(cache_file) as temporary:
            np.savez(temporary, **features)
    return features


def _features_key(profile: config.Profile, splits) -> str:
    """Cache key: everything that changes the features."""
    digest = hashlib.sha256()
    for part in (
        profile.backbone,
        str(profile.weights),
        profile.image_size,
        splits.x_train.shape,
        splits.x_test.shape,
        profile.seed,
    ):
        digest.update(str(part).encode())
    for array in (splits.x_train[:64], splits.x_val[:64], splits.x_test[:64]):
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def train_head(
    model,
    splits,
    profile: config.Profile,
    out_dir: Path,
    resume: bool = False,
    cache_features: bool = True,
    callbacks=(),
):
    """Head stage with the backbone frozen. Returns (history, test_probabilities).

    With ``cache_features`` the backbone runs once per image and the head trains on the
    stored features: the same head weights drop into ``model`` unchanged. Without it the
    frozen backbone runs every epoch (needed only when augmenting in this stage).
    """
    models.set_trainable(model, "head")
    settings = dict(
        epochs=profile.head_epochs,
        batch_size=profile.batch_size,
        learning_rate=profile.head_learning_rate,
        schedule=profile.lr_schedule,
        patience=profile.early_stopping_patience,
        label_smoothing=profile.label_smoothing,
        out_dir=out_dir,
        resume=resume,
        callbacks=callbacks,
    )
    if not cache_features:
        history = fit(model, splits.x_train, splits.y_train, splits.x_val, splits.y_val, **settings)
        return history, distribute.predict(model, splits.x_test, profile.batch_size)
    cache_file = (
        config.RUNS_DIR
        / "features"
        / f"{profile.backbone}-{profile.image_size}px-{_features_key(profile, splits)}.npz"
    )
    features = cached_features(model, splits, cache_file, profile.batch_size)
    head = model.get_layer("head")
    history = fit(
        head, features["train"], splits.y_train, features["val"], splits.y_val, **settings
    )
    return history, distribute.predict(head, features["test"], profile.batch_size)


def fine_tune(
    model, splits, profile: config.Profile, out_dir: Path, resume: bool = False, callbacks=()
) -> pd.DataFrame:
    """Unfreeze per ``profile.unfreeze`` (recompiling each time) and fit with augmentation."""
    if profile.unfreeze == "gradual":
        steps = models.gradual_steps(len(model.get_layer("backbone").layers))
        epochs_per_step = max(profile.finetune_epochs // len(steps), 1)
    else:
        steps, epochs_per_step = [profile.unfreeze], profile.finetune_epochs
    histories = []
    for index, strategy in enumerate(steps):
        models.set_trainable(model, strategy, train_bn=profile.train_bn)
        history = fit(
            model,
            splits.x_train,
            splits.y_train,
            splits.x_val,
            splits.y_val,
            epochs=epochs_per_step,
            batch_size=profile.batch_size,
            learning_rate=profile.finetune_learning_rate * GRADUAL_DECAY**index,
            schedule=profile.lr_schedule,
            patience=profile.early_stopping_patience,
            label_smoothing=profile.label_smoothing,
            out_dir=out_dir,
            resume=resume,
            callbacks=callbacks,
        )
        history["unfreeze"] = strategy
        histories.append(history)
    return pd.concat(histories, ignore_index=True)


# ---------------------------------------------------------------- runs


def run_dir(profile_name: str, experiment: str) -> Path:
    return config.RUNS_DIR / profile_name / experiment


def _prepare_out_dir(out_dir: Path, resume: bool) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        # A fresh run must not pick up an interrupted run's backup.
        shutil.rmtree(out_dir / "backup", ignore_errors=True)
        (out_dir / "history.part.csv").unlink(missing_ok=True)


def save_model(model, path: Path) -> None:
    with fileio.atomic_path(path, suffix=".keras") as temporary:
        model.save(temporary)


def run_experiment(
    experiment: str,
    profile: str | config.Profile = "quick",
    data_source=None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    devices=None,
    splits=None,
    callbacks=(),
    **overrides,
) -> dict:
    """Train one experiment end to end and write its run folder; return metrics.json's dict.

    ``profile`` names a profile (or is one); ``overrides`` replace its settings, e.g.
    ``run_experiment("head", "quick", backbone="resnet50", head_epochs=5)``.
    ``splits`` (from ``data.make_splits``) skips loading; ``callbacks`` are extra Keras
    callbacks (e.g. for tests).
    """
    if experiment not in EXPERIMENTS:
        raise ValueError(f"experiment must be one of {EXPERIMENTS}, got {experiment!r}")
    if isinstance(profile, str):
        profile = config.get_profile(profile, **overrides)
    else:
        profile = config.override(profile, **overrides)
    out_dir = Path(out_dir) if out_dir else run_dir(profile.name, experiment)
    started = time.perf_counter()
    batch_size = (
        profile.baseline_batch_size if experiment in models.BASELINES else profile.batch_size
    )
    # First: on several machines this joins the cluster, which must precede any JAX device use.
    strategy = distribute.setup(devices, batch_size)
    set_seed(profile.seed)
    precision = configure_precision()
    if splits is None:
        splits = data.load_splits(profile, data_source)
    strategy.check_splits(splits)
    # Only the chief writes the run folder; other processes keep their Keras working files
    # (backup for resuming, checkpoint) apart and delete them at the end.
    work_dir = out_dir if distribute.is_chief() else distribute.worker_dir(out_dir)
    _prepare_out_dir(work_dir, resume)
    head_dir = out_dir.parent / "head"
    if experiment == "finetune" and not distribute.on_every_process(
        (head_dir / "model.keras").exists()
    ):
        # Fine-tuning starts from the head run; train it first, as its own run folder.
        run_experiment("head", profile, out_dir=head_dir, devices=devices, splits=splits)

    extra = {}
    with strategy.scope():
        if experiment in models.BASELINES:
            model = models.BASELINES[experiment](
                augment=profile.baseline_augment, seed=profile.seed
            )
            history = fit(
                model,
                splits.x_train,
                splits.y_train,
                splits.x_val,
                splits.y_val,
                epochs=profile.baseline_epochs,
                batch_size=profile.baseline_batch_size,
                learning_rate=profile.baseline_learning_rate,
                schedule=profile.lr_schedule,
                patience=profile.early_stopping_patience,
                label_smoothing=profile.label_smoothing,
                out_dir=work_dir,
                resume=resume,
                callbacks=callbacks,
            )
            history["stage"] = "baseline"
            probabilities = distribute.predict(model, splits.x_test, batch_size)
        elif experiment == "head":
            model = build_transfer_model(profile)
            history, probabilities = train_head(
                model, splits, profile, work_dir, resume, callbacks=callbacks
            )
            history["stage"] = "head"
        else:
            model = keras.saving.load_model(head_dir / "model.keras", safe_mode=True)
            head_history = pd.read_csv(head_dir / "history.csv").drop(columns=["epoch"])
            history = fine_tune(model, splits, profile, work_dir, resume, callbacks)
            history["stage"] = "finetune"
            history = pd.concat([head_history, history], ignore_index=True)
            probabilities = distribute.predict(model, splits.x_test, profile.batch_size)
            tta = evaluation.predict_with_tta(
                distribute.Predictor(model),
                splits.x_test,
                batch_size=profile.batch_size,
                probabilities=probabilities,
            )
            extra["tta_test_accuracy"] = evaluation.accuracy(splits.y_test, tta)

    report = evaluation.evaluate_predictions(splits.y_test, probabilities, splits.class_names)
    history.insert(0, "epoch", range(1, len(history) + 1))
    metrics = {
        "experiment": experiment,
        "test_accuracy": report["accuracy"],
        "test_loss": report["loss"],
        **extra,
        "ece": report["ece"],
        "per_class_accuracy": {
            name: report["per_class"][name]["recall"] for name in splits.class_names
        },
        "epochs": int((history["stage"] == history["stage"].iloc[-1]).sum()),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "seed": profile.seed,
        "precision": precision,
        "device_count": strategy.device_count,
        **environment(),
        "backbone": None if experiment in models.BASELINES else profile.backbone,
        "image_size": 32 if experiment in models.BASELINES else profile.image_size,
        "data": {
            "source": splits.source,
            "verified": splits.verified,
            "train_size": len(splits.x_train),
            "val_size": len(splits.x_val),
            "test_size": len(splits.x_test),
        },
        "class_names": list(splits.class_names),
        "profile": profile.to_dict(),
    }
    if distribute.is_chief():
        save_model(model, out_dir / "model.keras")
        with fileio.atomic_path(out_dir / "predictions.npz") as temporary:
            np.savez(temporary, y_true=splits.y_test, probabilities=probabilities)
        fileio.write_text(out_dir / "history.csv", history.to_csv(index=False))
        fileio.write_json(out_dir / "metrics.json", metrics)
    else:
        shutil.rmtree(work_dir)
    # Fine-tuning loads the head run's model next: wait until the chief has written it.
    distribute.barrier("run folder written")
    return metrics


def build_transfer_model(profile: config.Profile):
    """``models.transfer_model`` with the profile's backbone, size, head and augmentation."""
    return models.transfer_model(
        backbone=profile.backbone,
        weights=profile.weights,
        image_size=profile.image_size,
        head=profile.head,
        head_units=profile.head_units,
        dropout_rate=profile.dropout_rate,
        augment=profile.augment,
        train_bn=profile.train_bn,
        seed=profile.seed,
    )


def predict(model, images: np.ndarray, batch_size: int = 256):
    """Return (predicted class names, probabilities) for uint8 images (N, 32, 32, 3)."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.shape[1:] != config.IMAGE_SHAPE or images.dtype != np.uint8:
        raise ValueError(
            f"images must be uint8 of shape (N, 32, 32, 3), got {images.dtype} {images.shape}"
        )
    probabilities = model.predict(images, batch_size=batch_size, verbose=0)
    return [config.CLASS_NAMES[i] for i in probabilities.argmax(axis=1)], probabilities
