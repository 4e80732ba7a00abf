"""Training: the from-scratch baselines, the frozen-backbone head stage and fine-tuning,
as small functions that return Keras objects, read top to bottom as single-device code.

One experiment is ``set_up`` (settings checked, seed, precision, data, run folder), a model
from ``models``, ``trainable`` set, ``model.compile(**compile_arguments(...))``,
``model.fit`` on ``train_batches`` with ``stage_callbacks``, and ``save_run`` (the run folder).
Notebooks 02-04 write those Keras calls out in their cells; ``run_experiment`` (the CLI's
``train`` and ``make reproduce``) makes the same calls. Each stage's settings are a
``Stage``, read from the profile. Several devices or machines are one ``Placement``
(``distribute``), chosen in ``setup`` and used at the edges: the scope models are built in,
each process's rows, prediction and the run folder's writing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from cifar10_transfer import config, distribute, evaluation, fileio, hardware, models, runs
from cifar10_transfer import data as datasets

SGD_MOMENTUM = 0.9  # Nesterov
# EMA of the weights: each update moves the average 1% of the way, so it spans about the
# last 100 updates (well under one CIFAR epoch at the profiles' batch sizes).
EMA_MOMENTUM = 0.99
# Weight decay skips variables whose name contains one of these: BatchNorm's scale and
# offset, and every bias (decaying them only fights the normalisation).
NO_WEIGHT_DECAY = ("gamma", "beta", "bias")
MIXUP_ALPHA = 0.2  # keras.layers.MixUp: Beta(alpha, alpha) mixing weights
RANDAUGMENT_OPS = 2  # keras.layers.RandAugment: operations per image...
RANDAUGMENT_FACTOR = 0.5  # ...and their strength (0..1)
PLATEAU_FACTOR = 0.2  # ReduceLROnPlateau: multiply the learning rate by this...
PLATEAU_PATIENCE = 2  # ...after this many epochs without val_loss improvement
MIN_LEARNING_RATE = 1e-7


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and the backend (``keras.utils.set_random_seed``)."""
    keras.utils.set_random_seed(seed)


@dataclasses.dataclass(frozen=True)
class Stage:
    """What one stage's ``fit`` needs, read from the profile by ``Stage.of``."""

    name: str  # "baseline", "head" or "finetune"
    epochs: int = 1
    batch_size: int = 64  # images per optimizer update (global)
    learning_rate: float = 1e-3  # initial
    schedule: str = "constant"  # "plateau", "cosine" or "constant"
    patience: int = 1  # early stopping: epochs without val_accuracy gain
    label_smoothing: float = 0.0
    # fine-tuning recipe; the head stage and the baselines keep these defaults
    gradient_accumulation_steps: int = 1  # micro-batches per update (a GPU's memory)
    optimizer: str = "adam"  # "adam", "adamw" or "sgd"
    weight_decay: float = 0.0  # decoupled, x learning rate per update
    warmup_epochs: float = 0.0  # linear warm-up before the cosine decay
    use_ema: bool = False  # validate, checkpoint and keep the weights' moving average
    mixing: str = "none"  # "mixup" or "cutmix" on each training batch
    randaugment: bool = False  # RandAugment on each training batch

    @classmethod
    def of(cls, profile: config.Profile, name: str) -> Stage:
        """Stage ``name``'s settings from ``profile`` (which ``config.check`` has checked)."""
        epochs, batch_size, learning_rate = {
            "baseline": (
                profile.baseline_epochs,
                profile.baseline_batch_size,
                profile.baseline_learning_rate,
            ),
            "head": (profile.head_epochs, profile.batch_size, profile.head_learning_rate),
            "finetune": (
                profile.finetune_epochs,
                profile.batch_size,
                profile.finetune_learning_rate,
            ),
        }[name]
        recipe = {}
        if name == "finetune":
            recipe = {
                "gradient_accumulation_steps": profile.gradient_accumulation_steps,
                "optimizer": profile.optimizer,
                "weight_decay": profile.weight_decay,
                "warmup_epochs": profile.warmup_epochs,
                "use_ema": profile.use_ema,
                "mixing": profile.mixing,
                "randaugment": profile.randaugment,
            }
        return cls(
            name=name,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            schedule=profile.lr_schedule,
            patience=profile.early_stopping_patience,
            label_smoothing=profile.label_smoothing,
            **recipe,
        )

    @property
    def micro_batch_size(self) -> int:
        return config.micro_batch_size(self.batch_size, self.gradient_accumulation_steps)


