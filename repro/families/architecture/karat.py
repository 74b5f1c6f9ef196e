"""Chapter 26, KArAt (Maity, Hitsman, Li & Dutta, "Kolmogorov-Arnold Attention: Is Learnable
Attention Better For Vision Transformers?", arXiv 2503.10632): the same slot ViT with softmax
attention, with Fourier-KArAt per block (G3B) and with one Fourier-KArAt per head shared by
every block (G3U), plus a parameter-matched softmax control.

KArAt replaces the row softmax of A = QKᵀ/√d_h by a learned low-rank operator
(``repro.layers.kan_attention``): for each row k, u_p = Σ_q Σ_m a_pqm cos(m·A_kq) + b_pqm
sin(m·A_kq) (p = 1..r, m = 1..G) and σ(A)_k = W u. With G = 3 and r = 12 that is
2·G·r·N + N·r parameters per head (N tokens, class token included), per block for G3B and
once per head for G3U (:func:`operator_params`).

Arms (:func:`arm_configs`), labelled by identifiers, all on ``params["model"]`` with the
family's recipe (here with the paper's gradient clip):

* ``softmax``: the plain slot ViT (its checkpoints are shared with the family when the
  recipe matches);
* ``g3b``: mixer ``"karat"`` in every block (blockwise, G·B);
* ``g3u``: mixer ``"karat_universal"`` (universal, G·U);
* ``softmax_wide``: softmax attention with the MLP hidden width raised until the network has
  as many parameters as ``g3b`` (:func:`matched_mlp_ratio`; within half a hidden unit per
  block, far inside 5 %): the control that asks whether G3B's gain is its extra parameters.

The chapter's own probes and figure live here: :func:`scores` (the pre-activation A of one
block), :func:`operator_stats` (row sums and negative share of σ(A), logged per seed, not
judged) and :func:`unit_functions` (a few learned φ_pq over the observed range of A).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ... import models
from ...errors import ParameterError
from ...flops import count_params
from ...layers.kan_attention import FourierKANOperator, KANAttention
from ...models.slot_vit import SlotViT
from ...plots.style import annotate_setting, jsonable, new_figure
from ...sweep import SweepResult
from ...tables import markdown_table
from . import probes
from .protocol import ArchConfig, arch_config

ARMS = ("softmax", "g3b", "g3u", "softmax_wide")
KARAT_ARMS = ("g3b", "g3u")
TITLES = {"softmax": "softmax", "g3b": "KArAt G3B", "g3u": "KArAt G3U", "softmax_wide": "softmax, wide MLP"}
#: the paper's operator: Fourier basis with G = 3 frequencies, rank r = 12 (SlotViT's defaults)
GRID, RANK = 3, 12


def operator_params(heads: int, tokens: int, grid: int = GRID, rank: int = RANK) -> int:
    """Parameters of one Fourier-KArAt operator set: 2·G·r·N + N·r per head (a, b and W)."""
    return heads * (2 * grid * rank * tokens + tokens * rank)


def check_model(model: str) -> None:
    """``model`` must be a registered slot ViT whose default mixer is softmax in every block
    (the arms then differ only in what they set); ParameterError otherwise."""
    if model not in models.available():
        raise ParameterError(f"unknown model {model!r}; available: {', '.join(models.available())}")
    if not model.startswith("vit_slot_"):
        raise ParameterError(f"karat compares the attention of the slot ViT with softmax by default; {model!r} "
                             "is not one (use vit_slot_micro_p4 or vit_slot_tiny_p4)")


def _build(model: str, image_size: int, num_classes: int, **kw: Any) -> SlotViT:
    check_model(model)
    net = models.create(model, num_classes=num_classes, img_size=image_size, **kw)
    assert isinstance(net, SlotViT)
    return net


def matched_mlp_ratio(model: str, image_size: int, num_classes: int, target: str = "karat") -> dict[str, Any]:
    """The MLP ratio that gives the softmax ``model`` as many parameters as the same network
    with mixer ``target``.

    Only the MLP hidden width changes, so attention stays exactly the baseline's. Every
    hidden unit adds ``depth·(2·dim + 1)`` parameters (a row of fc1 with its bias, a column
    of fc2); the hidden width is rounded to the nearest unit and checked by counting
    (``repro.flops.count_params``). Returns ``mlp_ratio``, ``hidden`` (and the baseline's
    ``hidden_base``), ``params_softmax``, ``params_target``, ``params_wide`` and
    ``rel_diff`` = (wide − target) / target.
    """
    return dict(_matched(model, int(image_size), int(num_classes), target))


@lru_cache(maxsize=16)
def _matched(model: str, image_size: int, num_classes: int, target: str) -> dict[str, Any]:
    base = _build(model, image_size, num_classes)
    tgt = _build(model, image_size, num_classes, mixer=target)
    p0, pt = count_params(base), count_params(tgt)
    dim = base.pos_embed.shape[-1]
    depth = len(base.blocks)
    h0 = base.blocks[0].mlp.fc1.out_features
    per_unit = depth * (2 * dim + 1)
    hidden = h0 + int(round((pt - p0) / per_unit))
    ratio = hidden / dim
    if int(dim * ratio) != hidden:  # SlotViT floors dim·ratio: aim at the middle of the unit
        ratio = (hidden + 0.5) / dim
    wide = _build(model, image_size, num_classes, mlp_ratio=ratio)
    assert wide.blocks[0].mlp.fc1.out_features == hidden
    pw = count_params(wide)
    return {"mlp_ratio": ratio, "hidden": hidden, "hidden_base": h0, "params_softmax": p0,
            "params_target": pt, "params_wide": pw, "rel_diff": (pw - pt) / pt}


def param_counts(model: str, image_size: int, num_classes: int) -> dict[str, dict[str, int]]:
    """Per arm: ``params`` (counted, a shared operator once), ``extra`` over softmax, and
    ``formula``: the extra the paper's 2·G·r·N + N·r per head predicts (per block for G3B,
    once for G3U; the MLP growth for the control)."""
    base = _build(model, image_size, num_classes)
    heads, tokens, depth = base.blocks[0].attn.num_heads, base.num_tokens, len(base.blocks)
    p0 = count_params(base)
    m = matched_mlp_ratio(model, image_size, num_classes)
    per_head = operator_params(heads, tokens)
    g3u = count_params(_build(model, image_size, num_classes, mixer="karat_universal"))
    dim = base.pos_embed.shape[-1]
    wide_formula = depth * (2 * dim + 1) * (m["hidden"] - m["hidden_base"])
    return {"softmax": {"params": p0, "extra": 0, "formula": 0},
            "g3b": {"params": m["params_target"], "extra": m["params_target"] - p0, "formula": depth * per_head},
            "g3u": {"params": g3u, "extra": g3u - p0, "formula": per_head},
            "softmax_wide": {"params": m["params_wide"], "extra": m["params_wide"] - p0, "formula": wide_formula}}


def param_table(counts: Mapping[str, Mapping[str, int]]) -> str:
    """Markdown: per arm its parameters, the extra over softmax (counted and by formula) and
    the ratio to G3B."""
    ref = counts["g3b"]["params"]
    rows = [[f"`{a}`", TITLES.get(a, a), f"{c['params']:,}", f"{c['extra']:+,}", f"{c['formula']:+,}",
             f"{c['params'] / ref:.4f}"] for a, c in counts.items()]
    return markdown_table(["arm", "network", "parameters", "extra over softmax (counted)",
                           "extra (formula)", "÷ G3B"], rows, "llrrrr")


def arm_configs(params: Mapping[str, Any]) -> dict[str, tuple[str, ArchConfig]]:
    """``label → ("standard", config)`` for the four arms (module docstring) on
    ``params["model"]`` at ``params["image_size"]`` (the control's width depends on N, so on
    the image and patch size). A model that is not a softmax slot ViT (:func:`check_model`)
    → ParameterError."""
    model = params["model"]
    check_model(model)
    image_size, classes = int(params["image_size"]), int(params["classes"])
    matched = matched_mlp_ratio(model, image_size, classes)
    kw = {"softmax": {}, "g3b": {"mixer": "karat"}, "g3u": {"mixer": "karat_universal"},
          "softmax_wide": {"mlp_ratio": matched["mlp_ratio"]}}
    return {a: ("standard", arch_config(params, model, title=TITLES[a], model_kw=kw[a])) for a in ARMS}


# -- probes -----------------------------------------------------------------------------------
@torch.no_grad()
def scores(model: nn.Module, x: torch.Tensor, block: int = -1) -> torch.Tensor:
    """The pre-activation scores A = QKᵀ/√d_h of one attention block, ``[B, heads, N, N]``
    (CPU, fp32), for normalised images ``x``: recomputed from the block's input with its own
    q, k projections, the same for softmax and KArAt blocks. The training flag is restored."""
    attn = model.blocks[block].attn
    if not hasattr(attn, "qkv"):
        raise ParameterError(f"block {block} has no attention (a spectral block?)")
    got: dict[str, torch.Tensor] = {}
    handle = attn.register_forward_pre_hook(lambda _m, inputs: got.__setitem__("x", inputs[0]))
    was = model.training
    try:
        model.eval()
        model(x.to(next(model.parameters()).device))
    finally:
        handle.remove()
        model.train(was)
    h = got["x"]
    B, N, _ = h.shape
    q, k, _v = attn.qkv(h).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    return ((q * attn.scale) @ k.transpose(-2, -1)).float().cpu()


def _operator(model: nn.Module, block: int = -1) -> FourierKANOperator:
    attn = model.blocks[block].attn
    if not isinstance(attn, KANAttention):
        raise ParameterError(f"block {block} is not a KArAt block")
    return attn.operator


@torch.no_grad()
def operator_stats(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Over every attention block, head and query of images ``x``: the mean row sum of the
    attention matrix (softmax: 1) and the share of negative entries (softmax: 0), in %."""
    maps = probes.attention_maps(model, x)
    a = torch.cat([m.flatten() for m in maps])
    rows = torch.cat([m.sum(-1).flatten() for m in maps])
    return {"row_sum": float(rows.mean()), "negative_pct": float((a < 0).float().mean() * 100)}


