"""Run records: their schema, reading them back, and checking that they can be trusted.

A record is the JSON a chapter's run writes (``repro.run.Run.finish``): parameters, per-seed
metrics, claims with verdicts, figures, cost and provenance. Published records live in
``results/NN-slug.TIER.json``, their figures in ``results/figures/NN-slug/TIER/`` and the
executed notebook in ``book/chapters/NN-slug.ipynb`` (see ``repro.publish``).

Nothing is trusted blindly. :func:`read_record` checks a file against its schema version and
raises :class:`RecordError` naming the file. :func:`audit` then checks that the record agrees
with what was published beside it:

* the executed chapter comes from the same run (schema 2: the same run id in the notebook's
  metadata; schema 1, written before run ids: the record's start time lies within the
  notebook's papermill execution window, at the same tier);
* every figure it names exists and, from schema 2 on, carries the same run id;
* each claim's summary follows from the per-seed values, and each verdict from the rule in
  ``repro.verdicts``;
* the commit it was made at is in this repository's history, from a clean tree.

The first three are *integrity* problems: the results page shows such a record as
*unverified* instead of its verdict. The last is a *provenance* warning, shown beside it.
Nothing here imports torch.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import RecordError

SCHEMA = 3
KNOWN_SCHEMAS = (1, 2, 3)
STATUSES = ("complete", "dry-run")
RECORD_NAME = re.compile(r"^(\d\d-[a-z0-9_]+)\.(smoke|cpu|gpu|paper)\.json$")

# key → type(s) the value must have, per schema version (only what readers rely on).
_COMMON: dict[str, Any] = {
    "paper": dict, "tier": str, "status": str, "params": dict, "seeds": list, "metrics": dict,
    "claims": list, "figures": dict, "cost": dict, "environment": dict, "started": str, "finished": str,
}
_REQUIRED = {
    1: {**_COMMON, "verdict": str},
    2: {**_COMMON, "verdict": (str, type(None)), "run_id": str, "overrides": dict, "rows": list},
}
# Schema 3: the verdict rule with intervals that count test-set error, guards and power; each
# claim carries its evidence (test-set variance, guards) beside its summary.
_REQUIRED[3] = _REQUIRED[2]
_CLAIM_KEYS = {"id": str, "text": str, "metric": str, "kind": str, "direction": str, "verdict": (str, type(None)),
               "reason": str}


def _type_name(t: Any) -> str:
    return " or ".join(x.__name__ for x in t) if isinstance(t, tuple) else t.__name__


def validate(rec: Any, where: str = "record") -> dict[str, Any]:
    """Return ``rec`` if it matches its schema version, else raise RecordError naming ``where``."""
    def fail(msg: str) -> RecordError:
        return RecordError(f"{where}: {msg}")

    if not isinstance(rec, dict):
        raise fail(f"not a run record (a JSON {type(rec).__name__}, not an object)")
    schema = rec.get("schema")
    if schema not in KNOWN_SCHEMAS:
        raise fail(f"unknown schema {schema!r}; this repro reads schema {', '.join(map(str, KNOWN_SCHEMAS))}")
    for key, typ in _REQUIRED[schema].items():
        if key not in rec:
            raise fail(f"schema {schema} record lacks '{key}'")
        if not isinstance(rec[key], typ):
            raise fail(f"'{key}' is a {type(rec[key]).__name__}, expected {_type_name(typ)}")
    paper = rec["paper"]
    for key in ("number", "slug"):
        if key not in paper:
            raise fail(f"'paper' lacks '{key}'")
    paper.setdefault("name", f"{int(paper['number']):02d}-{paper['slug']}")
    if rec["status"] not in STATUSES:
        raise fail(f"status {rec['status']!r} is not one of {', '.join(STATUSES)}")
    if rec["tier"] not in ("smoke", "cpu", "gpu", "paper"):
        raise fail(f"unknown tier {rec['tier']!r}")
    for i, c in enumerate(rec["claims"]):
        if not isinstance(c, dict):
            raise fail(f"claim {i} is not an object")
        for key, typ in _CLAIM_KEYS.items():
            if key not in c:
                raise fail(f"claim {c.get('id', i)!r} lacks '{key}'")
            if not isinstance(c[key], typ):
                raise fail(f"claim {c.get('id', i)!r}: '{key}' is a {type(c[key]).__name__}, "
                           f"expected {_type_name(typ)}")
    if rec["status"] == "dry-run" and schema >= 2:
        if rec["verdict"] is not None or any(c["verdict"] is not None for c in rec["claims"]):
            raise fail("a dry-run record carries a verdict (dry runs are never judged)")
    for name, m in rec["metrics"].items():
        if not isinstance(m, dict) or not isinstance(m.get("per_seed"), dict):
            raise fail(f"metric {name!r} has no per-seed values")
    return rec


def read_record(path: str | Path) -> dict[str, Any]:
    """Parse and validate one record file; RecordError (naming the file) if it is not one."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecordError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); the file is "
                          f"truncated or damaged: re-run the chapter, or restore it from git") from exc
    return validate(rec, str(path))


