"""Colab as it is: its Python and its TensorFlow, Keras, JAX, NumPy and pandas (Colab's
published versions), the project installed as the notebooks' first cell installs it (from a
clone, no extras), which must change none of them, then each notebook alone in the smoke
profile. The environment is built once per machine (a few minutes; it downloads TensorFlow)
and kept in the pytest cache folder."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import IN_CI

from cifar10_transfer import config

ROOT = Path(__file__).resolve().parents[1]
COLAB_PYTHON = "3.13"
COLAB_VERSIONS = {
    "tensorflow": "2.20.0",
    "keras": "3.13.2",
    "jax": "0.7.2",
    "numpy": "2.1.3",
    "pandas": "2.2.3",
}
# What else a Colab runtime has preinstalled and the notebooks use (any version pip picks).
COLAB_PREINSTALLED = ["jaxlib==0.7.2", "matplotlib", "seaborn", "scikit-learn", "pillow",
                      "h5py", "tqdm", "tabulate", "ipykernel", "papermill"]  # fmt: skip

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def _versions(python: Path) -> dict:
    code = (
        "import importlib.metadata as m, json; "
        f"print(json.dumps({{name: m.version(name) for name in {list(COLAB_VERSIONS)!r}}}))"
    )
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def _colab_python() -> str | None:
    """A working python3.13: on the PATH, or pyenv's (whose shim needs a pyenv version)."""
    candidates = [shutil.which(f"python{COLAB_PYTHON}")]
    candidates += sorted(str(path) for path in Path.home().glob(
        f".pyenv/versions/{COLAB_PYTHON}*/bin/python{COLAB_PYTHON}"))  # fmt: skip
    for candidate in filter(None, candidates):
        done = subprocess.run([candidate, "--version"], capture_output=True, text=True)
        if done.returncode == 0:
            return candidate
    return None


@pytest.fixture(scope="module")
def colab(tmp_path_factory) -> Path:
    """A Colab-like Python with the project installed by the notebooks' own command."""
    base = _colab_python()
    if base is None:
        message = f"Python {COLAB_PYTHON} (Colab's) not found"
        if IN_CI:
            pytest.fail(message + "; CI must run the Colab-versions test")
        pytest.skip(message)
    venv = ROOT / ".pytest_cache" / "colab-venv"
    python = venv / "bin" / "python"
    if not (venv / ".colab-ready").exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
        pins = [f"{name}=={version}" for name, version in COLAB_VERSIONS.items()]
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
             *pins, *COLAB_PREINSTALLED],
            check=True, timeout=1800,
        )  # fmt: skip
        (venv / ".colab-ready").touch()
    assert _versions(python) == COLAB_VERSIONS
    # The notebooks' install cell: `%pip install -q /content/cifar10-transfer` (a clone).
    clone = tmp_path_factory.mktemp("clone") / "cifar10-transfer"
    shutil.copytree(ROOT, clone, ignore=shutil.ignore_patterns(".venv", ".git", ".pytest_cache",
                                                              "runs", "*.egg-info"))  # fmt: skip
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(clone)],
        check=True, timeout=900,
    )  # fmt: skip
    return python


def test_installing_the_project_changes_none_of_colabs_versions(colab):
    assert _versions(colab) == COLAB_VERSIONS


@pytest.fixture(scope="module")
def keras_home(tmp_path_factory) -> Path:
    """A fresh Keras cache, as in a new runtime (shared by the notebooks, as in one runtime)."""
    return tmp_path_factory.mktemp("keras")


@pytest.mark.parametrize("notebook", config.NOTEBOOKS)
def test_each_notebook_runs_alone_on_colabs_versions(
    colab, keras_home, notebook, tmp_path, real_data_path
):
    work = tmp_path / "work"
    work.mkdir()
    environment = {key: value for key, value in os.environ.items() if not key.startswith(
        ("CIFAR10_", "PYTHON", "VIRTUAL_ENV"))}  # fmt: skip
    environment.update(
        CIFAR10_DATA=str(real_data_path), CIFAR10_VERBOSE="0", KERAS_HOME=str(keras_home)
    )
    executed = tmp_path / notebook
    done = subprocess.run(
        [str(colab), "-m", "papermill", str(ROOT / "notebooks" / notebook), str(executed),
         "-p", "profile_name", "smoke", "--cwd", str(work), "--no-progress-bar",
         "-k", "python3"],
        env=environment, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (work / "results" / "smoke").is_dir()
