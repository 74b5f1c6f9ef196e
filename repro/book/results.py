"""The results page: one row per claim of each paper's published record, audited, with its
verdict badge; the same rows as CSV.

``repro results`` calls :func:`write_results`. Nothing here imports torch.
"""
from __future__ import annotations

import csv
import html
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
    unit = claim.get("unit", "")
    if claim.get("kind") == "noninferior":
        margin = claim.get("margin")
        return f"not worse by more than {_num(margin, 'g')} {unit}".strip() if margin is not None else "non-inferior"
    v = claim.get("paper_value")
    if v is None:
        return "—"
    sign = "+" if claim.get("kind") == "effect" else ""
    return f"{float(v):{sign}g} {unit}".strip()


def _difference(claim: dict[str, Any]) -> str:
    """ours − paper, only where the tier's setting is comparable with the paper's."""
    if not claim.get("comparable") or claim.get("difference") is None:
        return "—"
    return _num(claim.get("difference"), "+.2f")


def _mde(claim: dict[str, Any]) -> str:
    """The smallest effect the run could detect, with its unit (and the seeds the paper's
    effect would need, when known)."""
    mde = claim.get("mde")
    if mde is None or mde == 0:  # 0: no spread and no test-set error, nothing was estimated
        return "—"
    text = f"{_num(mde)} {claim.get('unit', '')}".strip()
    need = claim.get("seeds_needed")
    if need:
        text += f"<br><small>paper's effect: {int(need)} seeds</small>"
    return text


def _cost(rec: dict[str, Any]) -> str:
    c = rec.get("cost") or {}
    parts = []
    if c.get("wall_s") is not None:
        parts.append(f"{float(c['wall_s']):.0f} s")
    if c.get("images_per_s"):
        parts.append(f"{float(c['images_per_s']):,.0f} img/s")
    if c.get("reused_train_s"):
        parts.append(f"+ {float(c['reused_train_s']):.0f} s of training reused from stored models")
    return ", ".join(parts) or "—"


def shorten(text: str, limit: int = 90) -> str:
    """A claim's text for a summary row: without its trailing parenthesis, at most ``limit``
    characters, cut at a word."""
    text = " ".join(str(text or "").split())
    short = re.sub(r"\s*\([^()]*\)\s*$", "", text) or text
    if len(short) > limit:
        short = short[:limit].rsplit(" ", 1)[0].rstrip(",;:") + "…"
    return short


CSV_COLUMNS = ["paper", "title", "family", "claim_id", "claim", "metric", "kind", "direction",
               "unit", "paper_value", "ours_mean", "ours_std", "ours_ci_low", "ours_ci_high",
               "seeds_n", "difference", "verdict", "reason", "tier", "wall_s", "images_per_s",
               "device", "record", "git_commit", "mde", "seeds_needed", "comparable", "synthesis"]


def result_rows(records: list[dict[str, Any]], specs: Sequence[Any]) -> list[tuple[dict, dict]]:
    """(record, claim) pairs for the results table: the best record of each paper that has
    a spec or a record, by paper number."""
    rows = []
    for rec in shown_papers(records, specs):
        for claim in rec.get("claims") or []:
            rows.append((rec, claim))
    return rows


def shown_papers(records: list[dict[str, Any]], specs: Sequence[Any]) -> list[dict[str, Any]]:
    """The record the book shows for each paper (largest tier, never smoke), by number."""
    names = {s.name: s.number for s in specs}
    for rec in records:
        names.setdefault(rec["paper"]["name"], int(rec["paper"].get("number", 999)))
    out = []
    for name in sorted(names, key=lambda n: (names[n], n)):
        rec = best_record(records, name)
        if rec is not None:
            out.append(rec)
    return out


UNVERIFIED = "unverified"


def shown_verdict(rec: dict[str, Any], claim: dict[str, Any] | None = None) -> str:
    """The claim's verdict (or, without a claim, the paper's), or "unverified" when its
    record fails the integrity audit."""
    audit = rec.get("_audit")
    if audit is not None and not audit.trusted:
        return UNVERIFIED
    if claim is None:
        first = (rec.get("claims") or [{}])[0]
        return str(rec.get("verdict") or first.get("verdict") or "—")
    return str(claim.get("verdict") or "—")


def _is_synthesis(rec: dict[str, Any], synth: set[str]) -> bool:
    return rec["paper"]["name"] in synth or bool(rec["paper"].get("synthesis"))


