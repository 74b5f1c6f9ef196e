"""The results page: one row per claim of each paper's published record, audited, with its
verdict badge; the same rows as CSV.

``repro results`` calls :func:`write_results`. Nothing here imports torch.
"""
from __future__ import annotations

import csv
import io
import json
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..io import atomic_write_text
from ..paths import book_dir, chapters_dir, results_dir
from ..records import RecordSet, audited, best_record
from ..tables import cell, markdown_table
from ..verdicts import VERDICTS

# -- locations ---------------------------------------------------------------------------
def _specs(specs: Sequence[Any] | None) -> list[Any]:
    if specs is not None:
        return sorted(specs, key=lambda s: s.number)
    from ..papers import all_specs

    return all_specs()


def chapter_path(name: str) -> Path:
    """Where a published executed notebook of paper ``NN-slug`` lives."""
    return chapters_dir() / f"{name}.ipynb"


def shown_records(specs: Sequence[Any] | None = None) -> RecordSet:
    """Every valid record of the results folder, audited against the published chapters."""
    return audited(results_dir(), chapters_dir())


# -- formatting --------------------------------------------------------------------------
def _num(v: Any, fmt: str = ".2f") -> str:
    if v is None:
        return "—"
    try:
        return format(float(v), fmt)
    except (TypeError, ValueError):
        return str(v)


def _cell(text: Any) -> str:
    """Text safe inside a Markdown table cell (empty for None)."""
    return "" if text is None else cell(text)


def verdict_badge(verdict: str) -> str:
    """``<span class="verdict verdict-partly">partly</span>`` (styled by verdicts.css)."""
    slug = re.sub(r"[^a-z]+", "-", str(verdict).lower()).strip("-") or "unknown"
    return f'<span class="verdict verdict-{slug}">{verdict}</span>'


def _ours(claim: dict[str, Any]) -> str:
    o = claim.get("ours")
    if not o or not o.get("n"):
        return "—"
    sign = "+" if claim.get("kind") == "effect" else ""
    f = f"{sign}.2f"
    if int(o["n"]) < 2:
        return f"{_num(o.get('mean'), f)}<br><small>1 seed: no interval</small>"
    return (f"{_num(o.get('mean'), f)} ± {_num(o.get('std'))}<br>"
            f"<small>[{_num(o.get('ci_low'), f)}, {_num(o.get('ci_high'), f)}]</small>")


def _paper_value(claim: dict[str, Any]) -> str:
    v = claim.get("paper_value")
    if v is None:
        return "—"
    sign = "+" if claim.get("kind") == "effect" else ""
    return f"{float(v):{sign}g} {claim.get('unit', '')}".strip()


def _cost(rec: dict[str, Any]) -> str:
    c = rec.get("cost") or {}
    parts = []
    if c.get("wall_s") is not None:
        parts.append(f"{float(c['wall_s']):.0f} s")
    if c.get("images_per_s"):
        parts.append(f"{float(c['images_per_s']):,.0f} img/s")
    return "<br>".join(parts) or "—"


CSV_COLUMNS = ["paper", "title", "family", "claim_id", "claim", "metric", "kind", "direction",
               "unit", "paper_value", "ours_mean", "ours_std", "ours_ci_low", "ours_ci_high",
               "seeds_n", "difference", "verdict", "reason", "tier", "wall_s", "images_per_s",
               "device", "record", "git_commit"]


def result_rows(records: list[dict[str, Any]], specs: Sequence[Any]) -> list[tuple[dict, dict]]:
    """(record, claim) pairs for the results table: the best record of each paper that has
    a spec or a record, by paper number."""
    names = {s.name: s.number for s in specs}
    for rec in records:
        names.setdefault(rec["paper"]["name"], int(rec["paper"].get("number", 999)))
    rows = []
    for name in sorted(names, key=lambda n: (names[n], n)):
        rec = best_record(records, name)
        if rec is None:
            continue
        for claim in rec.get("claims") or []:
            rows.append((rec, claim))
    return rows


