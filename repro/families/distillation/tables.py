"""The distillation family's standard tables, from a sweep's results (Markdown through
``repro.tables.markdown_table``)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ...metrics import mean_ci, mean_std_text
from ...sweep import SweepResult
from ...tables import markdown_table


def summary(result: SweepResult, labels: Sequence[str], base: str = "ce") -> list[dict[str, Any]]:
    """One row per arm label: top-1 mean/std/95% CI, paired gain over ``base``, ECE, cost per run."""
    rows = []
    for label in labels:
        runs = result.of(label)
        top = mean_ci([r["metrics"]["top1"] for r in runs])
        gains = result.paired("top1", label, base) if label != base else {}
        g = mean_ci(list(gains.values())) if gains else None
        rows.append({"arm": label, "n": top["n"], "top1_mean": top["mean"], "top1_std": top["std"],
                     "top1_ci": [top["ci_low"], top["ci_high"]],
                     "gain_mean": None if g is None else g["mean"],
                     "gain_ci": None if g is None else [g["ci_low"], g["ci_high"]],
                     "ece_mean": float(np.mean([r["metrics"]["ece"] for r in runs])),
                     "train_s_mean": float(np.mean([r["train_s"] for r in runs])),
                     "images_per_s": float(np.mean([r["extra"].get("images_per_s", 0.0) for r in runs]))})
    return rows


def summary_markdown(rows: list[dict[str, Any]], names: Mapping[str, str] | None = None, base: str = "CE") -> str:
    """The comparison table as Markdown, best top-1 first (``names``: display name per label)."""
    names = names or {}
    body = []
    for r in sorted(rows, key=lambda r: -r["top1_mean"]):
        gain = "—" if r["gain_mean"] is None else (f"{r['gain_mean']:+.2f} [{r['gain_ci'][0]:+.2f}, "
                                                   f"{r['gain_ci'][1]:+.2f}]")
        body.append([names.get(r["arm"], r["arm"]), f"{r['top1_mean']:.2f} ± {r['top1_std']:.2f} (n={r['n']})",
                     f"[{r['top1_ci'][0]:.2f}, {r['top1_ci'][1]:.2f}]", gain, f"{r['ece_mean']:.2f}",
                     f"{r['train_s_mean']:.1f}", f"{r['images_per_s']:,.0f}"])
    return markdown_table(["method", "top-1 % (mean ± std)", "95% CI", f"gain over {base} (paired, 95% CI)",
                           "ECE %", "train s / run", "img/s"], body)


def online_summary_markdown(result: SweepResult, labels: Sequence[str], names: Mapping[str, str] | None = None) -> str:
    """Mean ± std over seeds of student (and online teacher) top-1, ECE, NLL, confidence."""
    ms = mean_std_text
    body = []
    for label in labels:
        runs = result.of(label)
        st = [r["metrics"] for r in runs]
        teach = [m for m in st if "teacher_top1" in m]
        t_top = ms([t["teacher_top1"] for t in teach]) if teach else "—"
        t_ece = ms([t["teacher_ece"] for t in teach]) if teach else "—"
        body.append([f"{(names or {}).get(label, label)} (n={len(runs)})", ms([m["top1"] for m in st]),
                     ms([m["ece"] for m in st]), ms([m["nll"] for m in st]), ms([m["confidence"] for m in st]),
                     t_top, t_ece, f"{np.mean([r['train_s'] for r in runs]):.1f}"])
    return markdown_table(["arm", "student top-1 %", "student ECE %", "student NLL", "student conf. %",
                           "teacher top-1 %", "teacher ECE %", "train s / run"], body)


def _quantiles(counts: Sequence[int], edges: Sequence[float], qs: Sequence[float]) -> list[float]:
    """Quantiles of a histogram, linear within a bin."""
    c = np.cumsum(np.asarray(counts, dtype=float))
    if c[-1] == 0:
        return [float("nan")] * len(qs)
    cdf = np.concatenate([[0.0], c / c[-1]])
    return [float(np.interp(q, cdf, edges)) for q in qs]


def balance_markdown(result: SweepResult, labels: Sequence[str], names: Mapping[str, str] | None = None) -> str:
    """Per arm: the mean reverse-KL weight over training (mean ± std over seeds) and the
    5th / 50th / 95th percentiles of the last epoch's per-sample entropy gap (seeds pooled)."""
    body = []
    for label in labels:
        runs = [r for r in result.of(label) if "balance" in r.get("extra", {})]
        if not runs:
            continue
        w = [float(np.mean(r["extra"]["balance"]["w_reverse"])) for r in runs]
        bal0 = runs[0]["extra"]["balance"]
        gap = "—"
        if bal0["edges"] and bal0["hist"]:
            last = str(max(int(e) for e in bal0["hist"]))
            counts = np.sum([r["extra"]["balance"]["hist"][last] for r in runs], axis=0)
            gap = " / ".join(f"{v:+.3f}" for v in _quantiles(counts, bal0["edges"], (0.05, 0.5, 0.95)))
        note = " (not applied)" if runs[0]["extra"].get("arm") == "dml" else ""
        body.append([(names or {}).get(label, label),
                     f"{np.mean(w):.3f} ± {np.std(w, ddof=1) if len(w) > 1 else 0.0:.3f}{note}", gap])
    return markdown_table(["arm", "mean w_R over training", "last-epoch gap H_S − H_T: 5% / 50% / 95% (nats)"], body)


def paired_markdown(result: SweepResult, pairs: Mapping[str, tuple[str, str]], metric: str = "top1",
                    header: Sequence[str] = ("arm", "arm − baseline per seed (pts)", "mean")) -> str:
    """One row per name: the paired per-seed differences of ``metric`` between its (arm,
    baseline) labels, and their mean."""
    body = []
    for name, (a, b) in pairs.items():
        g = result.paired(metric, a, b)
        body.append([name, ", ".join(f"{v:+.2f}" for v in g.values()), f"{np.mean(list(g.values())):+.2f}"])
    return markdown_table(list(header), body)
