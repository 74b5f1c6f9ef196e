"""The class-incremental family's tables (Markdown, through ``repro.tables``), drawn from sweep
results: the protocol's summary for every chapter, and each chapter's own tables."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ...metrics import mean_std_text
from ...tables import markdown_table
from .arms.gtep import SHORT, algorithm_space, describe_config, protocol_table, ranks
from .figures import jobs_of, labels_of

SUMMARY_KEYS = ("aia", "last", "forgetting", "old_last", "new_last")


def summary_markdown(results: Any, labels: Sequence[str] | None = None) -> str:
    """Mean ± std over seeds of AIA, last accuracy, forgetting, the final old/new split and the
    training time of each arm."""
    jobs = jobs_of(results)
    rows = []
    for label in labels_of(jobs, labels):
        runs = [j for j in jobs if j["arm"] == label]
        ms = {k: mean_std_text([j["metrics"][k] for j in runs]) for k in SUMMARY_KEYS}
        rows.append([f"{label} (n={len(runs)})", ms["aia"], ms["last"], ms["forgetting"],
                     f"{ms['old_last']} / {ms['new_last']}", f"{np.mean([j['train_s'] for j in runs]):.1f}"])
    return markdown_table(["learner", "AIA %", "last %", "forgetting (pts)", "old / new after the last task %",
                           "train s / run"], rows)


# -- chapter 24 (wa) ---------------------------------------------------------------------------------
def bias_markdown(results: Any, labels: Sequence[str] | None = None) -> str:
    """Mean over seeds, after the last task, of WA's bias numbers for each arm that records them."""
    jobs = jobs_of(results)
    rows = []
    for label in labels_of(jobs, labels):
        runs = [j for j in jobs if j["arm"] == label and "norm_excess_last" in j["metrics"]]
        if not runs:
            continue
        ex = [j["extra"]["extras"][-1] for j in runs]
        g = [e["gamma"] for e in ex if e["gamma"] is not None]
        rows.append([f"{label} (n={len(runs)})", f"{np.mean([j['metrics']['norm_excess_last'] for j in runs]):+.1f}",
                     f"{np.mean([j['metrics']['norm_excess_mean'] for j in runs]):+.1f}",
                     f"{np.mean(g):.3f}" if g else "—",
                     f"{np.mean([e['share_before'] for e in ex]):.1f} / {np.mean([e['share_after'] for e in ex]):.1f}"
                     f" / {np.mean([e['true_share'] for e in ex]):.1f}"])
    return markdown_table(["learner", "new/old weight-norm excess before aligning, last task %",
                           "same, mean over tasks %", "γ at the last task",
                           "predictions in the newest classes: before aligning / after / true %"], rows)


# -- chapter 10 (nmc) ----------------------------------------------------------------------------------
def backbone_plan_markdown(cfg: Any, stream: Any, seeds: Sequence[int]) -> str:
    """One paragraph, before anything is trained: which backbone(s) the seeds will use
    (``cfg``: the chapter's ``BackboneConfig``)."""
    seeds = ", ".join(str(s) for s in seeds)
    if cfg.per_seed:
        width = f" (width {cfg.arch_width})" if cfg.arch_width else ""
        per = f"{cfg.pretrain_per_class} images per class" if cfg.pretrain_per_class else "all 500 images per class"
        return (f"Backbones: **{cfg.arch}**{width}, **one per run seed** (seeds {seeds}; each pretrained with its run "
                f"seed), trained here with labels on the last {cfg.pretrain_classes} classes of the class order, "
                f"outside the stream ({per}), {cfg.pretrain_epochs} epochs of SGD (lr {cfg.pretrain_lr}, cosine). "
                f"Each seed's learners all start from that seed's backbone. Evaluated stream: {stream.describe()}.")
    source = cfg.weights or "timm's download"
    return (f"Backbone: **{cfg.backbone}**, one public checkpoint (weights from {source}) shared by every seed "
            f"({seeds}), as in the paper. Evaluated stream: {stream.describe()}.")


