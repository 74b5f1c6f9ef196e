"""The uncertainty family's Markdown tables (through ``repro.tables.markdown_table``)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ...tables import markdown_table
from . import ood
from .dtcp import table_rows

DTCP_COLUMNS = {
    "top1": "top-1 %", "coverage": "coverage %", "size": "set size", "rate_neg_log_py": "abstain %",
    "auc_neg_log_py": "AUC −log p_y", "auc_one_minus_maxp": "AUC 1 − max p", "auc_entropy": "AUC entropy",
    "auc_set_size": "AUC set size",
}


def dtcp_table(tables: Mapping[int, Mapping[str, Mapping[str, float]]], names: Sequence[str]) -> str:
    """Chapter 06: one row per evaluation set (clean test, then each corruption and severity),
    the mean over seeds of the paper-rule sets' top-1, coverage, size, abstention rate and the
    abstention AUC of every score."""
    mean = table_rows(tables, names, list(DTCP_COLUMNS))
    rows = [[n.replace("_", " ")] + [f"{mean[n][k]:.2f}" if k == "size" else f"{mean[n][k]:.1f}" for k in DTCP_COLUMNS]
            for n in names]
    return markdown_table(["set", *DTCP_COLUMNS.values()], rows)


def ood_table(result: Any, models: Sequence[str], detectors: Sequence[str], oods: Sequence[str],
              cost: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None, top1: bool = False) -> str:
    """Chapters 31 and 44: one row per (model, detector): AUROC on each OOD set (mean over
    seeds), then the mean over sets with its 95% interval, FPR@95 likewise, and optionally the
    model's top-1 and each detector's cost (fit seconds, milliseconds per 1,000 images)."""
    auroc = ood.summary(result, detectors, oods, "auroc")
    header = ["model"] + (["top-1 %"] if top1 else []) + ["detector"] + [f"AUROC {o}" for o in oods] \
        + ["AUROC mean [95% CI]", "FPR@95 mean [95% CI]"] + (["fit s", "ms / 1k images"] if cost else [])
    rows = []
    for m in models:
        acc = result.per_seed("top1", m)
        for d in detectors:
            row = [m] + ([f"{sum(acc.values()) / max(1, len(acc)):.1f}"] if top1 else []) + [d]
            row += [f"{auroc[m][d][o]:.1f}" for o in oods]
            row += [f"**{ood.with_interval(result, m, f'auroc_{d}')}**", ood.with_interval(result, m, f"fpr95_{d}")]
            if cost:
                row += [f"{cost[m][d]['fit_s']:.2f}", f"{cost[m][d]['score_ms_per_1k']:.1f}"]
            rows.append(row)
    return markdown_table(header, rows)
