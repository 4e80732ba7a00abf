"""Training engine: baselines, the frozen-backbone head stage and fine-tuning.

``run_experiment`` is what the CLI and the notebooks call. Each run writes a folder
with ``model.keras``, ``metrics.json``, ``history.csv`` and ``predictions.npz`` (the
test-set probabilities, so evaluation never re-runs the model).
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import re
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


# NVIDIA GPUs have bfloat16 tensor cores from compute capability 8.0 (Ampere: A100) on. Below
# that (a T4 is 7.5, a V100 7.0) bfloat16 runs at float32 speed with extra casts, while
# float16 has tensor cores; float16's narrow range needs loss scaling, which Keras adds
# itself (LossScaleOptimizer) when a model is compiled under "mixed_float16".
BFLOAT16_MIN_CAPABILITY = (8, 0)


@functools.cache
def gpu_info() -> dict | None:
    """Name and compute capability of the first NVIDIA GPU (from nvidia-smi, whatever the
    backend); None when Keras sees no GPU. The capability is None when nvidia-smi is missing."""
    if not any(d.startswith("gpu") for d in distribute.list_devices()):
        return None
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        name, capability = (part.strip() for part in result.stdout.splitlines()[0].split(","))
        major, minor = capability.split(".")
        return {"name": name, "compute_capability": (int(major), int(minor))}
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return {"name": "gpu", "compute_capability": None}


def auto_precision(gpu: dict | None) -> tuple[str, str]:
    """The dtype policy "auto" picks for ``gpu`` (``gpu_info()``), and why."""
    if gpu is None:
        return "float32", "no GPU: mixed precision does not speed up a CPU"
    capability = gpu["compute_capability"]
    if capability is None:
        return "mixed_float16", f"{gpu['name']}: compute capability unknown, float16 runs on all"
    shown = ".".join(map(str, capability))
    if tuple(capability) >= BFLOAT16_MIN_CAPABILITY:
        return "mixed_bfloat16", f"{gpu['name']}: compute capability {shown} has bfloat16 units"
    return (
        "mixed_float16",
        f"{gpu['name']}: compute capability {shown} < 8.0 has no bfloat16 units; "
        "float16 with loss scaling",
    )


def configure_precision(precision: str = "auto") -> str:
    """Set the global dtype policy and return it; "auto" follows ``auto_precision``."""
    if precision not in config.PRECISIONS:
        choices = ", ".join(config.PRECISIONS)
        raise ValueError(f"precision must be one of {choices}, got {precision!r}")
    if precision == "auto":
        precision, reason = auto_precision(gpu_info())
        print(f"precision: {precision} (auto; {reason})", flush=True)
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
    gpu = gpu_info()
    if gpu is not None:
        return gpu["name"]
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


# ---------------------------------------------------------------- CPU guard

# Where the CPU cost model of check_accelerator finds its measured throughput.
CPU_MEASUREMENTS = config.CHECKOUT / "benchmarks" / "results"
CIFAR10_TRAIN_IMAGES, CIFAR10_TEST_IMAGES = 50_000, 10_000
# A forward pass costs about a third of a training step (whose backward pass costs about two
# forward passes).
FORWARD_COST = 1 / 3


def has_accelerator() -> bool:
    return any(not device.startswith("cpu") for device in distribute.list_devices())


def cpu_throughput(backbone: str, results_dir: Path = CPU_MEASUREMENTS) -> dict | None:
    """The fastest CPU training throughput of ``backbone`` that benchmarks/throughput.py (alone
    or within compare.py) wrote to ``results_dir``; None without one.

    Fastest per pixel, because other work on a CPU only ever slows a measurement down.
    """
    best = None
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            result = fileio.read_json(path)
        except (OSError, ValueError):
            continue
        if result.get("benchmark") == "compare":
            result = result.get("ours") or {}
        if (
            result.get("benchmark") != "throughput"
            or result.get("backbone") != backbone
            or not str(result.get("device", "")).startswith("cpu")
        ):
            continue
        pixels_per_second = result["images_per_second"] * result["image_size"] ** 2
        if best is None or pixels_per_second > best["pixels_per_second"]:
            cores = re.search(r"(\d+) cores", result["device"])
            best = {
                "images_per_second": result["images_per_second"],
                "image_size": result["image_size"],
                "pixels_per_second": pixels_per_second,
                "device": result["device"],
                "cores": int(cores.group(1)) if cores else None,
                "file": path.name,
            }
    return best


def cpu_seconds_estimate(profile: config.Profile, measurement: dict) -> float:
    """Estimated CPU seconds of ``profile``'s head and fine-tuning stages (a cost model, not a
    measurement).

    Work, in training-step images: the head stage passes train + val + test once through the
    backbone (cached features; the head's own epochs are negligible), fine-tuning trains on
    the training images every epoch, validates every epoch and predicts the test images
    twice (flip TTA); a forward pass counts FORWARD_COST of a step, every layer trains. Cost
    per image: 1 / the measured images/s, times (image_size / measured size)^2 since a
    convolutional network's work grows with its input's pixels, times measured cores / this
    machine's cores.
    """
    val = profile.val_size
    train = profile.train_size or CIFAR10_TRAIN_IMAGES - val
    test = profile.test_size or CIFAR10_TEST_IMAGES
    head = (train + val + test) * FORWARD_COST
    finetune = profile.finetune_epochs * (train + val * FORWARD_COST) + 2 * test * FORWARD_COST
    seconds_per_image = 1 / measurement["images_per_second"]
    seconds_per_image *= (profile.image_size / measurement["image_size"]) ** 2
    if measurement["cores"]:
        seconds_per_image *= measurement["cores"] / (os.cpu_count() or 1)
    return (head + finetune) * seconds_per_image


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:,.0f} hours" if seconds >= 7200 else f"{seconds / 60:,.0f} minutes"


def check_accelerator(profile: config.Profile, results_dir: Path = CPU_MEASUREMENTS) -> None:
    """Refuse to start a GPU profile (``needs_accelerator``) on a CPU, saying how long it would
    take there; with ``allow_cpu`` print that as a warning and go on."""
    if not profile.needs_accelerator or has_accelerator():
        return
    measurement = cpu_throughput(profile.backbone, results_dir)
    if measurement is None:
        estimate = (
            f"an unknown time (no CPU throughput of {profile.backbone} in {results_dir} to "
            "estimate it from: benchmarks/throughput.py measures one)"
        )
    else:
        estimate = (
            f"about {_duration(cpu_seconds_estimate(profile, measurement))} (an estimate from "
            f"{measurement['images_per_second']:.1f} images/s of {profile.backbone} at "
            f"{measurement['image_size']} px measured on {measurement['device']}, "
            f"{measurement['file']}, scaled to {profile.image_size} px"
            + (f" and {os.cpu_count()} cores)" if measurement["cores"] else ")")
        )
    situation = (
        f"profile {profile.name!r} needs a GPU (needs_accelerator=True) and no GPU was found; "
        f"on this CPU its head and fine-tuning stages would take {estimate}"
    )
    if profile.allow_cpu:
        print(f"warning: {situation}; training on the CPU anyway (allow_cpu)", flush=True)
        return
    raise ValueError(
        f"{situation}. Train on a GPU (make GPU=1 installs the CUDA builds), or pass "
        "--allow-cpu (allow_cpu=True) to train on the CPU anyway"
    )


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


def micro_batch_size(batch_size: int, gradient_accumulation_steps: int) -> int:
    """Images per fit() step when ``gradient_accumulation_steps`` of them make one optimizer
    update of ``batch_size`` images."""
    steps = gradient_accumulation_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"gradient_accumulation_steps must be an integer >= 1, got {steps!r}")
    if batch_size % steps:
        raise ValueError(
            f"gradient_accumulation_steps={steps} must divide the batch size {batch_size} "
            "evenly (each step feeds batch_size / gradient_accumulation_steps images)"
        )
    return batch_size // steps


def _optimizer(
    learning_rate: float,
    schedule: str,
    epochs: int,
    steps_per_epoch: int,
    gradient_accumulation_steps: int = 1,
):
    """Adam; ``steps_per_epoch`` counts fit() steps (micro-batches), not updates."""
    if schedule not in SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "cosine":
        # Keras evaluates a schedule at the micro-step count (optimizer._iterations, while
        # optimizer.iterations counts updates), and with N micro-steps per update, update j
        # runs at micro-step j * N + N - 1. Decaying over all micro-steps after a flat
        # "warm-up" of N - 1 steps at the initial rate gives update j the rate of step j of a
        # cosine over the real updates: the same rates as without accumulation.
        steps = gradient_accumulation_steps
        learning_rate = keras.optimizers.schedules.CosineDecay(
            learning_rate,
            decay_steps=max(epochs * steps_per_epoch, 1),
            warmup_target=learning_rate if steps > 1 else None,
            warmup_steps=steps - 1,
        )
    # Keras takes None, not 1, for "no accumulation".
    accumulation = gradient_accumulation_steps if gradient_accumulation_steps > 1 else None
    return keras.optimizers.Adam(learning_rate, gradient_accumulation_steps=accumulation)


def compile_model(
    model,
    learning_rate: float,
    schedule: str = "constant",
    epochs: int = 1,
    steps_per_epoch: int = 1,
    label_smoothing: float = 0.0,
    gradient_accumulation_steps: int = 1,
) -> None:
    """Adam + categorical cross-entropy (one-hot targets, so label smoothing works)."""
    model.compile(
        optimizer=_optimizer(
            learning_rate, schedule, epochs, steps_per_epoch, gradient_accumulation_steps
        ),
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
    gradient_accumulation_steps: int = 1,
) -> pd.DataFrame:
    """Compile and fit one stage; return its history (one row per epoch).

    ``batch_size`` images make one optimizer update; with ``gradient_accumulation_steps``
    N they are fed as N micro-batches of batch_size / N, whose gradients are averaged.
    """
    micro_batch = micro_batch_size(batch_size, gradient_accumulation_steps)
    steps_per_epoch = int(np.ceil(len(x_train) / micro_batch))
    compile_model(
        model,
        learning_rate,
        schedule,
        epochs,
        steps_per_epoch,
        label_smoothing,
        gradient_accumulation_steps,
    )
    # On several machines each process feeds its own slice, micro_batch / processes at a time.
    x_train, y_train, x_val, y_val = map(distribute.process_slice, (x_train, y_train, x_val, y_val))
    model.fit(
        x_train,
        one_hot(y_train),
        validation_data=(x_val, one_hot(y_val)),
        epochs=epochs,
        batch_size=micro_batch // distribute.process_count(),
        shuffle=True,
        callbacks=_callbacks(out_dir, schedule, patience, resume, callbacks),
        verbose=1 if os.environ.get("CIFAR10_VERBOSE", "1") != "0" else 2,
    )
    part = out_dir / "history.part.csv"
    # CSVLogger numbers epochs from 0 per stage; run_experiment renumbers across stages.
    history = pd.read_csv(part).drop(columns=["epoch"])
    part.unlink()
    return history


FEATURE_SPLITS = ("train", "val", "test")


def _load_features(cache_file: Path, splits) -> dict | None:
    """The cached features, or None when the file is not what this run would write
    (float32, one row per image of each split): an older or damaged cache is recomputed."""
    try:
        with np.load(cache_file, allow_pickle=False) as stored:
            if sorted(stored.files) != sorted(FEATURE_SPLITS):
                raise ValueError(f"arrays {sorted(stored.files)}")
            features = {}
            for split in FEATURE_SPLITS:
                array, rows = stored[split], len(getattr(splits, f"x_{split}"))
                if array.dtype != np.float32 or array.ndim != 2 or len(array) != rows:
                    raise ValueError(
                        f"{split}: {array.dtype} {array.shape}, expected float32 ({rows}, features)"
                    )
                features[split] = array
            return features
    except (OSError, ValueError, EOFError) as error:
        print(f"feature cache {cache_file} unusable ({error}); recomputing", flush=True)
        return None


def cached_features(model, splits, cache_file: Path, batch_size: int) -> dict:
    """Pooled backbone features for train/val/test, computed once and kept on disk.

    Stored as float32 whatever the dtype policy: NumPy has no bfloat16, so np.savez would
    write mixed-bfloat16 features as raw bytes (dtype |V2) that load back unusable.
    """
    features = None
    if distribute.on_every_process(cache_file.exists()):
        features = _load_features(cache_file, splits)
    if distribute.on_every_process(features is not None):
        return features
    extractor = models.feature_extractor(model)
    features = {}
    for split in FEATURE_SPLITS:
        images = getattr(splits, f"x_{split}")
        print(f"extracting {split} features: {len(images)} images", flush=True)
        features[split] = np.asarray(
            distribute.predict(extractor, images, batch_size), dtype=np.float32
        )
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
        # The dtype policy the backbone ran under: bfloat16 features differ from float32 ones.
        keras.config.dtype_policy().name,
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
        gradient_accumulation_steps=profile.gradient_accumulation_steps,
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
            gradient_accumulation_steps=profile.gradient_accumulation_steps,
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
    # The devices split each fit() step's micro-batch.
    strategy = distribute.setup(
        devices, micro_batch_size(batch_size, profile.gradient_accumulation_steps)
    )
    if (
        profile.gradient_accumulation_steps > 1
        and strategy.device_count > 1
        and keras.backend.backend() == "tensorflow"
    ):
        # Keras accumulates inside a conditional, which MirroredStrategy cannot synchronise
        # across devices ("merge_call called while defining a new graph").
        raise ValueError(
            f"gradient_accumulation_steps={profile.gradient_accumulation_steps} with "
            f"{strategy.device_count} devices needs KERAS_BACKEND=jax: TensorFlow's "
            "MirroredStrategy does not support Keras's gradient accumulation; use 1 step or "
            "one device"
        )
    check_accelerator(profile)
    set_seed(profile.seed)
    precision = configure_precision(profile.precision)
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
                gradient_accumulation_steps=profile.gradient_accumulation_steps,
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
