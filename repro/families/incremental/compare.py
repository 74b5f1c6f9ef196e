"""Chapter 43 (clcompare): every class-incremental learner of the family on one stream, one set
of seeds and one recipe, and each paper's headline comparison tested on equal terms.

The learners (labels; :data:`LEARNERS`), by the recipe they follow:

* ``sgd`` — the shared CNN recipe (the chapter's ``arch``, ``epochs``, ``lr``, ``schedule``,
  ``batch_size``; SGD): the family's baselines ``finetune``, ``replay``, ``replay_kd``, ``joint``
  (``arms/baselines.py``) and ``wa`` (``arms/wa.py``);
* ``adamw`` — the same network, epochs, batch and schedule shape, with the AdamW optimiser and
  learning rate the exemplar-free prototype methods are built for: ``pass`` and ``napavq``
  (``arms/napavq.py``; ``napa_lr``, ``napa_weight_decay``, exemplar-free: memory 0);
* ``vit`` — GCAB's gated class-attention needs a ViT: ``gcab`` and its own lower bound
  ``gcab_finetune`` (the ``token_finetune`` arm: the same ViT, per-task tokens and heads, no
  gating, no drift compensation), both exemplar-free, on the shared epochs and schedule shape
  (``arms/gcab.py``; ``gcab_lr``, ``gcab_weight_decay``);
* ``pretrained`` — a network of the shared ``arch`` pretrained here, per seed, on CIFAR-100 classes
  outside the stream (``arms/nmc.py``): ``nmc`` (frozen, nearest class mean, no training) and
  ``replay_pre`` (the family's ``replay`` starting from that backbone, on the shared SGD recipe).

Chapter 01's arms (``independent``, ``bct``, ``oca``, ``oca_no_ortho``) are registered in the
family but are not class-incremental learners: they learn backward-compatible *embeddings* for
retrieval (an old model on half the classes, a new model on all of them at once), take a
``CompatConfig`` rather than an ``IncrementalConfig`` and return no accuracy matrix, so they
are left out (:data:`EXCLUDED`).

:func:`plan` names the jobs (``{label: (arm, overrides)}``, as ``protocol.sweep`` takes);
:func:`stream` is the one stream every learner meets (the protocol's, which must keep all its
tasks when NMC's pretraining classes are set aside); :func:`sweep` trains every (seed, label)
in one ``repro.sweep`` (all labels of a seed, then the next seed). The figures and tables
below take sweep results, never the run.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ... import arms as registry
from ...metrics import mean_ci, mean_std_text
from ...plots.style import annotate_setting, jsonable, new_figure
from ...sweep import Job, JobFn, SweepResult
from ...sweep import sweep as run_sweep
from ...tables import markdown_table
from . import protocol
from .figures import jobs_of, seen_classes

# label → (registered arm, recipe group, chapter, module)
LEARNERS: dict[str, tuple[str, str, str, str]] = {
    "finetune": ("finetune", "sgd", "baseline", "arms/baselines.py"),
    "replay": ("replay", "sgd", "baseline", "arms/baselines.py"),
    "replay_kd": ("replay_kd", "sgd", "baseline", "arms/baselines.py"),
    "joint": ("joint", "sgd", "baseline", "arms/baselines.py"),
    "wa": ("wa", "sgd", "24 · wa", "arms/wa.py"),
    "pass": ("pass", "adamw", "07 · napavq", "arms/napavq.py"),
    "napavq": ("napavq", "adamw", "07 · napavq", "arms/napavq.py"),
    "gcab_finetune": ("token_finetune", "vit", "04 · gcab", "arms/gcab.py"),
    "gcab": ("gcab", "vit", "04 · gcab", "arms/gcab.py"),
    "nmc": ("nmc", "pretrained", "10 · nmc", "arms/nmc.py"),
    "replay_pre": ("replay", "pretrained", "10 · nmc", "arms/nmc.py + arms/baselines.py"),
}
GROUPS = ("sgd", "adamw", "vit", "pretrained")
FROZEN = ("nmc",)               # no training on the stream: features of the seed's backbone
FROM_BACKBONE = ("replay_pre",)  # trained through the incremental loop from the seed's backbone
EXCLUDED = {"oca": "chapter 01's arms (independent, bct, oca, oca_no_ortho) learn backward-compatible "
                   "retrieval embeddings (an old model on half the classes, new models on all of them at once), "
                   "not a sequence of tasks: they have no accuracy matrix to compare"}


def check_learners(learners: Sequence[str]) -> list[str]:
    """Distinct known labels, in the given order (ValueError otherwise)."""
    learners = list(learners)
    unknown = [x for x in learners if x not in LEARNERS]
    if unknown or not learners or len(set(learners)) != len(learners):
        raise ValueError(f"learners must be distinct labels from {list(LEARNERS)}, not {learners}")
    return learners


def needs_backbone(learners: Sequence[str]) -> bool:
    return any(x in FROZEN + FROM_BACKBONE for x in learners)


def plan(learners: Sequence[str], *, napa_lr: float, napa_weight_decay: float, gcab_lr: float,
         gcab_weight_decay: float) -> dict[str, tuple[str, dict[str, Any]]]:
    """The chapter's labelled arms. The SGD learners take the shared recipe as it is; the
    prototype learners and the ViT take their own optimiser's learning rate and weight decay
    and no exemplars; WA keeps its switches (``kd_mode``, ``clip_weights``) from the parameters."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for label in check_learners(learners):
        arm, group, _, _ = LEARNERS[label]
        over: dict[str, Any] = {}
        if label == "wa":
            over = {"align": True}
        elif group == "adamw":
            over = {"memory": 0, "lr": napa_lr, "weight_decay": napa_weight_decay}
        elif group == "vit":
            over = {"memory": 0, "lr": gcab_lr, "weight_decay": gcab_weight_decay}
        out[label] = (arm, over)
    return out


