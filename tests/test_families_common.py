"""The families' shared data subset, data fingerprint and shared checkpoint folders."""
from __future__ import annotations

import torch

from repro.data import Dataset
from repro.families import common


def _data(pixel: int = 0) -> Dataset:
    x = torch.zeros(4, 3, 2, 2, dtype=torch.uint8)
    x[0, 0, 0, 0] = pixel
    y = torch.tensor([0, 1, 0, 1])
    return Dataset(x_train=x, y_train=y, x_test=x[:2].clone(), y_test=y[:2].clone(), classes=[3, 7],
                   class_names=["a", "b"], checksum="t")


def test_the_fingerprint_reads_content_only():
    a, b = _data(), _data()
    assert common.data_fingerprint(a) == common.data_fingerprint(b)
    assert len(common.data_fingerprint(a)) == 20
    assert common.data_fingerprint(_data(pixel=1)) != common.data_fingerprint(a)   # one pixel


def test_data_subset_passes_the_chapters_parameters_and_a_replacement_per_class():
    seen = []
    run = type("R", (), {"params": {"classes": 20, "per_class": 250, "image_size": 16, "data_seed": 3,
                                    "lr": 0.1},
                         "data": lambda self, **kw: seen.append(kw)})()
    common.data_subset(run)
    common.data_subset(run, per_class=50)
    assert seen == [dict(classes=20, per_class=250, test_per_class=None, image_size=16, seed=3),
                    dict(classes=20, per_class=50, test_per_class=None, image_size=16, seed=3)]


def test_shared_folders_are_keyed_by_what_makes_the_model_and_by_the_code(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_CHECKPOINTS", str(tmp_path))
    monkeypatch.delenv("REPRO_FRESH", raising=False)
    run = type("R", (), {"env": {"source_hash": "abc"}, "tier": "cpu", "run_id": "r1"})()
    other_code = type("R", (), {"env": {"source_hash": "xyz"}, "tier": "cpu", "run_id": "r1"})()
    d = common.shared_checkpoint_dir(run, "fam", "net-s0", ["arm", {"lr": 0.1}, "fp", 0])
    assert d.parent == tmp_path / "fam" / "cpu" and d.name.startswith("net-s0-")
    assert d == common.shared_checkpoint_dir(run, "fam", "net-s0", ["arm", {"lr": 0.1}, "fp", 0])
    assert d != common.shared_checkpoint_dir(run, "fam", "net-s0", ["arm", {"lr": 0.2}, "fp", 0])
    assert d != common.shared_checkpoint_dir(other_code, "fam", "net-s0", ["arm", {"lr": 0.1}, "fp", 0])
