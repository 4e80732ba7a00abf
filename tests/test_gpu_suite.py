"""The GPU suite, rehearsed: ``make gpu-suite SCALE=tiny`` runs every step end to end on a
CPU, and the epochs of each step are sized from the measured throughput."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_suite  # noqa: E402

from cifar10_transfer import config  # noqa: E402


@pytest.mark.realdata
def test_tiny_suite_runs_every_step_and_writes_results_where_reproduce_would(
    real_data_path, tmp_path
):
    python_path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    environment = {
        **os.environ,
        "PYTHONPATH": python_path,
        "CIFAR10_TRANSFER_ROOT": str(tmp_path),
        "CIFAR10_VERBOSE": "0",
    }
    out = tmp_path / "out"
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--scale", "tiny"]
    command += ["--data", str(real_data_path), "--root", str(out)]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    logs = list((out / "benchmarks" / "results").glob("gpu_suite-*.json"))
    assert len(logs) == 1
    log = json.loads(logs[0].read_text())
    statuses = {entry["step"]: entry["status"] for entry in log["steps"]}
    assert [entry["step"] for entry in log["steps"]][:5] == [
        "throughput",
        "fast",
        "paper",
        "baseline",
        "full",
    ]
    assert all(status == "done" for step, status in statuses.items() if "seed" not in step)
    assert log["scale"] == "tiny" and log["git_commit"] and log["device"].startswith("cpu")
    steps = {entry["step"]: entry for entry in log["steps"]}
    # Epochs were sized from the throughput step 1 measured.
    assert steps["throughput"]["efficientnet_lite0"]["ours_images_per_second"] > 0
    assert steps["paper"]["sizing"]["finetune_epochs"] >= 1
    assert steps["paper"]["sizing"]["estimated_epoch_s"] > 0
    # Results land in results/<profile>/ with their summary, as make reproduce writes them.
    paper = json.loads((out / "results" / "paper" / "summary.json").read_text())
    assert [run["experiment"] for run in paper["runs"]] == ["head", "finetune"]
    full = json.loads((out / "results" / "full" / "summary.json").read_text())
    assert [run["experiment"] for run in full["runs"]] == ["baseline_cnn", "head", "finetune"]
    metrics = json.loads((out / "results" / "full" / "finetune" / "metrics.json").read_text())
    assert metrics["profile"]["name"] == "full" and metrics["backbone"] == "efficientnet_lite0"
    assert metrics["profile"]["train_bn"] and metrics["profile"]["mixing"] == "mixup"
    for seed in gpu_suite.EXTRA_SEEDS:
        if statuses.get(f"full seed {seed}") == "done":
            assert (out / "results" / "full" / "seeds" / str(seed) / "finetune").is_dir()
    assert (
        out / "benchmarks" / "results" / "time_to_accuracy-efficientnet_lite0-suite.json"
    ).exists()
    # Nothing went into the checkout's results/ or README.
    assert not (tmp_path / "results").exists()


class FakeSplits:
    def __init__(self, train, val, test):
        self.x_train, self.x_val, self.x_test = [None] * train, [None] * val, [None] * test


def suite_with_throughput(tmp_path, throughput):
    args = gpu_suite.parse_arguments(["--scale", "tiny", "--root", str(tmp_path)])
    suite = gpu_suite.Suite(args)
    suite.throughput, suite.compile_s = throughput, 10.0
    suite.load = lambda profile: FakeSplits(48_000, 2_000, 10_000)
    return suite


def test_epochs_are_sized_from_measured_throughput(tmp_path):
    profile = config.profile("full", backbone="efficientnet_lite0", needs_accelerator=False)
    suite = suite_with_throughput(tmp_path, throughput=4_000.0)
    sized, sizing = suite.sized(profile, budget_s=180)
    # One epoch: 48k images at 4,000/s plus 2k validation images at 3x: 12.17 s. The budget
    # also pays two compilations (20 s), the feature pass (60k images, 5 s) and the test
    # predictions with flip TTA (1.7 s): (180 - 26.7) / 12.17 -> 12 epochs, capped at 10.
    assert sizing["estimated_epoch_s"] == pytest.approx(12.17, abs=0.01)
    assert sized.finetune_epochs == profile.finetune_epochs == 10
    slow = suite_with_throughput(tmp_path, throughput=1_000.0)
    sized, sizing = slow.sized(profile, budget_s=180)
    assert sized.finetune_epochs == 2  # (180 - 20 - 20 - 6.7) / 48.67


def test_without_a_measurement_the_profile_epochs_stand(tmp_path):
    suite = suite_with_throughput(tmp_path, throughput=None)
    profile = config.profile("paper", needs_accelerator=False)
    assert suite.sized(profile, budget_s=120) == (profile, None)