def check_claims(claims: Sequence[Any], learners: Sequence[str]) -> None:
    """Every claim's arm and baseline is trained (ValueError naming the missing labels)."""
    missing = sorted({x for c in claims for x in (c.arm, c.baseline) if x and x not in learners})
    if missing:
        raise ValueError(f"the claims need learners {missing}; add them to `learners`")


# --------------------------------------------------------------------------- the run's glue
def stream(run, learners: Sequence[str]):
    """The one stream of every learner and NMC's pretraining classes (``[]`` without NMC).

    With ``nmc``/``replay_pre`` the stream comes from ``protocol.nmc_stream``, which sets the
    last ``pretrain_classes`` classes of the order aside; it must keep every task of the
    protocol's stream (ValueError otherwise: lower ``pretrain_classes`` or ``classes``)."""
    from .arms import nmc

    if not needs_backbone(learners):
        return protocol.stream(run), []
    want = len(nmc.protocol_tasks(protocol.stream_config(run)))
    s, pre = protocol.nmc_stream(run)
    if s.num_tasks != want:
        raise ValueError(f"NMC's {len(pre)} pretraining classes would drop {want - s.num_tasks} of the stream's "
                         f"{want} tasks; every learner must meet the same stream (lower pretrain_classes or classes)")
    return s, pre


def backbones(run, stream, pretrain_ids: list[int], learners: Sequence[str]):
    """Each seed's pretrained backbone (``protocol.nmc_backbones``), or None without NMC."""
    return protocol.nmc_backbones(run, stream, pretrain_ids) if needs_backbone(learners) else None


def _note_backbone(run, bbs, seed: int) -> None:
    notes = run.notes.setdefault("backbones", {})
    if str(seed) not in notes:
        bb, feats = bbs.get(seed)
        notes[str(seed)] = {**{k: v for k, v in bb.info.items() if k != "history"}, "shared": not bbs.per_seed,
                            "feature_dim": int(feats.f_train.shape[1]), "extract_s": round(feats.extract_s, 2)}


