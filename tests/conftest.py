"""Shared fixtures: a fake CIFAR-100 in the real format, and the real one when present."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
# Tests compute in fp32 whatever the CPU offers (the book's default is bf16 where the CPU has it
# natively): hand-computed values and pinned smoke metrics must not depend on the machine. The
# bf16 path has its own tests (test_train.py), which set REPRO_CPU_PRECISION themselves.
os.environ.setdefault("REPRO_CPU_PRECISION", "fp32")


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


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tests on tiny tensors: faster, and far faster on a busy
    machine (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


# -- smoke-tier timings: a report, not a test -------------------------------------------------
SMOKE_BUDGET_S = 30
_SMOKE_SECONDS: dict[str, float] = {}


@pytest.fixture
def smoke_seconds() -> dict[str, float]:
    """Where smoke-run tests put each chapter's wall seconds (printed at the end of the run)."""
    return _SMOKE_SECONDS


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Smoke seconds per chapter against the budget. A loaded machine (CI) runs slower, so this
    is a report to read, not an assertion."""
    if not _SMOKE_SECONDS:
        return
    tr = terminalreporter
    tr.section(f"smoke tier: seconds per chapter (budget {SMOKE_BUDGET_S} s on an idle 2-core machine)")
    for name, s in sorted(_SMOKE_SECONDS.items()):
        flag = "  over budget (or a busy machine)" if s > SMOKE_BUDGET_S else ""
        tr.write_line(f"{name:<18} {s:6.1f} s{flag}")
    tr.write_line(f"{'total':<18} {sum(_SMOKE_SECONDS.values()):6.1f} s")
