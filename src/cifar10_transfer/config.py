"""Paths and experiment profiles: the one place where both are defined.

A *profile* is one complete hyper-parameter set (airbench style). Every function
in the package defaults to the active profile's values and accepts overrides, and
every result records the profile it ran with (``Profile.to_dict``).
"""

from __future__ import annotations

import dataclasses
import os
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
# Keras dtype policies a run can use; "auto" picks one for the device (training.auto_precision).
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
RESULTS_DIR = ROOT / "results"
IMAGES_DIR = ROOT / "images"
NOTEBOOKS_DIR = CHECKOUT / "notebooks"  # shipped with the code, wherever outputs go
RUNS_DIR = ROOT / "runs"  # model checkpoints and run folders (git-ignored)
PRESENTATION_DIR = ROOT / "presentation"
SHARED_DATA = CHECKOUT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def cache_dir() -> Path:
    """Keras's cache folder (``$KERAS_HOME`` or ``~/.keras``): downloads and decoded arrays."""
    base = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(base)


# Prior write-ups we compare with (CIFAR-10 test accuracy, fractions). These are
# literature figures, not our results, and are only drawn as reference lines.
PRIOR_WORK = {
    "Seed baseline CNN (10k subset)": 0.605,
    "Seed custom CNN": 0.73,
    "ResNet-18 fine-tuned": 0.82,
    "ResNet-50 head only (10k subset)": 0.887,
    "ResNet-50 fine-tuned (10k subset)": 0.91,
}


