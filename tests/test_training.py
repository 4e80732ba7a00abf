import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from cifar10_transfer import config, data, training

SRC = Path(__file__).resolve().parents[1] / "src"


def synthetic_splits(per_class=20, seed=0):
    """Learnable toy data: each class is noise around its own colour."""
    rng = np.random.default_rng(seed)

    def images(count):
        labels = np.arange(count) % 10
        colours = (labels[:, None] * 25).astype("float32")  # class k -> grey level 25k
        noise = rng.normal(0, 20, (count, 32, 32, 3))
        pixels = np.clip(colours[:, None, None, :] + noise, 0, 255).astype(np.uint8)
        return pixels, labels.astype(np.int64)

    x_train, y_train = images(per_class * 10 + 100)
    x_test, y_test = images(100)
    dataset = data.CIFAR10(
        x_train,
        y_train,
        x_test,
        y_test,
        config.CLASS_NAMES,
        source="synthetic",
        verified=False,
        verification="synthetic",
    )
    return data.make_splits(dataset, val_size=100, seed=seed)


SMALL = dict(
    backbone="resnet50",
    weights=None,
    image_size=32,
    head_units=16,
    batch_size=20,
    head_epochs=2,
    finetune_epochs=1,
    baseline_epochs=2,
    unfreeze="stage:conv5",
)


@pytest.fixture(autouse=True)
def isolated_runs(tmp_path, monkeypatch):
    # Feature caches go to runs/; keep them per test.
    monkeypatch.setattr(config, "RUNS_DIR", tmp_path / "runs")


def test_baseline_run_writes_a_complete_run_folder(tmp_path):
    out = tmp_path / "run"
    metrics = training.run_experiment(
        "baseline_cnn", config.profile("smoke", **SMALL), out_dir=out, splits=synthetic_splits()
    )
    for name in ("model.keras", "metrics.json", "history.csv", "predictions.npz"):
        assert (out / name).stat().st_size > 0
    stored = json.loads((out / "metrics.json").read_text())
    assert stored == json.loads(json.dumps(metrics))
    for key in (
        "test_accuracy",
        "test_loss",
        "per_class_accuracy",
        "epochs",
        "wall_time_s",
        "seed",
        "backend",
        "versions",
        "device",
        "device_count",
        "profile",
    ):
        assert key in stored
    assert 0.0 <= stored["test_accuracy"] <= 1.0
    assert set(stored["per_class_accuracy"]) == set(config.CLASS_NAMES)
    assert stored["epochs"] == 2 and stored["device_count"] == 1
    history = pd.read_csv(out / "history.csv")
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"} <= set(history)
    model = keras.saving.load_model(out / "model.keras", safe_mode=True)
    probabilities = model.predict(synthetic_splits().x_test[:5], verbose=0)
    names = [config.CLASS_NAMES[index] for index in probabilities.argmax(axis=1)]
    assert len(names) == 5 and set(names) <= set(config.CLASS_NAMES)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_same_seed_gives_the_same_metrics(tmp_path):
    splits = synthetic_splits()
    profile = config.profile("smoke", **SMALL)
    first = training.run_experiment("baseline_cnn", profile, out_dir=tmp_path / "a", splits=splits)
    second = training.run_experiment("baseline_cnn", profile, out_dir=tmp_path / "b", splits=splits)
    assert first["test_accuracy"] == second["test_accuracy"]
    assert first["test_loss"] == second["test_loss"]
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "a" / "history.csv"), pd.read_csv(tmp_path / "b" / "history.csv")
    )


class InterruptAfter(keras.callbacks.Callback):
    """Simulates Ctrl-C at the end of an epoch."""

    def __init__(self, epoch):
        super().__init__()
        self.stop_epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.stop_epoch:
            raise KeyboardInterrupt


def test_interrupted_run_resumes_where_it_stopped(tmp_path):
    out, splits = tmp_path / "run", synthetic_splits()
    profile = config.profile(
        "smoke", **{**SMALL, "baseline_epochs": 4, "early_stopping_patience": 10}
    )
    with pytest.raises(KeyboardInterrupt):
        training.run_experiment(
            "baseline_cnn", profile, out_dir=out, splits=splits, callbacks=[InterruptAfter(2)]
        )
    assert (out / "backup").exists() and not (out / "metrics.json").exists()
    metrics = training.run_experiment(
        "baseline_cnn", profile, out_dir=out, splits=splits, resume=True
    )
    history = pd.read_csv(out / "history.csv")
    assert metrics["epochs"] == 4 and len(history) == 4
    assert not (out / "backup").exists()  # BackupAndRestore cleans up after success


def test_head_trained_on_cached_features_drops_into_the_full_model(tmp_path):
    out, splits = tmp_path / "head", synthetic_splits()
    metrics = training.run_experiment(
        "head", config.profile("smoke", **SMALL), out_dir=out, splits=splits
    )
    assert list((tmp_path / "runs" / "features").glob("*.npz"))
    model = keras.saving.load_model(out / "model.keras", safe_mode=True)
    full_model = model.predict(splits.x_test, verbose=0)
    with np.load(out / "predictions.npz") as stored:
        np.testing.assert_allclose(full_model, stored["probabilities"], rtol=1e-4, atol=1e-5)
    assert metrics["backbone"] == "resnet50" and metrics["epochs"] == 2


