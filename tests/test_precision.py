"""Precision on each device, and a feature cache that survives mixed precision."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from test_training import SMALL, synthetic_splits

from cifar10_transfer import cli, config, hardware, training

T4 = {"name": "Tesla T4", "compute_capability": (7, 5)}
A100 = {"name": "NVIDIA A100-SXM4-40GB", "compute_capability": (8, 0)}
H100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": (9, 0)}


@pytest.fixture(autouse=True)
def restore_policy(tmp_path, monkeypatch):
    # The dtype policy is global to the process; feature caches go to a fresh runs folder.
    monkeypatch.setattr(config, "RUNS_DIR", tmp_path / "runs")
    yield
    keras.config.set_dtype_policy("float32")


@pytest.mark.parametrize(
    ("gpu", "expected"),
    [
        (None, "float32"),
        (T4, "mixed_float16"),
        ({"name": "Tesla V100", "compute_capability": (7, 0)}, "mixed_float16"),
        (A100, "mixed_bfloat16"),
        (H100, "mixed_bfloat16"),
        ({"name": "gpu", "compute_capability": None}, "mixed_float16"),
    ],
)
def test_auto_precision_follows_the_compute_capability(gpu, expected):
    policy, reason = hardware.auto_precision(gpu)
    assert policy == expected
    assert reason  # says why
    if gpu is not None and gpu["compute_capability"] is not None:
        assert gpu["name"] in reason and "compute capability" in reason


def test_auto_logs_what_it_picked_and_why(monkeypatch, capsys):
    monkeypatch.setattr(hardware, "gpu_info", lambda: T4)
    assert hardware.configure_precision("auto") == "mixed_float16"
    assert keras.config.dtype_policy().name == "mixed_float16"
    out = capsys.readouterr().out
    assert "precision: mixed_float16 (auto; Tesla T4: compute capability 7.5 < 8.0" in out


def test_this_cpu_trains_in_float32():
    assert hardware.gpu_info() is None
    assert hardware.configure_precision("auto") == "float32"


def test_an_explicit_precision_overrides_auto_and_a_bad_one_is_refused(monkeypatch):
    monkeypatch.setattr(hardware, "gpu_info", lambda: A100)
    assert hardware.configure_precision("float32") == "float32"
    with pytest.raises(ValueError, match="precision must be one of auto, float32"):
        hardware.configure_precision("fp8")


def test_float16_models_are_compiled_with_loss_scaling():
    keras.config.set_dtype_policy("mixed_float16")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(10, activation="softmax")])
    model.compile(**training.compile_arguments(training.Stage("head", learning_rate=1e-3)))
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


def test_precision_is_a_profile_setting_and_a_cli_flag():
    assert config.profile("quick").precision == "auto"
    args = cli.build_parser().parse_args(["train", "head", "--precision", "mixed_float16"])
    assert args.precision == "mixed_float16"
    with pytest.raises(SystemExit) as caught:
        cli.build_parser().parse_args(["train", "head", "--precision", "half"])
    assert caught.value.code == 2


def _head(tmp_path, name, splits, precision):
    metrics = training.run_experiment(
        "head",
        config.profile("smoke", **SMALL, precision=precision),
        out_dir=tmp_path / name,
        splits=splits,
    )
    with np.load(tmp_path / name / "predictions.npz") as stored:
        return metrics, stored["probabilities"]


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_feature_cache_hit_gives_the_same_predictions_under_mixed_precision(
    tmp_path, precision, capsys
):
    splits = synthetic_splits()
    first, miss = _head(tmp_path, "miss", splits, precision)
    assert "extracting train features" in capsys.readouterr().out
    (cache,) = (tmp_path / "runs" / "features").glob("*.npz")
    with np.load(cache, allow_pickle=False) as stored:
        assert {stored[name].dtype for name in stored.files} == {np.dtype("float32")}
    second, hit = _head(tmp_path, "hit", splits, precision)
    assert "extracting" not in capsys.readouterr().out  # read from the cache
    assert first["precision"] == second["precision"] == precision
    np.testing.assert_array_equal(miss, hit)
    assert first["test_accuracy"] == second["test_accuracy"]


def test_features_of_another_precision_are_not_reused(tmp_path, capsys):
    splits = synthetic_splits()
    _head(tmp_path, "float32", splits, "float32")
    _head(tmp_path, "bfloat16", splits, "mixed_bfloat16")
    assert len(list((tmp_path / "runs" / "features").glob("*.npz"))) == 2


def test_an_unusable_cache_file_is_recomputed_not_trusted(tmp_path, capsys):
    splits = synthetic_splits()
    _, expected = _head(tmp_path, "first", splits, "float32")
    (cache,) = (tmp_path / "runs" / "features").glob("*.npz")
    # What np.savez made of bfloat16 features before the fix: raw two-byte records (|V2).
    raw = np.zeros((len(splits.x_train), 4), dtype="V2")
    np.savez(cache, train=raw, val=raw[: len(splits.x_val)], test=raw[: len(splits.x_test)])
    capsys.readouterr()
    _, again = _head(tmp_path, "again", splits, "float32")
    out = capsys.readouterr().out
    assert "unusable" in out and "expected float32" in out and "extracting" in out
    np.testing.assert_allclose(again, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.realdata
def test_cli_head_twice_under_mixed_bfloat16_miss_then_hit(real_data_path, tmp_path):
    """The issue's command: `train head --profile smoke --precision mixed_bfloat16` twice."""
    environment = {**os.environ, "CIFAR10_TRANSFER_ROOT": str(tmp_path), "CIFAR10_VERBOSE": "0"}
    runs = []
    for name in ("first", "second"):
        out = tmp_path / name
        result = subprocess.run(
            [sys.executable, "-m", "cifar10_transfer", "train", "head", "--profile", "smoke"]
            + ["--precision", "mixed_bfloat16", "--data", str(real_data_path), "--out", str(out)],
            env=environment,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        with np.load(out / "predictions.npz") as stored:
            runs.append((result.stdout, stored["probabilities"]))
        assert json.loads((out / "metrics.json").read_text())["precision"] == "mixed_bfloat16"
    (first_out, first), (second_out, second) = runs
    assert "extracting train features" in first_out and "extracting" not in second_out
    np.testing.assert_array_equal(first, second)
