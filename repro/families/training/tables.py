"""The training family's Markdown tables (built with ``repro.tables.markdown_table``)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ...sweep import SweepResult
from ...tables import markdown_table


def arm_table(result: SweepResult, metrics: Sequence[str], digits: int = 2) -> str:
    """One row per arm of a sweep: per metric, the per-seed values and their mean,
    e.g. ``| M1 | 67.20, 58.40 (62.80) |``."""
    rows = []
    for arm in result.arms():
        cells: list[str] = [arm]
        for m in metrics:
            v = list(result.per_seed(m, arm).values())
            cells.append(", ".join(f"{x:.{digits}f}" for x in v) + f" ({np.mean(v):.{digits}f})" if v else None)
        rows.append(cells)
    return markdown_table(["arm", *[f"{m} per seed (mean)" for m in metrics]], rows, "l" + "r" * len(metrics))


def hardbatch_table(runs: Sequence[Mapping[str, Any]]) -> str:
    """Final test top-1 per (setting, δ): updates, mean over seeds and the per-seed values.

    runs: the per-job dicts of ``repro.families.training.arms.hardbatch.runs(result)``."""
    keys = sorted({(a["setting"], a["delta"]) for a in runs}, key=lambda k: (k[0], -k[1]))
    rows = []
    for setting, delta in keys:
        mine = sorted((a for a in runs if a["setting"] == setting and a["delta"] == delta), key=lambda a: a["seed"])
        accs = [r["final_acc"] for r in mine]
        rows.append([setting, f"{delta:g}", mine[0]["steps"][-1], f"{np.mean(accs):.2f}",
                     ", ".join(f"{v:.2f}" for v in accs)])
    return markdown_table(["setting", "δ", "updates", "final top-1 (mean)", "per seed"], rows, "lrrrl")


def ghostbn_table(results: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """One row per arm: batch, lr, epochs, updates, final top-1 per seed and mean.

    results: ``label → per-seed dicts`` of ``repro.families.training.arms.ghostbn.runs(result)``."""
    rows = []
    for arm, runs in results.items():
        r0 = runs[0]
        accs = [r["final_acc"] for r in runs]
        rows.append([arm, r0["batch_size"], f"{r0['lr']:.4g}", r0["epochs"], r0["updates"],
                     ", ".join(f"{a:.2f}" for a in accs) + f" ({np.mean(accs):.2f})"])
    return markdown_table(["arm", "batch", "lr", "epochs", "updates", "top-1 per seed (mean)"], rows, "lrrrrl")
