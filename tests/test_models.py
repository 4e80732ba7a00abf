import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from cifar10_transfer import config, models

SRC = Path(__file__).resolve().parents[1] / "src"


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


@pytest.mark.parametrize("augment", [False, True])
@pytest.mark.parametrize(
    "name", [name for name, spec in config.EXPERIMENTS.items() if spec.stage == "baseline"]
)
def test_build_makes_a_baseline_experiment_from_its_builder(name, augment):
    spec = config.experiment(name)
    model = models.build(spec, config.profile("smoke", baseline_augment=augment))
    expected = models.BASELINES[spec.builder]()
    assert model.name == expected.name == name
    assert model.count_params() == expected.count_params()
    layer_names = [layer.name for layer in model.layers]
    # The two simple baselines train as in the MapiAI repository, without augmentation.
    assert ("augmentation" in layer_names) == (augment and name == "baseline_cnn")
    assert spec.augments == (name == "baseline_cnn")


def test_build_makes_the_head_experiment_a_transfer_model_of_the_profile():
    profile = config.profile(
        "smoke", backbone="resnet50", weights=None, image_size=48, head_units=16, head="dense_bn"
    )
    model = models.build(config.experiment("head"), profile)
    assert model.name == "resnet50_transfer"
    assert model.get_layer("resize").output.shape[1:3] == (48, 48)
    head = model.get_layer("head")
    assert head.get_layer("head_dense").units == 16
    assert "head_bn" in [layer.name for layer in head.layers]  # the "dense_bn" head
    assert not model.get_layer("backbone").trainable  # the head stage starts frozen


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
    layer = models.preprocessing("resnet50")
    rgb = np.array([[[[10.0, 20.0, 30.0]]]], dtype="float32")
    expected = np.array([30.0, 20.0, 10.0]) - np.array(models.CAFFE_MEAN_BGR)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(rgb))[0, 0, 0], expected, rtol=1e-5)


def test_torch_preprocessing_is_imagenet_mean_and_std_on_0_to_1():
    layer = models.preprocessing("densenet121")
    rgb = np.array([[[[10.0, 200.0, 30.0]]]], dtype="float32")
    expected = (rgb[0, 0, 0] / 255 - np.array(models.TORCH_MEAN_RGB)) / models.TORCH_STD_RGB
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(rgb))[0, 0, 0], expected, rtol=1e-5)
    assert isinstance(models.preprocessing("efficientnet_lite0"), keras.layers.Identity)


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


# ---------------------------------------------------------------- jit-safe augmentation


def test_no_layer_turns_jit_compilation_off():
    # jit_compile="auto" compiles the train step only if every layer reports supports_jit.
    for model in (_small_transfer(augment=True), models.baseline_cnn(augment=True)):
        eager_only = [layer.name for layer in model._flatten_layers() if not layer.supports_jit]
        assert eager_only == [], (model.name, eager_only)


def test_augmentation_trains_with_jit_compile_on_this_backend():
    # On TensorFlow jit_compile=True means XLA, which fails on an op without an XLA kernel.
    images = keras.Input(shape=config.IMAGE_SHAPE, dtype="uint8")
    x = models.augmentation(seed=0)(images)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(images, keras.layers.Dense(config.NUM_CLASSES, activation="softmax")(x))
    model.compile("adam", "sparse_categorical_crossentropy", jit_compile=True)
    loss = model.train_on_batch(_images(4), np.arange(4))
    assert model.jit_compile is True and np.isfinite(loss)


JAX_JIT_SCRIPT = """
import json
import numpy as np
from cifar10_transfer import config, models, training
images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
resolved = {}
# The GPU recipe's path too: BatchNorm training and stochastic depth, every layer unfrozen.
recipe = models.build_transfer_model(
    config.profile("smoke", weights=None, train_bn=True, stochastic_depth=0.2)
)
recipe.name = "recipe_transfer"
models.set_trainable(recipe, config.Unfreeze.parse("all"), train_bn=True)
for model in (models.build_transfer_model(config.profile("smoke", weights=None)),
              models.baseline_cnn(augment=True, seed=0), recipe):
    # jit_compile="auto", as in training
    model.compile(**training.compile_arguments(training.Stage("head", learning_rate=1e-3)))
    loss = model.train_on_batch(images, training.one_hot(np.arange(4)))
    resolved[model.name] = [model.jit_compile, bool(np.all(np.isfinite(loss)))]
print(json.dumps(resolved))
"""


