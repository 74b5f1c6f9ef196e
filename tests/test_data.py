"""The CIFAR-100 reader, checksums, fake set, loader and splits."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from repro import data
from repro.data import cifar


def test_fake_set_has_the_real_layout(fake_data):
    tr = data.load_split("train")
    assert tr.images.shape == (3000, 32, 32, 3) and tr.images.dtype == np.uint8
    assert tr.labels.shape == (3000,) and set(np.unique(tr.labels)) == set(range(100))
    assert len(tr.classes) == 100 and tr.checksum == "fake"


def test_fake_set_refused_outside_tests(fake_root, monkeypatch):
    monkeypatch.setenv("REPRO_DATA", str(fake_root))
    monkeypatch.delenv("REPRO_ALLOW_FAKE_DATA", raising=False)
    cifar._CACHE.clear()
    with pytest.raises(data.DataError, match="FAKE"):
        data.load_split("train")


def test_missing_data_error_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_DATA", str(tmp_path))
    cifar._CACHE.clear()
    with pytest.raises(data.DataError) as e:
        data.load_split("train")
    assert "repro data download" in str(e.value) and str(tmp_path) in str(e.value)


def test_corrupt_file_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test", "meta"):
        (folder / name).write_bytes(b"not a pickle")
    monkeypatch.setenv("REPRO_DATA", str(tmp_path))
    cifar._CACHE.clear()
    with pytest.raises(data.DataError, match="corrupt"):
        data.load_split("test")


def test_md5_table_accepts_both_copies():
    assert "16019d7e3df5f24257cddd939b257f8d" in cifar.ACCEPTED_MD5["train"]
    assert "c833d860d6029badbc19077b12685905" in cifar.ACCEPTED_MD5["train"]


def test_crop_flip_matches_a_naive_loop():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    g = torch.Generator().manual_seed(3)
    out = data.random_crop_flip(x, pad=1, flip=True, gen=g)
    g = torch.Generator().manual_seed(3)
    dy = torch.randint(0, 3, (2,), generator=g)
    dx = torch.randint(0, 3, (2,), generator=g)
    coin = torch.rand(2, generator=g) < 0.5
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for b in range(2):
        ref = padded[b, :, dy[b]:dy[b] + 4, dx[b]:dx[b] + 4]
        if coin[b]:
            ref = ref.flip(-1)
        assert torch.equal(out[b], ref)


def test_loader_is_deterministic_per_seed_and_epoch():
    imgs = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(50) % 5
    a = data.TensorLoader(imgs, labels, 16, seed=1)
    b = data.TensorLoader(imgs, labels, 16, seed=1)
    a.set_epoch(2), b.set_epoch(2)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    b.set_epoch(3)
    assert not torch.equal(next(iter(a))[1], next(iter(b))[1])
    assert len(a) == 3  # drop_last when training
    test = data.TensorLoader(imgs, labels, 16, train=False)
    assert len(test) == 4 and torch.equal(torch.cat([y for _, y in test]), labels)


def test_normalisation_uses_cifar100_statistics():
    imgs = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    x, _ = data.TensorLoader(imgs, torch.zeros(1), 1, train=False).fetch(torch.tensor([0]))
    assert torch.allclose(x[0, :, 0, 0], (1 - torch.tensor(data.MEAN)) / torch.tensor(data.STD), atol=1e-5)


def test_balanced_subset_and_relabel():
    labels = np.repeat(np.arange(4), 10)
    idx = data.balanced_indices(labels, [3, 1], per_class=4, seed=0)
    assert len(idx) == 8 and sorted(np.bincount(labels[idx], minlength=4)) == [0, 0, 4, 4]
    assert data.relabel(np.array([3, 1, 3]), [3, 1]).tolist() == [0, 1, 0]


def test_train_val_split_is_45k_5k_on_cifar_shape():
    labels = np.repeat(np.arange(100), 500)
    tr, va = data.train_val_split(labels)
    assert len(tr) == 45_000 and len(va) == 5_000 and not set(tr) & set(va)
    assert np.all(np.bincount(labels[va]) == 50)


def test_class_orders_and_tasks():
    assert data.class_order(1993)[:5] == [68, 56, 78, 8, 23]
    assert sorted(data.class_order(1993)) == list(range(100))
    tasks = data.scenario_tasks("B50-Inc10", data.class_order(1993))
    assert len(tasks) == 6 and len(tasks[0]) == 50 and sorted(sum(tasks, [])) == list(range(100))
    with pytest.raises(ValueError):
        data.incremental_tasks(list(range(100)), base=0, increment=7)
    with pytest.raises(KeyError, match="B0-Inc10"):
        data.scenario_tasks("B7", list(range(100)))


def test_load_subset_end_to_end(fake_data):
    ds = data.load(classes=5, per_class=20, test_per_class=10, image_size=16, seed=0)
    assert ds.x_train.shape == (100, 3, 16, 16) and ds.num_classes == 5
    assert ds.y_train.max() == 4 and len(ds.y_test) == 50
    val = data.load(classes=5, per_class=10, validation=True)
    assert val.test_name == "validation"
    assert "5 classes" in ds.describe()


@pytest.mark.data
def test_real_cifar100_matches_the_published_facts():
    from conftest import real_data_available

    if not real_data_available():
        pytest.skip("CIFAR-100 not available (repro data unpack ../shared/data)")
    cifar._CACHE.clear()
    tr = data.load_split("train")
    assert len(tr) == 50_000 and len(data.load_split("test")) == 10_000
    assert tr.labels[:10].tolist() == [19, 29, 0, 11, 1, 86, 90, 28, 23, 31]
    assert tr.classes[:3] == ("apple", "aquarium_fish", "baby")
    mean = tr.images.reshape(-1, 3).mean(0) / 255
    assert np.allclose(mean, data.MEAN, atol=1e-3)
