"""Paths, experiments and profiles: the one place where each is defined.

A *profile* is one complete hyper-parameter set (airbench style). ``Profile``'s defaults are
the base recipe, ``quick``; every other profile is written as the fields it changes. One
override mechanism serves the CLI (``--set key=value``), the notebooks (``overrides``) and
the benchmarks: ``profile(name, **overrides)``, with ``parse_setting`` for text. Every
result records the profile it ran with (``Profile.to_dict``).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path

CLASS_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SHAPE = (32, 32, 3)
# Keras dtype policies a run can use; "auto" picks one for the device (hardware.auto_precision).
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")


CHECKOUT = Path(__file__).resolve().parents[2]


def _find_root() -> Path:
    """Where outputs go: $CIFAR10_TRANSFER_ROOT, else the checkout holding this package."""
    if "CIFAR10_TRANSFER_ROOT" in os.environ:
        return Path(os.environ["CIFAR10_TRANSFER_ROOT"]).resolve()
    # An editable install lives in the checkout; a plain pip install (e.g. Colab) does not,
    # and then the working directory is the best guess.
    return CHECKOUT if (CHECKOUT / "pyproject.toml").exists() else Path.cwd()


ROOT = _find_root()
# The checkout whose committed results/ notebook 05 can read: this package's, or (installed
# from a wheel, as in Colab) the working folder's, where the Colab install cell clones it.
COMMITTED_RESULTS = (CHECKOUT if (CHECKOUT / "pyproject.toml").exists() else Path.cwd()) / "results"
# The one place the repository's address is written; the README's badges and the notebooks'
# Colab install cells must say the same (tests/test_notebooks.py holds them to it).
REPOSITORY_URL = "https://github.com/cifar10-transfer/cifar10-transfer"
RESULTS_DIR = ROOT / "results"
# Minutes per notebook on a Colab T4 for the GPU profiles, estimated from counted FLOPs
# (benchmarks/gpu_estimate.py) until the GPU suite measures them; beside results/.
GPU_ESTIMATE = Path("benchmarks") / "results" / "gpu_estimate-t4.json"
IMAGES_DIR = ROOT / "images"
NOTEBOOKS_DIR = CHECKOUT / "notebooks"  # shipped with the code, wherever outputs go
NOTEBOOKS = (  # in NOTEBOOKS_DIR, in the order a reader (and make reproduce) runs them
    "01_eda.ipynb",
    "02_baseline_cnn.ipynb",
    "03_transfer_head.ipynb",
    "04_finetune.ipynb",
    "05_compare_and_errors.ipynb",
)
RUNS_DIR = ROOT / "runs"  # model checkpoints and run folders (git-ignored)
PRESENTATION_DIR = ROOT / "presentation"
SHARED_DATA = CHECKOUT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def cache_dir() -> Path:
    """Keras's cache folder (``$KERAS_HOME`` or ``~/.keras``): downloads and decoded arrays."""
    base = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(base)


@dataclasses.dataclass(frozen=True)
class PriorResult:
    """A published CIFAR-10 test accuracy (not ours) and the setting it was measured on."""

    label: str  # source and model, short enough for a slide's chart
    accuracy: float  # fraction
    stage: str  # "baseline" (from scratch), "head" (frozen backbone) or "finetune"
    train_images: int | None = None  # None: the setting is not given by what we cite
    image_size: int | None = None  # px the model sees
    device: str = ""


