"""OOD sets, the CIFAR-10 test-set reader, and the image grid figure."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from repro.data import (OOD_DESCRIPTIONS, OOD_SETS, DataError, download_cifar10,  # noqa: E402
                        load_cifar10_test, ood_images, to_uint8_tensor, verify_cifar10,
                        write_fake_cifar10)
from repro.data import cifar10  # noqa: E402
from repro.data.ood import _cifar10_subset  # noqa: E402
from repro.errors import ParameterError  # noqa: E402
from repro.plots.grid import image_grid  # noqa: E402

SETTING = "tier cpu · 1 seed · 20 classes × 250 img · cnn3"


@pytest.fixture(autouse=True)
def _clean():
    cifar10._CACHE10.clear()
    yield
    cifar10._CACHE10.clear()
    plt.close("all")


@pytest.fixture
def fake10(tmp_path, monkeypatch):
    """A fake CIFAR-10 test set of 95 images (unequal class counts are not possible: 9 or 10 each)."""
    monkeypatch.setenv("REPRO_ALLOW_FAKE_DATA", "1")
    return write_fake_cifar10(tmp_path / "data", n=95)


def source_images(n: int = 12, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


# -- synthetic sets --------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n in OOD_SETS if n != "cifar10"])
def test_shape_dtype_and_determinism(name):
    src = source_images()
    a = ood_images(name, 8, 32, seed=1, source=src)
    assert a.shape == (8, 3, 32, 32) and a.dtype == torch.uint8
    assert torch.equal(a, ood_images(name, 8, 32, seed=1, source=src))
    assert not torch.equal(a, ood_images(name, 8, 32, seed=2, source=src))
    assert name in OOD_DESCRIPTIONS and "SVHN" in OOD_DESCRIPTIONS[name]


def test_noise_sets_follow_their_laws():
    g = ood_images("gaussian", 50, 32).float() / 255
    # clipping at 2σ either side barely moves the mean; the std loses ~10 % to the clip
    assert g.mean().item() == pytest.approx(0.5, abs=0.005)
    assert 0.21 < g.std().item() < 0.25
    assert g.min().item() == 0.0 and g.max().item() == 1.0
    u = ood_images("uniform", 50, 32)
    assert u.min().item() == 0 and u.max().item() == 255
    assert u.float().mean().item() == pytest.approx(127.5, abs=1.0)


def test_blur_keeps_colour_and_flat_images():
    flat = torch.full((3, 3, 16, 16), 90, dtype=torch.uint8)
    assert torch.equal(ood_images("blur", 3, 16, source=flat), flat)
    src = source_images(20)
    b = ood_images("blur", 20, 32, source=src)
    # same per-image colour (reflected edges keep the mean up to rounding), far less detail
    assert torch.allclose(b.float().mean((2, 3)), src.float().mean((2, 3)), atol=2.0)
    assert b.float().std().item() < 0.2 * src.float().std().item()


def test_shuffle_permutes_whole_patches():
    src = source_images(6, 16)
    out = ood_images("shuffle", 6, 16, seed=3, source=src)

    def patches(img):  # the 16 4×4 patches of one image, as sorted bytes
        return sorted(img[:, r:r + 4, c:c + 4].numpy().tobytes() for r in range(0, 16, 4) for c in range(0, 16, 4))

    for i in range(6):
        assert patches(out[i]) == patches(src[i])
    assert not torch.equal(out, src)
    with pytest.raises(ParameterError, match="divisible by 4"):
        ood_images("shuffle", 2, 18, source=source_images(2, 18))


def test_source_subset_is_seeded_and_ordered():
    src = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 8, 8).contiguous()
    flat = torch.full((10, 3, 8, 8), 1, dtype=torch.uint8) * src
    out = ood_images("blur", 4, 8, seed=0, source=flat)  # flat images stay flat: read the ids back
    ids = out[:, 0, 0, 0].tolist()
    assert ids == sorted(ids) and len(set(ids)) == 4
    assert ids == ood_images("blur", 4, 8, seed=0, source=flat)[:, 0, 0, 0].tolist()
    assert torch.equal(ood_images("blur", 10, 8, source=flat), flat)  # n = len(source): all of it


def test_bad_arguments():
    with pytest.raises(ParameterError, match="cifar10, gaussian, uniform, blur, shuffle"):
        ood_images("svhn", 4, 32)
    for name in ("blur", "shuffle"):
        with pytest.raises(ValueError, match="source"):
            ood_images(name, 4, 32)
    with pytest.raises(ValueError, match="px"):
        ood_images("blur", 4, 16, source=source_images(4, 32))
    with pytest.raises(ParameterError, match="from 4 source"):
        ood_images("blur", 5, 32, source=source_images(4))


# -- CIFAR-10 --------------------------------------------------------------------------
def test_fake_cifar10_has_the_real_layout(fake10):
    s = load_cifar10_test(fake10)
    assert s.images.shape == (95, 32, 32, 3) and s.images.dtype == np.uint8
    assert s.labels.dtype == np.int64 and np.bincount(s.labels).tolist() == [10] * 5 + [9] * 5
    assert s.classes[0] == "airplane" and len(s.classes) == 10
    assert s.checksum == "fake" and (s.coarse == -1).all()
    assert verify_cifar10(fake10) == {"test_batch": "fake", "batches.meta": "fake"}


def test_cifar10_ood_subset_is_balanced_and_resized(fake10):
    s = load_cifar10_test(fake10)
    idx = _cifar10_subset(25, seed=0, root=fake10)
    counts = np.bincount(s.labels[idx], minlength=10)
    assert counts.sum() == 25 and counts.max() - counts.min() <= 1  # 2 or 3 per class
    assert (np.diff(idx) > 0).all()
    x = ood_images("cifar10", 25, 16, seed=0, root=fake10)
    assert x.shape == (25, 3, 16, 16) and x.dtype == torch.uint8
    assert torch.equal(x, to_uint8_tensor(s.images[idx], 16))
    assert torch.equal(x, ood_images("cifar10", 25, 16, seed=0, root=fake10))
    assert not np.array_equal(_cifar10_subset(25, 1, fake10), idx)
    with pytest.raises(ParameterError, match="95"):
        ood_images("cifar10", 96, 32, root=fake10)


def test_fake_cifar10_refused_outside_tests(fake10, monkeypatch):
    monkeypatch.delenv("REPRO_ALLOW_FAKE_DATA")
    with pytest.raises(DataError, match="FAKE"):
        load_cifar10_test(fake10)


def test_missing_cifar10_says_how_to_fix(tmp_path):
    with pytest.raises(DataError) as e:
        load_cifar10_test(tmp_path)
    assert "repro data unpack" in str(e.value) and "repro data download" in str(e.value) and str(tmp_path) in str(e.value)
    with pytest.raises(DataError, match="missing"):
        load_cifar10_test(tmp_path, check=False)


def test_md5_mismatch_is_refused(tmp_path):
    root = write_fake_cifar10(tmp_path, n=20)
    (root / cifar10.FOLDER10 / "FAKE").unlink()  # a fake without its marker is an unknown file
    with pytest.raises(DataError, match="corrupt"):
        load_cifar10_test(root)
    assert len(load_cifar10_test(root, check=False)) == 20  # check=False reads it anyway


def test_md5_table():
    assert "40351d587109b95175f43aff81a1287e" in cifar10.ACCEPTED_MD5_10["test_batch"]
    assert "9037fca7f3213a3058752ba4c930c310" in cifar10.ACCEPTED_MD5_10["test_batch"]
    assert list(cifar10.ACCEPTED_MD5_10["batches.meta"]) == ["5ff9c542aee3614f3951f8cda6e48888"]


def _fake_archive(tmp_path) -> tuple[str, str]:
    """A cifar-10-python.tar.gz holding a fake test set and a training batch; (file URL, md5)."""
    src = write_fake_cifar10(tmp_path / "src", n=20)
    (src / cifar10.FOLDER10 / "FAKE").unlink()
    (src / cifar10.FOLDER10 / "data_batch_1").write_bytes(b"training batch")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / cifar10.FOLDER10, arcname=cifar10.FOLDER10)
    return archive.as_uri(), hashlib.md5(archive.read_bytes()).hexdigest()


def test_download_checks_the_archive_and_keeps_only_the_test_set(tmp_path, monkeypatch):
    url, digest = _fake_archive(tmp_path)
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match="not extracted"):
        download_cifar10(dest, url=url, progress=False)  # the official md5 does not match
    assert list(dest.iterdir()) == []
    fake_md5 = {name: hashlib.md5((tmp_path / "src" / cifar10.FOLDER10 / name).read_bytes()).hexdigest()
                for name in cifar10.ACCEPTED_MD5_10}
    monkeypatch.setattr(cifar10, "ACCEPTED_MD5_10", {k: {v: "test"} for k, v in fake_md5.items()})
    download_cifar10(dest, url=url, progress=False, archive_md5=digest)
    assert sorted(p.name for p in (dest / cifar10.FOLDER10).iterdir()) == ["batches.meta", "test_batch"]
    assert [p.name for p in dest.iterdir()] == [cifar10.FOLDER10]  # no temporary folder left
    assert len(load_cifar10_test(dest)) == 20


@pytest.mark.data
def test_real_cifar10_matches_the_published_facts():
    try:
        verify_cifar10()
    except DataError:
        pytest.skip("CIFAR-10 test set not available (bash ../shared/data/unpack.sh DEST)")
    s = load_cifar10_test()
    assert len(s) == 10_000 and np.bincount(s.labels).tolist() == [1000] * 10
    assert s.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert s.classes == cifar10.CLASSES10
    mean = s.images.reshape(-1, 3).mean(0) / 255
    assert np.allclose(mean, (0.4942, 0.4851, 0.4504), atol=1e-3)
    x = ood_images("cifar10", 100, 32, seed=0)
    assert x.shape == (100, 3, 32, 32)


# -- figure ----------------------------------------------------------------------------
def test_image_grid():
    rows = [source_images(4, 8), source_images(3, 8)]
    fig, data = image_grid(rows, ["clean", "noise"], ["1", "2", "3", "4"], setting=SETTING, title="grid")
    assert isinstance(fig, matplotlib.figure.Figure)
    json.dumps(data, allow_nan=False)
    assert any(t.get_text() == SETTING for t in fig.texts)
    assert data["shape"] == [2, 4, 8] and data["row_labels"] == ["clean", "noise"]
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert len(shown) == 7 and all(ax.images[0].get_interpolation() == "nearest" for ax in shown)
    assert np.array_equal(shown[0].images[0].get_array(), rows[0][0].permute(1, 2, 0).numpy())
    buf = io.BytesIO()
    fig.savefig(buf, format="png")  # layout and rendering must not fail
    with pytest.raises(ValueError, match="row labels"):
        image_grid(rows, ["one"], None, setting=SETTING)
    with pytest.raises(ValueError, match="column labels"):
        image_grid(rows, ["a", "b"], ["1"], setting=SETTING)


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.skipif(not (SHARED / "cifar-10-test.tar.xz").is_file(), reason="no ../shared/data/cifar-10-test.tar.xz")
def test_unpack_cifar10_from_the_shared_copy_verifies(tmp_path):
    from repro.data import unpack_cifar10, verify_cifar10

    unpack_cifar10(SHARED, tmp_path)
    assert verify_cifar10(tmp_path) == {"test_batch": "verified copy", "batches.meta": "official"}


def test_unpack_cifar10_without_the_archive_says_so(tmp_path):
    from repro.data import unpack_cifar10

    with pytest.raises(DataError, match="cifar-10-test.tar.xz"):
        unpack_cifar10(tmp_path, tmp_path / "out")
