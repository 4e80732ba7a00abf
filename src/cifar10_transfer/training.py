"""Training engine: the from-scratch baselines, the frozen-backbone head stage and
fine-tuning, read top to bottom as single-device code.

``Experiment`` is one experiment as the steps a reader follows: set-up (device, seed,
precision, data), ``build``, ``set_trainable`` (freeze or unfreeze, then recompile), ``fit``
with its callbacks, and ``evaluate``, which writes the run folder (``runs``). The notebooks
show those steps one cell each; ``run_experiment`` (the CLI's) takes them in order. Each
stage's settings are a ``Stage``, read from the profile. Placement on several devices or
machines is one ``Placement`` object (``distribute``).
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
GRADUAL_DECAY = 0.5  # gradual unfreezing: each step's learning rate relative to the previous


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
    gradient_accumulation_steps: int = 1  # micro-batches per update
    # fine-tuning recipe; the head stage and the baselines keep these defaults
    optimizer: str = "adam"  # "adam", "adamw" or "sgd"
    weight_decay: float = 0.0  # decoupled, x learning rate per update
    warmup_epochs: float = 0.0  # linear warm-up before the cosine decay
    use_ema: bool = False  # validate, checkpoint and keep the weights' moving average
    mixing: str = "none"  # "mixup" or "cutmix" on each training batch
    randaugment: bool = False  # RandAugment on each training batch

    @classmethod
    def of(cls, profile: config.Profile, name: str) -> Stage:
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
                "optimizer": profile.optimizer,
                "weight_decay": profile.weight_decay,
                "warmup_epochs": profile.warmup_epochs,
                "use_ema": profile.use_ema,
                "mixing": profile.mixing,
                "randaugment": profile.randaugment,
            }
        stage = cls(
            name,
            epochs,
            batch_size,
            learning_rate,
            profile.lr_schedule,
            profile.early_stopping_patience,
            profile.label_smoothing,
            profile.gradient_accumulation_steps,
            **recipe,
        )
        stage.check()
        return stage

    def check(self) -> None:
        """ValueError for a setting outside its choices (before any work starts)."""
        for setting, value, choices in (
            ("lr_schedule", self.schedule, config.SCHEDULES),
            ("optimizer", self.optimizer, config.OPTIMIZERS),
            ("mixing", self.mixing, config.MIXINGS),
        ):
            if value not in choices:
                raise ValueError(f"{setting} must be one of {', '.join(choices)}, got {value!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.warmup_epochs < 0 or (self.warmup_epochs and self.schedule != "cosine"):
            raise ValueError(
                f"warmup_epochs={self.warmup_epochs}: must be >= 0, and warm-up needs "
                f"lr_schedule=cosine (got {self.schedule!r})"
            )

    @property
    def micro_batch_size(self) -> int:
        return micro_batch_size(self.batch_size, self.gradient_accumulation_steps)


@dataclasses.dataclass(frozen=True)
class Job:
    """Where a run trains: its working folder, whether it resumes, extra Keras callbacks
    (e.g. for tests) and its device placement."""

    out_dir: Path
    resume: bool = False
    callbacks: tuple = ()
    placement: distribute.Placement = distribute.Placement()


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


def learning_rate_schedule(stage: Stage, steps_per_epoch: int):
    """The stage's initial rate, or its warm-up + cosine schedule over fit() steps."""
    if stage.schedule != "cosine":
        return stage.learning_rate  # constant, or lowered by ReduceLROnPlateau
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


