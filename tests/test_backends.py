"""The smoke profile end to end on Keras's third backend, PyTorch, through the CLI.

CI installs torch (benchmarks/requirements.txt, CI=true in the Makefile), so there a missing
torch fails this test; elsewhere it skips with the reason. The runs happen in subprocesses:
the backend is fixed when Keras is first imported, and torch and TensorFlow stay out of the
test process together.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cifar10_transfer import config

SRC = Path(__file__).resolve().parents[1] / "src"
IN_CI = os.environ.get("CI", "").lower() == "true"

# Reloads every run's model.keras on the torch backend and recomputes its test accuracy on
# the test split the run used (the profile's seed, not the evaluate CLI's stratified subset).
# runs.load_model is the loader of `evaluate` and the demo: safe_mode=True, and it
# registers the package's own layers first.
RELOAD_SCRIPT = """
import json, sys
import keras
from cifar10_transfer import config, data, evaluation, runs
profile = config.profile("smoke")
splits = data.load_splits(profile, sys.argv[1])
accuracies = {}
for run in sys.argv[2:]:
    model = runs.load_model(run)
    probabilities = model.predict(splits.x_test, batch_size=profile.batch_size, verbose=0)
    accuracies[run] = evaluation.accuracy(splits.y_test, probabilities)
print(json.dumps({"backend": keras.backend.backend(), "accuracies": accuracies}))
"""


def require_torch() -> None:
    # find_spec, not import: torch must not load next to TensorFlow in this process.
    if importlib.util.find_spec("torch") is not None:
        return
    message = "torch is not installed (make .venv/.installed-bench installs it)"
    if IN_CI:
        pytest.fail(message + "; CI installs it and must run the torch backend test")
    pytest.skip(message)


def _run(environment: dict, *arguments: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, *arguments],
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
@pytest.mark.realdata
def test_smoke_profile_end_to_end_on_the_torch_backend(real_data_path, tmp_path):
    require_torch()
    environment = {
        **os.environ,
        "KERAS_BACKEND": "torch",
        "PYTHONPATH": str(SRC),
        "CIFAR10_TRANSFER_ROOT": str(tmp_path),
        "CIFAR10_VERBOSE": "0",
    }
    data_arguments = ("--profile", "smoke", "--data", str(real_data_path))
    _run(environment, "-m", "cifar10_transfer", "train", "baseline_cnn", *data_arguments)
    # With no head run yet, `train finetune` trains the head first as its own run folder.
    _run(environment, "-m", "cifar10_transfer", "train", "finetune", *data_arguments)

    profile = config.profile("smoke")
    runs = {
        name: tmp_path / "runs" / "smoke" / name for name in ("baseline_cnn", "head", "finetune")
    }
    reloaded = _run(environment, "-c", RELOAD_SCRIPT, str(real_data_path), *map(str, runs.values()))
    report = json.loads(reloaded.stdout.strip().splitlines()[-1])
    assert report["backend"] == "torch"
    for name, run in runs.items():
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["experiment"] == name
        assert metrics["backend"] == "torch" and "torch" in metrics["versions"]
        assert 0.0 <= metrics["test_accuracy"] <= 1.0
        assert {key: metrics["data"][key] for key in ("train_size", "val_size", "test_size")} == {
            "train_size": profile.train_size,
            "val_size": profile.val_size,
            "test_size": profile.test_size,
        }
        assert metrics["backbone"] == (None if name == "baseline_cnn" else profile.backbone)
        assert report["accuracies"][str(run)] == metrics["test_accuracy"], name
