"""Model builders: from-scratch baselines and the transfer model.

Every model takes raw ``uint8`` RGB images of 32x32 and returns 10 softmax
probabilities. Casting, augmentation, resizing and the backbone's own
preprocessing are built-in Keras layers inside the model, so a saved
``model.keras`` loads with ``safe_mode=True`` and predicts without this package.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import pandas as pd
from keras import layers

from cifar10_transfer import config, efficientnet_lite
from cifar10_transfer.efficientnet_lite import WeightsError

# Augmentation strengths, applied at 32x32 before resizing (cheap, and pad-and-crop
# style translation is the classic CIFAR recipe).
AUGMENT_TRANSLATE = 0.1  # fraction of the side: +-3 px at 32 px
AUGMENT_ZOOM = 0.1  # fraction of the side
AUGMENT_ROTATION = 0.03  # fraction of a full turn: about +-11 degrees
AUGMENT_BRIGHTNESS = 0.1  # fraction of the 0..255 range
AUGMENT_CONTRAST = 0.1  # contrast factor range 0.9..1.1

# Pixel conventions of keras.applications backbones, by class-name prefix. "caffe": BGR
# with the ImageNet mean subtracted on 0..255; "tf": scaled to -1..1; "torch": 0..1 then
# ImageNet mean/std; "included": the model scales 0..255 input itself.
PREPROCESSING_BY_PREFIX = {
    "ResNet50V2": "tf",
    "ResNet101V2": "tf",
    "ResNet152V2": "tf",
    "ResNet": "caffe",
    "VGG": "caffe",
    "MobileNetV3": "included",
    "MobileNet": "tf",
    "Inception": "tf",
    "Xception": "tf",
    "NASNet": "tf",
    "DenseNet": "torch",
    "EfficientNet": "included",
    "ConvNeXt": "included",
    "RegNet": "included",
}
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
TORCH_STD_RGB = (0.229, 0.224, 0.225)

# File names Keras downloads ImageNet weights to (no top), for the offline error message.
RESNET_NOTOP_FILES = {
    "ResNet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "ResNet101": "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "ResNet152": "resnet152_weights_tf_dim_ordering_tf_kernels_notop.h5",
}


# ---------------------------------------------------------------- baselines


@keras.saving.register_keras_serializable(package="cifar10_transfer")
class RandomAffine(layers.Layer):
    """Random translation, zoom and rotation of images in one bilinear resampling.

    It replaces RandomTranslation, RandomZoom and RandomRotation: Keras marks those
    ``supports_jit=False`` (on TensorFlow they use ImageProjectiveTransformV3, which has no
    XLA kernel), and one such layer makes ``jit_compile="auto"`` run the whole train step
    eagerly on JAX. This layer is only keras.ops (a gather and arithmetic), so it compiles
    under JAX jit and TensorFlow XLA. Samples outside the image reflect about its edges
    (d c b a | a b c d | d c b a), as ``fill_mode="reflect"`` does.

    translate: largest shift, as a fraction of the side; zoom: largest change of scale
    (1 - zoom .. 1 + zoom; above 1 zooms out); rotation: largest angle, as a fraction of a
    full turn. Each is drawn uniformly per image, symmetric around no change.
    """

    def __init__(
        self,
        translate: float = 0.0,
        zoom: float = 0.0,
        rotation: float = 0.0,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for setting, value, upper in (
            ("translate", translate, 1.0),
            ("zoom", zoom, 1.0),
            ("rotation", rotation, 0.5),
        ):
            if not 0.0 <= value < upper:
                raise ValueError(f"RandomAffine {setting} must be in [0, {upper}), got {value}")
        self.translate = float(translate)
        self.zoom = float(zoom)
        self.rotation = float(rotation)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=True):
        # Same default as Keras's random image layers: called alone, the layer augments.
        images = keras.ops.cast(inputs, self.compute_dtype)
        if not training:
            return images
        batch, height, width, channels = keras.ops.shape(images)
        # One draw per image: shift y, shift x, scale, angle, each uniform in -1..1.
        draws = keras.random.uniform((batch, 4), -1.0, 1.0, seed=self.seed_generator)
        shift_y = draws[:, 0, None, None] * (self.translate * height)
        shift_x = draws[:, 1, None, None] * (self.translate * width)
        scale = 1.0 + draws[:, 2, None, None] * self.zoom
        angle = draws[:, 3, None, None] * (2.0 * np.pi * self.rotation)
        # Output pixel -> source position: rotate and scale about the centre, then shift.
        center_y, center_x = (height - 1) / 2.0, (width - 1) / 2.0
        y = keras.ops.arange(height, dtype="float32")[None, :, None] - center_y
        x = keras.ops.arange(width, dtype="float32")[None, None, :] - center_x
        cos, sin = scale * keras.ops.cos(angle), scale * keras.ops.sin(angle)
        source_y = _reflect(sin * x + cos * y + center_y + shift_y, height)
        source_x = _reflect(cos * x - sin * y + center_x + shift_x, width)
        # Float32 interpolation: bfloat16 would round positions to 1/8 px and blur the mix.
        flat = keras.ops.reshape(keras.ops.cast(images, "float32"), (-1, channels))
        offsets = keras.ops.arange(batch, dtype="int32")[:, None, None] * (height * width)
        y0, x0 = keras.ops.floor(source_y), keras.ops.floor(source_x)
        weight_y, weight_x = (source_y - y0)[..., None], (source_x - x0)[..., None]
        rows = [keras.ops.cast(y0, "int32"), keras.ops.cast(y0, "int32") + 1]
        columns = [keras.ops.cast(x0, "int32"), keras.ops.cast(x0, "int32") + 1]
        rows = [offsets + keras.ops.minimum(row, height - 1) * width for row in rows]
        columns = [keras.ops.minimum(column, width - 1) for column in columns]
        top, bottom = (
            keras.ops.take(flat, row + columns[0], axis=0) * (1.0 - weight_x)
            + keras.ops.take(flat, row + columns[1], axis=0) * weight_x
            for row in rows
        )
        return keras.ops.cast(top * (1.0 - weight_y) + bottom * weight_y, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "translate": self.translate,
            "zoom": self.zoom,
            "rotation": self.rotation,
            "seed": self.seed,
        }


def _reflect(position, size: int):
    """Positions mirrored into 0..size-1 about the edges at -0.5 and size - 0.5.

    Between -0.5 and 0 a position interpolates pixel 0 with its own mirror image, which is
    pixel 0 again: clipping to 0..size-1 is then exact.
    """
    period = 2.0 * size
    folded = keras.ops.mod(position + 0.5, period)
    folded = keras.ops.where(folded >= size, period - folded, folded) - 0.5
    return keras.ops.clip(folded, 0.0, size - 1.0)


def augmentation(seed: int | None = None, name: str = "augmentation") -> keras.Sequential:
    """Random flip, translate (crop), zoom, rotation, brightness, contrast; active only in training.

    Works on pixels in 0..255 (uint8 or float) and returns the compute dtype. Every layer
    supports jit compilation, so ``jit_compile="auto"`` compiles the train step.
    """

    def layer_seed(offset: int) -> int | None:
        # A different seed per layer: with one seed, layers drawing the same shape would draw
        # the same numbers (e.g. the flip decision would set the brightness change).
        return None if seed is None else seed + offset

    return keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=layer_seed(0), name="flip"),
            RandomAffine(
                AUGMENT_TRANSLATE, AUGMENT_ZOOM, AUGMENT_ROTATION, seed=layer_seed(1), name="affine"
            ),
            layers.RandomBrightness(
                AUGMENT_BRIGHTNESS, value_range=(0, 255), seed=layer_seed(2), name="brightness"
            ),
            layers.RandomContrast(
                AUGMENT_CONTRAST, value_range=(0, 255), seed=layer_seed(3), name="contrast"
            ),
        ],
        name=name,
    )


def inference_copy(model: keras.Model, name: str = "augmentation") -> keras.Model:
    """``model`` with its augmentation block ``name`` replaced by Identity; all else shared.

    Augmentation does nothing at inference, and without it the saved file holds only
    built-in Keras layers: it loads where this package (which registers RandomAffine) is not
    installed, as in the deployed demo. Same layers, same weights: identical predictions.
    """

    def clone(layer):
        if layer.name != name:
            return layer
        return layers.Identity(name=name, dtype=layer.dtype_policy.name)

    def call(layer, *args, **kwargs):
        # The block's recorded call passes a mask argument, which Identity does not take.
        if layer.name == name and isinstance(layer, layers.Identity):
            return layer(args[0])
        return layer(*args, **kwargs)

    return keras.models.clone_model(model, clone_function=clone, call_function=call)


def _image_input() -> keras.KerasTensor:
    return keras.Input(shape=config.IMAGE_SHAPE, dtype="uint8", name="images")


def _from_uint8(images, augment: bool, seed: int | None):
    """Cast uint8 to float 0..255 (Rescaling casts), then augment if asked."""
    x = layers.Rescaling(1.0, name="to_float")(images)
    return augmentation(seed)(x) if augment else x


def _classifier(x, name: str = "predictions"):
    # float32 softmax even under mixed precision, for a numerically sound loss.
    return layers.Dense(config.NUM_CLASSES, activation="softmax", dtype="float32", name=name)(x)


def baseline_cnn(dropout_rate: float = 0.25, augment: bool = False, seed: int | None = None):
    """The design's CNN: Conv 32/64/128 each + max-pool, Dense 128, dropout, softmax (356,810
    parameters); notebook 02 builds it in its cells, layer for layer (a test holds them equal).

    The design did not state its dropout rate; 0.25 measured 47-50% after 2 epochs on 10k
    real images where 0.5 reached 42-44% (batch 32-64, Adam 1e-3).
    """
    images = _image_input()
    x = _from_uint8(images, augment, seed)
    x = layers.Rescaling(1 / 255, name="scale")(x)
    for block, filters in enumerate((32, 64, 128), start=1):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{block}")(x)
        x = layers.MaxPooling2D(name=f"pool{block}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="dense")(x)
    x = layers.Dropout(dropout_rate, name="dropout")(x)
    return keras.Model(images, _classifier(x), name="baseline_cnn")


def two_layer_fc(hidden_units: int = 512, augment: bool = False, seed: int | None = None):
    """Flatten, one hidden ReLU layer, softmax."""
    images = _image_input()
    x = _from_uint8(images, augment, seed)
    x = layers.Rescaling(1 / 255, name="scale")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(hidden_units, activation="relu", name="dense")(x)
    return keras.Model(images, _classifier(x), name="two_layer_fc")


def three_layer_cnn(filters: int = 32, augment: bool = False, seed: int | None = None):
    """Two 3x3 conv + ReLU layers (each max-pooled), then a fully connected softmax layer."""
    images = _image_input()
    x = _from_uint8(images, augment, seed)
    x = layers.Rescaling(1 / 255, name="scale")(x)
    for block in (1, 2):
        x = layers.Conv2D(
            filters * block, 3, padding="same", activation="relu", name=f"conv{block}"
        )(x)
        x = layers.MaxPooling2D(name=f"pool{block}")(x)
    x = layers.Flatten(name="flatten")(x)
    return keras.Model(images, _classifier(x), name="three_layer_cnn")


BASELINES = {
    "baseline_cnn": baseline_cnn,
    "two_layer_fc": two_layer_fc,
    "three_layer_cnn": three_layer_cnn,
}


def build(experiment: config.Experiment, profile: config.Profile) -> keras.Model:
    """The untrained model of ``experiment`` (``config.EXPERIMENTS``) with ``profile``'s
    settings: a baseline by its builder's name, or ``build_transfer_model``."""
    if experiment.builder == "build_transfer_model":
        return build_transfer_model(profile)
    augment = profile.baseline_augment and experiment.augments
    return BASELINES[experiment.builder](augment=augment, seed=profile.seed)