def make_optimizer(stage: Stage, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """The stage's Keras optimizer; ``steps_per_epoch`` counts fit() steps (micro-batches)."""
    stage.check()
    options = {
        "learning_rate": learning_rate_schedule(stage, steps_per_epoch),
        "weight_decay": stage.weight_decay or None,
        "use_ema": stage.use_ema,
        "ema_momentum": EMA_MOMENTUM,
        # Keras takes None, not 1, for "no accumulation".
        "gradient_accumulation_steps": (
            stage.gradient_accumulation_steps if stage.gradient_accumulation_steps > 1 else None
        ),
    }
    if stage.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(momentum=SGD_MOMENTUM, nesterov=True, **options)
    elif stage.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(**{**options, "weight_decay": stage.weight_decay})
    else:
        # Keras applies Adam's weight_decay decoupled too, so adam + weight_decay is AdamW.
        optimizer = keras.optimizers.Adam(**options)
    if stage.weight_decay:
        optimizer.exclude_from_weight_decay(var_names=list(NO_WEIGHT_DECAY))
    return optimizer


def compile_model(model, stage: Stage, steps_per_epoch: int = 1) -> None:
    """The stage's optimizer + categorical cross-entropy (one-hot targets, for label
    smoothing and mixed labels)."""
    model.compile(
        optimizer=make_optimizer(stage, steps_per_epoch),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=stage.label_smoothing),
        metrics=["accuracy"],
    )


def one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(config.NUM_CLASSES, dtype="float32")[labels]


class MixedBatches(keras.utils.PyDataset):
    """Training batches passed through Keras's batch augmentation layers: RandAugment, then
    MixUp or CutMix. These mix labels too, so they run here, on each batch before the train
    step, rather than inside the model; the order is reshuffled every epoch."""

    def __init__(self, images, labels, batch_size: int, stage: Stage, seed: int, **kwargs):
        super().__init__(**kwargs)
        self.images, self.labels, self.batch_size = images, labels, batch_size
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
        batch = {
            "images": self.images[rows].astype("float32"),
            "labels": self.labels[rows],
        }
        for layer in self.layers:
            batch = layer(batch, training=True)
        # The model's uint8 input takes mixed pixels (0..255 floats) rounded to the nearest.
        images = keras.ops.round(keras.ops.clip(batch["images"], 0, 255))
        return keras.ops.convert_to_numpy(images), keras.ops.convert_to_numpy(batch["labels"])

    def on_epoch_end(self):
        self.order = self.rng.permutation(len(self.images))


def steps_per_epoch(images: int, stage: Stage) -> int:
    """Micro-batches per epoch: what the learning-rate schedule counts in."""
    return int(np.ceil(images / stage.micro_batch_size))