@pytest.mark.slow
def test_augmenting_models_compile_their_train_step_on_jax():
    environment = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(SRC)}
    result = subprocess.run(
        [sys.executable, "-c", JAX_JIT_SCRIPT],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    resolved = json.loads(result.stdout.strip().splitlines()[-1])
    assert resolved == {
        "efficientnet_lite0_transfer": [True, True],
        "baseline_cnn": [True, True],
        "recipe_transfer": [True, True],
    }


def _affine(images, draws, monkeypatch, **settings):
    """RandomAffine with its four uniform draws (shift y, shift x, scale, angle) fixed."""

    def fixed(shape, *args, **kwargs):
        return keras.ops.convert_to_tensor(np.tile(np.float32(draws), (shape[0], 1)))

    monkeypatch.setattr(keras.random, "uniform", fixed)
    return keras.ops.convert_to_numpy(models.RandomAffine(**settings)(images, training=True))


def test_random_affine_shifts_and_rotates_with_reflected_edges(monkeypatch):
    images = _images(2).astype("float32")
    # translate 0.1 of 32 px: a draw of 0.625 shifts by 2 px; edges mirror (numpy "symmetric").
    shifted = _affine(images, [0.0, 0.625, 0.0, 0.0], monkeypatch, translate=0.1)
    expected = np.pad(images, ((0, 0), (0, 0), (0, 2), (0, 0)), mode="symmetric")[:, :, 2:]
    np.testing.assert_array_equal(shifted, expected)
    turned = _affine(images, [0.0, 0.0, 0.0, 1.0], monkeypatch, rotation=0.25)
    np.testing.assert_allclose(turned, np.rot90(images, 1, axes=(1, 2)), atol=1e-2)
    # Zoom out by 1.5 about the centre 15.5 (a draw of 1 at zoom 0.5), on a ramp whose value
    # is the column: column j shows column 15.5 + 1.5 (j - 15.5), exact under bilinear sampling.
    ramp = np.broadcast_to(np.arange(32, dtype="float32")[None, None, :, None], (1, 32, 32, 3))
    zoomed = _affine(ramp, [0.0, 0.0, 1.0, 0.0], monkeypatch, zoom=0.5)
    columns = np.arange(10, 22)
    np.testing.assert_allclose(zoomed[0, 16, columns, 0], 15.5 + 1.5 * (columns - 15.5), atol=1e-4)


def test_random_affine_is_the_identity_at_inference_and_keeps_the_range():
    layer = models.RandomAffine(0.1, 0.1, 0.03, seed=0)
    images = _images(4)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(layer(images, training=False)), images.astype("float32")
    )
    augmented = keras.ops.convert_to_numpy(layer(images, training=True))
    assert augmented.shape == images.shape and augmented.dtype == np.float32
    # Bilinear weights are a convex combination: no value leaves the input's range.
    assert images.min() <= augmented.min() and augmented.max() <= images.max()
    assert not np.allclose(augmented, images)


def test_random_affine_returns_the_compute_dtype_under_mixed_precision():
    layer = models.RandomAffine(0.1, 0.1, 0.03, seed=0, dtype="mixed_bfloat16")
    for training in (True, False):
        output = layer(_images(2), training=training)
        assert keras.backend.standardize_dtype(output.dtype) == "bfloat16"
        assert tuple(output.shape) == (2, 32, 32, 3)


def test_random_affine_is_reproducible_from_its_seed_and_varies_between_calls():
    images = _images(4)
    first, second = (models.RandomAffine(0.1, 0.1, 0.03, seed=7) for _ in range(2))
    calls = [keras.ops.convert_to_numpy(first(images, training=True)) for _ in range(2)]
    np.testing.assert_array_equal(
        calls[0], keras.ops.convert_to_numpy(second(images, training=True))
    )
    assert not np.allclose(calls[0], calls[1])


@pytest.mark.parametrize(
    "settings", [dict(translate=-0.1), dict(zoom=1.0), dict(rotation=0.5)], ids=str
)
def test_bad_random_affine_setting_is_a_value_error(settings):
    (setting,) = settings
    with pytest.raises(ValueError, match=f"RandomAffine {setting} must be in"):
        models.RandomAffine(**settings)


def test_random_affine_round_trips_through_a_keras_file_in_safe_mode(tmp_path):
    images = keras.Input(shape=config.IMAGE_SHAPE, dtype="uint8")
    layer = models.RandomAffine(0.1, 0.2, 0.03, seed=3, name="affine")
    keras.Model(images, layer(images)).save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    assert isinstance(loaded.get_layer("affine"), models.RandomAffine)
    assert loaded.get_layer("affine").get_config() == layer.get_config()


