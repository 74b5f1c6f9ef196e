"""Markdown tables for chapters and pages: one helper, so every generated table escapes its
cells the same way and lines up with its header."""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

# A plain-text superscript such as D^HT or D^E, outside inline maths.
_SUPERSCRIPT = re.compile(r"(?<![\w$\\])([A-Za-z])\^([A-Za-z0-9]+)\b")


def as_maths(text: str) -> str:
    """Plain-text superscripts written as inline maths (``D^HT`` → ``$D^{HT}$``), leaving
    existing ``$…$`` maths alone, so generated tables render them like the prose does."""
    parts = text.split("$")
    for i in range(0, len(parts), 2):  # even parts lie outside $…$
        parts[i] = _SUPERSCRIPT.sub(r"$\1^{\2}$", parts[i])
    return "$".join(parts)


def cell(value: Any) -> str:
    """Text safe inside a Markdown table cell: ``|`` escaped, newlines folded, plain
    superscripts as maths (``as_maths``); None is "—"."""
    if value is None:
        return "—"
    text = str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip()
    return as_maths(text)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A Markdown table. ``align``: one letter per column (``l``, ``c``, ``r``), default all left.

    Every row must have as many cells as the header (ValueError otherwise)."""
    n = len(header)
    if align is not None and len(align) != n:
        raise ValueError(f"align has {len(align)} letters for {n} columns")
    marks = {"l": "---", "c": ":---:", "r": "---:"}
    lines = ["| " + " | ".join(cell(h) for h in header) + " |",
             "| " + " | ".join(marks[a] for a in (align or "l" * n)) + " |"]
    for i, row in enumerate(rows):
        if len(row) != n:
            raise ValueError(f"row {i} has {len(row)} cells for {n} columns: {list(row)!r}")
        lines.append("| " + " | ".join(cell(c) for c in row) + " |")
    return "\n".join(lines)
