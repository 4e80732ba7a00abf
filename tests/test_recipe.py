"""The fine-tuning recipe's options: optimizers, weight decay, warm-up, EMA, BatchNorm,
stochastic depth and the batch augmentation layers (MixUp, CutMix, RandAugment)."""

import keras
import numpy as np
import pytest

from cifar10_transfer import config, models, training


def tiny_model(batch_norm: bool = False) -> keras.Model:
    images = keras.Input(config.IMAGE_SHAPE, dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(images)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(8, name="hidden")(x)
    if batch_norm:
        x = keras.layers.BatchNormalization(name="bn")(x)
    outputs = keras.layers.Dense(config.NUM_CLASSES, activation="softmax", name="out")(x)
    return keras.Model(images, outputs)


def tiny_data(rows: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (rows, *config.IMAGE_SHAPE), dtype=np.uint8)
    return images, np.arange(rows) % config.NUM_CLASSES


def finetune_stage(**settings) -> training.Stage:
    return training.Stage("finetune", **{"epochs": 1, "batch_size": 8, **settings})


# ---------------------------------------------------------------- optimizers


@pytest.mark.parametrize(
    ("name", "kind"),
    [("adam", keras.optimizers.Adam), ("adamw", keras.optimizers.AdamW)],
)
def test_optimizer_choice_builds_that_keras_optimizer(name, kind):
    optimizer = training.make_optimizer(finetune_stage(optimizer=name), 10)
    assert type(optimizer) is kind


def test_sgd_is_nesterov_momentum():
    optimizer = training.make_optimizer(finetune_stage(optimizer="sgd"), 10)
    assert isinstance(optimizer, keras.optimizers.SGD)
    assert optimizer.nesterov and optimizer.momentum == training.SGD_MOMENTUM


def test_weight_decay_shrinks_kernels_but_not_batchnorm_or_biases():
    model = tiny_model(batch_norm=True)
    optimizer = training.make_optimizer(
        finetune_stage(optimizer="sgd", weight_decay=0.5, learning_rate=0.1), 10
    )
    for variable in model.trainable_variables:  # non-zero everywhere, so decay would show
        variable.assign(keras.ops.ones_like(variable))
    before = {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.trainable_variables}
    zero = [keras.ops.zeros_like(v) for v in model.trainable_variables]
    optimizer.apply_gradients(zip(zero, model.trainable_variables, strict=True))
    decayed = {
        v.path
        for v in model.trainable_variables
        if not np.allclose(keras.ops.convert_to_numpy(v), before[v.path])
    }
    # A zero gradient leaves only the decay: kernel * (1 - 0.5 * 0.1).
    assert decayed == {"hidden/kernel", "out/kernel"}
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.get_layer("out").kernel), 0.95)


def test_warmup_rises_linearly_then_cosine_decays_to_zero():
    stage = finetune_stage(epochs=4, learning_rate=0.1, schedule="cosine", warmup_epochs=1)
    schedule = training.learning_rate_schedule(stage, steps_per_epoch=10)
    rates = [float(schedule(step)) for step in (0, 5, 10, 25, 40)]
    assert rates[:3] == pytest.approx([0.0, 0.05, 0.1])
    assert rates[2] > rates[3] > rates[4] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"optimizer": "rmsprop"}, "optimizer='rmsprop': expected one of adam, adamw, sgd"),
        ({"mixing": "blend"}, "mixing='blend': expected one of none, mixup, cutmix"),
        ({"lr_schedule": "step"}, "lr_schedule='step': expected one of plateau, cosine"),
        ({"warmup_epochs": 1, "lr_schedule": "plateau"}, "warmup_epochs=1 needs lr_schedule"),
        ({"weight_decay": -1.0}, r"weight_decay=-1.0: expected a number in \[0, 1\]"),
        ({"weight_decay": 1e-4, "optimizer": "adam"}, "weight_decay=0.0001 needs optimizer=adamw"),
        ({"image_size": None}, "image_size=None: expected an integer from 32 to 512"),
    ],
)
def test_recipe_settings_outside_their_choices_are_value_errors(settings, message):
    with pytest.raises(ValueError, match=message):
        config.check(config.profile("smoke", **settings))


def test_profile_recipe_reaches_only_the_finetune_stage():
    profile = config.profile(
        "smoke", optimizer="sgd", weight_decay=1e-4, use_ema=True, mixing="cutmix"
    )
    finetune, head = training.Stage.of(profile, "finetune"), training.Stage.of(profile, "head")
    assert (finetune.optimizer, finetune.weight_decay, finetune.use_ema) == ("sgd", 1e-4, True)
    assert finetune.mixing == "cutmix"
    assert (head.optimizer, head.weight_decay, head.use_ema, head.mixing) == (
        "adam",
        0.0,
        False,
        "none",
    )


# ---------------------------------------------------------------- weight EMA


class RawKernels(keras.callbacks.Callback):
    """The output kernel after every update, as trained (not averaged)."""

    def __init__(self):
        super().__init__()
        self.kernels = []

    def on_train_batch_end(self, batch, logs=None):
        self.kernels.append(keras.ops.convert_to_numpy(self.model.get_layer("out").kernel).copy())