def test_inference_copy_replaces_augmentation_by_identity_and_shares_the_rest():
    model = models.baseline_cnn(augment=True, seed=0)
    copy = models.inference_copy(model)
    assert isinstance(copy.get_layer("augmentation"), keras.layers.Identity)
    assert not [layer for layer in copy._flatten_layers() if isinstance(layer, models.RandomAffine)]
    assert copy.get_layer("predictions") is model.get_layer("predictions")  # shared weights
    images = _images(8)
    np.testing.assert_array_equal(copy.predict(images, verbose=0), model.predict(images, verbose=0))


@pytest.mark.parametrize("head", config.HEADS)
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

    assert models.set_trainable(model, config.Unfreeze.parse("head")) == head_weights

    total = models.set_trainable(model, config.Unfreeze.parse("all"))
    non_bn = [
        layer for layer in backbone.layers if not isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert total == head_weights + sum(len(layer.trainable_weights) for layer in non_bn)
    assert all(
        not layer.trainable
        for layer in backbone.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    )

    models.set_trainable(model, config.Unfreeze.parse("stage:conv5"))
    trainable_names = {layer.name for layer in backbone.layers if layer.trainable_weights}
    assert trainable_names and all(name.startswith("conv5") for name in trainable_names)

    models.set_trainable(model, config.Unfreeze.parse("top:10"))
    top = backbone.layers[-10:]
    expected = sum(
        len(layer.weights)
        for layer in top
        if not isinstance(layer, keras.layers.BatchNormalization)
    )
    assert _trainable_backbone_weights(model) == expected

    with_bn = models.set_trainable(model, config.Unfreeze.parse("all"), train_bn=True)
    assert with_bn == head_weights + len(backbone.weights) - len(backbone.non_trainable_weights)


@pytest.mark.parametrize("unfreeze", ["top:0", "top:x", "stage:", "middle"])
def test_bad_unfreeze_syntax_is_a_value_error(unfreeze):
    with pytest.raises(ValueError, match="unfreeze"):
        config.Unfreeze.parse(unfreeze)


def test_unknown_unfreeze_stage_or_an_unparsed_setting_is_a_value_error():
    with pytest.raises(ValueError, match="unfreeze stage 'conv9' matches no layer"):
        models.set_trainable(_small_transfer(), config.Unfreeze.parse("stage:conv9"))
    with pytest.raises(ValueError, match=r"config.Unfreeze.parse\('all'\)"):
        models.set_trainable(_small_transfer(), "all")


def test_batchnorm_statistics_stay_fixed_while_fine_tuning():
    keras.utils.set_random_seed(0)
    model = _small_transfer(augment=False)
    models.set_trainable(model, config.Unfreeze.parse("all"))
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


def test_a_failed_download_shows_keras_reason_and_the_url(monkeypatch):
    url = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/x_notop.h5"

    def offline(*args, **kwargs):  # what keras.utils.get_file raises for a URLError
        raise Exception(f"URL fetch failure on {url}: None -- [Errno -3] name resolution")

    monkeypatch.setattr("keras.src.applications.resnet.file_utils.get_file", offline)
    with pytest.raises(models.WeightsError) as caught:
        models.transfer_model(backbone="resnet50", weights="imagenet", image_size=32)
    assert url in str(caught.value) and "name resolution" in str(caught.value)


@pytest.mark.parametrize(
    "failure", [MemoryError("out of memory"), ValueError("shape (3, 3) vs (1, 1)")]
)
def test_errors_other_than_a_download_keep_their_own_cause(monkeypatch, failure):
    def broken(*args, **kwargs):
        raise failure

    monkeypatch.setattr("keras.src.applications.resnet.file_utils.get_file", broken)
    with pytest.raises(type(failure)) as caught:
        models.transfer_model(backbone="resnet50", weights="imagenet", image_size=32)
    assert not isinstance(caught.value, models.WeightsError)
    assert str(caught.value) == str(failure)


def test_an_unreadable_local_weights_file_is_named(tmp_path):
    path = tmp_path / "resnet50_notop.h5"
    path.write_bytes(b"not an HDF5 file")
    with pytest.raises(models.WeightsError, match="resnet50_notop.h5"):
        models.transfer_model(backbone="resnet50", weights=str(path), image_size=32)
