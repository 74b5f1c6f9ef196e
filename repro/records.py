"""Run records: one JSON per paper and tier, written atomically, with provenance.

A notebook opens its run with ``run = repro.start("ghostbn", globals())`` right after the
``parameters`` cell, logs per-seed metrics with ``run.log(seed, name=value)``, saves figures
with ``run.figure(...)`` and ends with ``run.finish()``, which judges the claims and writes
``results/NN-slug.TIER.json``.
"""
from __future__ import annotations

import ast
import datetime as _dt
import hashlib
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .metrics import mean_ci
from .papers import PaperSpec, ParameterError, check_type, load_spec
from .tiers import check_tier
from .verdicts import judge, overall

RESULTS_ENV = "REPRO_RESULTS"
CHECKPOINTS_ENV = "REPRO_CHECKPOINTS"
TIER_ENV = "REPRO_TIER"
_CURRENT: "Run | None" = None


def project_root() -> Path:
    """The checkout that holds ``repro/`` and ``_config.yml`` (else the working directory)."""
    for base in (Path.cwd(), *Path.cwd().parents, Path(__file__).resolve().parent.parent):
        if (base / "repro").is_dir() and (base / "_config.yml").is_file():
            return base
    return Path.cwd()


def results_dir() -> Path:
    """``$REPRO_RESULTS`` if set, else ``<project>/results``."""
    return Path(os.environ.get(RESULTS_ENV) or project_root() / "results")


def checkpoints_dir() -> Path:
    """``$REPRO_CHECKPOINTS`` if set, else ``~/.cache/repro/checkpoints``."""
    base = os.environ.get(CHECKPOINTS_ENV)
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "repro" / "checkpoints"


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, default=_jsonable) + "\n")


