"""`cifar10-transfer evaluate MODEL --data SRC --json --figures DIR` end to end on real data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifar10_transfer import models

SRC = Path(__file__).resolve().parents[1] / "src"


def _cli(*args):
    environment = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run(
        [sys.executable, "-m", "cifar10_transfer", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.realdata
def test_evaluate_prints_the_json_report_and_writes_error_figures(real_data_path, tmp_path):
    model_path = tmp_path / "model.keras"
    models.baseline_cnn().save(model_path)
    figures = tmp_path / "figures"
    result = _cli(
        "evaluate",
        str(model_path),
        "--data",
        str(real_data_path),
        "--json",
        "--test-size",
        "200",
        "--figures",
        str(figures),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert {"accuracy", "loss", "per_class", "confusion_matrix"} <= set(report)
    matrix = report["confusion_matrix"]
    assert len(matrix) == 10 and all(len(row) == 10 for row in matrix)
    assert sum(map(sum, matrix)) == 200 and [sum(row) for row in matrix] == [20] * 10
    assert abs(report["accuracy"] - sum(matrix[i][i] for i in range(10)) / 200) < 1e-9
    written = sorted(path.name for path in figures.glob("*.png"))
    assert written == [
        "confusion_matrix.png",
        "misclassified.png",
        "per_class_accuracy.png",
        "reliability.png",
    ]
    for name in written:
        with Image.open(figures / name) as image:
            assert image.width > 300


def test_evaluate_a_missing_model_is_a_one_line_error(tmp_path):
    result = _cli("evaluate", str(tmp_path / "nope.keras"), "--data", str(tmp_path))
    assert result.returncode == 2
    assert "nope.keras" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.realdata
def test_evaluate_corruptions_prints_and_reports_each_corruption(real_data_path, tmp_path):
    model_path = tmp_path / "model.keras"
    models.baseline_cnn().save(model_path)
    arguments = ["evaluate", str(model_path), "--data", str(real_data_path), "--test-size", "100"]
    result = _cli(*arguments, "--corruptions", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    measured = json.loads(result.stdout)["corruptions"]
    assert list(measured["severities"]) == ["3", "5"] and measured["test_images"] == 100
    for severity in measured["severities"].values():
        assert set(severity["corruptions"]) == {
            "gaussian_noise", "gaussian_blur", "low_contrast", "brightness", "jpeg", "pixelate"
        }  # fmt: skip
    printed = _cli(*arguments, "--corruptions").stdout
    assert "common corruptions (CIFAR-10-C's, at severities 3 and 5 of 5)" in printed
    assert printed.count("mean kept") == 2 and "pixelate" in printed


def _transfer_run(folder):
    """A run folder of an untrained smoke transfer model (Lite0, 32 px) with its profile."""
    from cifar10_transfer import config, fileio

    profile = config.profile("smoke", weights=None)
    folder.mkdir()
    models.build_transfer_model(profile).save(folder / "model.keras")
    fileio.write_json(
        folder / "metrics.json", {"backbone": profile.backbone, "profile": profile.to_dict()}
    )
    return folder


def test_a_transfer_model_rebuilt_at_another_size_keeps_its_weights(tmp_path):
    from cifar10_transfer import runs

    folder = _transfer_run(tmp_path / "run")
    model, profile = runs.load_model(folder), runs.run_profile(folder / "model.keras")
    resized = models.at_image_size(model, profile, 48)
    assert profile.image_size == 32 and resized.get_layer("resize").get_config()["height"] == 48
    for kept, original in zip(resized.get_weights(), model.get_weights(), strict=True):
        assert (kept == original).all()
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    assert resized.predict(images, verbose=0).shape == (4, 10)


@pytest.mark.realdata
def test_evaluate_at_another_image_size_tests_the_run_there(real_data_path, tmp_path):
    folder = _transfer_run(tmp_path / "run")
    arguments = ["evaluate", str(folder), "--data", str(real_data_path), "--test-size", "100"]
    result = _cli(*arguments, "--image-size", "48", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    assert 0.0 <= json.loads(result.stdout)["accuracy"] <= 1.0
    # Settings are checked before any work, each refusal one line naming what was expected.
    baseline = tmp_path / "baseline"
    baseline.mkdir()
    models.baseline_cnn().save(baseline / "model.keras")
    refusals = {
        "600": "image_size=600: expected an integer from 32 to 512",
        "48": "no run folder's metrics.json",
    }
    for size, message in refusals.items():
        target = folder if size == "600" else baseline / "model.keras"
        refused = _cli("evaluate", str(target), "--data", str(real_data_path), "--image-size", size)
        assert refused.returncode != 0
        (line,) = refused.stderr.strip().splitlines()  # one line, no traceback
        assert line.startswith("error: ") and message in line