def test_ema_run_ends_with_the_moving_average_of_its_weights(tmp_path):
    images, labels = tiny_data(32)
    model, raw = tiny_model(), RawKernels()
    stage = finetune_stage(learning_rate=0.05, use_ema=True, patience=5)
    model.compile(**training.compile_arguments(stage, training.steps_per_epoch(len(images), stage)))
    training.fit(
        model,
        images,
        labels,
        images[:8],
        labels[:8],
        stage,
        training.Job(tmp_path, callbacks=(raw,)),
    )
    # Keras's average: the first update's weights, then m * average + (1 - m) * weights.
    average = raw.kernels[0]
    for kernel in raw.kernels[1:]:
        average = training.EMA_MOMENTUM * average + (1 - training.EMA_MOMENTUM) * kernel
    final = keras.ops.convert_to_numpy(model.get_layer("out").kernel)
    np.testing.assert_allclose(final, average, rtol=1e-5, atol=1e-6)
    assert not np.allclose(final, raw.kernels[-1])


# ---------------------------------------------------------------- BatchNorm while fine-tuning


def lite0(train_bn: bool, stochastic_depth: float = 0.0) -> keras.Model:
    return models.transfer_model(
        "efficientnet_lite0",
        weights=None,
        image_size=32,
        head_units=8,
        augment=False,
        train_bn=train_bn,
        seed=0,
        stochastic_depth=stochastic_depth,
    )


def moving_means(model) -> dict:
    return {
        layer.name: keras.ops.convert_to_numpy(layer.moving_mean).copy()
        for layer in model.get_layer("backbone").layers
        if isinstance(layer, keras.layers.BatchNormalization)
    }


def finetune_all(model, train_bn: bool, tmp_path):
    images, labels = tiny_data(16)
    models.set_trainable(model, config.Unfreeze.parse("all"), train_bn=train_bn)
    stage = finetune_stage(learning_rate=1e-3)
    model.compile(**training.compile_arguments(stage, training.steps_per_epoch(len(images), stage)))
    training.fit(model, images, labels, images[:8], labels[:8], stage, training.Job(tmp_path))


@pytest.mark.parametrize("train_bn", [True, False])
def test_trained_batchnorm_updates_its_statistics_and_frozen_keeps_them(train_bn, tmp_path):
    model = lite0(train_bn)
    before = moving_means(model)
    finetune_all(model, train_bn, tmp_path)
    after = moving_means(model)
    changed = [name for name in before if not np.array_equal(before[name], after[name])]
    if train_bn:
        assert len(changed) == len(before)  # every BatchNorm layer saw the batches
    else:
        assert changed == []
    bn = next(layer for layer in model.get_layer("backbone").layers if "bn" in layer.name)
    assert bn.trainable == train_bn


# ---------------------------------------------------------------- stochastic depth


def test_stochastic_depth_drops_blocks_in_training_only_and_keeps_batchnorm_frozen(tmp_path):
    model = lite0(train_bn=False, stochastic_depth=0.5)
    drops = [layer for layer in model.get_layer("backbone").layers if layer.name.endswith("_drop")]
    assert drops and max(layer.rate for layer in drops) <= 0.5
    images, _ = tiny_data(8)
    extractor = models.feature_extractor(model)
    first, second = (extractor(images, training=True) for _ in range(2))
    assert not np.allclose(first, second)  # different blocks dropped on each call
    np.testing.assert_array_equal(
        extractor(images, training=False), extractor(images, training=False)
    )
    before = moving_means(model)
    finetune_all(model, False, tmp_path)
    after = moving_means(model)
    assert all(np.array_equal(before[name], after[name]) for name in before)


def test_stochastic_depth_needs_an_efficientnet_lite_backbone():
    with pytest.raises(ValueError, match="stochastic_depth=0.2 needs an efficientnet_lite"):
        models.application("resnet50", stochastic_depth=0.2)


# ---------------------------------------------------------------- MixUp, CutMix, RandAugment


def test_without_batch_augmentation_fit_takes_the_arrays_shuffled():
    images, labels = tiny_data(20)
    data = training.train_batches(images, labels, finetune_stage(), seed=0)
    assert data["x"] is images and data["shuffle"] and data["batch_size"] == 8
    np.testing.assert_array_equal(data["y"], training.one_hot(labels))
    mixed = training.train_batches(images, labels, finetune_stage(mixing="mixup"), seed=0)
    assert isinstance(mixed["x"], training.Batches) and set(mixed) == {"x"}


@pytest.mark.parametrize("mixing", ["mixup", "cutmix"])
def test_mixed_batches_mix_images_and_labels_and_reshuffle(mixing):
    images, labels = tiny_data(20)
    stage = finetune_stage(mixing=mixing, randaugment=True)
    batches = training.Batches(images, labels, stage.micro_batch_size, stage, seed=0)
    assert len(batches) == 3
    x, y = batches[0]
    assert x.shape == (8, *config.IMAGE_SHAPE) and y.shape == (8, config.NUM_CLASSES)
    assert x.min() >= 0 and x.max() <= 255 and np.array_equal(x, np.round(x))
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)
    assert (y.max(axis=1) < 1).any()  # some rows carry two classes
    order = batches.order.copy()
    batches.on_epoch_end()
    assert not np.array_equal(order, batches.order)


def test_fit_trains_through_mixed_batches(tmp_path):
    images, labels = tiny_data(32)
    stage = finetune_stage(mixing="cutmix", randaugment=True, epochs=2, patience=5)
    model = tiny_model()
    model.compile(**training.compile_arguments(stage, training.steps_per_epoch(len(images), stage)))
    history = training.fit(
        model, images, labels, images[:8], labels[:8], stage, training.Job(tmp_path)
    )
    assert len(history) == 2 and np.isfinite(history["loss"]).all()