@dataclass
class RecordSet:
    """Every record of a results folder that validated, and the files that did not."""

    records: list[dict[str, Any]] = field(default_factory=list)
    errors: list[RecordError] = field(default_factory=list)


def record_files(results: Path) -> list[Path]:
    """``NN-slug.TIER.json`` files of a results folder (not bench.json, results.csv…)."""
    return sorted(p for p in Path(results).glob("*.json") if RECORD_NAME.match(p.name))


def load_records(results: Path) -> RecordSet:
    """Read every record of ``results``; each gets ``_file`` (its path) and ``_problems``
    filled in later by :func:`audit`. Invalid files are collected in ``errors``."""
    out = RecordSet()
    for path in record_files(results):
        try:
            rec = read_record(path)
        except RecordError as exc:
            out.errors.append(exc)
            continue
        m = RECORD_NAME.match(path.name)
        if m and (m.group(1) != rec["paper"]["name"] or m.group(2) != rec["tier"]):
            out.errors.append(RecordError(f"{path}: holds {rec['paper']['name']} at tier {rec['tier']}, "
                                          "which its file name contradicts"))
            continue
        rec["_file"] = path.name
        out.records.append(rec)
    return out


# -- audit ---------------------------------------------------------------------------------
@dataclass
class Audit:
    """What is wrong with a record: integrity problems (don't show its verdict) and provenance
    warnings (show it, flagged)."""

    integrity: list[str] = field(default_factory=list)
    provenance: list[str] = field(default_factory=list)

    @property
    def trusted(self) -> bool:
        return not self.integrity


def _parse_time(text: str) -> _dt.datetime | None:
    try:
        t = _dt.datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc)


def notebook_run_id(nb: dict[str, Any]) -> str | None:
    """The run id an executed chapter carries (metadata written by ``repro run``, else the
    ``run <id>`` that ``repro.start`` prints)."""
    rid = (nb.get("metadata") or {}).get("repro", {}).get("run_id")
    if rid:
        return str(rid)
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []) or []:
            text = out.get("text")
            if isinstance(text, list):
                text = "".join(text)
            m = re.search(r"\brun id (\S+)", text or "")
            if m:
                return m.group(1)
    return None


def notebook_matches(rec: dict[str, Any], nb: dict[str, Any]) -> str | None:
    """None if the executed notebook ``nb`` comes from the run of ``rec``, else why not."""
    if rec.get("schema", 1) >= 2:
        rid = notebook_run_id(nb)
        if rid != rec.get("run_id"):
            return f"its chapter notebook comes from run {rid or '(none)'}, not {rec.get('run_id')}"
        return None
    pm = (nb.get("metadata") or {}).get("papermill") or {}
    t0, t1, started = _parse_time(pm.get("start_time", "")), _parse_time(pm.get("end_time", "")), \
        _parse_time(rec.get("started", ""))
    tier = (pm.get("parameters") or {}).get("tier")
    if None in (t0, t1, started) or tier != rec.get("tier"):
        return "its chapter notebook was not executed at this record's tier and time"
    slack = _dt.timedelta(seconds=5)
    if not (t0 - slack <= started <= t1 + slack):
        return "its chapter notebook was executed at another time than this record's run"
    return None


def _summary_agrees(claim: dict[str, Any], metric: dict[str, Any] | None, test_var: float | None = None) -> bool:
    """Does the claim's summary follow from the per-seed values (schema 3: with the test-set
    variance it records; earlier: the plain Student-t interval over seeds)?"""
    from .metrics import mean_ci
    from .verdicts import interval

    ours = claim.get("ours")
    if ours is None or metric is None:
        return ours is None
    values = [float(v) for v in metric["per_seed"].values()]
    fresh = interval(values, test_var) if test_var is not None else mean_ci(values)
    for key in ("mean", "ci_low", "ci_high"):
        a, b = ours.get(key), fresh.get(key)
        if a is None or b is None or (isinstance(b, float) and math.isnan(b)):
            if not (a is None or (isinstance(a, float) and math.isnan(a))) or not (b is None or math.isnan(b)):
                return False
            continue
        if abs(float(a) - float(b)) > 1e-6 * max(1.0, abs(float(b))):
            return False
    return int(ours.get("n", -1)) == fresh["n"]


def claim_from_record(c: dict[str, Any]) -> Any:
    """The ``repro.papers.Claim`` a record's claim entry was judged as."""
    from .papers import Claim

    fields = {k: c[k] for k in Claim.__dataclass_fields__ if k in c and k not in ("comparable", "tiers")}
    fields["tiers"] = tuple(c.get("tiers") or ())
    fields["comparable"] = tuple(c.get("comparable_tiers") or ())
    return Claim(**fields)