# ---------------------------------------------------------------- transfer model


def _application_name(backbone: str) -> str:
    """'resnet50' -> 'ResNet50', 'mobilenet_v2' -> 'MobileNetV2'; exact class names pass."""
    if hasattr(keras.applications, backbone) and backbone[0].isupper():
        return backbone
    wanted = backbone.replace("_", "").lower()
    for name in dir(keras.applications):
        if name[0].isupper() and name.lower() == wanted:
            return name
    raise ValueError(
        f"backbone must be 'efficientnet_lite0' or a keras.applications model name "
        f"(e.g. 'resnet50', 'mobilenet_v2', 'efficientnet_b0'), got {backbone!r}"
    )


def _preprocessing_mode(backbone: str) -> str:
    if backbone.startswith("efficientnet_lite"):
        return "included"
    application = _application_name(backbone)
    for prefix, mode in PREPROCESSING_BY_PREFIX.items():
        if application.startswith(prefix):
            return mode
    raise ValueError(f"no known pixel preprocessing for keras.applications.{application}")


def preprocessing(backbone: str) -> layers.Layer:
    """One built-in Keras layer (named "preprocess") that turns float pixels 0..255 into what
    ``backbone``'s ImageNet weights expect; Identity where the backbone scales them itself."""
    mode = _preprocessing_mode(backbone)
    if mode == "caffe":
        # RGB->BGR and ImageNet mean subtraction as a fixed 1x1 convolution (no Lambda).
        conv = layers.Conv2D(3, 1, name="preprocess", trainable=False)
        conv.build((None, None, None, 3))
        kernel = np.zeros((1, 1, 3, 3), dtype="float32")
        for output_channel in range(3):
            kernel[0, 0, 2 - output_channel, output_channel] = 1.0  # swap R and B
        conv.set_weights([kernel, -np.asarray(CAFFE_MEAN_BGR, dtype="float32")])
        return conv
    if mode == "tf":
        return layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")
    if mode == "torch":  # (pixel / 255 - mean) / std, on 0..255
        return layers.Normalization(
            mean=[255 * m for m in TORCH_MEAN_RGB],
            variance=[(255 * s) ** 2 for s in TORCH_STD_RGB],
            name="preprocess",
        )
    return layers.Identity(name="preprocess")  # "included"


