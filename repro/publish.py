"""Publishing a finished run into the book: the record, its figures and the executed chapter
replace the published ones together, or not at all.

A run folder (``repro.run``) holds ``NN-slug.TIER.json``, ``figures/NN-slug/TIER/`` and
``NN-slug.ipynb``. :func:`publish` checks that the three belong to one complete run (same
run id; every figure present; not smoke, not a dry run), copies each beside its destination
under a temporary name, then swaps them into place one right after the other. If a swap
fails, the ones already made are rolled back, so the book never shows a record with another
run's figures or notebook.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ParameterError, RecordError
from .io import atomic_write_text
from .paths import chapters_dir, results_dir
from .records import notebook_run_id, read_record

DEFAULT_BOOK_TIER = "cpu"


@dataclass(frozen=True)
class Staged:
    """The three parts of a run folder."""

    folder: Path
    record: dict[str, Any]
    record_path: Path
    figures: Path
    notebook: Path

    @property
    def name(self) -> str:
        return self.record["paper"]["name"]

    @property
    def tier(self) -> str:
        return self.record["tier"]


def staged(folder: str | Path) -> Staged:
    """Read a run folder; RecordError if it holds no single valid record."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RecordError(f"{folder}: no such run folder")
    found = [p for p in folder.glob("*.json") if p.name.count(".") == 2]
    if len(found) != 1:
        raise RecordError(f"{folder}: expected one NN-slug.TIER.json record, found {len(found)}")
    rec = read_record(found[0])
    name, tier = rec["paper"]["name"], rec["tier"]
    return Staged(folder, rec, found[0], folder / "figures" / name / tier, folder / f"{name}.ipynb")


def check_publishable(st: Staged) -> None:
    """RecordError unless ``st`` is a complete, self-consistent run of a judged tier."""
    rec = st.record
    if rec.get("schema", 1) < 2:
        raise RecordError(f"{st.record_path}: schema {rec.get('schema')} records predate run ids and cannot be published")
    if rec["status"] != "complete":
        raise RecordError(f"{st.record_path}: a {rec['status']} run is never published")
    if rec["tier"] == "smoke":
        raise RecordError(f"{st.record_path}: smoke runs check mechanics and are never published")
    if not st.notebook.is_file():
        raise RecordError(f"{st.folder}: no executed notebook {st.notebook.name} (run it with repro run, or "
                          f"save papermill's output there)")
    nb = json.loads(st.notebook.read_text(encoding="utf-8"))
    rid = notebook_run_id(nb)
    if rid != rec["run_id"]:
        raise RecordError(f"{st.notebook}: comes from run {rid or '(none)'}, the record from {rec['run_id']}")
    for fig, rel in rec["figures"].items():
        if not (st.folder / rel).is_file():
            raise RecordError(f"{st.folder}: figure {fig!r} ({rel}) is missing")


def book_tier(name: str, default: str = DEFAULT_BOOK_TIER) -> str:
    """The tier the book shows for paper ``name``: that of its published chapter, else ``default``."""
    path = chapters_dir() / f"{name}.ipynb"
    try:
        meta = json.loads(path.read_text(encoding="utf-8")).get("metadata") or {}
    except (OSError, ValueError):
        return default
    tier = (meta.get("repro") or {}).get("tier") or ((meta.get("papermill") or {}).get("parameters") or {}).get("tier")
    return tier if tier in ("cpu", "gpu", "paper") else default


def stamp_notebook(path: Path, run_id: str, tier: str, overrides: dict[str, Any]) -> None:
    """Write the run's id, tier and overrides into an executed notebook's metadata, and, when
    the run's record is beside it (``NN-slug.TIER.json`` in the same run folder), what the
    book adds to a chapter: the verdict box under the title, collapsed parameter cells and
    figure captions with alt text (:func:`repro.book.chapter.refresh_chapter`)."""
    from .book.chapter import refresh_chapter

    path = Path(path)
    nb = json.loads(path.read_text(encoding="utf-8"))
    nb.setdefault("metadata", {})["repro"] = {"run_id": run_id, "tier": tier, "overrides": overrides}
    record = None
    for cand in sorted(path.parent.glob(f"*.{tier}.json")):
        try:
            rec = read_record(cand)
        except RecordError:
            continue
        if rec.get("run_id") == run_id and rec.get("status") == "complete":
            record = {**rec, "_file": cand.name}
            break
    refresh_chapter(nb, record, path.parent)
    atomic_write_text(path, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def publish(folder: str | Path, results: Path | None = None, chapters: Path | None = None) -> dict[str, Path]:
    """Publish the run in ``folder``: record, figures and chapter replace the published ones
    together. Returns the three destinations. RecordError if the run is not publishable."""
    st = staged(folder)
    check_publishable(st)
    results = Path(results or results_dir())
    chapters = Path(chapters or chapters_dir())
    dest = {"record": results / st.record_path.name,
            "figures": results / "figures" / st.name / st.tier,
            "notebook": chapters / st.notebook.name}
    src = {"record": st.record_path, "figures": st.figures, "notebook": st.notebook}
    tmp = {k: v.with_name(f".{v.name}.publishing") for k, v in dest.items()}
    old = {k: v.with_name(f".{v.name}.previous") for k, v in dest.items()}
    for p in (*tmp.values(), *old.values()):
        _remove(p)
    try:  # 1. copies beside the destinations (slow part; nothing visible changes)
        for k in dest:
            dest[k].parent.mkdir(parents=True, exist_ok=True)
            if k == "figures":
                if src[k].is_dir():
                    shutil.copytree(src[k], tmp[k])
                else:
                    tmp[k].mkdir()
            else:
                shutil.copyfile(src[k], tmp[k])
                os.chmod(tmp[k], 0o644)
    except BaseException:
        for p in tmp.values():
            _remove(p)
        raise
    done: list[str] = []
    try:  # 2. the swap: renames only
        for k in ("figures", "notebook", "record"):
            if dest[k].exists():
                os.replace(dest[k], old[k])
            os.replace(tmp[k], dest[k])
            done.append(k)
    except BaseException:
        for k in dest:  # put back every previous part; drop new parts that had none before
            if old[k].exists():
                _remove(dest[k])
                os.replace(old[k], dest[k])
            elif k in done:
                _remove(dest[k])
        for p in tmp.values():
            _remove(p)
        raise
    for p in old.values():
        _remove(p)
    return dest


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


def should_publish(tier: str, overrides: dict[str, Any], dry: bool, asked: bool, name: str) -> tuple[bool, str]:
    """Does ``repro run`` publish this run? (yes/no, why). Smoke and dry runs never; with
    ``--publish`` always; otherwise only at the tier the book shows and without overrides."""
    if dry:
        return False, "a dry run is never published"
    if tier == "smoke":
        if asked:
            raise ParameterError("--publish: smoke runs check mechanics and are never published")
        return False, "smoke runs are never published"
    if asked:
        return True, "--publish"
    shown = book_tier(name)
    if tier != shown:
        return False, f"the book shows the {shown} tier of this chapter (publish a {tier} run with --publish)"
    if overrides:
        return False, f"parameters were overridden ({', '.join(sorted(overrides))}); publish with --publish"
    return True, f"a complete {tier} run without overrides"