def test_finetune_starts_from_the_head_run_and_keeps_bn_frozen(tmp_path):
    splits, profile = synthetic_splits(), config.profile("smoke", **SMALL)
    head = training.run_experiment("head", profile, out_dir=tmp_path / "head", splits=splits)
    head_model = keras.saving.load_model(tmp_path / "head" / "model.keras", safe_mode=True)
    metrics = training.run_experiment(
        "finetune", profile, out_dir=tmp_path / "finetune", splits=splits
    )
    history = pd.read_csv(tmp_path / "finetune" / "history.csv")
    assert list(history["stage"]) == ["head"] * head["epochs"] + ["finetune"]
    assert "tta_test_accuracy" in metrics
    tuned = keras.saving.load_model(tmp_path / "finetune" / "model.keras", safe_mode=True)
    bn_name = "conv5_block3_3_bn"
    for before, after in zip(
        head_model.get_layer("backbone").get_layer(bn_name).weights,
        tuned.get_layer("backbone").get_layer(bn_name).weights,
        strict=True,
    ):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(before), keras.ops.convert_to_numpy(after)
        )


def stage_history(loss, val_accuracy, val_loss):
    """A stage's history: training losses ``loss``, and these validation numbers."""
    return pd.DataFrame({"loss": loss, "val_accuracy": val_accuracy, "val_loss": val_loss})


def test_chance_accuracy_is_a_warning_and_a_blown_up_loss_an_error(tmp_path, capsys):
    run = training.set_up(
        "two_layer_fc", config.profile("smoke", **SMALL), splits=synthetic_splits(),
        out_dir=tmp_path / "two_layer_fc",
    )  # fmt: skip
    spread, collapsed = np.arange(100) % 10, np.zeros(100, int)
    training.check_converged(run, stage_history([2.1], *LEARNT), spread)
    assert "warning" not in capsys.readouterr().out
    training.check_converged(run, stage_history([2.3], *AT_CHANCE), spread)
    assert capsys.readouterr().out.startswith("warning: two_layer_fc ends at chance accuracy")
    with pytest.raises(training.TrainingDiverged, match="baseline_learning_rate="):
        training.check_converged(run, stage_history([2.3, np.nan], *LEARNT), spread)
    with pytest.raises(training.TrainingDiverged, match="100% of the test images given one"):
        training.check_converged(run, stage_history([1e6], AT_CHANCE[0], 30.0), collapsed)
    with pytest.raises(training.TrainingDiverged, match="final training loss 1e"):
        training.check_converged(run, stage_history([2.3, 1e4], *LEARNT), spread)
    # one class at chance, but with a few times chance's loss: untrained, not diverged
    training.check_converged(run, stage_history([11.2], AT_CHANCE[0], 11.9), collapsed)
    assert capsys.readouterr().out.startswith("warning: ")


LEARNT = (0.6, 1.1)  # the last epoch's validation accuracy and loss
AT_CHANCE = (0.1, 2.31)


def test_bad_experiment_and_setting_are_value_errors():
    with pytest.raises(ValueError, match="experiment must be one of"):
        training.run_experiment("resnet", config.profile("smoke"))
    with pytest.raises(ValueError, match="unknown profile setting"):
        training.run_experiment("head", config.profile("smoke", epochz=3))
    with pytest.raises(ValueError, match="profile must be one of"):
        training.run_experiment("head", config.profile("huge"))


JAX_SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
from test_training import synthetic_splits, SMALL
from cifar10_transfer import config, training
metrics = training.run_experiment("head", config.profile("smoke", **SMALL), out_dir={out!r},
                                  splits=synthetic_splits())
print(json.dumps(metrics))
"""


@pytest.mark.parametrize("backend", ["jax"])
def test_core_training_path_runs_on_another_backend(tmp_path, backend):
    environment = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "PYTHONPATH": str(SRC),
        "CIFAR10_TRANSFER_ROOT": str(tmp_path),
        "CIFAR10_VERBOSE": "0",
    }
    script = JAX_SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path / "run"))
    result = subprocess.run(
        [sys.executable, "-c", script], env=environment, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["backend"] == backend and backend in metrics["versions"]
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert (tmp_path / "run" / "model.keras").exists()


@pytest.mark.realdata
def test_seed_cnn_learns_real_cifar10(real_cifar10, tmp_path):
    """The baseline CNN, 2 epochs on 10k real images: clearly above chance (10%)."""
    splits = data.make_splits(
        real_cifar10, train_size=10_000, val_size=1_000, test_size=2_000, seed=42
    )
    profile = config.profile(
        "smoke",
        baseline_epochs=2,
        baseline_batch_size=64,
        baseline_augment=False,
        baseline_learning_rate=1e-3,
        lr_schedule="constant",
        label_smoothing=0.0,
    )
    metrics = training.run_experiment(
        "baseline_cnn", profile, out_dir=tmp_path / "run", splits=splits
    )
    assert metrics["test_accuracy"] >= 0.45, metrics["test_accuracy"]
