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

HEADS = ("seed", "slides", "linear")


# ---------------------------------------------------------------- baselines


def augmentation(seed: int | None = None, name: str = "augmentation") -> keras.Sequential:
    """Random flip, translate (crop), zoom, rotation, brightness, contrast; active only in training.

    Works on float pixels in 0..255.
    """
    return keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=seed),
            layers.RandomTranslation(
                AUGMENT_TRANSLATE, AUGMENT_TRANSLATE, fill_mode="reflect", seed=seed
            ),
            layers.RandomZoom(AUGMENT_ZOOM, fill_mode="reflect", seed=seed),
            layers.RandomRotation(AUGMENT_ROTATION, fill_mode="reflect", seed=seed),
            layers.RandomBrightness(AUGMENT_BRIGHTNESS, value_range=(0, 255), seed=seed),
            layers.RandomContrast(AUGMENT_CONTRAST, value_range=(0, 255), seed=seed),
        ],
        name=name,
    )


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
    """The seed project's CNN: Conv 32/64/128 each + max-pool, Dense 128, dropout, softmax.

    The seed did not state its dropout rate; 0.25 measured 47-50% after 2 epochs on 10k
    real images where 0.5 reached 42-44% (batch 32-64, Adam 1e-3).
    """
    images = _image_input()
    x = _from_uint8(images, augment, seed)
    x = layers.Rescaling(1 / 255, name="scale")(x)
    for filters in (32, 64, 128):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu")(x)
    x = layers.Dropout(dropout_rate)(x)
    return keras.Model(images, _classifier(x), name="baseline_cnn")


def two_layer_fc(hidden_units: int = 512, augment: bool = False, seed: int | None = None):
    """Flatten, one hidden ReLU layer, softmax."""
    images = _image_input()
    x = _from_uint8(images, augment, seed)
    x = layers.Rescaling(1 / 255, name="scale")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(hidden_units, activation="relu")(x)
    return keras.Model(images, _classifier(x), name="two_layer_fc")


