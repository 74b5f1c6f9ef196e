"""The catalogue of the book's 41 papers: number, slug, title and family, as the project's
paper cards give them (``repro/book/catalog.toml``).

The cards live outside the repository (``../shared/papers/NN-slug.md``); :func:`build_catalog`
read them once and the result is committed, so a clone has the list without them. The intro
page lists every paper with its status from it (:func:`repro.book.results.write_paper_list`).
The catalogue sits beside this module rather than in ``repro/papers/``, whose every ``*.toml``
is a paper spec.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

CATALOG = Path(__file__).with_name("catalog.toml")
N_PAPERS = 41


@dataclass(frozen=True)
class Entry:
    number: int
    slug: str
    title: str
    family: str   # the card's family, shortened to its first words ("class-incremental")
    topic: str    # the card's family line in full ("class-incremental (evaluation protocol)")

    @property
    def name(self) -> str:
        return f"{self.number:02d}-{self.slug}"


def load_catalog(path: Path | None = None) -> list[Entry]:
    """The papers of the book, by number."""
    raw = tomllib.loads(Path(path or CATALOG).read_text(encoding="utf-8"))
    out = [Entry(int(p["number"]), str(p["slug"]), str(p["title"]), str(p["family"]), str(p.get("topic", p["family"])))
           for p in raw.get("papers", [])]
    return sorted(out, key=lambda e: e.number)


_HEAD = re.compile(r"^#\s*(\d+)\s*·\s*([a-z0-9-]+)\s*—\s*(.+?)\s*$")
_FAMILY = re.compile(r"\*\*Family:\*\*\s*(.+?)(?:\s*·\s*\*\*|$)")


def parse_card(text: str) -> Entry:
    """One card's header (``# 03 · adasmooth — Title``) and ``**Family:**`` line."""
    head = _HEAD.match(text.splitlines()[0].strip())
    if head is None:
        raise ValueError(f"not a paper card header: {text.splitlines()[0]!r}")
    fam = next((m.group(1).strip() for line in text.splitlines() if (m := _FAMILY.search(line))), "")
    short = fam.split(" (")[0].strip()
    return Entry(int(head.group(1)), head.group(2), head.group(3), short, fam)


def build_catalog(cards: Path, dest: Path | None = None) -> Path:
    """Write the catalogue from the cards ``cards/NN-slug.md`` (run once; the file is committed)."""
    entries = sorted((parse_card(p.read_text(encoding="utf-8")) for p in Path(cards).glob("[0-9][0-9]-*.md")),
                     key=lambda e: e.number)

    def q(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ["# The book's papers, from the project's paper cards (repro.book.catalog.build_catalog).",
             "# number, slug and title as the card's header gives them; family as its **Family:** line.", ""]
    for e in entries:
        lines += ["[[papers]]", f"number = {e.number}", f"slug = {q(e.slug)}", f"title = {q(e.title)}",
                  f"family = {q(e.family)}", f"topic = {q(e.topic)}", ""]
    dest = Path(dest or CATALOG)
    dest.write_text("\n".join(lines), encoding="utf-8")
    return dest
