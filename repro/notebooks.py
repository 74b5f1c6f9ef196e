"""Chapter notebook sources: finding them and keeping their parameters cell in step with the spec."""
from __future__ import annotations

import json
from pathlib import Path

from .io import atomic_write_text
from .papers import load_spec
from .paths import project_root


def source_path(slug: str) -> Path:
    """``notebooks/NN-slug.ipynb`` of a paper (by slug or NN-slug)."""
    return project_root() / "notebooks" / f"{load_spec(slug).name}.ipynb"


def sync_parameters(slug: str) -> Path | None:
    """Rewrite the notebook's ``parameters`` cell from its spec (``PaperSpec.parameters_source``).

    Returns the notebook's path if it changed, None if it was already in step. The cell must
    be the first code cell and tagged ``parameters`` (ValueError otherwise).
    """
    spec = load_spec(slug)
    path = source_path(slug)
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    if not code or "parameters" not in code[0].get("metadata", {}).get("tags", []):
        raise ValueError(f"{path}: the first code cell must be tagged 'parameters'")
    text = spec.parameters_source()
    lines = text.splitlines(keepends=True)
    if "".join(code[0]["source"]) == text:
        return None
    code[0]["source"] = lines
    atomic_write_text(path, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return path
