"""Shared fixtures. Real-data tests use ../shared/data/cifar10-jpeg.tar.gz.

In CI (CI=true) a missing copy is a failure, never a skip; elsewhere those tests
skip with the reason.
"""

import os
from pathlib import Path

import pytest

from cifar10_transfer import config

IN_CI = os.environ.get("CI", "").lower() == "true"


def require_real_data() -> Path:
    path = Path(os.environ.get("CIFAR10_SHARED", config.SHARED_DATA))
    if path.exists():
        return path
    message = f"real CIFAR-10 copy not found at {path} (set CIFAR10_SHARED to point at it)"
    if IN_CI:
        pytest.fail(message + "; CI must run the real-data tests")
    pytest.skip(message)


@pytest.fixture(autouse=True)
def figures_in_tmp(tmp_path, monkeypatch):
    """A figure drawn without a path goes to config.IMAGES_DIR: in tests, not the repo's."""
    monkeypatch.setattr(config, "IMAGES_DIR", tmp_path / "images")


@pytest.fixture(scope="session")
def real_data_path() -> Path:
    return require_real_data()


@pytest.fixture(scope="session")
def real_cifar10(real_data_path):
    """The whole real dataset, decoded once per session (cached as .npz after the first load)."""
    from cifar10_transfer import data

    return data.load_cifar10(real_data_path)