def _jsonable(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def source_hash() -> str:
    """Hash of the package's source files: keys checkpoints to the code that made them."""
    h = hashlib.sha256()
    pkg = Path(__file__).parent
    for p in sorted(pkg.rglob("*")):
        if p.suffix in (".py", ".toml") and "__pycache__" not in p.parts:
            h.update(p.relative_to(pkg).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def environment(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Python, torch, CUDA, device, package version and git commit of this run."""
    device = torch.device(device)
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", "repro"))
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        name = f"CPU {name} ({torch.get_num_threads()} threads)"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "device": device.type,
        "device_name": name,
        "repro_version": __version__,
        "source_hash": source_hash(),
        "git_commit": commit,
        "git_dirty": dirty,
        "platform": platform.platform(),
    }


def pick_device(name: str = "auto") -> torch.device:
    """'auto' → CUDA when available, else CPU; 'cuda' without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ParameterError("device='cuda' but no CUDA device is visible; use device='auto' or 'cpu'")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise ParameterError(f"device must be 'auto', 'cpu' or 'cuda[:N]', not {name!r}")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _injected_names(ns: dict[str, Any]) -> set[str]:
    """Names papermill assigned in its injected cell (the one starting '# Parameters')."""
    names: set[str] = set()
    for src in ns.get("In", []) or []:
        if isinstance(src, str) and src.lstrip().startswith("# Parameters"):
            try:
                tree = ast.parse(src)
            except SyntaxError:
                continue
            names = {t.id for node in tree.body if isinstance(node, ast.Assign)
                     for t in node.targets if isinstance(t, ast.Name)}
    return names


class Run:
    """One execution of a chapter: parameters, per-seed metrics, figures, cost, record."""

    def __init__(self, spec: PaperSpec, params: dict[str, Any], device: torch.device) -> None:
        self.spec = spec
        self.params = params
        self.tier = params["tier"]
        self.device = device
        self.seeds: list[int] = list(params.get("seeds", [0]))
        self.metrics: dict[str, dict[str, float]] = {}
        self.figures: dict[str, str] = {}
        self.notes: dict[str, Any] = {}
        self.data_info: dict[str, Any] = {}
        self.train_s = 0.0
        self.train_images = 0
        self.t0 = time.time()
        self.started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.env = environment(device)
        self.record: dict[str, Any] | None = None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    # -- naming -------------------------------------------------------------------------
    @property
    def base_dir(self) -> Path:
        """``results/``, or ``results/dry-run/`` for a dry run (kept out of the book)."""
        from .train import dry_run

        return results_dir() / "dry-run" if dry_run() else results_dir()

    @property
    def record_path(self) -> Path:
        return self.base_dir / f"{self.spec.name}.{self.tier}.json"

    @property
    def figure_dir(self) -> Path:
        return self.base_dir / "figures" / self.spec.name / self.tier

    def setting(self, extra: str = "") -> str:
        """Caption line for figures: tier, seeds, data, device (+ extra)."""
        parts = [f"{self.spec.name} · tier {self.tier}", f"seeds {','.join(map(str, self.seeds))}"]
        if self.data_info.get("description"):
            parts.append(self.data_info["description"])
        parts.append(self.env["device_name"] if self.device.type == "cuda" else "CPU")
        if extra:
            parts.append(extra)
        return " · ".join(parts)

    def checkpoint_dir(self, *key: Any) -> Path:
        """Folder for the checkpoints of one training job of this run (arm, seed…).

        Keyed by paper, tier, parameters, the given key and the package's source hash:
        a re-run with the same settings and code resumes; any change starts afresh.
        """
        blob = json.dumps([self.spec.name, self.params, [str(k) for k in key], self.env["source_hash"]],
                          sort_keys=True, default=str)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:20]
        label = "-".join(str(k) for k in key)[:60].replace("/", "_")
        return checkpoints_dir() / self.spec.name / self.tier / f"{label}-{digest}"

    # -- data and logging ---------------------------------------------------------------
    def data(self, **kw: Any):
        """``repro.data.load(**kw)``, recording its checksum and description."""
        from . import data as _data

        ds = _data.load(**kw)
        self.data_info = {"train_md5": ds.info["train_md5"], "test_md5": ds.info["test_md5"],
                          "description": ds.describe(), "classes": ds.classes, **{k: kw[k] for k in kw}}
        return ds

    def log(self, seed: int, **values: float) -> None:
        """Record per-seed scalar metrics (``run.log(0, top1_sb=61.2)``)."""
        for name, v in values.items():
            self.metrics.setdefault(name, {})[str(seed)] = float(v)

    def note(self, **values: Any) -> None:
        """Keep extra JSON-serialisable facts in the record (histories, tables…)."""
        self.notes.update(values)

    def add_training(self, images: int, seconds: float) -> None:
        """Called by the trainer: images processed and seconds spent training."""
        self.train_images += int(images)
        self.train_s += float(seconds)

    def figure(self, fig, name: str, data: dict | None = None) -> Path:
        """Save a figure (PNG) and its numbers (JSON) beside the record; returns the PNG path."""
        from .plots.style import save

        path = self.figure_dir / f"{name}.png"
        save(fig, path, data=data)
        self.figures[name] = path.relative_to(self.base_dir).as_posix()
        return path

    # -- closing ------------------------------------------------------------------------
    def summaries(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name, per in self.metrics.items():
            s = mean_ci(list(per.values()))
            out[name] = {"per_seed": per, **{k: s[k] for k in ("mean", "std", "ci_low", "ci_high", "n")}}
        return out

    def finish(self) -> dict[str, Any]:
        """Judge the claims, write the record atomically, return it."""
        metrics = self.summaries()
        claims = []
        for c in self.spec.claims:
            ours = metrics.get(c.metric)
            verdict, reason = judge(c, ours, self.tier)
            diff = None
            if ours is not None and c.paper_value is not None:
                diff = ours["mean"] - c.paper_value
            claims.append({**c.__dict__, "ours": None if ours is None else
                           {k: ours[k] for k in ("mean", "std", "ci_low", "ci_high", "n")},
                           "difference": diff, "verdict": verdict, "reason": reason})
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        wall = time.time() - self.t0
        self.record = {
            "schema": 1,
            "paper": {"number": self.spec.number, "slug": self.spec.slug, "name": self.spec.name,
                      "title": self.spec.title, "family": self.spec.family},
            "tier": self.tier,
            "status": "dry-run" if self.base_dir != results_dir() else "complete",
            "params": self.params,
            "seeds": self.seeds,
            "metrics": metrics,
            "claims": claims,
            "verdict": overall([c["verdict"] for c in claims]),
            "figures": self.figures,
            "cost": {"wall_s": round(wall, 1), "train_s": round(self.train_s, 1),
                     "train_images": self.train_images,
                     "images_per_s": round(self.train_images / self.train_s, 1) if self.train_s else None,
                     "peak_mem_mb": round(peak, 1), "device": self.env["device_name"]},
            "environment": self.env,
            "data": self.data_info,
            "notes": self.notes,
            "started": self.started,
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        write_json(self.record_path, self.record)
        global _CURRENT
        if _CURRENT is self:
            _CURRENT = None
        return self.record

    def claims_table(self) -> str:
        """The claim-vs-ours table as Markdown (after ``finish``)."""
        rec = self.record or self.finish()
        rows = ["| claim | paper | ours (mean ± std, 95% CI, n) | verdict | why |",
                "| --- | --- | --- | --- | --- |"]
        for c in rec["claims"]:
            pv = "—" if c["paper_value"] is None else f"{c['paper_value']:g} {c['unit']}"
            o = c["ours"]
            ours = "—" if o is None else (f"{o['mean']:+.2f} ± {o['std']:.2f} {c['unit']}, "
                                          f"[{o['ci_low']:+.2f}, {o['ci_high']:+.2f}], n={o['n']}")
            rows.append(f"| {c['text']} | {pv} | {ours} | **{c['verdict']}** | {c['reason']} |")
        return "\n".join(rows)

    def report(self):
        """Display the claim table in a notebook (Markdown), or return it as text."""
        text = self.claims_table() + (
            f"\n\nTier **{self.tier}**, seeds {self.seeds}, wall {self.record['cost']['wall_s']} s "
            f"on {self.record['cost']['device']}; record `{self.record_path.name}` "
            f"(repro {__version__}, commit {self.env['git_commit']}{'+dirty' if self.env['git_dirty'] else ''}).")
        try:
            from IPython.display import Markdown
            return Markdown(text)
        except ImportError:  # pragma: no cover
            return text


def current_run() -> Run | None:
    """The run opened by the last ``start`` (the trainer reports its cost to it)."""
    return _CURRENT


def _inline_figures() -> None:
    """In a Jupyter kernel, draw figures inline whatever MPLBACKEND says: an executed chapter
    must carry its figures, and CI/papermill environments often set MPLBACKEND=Agg, under
    which ``plt.show()`` draws nothing."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    ip = get_ipython()
    if ip is not None and getattr(ip, "kernel", None) is not None:
        ip.run_line_magic("matplotlib", "inline")


def start(slug: str, ns: dict[str, Any]) -> Run:
    """Validate the notebook's parameters, apply the tier, seed, pick the device, open a run.

    ns: the notebook's ``globals()``. Unknown parameters (passed by papermill) or values of
    the wrong type raise ParameterError listing the valid parameters. Tier overrides apply
    to every parameter the caller did not set; the resolved values are written back into
    ``ns`` so later cells use them.
    """
    global _CURRENT
    spec = load_spec(slug)
    _inline_figures()
    injected = _injected_names(ns)
    if os.environ.get(TIER_ENV) and "tier" not in injected:
        # Lets tools that execute notebooks as they are (nbval) pick a small tier.
        ns["tier"] = os.environ[TIER_ENV]
    tier = check_tier(ns.get("tier", "paper"))
    unknown = sorted(injected - set(spec.params))
    if unknown:
        raise ParameterError(f"{spec.name}: unknown parameter(s) {', '.join(unknown)}. "
                             f"Valid parameters:\n{spec.help_text()}")
    missing = [k for k in spec.params if k not in ns]
    if missing:
        raise ParameterError(f"{spec.name}: the parameters cell lacks {', '.join(missing)}")
    defaults = spec.defaults
    explicit = {k: ns[k] for k in spec.params if k != "tier" and (k in injected or ns[k] != defaults[k])}
    for k, v in explicit.items():  # type errors first, with the parameter's name
        check_type(spec.name, k, v, defaults[k])
    params = spec.resolve(tier, explicit)
    ns.update(params)
    device = pick_device(params["device"])
    seeds = params.get("seeds", [0])
    seed_everything(int(seeds[0]) if seeds else 0)
    run = Run(spec, params, device)
    _CURRENT = run
    set_ = ", ".join(f"{k}={v!r}" for k, v in explicit.items() if k != "device") or "none"
    print(f"{spec.name} · tier {tier} · device {run.env['device_name']} · seeds {seeds} · "
          f"overrides: {set_} · repro {__version__} ({run.env['git_commit']})")
    return run
