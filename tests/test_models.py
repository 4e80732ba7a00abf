import keras
import numpy as np
import pytest

from cifar10_transfer import config, models


def _images(count=4, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


def test_baseline_cnn_has_the_seed_parameter_count():
    assert models.baseline_cnn().count_params() == 356_810


@pytest.mark.parametrize("name", sorted(models.BASELINES))
def test_baselines_take_uint8_and_return_probabilities(name):
    model = models.BASELINES[name]()
    assert model.input.dtype == "uint8" and tuple(model.input.shape[1:]) == (32, 32, 3)
    probabilities = keras.ops.convert_to_numpy(model(_images()))
    assert probabilities.shape == (4, config.NUM_CLASSES)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def _small_transfer(**kwargs):
    settings = dict(backbone="resnet50", weights=None, image_size=32, head_units=16)
    return models.transfer_model(**{**settings, **kwargs})


def test_transfer_model_resizes_inside_and_has_no_lambda():
    model = _small_transfer(image_size=64)
    assert model.get_layer("resize").output.shape[1:3] == (64, 64)
    assert keras.ops.convert_to_numpy(model(_images(2))).shape == (2, 10)
    all_layers = model._flatten_layers(include_self=False, recursive=True)
    assert not [layer for layer in all_layers if isinstance(layer, keras.layers.Lambda)]


def test_caffe_preprocessing_is_bgr_minus_imagenet_mean():
    layer = models._caffe_preprocessing()
    rgb = np.array([[[[10.0, 20.0, 30.0]]]], dtype="float32")
    expected = np.array([30.0, 20.0, 10.0]) - np.array(models.CAFFE_MEAN_BGR)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(rgb))[0, 0, 0], expected, rtol=1e-5)


def test_augmentation_is_active_only_in_training():
    model = _small_transfer(augment=True)
    images = _images(2)
    first = keras.ops.convert_to_numpy(model(images, training=False))
    second = keras.ops.convert_to_numpy(model(images, training=False))
    np.testing.assert_array_equal(first, second)
    augmented = keras.ops.convert_to_numpy(
        model.get_layer("augmentation")(images.astype("float32"), training=True)
    )
    assert not np.allclose(augmented, images)


@pytest.mark.parametrize("head", models.HEADS)
def test_heads_build_on_pooled_features(head):
    model = models.build_head(32, head=head, head_units=8)
    features = np.random.default_rng(0).normal(size=(3, 32)).astype("float32")
    assert keras.ops.convert_to_numpy(model(features)).shape == (3, 10)


def _trainable_backbone_weights(model):
    return len(model.get_layer("backbone").trainable_weights)


def test_freezing_strategies_set_the_expected_trainable_weights():
    model = _small_transfer()
    backbone = model.get_layer("backbone")
    head_weights = len(model.get_layer("head").trainable_weights)

    assert models.set_trainable(model, "head") == head_weights

    total = models.set_trainable(model, "all")
    non_bn = [
        layer for layer in backbone.layers if not isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert total == head_weights + sum(len(layer.trainable_weights) for layer in non_bn)
    assert all(
        not layer.trainable
        for layer in backbone.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    )

    models.set_trainable(model, "stage:conv5")
    trainable_names = {layer.name for layer in backbone.layers if layer.trainable_weights}
    assert trainable_names and all(name.startswith("conv5") for name in trainable_names)

    models.set_trainable(model, "top:10")
    top = backbone.layers[-10:]
    expected = sum(
        len(layer.weights)
        for layer in top
        if not isinstance(layer, keras.layers.BatchNormalization)
    )
    assert _trainable_backbone_weights(model) == expected

    with_bn = models.set_trainable(model, "all", train_bn=True)
    assert with_bn == head_weights + len(backbone.weights) - len(backbone.non_trainable_weights)


@pytest.mark.parametrize("strategy", ["top:0", "top:x", "stage:conv9", "middle"])
def test_bad_freezing_strategy_is_a_value_error(strategy):
    with pytest.raises(ValueError, match="unfreeze"):
        models.set_trainable(_small_transfer(), strategy)


def test_batchnorm_statistics_stay_fixed_while_fine_tuning():
    keras.utils.set_random_seed(0)
    model = _small_transfer(augment=False)
    models.set_trainable(model, "all")
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    bn_layers = [
        layer
        for layer in model.get_layer("backbone").layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    before = [keras.ops.convert_to_numpy(w).copy() for layer in bn_layers for w in layer.weights]
    kernel = model.get_layer("backbone").get_layer("conv5_block3_3_conv").kernel
    kernel_before = keras.ops.convert_to_numpy(kernel).copy()
    model.fit(_images(16), np.arange(16) % 10, epochs=1, batch_size=8, verbose=0)
    after = [keras.ops.convert_to_numpy(w) for layer in bn_layers for w in layer.weights]
    for old, new in zip(before, after, strict=True):
        np.testing.assert_array_equal(old, new)
    # ...while the convolutions did train.
    assert not np.allclose(kernel_before, keras.ops.convert_to_numpy(kernel))


def test_transfer_model_round_trips_through_keras_file_in_safe_mode(tmp_path):
    model = _small_transfer(augment=True)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    images = _images(3)
    # predict() runs in inference mode: augmentation off, so outputs must match exactly.
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(head="deep"), "head must be one of"),
        (dict(dropout_rate=1.5), "dropout_rate"),
        (dict(image_size=16), "image_size"),
        (dict(backbone="resnet5000"), "backbone must be"),
        (dict(weights="/nonexistent/weights.h5"), "does not exist"),
    ],
)
def test_bad_transfer_arguments_are_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _small_transfer(**kwargs)


def test_missing_imagenet_download_names_the_file_and_the_way_out(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: Name or service not known")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr("keras.src.applications.resnet.file_utils.get_file", offline)
    with pytest.raises(models.WeightsError) as caught:
        models.transfer_model(backbone="resnet50", weights="imagenet", image_size=32)
    message = str(caught.value)
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert "--weights" in message and "efficientnet_lite0" in message


def test_gradual_unfreezing_steps():
    assert models.gradual_steps(175) == ["top:5", "top:10", "top:15", "top:20"]
    assert models.gradual_steps(12) == ["top:5", "top:10", "top:12", "top:12"]
