"""Where a result came from: package version and source hash, git commit, machine, torch.

Every run record carries :func:`environment`; checkpoints are keyed by :func:`source_hash`,
so changed code never resumes from a stale checkpoint. ``git`` look-ups fail soft (a wheel
install has no repository): they then say "unknown".
"""
from __future__ import annotations

import hashlib
import platform
import subprocess
from pathlib import Path
from typing import Any

from . import __version__

PACKAGE = Path(__file__).resolve().parent


def source_hash() -> str:
    """Hash of the package's source files (.py and .toml)."""
    h = hashlib.sha256()
    for p in sorted(PACKAGE.rglob("*")):
        if p.suffix in (".py", ".toml") and "__pycache__" not in p.parts:
            h.update(p.relative_to(PACKAGE).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def git(*args: str, cwd: Path | None = None) -> tuple[int, str]:
    """(exit code, stdout) of a git command in the package's checkout; (-1, "") without git."""
    try:
        proc = subprocess.run(["git", *args], cwd=cwd or PACKAGE.parent, capture_output=True, text=True,
                              timeout=10)
        return proc.returncode, proc.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return -1, ""


def git_commit() -> str:
    """Short hash of HEAD, or "unknown"."""
    code, out = git("rev-parse", "--short=12", "HEAD")
    return out if code == 0 and out else "unknown"


def git_dirty() -> bool:
    """True when tracked files of the package differ from HEAD."""
    code, out = git("status", "--porcelain", "--untracked-files=no", "--", "repro")
    return code == 0 and bool(out)


def commit_known(commit: str, cwd: Path | None = None) -> bool | None:
    """Is ``commit`` in this repository's history? None when that cannot be checked."""
    if not commit or commit == "unknown":
        return False
    code, _ = git("cat-file", "-e", f"{commit}^{{commit}}", cwd=cwd)
    if code == -1:
        return None
    if code != 0:
        return False
    code, _ = git("merge-base", "--is-ancestor", commit, "HEAD", cwd=cwd)
    return code == 0


def environment(device: Any = "cpu") -> dict[str, Any]:
    """Python, torch, CUDA, device, precision, package version and git commit of this process."""
    import torch

    from .modes import cpu_precision

    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "device": device.type,
        "device_name": name,
        "repro_version": __version__,
        "source_hash": source_hash(),
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "platform": platform.platform(),
        # what the trainer computes in on this device: bf16 autocast or fp32 (repro.train.precision)
        "precision": "bf16" if device.type == "cuda" else cpu_precision(),
    }
