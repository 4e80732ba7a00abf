"""The T4 estimate of the GPU profiles' minutes per notebook (benchmarks/gpu_estimate.py):
its FLOP count, and the README table and notebook lines that show it, marked as estimates."""

import json
import subprocess
import sys
from pathlib import Path

import keras
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_estimate  # noqa: E402

from cifar10_transfer import config, fileio  # noqa: E402
from cifar10_transfer.publish import reports, reproduce  # noqa: E402


def test_forward_flops_counts_convolutions_and_dense_layers():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same")(inputs)  # 64 pixels x 9 x 3 x 8
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)  # 64 pixels x 9 x 8
    x = keras.layers.Conv2D(4, 1, strides=2)(x)  # 16 pixels x 8 x 4
    x = keras.layers.BatchNormalization()(x)  # not counted
    x = keras.layers.GlobalAveragePooling2D()(x)
    inner = keras.Model(inputs, x)
    outer_inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Dense(10)(inner(outer_inputs))  # 4 x 10
    model = keras.Model(outer_inputs, outputs)
    multiply_adds = 64 * 9 * 3 * 8 + 64 * 9 * 8 + 16 * 8 * 4 + 4 * 10
    assert gpu_estimate.forward_flops(model) == 2 * multiply_adds


def test_resnet50_at_224_px_counts_about_4_gigamultiply_adds():
    # The published count for ResNet-50 is 3.8-4.1 G multiply-adds per 224-px image; our
    # count calibrates the T4 rate, so it must be of that size.
    model = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(224, 224, 3))
    assert 3.8e9 < gpu_estimate.forward_flops(model) / 2 < 4.2e9


def test_the_script_writes_an_estimate_per_gpu_profile_and_notebook(tmp_path):
    out = tmp_path / "estimate.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_estimate.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["profiles"]) == set(gpu_estimate.GPU_PROFILES) == {"full", "paper", "fast"}
    quick = reports.reproduce_timings(ROOT / "results" / "quick")[0]["seconds"]
    for profile in result["profiles"].values():
        seconds = profile["seconds"]
        assert list(seconds) == list(config.NOTEBOOKS)
        # The notebooks that train nothing take their measured CPU time.
        assert seconds["01_eda.ipynb"] == round(quick["01_eda.ipynb"], 1)
        flops = profile["flops"]["04_finetune.ipynb"]
        assert seconds["04_finetune.ipynb"] == pytest.approx(
            flops / (result["effective_tflops"] * 1e12), abs=0.1
        )
    # full trains 4.8x the images of paper for 10 epochs instead of 15, same model.
    full, paper = (result["profiles"][n]["flops"]["04_finetune.ipynb"] for n in ("full", "paper"))
    assert 2.5 < full / paper < 3.5
    assert (
        result["computed_on"]["git_commit"]
        and "NVIDIA/DeepLearningExamples" in (result["reference_source"])
    )


def test_an_unmeasured_gpu_profile_shows_its_estimate_marked_as_one(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "COMMITTED_RESULTS", tmp_path / "results")
    estimate = {
        "profiles": {"paper": {"seconds": {name: 120.0 for name in config.NOTEBOOKS}}},
    }
    fileio.write_json(config.COMMITTED_RESULTS.parent / config.GPU_ESTIMATE, estimate)
    table = reports.notebook_times_markdown(config.COMMITTED_RESULTS)
    assert "`paper` (T4, estimate)" in table and "≥ 2.0 min (estimate)" in table
    assert "not measured yet (a GPU)" in table  # full and fast have no estimate here
    line = reproduce.expected_time(config.profile("paper"), "04_finetune.ipynb")
    assert "no measured time" in line and "least 2.0 min on a T4 is the estimate" in line
    assert "(make reproduce PROFILE=full" in reproduce.expected_time(
        config.profile("full"), "04_finetune.ipynb"
    )