# Prior results we compare with. MapiAI: the MapiAI cifar10-image-classification repository
# (a 10k training subset; its CNN on the 32 px images, ResNet-50 at 224 px; a GPU); Kallu
# et al.: Kallu, Movva et al., "Enhancing CIFAR-10 Image Classification using Transfer
# Learning with ResNet18"; Kornblith: Kornblith et al. 2019, "Do Better ImageNet Models
# Transfer Better?" (all 50k training images, 224 px). Drawn as reference lines, and each
# beside our result on its own setting (reports.like_with_like).
PRIOR_RESULTS = (
    PriorResult("MapiAI: baseline CNN, 10k", 0.605, "baseline", 10_000, 32, "GPU"),
    PriorResult("Kallu et al.: custom CNN", 0.73, "baseline"),
    PriorResult("Kallu et al.: ResNet-18 tuned", 0.82, "finetune"),
    PriorResult("MapiAI: ResNet-50 head, 224 px", 0.887, "head", 10_000, 224, "GPU"),
    PriorResult("MapiAI: ResNet-50 tuned, 224 px", 0.91, "finetune", 10_000, 224, "GPU"),
    PriorResult("Kornblith: ResNet-50 linear, 50k", 0.936, "head", 50_000, 224),
    PriorResult("Kornblith: ResNet-50 tuned, 50k", 0.975, "finetune", 50_000, 224),
)
PRIOR_WORK = {prior.label: prior.accuracy for prior in PRIOR_RESULTS}


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One entry of the list of experiments: what it builds, how it trains, how it is shown."""

    name: str
    label: str  # results tables and charts; "{backbone}" is filled in
    stage: str  # "baseline" (from scratch), "head" (frozen backbone) or "finetune"
    builder: str  # the models function that builds it ("finetune" starts from its prerequisite)
    prerequisite: str | None = None  # the experiment whose run this one starts from
    # A baseline trains with the profile's baseline_augment only where this is True; the two
    # simple baselines train as in the MapiAI repository, without (and in half the time).
    augments: bool = True


EXPERIMENTS = {
    experiment.name: experiment
    for experiment in (
        Experiment(
            name="baseline_cnn",
            label="Baseline CNN (from scratch)",
            stage="baseline",
            builder="baseline_cnn",
        ),
        Experiment(
            name="two_layer_fc",
            label="Two-layer FC (from scratch)",
            stage="baseline",
            builder="two_layer_fc",
            augments=False,
        ),
        Experiment(
            name="three_layer_cnn",
            label="Three-layer CNN (from scratch)",
            stage="baseline",
            builder="three_layer_cnn",
            augments=False,
        ),
        Experiment(
            name="head",
            label="{backbone} head only (frozen)",
            stage="head",
            builder="build_transfer_model",
        ),
        Experiment(
            name="finetune",
            label="{backbone} fine-tuned",
            stage="finetune",
            builder="",
            prerequisite="head",
        ),
    )
}


def experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ValueError(f"experiment must be one of {', '.join(EXPERIMENTS)}, got {name!r}")
    return EXPERIMENTS[name]


@dataclasses.dataclass(frozen=True)
class Profile:
    """One recipe; the defaults are the base recipe, ``quick`` (the CPU default, offline: a
    10k training subset as in the MapiAI repository, the full test set, EfficientNet-Lite2 at
    96 px). Units are in the comments; ``None`` means "all" for sizes and random
    initialisation for ``weights``.

    Why this recipe (measured on the 2-core CPU; the trials are in results/quick-trials/ and
    the README's "Recipe"): Lite2 rather than Lite0. 128 px and 3 fine-tuning epochs rather
    than 96 px and 4: 88.2% ± 0.1 against 86.9% ± 0.4 over three seeds, for about 1.3x the
    time of the head and fine-tuning. ReduceLROnPlateau, the design's schedule, rather than
    cosine decay: over three seeds fine-tuning with it was not worse than with cosine decay by
    more than the spread over seeds. Fine-tuning from block 4 on rather than block 2:
    validation tracked block 2's epoch by epoch at about 0.9x the time per epoch. The
    baselines train 10 epochs at 2e-3 rather than 30: the baseline CNN reaches about 64%
    rather than 68%, in a third of the time. The two simple baselines train without
    augmentation, as in the MapiAI repository.
    """

    name: str = "quick"
    # data
    train_size: int | None = 10_000  # training images (stratified subset of the 48k after val)
    val_size: int = 2_000  # validation images, held out of the 50k training set, never test
    test_size: int | None = None  # test images (stratified subset of the 10k)
    # transfer model
    backbone: str = "efficientnet_lite2"
    weights: str | None = "imagenet"  # "imagenet", a local weights file, or None (random)
    image_size: int = 128  # px, side length the 32x32 input is resized to inside the model
    head: str = "dense"  # "dense" (Dense-ReLU, dropout), "dense_bn" (+ BN), or "linear"
    head_units: int = 256  # units of the head's hidden dense layer
    dropout_rate: float = 0.5  # head dropout
    label_smoothing: float = 0.1
    batch_size: int = 64  # images per optimizer update (global, across devices)
    head_epochs: int = 15
    head_learning_rate: float = 1e-3  # Adam, head stage
    finetune_epochs: int = 3
    finetune_learning_rate: float = 3e-4  # fine-tuning stage, initial (Adam; head stage: 1e-3)
    # "top:N" layers, "stage:NAME", "all"; block4 on: blocks 4-7 and the top (the
    # stem and blocks 1-3, at the highest resolutions, stay frozen and need no backward pass)
    unfreeze: str = "stage:block4"
    lr_schedule: str = "plateau"  # "plateau" (ReduceLROnPlateau), "cosine" or "constant"
    augment: bool = True  # augmentation layers active while fine-tuning
    baseline_augment: bool = True  # augmentation for the baseline CNN (Experiment.augments)
    train_bn: bool = False  # BatchNorm trains while fine-tuning (off: inference mode)
    early_stopping_patience: int = 4  # epochs without val_accuracy gain before stopping
    # fine-tuning recipe (the head stage and the baselines train with Adam)
    optimizer: str = "adam"  # "adam", "adamw" or "sgd" (Nesterov momentum 0.9)
    weight_decay: float = 0.0  # decoupled, per update x learning rate; not BatchNorm or biases
    warmup_epochs: float = 0.0  # linear warm-up from 0 before the cosine decay (epochs)
    use_ema: bool = True  # evaluate and keep an exponential moving average of the weights
    stochastic_depth: float = 0.0  # EfficientNet-Lite drop-connect rate of the last block
    mixing: str = "none"  # "none", "mixup" or "cutmix" (keras.layers, on each batch)
    randaugment: bool = False  # keras.layers.RandAugment on each batch (2 ops, factor 0.5)
    # from-scratch baselines
    baseline_epochs: int = 10
    baseline_learning_rate: float = 2e-3  # Adam
    baseline_batch_size: int = 64  # images per step
    seed: int = 42
    # dtype policy: "auto" (float32 on a CPU, mixed_float16 below compute capability 8.0,
    # mixed_bfloat16 from 8.0), or "float32", "mixed_float16", "mixed_bfloat16"
    precision: str = "auto"
    # A GPU profile: without an accelerator training refuses to start (hours on a CPU,
    # hardware.check_accelerator) unless allow_cpu is set.
    needs_accelerator: bool = False
    allow_cpu: bool = False
    # Fine-tuning: micro-batches of batch_size / N images per optimizer update (N must divide
    # batch_size): the same effective batch in about 1/N of the activation memory. The
    # baselines and the head stage train on small models or features and never need it.
    gradient_accumulation_steps: int = 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


QUICK = Profile()
PROFILES: dict[str, Profile] = {
    "quick": QUICK,
    # CI: tiny data, one epoch, 32 px so every notebook finishes in seconds.
    "smoke": dataclasses.replace(
        QUICK,
        name="smoke",
        backbone="efficientnet_lite0",  # the cheapest to build and load
        train_size=200,
        val_size=100,
        test_size=200,
        image_size=32,
        head_units=64,
        label_smoothing=0.0,
        batch_size=50,
        head_epochs=1,
        finetune_epochs=1,
        unfreeze="top:20",
        early_stopping_patience=2,
        baseline_epochs=1,
        baseline_batch_size=50,
    ),
}
# The MapiAI repository's setting on a CPU: quick's data (10k training images, the full test
# set) near its 224 px. At 192 px a fine-tuning epoch costs about 2x one at 128 px (4 min on 2
# cores), so 7 of them fit an hour of notebooks; the trials (results/quick-trials/hires-*):
# 192 px for 5 epochs reached 90.04%, 224 px for 3 epochs 89.14%, and the 192-px model tested
# at 224 px lost 0.6 points. Fine-tuning at half quick's rate: 90.51% and 90.57% on seeds 42
# and 43 against 90.04% and 89.69% at 3e-4; 1e-4 trailed 1.5e-4 at every epoch. Its baselines
# train 30 epochs.
PROFILES["hires"] = dataclasses.replace(
    QUICK,
    name="hires",
    image_size=192,
    finetune_epochs=7,
    finetune_learning_rate=1.5e-4,  # Adam, half quick's 3e-4
    baseline_epochs=30,
)
# The GPU fine-tuning recipe, from the published anchors: BatchNorm trained (Kornblith et al.
# 2019; EfficientNet), SGD with Nesterov momentum and a warm-up + cosine schedule (Kornblith
# et al.; BiT-HyperRule), every layer unfrozen, large batches. ``quick`` keeps BatchNorm
# frozen: at its CPU batch of 64, batch statistics are noisy and training them is slower.
GPU_BASE = dataclasses.replace(
    QUICK,
    backbone="resnet50",  # the design's backbone
    image_size=224,
    batch_size=256,
    unfreeze="all",
    train_bn=True,
    optimizer="sgd",
    finetune_learning_rate=0.01,  # SGD at batch 256 (BiT: 0.003 at 512, from ImageNet-21k)
    lr_schedule="cosine",
    warmup_epochs=1.0,
    label_smoothing=0.1,
    early_stopping_patience=5,
    baseline_epochs=30,
    needs_accelerator=True,
)
PROFILES.update(
    {
        # GPU: all 48k training images, the design's ResNet-50 at 224 px, the GPU recipe;
        # MixUp from 20k images up (BiT-HyperRule).
        "full": dataclasses.replace(
            GPU_BASE,
            name="full",
            train_size=None,
            head_epochs=5,
            finetune_epochs=10,
            mixing="mixup",
            baseline_epochs=60,
            baseline_batch_size=128,
        ),
        # The MapiAI repository's setup (10k subset, 224 px), for like-for-like comparison
        # with its baseline CNN, head-only and fine-tuned ResNet-50, trained with the GPU recipe.
        "paper": dataclasses.replace(
            GPU_BASE,
            name="paper",
            head_epochs=10,
            finetune_epochs=15,
        ),
        # Time to 94% test accuracy on one GPU (benchmarks/time_to_accuracy.py): Lite0 on all
        # training images, every layer fine-tuned from the start at a lower resolution.
        "fast": dataclasses.replace(
            GPU_BASE,
            name="fast",
            backbone="efficientnet_lite0",
            train_size=None,
            image_size=160,
            finetune_epochs=6,
            early_stopping_patience=6,
        ),
    }
)
# What each profile is for (the README's profile table).
PURPOSES = {
    "quick": "the CPU default, offline",
    "hires": "a CPU: the MapiAI setting, 192 px",
    "smoke": "CI: every notebook in seconds",
    "full": "a GPU: all training images",
    "paper": "a GPU: like-for-like with the MapiAI repository",
    "fast": "a GPU: time to 94% test accuracy",
}
SETTINGS = {field.name: field for field in dataclasses.fields(Profile)}


# The choices of the settings that name one, and the valid range of every numeric setting
# (low, high; inclusive unless marked): ``check`` tests a profile against them before any
# work starts. OPTIONAL_SIZES may also be None.
HEADS = ("dense", "dense_bn", "linear")
SCHEDULES = ("plateau", "cosine", "constant")
OPTIMIZERS = ("adam", "adamw", "sgd")
MIXINGS = ("none", "mixup", "cutmix")
CHOICES = {
    "head": HEADS,
    "lr_schedule": SCHEDULES,
    "optimizer": OPTIMIZERS,
    "mixing": MIXINGS,
    "precision": PRECISIONS,
}
TRAIN_IMAGES, TEST_IMAGES = 50_000, 10_000  # CIFAR-10's splits
RANGES = {
    "train_size": (NUM_CLASSES, TRAIN_IMAGES - NUM_CLASSES, "images"),
    "val_size": (NUM_CLASSES, TRAIN_IMAGES - NUM_CLASSES, "images"),
    "test_size": (NUM_CLASSES, TEST_IMAGES, "images"),
    # Above 512 px one batch of a 32x32 image upscaled is mostly memory, not information.
    "image_size": (32, 512, "px"),
    "head_units": (1, 8192, "units"),
    "batch_size": (1, 65_536, "images"),
    "baseline_batch_size": (1, 65_536, "images"),
    "head_epochs": (1, 1000, "epochs"),
    "finetune_epochs": (1, 1000, "epochs"),
    "baseline_epochs": (1, 1000, "epochs"),
    "early_stopping_patience": (1, 1000, "epochs"),
    "gradient_accumulation_steps": (1, 65_536, "micro-batches"),
    "seed": (0, 2**32 - 1, ""),
}
OPTIONAL_SIZES = ("train_size", "test_size")  # None: all of them
# Fractions and rates: (low, high, whether high itself is allowed).
REAL_RANGES = {
    "dropout_rate": (0.0, 1.0, False),
    "label_smoothing": (0.0, 1.0, False),
    "stochastic_depth": (0.0, 1.0, False),
    "weight_decay": (0.0, 1.0, True),
    "warmup_epochs": (0.0, 1000.0, True),
}
LEARNING_RATES = ("head_learning_rate", "finetune_learning_rate", "baseline_learning_rate")
UNFREEZE_FORMS = "head, all, top:N (N >= 1) or stage:NAME"


@dataclasses.dataclass(frozen=True)
class Unfreeze:
    """The ``unfreeze`` setting, parsed: which backbone layers fine-tuning trains. "head"
    (none), "all", "top:N" (the last N layers) or "stage:NAME" (from the first layer whose
    name starts with NAME to the end, e.g. "stage:block4" or "stage:conv5")."""

    kind: str  # "head", "all", "top" or "stage"
    top: int = 0  # "top:N": N
    stage: str = ""  # "stage:NAME": NAME

    @classmethod
    def parse(cls, text: str) -> Unfreeze:
        kind, _, argument = str(text).partition(":")
        if text in ("head", "all"):
            return cls(text)
        if kind == "top" and argument.isdigit() and int(argument) >= 1:
            return cls(kind, top=int(argument))
        if kind == "stage" and argument:
            return cls(kind, stage=argument)
        raise ValueError(f"unfreeze={text!r}: expected {UNFREEZE_FORMS}")

    @property
    def description(self) -> str:
        return {
            "head": "keep the backbone frozen",
            "all": "unfreeze every layer",
            "top": f"unfreeze the top {self.top} layers",
            "stage": f"unfreeze from {self.stage} on",
        }[self.kind]


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


def check(profile: Profile) -> Profile:
    """``profile`` if every setting is in its range; else a ValueError naming the setting,
    its value and what it may be. Whether ``stage:NAME`` and the backbone exist is
    ``models.check_profile``'s to say (it needs Keras)."""
    settings = profile.to_dict()
    for name, (low, high, unit) in RANGES.items():
        value = settings[name]
        if value is None and name in OPTIONAL_SIZES:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            unit = f" ({unit})" if unit else ""
            raise ValueError(f"{name}={value!r}: expected an integer from {low} to {high}{unit}")
    for name, (low, high, closed) in REAL_RANGES.items():
        value = settings[name]
        inside = isinstance(value, int | float) and not isinstance(value, bool)
        if not inside or not (low <= value <= high if closed else low <= value < high):
            bracket = "]" if closed else ")"
            raise ValueError(f"{name}={value!r}: expected a number in [{low:g}, {high:g}{bracket}")
    for name in LEARNING_RATES:
        value = settings[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 10:
            raise ValueError(f"{name}={value!r}: expected a learning rate above 0 and at most 10")
    for name, choices in CHOICES.items():
        if settings[name] not in choices:
            raise ValueError(f"{name}={settings[name]!r}: expected one of {', '.join(choices)}")
    if profile.train_size is not None and profile.train_size + profile.val_size > TRAIN_IMAGES:
        raise ValueError(
            f"train_size={profile.train_size} + val_size={profile.val_size}: together at most "
            f"{TRAIN_IMAGES} (CIFAR-10's training images)"
        )
    micro_batch_size(profile.batch_size, profile.gradient_accumulation_steps)
    if profile.weight_decay and profile.optimizer == "adam":
        raise ValueError(
            f"weight_decay={profile.weight_decay:g} needs optimizer=adamw or sgd "
            "(Adam with decoupled weight decay is AdamW)"
        )
    if profile.warmup_epochs and profile.lr_schedule != "cosine":
        raise ValueError(
            f"warmup_epochs={profile.warmup_epochs:g} needs lr_schedule=cosine, "
            f"got {profile.lr_schedule!r}"
        )
    Unfreeze.parse(profile.unfreeze)
    return profile


def profile(base: str | Profile = "quick", **overrides) -> Profile:
    """Profile ``base`` (a name, or a Profile) with ``overrides`` applied; an unknown profile
    or setting name is a ValueError. ``profile("quick", backbone="resnet50", seed=43)``."""
    if isinstance(base, str):
        if base not in PROFILES:
            raise ValueError(f"profile must be one of {', '.join(PROFILES)}, got {base!r}")
        base = PROFILES[base]
    unknown = sorted(set(overrides) - set(SETTINGS))
    if unknown:
        raise ValueError(f"unknown profile setting(s) {unknown}; known: {sorted(SETTINGS)}")
    return dataclasses.replace(base, **overrides)


def parse_setting(text: str) -> tuple[str, object]:
    """``"key=value"`` -> (key, value typed like the Profile field ``key``). A field that may
    be None takes ``none`` (weights: random initialisation); a size also takes ``all``."""
    key, separator, value = text.partition("=")
    key = key.strip().replace("-", "_")
    if not separator or key not in SETTINGS:
        raise ValueError(
            f"setting {text!r}: expected KEY=VALUE with KEY one of {', '.join(SETTINGS)}"
        )
    return key, _typed(key, value.strip())


def setting_text(key: str, value) -> str:
    """``parse_setting``'s inverse: ``"key=value"``, with ``none`` for None."""
    return f"{key}={'none' if value is None else value}"


def _typed(key: str, value: str):
    annotation = typing.get_type_hints(Profile)[key]
    kinds = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else ()
    kinds = kinds or (annotation,)
    if type(None) in kinds and value.lower() in (
        "none",
        "all" if key.endswith("_size") else "none",
    ):
        return None
    kind = next(kind for kind in kinds if kind is not type(None))
    if kind is bool:
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"setting {key}={value!r}: expected true or false")
        return value.lower() in ("true", "1", "yes")
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"setting {key}={value!r}: expected {kind.__name__}") from None


def output_dirs(profile_name: str, results_dir=None, figures_dir=None) -> tuple[Path, Path]:
    """A notebook's output folders: JSON in results/<profile>, figures in images/<profile>."""
    results = Path(results_dir) if results_dir else RESULTS_DIR / profile_name
    figures = Path(figures_dir) if figures_dir else IMAGES_DIR / profile_name
    results.mkdir(parents=True, exist_ok=True)
    figures.mkdir(parents=True, exist_ok=True)
    return results, figures
