"""A chapter's run: parameters checked, seeds set, metrics logged, figures and record staged.

A notebook opens its run with ``run = repro.start("ghostbn", globals())`` right after the
``parameters`` cell, logs per-seed metrics with ``run.log(seed, name=value)``, saves figures
with ``run.figure(...)`` and ends with ``run.finish()``, which judges the claims and writes
the record.

Every run writes into its own **run folder** (``$REPRO_RUNS/NN-slug.TIER.RUNID/``, laid out
like ``results/``: the record, ``figures/NN-slug/TIER/`` and, from ``repro run``, the executed
notebook). Nothing a run does touches the book: publishing a finished run is a separate,
all-or-nothing step (``repro.publish``), which ``repro run`` takes only for a complete run at
the tier the book shows, without overrides (or when asked with ``--publish``).
"""
from __future__ import annotations

import ast
import datetime as _dt
import hashlib
import json
import os
import random
import resource
import secrets
import time
from pathlib import Path
from typing import Any

from . import __version__
from .errors import ParameterError, RecordError
from .io import write_json
from .papers import PaperSpec, check_type, load_spec, parse_text_value
from .paths import checkpoints_dir, runs_dir
from .records import SCHEMA, validate
from .tiers import check_tier
from .verdicts import judge, overall

TIER_ENV = "REPRO_TIER"
RUN_ID_ENV = "REPRO_RUN_ID"
RUN_DIR_ENV = "REPRO_RUN_DIR"


