"""CIFAR-100 on disk: locate, verify, download and read the official pickles.

The pickles are read directly (``pickle.load(..., encoding="latin1")``): torchvision's
integrity check accepts only the official md5s, while the project's verified copy differs
from them in the ``filenames`` field alone.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError  # one class for every command (exit code 3)
from ..paths import DATA_ENV, data_dir

FAKE_ENV = "REPRO_ALLOW_FAKE_DATA"
FAKE_MARKER = "FAKE"
FOLDER = "cifar-100-python"
URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
ARCHIVE_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"

# Each file may carry the official md5 or that of the verified copy kept beside the project
# (same pixels and labels; placeholder file names). Anything else is refused.
ACCEPTED_MD5 = {
    "train": {"16019d7e3df5f24257cddd939b257f8d": "official", "c833d860d6029badbc19077b12685905": "verified copy"},
    "test": {"f0ef6b0ae62326f3e7ffdfab6717acfc": "official", "854b29a28b5ecd3729400381026b92a9": "verified copy"},
    "meta": {"7973b15100ade9c7d40fb424638fde48": "official"},
}

MEAN = (0.5071, 0.4865, 0.4409)
STD = (0.2673, 0.2564, 0.2762)




@dataclass(frozen=True)
class Split:
    """One split held in memory.

    images: uint8 [N, 32, 32, 3] (HWC, as stored); labels: int64 [N] fine labels;
    coarse: int64 [N] superclass labels; classes: the 100 fine class names.
    """

    images: np.ndarray
    labels: np.ndarray
    coarse: np.ndarray
    classes: tuple[str, ...]
    checksum: str  # md5 of the pickle this split came from

    def __len__(self) -> int:
        return len(self.labels)


def default_root() -> Path:
    """The folder that holds (or will hold) ``cifar-100-python/``.

    ``$REPRO_DATA`` if set, else the user cache (``$XDG_CACHE_HOME/repro/data`` or
    ``~/.cache/repro/data``).
    """
    return data_dir().expanduser()


def md5(path: Path, chunk: int = 1 << 20) -> str:
    """Hex md5 of a file."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _how_to_fix(root: Path) -> str:
    return (
        f"Fix: run `repro data download` (needs network), or `repro data unpack ../shared/data` "
        f"for the project's verified copy, or point ${DATA_ENV} at a folder that contains "
        f"{FOLDER}/{{train,test,meta}}. Looked in: {root}"
    )


def verify(root: Path | None = None) -> dict[str, str]:
    """Check the three pickles against the accepted md5s.

    Returns {file: "official" | "verified copy"}. Raises DataError naming the first
    missing or unknown file and how to fix it.
    """
    root = Path(root) if root is not None else default_root()
    return verify_folder(root / FOLDER, ACCEPTED_MD5, "CIFAR-100", _how_to_fix(root))


def verify_folder(folder: Path, accepted_md5: dict[str, dict[str, str]], name: str, how_to_fix: str) -> dict[str, str]:
    """Check every file of ``folder`` named in ``accepted_md5`` (file → {md5: kind}).

    Returns {file: kind}, or {file: "fake"} for a fake set (only where ``REPRO_ALLOW_FAKE_DATA=1``,
    i.e. in tests). Raises DataError naming the first missing or unknown file and
    ``how_to_fix``."""
    if (folder / FAKE_MARKER).is_file():
        # The fake set is for tests only; it is never used unless a test asks for it.
        if os.environ.get(FAKE_ENV) != "1":
            raise DataError(f"{folder} holds the FAKE test set; set {FAKE_ENV}=1 only in tests. {how_to_fix}")
        return {f: "fake" for f in accepted_md5}
    found = {}
    for f, accepted in accepted_md5.items():
        path = folder / f
        if not path.is_file():
            raise DataError(f"{name} file missing: {path}. {how_to_fix}")
        digest = md5(path)
        if digest not in accepted:
            raise DataError(
                f"{name} file {path} has md5 {digest}, which matches neither the official "
                f"release nor the verified copy: it is corrupt or a different file. "
                f"Delete it and fetch it again. {how_to_fix}"
            )
        found[f] = accepted[digest]
    return found


