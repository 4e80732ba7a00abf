"""GPU-related training settings, checked on the CPU: the guard that keeps a GPU profile off a
CPU, and gradient accumulation."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from cifar10_transfer import config, hardware, training
from cifar10_transfer.cli import main


@pytest.fixture
def no_accelerator(monkeypatch):
    monkeypatch.setattr(hardware, "has_accelerator", lambda: False)


def write_throughput(results_dir, name, images_per_second, image_size=96, **fields):
    result = {
        "benchmark": "throughput",
        "backbone": "resnet50",
        "images_per_second": images_per_second,
        "image_size": image_size,
        "device": "cpu (x86_64, 2 cores)",
        **fields,
    }
    (results_dir / name).write_text(json.dumps(result))


# ---------------------------------------------------------------- the CPU guard


def test_gpu_profile_on_a_cpu_refuses_with_the_estimated_time(no_accelerator):
    profile = config.profile("full")
    measurement = hardware.cpu_throughput("resnet50")
    assert measurement is not None, "benchmarks/results/ should hold a resnet50 CPU throughput"
    estimate = hardware.cpu_seconds_estimate(profile, measurement)
    with pytest.raises(ValueError) as refused:
        hardware.check_accelerator(profile)
    message = str(refused.value)
    assert "profile 'full' needs a GPU" in message and "no GPU was found" in message
    assert f"about {hardware._duration(estimate)} (an estimate" in message
    assert measurement["file"] in message and "--allow-cpu" in message
    assert estimate > 3600  # ResNet-50 at 224 px on 48k images: hours on any CPU


def test_allow_cpu_goes_on_with_a_warning(no_accelerator, capsys):
    hardware.check_accelerator(config.profile("paper", allow_cpu=True))
    out = capsys.readouterr().out
    assert out.startswith("warning: profile 'paper' needs a GPU") and "anyway" in out


def test_cpu_profiles_and_gpus_pass_the_check(no_accelerator, monkeypatch):
    hardware.check_accelerator(config.profile("quick"))  # needs_accelerator=False
    monkeypatch.setattr(hardware, "has_accelerator", lambda: True)
    hardware.check_accelerator(config.profile("full"))


def test_gpu_profiles_are_marked_on_the_profile():
    marked = {name for name, profile in config.PROFILES.items() if profile.needs_accelerator}
    assert marked == {"full", "paper", "fast"}


def test_cost_model_uses_the_fastest_cpu_measurement_and_scales_with_pixels_and_cores(
    tmp_path, monkeypatch
):
    write_throughput(tmp_path, "slow.json", 2.0)
    write_throughput(tmp_path, "fast.json", 2.0, image_size=192)  # 4x the pixels: fastest
    write_throughput(tmp_path, "gpu.json", 500.0, device="NVIDIA T4")
    write_throughput(tmp_path, "other.json", 90.0, backbone="efficientnet_lite0")
    compare = {"benchmark": "compare", "ours": {"benchmark": "throughput", "backbone": "x"}}
    (tmp_path / "compare.json").write_text(json.dumps(compare))
    measurement = hardware.cpu_throughput("resnet50", tmp_path)
    assert (measurement["file"], measurement["cores"]) == ("fast.json", 2)

    monkeypatch.setattr(hardware.os, "cpu_count", lambda: 2)
    profile = config.profile("paper")
    seconds = hardware.cpu_seconds_estimate(profile, measurement)
    half_size = hardware.cpu_seconds_estimate(
        config.profile(profile, image_size=profile.image_size // 2), measurement
    )
    assert seconds == pytest.approx(4 * half_size)
    monkeypatch.setattr(hardware.os, "cpu_count", lambda: 4)
    assert hardware.cpu_seconds_estimate(profile, measurement) == pytest.approx(seconds / 2)


def test_without_a_measurement_the_refusal_says_the_time_is_unknown(no_accelerator, tmp_path):
    with pytest.raises(ValueError, match="an unknown time \\(no CPU throughput of resnet50"):
        hardware.check_accelerator(config.profile("full"), results_dir=tmp_path)


def test_run_experiment_refuses_before_loading_any_data(no_accelerator, tmp_path):
    # A missing data source would be an OSError/ValueError of its own: the check comes first.
    with pytest.raises(ValueError, match="no GPU was found"):
        training.run_experiment(
            "head", config.profile("full"), data=tmp_path / "missing", out_dir=tmp_path / "run"
        )


def test_cli_refuses_in_one_line_and_allow_cpu_gets_past_the_check(
    no_accelerator, tmp_path, capsys
):
    arguments = ["train", "head", "--profile", "full", "--data", str(tmp_path / "missing")]
    assert main([*arguments, "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: profile 'full' needs a GPU") and error.count("\n") == 1
    # With the opt-in it goes on, as far as the missing data.
    assert main([*arguments, "--allow-cpu", "--out", str(tmp_path / "run")]) == 2
    captured = capsys.readouterr()
    assert captured.out.startswith("warning: profile 'full' needs a GPU")
    assert "missing" in captured.err and "GPU" not in captured.err


# ---------------------------------------------------------------- gradient accumulation


def tiny_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input(config.IMAGE_SHAPE, dtype="uint8"),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Flatten(),
            keras.layers.Dense(config.NUM_CLASSES, activation="softmax"),
        ]
    )


class WeightsPerStep(keras.callbacks.Callback):
    """A copy of the dense kernel after every fit() step."""

    def __init__(self):
        super().__init__()
        self.kernels = []

    def on_train_batch_end(self, batch, logs=None):
        self.kernels.append(keras.ops.convert_to_numpy(self.model.layers[-1].kernel).copy())


def fit_tiny(tmp_path, batch_size, accumulation):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, *config.IMAGE_SHAPE), dtype=np.uint8)
    labels = np.arange(16) % config.NUM_CLASSES
    model, steps = tiny_model(), WeightsPerStep()
    tmp_path.mkdir()
    keras.utils.set_random_seed(0)  # the same shuffles for both runs
    stage = training.Stage(
        "baseline",
        epochs=2,
        batch_size=batch_size,
        learning_rate=1e-2,
        schedule="cosine",
        patience=5,
        label_smoothing=0.0,
        gradient_accumulation_steps=accumulation,
    )
    job = training.Job(tmp_path, callbacks=(steps,))
    model.compile(**training.compile_arguments(stage, training.steps_per_epoch(len(images), stage)))
    history = training.fit(model, images, labels, images[:4], labels[:4], stage, job)
    return model, steps.kernels, history


def test_accumulation_makes_the_same_updates_from_half_the_batch(tmp_path):
    whole, whole_kernels, whole_history = fit_tiny(tmp_path / "whole", 8, 1)
    halves, half_kernels, _ = fit_tiny(tmp_path / "halves", 8, 2)
    # 16 images: 2 updates per epoch from 2 steps of 8, or from 4 micro-steps of 4.
    assert (len(whole_kernels), len(half_kernels)) == (4, 8)
    assert int(whole.optimizer.iterations) == int(halves.optimizer.iterations) == 4
    for step in range(len(half_kernels) - 1):
        changed = not np.array_equal(half_kernels[step], half_kernels[step + 1])
        assert changed == (step % 2 == 0), step  # only micro-steps 2, 4, ... (1-based) update
    # Averaged gradients of two halves are the whole batch's, and the cosine schedule gives
    # every update the same learning rate in both runs: the same weights after each update
    # (up to rounding, which Adam's division by sqrt(v) magnifies for near-zero gradients).
    np.testing.assert_allclose(half_kernels[1::2], whole_kernels, rtol=1e-4, atol=2e-5)
    assert whole_history["learning_rate"].iloc[-1] == pytest.approx(0.0, abs=1e-9)


def test_accumulation_steps_must_divide_the_batch():
    assert config.micro_batch_size(256, 4) == 64
    with pytest.raises(ValueError, match="gradient_accumulation_steps=3 must divide the batch"):
        config.micro_batch_size(256, 3)
    with pytest.raises(ValueError, match="gradient_accumulation_steps must be an integer >= 1"):
        config.micro_batch_size(256, 0)


def test_cli_passes_the_accumulation_steps_through(tmp_path, capsys):
    arguments = ["train", "head", "--batch-size", "64", "--data", str(tmp_path / "missing")]
    arguments += ["--out", str(tmp_path / "run"), "--gradient-accumulation-steps", "3"]
    assert main(arguments) == 2
    assert "gradient_accumulation_steps=3 must divide the batch size 64" in capsys.readouterr().err


# One physical CPU as two TensorFlow devices, then a run with accumulation on both.
MIRRORED_ACCUMULATION = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from cifar10_transfer import config, training
try:
    training.run_experiment(
        "finetune",
        config.profile("smoke", batch_size=20, gradient_accumulation_steps=2, weights=None),
        devices="all",
    )
except ValueError as error:
    print(error)
"""


def test_tensorflow_refuses_accumulation_across_devices(tmp_path):
    src = Path(__file__).resolve().parents[1] / "src"
    environment = {
        **os.environ,
        "KERAS_BACKEND": "tensorflow",
        "PYTHONPATH": str(src),
        "CIFAR10_TRANSFER_ROOT": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED_ACCUMULATION],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "gradient_accumulation_steps=2 with 2 devices needs KERAS_BACKEND=jax" in result.stdout