def stage_callbacks(stage: Stage, job: Job) -> list:
    """What every ``fit`` runs with, in this order (the order matters where noted)."""
    return [
        keras.callbacks.TerminateOnNaN(),
        # Resume: restores the model, optimizer and epoch after Ctrl-C or a killed process.
        # Before SwapEMAWeights, so that it saves the trained weights, not their average.
        AtomicBackupAndRestore(str(job.out_dir / "backup")),
        # With EMA: validation, early stopping (whose best weights the model ends with)
        # and the checkpoint all see the moving average of the weights.
        *([keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if stage.use_ema else []),
        keras.callbacks.EarlyStopping(
            monitor="val_accuracy", patience=stage.patience, restore_best_weights=True
        ),
        keras.callbacks.ModelCheckpoint(
            str(job.out_dir / "checkpoint.keras"), monitor="val_accuracy", save_best_only=True
        ),
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
        keras.callbacks.CSVLogger(str(job.out_dir / HISTORY_PART), append=job.resume),
        *job.callbacks,
    ]


HISTORY_PART = "history.part.csv"  # CSVLogger's file while a stage trains


def fit(
    model, x_train, y_train, x_val, y_val, stage: Stage, job: Job, seed: int = 0, callbacks=None
):
    """Fit one stage of a model compiled for it (``compile_model``, after any change to
    ``trainable``); return its history (one row per epoch).

    ``stage.batch_size`` images make one optimizer update; with
    ``stage.gradient_accumulation_steps`` N they are fed as N micro-batches of batch_size / N,
    whose gradients are averaged. ``seed`` seeds the batch augmentation (MixedBatches).
    ``callbacks``: default ``stage_callbacks(stage, job)``.
    """
    if not model.compiled:
        raise ValueError(f"{model.name}: compile it first (training.compile_model)")
    # On several machines each process feeds its own rows, micro_batch / processes at a time.
    x_train, y_train, x_val, y_val = job.placement.local(x_train, y_train, x_val, y_val)
    batch_size = job.placement.local_batch(stage.micro_batch_size)
    train = {"x": x_train, "y": one_hot(y_train), "batch_size": batch_size, "shuffle": True}
    if stage.mixing != "none" or stage.randaugment:
        train = {"x": MixedBatches(x_train, train["y"], batch_size, stage, seed)}
    model.fit(
        **train,
        validation_data=(x_val, one_hot(y_val)),
        epochs=stage.epochs,
        callbacks=stage_callbacks(stage, job) if callbacks is None else callbacks,
        verbose=1 if os.environ.get("CIFAR10_VERBOSE", "1") != "0" else 2,
    )
    # CSVLogger numbers epochs from 0 per stage; run_experiment renumbers across stages.
    part = job.out_dir / HISTORY_PART
    history = pd.read_csv(part).drop(columns=["epoch"])
    part.unlink()
    return history


# ---------------------------------------------------------------- stages


def train_on_images(model, splits, stage: Stage, job: Job):
    """Compile and fit on the images, predict the test set: the head stage without the
    feature cache (benchmarks/feature_cache.py). Returns (history, test_probabilities)."""
    compile_model(model, stage, steps_per_epoch(len(splits.x_train), stage))
    history = fit(model, splits.x_train, splits.y_train, splits.x_val, splits.y_val, stage, job)
    return history, job.placement.predict(model, splits.x_test, stage.batch_size)


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


def cached_features(model, splits, cache_file: Path, batch_size: int, placement) -> dict:
    """Pooled backbone features for train/val/test, computed once and kept on disk.

    Stored as float32 whatever the dtype policy: NumPy has no bfloat16, so np.savez would
    write mixed-bfloat16 features as raw bytes (dtype |V2) that load back unusable.
    """
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
            placement.predict(extractor, images, batch_size), dtype=np.float32
        )
    if placement.is_chief:
        with fileio.atomic_path(cache_file) as temporary:
            np.savez(temporary, **features)
    return features


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
    """ValueError unless the run in ``prerequisite_dir`` was made with the settings (and the
    data) that shape the model this run starts from."""
    metrics_file = prerequisite_dir / "metrics.json"
    try:
        recorded = fileio.read_json(metrics_file)
        settings = recorded["profile"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{metrics_file}: unreadable ({error}); train the {prerequisite_dir.name} run again"
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
            f"train {prerequisite_dir.name} ... --out {prerequisite_dir}), or use the same ones"
        )


