"""Markdown tables for chapters and pages: one helper, so every generated table escapes its
cells the same way and lines up with its header."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def cell(value: Any) -> str:
    """Text safe inside a Markdown table cell: ``|`` escaped, newlines folded; None is "—"."""
    if value is None:
        return "—"
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip()


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