def _rows_agree(claim: dict[str, Any], metric: dict[str, Any], rows: list[dict[str, Any]]) -> bool:
    """A claim that names an arm (and a baseline): are its per-seed values the paired rows?"""
    def of(arm: str) -> dict[str, float]:
        return {str(r["seed"]): r["value"] for r in rows if r["arm"] == arm and r["metric"] == claim["metric"]}
    a = of(claim["arm"])
    want = {s: a[s] - of(claim["baseline"])[s] for s in a if s in of(claim["baseline"])} if claim.get("baseline") else a
    got = metric["per_seed"]
    return set(got) == set(want) and all(abs(float(got[s]) - want[s]) <= 1e-9 * max(1.0, abs(want[s])) for s in want)


def audit(rec: dict[str, Any], results: Path, chapters: Path | None = None,
          repo: Path | None = None) -> Audit:
    """Check ``rec`` (from :func:`load_records`) against its notebook, figures, numbers and
    commit; ``chapters``: the folder of executed chapters (None: don't check the notebook)."""
    from .provenance import commit_known
    from .verdicts import Evidence, claim_evidence, judge

    a = Audit()
    name = rec["paper"]["name"]
    if chapters is not None:
        nb_path = Path(chapters) / f"{name}.ipynb"
        if not nb_path.is_file():
            a.integrity.append("no executed chapter beside it")
        else:
            try:
                nb = json.loads(nb_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                a.integrity.append(f"its chapter notebook cannot be read ({exc})")
            else:
                why = notebook_matches(rec, nb)
                if why:
                    a.integrity.append(why)
    for fig, rel in rec["figures"].items():
        png = Path(results) / rel
        if not png.is_file():
            a.integrity.append(f"figure {fig!r} is missing ({rel})")
            continue
        if rec["schema"] >= 2:
            side = png.with_suffix(".json")
            try:
                rid = json.loads(side.read_text(encoding="utf-8")).get("run_id")
            except (OSError, ValueError, AttributeError):
                rid = None
            if rid != rec["run_id"]:
                a.integrity.append(f"figure {fig!r} comes from run {rid or '(unknown)'}, not this one")
    old_rule = False
    for c in rec["claims"]:
        metric = rec["metrics"].get(c.get("key") or c["metric"])
        if c.get("arm") and metric is not None and not _rows_agree(c, metric, rec.get("rows", [])):
            a.integrity.append(f"claim {c['id']!r}: its per-seed values do not follow from the run's rows")
            continue
        evidence = c.get("evidence") or {}
        test_var = float(evidence.get("test_var", 0.0)) if rec["schema"] >= 3 else None
        if rec["schema"] >= 3 and c.get("arm") and metric is not None:
            claim = claim_from_record(c)
            ev = claim_evidence(claim, rec.get("rows", []))
            if ev is None or abs(ev.test_var - test_var) > 1e-9 * max(1.0, ev.test_var):
                a.integrity.append(f"claim {c['id']!r}: its test-set variance does not follow from the run's rows")
                continue
        if not _summary_agrees(c, metric, test_var):
            a.integrity.append(f"claim {c['id']!r}: its summary does not follow from the per-seed values")
            continue
        if rec["status"] != "complete":
            continue
        if rec["schema"] < 3:
            old_rule = True
            continue
        ev = None if metric is None else Evidence(dict(metric["per_seed"]), test_var or 0.0,
                                                  list(evidence.get("flags", [])))
        verdict, _ = judge(claim_from_record(c), ev, rec["tier"])
        if verdict != c["verdict"]:
            a.integrity.append(f"claim {c['id']!r}: verdict {c['verdict']!r} does not follow from its "
                               f"numbers under the current rule ({verdict!r})")
    if old_rule:
        a.provenance.append(f"judged under an earlier verdict rule (schema {rec['schema']}); "
                            "re-run the chapter to judge it under the current one")
    env = rec["environment"]
    commit = str(env.get("git_commit", "unknown"))
    known = commit_known(commit, cwd=repo)
    if known is False:
        a.provenance.append(f"commit {commit} is not in this repository's history")
    if env.get("git_dirty"):
        a.provenance.append(f"made from uncommitted changes on top of {commit}")
    return a


def audited(results: Path, chapters: Path | None = None) -> RecordSet:
    """:func:`load_records` with each record's :class:`Audit` under ``_audit``."""
    rs = load_records(results)
    for rec in rs.records:
        rec["_audit"] = audit(rec, results, chapters)
    return rs


def best_record(records: Iterable[dict[str, Any]], name: str,
                tiers: tuple[str, ...] = ("paper", "gpu", "cpu")) -> dict[str, Any] | None:
    """The complete record of paper ``name`` from its largest tier among ``tiers`` (never
    smoke or dry-run); among records of one tier the one that finished last."""
    order = ("smoke", "cpu", "gpu", "paper")
    best, best_key = None, None
    for rec in records:
        if rec["paper"]["name"] != name or rec["tier"] not in tiers or rec["status"] != "complete":
            continue
        key = (order.index(rec["tier"]), str(rec.get("finished") or ""))
        if best_key is None or key > best_key:
            best, best_key = rec, key
    return best