class Experiment:
    """One experiment in the steps a reader follows; ``run_experiment`` takes them in order,
    and notebooks 02-04 show them one cell each::

        experiment = training.Experiment("finetune", profile, splits=splits)
        model = experiment.build()        # new, or (fine-tuning) the head run's model
        experiment.set_trainable()        # freeze / unfreeze per the profile, then recompile
        experiment.callbacks              # what fit() runs with
        history = experiment.fit()
        metrics = experiment.evaluate()   # test set; writes the run folder

    Every setting is checked when it is created, before any work: no half-made run folder,
    no late failure. ``data`` is the CIFAR-10 source (``data.load_cifar10``); ``splits``
    (``data.make_splits``) skips loading; ``callbacks`` are extra Keras callbacks.
    """

    def __init__(
        self,
        experiment: str,
        profile: config.Profile,
        data=None,
        out_dir: str | os.PathLike | None = None,
        resume: bool = False,
        devices=None,
        splits=None,
        callbacks=(),
    ):
        self.spec = spec = config.experiment(experiment)
        config.check(profile)
        if spec.stage != "baseline":
            models.check_profile(profile, fine_tuning=spec.stage == "finetune")
        self.profile, self.devices = profile, devices
        self.stage = Stage.of(profile, spec.stage)
        if profile.unfreeze == "gradual" and spec.stage == "finetune":
            # each unfreezing step trains a share of the epochs
            epochs = max(self.stage.epochs // models.GRADUAL_STEPS, 1)
            self.stage = dataclasses.replace(self.stage, epochs=epochs)
        self.out_dir = Path(out_dir) if out_dir else runs.run_dir(profile.name, experiment)
        self.started = time.perf_counter()
        # First: on several machines this joins the cluster, which must precede any JAX device
        # use. The devices split each fit() step's micro-batch.
        self.placement = distribute.setup(devices, self.stage.micro_batch_size)
        if (
            profile.gradient_accumulation_steps > 1
            and self.placement.device_count > 1
            and keras.backend.backend() == "tensorflow"
        ):
            # Keras accumulates inside a conditional, which MirroredStrategy cannot
            # synchronise across devices ("merge_call called while defining a new graph").
            raise ValueError(
                f"gradient_accumulation_steps={profile.gradient_accumulation_steps} with "
                f"{self.placement.device_count} devices needs KERAS_BACKEND=jax: TensorFlow's "
                "MirroredStrategy does not support Keras's gradient accumulation; use 1 step or "
                "one device"
            )
        hardware.check_accelerator(profile)
        set_seed(profile.seed)
        self.precision = hardware.configure_precision(profile.precision)
        self.splits = datasets.load_splits(profile, data) if splits is None else splits
        self.placement.check_splits(self.splits)
        self.job = Job(
            self.placement.work_dir(self.out_dir), resume, tuple(callbacks), self.placement
        )
        self.prerequisite_dir = self.out_dir.parent / (spec.prerequisite or "")
        if spec.prerequisite and (self.prerequisite_dir / "model.keras").exists():
            check_prerequisite(self.prerequisite_dir, profile, self.splits)
        runs.prepare(self.job.out_dir, resume)
        self.model = self.history = self.features = None
        self.earlier = None  # the head run's history, before fine-tuning's
        self.callbacks = stage_callbacks(self.stage, self.job)

    @property
    def trainee(self) -> keras.Model:
        """What fit() trains: the head alone on cached features in the head stage."""
        return self.model.get_layer("head") if self.spec.stage == "head" else self.model

    def build(self) -> keras.Model:
        """A new model (baselines, head stage), or the head run's for fine-tuning: trained
        first, in view, when there is none."""
        if self.spec.prerequisite:
            if not self.placement.agree((self.prerequisite_dir / "model.keras").exists()):
                print(
                    f"{self.spec.name} starts from a {self.spec.prerequisite} run; none in "
                    f"{self.prerequisite_dir}: training it first",
                    flush=True,
                )
                run_experiment(
                    self.spec.prerequisite,
                    self.profile,
                    out_dir=self.prerequisite_dir,
                    devices=self.devices,
                    splits=self.splits,
                )
            print(f"starting from {self.prerequisite_dir / 'model.keras'}", flush=True)
            self.earlier = pd.read_csv(self.prerequisite_dir / "history.csv")
            with self.placement.scope():
                self.model = runs.load_model(self.prerequisite_dir / "model.keras")
        else:
            with self.placement.scope():
                self.model = models.build(self.spec, self.profile)
        return self.model

    def set_trainable(self, unfreeze: str | None = None, learning_rate: float | None = None):
        """Freeze or unfreeze (head stage: backbone frozen; fine-tuning: ``unfreeze``, default
        the profile's), then recompile: Keras reads ``trainable`` when compiling. Returns
        ``models.trainable_table`` of the model."""
        if self.spec.stage == "head":
            models.set_trainable(self.model, "head")
        elif self.spec.stage == "finetune":
            unfreeze = unfreeze or self._unfreeze_steps()[0]
            models.set_trainable(self.model, unfreeze, train_bn=self.profile.train_bn)
        stage = self.stage
        if learning_rate is not None:
            stage = dataclasses.replace(stage, learning_rate=learning_rate)
        with self.placement.scope():
            compile_model(self.trainee, stage, steps_per_epoch(len(self.splits.x_train), stage))
        return models.trainable_table(self.model)

    def _unfreeze_steps(self) -> list[str]:
        if self.profile.unfreeze == "gradual":
            return models.gradual_steps(len(self.model.get_layer("backbone").layers))
        return [self.profile.unfreeze]

    def fit(self) -> pd.DataFrame:
        """Train this stage; returns its history. The head stage runs the frozen backbone
        once per image and trains the head on those features (``cached_features``)."""
        splits = self.splits
        with self.placement.scope():
            if self.spec.stage == "finetune":
                history = self._fine_tune()
            else:
                x, x_val = splits.x_train, splits.x_val
                if self.spec.stage == "head":
                    self.features = self.head_features()
                    x, x_val = self.features["train"], self.features["val"]
                history = fit(
                    self.trainee, x, splits.y_train, x_val, splits.y_val, self.stage, self.job,
                    callbacks=self.callbacks,
                )  # fmt: skip
        history["stage"] = self.spec.stage
        self.history = history
        return history

    def _fine_tune(self) -> pd.DataFrame:
        """Fine-tuning; ``unfreeze=gradual`` unfreezes more in steps, each at half the
        previous learning rate and recompiled."""
        steps, stage = self._unfreeze_steps(), self.stage
        histories = []
        splits = self.splits
        for index, unfreeze in enumerate(steps):
            step = dataclasses.replace(
                stage, learning_rate=stage.learning_rate * GRADUAL_DECAY**index
            )
            if index:
                self.set_trainable(unfreeze, step.learning_rate)
            history = fit(
                self.model, splits.x_train, splits.y_train, splits.x_val, splits.y_val, step,
                self.job, seed=self.profile.seed + index,
                callbacks=self.callbacks if index == 0 else stage_callbacks(step, self.job),
            )  # fmt: skip
            history["unfreeze"] = unfreeze
            histories.append(history)
        return pd.concat(histories, ignore_index=True)

    def head_features(self) -> dict:
        """The frozen backbone's pooled features of every split, cached on disk."""
        profile, splits = self.profile, self.splits
        cache_file = (
            config.RUNS_DIR
            / "features"
            / f"{profile.backbone}-{profile.image_size}px-{_features_key(profile, splits)}.npz"
        )
        return cached_features(
            self.model, splits, cache_file, self.stage.batch_size, self.placement
        )

    def evaluate(self) -> dict:
        """Predict the test set (after fine-tuning also with flipped copies), write the run
        folder (model, history, predictions, metrics.json) and return the metrics."""
        splits, stage, placement = self.splits, self.stage, self.placement
        extra = {"batch_size": stage.batch_size}  # a baseline's is baseline_batch_size
        with placement.scope():
            if self.spec.stage == "head":
                probabilities = placement.predict(
                    self.trainee, self.features["test"], stage.batch_size
                )
            else:
                probabilities = placement.predict(self.model, splits.x_test, stage.batch_size)
            if self.spec.stage == "finetune":
                tta = evaluation.predict_with_tta(
                    placement.predictor(self.model),
                    splits.x_test,
                    batch_size=stage.batch_size,
                    probabilities=probabilities,
                )
                extra["tta_test_accuracy"] = evaluation.accuracy(splits.y_test, tta)
        history = self.history
        if self.earlier is not None:
            earlier = self.earlier.drop(columns=["epoch"])
            history = pd.concat([earlier, history], ignore_index=True)
        history.insert(0, "epoch", range(1, len(history) + 1))
        metrics = runs.record(
            self.spec,
            self.profile,
            splits,
            probabilities,
            history,
            wall_time_s=time.perf_counter() - self.started,
            precision=self.precision,
            device_count=placement.device_count,
            extra=extra,
        )
        if placement.is_chief:
            runs.write(self.out_dir, self.model, history, splits.y_test, probabilities, metrics)
        placement.finish(self.job.out_dir)
        return metrics


def run_experiment(
    experiment: str,
    profile: config.Profile,
    data=None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    devices=None,
    splits=None,
    callbacks=(),
) -> dict:
    """Train ``experiment`` with ``profile`` (``config.profile(...)``) end to end, write its
    run folder and return metrics.json's dict: the steps of ``Experiment``, in order."""
    run = Experiment(experiment, profile, data, out_dir, resume, devices, splits, callbacks)
    run.build()
    run.set_trainable()
    run.fit()
    return run.evaluate()