# The message keras.utils.get_file raises (as a plain Exception) when a download fails; it
# carries the URL and the reason.
DOWNLOAD_FAILURE = "URL fetch failure"


def application(backbone: str, stochastic_depth: float = 0.0):
    """The constructor of ImageNet backbone ``backbone``, called as keras.applications' are
    (``include_top``, ``weights``, ``input_shape``, ``name``): ``keras.applications.ResNet50``
    for "resnet50", EfficientNet-Lite for "efficientnet_lite0".."2" (ImageNet weights that
    install offline). A failed ImageNet download or an unreadable weights file becomes one
    ``WeightsError`` that says what to do offline.

    ``stochastic_depth``: EfficientNet-Lite's drop-connect rate (the last block's; earlier
    blocks drop less), active only when the backbone runs in training mode.
    """
    _check_backbone(backbone, None, stochastic_depth)
    if backbone.startswith("efficientnet_lite"):
        constructor = efficientnet_lite.BACKBONES[backbone]
        options = {"drop_connect_rate": stochastic_depth}
    else:
        constructor = getattr(keras.applications, _application_name(backbone))
        options = {}

    def build(include_top=True, weights="imagenet", input_shape=None, **kwargs):
        _check_weights(weights)
        try:
            return constructor(
                include_top=include_top, weights=weights, input_shape=input_shape,
                **options, **kwargs,
            )  # fmt: skip
        except WeightsError:
            raise
        except Exception as error:
            # Only a failed download or an unreadable weights file is a weights problem;
            # anything else (a shape error, out of memory) is raised as it is.
            if weights == "imagenet" and str(error).startswith(DOWNLOAD_FAILURE):
                name = constructor.__name__
                expected = RESNET_NOTOP_FILES.get(name, f"the {name} no-top .h5 file")
                raise WeightsError(
                    f"could not download ImageNet weights for {name}: {error}. Put {expected} "
                    f"in {config.cache_dir() / 'models'} or pass weights=<path to .h5> (CLI: "
                    "--weights PATH); offline, use --backbone efficientnet_lite0"
                ) from error
            if weights not in ("imagenet", None) and isinstance(error, (OSError, ValueError)):
                raise WeightsError(f"could not load weights file {weights!r}: {error}") from error
            raise

    build.__name__ = constructor.__name__
    return build


