"""Shared fixtures: a fake CIFAR-100 in the real format, and the real one when present."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def fake_root(tmp_path_factory) -> Path:
    """A tiny fake CIFAR-100 (30 train / 10 test images per class) in the on-disk format."""
    from repro.data import write_fake_cifar100

    return write_fake_cifar100(tmp_path_factory.mktemp("fake"), train_per_class=30, test_per_class=10)


@pytest.fixture
def fake_data(fake_root, monkeypatch) -> Path:
    """Point repro at the fake set for one test (and allow it: tests only)."""
    from repro.data import cifar

    monkeypatch.setenv("REPRO_DATA", str(fake_root))
    monkeypatch.setenv("REPRO_ALLOW_FAKE_DATA", "1")
    cifar._CACHE.clear()
    yield fake_root
    cifar._CACHE.clear()


def real_data_available() -> bool:
    from repro.data import DataError, verify

    try:
        verify()
        return True
    except DataError:
        return False


@pytest.fixture(scope="session")
def notebook_data_env(fake_root) -> dict[str, str]:
    """Environment for executing notebooks: the real data if present, else the fake set."""
    if real_data_available():
        return {}
    return {"REPRO_DATA": str(fake_root), "REPRO_ALLOW_FAKE_DATA": "1"}
