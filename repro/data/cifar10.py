"""The CIFAR-10 *test* set, the near-OOD set of the uncertainty chapters.

Only ``cifar-10-batches-py/{test_batch,batches.meta}`` are used (10,000 images, 10 classes
none of which is a CIFAR-100 class). They live beside ``cifar-100-python/`` under
:func:`repro.data.default_root` and are checked by md5 like CIFAR-100: the official files
and the project's verified copy (same pixels and labels, placeholder file names) are accepted.
A fake set written by :func:`write_fake_cifar10` carries the same ``FAKE`` marker as the fake
CIFAR-100 and loads only where ``REPRO_ALLOW_FAKE_DATA=1`` (tests).
"""
from __future__ import annotations

import os
import pickle
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from ..errors import DataError
from .cifar import DATA_ENV, FAKE_MARKER, Split, default_root, fetch_archive, md5, verify_folder

FOLDER10 = "cifar-10-batches-py"
URL10 = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE10_MD5 = "c58f30108f718f92721af3b95e74349a"
ACCEPTED_MD5_10 = {
    "test_batch": {"40351d587109b95175f43aff81a1287e": "official", "9037fca7f3213a3058752ba4c930c310": "verified copy"},
    # torchvision's table has the same md5 for batches.meta: the copy kept it untouched.
    "batches.meta": {"5ff9c542aee3614f3951f8cda6e48888": "official"},
}
CLASSES10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _how_to_fix(root: Path) -> str:
    return (
        f"Fix: `repro data download` (needs network; fetches CIFAR-100 and this test set), or "
        f"`repro data unpack ../shared/data` for the project's verified copy, or point "
        f"${DATA_ENV} at a folder that contains {FOLDER10}/{{test_batch,batches.meta}}. Looked in: {root}"
    )


def verify_cifar10(root: Path | None = None) -> dict[str, str]:
    """Check ``test_batch`` and ``batches.meta`` against the accepted md5s.

    Returns {file: "official" | "verified copy" | "fake"}. Raises DataError naming the first
    missing or unknown file and how to fix it.
    """
    root = Path(root) if root is not None else default_root()
    return verify_folder(root / FOLDER10, ACCEPTED_MD5_10, "CIFAR-10", _how_to_fix(root))


_CACHE10: dict[tuple[str, bool], Split] = {}


def load_cifar10_test(root: Path | None = None, check: bool = True) -> Split:
    """The CIFAR-10 test set as a :class:`repro.data.Split` (memoised per process).

    images: uint8 [10000, 32, 32, 3]; labels: int64 [10000] in 0..9; classes: the ten names;
    coarse: all −1 (CIFAR-10 has no superclasses). check: verify the md5s first.
    """
    root = Path(root) if root is not None else default_root()
    key = (str(root.resolve()), bool(check))
    if key in _CACHE10:
        return _CACHE10[key]
    if check:
        verify_cifar10(root)
    else:
        for name in ACCEPTED_MD5_10:
            if not (root / FOLDER10 / name).is_file():
                raise DataError(f"CIFAR-10 file missing: {root / FOLDER10 / name}. {_how_to_fix(root)}")
    try:
        with open(root / FOLDER10 / "test_batch", "rb") as f:
            raw = pickle.load(f, encoding="latin1")
        with open(root / FOLDER10 / "batches.meta", "rb") as f:
            meta = pickle.load(f, encoding="latin1")
        images = np.asarray(raw["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.asarray(raw["labels"], dtype=np.int64)
        classes = tuple(meta["label_names"])
    except (pickle.UnpicklingError, KeyError, ValueError, EOFError) as exc:
        raise DataError(f"CIFAR-10 test_batch could not be read ({exc}). {_how_to_fix(root)}") from exc
    fake = (root / FOLDER10 / FAKE_MARKER).is_file()
    out = Split(
        images=np.ascontiguousarray(images),
        labels=labels,
        coarse=np.full_like(labels, -1),
        classes=classes,
        checksum=("fake" if fake else md5(root / FOLDER10 / "test_batch")) if check else "unchecked",
    )
    _CACHE10[key] = out
    return out


def download_cifar10(root: Path | None = None, url: str = URL10, progress: bool = True,
                     archive_md5: str = ARCHIVE10_MD5) -> Path:
    """Download the official CIFAR-10 archive, check its md5, keep only the test set.

    Extracts ``test_batch`` and ``batches.meta`` into ``root/cifar-10-batches-py/`` (the five
    training batches are not needed). Everything is written in a temporary folder under
    ``root`` and moved into place, so an interrupted download leaves nothing half-written.
    """
    root = Path(root) if root is not None else default_root()
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        archive = fetch_archive(url, Path(tmp) / "cifar-10-python.tar.gz", archive_md5, "CIFAR-10", progress)
        wanted = [f"{FOLDER10}/{name}" for name in ACCEPTED_MD5_10]
        with tarfile.open(archive) as tar:
            names = set(tar.getnames())
            missing = [w for w in wanted if w not in names]
            if missing:
                raise DataError(f"archive from {url} lacks {', '.join(missing)}; not extracted")
            tar.extractall(tmp, members=[tar.getmember(w) for w in wanted], filter="data")
        return _install(Path(tmp), root)


def unpack_cifar10(shared: Path, root: Path | None = None) -> Path:
    """Extract the project's verified copy (``cifar-10-test.tar.xz``: test_batch and
    batches.meta) into ``root`` and verify it."""
    shared, root = Path(shared), Path(root) if root is not None else default_root()
    archive = shared / "cifar-10-test.tar.xz"
    if not archive.is_file():
        raise DataError(f"no cifar-10-test.tar.xz in {shared}")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        return _install(Path(tmp), root)


def _install(extracted: Path, root: Path) -> Path:
    """Move the two extracted files into ``root/cifar-10-batches-py`` and verify them.

    One atomic rename per file (same file system); anything else in the folder, e.g.
    training batches a user keeps there, is left alone."""
    target = root / FOLDER10
    target.mkdir(exist_ok=True)
    (target / FAKE_MARKER).unlink(missing_ok=True)
    for name in ACCEPTED_MD5_10:
        os.replace(extracted / FOLDER10 / name, target / name)
    verify_cifar10(root)
    return root


def write_fake_cifar10(root: Path, n: int = 100, seed: int = 0) -> Path:
    """Write ``root/cifar-10-batches-py/{test_batch,batches.meta}`` with random pixels.

    Same keys, dtypes and layout as the official pickles (data: uint8 [n, 3072] CHW-flat,
    labels: list of int, balanced over the 10 classes as far as ``n`` allows). Each class has
    its own mean colour. A ``FAKE`` marker is written beside them, as for the fake CIFAR-100:
    the set loads only where ``REPRO_ALLOW_FAKE_DATA=1``.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / FOLDER10
    folder.mkdir(parents=True, exist_ok=True)
    base = rng.integers(40, 215, size=(10, 3))
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    noise = rng.normal(0, 25, size=(n, 3, 32, 32))
    data = np.clip(base[labels][:, :, None, None] + noise, 0, 255).astype(np.uint8)
    obj = {
        "batch_label": "fake testing batch",
        "labels": labels.tolist(),
        "data": data.reshape(n, -1),
        "filenames": [f"test_{i:05d}.png" for i in range(n)],
    }
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(obj, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"num_cases_per_batch": n, "label_names": list(CLASSES10), "num_vis": 3072}, f)
    (folder / FAKE_MARKER).write_text("random pixels for tests; not CIFAR-10\n")
    return Path(root)