def backbones_markdown(infos: Mapping[Any, Mapping[str, Any]]) -> str:
    """The backbones the seeds used (``run.notes["backbones"]``: seed → facts): for backbones
    pretrained here one row per seed (its accuracy on the pretraining classes, cost, whether it
    was trained in this run), for a shared timm checkpoint one paragraph."""
    if not infos:
        return "No backbone was used."
    seeds = sorted(infos, key=int)
    first = infos[seeds[0]]
    if first.get("source") != "pretrained here":
        return (f"Backbone: **{first.get('name', '?')}** ({first['params']:,} parameters, weights from "
                f"{first['source']}), input {first['input_size']} px, {first['feature_dim']}-d features: one "
                f"checkpoint shared by seeds {', '.join(str(s) for s in seeds)}.")
    rows = [[s, f"{infos[s]['test_acc']:.1f}", f"{infos[s]['train_s']:.0f}",
             "trained in this run" if infos[s].get("built_now") else "loaded from the backbones store",
             infos[s].get("key", "")] for s in seeds]
    acc = [float(infos[s]["test_acc"]) for s in seeds]
    head = (f"Each seed's backbone: **{first['arch']}** ({first['params']:,} parameters, {first['feature_dim']}-d "
            f"features) pretrained with labels on {len(first['classes'])} CIFAR-100 classes outside the stream "
            f"({first['data']}), {first['epochs']} epochs; top-1 on those classes' test images "
            f"{mean_std_text(acc, '.1f')} % over {len(seeds)} seed(s).")
    table = markdown_table(["seed", "top-1 on pretraining classes (%)", "pretraining s", "backbone", "store key"],
                           rows, align="rrrll")
    return head + "\n\n" + table


# -- chapter 01 (oca) ----------------------------------------------------------------------------------
def compatibility_markdown(results: Any, arms: Sequence[str]) -> str:
    """Mean ± std over seeds: mAP and CMC top-1 of each pair, classification top-1, ‖WᵀW − I‖,
    training time. The old model's row holds old/old."""
    jobs = jobs_of(results)
    rows = []
    for m in ["old", *arms]:
        rs = [j for j in jobs if j["arm"] == m]
        if not rs:
            continue
        p = lambda pair, k: mean_std_text([r["extra"]["pairs"][pair][k] for r in rs if pair in r["extra"]["pairs"]], ".1f")
        ortho = "—" if m == "old" else mean_std_text([r["extra"]["ortho_error"] for r in rs], ".1e")
        rows.append([f"{m} (n={len(rs)})", p("old_old", "map"), p("new_old", "map"), p("new_new", "map"),
                     p("new_old", "top1"), p("new_new", "top1"), mean_std_text([r["metrics"]["acc"] for r in rs], ".1f"),
                     ortho, f"{np.mean([r['train_s'] for r in rs]):.1f}"])
    return markdown_table(["model", "old/old mAP", "new/old mAP", "new/new mAP", "new/old top-1", "new/new top-1",
                           "classifier top-1 %", "‖WᵀW − I‖", "train s"], rows)


# -- chapter 04 (gcab) ---------------------------------------------------------------------------------
def mask_markdown(results: Any, label: str = "gcab") -> str:
    """Per task, mean over seeds: the fraction of channels (m0) and hidden units (m2) the
    task's binary mask uses, how many of them were new, and the claimed total after it."""
    runs = [j["extra"]["extras"] for j in jobs_of(results) if j["arm"] == label]
    if not runs or "mask_usage" not in runs[0][0]:
        return ""
    keys = ("m0", "m0_new", "m0_claimed", "m2", "m2_new", "m2_claimed")
    rows = []
    for t in range(len(runs[0])):
        v = {k: np.mean([r[t]["mask_usage"][k] for r in runs]) for k in keys}
        rows.append([t + 1, *(f"{v[k]:.2f}" for k in keys)])
    return markdown_table([f"task ({label})", "m0 used", "m0 new", "m0 claimed", "m2 used", "m2 new", "m2 claimed"], rows)