def _checksum(root: Path, split: str) -> str:
    if (root / FOLDER / FAKE_MARKER).is_file():
        return "fake"
    return md5(root / FOLDER / split)


_CACHE: dict[tuple[str, str], Split] = {}


def load_split(split: str = "train", root: Path | None = None, check: bool = True) -> Split:
    """Read ``train`` or ``test`` from the pickles (memoised per process).

    check: verify the md5s first (about 0.3 s); the result is cached with the split.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    root = Path(root) if root is not None else default_root()
    key = (str(root.resolve()), split)
    if key in _CACHE:
        return _CACHE[key]
    if check:
        verify(root)
    elif not (root / FOLDER / split).is_file():
        raise DataError(f"CIFAR-100 file missing: {root / FOLDER / split}. {_how_to_fix(root)}")
    try:
        with open(root / FOLDER / split, "rb") as f:
            raw = pickle.load(f, encoding="latin1")
        with open(root / FOLDER / "meta", "rb") as f:
            meta = pickle.load(f, encoding="latin1")
        images = np.asarray(raw["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.asarray(raw["fine_labels"], dtype=np.int64)
        coarse = np.asarray(raw["coarse_labels"], dtype=np.int64)
    except (pickle.UnpicklingError, KeyError, ValueError, EOFError) as exc:
        raise DataError(f"CIFAR-100 {split} could not be read ({exc}). {_how_to_fix(root)}") from exc
    out = Split(
        images=np.ascontiguousarray(images),
        labels=labels,
        coarse=coarse,
        classes=tuple(meta["fine_label_names"]),
        checksum=_checksum(root, split) if check else "unchecked",
    )
    _CACHE[key] = out
    return out


def fetch_archive(url: str, dest: Path, expected_md5: str, desc: str, progress: bool = True) -> Path:
    """Stream ``url`` into ``dest`` with a progress bar and check its md5 (DataError if it
    differs: nothing is extracted from a corrupt download)."""
    from tqdm.auto import tqdm

    with urllib.request.urlopen(url, timeout=60) as resp, open(dest, "wb") as f:
        total = int(resp.headers.get("Content-Length", 0)) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not progress) as bar:
            while block := resp.read(1 << 20):
                f.write(block)
                bar.update(len(block))
    digest = md5(dest)
    if digest != expected_md5:
        raise DataError(f"downloaded archive has md5 {digest}, expected {expected_md5}; not extracted")
    return dest


def download(root: Path | None = None, url: str = URL, progress: bool = True) -> Path:
    """Download the official archive, check its md5, extract it into ``root``.

    Written to a temporary file first and moved into place, so an interrupted download
    leaves nothing half-written behind.
    """
    root = Path(root) if root is not None else default_root()
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        archive = fetch_archive(url, Path(tmp) / "cifar-100-python.tar.gz", ARCHIVE_MD5, "CIFAR-100", progress)
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        target = root / FOLDER
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(Path(tmp) / FOLDER), target)
    verify(root)
    return root


def unpack_parts(shared: Path, root: Path | None = None) -> Path:
    """Assemble the project's verified copy (``cifar-100-python.tar.xz.part0..3``) into ``root``."""
    import lzma

    shared, root = Path(shared), Path(root) if root is not None else default_root()
    parts = sorted(shared.glob("cifar-100-python.tar.xz.part*"))
    if len(parts) != 4:
        raise DataError(f"expected 4 parts cifar-100-python.tar.xz.part0..3 in {shared}, found {len(parts)}")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        joined = Path(tmp) / "c100.tar.xz"
        with open(joined, "wb") as out:
            for p in parts:
                with open(p, "rb") as f:
                    shutil.copyfileobj(f, out)
        with lzma.open(joined) as xz, tarfile.open(fileobj=xz) as tar:
            tar.extractall(tmp, filter="data")
        target = root / FOLDER
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(Path(tmp) / FOLDER), target)
    verify(root)
    return root


def ensure(root: Path | None = None, download_if_missing: bool = False) -> Path:
    """Return the data root after verifying it; optionally download when absent."""
    root = Path(root) if root is not None else default_root()
    if not (root / FOLDER / "train").exists() and download_if_missing:
        download(root)
    verify(root)
    return root
