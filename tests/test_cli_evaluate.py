"""`cifar10-transfer evaluate MODEL --data SRC --json --figures DIR` end to end on real data."""

import json
import os
import subprocess
import sys
from pathlib import Path

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