# -- chapter 07 (napavq) -------------------------------------------------------------------------------
def inference_markdown(results: Any, labels: Sequence[str]) -> str:
    """AIA and last accuracy of the NAPA-VQ learners under the official inference (nearest
    normalised CV) and under plain Euclidean distance, mean ± std over seeds."""
    ms = mean_std_text
    jobs = jobs_of(results)
    rows = []
    for label in labels:
        runs = [j["metrics"] for j in jobs if j["arm"] == label and "aia_euclidean" in j["metrics"]]
        if runs:
            rows.append([label, ms([m["aia"] for m in runs]), ms([m["aia_euclidean"] for m in runs]),
                         ms([m["last"] for m in runs]), ms([m["last_euclidean"] for m in runs])])
    return markdown_table(["learner", "AIA %, normalised (official)", "AIA %, Euclidean", "last %, normalised",
                           "last %, Euclidean"], rows)


def graph_markdown(results: Any, labels: Sequence[str]) -> str:
    """Mean degree of the class graph after each task (mean over seeds)."""
    jobs = jobs_of(results)
    rows, T = [], 0
    for label in labels:
        runs = [j["extra"]["extras"] for j in jobs if j["arm"] == label]
        if not runs or "graph_edges" not in runs[0][0]:
            continue
        T = len(runs[0])
        rows.append([label, *(f"{np.mean([r[t]['graph_mean_degree'] for r in runs]):.1f}" for t in range(T))])
    if not rows:
        return ""
    return markdown_table(["learner", *(f"after task {t + 1}" for t in range(T))], rows)


# -- chapter 02 (gtep) ---------------------------------------------------------------------------------
def search_markdown(search: Mapping[str, list[dict[str, Any]]], cfg: Any) -> str:
    """The search space (of a ``SearchConfig``) and how many of its points each algorithm tries."""
    grids = cfg.grids()
    rows = []
    for a, configs in search.items():
        space = algorithm_space(grids, a)
        size = int(np.prod([len(v) for v in space.values()]))
        vals = "; ".join(f"{SHORT[k]} ∈ {{{', '.join(f'{x:g}' for x in v)}}}" for k, v in space.items())
        rows.append([a, vals, size, len(configs)])
    return markdown_table(["algorithm", "searched values", "grid points", "trials run"], rows)


def protocol_markdown(rows: Sequence[Mapping[str, Any]], search: Mapping[str, list[dict[str, Any]]],
                      algorithms: Sequence[str]) -> str:
    """Per algorithm: the two choices, their AIA (mean ± std over seeds) and the ranks."""
    table = protocol_table(rows, algorithms, "aia")
    usual = {m: float(np.mean(list(table[m]["usual"].values()))) for m in algorithms}
    gtep = {m: float(np.mean(list(table[m]["gtep"].values()))) for m in algorithms}
    ru, rg = ranks(usual), ranks(gtep)
    rows = []
    for m in algorithms:
        t = table[m]
        same = " (same)" if t["gtep_config"] == t["usual_config"] else ""
        gaps = [t["usual"][s] - t["gtep"][s] for s in t["usual"]]
        rows.append([m, f"#{t['gtep_config']}: {describe_config(search[m][t['gtep_config']])}",
                     f"#{t['usual_config']}: {describe_config(search[m][t['usual_config']])}{same}",
                     mean_std_text(list(t["tuning"].values()), ".1f"), mean_std_text(list(t["gtep"].values()), ".1f"),
                     mean_std_text(list(t["usual"].values()), ".1f"), mean_std_text(gaps, ".1f"), f"{ru[m]} → {rg[m]}"])
    return markdown_table(["algorithm", "H* picked on D^HT (two-phase)", "picked on D^E's test (usual)",
                           "AIA of H* on D^HT %", "**two-phase** AIA on D^E %", "usual AIA on D^E %",
                           "usual − two-phase (pts)", "rank usual → two-phase"], rows)


def search_blocks_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """Per (seed, stream, algorithm): how many configurations ran and the range of their AIA."""
    blocks: dict[tuple[int, str, str], list[float]] = {}
    for r in rows:
        blocks.setdefault((r["seed"], r["phase"], r["method"]), []).append(r["aia"])
    return markdown_table(["seed", "stream", "algorithm", "configurations", "AIA range %"],
                          [[s, p, m, len(v), f"{min(v):.1f}–{max(v):.1f}"] for (s, p, m), v in blocks.items()])