def _counts(items: list[str]) -> str:
    order = [*VERDICTS, UNVERIFIED]
    seen = {v: items.count(v) for v in dict.fromkeys([*order, *items]) if items.count(v)}
    return ", ".join(f"{verdict_badge(v)} {n}" for v, n in seen.items())


TIER_ORDER = ("paper", "gpu", "cpu")


def _tier_counts(papers: list[dict[str, Any]]) -> list[str]:
    """One row per tier: how many papers and claims are shown from it, with their verdicts."""
    rows = []
    for tier in TIER_ORDER:
        recs = [r for r in papers if r.get("tier") == tier]
        if not recs:
            continue
        claims = [shown_verdict(r, c) for r in recs for c in r.get("claims") or []]
        rows.append([tier, str(len(recs)), _counts([shown_verdict(r) for r in recs]), str(len(claims)),
                     _counts(claims)])
    return rows


def _link(name: str, chapters: set[str], prefix: str = "chapters/") -> str:
    return f"{{doc}}`{name} <{prefix}{name}>`" if name in chapters else name


def _summary_row(rec: dict[str, Any], chapters: set[str]) -> list[str]:
    name = rec["paper"]["name"]
    h = (rec.get("claims") or [{}])[0]
    # a tooltip is plain text: no maths markup; "|" as an entity, so the table row holds
    full = html.escape(" ".join(str(h.get("text") or "").split()), quote=True).replace("|", "&#124;")
    claim = f'<span title="{full}">{_cell(shorten(h.get("text", "")))}</span>'
    seeds = str((h.get("ours") or {}).get("n") or len(rec.get("seeds") or []))
    return [_link(name, chapters), claim, verdict_badge(shown_verdict(rec)), _cell(rec.get("tier")), seeds,
            _mde(h)]


def _claim_row(rec: dict[str, Any], c: dict[str, Any], chapters: set[str]) -> list[str]:
    claim_text = _cell(c.get("text"))
    audit = rec.get("_audit")
    why = [c["reason"]] if c.get("reason") else []
    if audit is not None:
        why = (["unverified: " + "; ".join(audit.integrity)] if audit.integrity else why) + \
            [f"⚠ {w}" for w in audit.provenance]
    if why:
        claim_text += f"<br><small>{_cell(' · '.join(why))}</small>"
    return [_link(rec["paper"]["name"], chapters), claim_text, f"`{_cell(c.get('metric'))}`",
            _cell(_paper_value(c)), _ours(c).replace("|", "\\|"), _difference(c), _mde(c),
            verdict_badge(shown_verdict(rec, c)),
            str((c.get("ours") or {}).get("n") or len(rec.get("seeds") or []))]


