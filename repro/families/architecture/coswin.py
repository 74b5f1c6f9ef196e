"""Chapter 22, CoSwin (Khadka, Rizk, Wang & Santosh, "CoSwin: Convolution Enhanced Hierarchical
Shifted Window Attention For Small-Scale Vision", arXiv 2509.08959): a small Swin, the same
Swin with a convolutional local branch in every block, and a plain Swin widened to the
CoSwin's parameter count.

The CoSwin block (``repro.layers.coswin_block``, a reconstruction: the card could not check
the kernel and the fusion against the official code) adds to each (shifted-)window attention
a local branch on the same normalised token map, 3×3 depthwise conv → BN → GELU → 1×1 conv,
fused by addition: x ← x + W-MSA(LN x) + Local(LN x). A block of width C gains
C² + 13·C parameters (:func:`local_branch_params`).

Arms (:func:`arm_configs`), labelled by identifiers, all with the family's recipe:

* ``swin``: the plain Swin ``params["model"]`` (``swin_micro`` or ``swin_tiny_cifar``);
* ``coswin``: the same Swin with the local branch in every block (``coswin_micro`` /
  ``coswin_tiny_cifar``); built from one seed, it shares every Swin weight with ``swin``;
* ``swin_wide``: the parameter-matched control, plain Swin with a wider embedding
  (``swin_micro_wide`` / ``swin_tiny_cifar_wide``), within 5 % of CoSwin's parameters at the
  chapter's image size and class count (:func:`param_counts`; checked, ParameterError if not);
* ``coswin_gate`` (only with ``params["gate_arm"]``): CoSwin whose local branch is scaled by a
  learnable scalar that starts at 0, so it starts as the plain Swin.

Probes of this chapter: :func:`local_share` (per block, the magnitude of the local branch's
output against the attention branch's, on fixed images) and :func:`attention_distance`
(per block, the mean distance in pixels between a query and the keys it attends to, within
its window), with their figures :func:`local_share_figure` and :func:`distance_figure`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from matplotlib.figure import Figure
from timm.models.swin_transformer import SwinTransformerBlock

from ... import models
from ...errors import ParameterError
from ...flops import count_params, unfused_attention
from ...layers.coswin_block import CoSwinBlock
from ...models import swin_cifar  # noqa: F401  (registers the Swin / CoSwin names)
from ...plots.style import annotate_setting, jsonable, new_figure
from ...sweep import SweepResult
from ...tables import markdown_table
from .protocol import ArchConfig, arch_config

ARMS = ("swin", "coswin", "swin_wide")
GATE_ARM = "coswin_gate"
COSWIN_ARMS = ("coswin", GATE_ARM)
TITLES = {"swin": "Swin", "coswin": "CoSwin", "swin_wide": "Swin, wider (matched)", GATE_ARM: "CoSwin, gated"}
#: base Swin → (its CoSwin, its parameter-matched plain Swin), all registered in repro.models.swin_cifar
MODELS = {"swin_micro": ("coswin_micro", "swin_micro_wide"),
          "swin_tiny_cifar": ("coswin_tiny_cifar", "swin_tiny_cifar_wide")}
#: the control must be within this relative distance of CoSwin's parameter count
MATCH_TOLERANCE = 0.05


def check_model(model: str) -> None:
    """``model`` must be one of the plain Swins of :data:`MODELS`; ParameterError otherwise."""
    if model not in MODELS:
        known = ", ".join(MODELS)
        if model not in models.available():
            raise ParameterError(f"unknown model {model!r}; coswin's base Swins: {known}")
        raise ParameterError(f"coswin compares a plain Swin with its CoSwin and its wider control; "
                             f"{model!r} is not one of the base Swins ({known})")


def arm_models(model: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """``arm → (repro.models name, model keyword arguments)`` for the base Swin ``model``."""
    check_model(model)
    co, wide = MODELS[model]
    return {"swin": (model, {}), "coswin": (co, {}), "swin_wide": (wide, {}),
            GATE_ARM: (co, {"local_branch": "gate"})}


def local_branch_params(dim: int) -> int:
    """Parameters of one local branch of width C: 3×3 depthwise conv (9C + C bias), BN (2C),
    1×1 conv (C² + C bias), so C² + 13·C."""
    return dim * dim + 13 * dim


def _build(name: str, image_size: int, num_classes: int, **kw: Any) -> nn.Module:
    return models.create(name, num_classes=num_classes, img_size=image_size, **kw)


def param_counts(model: str, image_size: int, num_classes: int) -> dict[str, dict[str, Any]]:
    """Per arm (gate arm included): ``params`` (counted), ``extra`` over the plain Swin,
    ``formula`` (the local branches: Σ over blocks of C² + 13·C, plus one gate a block for
    the gated CoSwin; None for the control, whose extra is spread over every layer),
    ``model`` and ``vs_coswin``
    = (params − CoSwin's) / CoSwin's. ParameterError if the control is not within
    :data:`MATCH_TOLERANCE` of CoSwin at this image size and class count."""
    return {a: dict(c) for a, c in _counts(model, int(image_size), int(num_classes)).items()}


@lru_cache(maxsize=16)
def _counts(model: str, image_size: int, num_classes: int) -> dict[str, dict[str, Any]]:
    names = arm_models(model)
    with torch.device("meta"):  # shapes only: counts without initialising millions of weights
        nets = {a: _build(n, image_size, num_classes, **kw) for a, (n, kw) in names.items()}
    p = {a: count_params(m) for a, m in nets.items()}
    blocks = [b for b in nets["coswin"].modules() if isinstance(b, CoSwinBlock)]
    branch = sum(local_branch_params(b.dim) for b in blocks)
    formula = {"swin": 0, "coswin": branch, "swin_wide": None, GATE_ARM: branch + len(blocks)}
    out = {a: {"model": names[a][0], "params": p[a], "extra": p[a] - p["swin"], "formula": formula[a],
               "vs_coswin": (p[a] - p["coswin"]) / p["coswin"]} for a in names}
    rel = out["swin_wide"]["vs_coswin"]
    if abs(rel) > MATCH_TOLERANCE:
        raise ParameterError(f"{names['swin_wide'][0]} has {p['swin_wide']:,} parameters against CoSwin's "
                             f"{p['coswin']:,} ({rel:+.1%}) at {image_size} px and {num_classes} classes: "
                             f"not a parameter-matched control (limit ±{MATCH_TOLERANCE:.0%})")
    return out


def param_table(counts: Mapping[str, Mapping[str, Any]], arms: Sequence[str] | None = None) -> str:
    """Markdown: per arm its network, parameters, the extra over the plain Swin (counted and
    by formula) and the distance to CoSwin's count."""
    rows = [[f"`{a}`", f"`{counts[a]['model']}`" + (" (gate)" if a == GATE_ARM else ""), f"{counts[a]['params']:,}",
             f"{counts[a]['extra']:+,}",
             "—" if counts[a]["formula"] is None else f"{counts[a]['formula']:+,}", f"{counts[a]['vs_coswin']:+.2%}"]
            for a in (arms or counts)]
    return markdown_table(["arm", "network", "parameters", "extra over Swin (counted)", "extra (formula)",
                           "vs CoSwin"], rows, "llrrrr")


def arm_configs(params: Mapping[str, Any]) -> dict[str, tuple[str, ArchConfig]]:
    """``label → ("standard", config)`` for ``swin``, ``coswin``, ``swin_wide`` and, with
    ``params["gate_arm"]``, ``coswin_gate`` (module docstring). A model that is not one of the
    base Swins, a bad image size (from the builder) or an unmatched control → ParameterError,
    before any training."""
    model = params["model"]
    names = arm_models(model)
    param_counts(model, int(params["image_size"]), int(params["classes"]))  # builds every arm: fails early
    labels = list(ARMS) + ([GATE_ARM] if params.get("gate_arm") else [])
    return {a: ("standard", arch_config(params, names[a][0], title=TITLES[a], model_kw=names[a][1])) for a in labels}


# -- probes -----------------------------------------------------------------------------------
def _blocks(model: nn.Module) -> list[tuple[int, int, SwinTransformerBlock]]:
    """(stage, index in stage, block) of every Swin or CoSwin block, in order."""
    layers = getattr(model, "layers", None)
    if layers is None:
        raise ParameterError(f"{type(model).__name__} is not a Swin (no stages)")
    return [(s, j, b) for s, stage in enumerate(layers) for j, b in enumerate(stage.blocks)
            if isinstance(b, SwinTransformerBlock)]


def block_labels(model: nn.Module) -> list[str]:
    """``s{stage}.b{block}`` for every block, in order (the figures' horizontal axis)."""
    return [f"s{s}.b{j}" for s, j, _ in _blocks(model)]


def _run_capturing(model: nn.Module, x: torch.Tensor, modules: Sequence[nn.Module], output: bool) -> list[Any]:
    """Run ``model`` on ``x`` once in eval mode with fused attention off and return the first
    input each of ``modules`` received, in their order (a forward hook when ``output``, a
    pre-hook otherwise). The training flag is restored."""
    got: list[Any] = [None] * len(modules)

    def pre(k: int):
        return lambda _m, inputs: got.__setitem__(k, inputs[0].detach())

    def post(k: int):
        return lambda _m, inputs, _out: got.__setitem__(k, inputs[0].detach())

    handles = [m.register_forward_hook(post(k)) if output else m.register_forward_pre_hook(pre(k))
               for k, m in enumerate(modules)]
    was = model.training
    try:
        model.eval()
        with unfused_attention(model):
            model(x.to(next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return got


@torch.no_grad()
def local_share(model: nn.Module, x: torch.Tensor) -> list[dict[str, Any]]:
    """Per CoSwin block of ``model`` on normalised images ``x`` (eval mode, fp32): the two
    branches the block adds to its residual stream, recomputed from the block's own input h:
    a = W-MSA(LN h) (timm's window attention, shift and masks included) and
    l = g·Local(LN h) (g the gate, 1 without one). Returns one dict per block with ``label``,
    ``stage``, ``dim``, ``rms_attn`` = RMS(a), ``rms_local`` = RMS(l), ``share`` =
    RMS(l) / (RMS(a) + RMS(l)) (0: the local branch adds nothing; 0.5: as large as attention;
    0 when both are 0), ``cos`` (cosine between a and l over all tokens and channels) and
    ``gate`` (g, or None). Plain Swin blocks are skipped (a plain Swin gives [])."""
    found = [(s, j, b) for s, j, b in _blocks(model) if isinstance(b, CoSwinBlock)]
    if not found:
        return []
    inputs = _run_capturing(model, x, [b for _, _, b in found], output=False)
    out = []
    for (s, j, b), h in zip(found, inputs):
        z = b.norm1(h.float())
        a = SwinTransformerBlock._attn(b, z).float()
        gate = None if b.local_gate is None else float(b.local_gate)
        loc = b.local(z).float() * (1.0 if gate is None else gate)
        ra, rl = float(a.pow(2).mean().sqrt()), float(loc.pow(2).mean().sqrt())
        den = float(a.norm() * loc.norm())
        out.append({"label": f"s{s}.b{j}", "stage": s, "dim": b.dim, "rms_attn": ra, "rms_local": rl,
                    "share": rl / (ra + rl) if ra + rl > 0 else 0.0,
                    "cos": float((a * loc).sum()) / den if den > 0 else 0.0, "gate": gate})
    return out


def _token_stride(model: nn.Module, stage: int) -> int:
    """Pixels per token side at ``stage``: the patch size, doubled by every merging before."""
    ps = getattr(model, "patch_size", None) or model.patch_embed.patch_size[0]
    return int(ps) * 2 ** stage


@torch.no_grad()
def attention_distance(model: nn.Module, x: torch.Tensor) -> list[dict[str, Any]]:
    """Per Swin block of ``model`` on images ``x``: the mean attention distance, Σ_j A_ij·d_ij
    averaged over queries i, heads, windows and images, with d_ij the distance between the
    centres of tokens i and j in input pixels (window coordinates × the stage's token
    stride); the attention A is read after the softmax (fused attention off). Masked pairs of a
    shifted window have A = 0, so the window coordinates give the true distances. Also
    ``uniform``: the same mean for attention spread evenly over the window (an upper
    reference), ``window`` (tokens a side) and ``stride`` (px a token)."""
    found = _blocks(model)
    maps = _run_capturing(model, x, [b.attn.attn_drop for _, _, b in found], output=True)
    out = []
    for (s, j, b), a in zip(found, maps):
        ws = b.window_size[0]
        stride = _token_stride(model, s)
        yy, xx = torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")
        p = torch.stack([yy.flatten(), xx.flatten()], -1).float()
        d = torch.cdist(p, p) * stride                                    # [N, N] px
        a = a.float().cpu()                                               # [windows·B, heads, N, N]
        mean = float((a * d).sum(-1).mean())
        out.append({"label": f"s{s}.b{j}", "stage": s, "window": ws, "stride": stride, "distance_px": mean,
                    "uniform_px": float(d.mean()), "shifted": bool(any(b.shift_size))})
    return out


def fixed_shares(result: SweepResult, x: torch.Tensor, arms: Sequence[str] = COSWIN_ARMS) -> dict[str, dict[int, list]]:
    """``arm → seed → local_share(model)`` for the trained CoSwin arms present in ``result``."""
    return {a: {j["seed"]: local_share(j["model"], x) for j in result.of(a) if j.get("model") is not None}
            for a in arms if result.of(a)}


def metrics_by_seed(shares: Mapping[str, Mapping[int, list]]) -> dict[int, dict[str, float]]:
    """Per seed, not judged: ``local_share_ARM`` (the mean over blocks of :func:`local_share`'s
    share) for each CoSwin arm, and ``gate_abs_mean`` (mean |g| over blocks) for the gated one."""
    out: dict[int, dict[str, float]] = {}
    for arm, by_seed in shares.items():
        for seed, rows in by_seed.items():
            if not rows:
                continue
            out.setdefault(seed, {})[f"local_share_{arm}"] = float(np.mean([r["share"] for r in rows]))
            gates = [abs(r["gate"]) for r in rows if r["gate"] is not None]
            if gates:
                out[seed]["gate_abs_mean"] = float(np.mean(gates))
    return out


# -- figures ----------------------------------------------------------------------------------
def _per_block(by_seed: Mapping[int, Sequence[Mapping[str, Any]]], key: str) -> tuple[list[str], np.ndarray]:
    rows = [r for r in by_seed.values() if r]
    labels = [r["label"] for r in rows[0]]
    return labels, np.array([[b[key] for b in r] for r in rows], dtype=float)


def local_share_figure(shares: Mapping[str, Mapping[int, Sequence[Mapping[str, Any]]]], setting: str,
                       init: Sequence[Mapping[str, Any]] | None = None) -> tuple[Figure, dict]:
    """Left: the local share RMS(l) / (RMS(a) + RMS(l)) per block, one group of markers per
    CoSwin arm (``shares``: display name → seed → :func:`local_share` rows), the mean over
    seeds with min–max bars; ``init`` (one network's rows before training) as open circles.
    Right: RMS of each branch per block for the first arm (mean over seeds; attention solid,
    local dashed), on a log scale."""
    names = [n for n, s in shares.items() if any(s.values())]
    if not names:
        raise ValueError("no CoSwin network to probe")
    fig, axes = new_figure(ncols=2, width=7.2, height=3.3)
    ax, ax2 = axes
    labels = _per_block(shares[names[0]], "share")[0]
    xs = np.arange(len(labels))
    k = len(names) + (init is not None)
    width = 0.7 / k
    data: dict[str, Any] = {"labels": labels, "arms": {}}
    for i, name in enumerate(names):
        _, v = _per_block(shares[name], "share")
        m = v.mean(0)
        off = (i - (k - 1) / 2) * width
        ax.errorbar(xs + off, m, yerr=[m - v.min(0), v.max(0) - m], fmt="o", color=f"C{i % 10}", capsize=2,
                    label=f"{name} (trained)")
        data["arms"][name] = {"share_mean": m, "share_min": v.min(0), "share_max": v.max(0), "n": len(v)}
    if init is not None:
        off = (k - 1 - (k - 1) / 2) * width
        v0 = np.array([r["share"] for r in init])
        ax.plot(xs + off, v0, "o", mfc="none", color="0.35", label="CoSwin at init")
        data["init_share"] = v0
    ax.axhline(0.5, color="0.6", linestyle=":", linewidth=1)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xticks(xs, labels, rotation=45 if len(labels) > 6 else 0)
    ax.set_xlabel("block (stage.index)")
    ax.set_ylabel("local share RMS(l) / (RMS(a)+RMS(l))")
    ax.legend(fontsize=7, loc="best")
    first = names[0]
    _, ra = _per_block(shares[first], "rms_attn")
    _, rl = _per_block(shares[first], "rms_local")
    ax2.plot(xs, ra.mean(0), "o-", color="C0", label="attention a")
    ax2.plot(xs, rl.mean(0), "s--", color="C1", label="local l")
    ax2.set_yscale("log")
    ax2.set_xticks(xs, labels, rotation=45 if len(labels) > 6 else 0)
    ax2.set_xlabel("block (stage.index)")
    ax2.set_ylabel("RMS of the branch output")
    ax2.set_title(f"{first}, mean over seeds", fontsize=9)
    ax2.legend(fontsize=7)
    data["rms"] = {"arm": first, "attn": ra.mean(0), "local": rl.mean(0)}
    annotate_setting(fig, setting)
    return fig, jsonable({**data, "setting": setting, "bars": "min-max over seeds"})


def distance_figure(distances: Mapping[str, Mapping[int, Sequence[Mapping[str, Any]]]],
                    setting: str) -> tuple[Figure, dict]:
    """Mean attention distance (px) per block, one group of markers per arm (``distances``:
    display name → seed → :func:`attention_distance` rows), mean over seeds with min–max bars;
    a grey bar per block marks attention spread evenly over its window."""
    names = [n for n, s in distances.items() if any(s.values())]
    if not names:
        raise ValueError("no network to probe")
    fig, ax = new_figure(width=5.6, height=3.3)
    labels, _ = _per_block(distances[names[0]], "distance_px")
    xs = np.arange(len(labels))
    uniform = _per_block(distances[names[0]], "uniform_px")[1][0]
    ax.bar(xs, uniform, width=0.8, color="0.88", label="uniform over the window")
    width = 0.7 / len(names)
    data: dict[str, Any] = {"labels": labels, "uniform_px": uniform, "arms": {}}
    for i, name in enumerate(names):
        _, v = _per_block(distances[name], "distance_px")
        m = v.mean(0)
        off = (i - (len(names) - 1) / 2) * width
        ax.errorbar(xs + off, m, yerr=[m - v.min(0), v.max(0) - m], fmt="o", color=f"C{i % 10}", capsize=2,
                    label=name)
        data["arms"][name] = {"mean": m, "min": v.min(0), "max": v.max(0), "n": len(v)}
    ax.set_xticks(xs, labels, rotation=45 if len(labels) > 6 else 0)
    ax.set_xlabel("block (stage.index)")
    ax.set_ylabel("mean attention distance (px)")
    top = max(float(np.max(uniform)), *(float(np.max(d["max"])) for d in data["arms"].values()))
    ax.set_ylim(0, top * 1.4)  # room for the legend above the bars
    ax.legend(fontsize=7, loc="upper left", ncol=min(3, len(names) + 1))
    annotate_setting(fig, setting)
    return fig, jsonable({**data, "setting": setting, "bars": "min-max over seeds"})