def check_experiment(
    experiment: str, profile: config.Profile
) -> tuple[config.Experiment, config.Unfreeze]:
    """``experiment``'s spec and the profile's ``unfreeze`` parsed, once every setting the
    experiment uses is checked, before any work: the ranges (``config.check``), and for a
    transfer model ``check_profile``'s. Fine-tuning uses this parse (``Setup.unfreeze``)."""
    spec = config.experiment(experiment)
    config.check(profile)
    unfreeze = config.Unfreeze.parse(profile.unfreeze)  # its syntax checked just above
    if spec.stage != "baseline":
        check_profile(profile, unfreeze if spec.stage == "finetune" else None)
    return spec, unfreeze


def check_profile(profile: config.Profile, unfreeze: config.Unfreeze | None = None) -> None:
    """Raise before any training if the profile's backbone or weights file does not exist,
    or the stage of ``unfreeze`` (fine-tuning's parsed setting; None for the head stage)
    does not (``config.check`` has checked the ranges). A ``stage:NAME`` is looked up in
    the backbone's architecture, built without weights."""
    _check_backbone(profile.backbone, profile.weights, profile.stochastic_depth)
    if unfreeze is not None and unfreeze.stage:
        shape = (profile.image_size, profile.image_size, 3)
        backbone = application(profile.backbone)(include_top=False, weights=None, input_shape=shape)
        if not any(layer.name.startswith(unfreeze.stage) for layer in backbone.layers):
            blocks = sorted({layer.name.split("_")[0] for layer in backbone.layers})
            raise ValueError(
                f"unfreeze={profile.unfreeze!r}: no layer of {profile.backbone} starts with "
                f"{unfreeze.stage!r}; its layer names start with {', '.join(blocks[:40])}"
            )