@dataclasses.dataclass(frozen=True)
class Job:
    """Where a stage trains: its working folder, whether it resumes, and extra Keras
    callbacks (a benchmark's timer, a test's probe)."""

    out_dir: Path
    resume: bool = False
    callbacks: tuple = ()


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the epoch's learning rate to the logs (for history.csv and the curves)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(
                keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
            )


class BackupError(ValueError):
    """A backup to resume from that cannot be read; the message says how to start over."""


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras's BackupAndRestore with the backup written to temporary files and renamed into
    place: a full disk or a killed process leaves the previous backup whole, never a truncated
    one. On resume a backup that does not load is a BackupError, not an h5py traceback."""

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        # save_weights insists on the .weights.h5 ending.
        with fileio.atomic_path(self._weights_path, suffix=".weights.h5") as temporary:
            self.model.save_weights(str(temporary), overwrite=True)
        fileio.write_json(
            self._training_metadata_path,
            {"epoch": self._current_epoch, "batch": self._last_batch_seen},
        )

    def on_train_begin(self, logs=None):
        try:
            self._load_model()
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise BackupError(
                f"{self.backup_dir}: the backup to resume from does not load "
                f"({' '.join(str(error).split())[:200]}); run again without --resume to start "
                "over (that deletes it)"
            ) from None


def learning_rate_schedule(stage: Stage, steps_per_epoch: int):
    """The stage's initial rate, or its warm-up + cosine schedule over fit() steps."""
    if stage.schedule != "cosine":
        return float(stage.learning_rate)  # constant, or lowered by ReduceLROnPlateau
    # Keras evaluates a schedule at the micro-step count (optimizer._iterations, while
    # optimizer.iterations counts updates), and with N micro-steps per update, update j runs
    # at micro-step j * N + N - 1. Counting the schedule in micro-steps, with a flat "warm-up"
    # of N - 1 steps at the initial rate when there is no real warm-up, gives update j the
    # rate of update j of the same schedule without accumulation.
    steps = stage.gradient_accumulation_steps
    total = max(stage.epochs * steps_per_epoch, 1)
    warmup = min(int(round(stage.warmup_epochs * steps_per_epoch)), total - 1)
    if warmup:
        return keras.optimizers.schedules.CosineDecay(
            0.0, total - warmup, warmup_target=stage.learning_rate, warmup_steps=warmup
        )
    return keras.optimizers.schedules.CosineDecay(
        stage.learning_rate,
        decay_steps=total,
        warmup_target=stage.learning_rate if steps > 1 else None,
        warmup_steps=steps - 1,
    )


def accumulation(stage: Stage) -> int | None:
    """The optimizer's ``gradient_accumulation_steps``: Keras takes None, not 1, for none."""
    return stage.gradient_accumulation_steps if stage.gradient_accumulation_steps > 1 else None


