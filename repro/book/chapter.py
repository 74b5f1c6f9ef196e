"""What the book adds to an executed chapter: a verdict box under the title, collapsed
parameter cells, numbered figure captions with alt text, and verdict badges in the claim table.

:func:`refresh_chapter` does all of it on a notebook dict, from the chapter's run record;
it is idempotent (a second call changes nothing). ``repro run`` applies it when it stamps an
executed notebook (:func:`repro.publish.stamp_notebook`), and ``repro book`` refreshes every
stored chapter from its current record before building (:func:`refresh_chapters`). Nothing
here imports torch.
"""
from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

from ..io import atomic_write_text

BOX_TAG = "verdict-box"
HIDE_TAG = "hide-cell"
PARAMETER_TAGS = ("parameters", "injected-parameters")
_FIGURE_CALL = re.compile(r"""\brun\.figure\(\s*[^,]+,\s*(?:name\s*=\s*)?["']([^"']+)["']""")


# -- texts -------------------------------------------------------------------------------
def badge_html(verdict: str | None) -> str:
    from .results import verdict_badge

    return verdict_badge(verdict or "not judged")


def headline(record: dict[str, Any]) -> dict[str, Any] | None:
    """The record's headline claim: its first."""
    claims = record.get("claims") or []
    return claims[0] if claims else None


def record_verdict(record: dict[str, Any]) -> str:
    """The verdict the book shows for a record: "unverified" when it failed its audit,
    else the record's (the headline claim's) verdict."""
    from .results import UNVERIFIED

    audit = record.get("_audit")
    if audit is not None and not audit.trusted:
        return UNVERIFIED
    h = headline(record)
    return str(record.get("verdict") or (h or {}).get("verdict") or "not judged")


def seeds_of(record: dict[str, Any]) -> int:
    h = headline(record) or {}
    return int((h.get("ours") or {}).get("n") or len(record.get("seeds") or []))


def _sentence(text: str) -> str:
    text = " ".join(str(text).split())
    if text and text[-1] not in ".!?":
        text += "."
    return text[:1].upper() + text[1:]


def verdict_box(record: dict[str, Any]) -> str:
    """The box under a chapter's title, as HTML (a Markdown cell renders it as is): the
    verdict badge, one sentence (the headline claim's reason), tier, seeds and run id."""
    from .results import UNVERIFIED

    h = headline(record) or {}
    verdict = record_verdict(record)
    audit = record.get("_audit")
    if verdict == UNVERIFIED and audit is not None:
        why = "This record fails its audit: " + "; ".join(audit.integrity)
    else:
        why = h.get("reason") or "No claim was judged."
        if verdict == "partly" and h.get("verdict") == "reproduced":  # repro.verdicts.overall
            bad = [c["id"] for c in record.get("claims", [])[1:] if c.get("verdict") == "not reproduced"]
            why = f"{_sentence(why)} The headline claim holds, but {', '.join(bad)} is not reproduced"
    run_id = record.get("run_id") or "—"
    source = f"results/{record['_file']}" if record.get("_file") else \
        f"results/{record['paper']['name']}.{record.get('tier')}.json"
    return (f'<div class="verdict-box" data-verdict="{html.escape(verdict)}">'
            f'<span class="verdict-box-label">Verdict</span> {badge_html(verdict)} '
            f'<span class="verdict-box-reason">{html.escape(_sentence(why))}</span>'
            f'<div class="verdict-box-meta">tier <b>{html.escape(str(record.get("tier", "?")))}</b> · '
            f'{seeds_of(record)} seeds · run <code>{html.escape(str(run_id))}</code> · '
            f'<code>{html.escape(source)}</code> · <a href="../protocol.html#verdict-rule">the rule</a>'
            f'</div></div>')


# -- the notebook ------------------------------------------------------------------------
def _src(cell: dict[str, Any]) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else str(s)


def _tags(cell: dict[str, Any]) -> list[str]:
    return cell.setdefault("metadata", {}).setdefault("tags", [])


def _title_index(cells: list[dict[str, Any]]) -> int:
    for i, c in enumerate(cells):
        if c.get("cell_type") == "markdown" and re.match(r"\s*#\s", _src(c)):
            return i
    return -1