def _check_backbone(backbone: str, weights, stochastic_depth: float) -> None:
    """ValueError (WeightsError for the weights) unless ``backbone`` exists, a weights file
    does, and a drop-connect rate has a backbone that takes one; builds nothing."""
    if not 0.0 <= stochastic_depth < 1.0:
        raise ValueError(f"stochastic_depth must be in [0, 1), got {stochastic_depth}")
    if stochastic_depth and not backbone.startswith("efficientnet_lite"):
        raise ValueError(
            f"stochastic_depth={stochastic_depth} needs an efficientnet_lite backbone: "
            f"keras.applications' {backbone!r} has no drop-connect rate to set"
        )
    _check_weights(weights)
    if backbone.startswith("efficientnet_lite"):
        if backbone not in efficientnet_lite.BACKBONES:
            raise ValueError(
                f"backbone must be one of {sorted(efficientnet_lite.BACKBONES)}, got {backbone!r}"
            )
    else:
        _application_name(backbone)


def _check_weights(weights) -> None:
    if weights not in ("imagenet", None) and not os.path.exists(str(weights)):
        raise WeightsError(
            f"weights file {weights!r} does not exist; expected 'imagenet', None "
            "or a path to a weights file"
        )


def build_head(
    feature_dim: int, head: str = "dense", head_units: int = 256, dropout_rate: float = 0.5
) -> keras.Model:
    """Classifier on pooled backbone features; also trainable alone on cached features.

    - "dense": Dense(head_units, ReLU), Dropout, softmax (after global average pooling).
    - "dense_bn": Dense(head_units, ReLU), BatchNormalization, Dropout, softmax.
    - "linear": softmax on the features (the published "linear probe" setup).
    """
    if head not in config.HEADS:
        raise ValueError(f"head must be one of {config.HEADS}, got {head!r}")
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
    features = keras.Input(shape=(feature_dim,), name="features")
    x = features
    if head != "linear":
        x = layers.Dense(head_units, activation="relu", name="head_dense")(x)
        if head == "dense_bn":
            x = layers.BatchNormalization(name="head_bn")(x)
        x = layers.Dropout(dropout_rate, name="head_dropout")(x)
    return keras.Model(features, _classifier(x), name="head")


def transfer_model(
    backbone: str = "resnet50",
    weights="imagenet",
    image_size: int = 224,
    head: str = "dense",
    head_units: int = 256,
    dropout_rate: float = 0.5,
    augment: bool = True,
    train_bn: bool = False,
    seed: int | None = None,
    stochastic_depth: float = 0.0,
) -> keras.Model:
    """uint8 32x32 -> [augment] -> resize -> backbone preprocessing -> backbone -> GAP -> head:
    the model notebook 03 builds in its cells, layer for layer (a test holds them equal).

    The backbone starts frozen (head-only stage); see ``set_trainable`` for fine-tuning.
    With ``train_bn=False`` (default, as the Keras transfer-learning guide advises) the
    backbone is called with ``training=False`` so BatchNormalization stays in inference
    mode even after it is unfrozen. Stochastic depth needs the backbone in training mode;
    BatchNormalization then stays in inference mode because ``set_trainable`` keeps it
    frozen (a frozen Keras 3 BatchNormalization layer always uses its moving statistics).
    """
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 px, got {image_size}")
    base_model = application(backbone, stochastic_depth)(
        include_top=False,
        weights=weights,
        input_shape=(image_size, image_size, 3),
        name="backbone",
    )
    base_model.trainable = False

    images = _image_input()
    x = _from_uint8(images, augment, seed)
    # Resizing happens here, batch by batch on the accelerator: the dataset stays 32x32 uint8.
    x = layers.Resizing(image_size, image_size, name="resize")(x)
    x = preprocessing(backbone)(x)
    x = base_model(x) if train_bn or stochastic_depth else base_model(x, training=False)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    head_model = build_head(x.shape[-1], head, head_units, dropout_rate)
    return keras.Model(images, head_model(x), name=f"{backbone}_transfer")