UNVERIFIED = "unverified"


def shown_verdict(rec: dict[str, Any], claim: dict[str, Any]) -> str:
    """The claim's verdict, or "unverified" when its record fails the integrity audit."""
    audit = rec.get("_audit")
    if audit is not None and not audit.trusted:
        return UNVERIFIED
    return str(claim.get("verdict") or "—")


# -- results page ------------------------------------------------------------------------
def write_results(root: Path | None = None, specs: Sequence[Any] | None = None) -> Path:
    """Write ``results.md`` (into the book folder) and ``results.csv`` (into the results
    folder) from the published run records; both folders honour ``REPRO_BOOK`` /
    ``REPRO_RESULTS``.

    One row per claim of each paper's largest-tier record (paper > gpu > cpu; smoke records
    never appear). A record that fails its audit (``repro.records.audit``) shows
    *unverified* instead of its verdict, with the reason; provenance warnings (a dirty tree,
    a commit not in the history) are shown beside the verdict. Records that do not parse are
    listed. specs: the papers (default ``repro.papers.all_specs()``). Returns the Markdown
    file's path.
    """
    specs = _specs(specs)
    rs = shown_records(specs)
    records = rs.records
    rows = result_rows(records, specs)
    shown = list({id(r): r for r, _ in rows}.values())
    chapters = {s.name for s in specs if chapter_path(s.name).is_file()}

    md = ["# Results", "",
          "<!-- Generated by `repro results` (repro.book.write_results) from results/*.json. "
          "Do not edit: your changes would be overwritten. -->", "",
          "Every row is one claim, judged on the largest tier that has a finished run record "
          "(paper > gpu > cpu; smoke runs only check the mechanics and are not shown). "
          "*Ours* is the mean ± standard deviation over seeds with the Student-t 95% interval; "
          "*difference* is ours − paper. The verdict follows the rule in "
          "{doc}`the protocol <protocol>`; the same table is in `results/results.csv`. "
          "Every record is checked against its executed chapter, its figures and its own numbers; "
          f"one that fails is shown as {verdict_badge(UNVERIFIED)} with the reason.", ""]

    counts: dict[str, int] = {v: 0 for v in (*VERDICTS, UNVERIFIED)}
    for rec, c in rows:
        v = shown_verdict(rec, c)
        counts[v] = counts.get(v, 0) + 1
    if rows:
        md += [f"**{len(rows)} claims from {len(shown)} papers:** " + ", ".join(
            f"{verdict_badge(v)} {n}" for v, n in counts.items() if n) + ".", ""]

        md += [":::{table} Claims and what our runs found", ":class: results-table", ":name: results-table", "",
               "| paper | claim (and why the verdict) | metric | paper | ours (mean ± std, 95% CI) "
               "| difference | verdict | tier | seeds | cost |",
               "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for rec, c in rows:
            name = rec["paper"]["name"]
            paper = f"{{doc}}`{name} <chapters/{name}>`" if name in chapters else name
            claim_text = _cell(c.get("text"))
            audit = rec.get("_audit")
            why = [c["reason"]] if c.get("reason") else []
            if audit is not None:
                why = (["unverified: " + "; ".join(audit.integrity)] if audit.integrity else why) + \
                    [f"⚠ {w}" for w in audit.provenance]
            if why:
                claim_text += f"<br><small>{_cell(' · '.join(why))}</small>"
            diff = c.get("difference")
            md.append("| " + " | ".join([
                paper, claim_text, f"`{_cell(c.get('metric'))}`", _cell(_paper_value(c)),
                _ours(c).replace("|", "\\|"), _num(diff, "+.2f"), verdict_badge(shown_verdict(rec, c)),
                _cell(rec.get("tier")), str((c.get("ours") or {}).get("n") or len(rec.get("seeds") or [])),
                _cell(_cost(rec))]) + " |")
        md += [":::", ""]
    else:
        md += ["No finished cpu, gpu or paper run yet: run a chapter with "
               "`repro run <paper> --tier cpu`, then `repro results`.", ""]

    if rs.errors:
        md += ["## Records that could not be read", "",
               "These files in the results folder are not valid run records and are not shown above.", ""]
        md += [f"- {_cell(str(e))}" for e in rs.errors] + [""]

    missing = [s for s in specs if best_record(records, s.name) is None]
    if missing:
        md += ["## Papers without a record yet", "",
               "These papers have a spec (claims and parameters) but no finished cpu, gpu or "
               "paper run yet.", ""]
        md.append(markdown_table(["paper", "title", "family", "status"], [
            [f"{{doc}}`{s.name} <chapters/{s.name}>`" if s.name in chapters else s.name, s.title, s.family,
             "not yet run"] for s in missing]))
        md.append("")

    bench = _bench_table()
    if bench:
        md += ["## Training speed", "",
               "Measured with `repro bench` (training images per second after a warm-up; "
               "from `results/bench.json`).", ""] + bench + [""]

    if shown:
        md += ["## Sources", ""]
        for rec in shown:
            env = rec.get("environment") or {}
            commit = env.get("git_commit", "unknown") + ("+dirty" if env.get("git_dirty") else "")
            device = (rec.get("cost") or {}).get("device") or env.get("device_name") or "?"
            run = f", run `{rec['run_id']}`" if rec.get("run_id") else ""
            md.append(f"- {rec['paper']['name']}: generated from `results/{rec['_file']}`{run} at commit "
                      f"`{commit}` (repro {env.get('repro_version', '?')}, torch "
                      f"{env.get('torch', '?')}, {_cell(device)}; finished {rec.get('finished', '?')}).")
        md.append("")

    out = atomic_write_text(book_dir() / "results.md", "\n".join(md))
    _write_csv(rows)
    return out


def _bench_table() -> list[str]:
    path = results_dir() / "bench.json"
    if not path.is_file():
        return []
    try:
        runs = json.loads(path.read_text(encoding="utf-8"))["runs"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        warnings.warn(f"skipping {path}: {exc}", stacklevel=2)
        return []
    if not runs:
        return []
    lines = ["| model | device | dtype | batch | images/s | when |", "| --- | --- | --- | --- | --- | --- |"]
    for r in sorted(runs, key=lambda r: (str(r.get("device_name")), str(r.get("model")))):
        ips = r.get("images_per_s")
        lines.append("| " + " | ".join(_cell(x) for x in (
            r.get("model"), r.get("device_name") or r.get("device"), r.get("dtype"), r.get("batch_size"),
            f"{float(ips):,.0f}" if ips is not None else "—", str(r.get("when", ""))[:10])) + " |")
    return lines


def _write_csv(rows: list[tuple[dict, dict]]) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for rec, c in rows:
        o = c.get("ours") or {}
        cost = rec.get("cost") or {}
        env = rec.get("environment") or {}
        w.writerow({
            "paper": rec["paper"]["name"], "title": rec["paper"].get("title", ""),
            "family": rec["paper"].get("family", ""), "claim_id": c.get("id", ""),
            "claim": c.get("text", ""), "metric": c.get("metric", ""), "kind": c.get("kind", ""),
            "direction": c.get("direction", ""), "unit": c.get("unit", ""),
            "paper_value": c.get("paper_value"), "ours_mean": o.get("mean"), "ours_std": o.get("std"),
            "ours_ci_low": o.get("ci_low"), "ours_ci_high": o.get("ci_high"), "seeds_n": o.get("n"),
            "difference": c.get("difference"), "verdict": shown_verdict(rec, c),
            "reason": c.get("reason", ""), "tier": rec.get("tier", ""), "wall_s": cost.get("wall_s"),
            "images_per_s": cost.get("images_per_s"), "device": cost.get("device", ""),
            "record": f"results/{rec['_file']}", "git_commit": env.get("git_commit", ""),
        })
    return atomic_write_text(results_dir() / "results.csv", buf.getvalue())