def metrics_by_seed(result: SweepResult, x: torch.Tensor) -> dict[int, dict[str, float]]:
    """Per seed, not judged: for each KArAt arm the mean row sum of σ(A) (``row_sum_ARM``)
    and its share of negative entries (``negative_pct_ARM``) on the images ``x``: how far
    the learned operator is from a row-stochastic attention."""
    out: dict[int, dict[str, float]] = {}
    for arm in KARAT_ARMS:
        for j in result.of(arm):
            if j.get("model") is None:
                continue
            s = operator_stats(j["model"], x)
            out.setdefault(j["seed"], {}).update({f"row_sum_{arm}": s["row_sum"],
                                                  f"negative_pct_{arm}": s["negative_pct"]})
    return out


def unit_function(op: FourierKANOperator, head: int, p: int, q: int, x: torch.Tensor) -> torch.Tensor:
    """φ_pq(x) = Σ_m a_pqm cos(m·x) + b_pqm sin(m·x) of one head (m = 1..G)."""
    c = op.coef[head, p, q].detach().float().cpu()
    mx = x[:, None] * torch.arange(1, op.grid + 1, dtype=x.dtype)
    return torch.cos(mx) @ c[:op.grid] + torch.sin(mx) @ c[op.grid:]


def unit_functions(nets: Mapping[str, nn.Module], x: torch.Tensor, setting: str, head: int = 0,
                   block: int = -1, ps: Sequence[int] = (0, 1, 2, 3)) -> tuple[Figure, dict]:
    """A few learned unit functions φ_pq of one head of one block, per KArAt network (rows):
    left for key q = the class token, right for the patch token nearest the grid's centre;
    one line per rank index p, drawn over the range of the scores A that head sees on the
    images ``x`` (10 % padding); the shaded span is their 1st–99th percentile, the histogram
    under it their distribution."""
    names = list(nets)
    if not names:
        raise ValueError("no KArAt network to draw")
    fig, axes = new_figure(ncols=2, nrows=len(names), width=7.2, height=2.5 * len(names) + 0.5, squeeze=False)
    data: dict[str, Any] = {}
    for i, name in enumerate(names):
        net = nets[name]
        op = _operator(net, block)
        a = scores(net, x, block)[:, head].flatten()
        lo, hi = np.quantile(a.numpy(), [0.01, 0.99])
        pad = 0.1 * max(float(a.max() - a.min()), 1e-3)
        span = (float(a.min()) - pad, float(a.max()) + pad)  # the observed range: all the operator ever sees
        grid = torch.linspace(span[0], span[1], 400, dtype=torch.float64)
        gh, gw = net.grid
        centre = 1 + (gh // 2) * gw + gw // 2 if net.cls_token is not None else (gh // 2) * gw + gw // 2
        keys = {"key = class token": 0, f"key = patch {centre - 1} (centre)": centre} if net.cls_token is not None \
            else {f"key = patch {centre} (centre)": centre}
        data[name] = {"scores_q01_q99": [float(lo), float(hi)], "x": grid.numpy(), "phi": {}}
        for j, (label, q) in enumerate(keys.items()):
            ax = axes[i][j]
            ax2 = ax.twinx()  # behind the curves: the observed scores
            ax2.axvspan(lo, hi, color="0.92", linewidth=0, zorder=0)
            ax2.hist(a.numpy(), bins=40, color="0.55", alpha=0.45, density=True, zorder=1)
            ax2.set_yticks([])
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
            for k, p in enumerate(ps):
                if p >= op.rank:
                    continue
                y = unit_function(op, head, p, q, grid.float()).numpy()
                ax.plot(grid.numpy(), y, color=f"C{k % 10}", label=f"p = {p}", zorder=3)
                data[name]["phi"][f"p{p}_q{q}"] = y
            ax.set_zorder(ax2.get_zorder() + 1)
            ax.patch.set_visible(False)
            ax.axhline(0, color="0.5", linewidth=0.6)
            ax.set_title(f"{name}: {label}", fontsize=9)
            ax.set_ylabel("φ_pq(A)" if j == 0 else "")
            if i == len(names) - 1:
                ax.set_xlabel("pre-activation score A")
        for j in range(len(keys), 2):
            axes[i][j].set_visible(False)
    axes[0][0].legend(fontsize=7, ncol=2, loc="best")
    annotate_setting(fig, setting)
    return fig, jsonable({"head": head, "block": block, "functions": data, "setting": setting,
                          "shaded": "1st-99th percentile of the head's scores on the images"})