def feature_extractor(model: keras.Model) -> keras.Model:
    """uint8 images -> pooled backbone features (augmentation is inactive at inference)."""
    return keras.Model(model.inputs, model.get_layer("pool").output, name="feature_extractor")


# ---------------------------------------------------------------- freezing


def layers_to_train(
    backbone: keras.Model, unfreeze: config.Unfreeze, train_bn: bool = False
) -> set[str]:
    """The names of the backbone layers that fine-tuning trains, by ``unfreeze`` (the
    setting parsed: ``setup.unfreeze``, or ``config.Unfreeze.parse("stage:block4")``).
    BatchNormalization layers stay frozen (in inference mode) unless ``train_bn``."""
    if not isinstance(unfreeze, config.Unfreeze):
        raise ValueError(
            f"unfreeze must be a parsed setting, config.Unfreeze.parse({unfreeze!r}); "
            f"got {type(unfreeze).__name__}"
        )
    backbone_layers = backbone.layers
    if unfreeze.kind == "head":
        return set()
    first = 0  # "all"
    if unfreeze.kind == "top":
        first = max(len(backbone_layers) - unfreeze.top, 0)
    elif unfreeze.kind == "stage":
        names = [layer.name for layer in backbone_layers]
        matches = [i for i, name in enumerate(names) if name.startswith(unfreeze.stage)]
        if not matches:
            raise ValueError(f"unfreeze stage {unfreeze.stage!r} matches no layer of the backbone")
        first = matches[0]
    return {
        layer.name
        for layer in backbone_layers[first:]
        if train_bn or not isinstance(layer, layers.BatchNormalization)
    }


def set_trainable(model: keras.Model, unfreeze: config.Unfreeze, train_bn: bool = False) -> int:
    """Train the backbone layers ``layers_to_train`` picks (none for "head": the backbone
    frozen); return the number of trainable weights of ``model``. Recompile the model
    afterwards: Keras reads ``trainable`` when compiling."""
    backbone = model.get_layer("backbone")
    chosen = layers_to_train(backbone, unfreeze, train_bn)
    backbone.trainable = bool(chosen)
    for layer in backbone.layers:
        layer.trainable = layer.name in chosen
    return len(model.trainable_weights)


def _parameters(weights) -> int:
    return int(sum(np.prod(weight.shape) for weight in weights))


def trainable_table(model: keras.Model) -> pd.DataFrame:
    """Parameters per part of ``model`` and how many of them train: each top-level layer with
    weights, the backbone split by stage (its layer names' first part: stem, block1, ...,
    or conv1, ..., conv5). What ``set_trainable`` changed, readable at a glance."""
    rows = []
    for layer in model.layers:
        parts = [layer]
        if layer.name == "backbone":
            groups: dict[str, list] = {}
            for inner in layer.layers:
                groups.setdefault(inner.name.split("_")[0], []).append(inner)
            parts = list(groups.items())
        for part in parts:
            name, members = part if isinstance(part, tuple) else (part.name, [part])
            total = _parameters(w for member in members for w in member.weights)
            if total:
                trainable = _parameters(w for m in members for w in m.trainable_weights)
                prefix = "backbone " if isinstance(part, tuple) else ""
                rows.append({"part": prefix + name, "parameters": total, "trainable": trainable})
    table = pd.DataFrame(rows)
    table["trains"] = np.select(
        [table["trainable"] == table["parameters"], table["trainable"] > 0], ["all", "part"], "no"
    )
    return table


def build_transfer_model(profile: config.Profile) -> keras.Model:
    """``transfer_model`` with the profile's backbone, size, head and augmentation."""
    return transfer_model(
        backbone=profile.backbone,
        weights=profile.weights,
        image_size=profile.image_size,
        head=profile.head,
        head_units=profile.head_units,
        dropout_rate=profile.dropout_rate,
        augment=profile.augment,
        train_bn=profile.train_bn,
        seed=profile.seed,
        stochastic_depth=profile.stochastic_depth,
    )


def at_image_size(model: keras.Model, profile: config.Profile, image_size: int) -> keras.Model:
    """``model`` (``build_transfer_model(profile)``'s, trained) rebuilt to resize its input to
    ``image_size`` px, with the same weights: none of them depends on the input size. Testing
    at a higher resolution than training can gain accuracy when the training augmentation
    zooms in (FixRes, Touvron et al. 2019)."""
    resized = build_transfer_model(config.profile(profile, image_size=image_size, weights=None))
    resized.set_weights(model.get_weights())
    return resized