def sweep(run, stream, plan: Mapping[str, tuple[str, Mapping[str, Any]]], bbs=None,
          progress: bool = True) -> SweepResult:
    """Every (seed, label) of ``plan`` in one sweep, all labels of a seed before the next: the
    learners through the family's incremental loop (checkpointed per task), ``nmc`` on the seed's
    frozen features, ``replay_pre`` from the seed's backbone (``bbs``: :func:`backbones`)."""
    from .arms import nmc

    cfgs = protocol.configs(run, plan)
    if needs_backbone(list(plan)) and bbs is None:
        raise ValueError("nmc and replay_pre need the seeds' backbones (compare.backbones)")

    def frozen(a: registry.Arm, cfg: Any, label: str) -> JobFn:
        def job(seed: int, checkpoint_dir) -> Job:
            _note_backbone(run, bbs, seed)
            return protocol.frozen_job(bbs.features(seed), a.impl, cfg, label)(seed, checkpoint_dir)
        return job

    def tuned(a: registry.Arm, cfg: Any, label: str) -> JobFn:
        def job(seed: int, checkpoint_dir) -> Job:
            _note_backbone(run, bbs, seed)
            factory = nmc.pretrained(a.impl, bbs.backbone(seed))
            return protocol.learner_job(stream, factory, cfg, run.device, label, progress)(seed, checkpoint_dir)
        return job

    jobs: dict[str, JobFn] = {}
    for label, (a, cfg) in cfgs.items():
        if label in FROZEN:
            jobs[label] = frozen(a, cfg, label)
        elif label in FROM_BACKBONE:
            jobs[label] = tuned(a, cfg, label)
        else:
            jobs[label] = protocol.learner_job(stream, a.impl, cfg, run.device, label, progress)
    res = run_sweep(run, jobs, progress=progress)
    protocol.guard_tasks(run, res)
    protocol.note_jobs(run, res)
    return res


def pretrain_seconds(notes: Mapping[str, Any]) -> dict[int, float]:
    """Seed → seconds its backbone's pretraining took (from the record's notes; 0 without)."""
    return {int(s): float(b.get("train_s", 0.0)) for s, b in (notes or {}).items()}


# --------------------------------------------------------------------------- tables
def recipe_markdown(cfgs: Mapping[str, tuple[Any, Any]], stream_text: str = "") -> str:
    """One row per learner: paper, module, arm, network, optimiser and learning rate, epochs
    per task, exemplars (``cfgs``: ``protocol.configs(run, plan)``)."""
    rows = []
    for label, (a, cfg) in cfgs.items():
        arm, group, chapter, module = LEARNERS[label]
        if group == "vit":
            net = f"ViT D{cfg.dim}×{cfg.depth} + gated class attention" if label == "gcab" else \
                f"ViT D{cfg.dim}×{cfg.depth}, per-task tokens"
        elif label == "nmc":
            net = "the seed's pretrained backbone, frozen"
        else:
            net = f"{cfg.arch}" + (f" w{cfg.arch_width}" if getattr(cfg, "arch_width", 0) else "")
            if label == "replay_pre":
                net += " from the seed's pretrained backbone"
        if label == "nmc":
            opt, ep, mem = "none (class means)", "0", "0"
        else:
            name = getattr(cfg, "optimizer", "sgd")
            lr = f"{cfg.lr:g}" + (f", later ×{cfg.lr_later_factor:g}" if hasattr(cfg, "lr_later_factor") else "")
            opt = f"{name} lr {lr}, wd {cfg.weight_decay:g}, {cfg.schedule}"
            ep = f"{cfg.epochs_first or cfg.epochs} / {cfg.epochs}"
            mem = "0" if not a.impl.uses_memory or cfg.memory == 0 else f"{cfg.memory} ({cfg.memory_mode})"
            if getattr(a.impl, "sees_all_data", False):
                mem = "all data seen so far"
        rows.append([f"`{label}`", chapter, f"`{module}` (arm `{arm}`)", net, opt, ep, mem])
    return markdown_table(["learner", "chapter", "code", "network", "optimiser", "epochs first / later tasks",
                           "exemplars"], rows)


