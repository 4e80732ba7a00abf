"""`data-info`: in-process on a tiny tree, as a subprocess on the real data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifar10_transfer import config
from cifar10_transfer.cli import main

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """train/ and test/ with one 32x32 PNG per class, and a private Keras cache."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    for split in ("train", "test"):
        for label, name in enumerate(config.CLASS_NAMES):
            folder = tmp_path / "tree" / split / name
            folder.mkdir(parents=True)
            Image.fromarray(np.full((32, 32, 3), label, np.uint8)).save(folder / "0.png")
    return tmp_path / "tree"


def test_data_info_json(tree, capsys):
    assert main(["data-info", "--data", str(tree), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["train"] == dict.fromkeys(config.CLASS_NAMES, 1)
    assert summary["test"] == dict.fromkeys(config.CLASS_NAMES, 1)
    assert summary["source"] == str(tree.resolve())
    assert summary["verified"] is False
    assert summary["image_shape"] == [32, 32, 3] and summary["dtype"] == "uint8"
    assert summary["load_time_s"] >= 0


def test_data_info_text(tree, capsys):
    assert main(["data-info", "--data", str(tree)]) == 0
    out = capsys.readouterr().out
    assert "train: 10 images" in out and "test: 10 images" in out
    assert "verified:  False (not verified: folder)" in out


def test_data_info_bad_tree_is_one_line_error(tree, capsys):
    Image.new("RGB", (64, 64)).save(tree / "train" / "cat" / "big.png")
    assert main(["data-info", "--data", str(tree)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert "train/cat/big.png is 64x64 pixels; expected 32x32" in captured.err


def run_cli(*args):
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "cifar10_transfer", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )


@pytest.mark.realdata
def test_data_info_real_counts(real_cifar10, real_data_path):
    # real_cifar10 filled the Keras cache this subprocess inherits, so it does not decode again.
    result = run_cli("data-info", "--data", str(real_data_path), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["train"] == dict.fromkeys(config.CLASS_NAMES, 5000)
    assert summary["test"] == dict.fromkeys(config.CLASS_NAMES, 1000)
    assert summary["verified"] is True
    assert summary["verification"] == "sha256 of cifar10-jpeg.tar.gz"


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["cifar10-jpeg.tar.gz", "partial-copy.tar.gz"])
def test_data_info_truncated_real_tarball(real_data_path, tmp_path, name):
    # Under its published name the checksum catches it; under another name, the tar reader.
    truncated = tmp_path / name
    content = real_data_path.read_bytes()
    truncated.write_bytes(content[: len(content) // 2])
    result = run_cli("data-info", "--data", str(truncated), "--json")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: {truncated}")
    assert "truncated or corrupted" in result.stderr


@pytest.mark.realdata
def test_a_diverging_run_is_an_error_line_and_records_nothing(
    real_cifar10, real_data_path, tmp_path
):
    # Adam at a learning rate of 10 sends the loss to millions in the first epoch.
    out = tmp_path / "two_layer_fc"
    result = run_cli(
        "train", "two_layer_fc", "--profile", "smoke", "--data", str(real_data_path),
        "--set", "baseline_learning_rate=10", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: two_layer_fc diverged") and "baseline_learning_rate=10" in error
    assert "Traceback" not in result.stderr and not (out / "metrics.json").exists()