def new_run_id() -> str:
    """A sortable, unique run id: UTC time and 6 random hex digits (``20261202T0612-3fa9c1``)."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)


def run_folder(name: str, tier: str, run_id: str) -> Path:
    """The run folder of paper ``name`` at ``tier``: ``$REPRO_RUNS/NAME.TIER.RUNID``."""
    return runs_dir() / f"{name}.{tier}.{run_id}"


def pick_device(name: str = "auto"):
    """'auto' → CUDA when available, else CPU; 'cuda' without a GPU is an error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ParameterError("device='cuda' but no CUDA device is visible; use device='auto' or 'cpu'")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise ParameterError(f"device must be 'auto', 'cpu' or 'cuda[:N]', not {name!r}")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _injected(ns: dict[str, Any]) -> set[str]:
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

    def __init__(self, spec: PaperSpec, params: dict[str, Any], device: Any, explicit: dict[str, Any] | None = None,
                 run_id: str | None = None, folder: Path | None = None) -> None:
        import torch

        from .provenance import environment
        from .train import COST, WORK, dry_run

        self.spec = spec
        self.params = params
        self.explicit = dict(explicit or {})
        self.tier = params["tier"]
        self.device = torch.device(device)
        self.seeds: list[int] = list(params.get("seeds", [0]))
        self.run_id = run_id or new_run_id()
        self.folder = Path(folder) if folder else run_folder(spec.name, self.tier, self.run_id)
        self.dry = dry_run()
        self.metrics: dict[str, dict[str, float]] = {}
        self.rows: list[dict[str, Any]] = []
        self.figures: dict[str, str] = {}
        self.notes: dict[str, Any] = {}
        self.flags: dict[tuple[str | None, str | None], str] = {}
        self.data_info: dict[str, Any] = {}
        self._cost0 = (COST.train_s, COST.train_images, len(COST.reuse_log))
        self._work0 = dict(WORK)
        self.t0 = time.time()
        self.started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.env = environment(self.device)
        self.record: dict[str, Any] | None = None
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    # -- naming -------------------------------------------------------------------------
    @property
    def record_path(self) -> Path:
        return self.folder / f"{self.spec.name}.{self.tier}.json"

    @property
    def figure_dir(self) -> Path:
        return self.folder / "figures" / self.spec.name / self.tier

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

        Keyed by paper, tier, parameters, the given key and the package's source hash: a
        re-run with the same settings and code resumes; any change starts afresh. Under
        ``repro run --fresh`` the run id joins the key, so nothing earlier is reused.
        """
        from .modes import fresh

        parts: list[Any] = [self.spec.name, self.params, [str(k) for k in key], self.env["source_hash"]]
        if fresh():
            parts.append(self.run_id)
        digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]
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

    def log_seeds(self, per_seed: Any) -> None:
        """``run.log`` for many seeds at once: ``{seed: {name: value}}`` (what a family's
        ``metrics_by_seed`` functions return)."""
        for seed, values in per_seed.items():
            self.log(seed, **values)

    def add_row(self, arm: str, seed: int, metric: str, value: float, n_test: int = 0,
                test_var: float | None = None) -> None:
        """One tidy result row (the sweep writes these): ``metric`` of ``arm`` for ``seed``,
        estimated on ``n_test`` test images (0: not a test-set estimate); ``test_var``: the
        value's own test-set sampling variance where the chapter knows it (AUROC), which the
        verdict rule then uses instead of the binomial one."""
        row = {"arm": str(arm), "seed": int(seed), "metric": str(metric), "value": float(value),
               "n_test": int(n_test)}
        if test_var is not None:
            row["test_var"] = float(test_var)
        self.rows.append(row)

    def claim_values(self, claim: Any) -> dict[str, float] | None:
        """seed → the claim's value: its logged metric, or, for a claim that names an arm,
        the arm's row minus the baseline's row of the same seed. None if nothing was found."""
        ev = self.claim_evidence(claim)
        return None if ev is None else ev.per_seed

    def claim_evidence(self, claim: Any) -> Any:
        """``repro.verdicts.Evidence`` of a claim: per-seed values, test-set variance and the
        guards that fired (``flag`` and the chance-level check). None if nothing was found."""
        from .verdicts import chance_flags, claim_evidence

        flags = [why for (arm, key), why in self.flags.items()
                 if key == claim.key or (arm is not None and arm in (claim.arm, claim.baseline))
                 or (arm is None and key is None)]
        flags += chance_flags(claim, self.rows, self.chance_pct)
        return claim_evidence(claim, self.rows, self.metrics.get(claim.metric), flags)

    @property
    def chance_pct(self) -> float | None:
        """Top-1 of guessing, in percent, on the run's data (None before ``run.data``)."""
        classes = self.data_info.get("classes")  # the class list, or the count asked for
        n = classes if isinstance(classes, int) else len(classes or ())
        return 100.0 / n if n else None

    def flag(self, reason: str, arm: str | None = None, claim: str | None = None) -> None:
        """Mark the claims that rest on ``arm`` (or the claim with key ``claim``; neither:
        every claim) as not judgeable, with the reason (a guard: an arm that learned nothing,
        two arms identical by construction…). Their verdict becomes *inconclusive*."""
        self.flags[(arm, claim)] = reason

    def note(self, **values: Any) -> None:
        """Keep extra JSON-serialisable facts in the record (histories, tables…)."""
        self.notes.update(values)

    def figure(self, fig, name: str, data: dict | None = None) -> Path:
        """Save a figure (PNG) and its numbers (JSON, stamped with the run id) in the run
        folder; returns the PNG path."""
        from .plots.style import save

        path = self.figure_dir / f"{name}.png"
        save(fig, path, data={**(data or {}), "run_id": self.run_id})
        self.figures[name] = path.relative_to(self.folder).as_posix()
        return path

    def tier_changes(self) -> list[tuple[str, Any, Any]]:
        """(parameter, paper value, this run's value) for every parameter the tier or the
        caller changed from the paper's settings."""
        d = self.spec.defaults
        return [(k, d[k], v) for k, v in self.params.items() if k not in ("tier", "device") and v != d.get(k)]

    def tier_table(self) -> str:
        """``tier_changes`` as a small Markdown table (shown under the collapsed parameters)."""
        from .tables import markdown_table

        rows = [[f"`{k}`", f"`{p!r}`", f"`{v!r}`"] for k, p, v in self.tier_changes()]
        if not rows:
            return f"Tier **{self.tier}** runs the paper's settings unchanged."
        return (f"Tier **{self.tier}** changes {len(rows)} of the paper's settings:\n\n"
                + markdown_table(["parameter", "paper", f"this run ({self.tier})"], rows))

    # -- power --------------------------------------------------------------------------
    def power_rows(self) -> list[dict[str, Any]]:
        """Before training: per claim, the smallest effect this tier can detect (95%, 80%
        power) from the expected spread over seeds, the seeds and the test size, next to the
        paper's effect. The spread comes from the claim's ``seed_sd`` or from the published
        record of this tier; without either, only the test-set error is counted (a floor)."""
        from .verdicts import binomial_var, seeds_needed, smallest_detectable, testable, uses_binomial

        prior = _published_claims(self.spec.name, self.tier)
        classes = self.params.get("classes", 100)
        per = self.params.get("test_per_class", 0) or 100
        n_test = (classes if isinstance(classes, int) and classes > 0 else 100) * per
        out = []
        for c in self.spec.claims:
            row: dict[str, Any] = {"claim": c.id, "key": c.key, "paper": c.paper_value if c.kind != "absolute" else None,
                                   "unit": c.unit, "seeds": len(self.seeds), "judged": testable(c, self.tier)
                                   and self.tier != "smoke" and c.kind != "absolute"}
            old = prior.get(c.key) or {}
            test_var = (old.get("evidence") or {}).get("test_var")
            if test_var is None and uses_binomial(c) and c.arm:
                test_var = binomial_var(50.0, n_test) * (2 if c.baseline else 1)  # p = ½: the widest
            sd = c.seed_sd if c.seed_sd is not None else (old.get("ours") or {}).get("std")
            row.update(test_images=n_test if uses_binomial(c) else None, seed_sd=sd, test_var=test_var or 0.0,
                       sd_source="spec" if c.seed_sd is not None else ("published record" if sd is not None else None))
            row["mde"] = smallest_detectable(sd or 0.0, test_var or 0.0, len(self.seeds))
            row["floor_only"] = sd is None
            row["seeds_for_paper"] = seeds_needed(row["paper"], sd or 0.0, test_var or 0.0) if row["paper"] else None
            out.append(row)
        return out

    def power_text(self) -> str:
        """``power_rows`` as the few lines ``repro.start`` prints."""
        lines = [f"smallest detectable effect at tier {self.tier} ({len(self.seeds)} seeds; 95% CI, 80% power):"]
        for r in self.power_rows():
            if not r["judged"]:
                lines.append(f"  {r['claim']}: not judged at this tier")
                continue
            if r["floor_only"] and not r["test_var"]:
                lines.append(f"  {r['claim']}: unknown until a run shows the spread over seeds")
                continue
            mde = "—" if r["mde"] is None else (f"{'≥ ' if r['floor_only'] else ''}{r['mde']:.2f} {r['unit']}")
            src = " (test-set error only; spread over seeds unknown)" if r["floor_only"] and r["mde"] else ""
            paper = "" if r["paper"] is None else f" · paper {r['paper']:+g} {r['unit']}" + (
                f", {r['seeds_for_paper']} seeds to detect it" if r["seeds_for_paper"] else "")
            lines.append(f"  {r['claim']}: {mde}{src}{paper}")
        return "\n".join(lines)

    # -- closing ------------------------------------------------------------------------
    def summaries(self) -> dict[str, dict[str, Any]]:
        from .metrics import mean_ci

        out = {}
        for name, per in self.metrics.items():
            s = mean_ci(list(per.values()))
            out[name] = {"per_seed": per, **{k: s[k] for k in ("mean", "std", "ci_low", "ci_high", "n")}}
        return out

    def finish(self) -> dict[str, Any]:
        """Judge the claims, write the record atomically into the run folder, return it.

        A claim whose metric was never logged is a bug in the chapter, not a verdict: it
        raises RecordError (a dry run only notes it).
        """
        import torch

        from .train import COST, WORK

        from .metrics import mean_ci

        from .verdicts import comparable, interval, seeds_needed, smallest_detectable, testable

        metrics = self.summaries()
        missing, evidence = [], {}
        for c in self.spec.claims:
            ev = self.claim_evidence(c)
            if ev is None:
                if testable(c, self.tier):  # a claim not judged here may skip its arms
                    missing.append(c.key)
                continue
            evidence[c.key] = ev
            if c.arm is not None:
                metrics[c.key] = {"per_seed": ev.per_seed, **mean_ci(list(ev.per_seed.values()))}
        if missing and not self.dry:
            raise RecordError(f"{self.spec.name}: the run has no value for claim metric(s) "
                              f"{', '.join(missing)}; log them with run.log(seed, ...) or sweep the arms they name")
        claims = []
        for c in self.spec.claims:
            ev = evidence.get(c.key)
            iv = interval(list(ev.per_seed.values()), ev.test_var) if ev else None
            if self.dry:
                verdict, reason = None, "dry run: one step per job, never judged"
            else:
                verdict, reason = judge(c, ev, self.tier)
            comp = comparable(c, self.tier)
            diff = iv["mean"] - c.paper_value if iv and comp and c.paper_value is not None else None
            # no spread and no test-set error: nothing was estimated, so no power either
            mde = smallest_detectable(iv["std"], ev.test_var, iv["n"]) if iv and iv["se"] > 0 else None
            claims.append({**c.__dict__, "tiers": list(c.tiers), "comparable": comp,
                           "comparable_tiers": list(c.comparable), "key": c.key,
                           "ours": None if iv is None else {k: iv[k] for k in
                                                            ("mean", "std", "ci_low", "ci_high", "n", "se_seed", "se_test")},
                           "evidence": None if ev is None else {"test_var": ev.test_var, "flags": ev.flags},
                           "mde": mde, "seeds_needed": seeds_needed(c.paper_value, iv["std"], ev.test_var)
                           if iv and c.kind == "effect" else None,
                           "difference": diff, "verdict": verdict, "reason": reason})
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        train_s = COST.train_s - self._cost0[0]
        train_images = COST.train_images - self._cost0[1]
        reused_s, reused_images = COST.reused_since(self._cost0[2])
        wall = time.time() - self.t0
        record = {
            "schema": SCHEMA,
            "run_id": self.run_id,
            "paper": {"number": self.spec.number, "slug": self.spec.slug, "name": self.spec.name,
                      "title": self.spec.title, "family": self.spec.family},
            "tier": self.tier,
            "status": "dry-run" if self.dry else "complete",
            "params": self.params,
            "overrides": self.explicit,
            "seeds": self.seeds,
            "metrics": metrics,
            "rows": self.rows,
            "claims": claims,
            "verdict": None if self.dry else overall([c["verdict"] for c in claims]),
            "figures": self.figures,
            "cost": {"wall_s": round(wall, 1), "train_s": round(train_s, 1), "train_images": train_images,
                     "images_per_s": round(train_images / train_s, 1) if train_s else None,
                     # training of stored models (artifacts) this run loaded instead of training
                     "reused_train_s": round(reused_s, 1), "reused_train_images": reused_images,
                     "peak_mem_mb": round(peak, 1), "device": self.env["device_name"],
                     # optimizer steps and evaluated batches of this run (a dry run's size check)
                     "work": {k: WORK[k] - self._work0.get(k, 0) for k in ("train_steps", "eval_batches")}},
            "environment": self.env,
            "data": self.data_info,
            "notes": self.notes,
            # choices made after seeing results, and discarded runs ([paper] decisions)
            "decisions": list(self.spec.info.get("decisions", [])),
            "started": self.started,
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        write_json(self.record_path, record)
        self.record = validate(json.loads(self.record_path.read_text()), str(self.record_path))
        return self.record

    def claims_table(self) -> str:
        """The claim-vs-ours table as Markdown (after ``finish``)."""
        from .tables import markdown_table

        rec = self.record or self.finish()
        rows = []
        for c in rec["claims"]:
            pv = "—" if c["paper_value"] is None else f"{c['paper_value']:+g} {c['unit']}"
            o = c["ours"]
            def f(x: Any) -> str:  # an undefined value (an AUROC without positives) is None in JSON
                return "n/a" if x is None else f"{x:+.2f}"
            ours = "—" if o is None else f"{f(o['mean'])} {c['unit']} [{f(o['ci_low'])}, {f(o['ci_high'])}], n={o['n']}"
            mde = "—" if c.get("mde") is None else f"{c['mde']:.2f}"
            rows.append([c["text"], pv, ours, mde, f"**{c['verdict'] or 'not judged'}**", c["reason"]])
        return markdown_table(["claim", "paper", "ours (mean, 95% CI incl. test-set error, seeds)",
                               "smallest detectable", "verdict", "why"], rows)

    def report(self):
        """Display the claim table in a notebook (Markdown), or return it as text."""
        rec = self.record or self.finish()
        decisions = "".join(f"\n- {d}" for d in rec.get("decisions", []))
        text = self.claims_table() + (
            f"\n\nTier **{self.tier}**, seeds {self.seeds}, wall {rec['cost']['wall_s']} s "
            f"on {rec['cost']['device']}; run `{self.run_id}` "
            f"(repro {__version__}, commit {self.env['git_commit']}{'+dirty' if self.env['git_dirty'] else ''}).")
        if decisions:
            text += "\n\n**Choices made after seeing results, and discarded runs:**" + decisions
        try:
            from IPython.display import Markdown
            return Markdown(text)
        except ImportError:  # pragma: no cover
            return text


def _published_claims(name: str, tier: str) -> dict[str, dict[str, Any]]:
    """key → claim entry of the record the book shows for ``name`` at ``tier`` ({} if none)."""
    from .paths import results_dir
    from .records import read_record

    path = results_dir() / f"{name}.{tier}.json"
    if not path.is_file():
        return {}
    try:
        rec = read_record(path)
    except RecordError:
        return {}
    return {c.get("key") or c["metric"]: c for c in rec["claims"]}


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


def resolve_notebook_params(spec: PaperSpec, ns: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(resolved parameters, explicitly set ones) of a notebook namespace; no torch needed.

    Unknown injected names, ill-typed values and a bad tier raise ParameterError. papermill's
    ``-p NAME VALUE`` passes text: a text value for a parameter whose default is not text is
    read as a Python literal (``-p seeds "[0, 1, 2]"``).
    """
    injected = _injected(ns)
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
    for k in injected:
        if isinstance(ns[k], str) and not isinstance(defaults[k], str):
            ns[k] = parse_text_value(spec.name, k, ns[k])
    explicit = {k: ns[k] for k in spec.params if k != "tier" and (k in injected or ns[k] != defaults[k])}
    for k, v in explicit.items():  # type errors first, with the parameter's name
        check_type(spec.name, k, v, defaults[k])
    return spec.resolve(tier, explicit), explicit


def start(slug: str, ns: dict[str, Any]) -> Run:
    """Validate the notebook's parameters, apply the tier, seed, pick the device, open a run.

    ns: the notebook's ``globals()``. Unknown parameters (passed by papermill) or values of
    the wrong type raise ParameterError listing the valid parameters. Tier overrides apply
    to every parameter the caller did not set; the resolved values are written back into
    ``ns`` so later cells use them.
    """
    spec = load_spec(slug)
    params, explicit = resolve_notebook_params(spec, ns)
    _inline_figures()
    ns.update(params)
    device = pick_device(params["device"])
    seeds = params.get("seeds", [0])
    seed_everything(int(seeds[0]))
    run = Run(spec, params, device, explicit, run_id=os.environ.get(RUN_ID_ENV) or None,
              folder=Path(os.environ[RUN_DIR_ENV]) if os.environ.get(RUN_DIR_ENV) else None)
    set_ = ", ".join(f"{k}={v!r}" for k, v in explicit.items() if k != "device") or "none"
    print(f"{spec.name} · tier {params['tier']} · device {run.env['device_name']} · seeds {seeds} · "
          f"overrides: {set_} · repro {__version__} ({run.env['git_commit']}) · run id {run.run_id}"
          + (" · DRY RUN" if run.dry else ""))
    _show_markdown(run.tier_table())
    if params["tier"] != "smoke" and not run.dry:
        print(run.power_text())
    return run


def _show_markdown(text: str) -> None:
    """Display Markdown in a notebook kernel; print it elsewhere."""
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
    except ImportError:  # pragma: no cover
        print(text)
        return
    ip = get_ipython()
    if ip is not None and getattr(ip, "kernel", None) is not None:
        display(Markdown(text))
    else:
        print(text)
