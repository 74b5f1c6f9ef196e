"""The gpu tier of every chapter runs end to end on this CPU in a dry run (one training step per
``fit``, one batch per evaluation, landscapes and searches cut to a few points), so a GPU
session spends its time training, not debugging. Needs the real data set (the gpu tier uses
all of CIFAR-100).

The test counts work instead of timing it: a run's record holds, under ``cost.work``, the
optimizer steps and evaluated batches of its kernel since the run started
(``repro.train.WORK``). A loop that ignores the dry run shows up there as hundreds of batches,
whatever the speed of the machine.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from repro.papers import all_specs
from repro.train import WORK

from conftest import real_data_available

ROOT = Path(__file__).resolve().parent.parent
# A gpu dry run takes 2–6 minutes of this CPU per chapter (the full data set, the gpu tier's
# networks, every job once), too long for every CI run: CI dry-runs the chapters whose loops
# once ignored the dry run (41's landscape, the incremental family's feature extraction, the
# distillation teacher and store). Before a GPU session, run them all:
#   REPRO_ALL_DRY_RUNS=1 pytest tests/test_dry_run.py
CI_CHAPTERS = {"41-ghostbn", "10-nmc", "18-dr"}
SPECS = [s for s in all_specs() if os.environ.get("REPRO_ALL_DRY_RUNS") or s.name in CI_CHAPTERS]

# A dry run's work is one step per training job and one batch per evaluation, so it counts the
# chapter's jobs and evaluations, not its epochs, images or grid points. At the gpu tier with
# one seed the busiest chapters need a few dozen of each (measured: at most ~130 steps and
# ~270 batches, for gtep's search and the incremental streams; most chapters fewer than 25).
# The bounds leave room for new arms, and still fail any loop that ignores the dry run: one
# pass over the 50,000 training images at batch 512 is 98 batches, the ghostbn landscape at 21
# points over 5,000 train and test images 630.
MAX_TRAIN_STEPS = 200
MAX_EVAL_BATCHES = 400


def _written_since(t0: float, *folders: Path) -> list[str]:
    """Files under ``folders`` created or modified since ``t0``."""
    return [str(p) for d in folders if d.is_dir() for p in d.rglob("*") if p.is_file() and p.stat().st_mtime >= t0]


@pytest.mark.slow
@pytest.mark.skipif(not real_data_available(), reason="needs the real CIFAR-100")
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_gpu_tier_dry_run(spec, tmp_path, monkeypatch):
    import papermill as pm

    for k in ("REPRO_RESULTS", "REPRO_BOOK", "REPRO_RUN_DIR", "REPRO_RUN_ID", "REPRO_FRESH"):
        monkeypatch.delenv(k, raising=False)  # the checkout's results/ and book/: nothing may land there
    for k, v in {"REPRO_DRY_RUN": "1", "REPRO_RUNS": tmp_path / "runs", "REPRO_CHECKPOINTS": tmp_path / "ckpt",
                 "REPRO_TEACHERS": tmp_path / "teachers", "REPRO_ARTIFACTS": tmp_path / "artifacts"}.items():
        monkeypatch.setenv(k, str(v))
    params = {"tier": "gpu", **({"seeds": [0]} if "seeds" in spec.params else {})}
    t0 = time.time() - 1  # file times can be rounded down to the second
    pm.execute_notebook(str(ROOT / "notebooks" / f"{spec.name}.ipynb"), str(tmp_path / "out.ipynb"),
                        parameters=params, cwd=str(ROOT / "notebooks"), progress_bar=False, kernel_name="python3")

    found = list((tmp_path / "runs").glob(f"*/{spec.name}.gpu.json"))
    assert len(found) == 1, f"expected one gpu run folder of {spec.name}, found {found}"
    rec = json.loads(found[0].read_text())
    assert rec["status"] == "dry-run" and rec["verdict"] is None
    if "student" in spec.params:
        assert rec["params"]["student"] == spec.resolve("gpu")["student"]
    kept = _written_since(0, tmp_path / "teachers", tmp_path / "artifacts", tmp_path / "ckpt")
    assert not kept, f"a dry run stored a teacher, an artifact or a checkpoint: {kept}"
    assert not _written_since(t0, ROOT / "results", ROOT / "book", ROOT / "artifacts"), "a dry run wrote into the checkout"

    work = rec["cost"]["work"]
    assert 1 <= work["train_steps"] <= MAX_TRAIN_STEPS, work
    assert 1 <= work["eval_batches"] <= MAX_EVAL_BATCHES, work


# -- the loops a dry run shortens (fast: no data set, no notebook) ---------------------------
def _counted(fn):
    """(fn(), eval batches it counted)."""
    before = WORK["eval_batches"]
    out = fn()
    return out, WORK["eval_batches"] - before


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _batches(n: int = 4):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(5, 3, 2, 2, generator=g), torch.randint(0, 3, (5,), generator=g)) for _ in range(n)]


def test_landscapes_take_three_points_and_one_batch_in_a_dry_run(monkeypatch):
    from repro.plots.landscape import interpolate_1d, plane_2d

    a, b, batches = _net(0), _net(1), _batches()
    monkeypatch.delenv("REPRO_DRY_RUN", raising=False)
    full, n_full = _counted(lambda: interpolate_1d(a, b, batches, alphas=[x / 20 for x in range(21)]))
    assert len(full["alpha"]) == 21 and n_full == 21 * 4
    monkeypatch.setenv("REPRO_DRY_RUN", "1")
    line, n_line = _counted(lambda: interpolate_1d(a, b, batches, alphas=[x / 20 for x in range(21)]))
    assert line["alpha"] == [0.0, 0.5, 1.0] and n_line == 3
    plane, n_plane = _counted(lambda: plane_2d(a, batches, steps=21))
    assert plane["x"] == pytest.approx([-1.0, 0.0, 1.0]) and len(plane["loss"]) == 3 and n_plane == 9


def test_feature_extraction_runs_one_batch_and_tiles_it_in_a_dry_run(monkeypatch):
    from repro.families.incremental.memory import extract_features

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = nn.Sequential(nn.Flatten(), nn.Linear(12, 6))

        def features(self, x):
            return self.f(x)

    torch.manual_seed(0)
    net, images = Net(), torch.randint(0, 256, (10, 3, 2, 2), dtype=torch.uint8)
    monkeypatch.delenv("REPRO_DRY_RUN", raising=False)
    real, n_real = _counted(lambda: extract_features(net, images, batch_size=4))
    monkeypatch.setenv("REPRO_DRY_RUN", "1")
    dry, n_dry = _counted(lambda: extract_features(net, images, batch_size=4))
    assert (n_real, n_dry) == (3, 1) and dry.shape == real.shape == (10, 6)
    torch.testing.assert_close(dry[:4], real[:4])
    torch.testing.assert_close(dry[4:8], real[:4])  # the first batch's rows, repeated
    torch.testing.assert_close(dry[8:], real[:2])


def test_herding_asks_for_features_once_per_update_in_a_dry_run(monkeypatch):
    from repro.families.incremental.memory import ExemplarMemory

    labels = torch.arange(12) % 3
    positions = torch.arange(100, 112)
    calls = []

    def features(pos):
        calls.append(pos.clone())
        return torch.randn(len(pos), 4, generator=torch.Generator().manual_seed(len(calls)))

    for dry, want in (("", 3), ("1", 1)):
        monkeypatch.setenv("REPRO_DRY_RUN", dry)
        calls.clear()
        mem = ExemplarMemory(6, "herding")
        mem.update(labels, positions, [0, 1, 2], features)
        assert len(calls) == want
        for c in range(3):  # each class keeps 2 exemplars of its own
            assert len(mem.store[c]) == 2 and all(labels[p - 100] == c for p in mem.store[c])


def test_interpolation_with_bn_re_estimation_is_three_points_of_one_batch_in_a_dry_run(fake_data, monkeypatch):
    from repro import models
    from repro.data import load
    from repro.plots.landscape import interpolate_1d, subset_batches

    data = load(classes=3, per_class=8, test_per_class=4, image_size=8)
    torch.manual_seed(0)
    model = models.create("cnn3", num_classes=3, width=4)
    monkeypatch.setenv("REPRO_DRY_RUN", "1")
    train, test = subset_batches(data, "train", 0, batch_size=4), subset_batches(data, "test", 0, batch_size=4)
    assert len(train) == len(test) == 1                 # one batch each, whatever the subset
    curve, n = _counted(lambda: interpolate_1d(model, model, {"train": train, "test": test},
                                               [x / 10 for x in range(-5, 16)], bn_batches=train))
    assert curve["train"]["alpha"] == pytest.approx([-0.5, 0.5, 1.5])
    assert n <= 3 * 3  # per α at most: re-estimate BN on one batch, evaluate one train and one test batch