def claims_markdown(results: Any, pairs: Sequence[tuple[str, str, str]]) -> str:
    """Paired differences (arm minus baseline, per seed) of the claims' metrics: mean ± std and
    the per-seed values (the claim table's numbers, before the test-set noise is added)."""
    jobs = jobs_of(results)
    val = {(j["arm"], j["seed"], k): v for j in jobs for k, v in j["metrics"].items()}
    seeds = sorted({j["seed"] for j in jobs})
    rows = []
    for metric, a, b in pairs:
        d = [val[(a, s, metric)] - val[(b, s, metric)] for s in seeds if (a, s, metric) in val and (b, s, metric) in val]
        rows.append([f"{metric}: `{a}` − `{b}`", mean_std_text(d), ", ".join(f"{x:+.1f}" for x in d)])
    return markdown_table(["difference (paired by seed)", "mean ± std", "per seed"], rows)


# --------------------------------------------------------------------------- figures
_STYLE = {"sgd": "-", "adamw": "--", "vit": "-.", "pretrained": ":"}
_MARK = {"sgd": "o", "adamw": "s", "vit": "^", "pretrained": "D"}


def colors(labels: Sequence[str]) -> dict[str, str]:
    """A distinct colour per learner (tab20's dark shades, then its light ones)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    order = [cmap(2 * i) for i in range(10)] + [cmap(2 * i + 1) for i in range(10)]
    return {x: matplotlib.colors.to_hex(order[i % 20]) for i, x in enumerate(labels)}


def _runs(results: Any, label: str) -> list[dict[str, Any]]:
    return [j for j in jobs_of(results) if j["arm"] == label]


def plot_curves(results: Any, stream: Any, setting: str, labels: Sequence[str]) -> tuple[Figure, dict]:
    """Accuracy on all seen classes after each task, one line per learner (mean over seeds,
    band min–max); line style and marker by recipe (solid: SGD CNN, dashed: AdamW CNN,
    dash-dot: ViT, dotted: pretrained backbone)."""
    fig, ax = new_figure(width=7.2, height=4.4)
    col = colors(labels)
    x = np.asarray(seen_classes(stream))
    data: dict[str, Any] = {}
    for label in labels:
        arr = np.asarray([j["extra"]["acc_after"] for j in _runs(results, label)], dtype=float)
        if arr.size == 0:
            continue
        g = LEARNERS[label][1]
        mean = arr.mean(0)
        ax.plot(x[: arr.shape[1]], mean, _STYLE[g], marker=_MARK[g], color=col[label], label=label, markersize=4)
        if arr.shape[0] > 1:
            ax.fill_between(x[: arr.shape[1]], arr.min(0), arr.max(0), color=col[label], alpha=0.12, linewidth=0)
        data[label] = {"mean": mean, "min": arr.min(0), "max": arr.max(0), "n": arr.shape[0], "recipe": g}
    ax.set_xlabel("classes seen")
    ax.set_ylabel("top-1 on all seen classes (%)")
    ax.set_xticks(x)
    ax.set_ylim(bottom=0)
    ax.legend(ncols=2, fontsize=7, loc="upper right")
    ax.set_title("Accuracy after each task, every learner on one stream")
    annotate_setting(fig, setting)
    return fig, jsonable({"seen_classes": x, "curves": data, "setting": setting, "band": "min-max over seeds"})


def plot_aia(results: Any, setting: str, labels: Sequence[str], metric: str = "aia") -> tuple[Figure, dict]:
    """``metric`` per learner: the mean over seeds (point), its 95 % Student-t interval over
    seeds (bar) and every seed (small dots); learners grouped by recipe, best first within a
    group."""
    col = colors(labels)
    order = []
    for g in GROUPS:
        mine = [x for x in labels if LEARNERS[x][1] == g and _runs(results, x)]
        order += sorted(mine, key=lambda x: -np.mean([j["metrics"][metric] for j in _runs(results, x)]))
    fig, ax = new_figure(width=6.4, height=0.36 * len(order) + 1.6)
    data: dict[str, Any] = {}
    for i, label in enumerate(order):
        v = [j["metrics"][metric] for j in _runs(results, label)]
        ci = mean_ci(v)
        y = len(order) - 1 - i
        if ci["n"] > 1:
            ax.plot([ci["ci_low"], ci["ci_high"]], [y, y], "-", color=col[label], linewidth=2.2, alpha=0.7)
        ax.plot([ci["mean"]], [y], _MARK[LEARNERS[label][1]], color=col[label], markersize=7)
        ax.plot(v, [y] * len(v), ".", color="0.25", markersize=4)
        data[label] = {**ci, "per_seed": v, "recipe": LEARNERS[label][1]}
    ax.set_yticks(range(len(order)), [f"{x} ({LEARNERS[x][1]})" for x in order][::-1])
    ax.set_xlabel(f"{'average incremental accuracy' if metric == 'aia' else metric} (%)")
    ax.set_xlim(left=0)
    ax.set_title(f"{metric.upper() if metric == 'aia' else metric}: mean, 95% interval over seeds, seeds as dots")
    annotate_setting(fig, setting)
    return fig, jsonable({"metric": metric, "learners": data, "order": order, "setting": setting,
                          "interval": "95% Student-t over seeds (no test-set noise)"})


def plot_cost(results: Any, setting: str, labels: Sequence[str],
              pretrain_s: Mapping[int, float] | None = None) -> tuple[Figure, dict]:
    """Left: training seconds per run and learner (bar: mean over seeds, dots: seeds); the
    backbone's pretraining, which ``nmc`` and ``replay_pre`` start from, is a hatched segment
    on top of their bars (it is paid once per seed and shared by both). Right: AIA against
    training seconds, one dot per run."""
    col = colors(labels)
    fig, (a, b) = new_figure(ncols=2, width=10.0, height=0.3 * len(labels) + 2.4)
    data: dict[str, Any] = {}
    present = [x for x in labels if _runs(results, x)]
    pre = dict(pretrain_s or {})
    for i, label in enumerate(present):
        runs = _runs(results, label)
        s = [j["train_s"] for j in runs]
        y = len(present) - 1 - i
        a.barh(y, np.mean(s), color=col[label], alpha=0.85)
        a.plot(s, [y] * len(s), ".", color="0.2", markersize=4)
        extra = [pre.get(int(j["seed"]), 0.0) for j in runs] if label in FROZEN + FROM_BACKBONE else []
        if extra and np.mean(extra) > 0:
            a.barh(y, np.mean(extra), left=np.mean(s), color="white", edgecolor=col[label], hatch="///")
        v = [j["metrics"]["aia"] for j in runs]
        b.plot(s, v, _MARK[LEARNERS[label][1]], color=col[label], label=label)
        data[label] = {"train_s": s, "pretrain_s": extra, "aia": v}
    a.set_yticks(range(len(present)), present[::-1])
    a.set_xlabel("train s per run (hatched: pretraining)")
    a.set_title("Cost per learner")
    b.set_xscale("symlog", linthresh=1.0)
    b.set_xlabel("train s per run (symlog)")
    b.set_ylabel("AIA (%)")
    b.set_title("Accuracy vs cost")
    b.legend(fontsize=7, ncols=2)
    annotate_setting(fig, setting)
    return fig, jsonable({"runs": data, "setting": setting})