def _table(header: list[str], rows: list[list[str]], caption: str, name: str, cls: str) -> list[str]:
    """A MyST table directive (numbered caption, class for the CSS); cells are Markdown."""
    lines = [f":::{{table}} {caption}", f":class: {cls}", f":name: {name}", "",
             "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines + [":::", ""]


SUMMARY_HEADER = ["paper", "headline claim", "verdict", "tier", "seeds", "smallest detectable effect"]
CLAIM_HEADER = ["paper", "claim (and why the verdict)", "metric", "paper", "ours (mean ± std, 95% CI)",
                "difference vs paper", "smallest detectable", "verdict", "seeds"]


# -- results page ------------------------------------------------------------------------
def write_results(root: Path | None = None, specs: Sequence[Any] | None = None) -> Path:
    """Write ``results.md`` (into the book folder) and ``results.csv`` (into the results
    folder) from the published run records; both folders honour ``REPRO_BOOK`` /
    ``REPRO_RESULTS``. Also writes the generated pieces the intro and protocol include
    (:func:`write_generated`).

    The page opens with the verdict counts per tier and one summary row per paper (its
    headline claim, verdict, tier, seeds and the smallest effect the run could detect);
    synthesis chapters (``PaperSpec.synthesis``) are counted and listed apart. Then one row per
    claim, grouped by family. Each paper shows its largest-tier record (paper > gpu > cpu;
    smoke records never appear). A record that fails its audit (``repro.records.audit``) shows
    *unverified* instead of its verdict, with the reason; provenance warnings (a dirty tree, a
    commit not in the history, an earlier rule) are shown beside the verdict. A difference
    vs the paper's value is shown only where the claim says the tier's setting is comparable.
    Records that do not parse are listed. specs: the papers (default
    ``repro.papers.all_specs()``). Returns the Markdown file's path.
    """
    specs = _specs(specs)
    rs = shown_records(specs)
    records = rs.records
    papers_all = shown_papers(records, specs)
    synth = {s.name for s in specs if getattr(s, "synthesis", False)}
    papers = [r for r in papers_all if not _is_synthesis(r, synth)]
    syntheses = [r for r in papers_all if _is_synthesis(r, synth)]
    rows = result_rows(records, specs)
    chapters = {s.name for s in specs if chapter_path(s.name).is_file()}
    family = {s.name: s.family for s in specs}

    md = ["# Results", "",
          "<!-- Generated by `repro results` (repro.book.write_results) from results/*.json. "
          "Do not edit: your changes would be overwritten. -->", "",
          "Each paper is judged on the largest tier that has a finished run record "
          "(paper > gpu > cpu; smoke runs only check the mechanics and are not shown). "
          "A paper's verdict is its headline (first) claim's, by the rule in "
          "{doc}`the protocol <protocol>`. *Smallest detectable effect*: the smallest true effect "
          "the run would have detected (95% two-sided, 80% power), in the claim's unit. "
          "Every record is checked against its executed chapter, its figures and its own numbers; "
          f"one that fails is shown as {verdict_badge(UNVERIFIED)} with the reason. "
          "The same rows are in `results/results.csv`.", ""]

    if papers_all:
        n_claims = sum(len(r.get("claims") or []) for r in papers)
        md += [f"**{len(papers)} papers with a record ({n_claims} claims)**"
               + (f", and {len(syntheses)} synthesis chapter{'s' if len(syntheses) != 1 else ''} "
                  "of this book counted apart" if syntheses else "") + ". Verdicts by tier:", ""]
        md += _table(["tier", "papers", "papers' verdicts", "claims", "claims' verdicts"], _tier_counts(papers),
                     "Verdicts per tier (papers only)", "results-tiers", "results-table results-counts")
        md += ["## Summary", ""]
        if papers:
            md += _table(SUMMARY_HEADER, [_summary_row(r, chapters) for r in papers],
                         "One row per paper: its headline claim", "results-summary", "results-table results-summary")
        if syntheses:
            md += ["Synthesis chapters compare methods of several papers of this book; they are not "
                   "papers and are not counted above.", ""]
            md += _table(SUMMARY_HEADER, [_summary_row(r, chapters) for r in syntheses],
                         "Synthesis chapters", "results-synthesis", "results-table results-summary")
        md += ["## Claims by family", "",
               "Every judged claim. *Difference vs paper* is ours − paper, shown only where the "
               "tier's setting is comparable with the paper's (otherwise the paper's value is "
               "context, not a target).", ""]
        by_family: dict[str, list[tuple[dict, dict]]] = {}
        for rec, c in rows:
            fam = family.get(rec["paper"]["name"]) or rec["paper"].get("family") or "other"
            by_family.setdefault(fam, []).append((rec, c))
        for fam, items in by_family.items():
            slug = re.sub(r"[^a-z0-9]+", "-", fam.lower()).strip("-")
            md += [f"### {fam[:1].upper() + fam[1:]}", ""]
            md += _table(CLAIM_HEADER, [_claim_row(r, c, chapters) for r, c in items],
                         f"Claims of the {fam} chapters", f"results-{slug}", "results-table results-claims")
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
            [_link(s.name, chapters), s.title, s.family, "not yet run"] for s in missing]))
        md.append("")

    bench = _bench_table()
    if bench:
        md += ["## Training speed", "",
               "Measured with `repro bench` (training images per second after a warm-up; "
               "from `results/bench.json`).", ""] + bench + [""]

    if papers_all:
        md += ["## Sources", ""]
        for rec in papers_all:
            env = rec.get("environment") or {}
            commit = env.get("git_commit", "unknown") + ("+dirty" if env.get("git_dirty") else "")
            device = (rec.get("cost") or {}).get("device") or env.get("device_name") or "?"
            run = f", run `{rec['run_id']}`" if rec.get("run_id") else ""
            md.append(f"- {rec['paper']['name']}: generated from `results/{rec['_file']}`{run} at commit "
                      f"`{commit}` (repro {env.get('repro_version', '?')}, torch "
                      f"{env.get('torch', '?')}, {_cell(device)}; {_cost(rec)}; finished {rec.get('finished', '?')}).")
        md.append("")

    out = atomic_write_text(book_dir() / "results.md", "\n".join(md))
    _write_csv(rows, synth)
    write_generated(specs, records)
    return out