def make_optimizer(stage: Stage, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """The stage's Keras optimizer; ``steps_per_epoch`` counts fit() steps (micro-batches).
    Adam is what notebooks 02-04 write out; the GPU profiles fine-tune with SGD."""
    options = {
        "learning_rate": learning_rate_schedule(stage, steps_per_epoch),
        "weight_decay": stage.weight_decay or None,
        "use_ema": stage.use_ema,
        "ema_momentum": EMA_MOMENTUM,
        "gradient_accumulation_steps": accumulation(stage),
    }
    if stage.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(momentum=SGD_MOMENTUM, nesterov=True, **options)
    elif stage.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(**{**options, "weight_decay": stage.weight_decay})
    else:  # weight decay needs adamw or sgd (config.check)
        optimizer = keras.optimizers.Adam(**options)
    if stage.weight_decay:
        optimizer.exclude_from_weight_decay(var_names=list(NO_WEIGHT_DECAY))
    return optimizer


def compile_arguments(stage: Stage, steps_per_epoch: int = 1) -> dict:
    """``model.compile``'s arguments for the stage: its optimizer, and categorical
    cross-entropy on one-hot targets (for label smoothing and mixed labels)."""
    return {
        "optimizer": make_optimizer(stage, steps_per_epoch),
        "loss": keras.losses.CategoricalCrossentropy(label_smoothing=stage.label_smoothing),
        "metrics": ["accuracy"],
    }


def one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(config.NUM_CLASSES, dtype="float32")[labels]


def verbosity() -> int:
    """fit()'s progress bar, or one line per epoch with CIFAR10_VERBOSE=0 (logs, CI)."""
    return 1 if os.environ.get("CIFAR10_VERBOSE", "1") != "0" else 2


def train_batches(images, labels, stage: Stage, seed: int = 0) -> dict:
    """``model.fit``'s training data for the stage: shuffled micro-batches of the images with
    one-hot labels, reshuffled every epoch. As NumPy arrays, Keras's fastest path; with the
    stage's RandAugment, MixUp or CutMix, a ``Batches`` dataset that passes each batch
    through them."""
    # On several machines each process feeds its own rows (placement.local) and its share
    # of every batch.
    batch_size = stage.micro_batch_size // distribute.process_count()
    if stage.randaugment or stage.mixing != "none":
        return {"x": Batches(images, labels, batch_size, stage, seed)}
    return {"x": images, "y": one_hot(labels), "batch_size": batch_size, "shuffle": True}


class Batches(keras.utils.PyDataset):
    """Shuffled training batches passed through Keras's batch augmentation layers: RandAugment,
    then MixUp or CutMix. These mix labels too, so they run here, on each batch before the
    train step, rather than inside the model; the order is reshuffled every epoch."""

    def __init__(self, images, labels, batch_size: int, stage: Stage, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.images, self.labels, self.batch_size = images, one_hot(labels), batch_size
        self.layers = []
        if stage.randaugment:
            self.layers.append(
                keras.layers.RandAugment(
                    value_range=(0, 255),
                    num_ops=RANDAUGMENT_OPS,
                    factor=RANDAUGMENT_FACTOR,
                    seed=seed,
                )
            )
        if stage.mixing == "mixup":
            self.layers.append(keras.layers.MixUp(alpha=MIXUP_ALPHA, seed=seed + 1))
        elif stage.mixing == "cutmix":
            self.layers.append(keras.layers.CutMix(seed=seed + 1))
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(images))

    def __len__(self) -> int:
        return int(np.ceil(len(self.images) / self.batch_size))

    def __getitem__(self, index: int):
        rows = np.sort(self.order[index * self.batch_size : (index + 1) * self.batch_size])
        batch = {"images": self.images[rows].astype("float32"), "labels": self.labels[rows]}
        for layer in self.layers:
            batch = layer(batch, training=True)
        # The model's uint8 input takes mixed pixels (0..255 floats) rounded to the nearest.
        images = keras.ops.round(keras.ops.clip(batch["images"], 0, 255))
        return keras.ops.convert_to_numpy(images), keras.ops.convert_to_numpy(batch["labels"])

    def on_epoch_end(self):
        self.order = self.rng.permutation(len(self.images))


def steps_per_epoch(images: int, stage: Stage) -> int:
    """fit() steps (micro-batches) per epoch: what the learning-rate schedule counts in."""
    return int(np.ceil(images / stage.micro_batch_size))


HISTORY_PART = "history.part.csv"  # CSVLogger's file while a stage trains


def stage_callbacks(stage: Stage, out_dir: Path, resume: bool = False) -> list:
    """What every ``fit`` runs with, in this order (the order matters where noted)."""
    return [
        keras.callbacks.TerminateOnNaN(),
        *(
            [
                keras.callbacks.ReduceLROnPlateau(
                    monitor="val_loss",
                    factor=PLATEAU_FACTOR,
                    patience=PLATEAU_PATIENCE,
                    min_lr=MIN_LEARNING_RATE,
                )
            ]
            if stage.schedule == "plateau"
            else []
        ),
        # Before CSVLogger, so that the learning rate reaches history.csv.
        LearningRateLogger(),
        # The epoch's row is written before its backup: a run stopped between the two runs
        # the epoch again and writes its row again (read_history keeps the last), rather
        # than resuming past an epoch that has no row.
        keras.callbacks.CSVLogger(str(out_dir / HISTORY_PART), append=resume),
        # Resume: restores the model, optimizer and epoch after Ctrl-C or a killed process.
        # Before SwapEMAWeights, so that it saves the trained weights, not their average.
        AtomicBackupAndRestore(str(out_dir / "backup")),
        # With EMA: validation, early stopping (whose best weights the model ends with)
        # and the checkpoint all see the moving average of the weights.
        *([keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if stage.use_ema else []),
        keras.callbacks.EarlyStopping(
            monitor="val_accuracy", patience=stage.patience, restore_best_weights=True
        ),
        keras.callbacks.ModelCheckpoint(
            str(out_dir / "checkpoint.keras"), monitor="val_accuracy", save_best_only=True
        ),
    ]


def fit(model, x_train, y_train, x_val, y_val, stage: Stage, job: Job, seed: int = 0):
    """``model.fit`` for one stage of a model compiled for it (``compile_arguments``, after
    any change to ``trainable``), with ``stage_callbacks``; returns its history (one row per
    epoch, all of them after a resume).

    ``stage.batch_size`` images make one optimizer update; with
    ``stage.gradient_accumulation_steps`` N they are fed as N micro-batches of batch_size / N,
    whose gradients are averaged. ``seed`` seeds the batch augmentation (``Batches``).
    """
    if not model.compiled:
        raise ValueError(f"{model.name}: compile it first (training.compile_arguments)")
    # Several machines: each trains on its own rows (one machine: all of them).
    x_train, y_train, x_val, y_val = map(distribute.process_slice, (x_train, y_train, x_val, y_val))
    model.fit(
        **train_batches(x_train, y_train, stage, seed),
        validation_data=(x_val, one_hot(y_val)),
        epochs=stage.epochs,
        callbacks=[*stage_callbacks(stage, job.out_dir, job.resume), *job.callbacks],
        verbose=verbosity(),
    )
    return read_history(job.out_dir)


def read_history(out_dir: Path, remove: bool = False) -> pd.DataFrame:
    """The stage's history from CSVLogger's file (``remove``: then deleted, once the run is
    recorded); ``save_run`` numbers the epochs across stages."""
    part = Path(out_dir) / HISTORY_PART
    # An epoch run again after a resume has two rows: the last is the one its backup holds.
    history = pd.read_csv(part).drop_duplicates("epoch", keep="last").drop(columns=["epoch"])
    if remove:
        part.unlink()
    return history


# ---------------------------------------------------------------- the head stage's features

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


def _features_key(profile: config.Profile, splits) -> str:
    """Cache key: everything that changes the features. A weights file counts by its
    contents (new weights copied over the same path are new features), and the images by
    all their bytes (about 0.1 s for the 10k subset)."""
    weights = profile.weights
    if weights not in ("imagenet", None):
        weights = fileio.sha256(weights)
    digest = hashlib.sha256()
    for part in (
        profile.backbone,
        weights,
        profile.image_size,
        # The dtype policy the backbone ran under: bfloat16 features differ from float32 ones.
        keras.config.dtype_policy().name,
    ):
        digest.update(str(part).encode())
    for array in (splits.x_train, splits.x_val, splits.x_test):
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()[:16]


def head_features(model, setup: Setup) -> dict:
    """The frozen backbone's pooled features of every split, computed once and kept on disk
    (runs/features/): the head stage then trains on them, about 10x faster than running the
    backbone every epoch. Stored as float32 whatever the dtype policy: NumPy has no
    bfloat16, so np.savez would write mixed-bfloat16 features as raw bytes that load back
    unusable."""
    profile, splits, placement = setup.profile, setup.splits, setup.placement
    key = _features_key(profile, splits)
    cache_file = runs.features_file(profile.backbone, profile.image_size, key)
    features = None
    if placement.agree(cache_file.exists()):
        features = _load_features(cache_file, splits)
    if placement.agree(features is not None):
        return features
    extractor = models.feature_extractor(model)
    features = {}
    for split in FEATURE_SPLITS:
        images = getattr(splits, f"x_{split}")
        print(f"extracting {split} features: {len(images)} images", flush=True)
        features[split] = np.asarray(
            placement.predict(extractor, images, setup.stage.batch_size), dtype=np.float32
        )
    if placement.is_chief:
        with fileio.atomic_path(cache_file) as temporary:
            np.savez(temporary, **features)
    return features


# ---------------------------------------------------------------- one experiment, end to end

# The settings that shape a head run's model.keras (its structure, weights and data): a
# fine-tuning run starts from that model, so they must be its own.
SHAPING_SETTINGS = (
    "backbone",
    "weights",
    "image_size",
    "head",
    "head_units",
    "dropout_rate",
    "augment",
    "train_bn",
    "stochastic_depth",
    "train_size",
    "val_size",
    "test_size",
    "seed",
)


def check_prerequisite(prerequisite_dir: Path, profile: config.Profile, splits) -> None:
    """ValueError unless the run in ``prerequisite_dir`` exists and was made with the
    settings (and the data) that shape the model this run starts from."""
    prerequisite = prerequisite_dir.name
    if not (prerequisite_dir / "model.keras").exists():
        raise ValueError(
            f"{prerequisite_dir}: no {prerequisite} run to start from; train it first "
            f"(cifar10-transfer train {prerequisite} --out {prerequisite_dir})"
        )
    metrics_file = prerequisite_dir / "metrics.json"
    try:
        recorded = fileio.read_json(metrics_file)
        settings = recorded["profile"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{metrics_file}: unreadable ({error}); train the {prerequisite} run again"
        ) from None
    wanted = profile.to_dict()
    differences = [
        f"{name}={settings.get(name)!r} there, {wanted[name]!r} here"
        for name in SHAPING_SETTINGS
        if settings.get(name) != wanted[name]
    ]
    source = (recorded.get("data") or {}).get("source")
    if source != splits.source:
        differences.append(f"data {source!r} there, {splits.source!r} here")
    if differences:
        raise ValueError(
            f"{prerequisite_dir} was trained with other settings than this run: "
            f"{'; '.join(differences)}. Train it again with these settings (cifar10-transfer "
            f"train {prerequisite} ... --out {prerequisite_dir}), or use the same ones"
        )


@dataclasses.dataclass
class Setup:
    """One experiment, set up: its settings checked, seed set, data loaded, devices chosen and
    run folder made (``set_up``). ``job`` is where its ``fit`` writes (on several machines a
    worker's own folder; ``out_dir`` is the run folder)."""

    spec: config.Experiment
    unfreeze: config.Unfreeze
    profile: config.Profile
    stage: Stage
    splits: object
    placement: distribute.Placement
    precision: str
    out_dir: Path
    job: Job
    started: float

    @property
    def prerequisite_dir(self) -> Path:
        return self.out_dir.parent / (self.spec.prerequisite or "")


def set_up(
    experiment: str,
    profile: config.Profile,
    data=None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    devices=None,
    splits=None,
    callbacks=(),
) -> Setup:
    """Check every setting before any work (no half-made run folder, no late failure), then
    set the seed and precision, load the data (``splits``: already loaded) and make the run
    folder (default runs/<profile>/<experiment>). ``callbacks``: extra Keras callbacks."""
    out_dir = Path(out_dir) if out_dir else runs.run_dir(profile.name, experiment)
    spec, unfreeze = models.check_experiment(experiment, profile)
    stage = Stage.of(profile, spec.stage)
    started = time.perf_counter()
    # First: on several machines this joins the cluster, which must precede any JAX device
    # use. The devices split each fit() step's micro-batch.
    placement = distribute.setup(devices, stage.micro_batch_size)
    if (
        stage.gradient_accumulation_steps > 1
        and placement.device_count > 1
        and keras.backend.backend() == "tensorflow"
    ):
        # Keras accumulates inside a conditional, which MirroredStrategy cannot synchronise
        # across devices ("merge_call called while defining a new graph").
        raise ValueError(
            f"gradient_accumulation_steps={stage.gradient_accumulation_steps} with "
            f"{placement.device_count} devices needs KERAS_BACKEND=jax: TensorFlow's "
            "MirroredStrategy does not support Keras's gradient accumulation; use 1 step or "
            "one device"
        )
    if spec.stage == "finetune" and placement.device_count == 1:
        # On a GPU: micro-batches that fit its memory (a T4 with paper's batch of 256).
        profile = hardware.fit_micro_batch(profile)
        steps = profile.gradient_accumulation_steps
        stage = dataclasses.replace(stage, gradient_accumulation_steps=steps)
    hardware.check_accelerator(profile)
    set_seed(profile.seed)
    precision = hardware.configure_precision(profile.precision)
    splits = datasets.load_splits(profile, data) if splits is None else splits
    job = Job(placement.work_dir(out_dir), resume, tuple(callbacks))
    setup = Setup(
        spec=spec,
        unfreeze=unfreeze,
        profile=profile,
        stage=stage,
        splits=splits,
        placement=placement,
        precision=precision,
        out_dir=out_dir,
        job=job,
        started=started,
    )
    if spec.prerequisite:  # fine-tuning: the head run it starts from (train_prerequisite)
        check_prerequisite(setup.prerequisite_dir, profile, splits)
    placement.check_splits(splits)
    runs.prepare(job.out_dir, resume)
    return setup


def train_prerequisite(experiment: str, profile: config.Profile, out_dir=None, **options):
    """Fine-tuning starts from the head run beside its run folder (runs/<profile>/head, or
    ``out_dir``'s sibling): train that run first, in view, when it has no model yet (the
    CLI's ``train finetune``, notebook 04 run alone). ``options``: ``run_experiment``'s."""
    spec = config.experiment(experiment)
    if not spec.prerequisite:
        return
    out_dir = Path(out_dir) if out_dir else runs.run_dir(profile.name, experiment)
    head_dir = out_dir.parent / spec.prerequisite
    if not (head_dir / "model.keras").exists():
        models.check_experiment(experiment, profile)  # all of it, before the head trains
        print(f"no {spec.prerequisite} run in {head_dir}: training it first", flush=True)
        run_experiment(spec.prerequisite, profile, out_dir=head_dir, **options)


def load_head_model(setup: Setup) -> keras.Model:
    """Fine-tuning's start: the head run's model (``train_prerequisite`` trains it first)."""
    path = setup.prerequisite_dir / "model.keras"
    print(f"starting from {path}", flush=True)
    with setup.placement.scope():
        return runs.load_model(path)


class TrainingDiverged(ValueError):
    """A run whose loss blew up: its result is not recorded."""


# The cross-entropy of a uniform guess over the ten classes (ln 10). A diverged run ends far
# above it: a training loss beyond BLOWN_UP x it, or a model collapsed onto one class (at
# least COLLAPSED_SHARE of the test images) with a validation loss beyond COLLAPSED_LOSS x it.
# An untrained model also sits near chance, with losses of up to about 5x it (a smoke run's
# two-layer FC net on raw pixels after one epoch on 200 images: 5.2x).
CHANCE_LOSS = float(np.log(config.NUM_CLASSES))
BLOWN_UP = 100
COLLAPSED_SHARE = 0.9
COLLAPSED_LOSS = 10


def check_converged(setup: Setup, history: pd.DataFrame, predicted) -> None:
    """TrainingDiverged for a non-finite training loss (TerminateOnNaN stopped the run), one
    that blew up, or a model collapsed onto one class (``predicted``: the test images'
    classes), confidently, at chance validation accuracy; a warning line for chance accuracy
    alone (a smoke run's few images, or far too few epochs). Judged on the stage's last
    epoch in ``history``, before anything is recorded: the test set is only scored."""
    setting = f"{setup.spec.stage}_learning_rate"  # baseline_, head_ or finetune_learning_rate
    last = history.iloc[-1]
    accuracy, loss, final = last["val_accuracy"], last["val_loss"], last["loss"]
    at_chance = accuracy < 2 / config.NUM_CLASSES
    share = np.bincount(predicted, minlength=config.NUM_CLASSES).max() / len(predicted)
    collapsed = at_chance and share >= COLLAPSED_SHARE and loss > COLLAPSED_LOSS * CHANCE_LOSS
    if not np.isfinite(history["loss"]).all() or final > BLOWN_UP * CHANCE_LOSS or collapsed:
        raise TrainingDiverged(
            f"{setup.spec.name} diverged (validation accuracy {accuracy:.1%}, loss "
            f"{loss:.3g}, {share:.0%} of the test images given one class; final training "
            f"loss {final:.3g}): {setting}={getattr(setup.profile, setting)} is too high "
            "for it; lower it. Not recorded"
        )
    if at_chance:
        print(
            f"warning: {setup.spec.name} ends at chance accuracy (validation {accuracy:.1%}, "
            f"loss {loss:.3g}): it learnt nothing; check {setting} and the epochs",
            flush=True,
        )


def save_run(setup: Setup, model: keras.Model, probabilities, tta=None) -> dict:
    """Record a trained run: its history (after the head run's, for fine-tuning), test-set
    predictions (``tta``: also averaged with flipped copies, fine-tuning's) and metrics.json's
    dict, written with the model to the run folder, and returned. A diverged run is an
    error, not a result."""
    splits, stage, placement = setup.splits, setup.stage, setup.placement
    history = own = read_history(setup.job.out_dir, remove=True)
    check_converged(setup, own, probabilities.argmax(axis=1))
    history["stage"] = setup.spec.stage
    extra = {"batch_size": stage.batch_size}  # a baseline's is baseline_batch_size
    if setup.spec.stage == "finetune":
        earlier = pd.read_csv(setup.prerequisite_dir / "history.csv").drop(columns=["epoch"])
        history = pd.concat([earlier, history], ignore_index=True)
    history.insert(0, "epoch", range(1, len(history) + 1))
    metrics = runs.record(
        setup.spec,
        setup.profile,
        splits,
        probabilities,
        history,
        wall_time_s=time.perf_counter() - setup.started,
        precision=setup.precision,
        device_count=placement.device_count,
        extra=extra,
        tta=tta,
        model=model,
        out_dir=setup.out_dir if placement.is_chief else None,  # written once
    )
    placement.finish(setup.job.out_dir)
    return metrics


def run_experiment(experiment: str, profile: config.Profile, data=None, **options) -> dict:
    """Train ``experiment`` with ``profile`` (``config.profile(...)``) end to end, write its
    run folder and return metrics.json's dict: the steps notebooks 02-04 show a cell each.
    ``options``: ``setup``'s (out_dir, resume, devices, splits, callbacks)."""
    setup = set_up(experiment, profile, data, **options)
    stage, splits, placement = setup.stage, setup.splits, setup.placement
    x, x_val, x_test = splits.x_train, splits.x_val, splits.x_test
    with placement.scope():
        if stage.name == "finetune":
            model = load_head_model(setup)
            models.set_trainable(model, setup.unfreeze, train_bn=profile.train_bn)
        else:
            model = models.build(setup.spec, profile)
        arguments = compile_arguments(stage, steps_per_epoch(len(x), stage))
        trainee = model
        if stage.name == "head":
            model.get_layer("backbone").trainable = False
            features = head_features(model, setup)
            x, x_val, x_test = features["train"], features["val"], features["test"]
            trainee = model.get_layer("head")  # trains on the features, then serves in model
        # Keras reads `trainable` when compiling: compile after freezing or unfreezing.
        trainee.compile(**arguments)
        fit(trainee, x, splits.y_train, x_val, splits.y_val, stage, setup.job, seed=profile.seed)
        probabilities = placement.predict(trainee, x_test, stage.batch_size)
        tta = None
        if stage.name == "finetune":  # also each test image flipped (test-time augmentation)
            predictor = placement.predictor(model)  # each process predicts its rows
            tta = evaluation.predict_with_tta(
                predictor, x_test, batch_size=stage.batch_size, probabilities=probabilities
            )
    return save_run(setup, model, probabilities, tta)