def three_layer_cnn(filters: int = 32, augment: bool = False, seed: int | None = None):
    """Two 3x3 conv + ReLU layers (each max-pooled), then a fully connected softmax layer."""
    images = _image_input()
    x = _from_uint8(images, augment, seed)
    x = layers.Rescaling(1 / 255, name="scale")(x)
    for multiplier in (1, 2):
        x = layers.Conv2D(filters * multiplier, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    return keras.Model(images, _classifier(x), name="three_layer_cnn")


BASELINES = {
    "baseline_cnn": baseline_cnn,
    "two_layer_fc": two_layer_fc,
    "three_layer_cnn": three_layer_cnn,
}

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


def _preprocessing_mode(application: str) -> str:
    for prefix, mode in PREPROCESSING_BY_PREFIX.items():
        if application.startswith(prefix):
            return mode
    raise ValueError(f"no known pixel preprocessing for keras.applications.{application}")


def _caffe_preprocessing() -> layers.Conv2D:
    """RGB->BGR and ImageNet mean subtraction as a fixed 1x1 convolution (built-in, no Lambda)."""
    conv = layers.Conv2D(3, 1, name="caffe_preprocess", trainable=False)
    conv.build((None, None, None, 3))
    kernel = np.zeros((1, 1, 3, 3), dtype="float32")
    for output_channel in range(3):
        kernel[0, 0, 2 - output_channel, output_channel] = 1.0  # swap R and B
    conv.set_weights([kernel, -np.asarray(CAFFE_MEAN_BGR, dtype="float32")])
    return conv


def _preprocess(x, mode: str):
    if mode == "caffe":
        return _caffe_preprocessing()(x)
    if mode == "tf":
        return layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")(x)
    if mode == "torch":
        x = layers.Rescaling(1 / 255, name="scale")(x)
        return layers.Normalization(
            mean=TORCH_MEAN_RGB, variance=[s**2 for s in TORCH_STD_RGB], name="preprocess"
        )(x)
    return x  # "included": the backbone scales 0..255 itself


def _build_application(application: str, weights, image_size: int):
    constructor = getattr(keras.applications, application)
    try:
        return constructor(
            include_top=False, weights=weights, input_shape=(image_size, image_size, 3)
        )
    except Exception as error:  # Keras raises several types for a failed download
        if weights != "imagenet":
            raise WeightsError(f"could not load weights file {weights!r}: {error}") from error
        expected = RESNET_NOTOP_FILES.get(application, f"the {application} no-top .h5 file")
        cache = config.cache_dir() / "models"
        raise WeightsError(
            f"could not download ImageNet weights for {application} ({error.__class__.__name__}). "
            f"Put {expected} in {cache} or pass weights=<path to .h5> "
            f"(CLI: --weights PATH); offline, use --backbone efficientnet_lite0"
        ) from error


def build_backbone(backbone: str = "resnet50", weights="imagenet", image_size: int = 224):
    """Return ``(backbone_model, preprocessing_mode)``; the model expects preprocessed input."""
    if weights not in ("imagenet", None) and not os.path.exists(str(weights)):
        raise WeightsError(
            f"weights file {weights!r} does not exist; expected 'imagenet', None "
            "or a path to a weights file"
        )
    if backbone.startswith("efficientnet_lite"):
        constructor = efficientnet_lite.BACKBONES.get(backbone)
        if constructor is None:
            raise ValueError(
                f"backbone must be one of {sorted(efficientnet_lite.BACKBONES)}, got {backbone!r}"
            )
        model = constructor(
            include_top=False, weights=weights, input_shape=(image_size, image_size, 3)
        )
        return model, "included"
    application = _application_name(backbone)
    return _build_application(application, weights, image_size), _preprocessing_mode(application)


def build_head(
    feature_dim: int, head: str = "seed", head_units: int = 256, dropout_rate: float = 0.5
) -> keras.Model:
    """Classifier on pooled backbone features; also trainable alone on cached features.

    - "seed": Dense(head_units, ReLU), Dropout, softmax (after global average pooling).
    - "slides": Dense(head_units), ReLU, BatchNormalization, Dropout, softmax.
    - "linear": softmax on the features (the published "linear probe" setup).
    """
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
    features = keras.Input(shape=(feature_dim,), name="features")
    x = features
    if head == "seed":
        x = layers.Dense(head_units, activation="relu", name="head_dense")(x)
        x = layers.Dropout(dropout_rate, name="head_dropout")(x)
    elif head == "slides":
        x = layers.Dense(head_units, name="head_dense")(x)
        x = layers.ReLU(name="head_relu")(x)
        x = layers.BatchNormalization(name="head_bn")(x)
        x = layers.Dropout(dropout_rate, name="head_dropout")(x)
    return keras.Model(features, _classifier(x), name="head")


def transfer_model(
    backbone: str = "resnet50",
    weights="imagenet",
    image_size: int = 224,
    head: str = "seed",
    head_units: int = 256,
    dropout_rate: float = 0.5,
    augment: bool = True,
    train_bn: bool = False,
    seed: int | None = None,
) -> keras.Model:
    """uint8 32x32 -> [augment] -> resize -> backbone preprocessing -> backbone -> GAP -> head.

    The backbone starts frozen (head-only stage); see ``set_trainable`` for fine-tuning.
    With ``train_bn=False`` (default, as the Keras transfer-learning guide advises) the
    backbone is called with ``training=False`` so BatchNormalization stays in inference
    mode even after it is unfrozen.
    """
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 px, got {image_size}")
    base_model, mode = build_backbone(backbone, weights, image_size)
    base_model.name = "backbone"
    base_model.trainable = False

    images = _image_input()
    x = _from_uint8(images, augment, seed)
    # Resizing happens here, batch by batch on the accelerator: the dataset stays 32x32 uint8.
    x = layers.Resizing(image_size, image_size, interpolation="bilinear", name="resize")(x)
    x = _preprocess(x, mode)
    x = base_model(x, training=False) if not train_bn else base_model(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    head_model = build_head(x.shape[-1], head, head_units, dropout_rate)
    outputs = head_model(x)
    return keras.Model(images, outputs, name=f"{backbone}_transfer")


def feature_extractor(model: keras.Model) -> keras.Model:
    """uint8 images -> pooled backbone features (augmentation is inactive at inference)."""
    return keras.Model(model.inputs, model.get_layer("pool").output, name="feature_extractor")


# ---------------------------------------------------------------- freezing


def set_trainable(model: keras.Model, strategy: str, train_bn: bool = False) -> int:
    """Set what the backbone trains; return the number of trainable weights of ``model``.

    strategy: "head" (backbone frozen), "top:N" (last N backbone layers), "stage:NAME"
    (from the first layer named NAME* to the end, e.g. "stage:conv5" or "stage:block6"),
    or "all". BatchNormalization layers stay frozen unless ``train_bn``.
    Recompile the model afterwards: Keras reads ``trainable`` when compiling.
    """
    backbone = model.get_layer("backbone")
    backbone_layers = backbone.layers
    if strategy == "head":
        backbone.trainable = False
        return len(model.trainable_weights)
    if strategy == "all":
        first = 0
    elif strategy.startswith("top:"):
        count = _positive_int(strategy[4:], strategy)
        first = max(len(backbone_layers) - count, 0)
    elif strategy.startswith("stage:"):
        stage = strategy[6:]
        matches = [i for i, layer in enumerate(backbone_layers) if layer.name.startswith(stage)]
        if not matches:
            raise ValueError(f"unfreeze stage {stage!r} matches no layer of the backbone")
        first = matches[0]
    else:
        raise ValueError(
            f"unfreeze must be 'head', 'top:N', 'stage:NAME' or 'all', got {strategy!r}"
        )
    backbone.trainable = True
    for index, layer in enumerate(backbone_layers):
        is_bn = isinstance(layer, layers.BatchNormalization)
        layer.trainable = index >= first and (train_bn or not is_bn)
    return len(model.trainable_weights)


def _positive_int(text: str, strategy: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise ValueError(f"unfreeze {strategy!r}: N must be a positive integer")
    return int(text)


def gradual_steps(total_layers: int, step: int = 5, steps: int = 4) -> list[str]:
    """Gradual unfreezing: top 5, 10, 15, 20 layers (each stage at a lower learning rate)."""
    return [f"top:{min(step * (i + 1), total_layers)}" for i in range(steps)]