# -- pieces the hand-written pages include ----------------------------------------------
GENERATED = "_generated"


def rule_markdown() -> str:
    """The verdict rule as the book prints it: ``repro.verdicts.RULE_MARKDOWN`` (or, in an
    older package, the module's documentation after its summary line)."""
    from .. import verdicts

    rule = getattr(verdicts, "RULE_MARKDOWN", None)
    if not rule:
        rule = (verdicts.__doc__ or "").split("\n", 1)[-1]
    return rule.strip() + "\n"


def paper_list(records: list[dict[str, Any]], specs: Sequence[Any]) -> str:
    """The intro's list of the book's papers (from the catalogue): a chapter with its
    verdict where a record exists, a chapter not yet run, or planned."""
    from .catalog import load_catalog

    chapters = {s.name for s in specs if chapter_path(s.name).is_file()}
    rows = []
    for e in load_catalog():
        rec = best_record(records, e.name)
        if rec is not None:
            status = f"chapter ({verdict_badge(shown_verdict(rec))}, {_cell(rec.get('tier'))} tier)"
        elif e.name in chapters:
            status = "chapter (not yet run)"
        else:
            status = "planned"
        link = f"{{doc}}`{e.title} <chapters/{e.name}>`" if e.name in chapters else _cell(e.title)
        rows.append(f"| {e.number} | {link} | {_cell(e.family)} | {status} |")
    n_ch = sum(1 for e in load_catalog() if e.name in chapters)
    lines = ["<!-- Generated by repro.book.write_results from repro/book/catalog.toml and results/: do not edit. -->",
             "", f"{n_ch} of the {len(rows)} papers have a chapter so far; the others are planned.", "",
             ":::{table} The papers of this book and their status", ":class: results-table papers-table",
             ":name: papers-table", "", "| # | paper | family | status |", "| --- | --- | --- | --- |", *rows, ":::", ""]
    synth = [s for s in specs if getattr(s, "synthesis", False)]
    if synth:
        lines += ["Besides the papers, the book has synthesis chapters that compare their methods: " + ", ".join(
            (f"{{doc}}`{s.title} <chapters/{s.name}>`" if s.name in chapters else _cell(s.title)) for s in synth)
                  + ".", ""]
    return "\n".join(lines)


def write_generated(specs: Sequence[Any] | None = None, records: list[dict[str, Any]] | None = None) -> list[Path]:
    """Write ``book/_generated/verdict-rule.md`` (the rule, included by the protocol page) and
    ``book/_generated/papers.md`` (the papers and their status, included by the intro)."""
    specs = _specs(specs)
    if records is None:
        records = shown_records(specs).records
    folder = book_dir() / GENERATED
    folder.mkdir(parents=True, exist_ok=True)
    rule = ("<!-- Generated by repro.book.write_results from repro.verdicts.RULE_MARKDOWN: do not edit. -->\n\n"
            + rule_markdown())
    return [atomic_write_text(folder / "verdict-rule.md", rule),
            atomic_write_text(folder / "papers.md", paper_list(records, specs))]


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
    lines = ["| model | device | dtype | layout | batch | images/s | when |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(runs, key=lambda r: (str(r.get("device_name")), str(r.get("model")), str(r.get("dtype")),
                                         bool(r.get("channels_last")))):
        ips = r.get("images_per_s")
        lines.append("| " + " | ".join(_cell(x) for x in (
            r.get("model"), r.get("device_name") or r.get("device"), r.get("dtype"),
            "channels_last" if r.get("channels_last") else "NCHW", r.get("batch_size"),
            f"{float(ips):,.0f}" if ips is not None else "—", str(r.get("when", ""))[:10])) + " |")
    return lines


def _write_csv(rows: list[tuple[dict, dict]], synth: set[str] = frozenset()) -> Path:
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
            "difference": c.get("difference") if c.get("comparable") else None, "verdict": shown_verdict(rec, c),
            "reason": c.get("reason", ""), "tier": rec.get("tier", ""), "wall_s": cost.get("wall_s"),
            "images_per_s": cost.get("images_per_s"), "device": cost.get("device", ""),
            "record": f"results/{rec['_file']}", "git_commit": env.get("git_commit", ""),
            "mde": c.get("mde"), "seeds_needed": c.get("seeds_needed"), "comparable": c.get("comparable"),
            "synthesis": _is_synthesis(rec, set(synth)),
        })
    return atomic_write_text(results_dir() / "results.csv", buf.getvalue())