@dataclasses.dataclass(frozen=True)
class Profile:
    """One recipe. Units are in the comments; ``None`` means "all"."""

    name: str
    # data
    train_size: int | None  # training images (stratified subset of the 48k left after val)
    val_size: int  # validation images, held out of the 50k training set, never the test set
    test_size: int | None  # test images (stratified subset of the 10k)
    # transfer model
    backbone: str
    weights: str | None  # "imagenet", a local weights file, or None for random init
    image_size: int  # px, side length the 32x32 input is resized to inside the model
    head: str  # "seed" (GAP-256-dropout), "slides" (dense-BN-dropout) or "linear"
    head_units: int  # units of the head's hidden dense layer
    dropout_rate: float  # head dropout
    label_smoothing: float
    batch_size: int  # images per optimizer step (global, across devices)
    head_epochs: int
    head_learning_rate: float  # Adam, head stage
    finetune_epochs: int
    finetune_learning_rate: float  # Adam, fine-tuning stage (lower: pretrained weights)
    unfreeze: str  # "top:N" layers, "stage:NAME", "gradual", "all"
    lr_schedule: str  # "plateau" (ReduceLROnPlateau), "cosine" or "constant"
    augment: bool  # augmentation layers active while fine-tuning
    baseline_augment: bool  # augmentation for the from-scratch baselines (costly on a CPU)
    train_bn: bool  # let BatchNorm train while fine-tuning (off: inference mode, Keras guide)
    early_stopping_patience: int  # epochs without val_accuracy gain before stopping
    # from-scratch baselines
    baseline_epochs: int
    baseline_learning_rate: float  # Adam
    baseline_batch_size: int  # images per step
    seed: int = 42
    # dtype policy: "auto" (float32 on a CPU, mixed_float16 below compute capability 8.0,
    # mixed_bfloat16 from 8.0), or "float32", "mixed_float16", "mixed_bfloat16"
    precision: str = "auto"
    # A GPU profile: without an accelerator training refuses to start (hours on a CPU,
    # training.check_accelerator) unless allow_cpu is set.
    needs_accelerator: bool = False
    allow_cpu: bool = False
    # Micro-batches of batch_size / N images per optimizer update (which must divide evenly):
    # the same effective batch in about 1/N of the activation memory.
    gradient_accumulation_steps: int = 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PROFILES: dict[str, Profile] = {
    # CI: tiny data, one epoch, 32 px so every notebook finishes in seconds.
    "smoke": Profile(
        name="smoke",
        train_size=200,
        val_size=100,
        test_size=200,
        backbone="efficientnet_lite0",
        weights="imagenet",
        image_size=32,
        head="seed",
        head_units=64,
        dropout_rate=0.5,
        label_smoothing=0.0,
        batch_size=50,
        head_epochs=1,
        head_learning_rate=1e-3,
        finetune_epochs=1,
        finetune_learning_rate=1e-4,
        unfreeze="top:20",
        lr_schedule="plateau",
        augment=True,
        baseline_augment=False,
        train_bn=False,
        early_stopping_patience=2,
        baseline_epochs=1,
        baseline_learning_rate=1e-3,
        baseline_batch_size=50,
    ),
    # CPU default, offline: the seed's 10k subset, full test set, Lite0 at 96 px. At 128 px, on
    # 2 busy cores, the head stage took 9.6 min (77.6% test) and one fine-tuning epoch 7 min:
    # too slow for the 20-minute budget. 96 px needs (96/128)^2 = 56% of the compute.
    # Augmenting the baselines on the CPU made notebook 02 take 9 min (seed CNN 63.2%), so the
    # quick baselines train without it.
    "quick": Profile(
        name="quick",
        train_size=10_000,
        val_size=2_000,
        test_size=None,
        backbone="efficientnet_lite0",
        weights="imagenet",
        image_size=96,
        head="seed",
        head_units=256,
        dropout_rate=0.5,
        label_smoothing=0.1,
        batch_size=64,
        head_epochs=15,
        head_learning_rate=1e-3,
        finetune_epochs=3,
        finetune_learning_rate=1e-4,
        unfreeze="stage:block6",
        lr_schedule="plateau",
        augment=True,
        baseline_augment=False,
        train_bn=False,
        early_stopping_patience=4,
        baseline_epochs=12,
        baseline_learning_rate=1e-3,
        baseline_batch_size=64,
    ),
    # GPU: all 48k training images, the design's ResNet-50 at 224 px.
    "full": Profile(
        name="full",
        train_size=None,
        val_size=2_000,
        test_size=None,
        backbone="resnet50",
        weights="imagenet",
        image_size=224,
        head="seed",
        head_units=256,
        dropout_rate=0.5,
        label_smoothing=0.1,
        batch_size=256,
        head_epochs=10,
        head_learning_rate=1e-3,
        finetune_epochs=10,
        finetune_learning_rate=1e-4,
        unfreeze="all",
        lr_schedule="cosine",
        augment=True,
        baseline_augment=True,
        train_bn=False,
        early_stopping_patience=5,
        baseline_epochs=60,
        baseline_learning_rate=1e-3,
        baseline_batch_size=128,
        needs_accelerator=True,
    ),
    # The seed setup, for like-for-like comparison with 60.5% / 88.7% / 91%.
    "paper": Profile(
        name="paper",
        train_size=10_000,
        val_size=2_000,
        test_size=None,
        backbone="resnet50",
        weights="imagenet",
        image_size=224,
        head="seed",
        head_units=256,
        dropout_rate=0.5,
        label_smoothing=0.1,
        batch_size=128,
        head_epochs=10,
        head_learning_rate=1e-3,
        finetune_epochs=15,
        finetune_learning_rate=1e-4,
        unfreeze="stage:conv4",
        lr_schedule="plateau",
        augment=True,
        baseline_augment=False,
        train_bn=False,
        early_stopping_patience=5,
        baseline_epochs=30,
        baseline_learning_rate=1e-3,
        baseline_batch_size=64,
        needs_accelerator=True,
    ),
}


def get_profile(name: str = "quick", **overrides) -> Profile:
    """Return profile ``name`` with ``overrides`` applied (``weights=None``: random init)."""
    if name not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {name!r}")
    return override(PROFILES[name], **overrides)


def override(profile: Profile, **overrides) -> Profile:
    """``profile`` with some settings replaced; unknown setting names are a ValueError."""
    fields = {field.name for field in dataclasses.fields(Profile)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown profile setting(s) {unknown}; known: {sorted(fields)}")
    return dataclasses.replace(profile, **overrides)


def resolve_profile(name: str = "quick", **options) -> Profile:
    """``get_profile`` for the CLI and notebooks: options left unset (None) keep the profile's
    value; ``weights="none"`` means random initialisation."""
    overrides = {key: value for key, value in options.items() if value is not None}
    if overrides.get("weights") == "none":
        overrides["weights"] = None
    return get_profile(name, **overrides)


def output_dirs(profile: str, results_dir=None, figures_dir=None) -> tuple[Path, Path]:
    """A notebook's output folders: JSON in results/<profile>, figures in images/<profile>."""
    results = Path(results_dir) if results_dir else RESULTS_DIR / profile
    figures = Path(figures_dir) if figures_dir else IMAGES_DIR / profile
    results.mkdir(parents=True, exist_ok=True)
    figures.mkdir(parents=True, exist_ok=True)
    return results, figures
