"""Each notebook alone, in a fresh runtime: the package installed from a build (not the
checkout's src/), the working folder elsewhere, nothing trained before, the data named by
$CIFAR10_DATA. As a Colab user opening any one notebook first would run it."""

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from cifar10_transfer import config

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = [ROOT / "notebooks" / name for name in config.NOTEBOOKS]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The project as pip installs it (non-editable, no dependencies: they are here)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "--no-deps", "--no-build-isolation", "--target", str(target), str(ROOT)],
        check=True,
    )  # fmt: skip
    return target


@pytest.mark.realdata
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_runs_alone_in_a_fresh_runtime(notebook, installed, tmp_path, real_data_path):
    work = tmp_path / "work"
    work.mkdir()
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("CIFAR10_")
    }
    environment.update(
        PYTHONPATH=str(installed), CIFAR10_DATA=str(real_data_path), CIFAR10_VERBOSE="0"
    )
    executed = tmp_path / notebook.name
    done = subprocess.run(
        [sys.executable, "-m", "papermill", str(notebook), str(executed),
         "-p", "profile_name", "smoke", "--cwd", str(work), "--no-progress-bar"],
        env=environment, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    outputs = "\n".join(
        "".join(output.get("text", ""))
        for cell in nbformat.read(executed, as_version=4).cells
        for output in cell.get("outputs", [])
    )
    # The installed copy ran, writing into the working folder, not into the checkout.
    assert str(installed) in outputs or "profile 'smoke'" in outputs
    assert "profile 'smoke' (chosen by name)" in outputs
    assert (work / "results" / "smoke").is_dir()
    if notebook.name == "04_finetune.ipynb":
        assert "no head run in " in outputs and "training it first" in outputs  # in view
    if notebook.name == "05_compare_and_errors.ipynb":
        assert "no results of profile 'smoke'" in outputs and "trained just now" in outputs
        # The own-image cell: the best model's class and confidence for the example photo.
        classes = "|".join(config.CLASS_NAMES)
        assert re.search(rf": ({classes}) \(\d+%\)\n", outputs)
        assert (work / "images" / "smoke" / "your_image.png").is_file()


def test_the_notebooks_and_the_readme_name_one_repository():
    urls = set()
    for path in NOTEBOOKS:
        for cell in nbformat.read(path, as_version=4).cells:
            urls |= set(re.findall(r"https://github\.com/[\w.-]+/[\w.-]+", cell.source))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    urls |= {
        f"https://github.com/{owner_repo}"
        for owner_repo in re.findall(
            r"colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)/", readme
        )
    }
    assert urls == {config.REPOSITORY_URL}


def test_the_colab_install_cell_is_light():
    # No jupyter metapackage and no extras: Colab's own TensorFlow and Keras stay as they are.
    for path in NOTEBOOKS:
        install = nbformat.read(path, as_version=4).cells[2].source
        assert "google.colab" in install
        pip = [line for line in install.splitlines() if "%pip install" in line]
        assert pip == ["    %pip install -q /content/cifar10-transfer"], path.name
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    dependencies = pyproject.split("dependencies = [")[1].split("]")[0]
    assert "tensorflow" not in dependencies and "jupyter" not in dependencies