def _plain(md: str) -> str:
    """Markdown prose as plain text (for alt text): no headings, emphasis, code or maths marks."""
    text = re.sub(r"^#+\s.*$", "", md, flags=re.M)
    text = re.sub(r"\$\$.*?\$\$", "", text, flags=re.S)
    text = re.sub(r"\\([A-Za-z]+)", r" \1", text)
    text = re.sub(r"[*_`$\\]|\{[a-z]+\}", "", text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return " ".join(text.split())


def _first_sentences(text: str, limit: int = 300) -> str:
    out = ""
    for s in re.split(r"(?<=[.!?])\s+", text):
        if out and len(out) + len(s) > limit:
            break
        out = f"{out} {s}".strip()
    return out[:limit]


def _escape_md(text: str) -> str:
    return re.sub(r"([\\`*_\[\]{}<>$|#])", r"\\\1", " ".join(str(text).split()))


def figure_texts(name: str, sidecar: dict[str, Any], prose: str = "") -> tuple[str, str]:
    """(caption, alt text) of a saved figure: ``caption``/``alt`` from its JSON sidecar or
    its PNG's text chunks (written by :func:`repro.plots.style.save`); for older figures, from
    the sidecar's title and setting and the prose just before the figure in the chapter."""
    title = sidecar.get("title") or name.replace("_", " ").capitalize()
    setting = sidecar.get("setting") or ""
    caption = sidecar.get("caption") or (f"{title}. {setting}" if setting else str(title))
    alt = sidecar.get("alt") or (f"Figure: {title}. " + _first_sentences(prose)).strip()
    return str(caption), str(alt)


def _png_texts(png: Path) -> dict[str, str]:
    """Caption and alt text that ``repro.plots.style.save`` stored in the PNG (none in older ones)."""
    if not png.is_file():
        return {}
    try:
        from ..plots.style import figure_texts as read
    except ImportError:  # matplotlib missing: the book still builds, without them
        return {}
    return read(png)


def _figure_outputs(cell: dict[str, Any]) -> tuple[int, int]:
    """(image outputs, all display outputs) of a code cell."""
    shown = [o for o in cell.get("outputs", []) if o.get("output_type") in ("display_data", "execute_result")]
    return sum(1 for o in shown if "image/png" in (o.get("data") or {})), len(shown)


def _badge_claim_table(text: str) -> str:
    """``**verdict**`` cells of a claim table (``| claim | …``) as badges."""
    from ..verdicts import VERDICTS

    if not text.lstrip().startswith("| claim"):
        return text
    states = "|".join(re.escape(v) for v in (*VERDICTS, "not judged", "unverified"))
    return re.sub(rf"\|\s*\*\*({states})\*\*\s*\|", lambda m: f"| {badge_html(m.group(1))} |", text)


def refresh_chapter(nb: dict[str, Any], record: dict[str, Any] | None,
                    figures_root: Path | None = None) -> dict[str, Any]:
    """Bring an executed chapter up to date with its record (in place; returns ``nb``).

    * the tagged ``verdict-box`` Markdown cell right after the title cell, made from the
      record (removed when there is no record);
    * ``hide-cell`` on the ``parameters`` and ``injected-parameters`` cells;
    * each code cell that saves one figure with ``run.figure(fig, "name", …)`` and shows it
      gets myst-nb metadata: a numbered figure with a caption and a name, and the image's alt
      text, from the figure's JSON sidecar (``figures_root / record["figures"][name]`` with
      suffix ``.json``; figures_root defaults to nothing: no sidecar, texts from the chapter);
    * verdicts in the claim table's outputs as badges.
    """
    cells = nb.setdefault("cells", [])
    cells[:] = [c for c in cells if BOX_TAG not in (c.get("metadata") or {}).get("tags", [])]
    if record is not None:
        box = {"cell_type": "markdown", "id": "repro-verdict-box",
               "metadata": {"tags": [BOX_TAG], "repro": {"generated": "repro.book.chapter.verdict_box"}},
               "source": verdict_box(record)}
        if (nb.get("nbformat"), nb.get("nbformat_minor", 0)) < (4, 5):
            del box["id"]   # cell ids came with nbformat 4.5
        cells.insert(_title_index(cells) + 1, box)
    for c in cells:
        tags = (c.get("metadata") or {}).get("tags", [])
        if c.get("cell_type") == "code" and any(t in tags for t in PARAMETER_TAGS) and HIDE_TAG not in tags:
            _tags(c).append(HIDE_TAG)

    figures = (record or {}).get("figures") or {}
    paper = ((record or {}).get("paper") or {}).get("name", "chapter")
    prose = ""
    for c in cells:
        if c.get("cell_type") == "markdown" and BOX_TAG not in c["metadata"].get("tags", []):
            prose = _plain(_src(c)) or prose
            continue
        if c.get("cell_type") != "code":
            continue
        for out in c.get("outputs", []):
            data = out.get("data") or {}
            md = data.get("text/markdown")
            if md is not None:
                old = md if isinstance(md, str) else "".join(md)
                new = _badge_claim_table(old)
                if new != old:
                    data["text/markdown"] = new
        names = [n for n in _FIGURE_CALL.findall(_src(c)) if n in figures]
        images, shown = _figure_outputs(c)
        if len(names) != 1 or images != 1:
            continue
        name = names[0]
        sidecar: dict[str, Any] = {}
        if figures_root is not None:
            png = Path(figures_root) / figures[name]
            try:
                sidecar = json.loads(png.with_suffix(".json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                sidecar = {}
            sidecar = {**_png_texts(png), **sidecar}
        caption, alt = figure_texts(name, sidecar, prose)
        meta = c["metadata"].setdefault("mystnb", {})
        meta["image"] = {"alt": alt}
        if shown == 1:  # myst-nb wraps every display output of the cell in the figure
            meta["figure"] = {"caption": _escape_md(caption), "name": f"fig-{paper}-{name}".lower().replace("_", "-")}
        else:
            meta.pop("figure", None)
    return nb


def refresh_chapter_file(path: Path, record: dict[str, Any] | None, figures_root: Path | None = None) -> bool:
    """:func:`refresh_chapter` on a notebook file; writes it only if something changed.
    Returns whether it did."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    nb = json.loads(text)
    before = json.dumps(nb, sort_keys=True)
    refresh_chapter(nb, record, figures_root)
    if json.dumps(nb, sort_keys=True) == before:
        return False
    atomic_write_text(path, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return True


def refresh_chapters(specs: Any = None) -> list[Path]:
    """Refresh every stored chapter ``book/chapters/NN-slug.ipynb`` from the record the book
    shows for it (audited; largest tier); figures from the results folder. Returns the
    chapters that changed."""
    from ..paths import results_dir
    from ..records import best_record
    from .results import _specs, chapter_path, shown_records

    specs = _specs(specs)
    records = shown_records(specs).records
    changed = []
    for s in specs:
        path = chapter_path(s.name)
        if not path.is_file():
            continue
        rec = best_record(records, s.name)
        if refresh_chapter_file(path, rec, results_dir()):
            changed.append(path)
    return changed
