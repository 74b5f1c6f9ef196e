"""Chapter 25, CrossMax (Fort & Lakshminarayanan, "Ensemble everything everywhere: Multi-scale
aggregation for adversarial robustness", 2024): a network that sees a stack of noisy,
jittered, down- and up-sampled copies of its input, linear heads on its intermediate blocks,
and a robust aggregation of those heads' logits (CrossMax).

Parts (the arm that trains and evaluates them is :mod:`.arms.crossmax`):

* :class:`MultiResStack` — the input: from one image, one version per resolution ``r`` (random
  contrast and colour↔grey mix of the same random amount in [``colour_min``, 1), a random roll
  of up to ±``jitter`` px, bicubic downsampling to ``r``, ``noise``·U[0, 1) added, bicubic
  upsampling back, ``noise``·U[0, 1) added again, clipped to [0, 1]), stacked on the channel
  axis (3 channels per resolution) and normalised per triplet. Stochastic by default (torch's
  RNG: each forward pass draws new noise, as the official notebook does at test time);
  ``seed`` makes it a fixed function (the same draws on every call), for figures and tests;
* :class:`MultiResNet` — a registry network (``cnn3`` at the cpu tier, ``resnet18`` at the
  gpu tier) whose first convolution takes the stack (:func:`widen_input`), split into blocks
  (:func:`blocks_of`) so that their activations can be read;
* :class:`CrossMaxNet` — the frozen :class:`MultiResNet` plus one head (BatchNorm1d + Linear
  on the flattened activations) per chosen block; its members are those heads and the
  network's own final layer, and its output is :func:`crossmax` of their logits;
* :func:`crossmax` — subtract each member's max over classes, then each class's max over
  members, and take, per class, the k-th largest value over members;
* :class:`CrossMaxConfig`, :func:`arm_configs` — the chapter's two arms: ``baseline`` (the
  same network on the plain image, its final layer only, trained by the family's recipe; its
  model is the family's ``standard`` model of that recipe, so other chapters share it) and
  ``crossmax`` (the multi-resolution network trained by the same recipe, then its heads);
* tables and figures from the sweep's results (robust accuracy against ε for both arms under
  non-adaptive and adaptive attacks, accuracy per member under an attack on the final layer,
  the multi-resolution stack itself), and :func:`guards` (failed sanity checks, among them
  the final layer's adversarial images beating the white-box attack through CrossMax → flags).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from matplotlib.figure import Figure

from ...data import MEAN, STD
from ...errors import ParameterError
from ...models.stages import split_stages
from ...plots import image_grid
from ...plots.style import COLORS, annotate_setting, jsonable, new_figure
from ...sweep import SweepResult
from ...tables import markdown_table
from .attacks import AttackSpec
from .evaluate import EvalConfig
from .figures import eps_label, spread
from .protocol import RobustConfig, build_model, robust_config
from .tables import seed_mean

#: The attack settings every arm reports, at each ε (metric ``robust_<kind>_e<ε·255>`` and,
#: at ``eval_eps``, ``robust_<kind>``). For the single-resolution baseline (one deterministic
#: head) they are all the same PGD.
KINDS = ("transfer", "standard", "adaptive", "worst")
KIND_TEXT = {
    "transfer": "EOT-PGD on the final layer alone (ignores the heads)",
    "standard": "PGD through CrossMax, no EOT (ignores the noise)",
    "adaptive": "EOT-PGD through the noise and CrossMax",
    "worst": "worst case over the three attacks, per image",
}
#: Short names for legends and table headers.
KIND_LABEL = {"transfer": "EOT-PGD on final layer", "standard": "PGD, no EOT", "adaptive": "EOT-PGD",
              "worst": "worst case"}
#: Luma weights of torchvision's ``rgb_to_grayscale``, which the notebook's contrast change uses.
LUMA = (0.2989, 0.587, 0.114)


# -- the multi-resolution input --------------------------------------------------------------------------------
def roll_each(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """``torch.roll(x[i], (dy[i], dx[i]), dims=(-2, -1))`` for every image ``i`` of ``x``
    ``[B, C, H, W]`` at once (a gather, so gradients flow to ``x``)."""
    b, c, h, w = x.shape
    rows = (torch.arange(h, device=x.device).view(1, h) - dy.view(b, 1)) % h
    cols = (torch.arange(w, device=x.device).view(1, w) - dx.view(b, 1)) % w
    x = x.gather(2, rows.view(b, 1, h, 1).expand(b, c, h, w))
    return x.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))


def check_resolutions(resolutions: Sequence[int], image_size: int) -> tuple[int, ...]:
    """The stack's resolutions: distinct integers in [1, ``image_size``] (ParameterError otherwise)."""
    res = tuple(resolutions)
    if not res:
        raise ParameterError("resolutions is empty: the stack needs at least one resolution")
    bad = [r for r in res if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= image_size]
    if bad:
        raise ParameterError(f"resolutions must be integers in [1, image_size = {image_size}] px, got {bad}")
    if len(set(res)) != len(res):
        raise ParameterError(f"resolutions repeat: {list(res)}")
    return res


class MultiResStack(nn.Module):
    """One image → one noisy, jittered version per resolution, stacked on the channel axis.

    ``forward(x)`` takes images normalised with ``mean``/``std`` (the loaders' and
    ``PixelModel``'s convention), works on [0, 1] pixels and returns ``[B, 3·R, S, S]``, each
    triplet normalised with ``mean``/``std`` again. Per version and image (the official
    notebook's recipe, which applies the contrast change with the colour amount because its
    ``contrast`` variable is overwritten): amount ``a`` ~ U[``colour_min``, 1); contrast
    ``a·x + (1 − a)·mean(luma(x))``; roll by integers in [−``jitter``, ``jitter``] on both axes;
    colour ↔ grey ``a·x + (1 − a)·mean_c(x)``; bicubic to ``r`` px; + ``noise``·U[0, 1);
    bicubic back to ``S`` px; + ``noise``·U[0, 1); clip to [0, 1]. Every step but the clip is
    differentiable. ``seed`` None draws from torch's RNG (a stochastic defence); an integer
    draws from a fresh generator with that seed on every call (a fixed function of the batch).
    """

    def __init__(self, resolutions: Sequence[int], image_size: int, jitter: int = 3, noise: float = 0.2,
                 colour_min: float = 0.5, seed: int | None = None, mean: Sequence[float] = MEAN,
                 std: Sequence[float] = STD) -> None:
        super().__init__()
        self.resolutions = check_resolutions(resolutions, image_size)
        if isinstance(jitter, bool) or not isinstance(jitter, int) or not 0 <= jitter < image_size:
            raise ParameterError(f"jitter must be an integer in [0, image_size), got {jitter!r}")
        if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise >= 0):
            raise ParameterError(f"noise must be a number ≥ 0, got {noise!r}")
        if not (isinstance(colour_min, (int, float)) and 0.0 <= colour_min <= 1.0):
            raise ParameterError(f"colour_min must be in [0, 1], got {colour_min!r}")
        self.image_size = int(image_size)
        self.jitter, self.noise, self.colour_min, self.seed = int(jitter), float(noise), float(colour_min), seed
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("luma", torch.tensor(LUMA, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @property
    def channels(self) -> int:
        """Channels of the stack: 3 per resolution."""
        return 3 * len(self.resolutions)

    def _generator(self, device: torch.device) -> torch.Generator | None:
        return None if self.seed is None else torch.Generator(device=device).manual_seed(int(self.seed))

    def versions(self, x01: torch.Tensor) -> list[torch.Tensor]:
        """The versions ``[B, 3, S, S]`` in [0, 1] of images ``x01`` in [0, 1], one per resolution."""
        b, _, h, w = x01.shape
        if h != self.image_size or w != self.image_size:
            raise ParameterError(f"the stack was built for {self.image_size} px images, got {h}×{w}")
        g, dev = self._generator(x01.device), x01.device
        out = []
        for r in self.resolutions:
            a = self.colour_min + (1.0 - self.colour_min) * torch.rand(b, 1, 1, 1, generator=g, device=dev)
            dy = torch.randint(-self.jitter, self.jitter + 1, (b,), generator=g, device=dev)
            dx = torch.randint(-self.jitter, self.jitter + 1, (b,), generator=g, device=dev)
            grey = (x01 * self.luma).sum(1, keepdim=True).mean((2, 3), keepdim=True)
            # a ∈ [0, 1] blends two images in [0, 1]: no clamp needed after the contrast change
            v = a * x01 + (1 - a) * grey
            v = roll_each(v, dy, dx)
            v = a * v + (1 - a) * v.mean(1, keepdim=True)
            v = F.interpolate(v, size=(r, r), mode="bicubic", align_corners=False)
            v = v + self.noise * torch.rand(v.shape, generator=g, device=dev)
            v = F.interpolate(v, size=(h, w), mode="bicubic", align_corners=False)
            v = v + self.noise * torch.rand(v.shape, generator=g, device=dev)
            out.append(v.clamp(0.0, 1.0))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x01 = x.float() * self.std + self.mean  # back to pixels (PixelModel normalised them)
        return torch.cat([(v - self.mean) / self.std for v in self.versions(x01)], dim=1)


# -- the network -------------------------------------------------------------------------------------------------
def widen_input(net: nn.Module, channels: int) -> nn.Module:
    """``net`` with its first convolution replaced by a freshly initialised one that takes
    ``channels`` input channels (the official code replaces ResNet-152's conv1 the same way);
    every other layer is kept. Returns ``net``."""
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d):
            new = nn.Conv2d(channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                            bias=m.bias is not None)
            nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")  # as the registry's nets
            parent = net.get_submodule(name.rpartition(".")[0]) if "." in name else net
            setattr(parent, name.rpartition(".")[2], new)
            return net
    raise ParameterError(f"{type(net).__name__} has no convolution to widen")


def blocks_of(net: nn.Module) -> tuple[nn.Module, list[nn.Module]]:
    """``(stem, blocks)`` of a registry network: its stages (``repro.models.stages``), with
    every residual stage split into its blocks (a CIFAR ResNet-18: 8 blocks; ``cnn3``: its 3
    conv–norm–ReLU–pool groups). ``pool(blocks[-1](…blocks[0](stem(x))))`` feeds the head."""
    stem, stages = split_stages(net)
    blocks: list[nn.Module] = []
    for stage in stages:
        kids = list(stage.children()) if isinstance(stage, nn.Sequential) else []
        if kids and all(hasattr(k, "conv1") and hasattr(k, "conv2") for k in kids):
            blocks.extend(kids)
        else:
            blocks.append(stage)
    return stem, blocks


class MultiResNet(nn.Module):
    """``stack`` followed by ``net`` (a registry network, widened to the stack's channels).
    ``forward`` returns the network's own logits (its final layer on the pooled features)."""

    def __init__(self, net: nn.Module, stack: MultiResStack) -> None:
        super().__init__()
        self.stack = stack
        self.net = widen_input(net, stack.channels)
        self.num_blocks = len(blocks_of(self.net)[1])

    def block_outputs(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every block's activations and the final logits, in one pass (same logits as forward)."""
        stem, blocks = blocks_of(self.net)
        h = stem(self.stack(x))
        outs = []
        for block in blocks:
            h = block(h)
            outs.append(h)
        return outs, self.net.head(self.net.dropout(torch.flatten(self.net.pool(h), 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.stack(x))


def crossmax(logits: torch.Tensor, k: int) -> torch.Tensor:
    """CrossMax of member logits ``[B, M, C]`` → ``[B, C]``: subtract each member's max over
    classes, then each class's max over members, and keep, per class, the ``k``-th largest
    value over members (2 ≤ k ≤ M; with k = 1 every class would score 0)."""
    if logits.dim() != 3:
        raise ParameterError(f"crossmax takes logits [B, members, classes], got shape {list(logits.shape)}")
    m = logits.shape[1]
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= m:
        raise ParameterError(f"crossmax's k must be an integer in [2, members = {m}], got {k!r}")
    z = logits - logits.amax(dim=2, keepdim=True)
    z = z - z.amax(dim=1, keepdim=True)
    return z.topk(k, dim=1).values[:, k - 1]


def member_names(head_blocks: Sequence[int]) -> list[str]:
    """Names of the members: ``block<i>`` per head (1-based block index), then ``final``."""
    return [f"block{b}" for b in head_blocks] + ["final"]


class CrossMaxNet(nn.Module):
    """A trained :class:`MultiResNet` (frozen: it stays in eval mode whatever ``train()``
    says, so its BatchNorm statistics never move) with one head per block in ``head_blocks``
    (1-based; BatchNorm1d then Linear on the flattened activations, as the official notebook).
    Members: those heads, then the network's own final layer. ``forward`` returns
    :func:`crossmax` of the members' logits with ``k``."""

    def __init__(self, backbone: MultiResNet, head_blocks: Sequence[int], num_classes: int, k: int) -> None:
        super().__init__()
        blocks = tuple(int(b) for b in head_blocks)
        bad = [b for b in blocks if not 1 <= b <= backbone.num_blocks]
        if bad or len(set(blocks)) != len(blocks):
            raise ParameterError(f"head_blocks must be distinct block indices in [1, {backbone.num_blocks}], "
                                 f"got {list(blocks)}")
        if not isinstance(k, int) or not 2 <= k <= len(blocks) + 1:
            raise ParameterError(f"crossmax_k must be in [2, members = {len(blocks) + 1}], got {k!r}")
        self.backbone, self.head_blocks, self.k = backbone, blocks, int(k)
        dims = self._block_dims()
        self.heads = nn.ModuleList(nn.Sequential(nn.Flatten(), nn.BatchNorm1d(dims[b - 1]),
                                                 nn.Linear(dims[b - 1], num_classes)) for b in blocks)

    def freeze_backbone(self) -> "CrossMaxNet":
        """Stop the backbone's parameters from asking for gradients (the heads' stage trains
        only the heads, and the backward pass then stops at them). Input gradients, which the
        attacks need, still flow through it."""
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        return self

    def _block_dims(self) -> list[int]:
        """Flattened size of each block's activations (a pass of zeros through the network
        without the stack: no random draw, no BatchNorm update)."""
        net, was = self.backbone.net, self.backbone.training
        stem, blocks = blocks_of(net)
        net.eval()
        dev = next(net.parameters()).device
        s = self.backbone.stack.image_size
        with torch.no_grad():
            h = stem(torch.zeros(1, self.backbone.stack.channels, s, s, device=dev))
            dims = []
            for block in blocks:
                h = block(h)
                dims.append(int(h[0].numel()))
        net.train(was)
        return dims

    @property
    def members(self) -> list[str]:
        return member_names(self.head_blocks)

    def train(self, mode: bool = True) -> "CrossMaxNet":
        super().train(mode)
        self.backbone.eval()
        return self

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every member ``[B, M, C]`` (heads in ``head_blocks`` order, final last)."""
        outs, final = self.backbone.block_outputs(x)
        per = [head(outs[b - 1]) for head, b in zip(self.heads, self.head_blocks)]
        return torch.stack(per + [final], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return crossmax(self.member_logits(x), self.k)

    def view(self, member: str) -> nn.Module:
        """One output as a network of its own: ``"crossmax"``, ``"final"`` or ``"block<i>"``."""
        if member != "crossmax" and member not in self.members:
            raise ParameterError(f"no member {member!r}: one of crossmax, {', '.join(self.members)}")
        return MemberView(self, member)


class MemberView(nn.Module):
    """The logits of one member of a :class:`CrossMaxNet` (or its CrossMax output)."""

    def __init__(self, net: CrossMaxNet, member: str) -> None:
        super().__init__()
        self.net, self.member = net, member

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.member == "crossmax":
            return self.net(x)
        if self.member == "final":
            return self.net.backbone(x)  # the final layer alone needs no head
        return self.net.member_logits(x)[:, self.net.members.index(self.member)]


def heads_loss(model: CrossMaxNet, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fit's ``loss_fn`` of the heads' stage: the sum of every head's cross-entropy (the heads
    are independent, so this trains each as the official notebook does one by one; the final
    layer is the backbone's and stays as trained). Returns the CrossMax logits for fit's
    training accuracy."""
    z = model.member_logits(x)
    loss = sum(F.cross_entropy(z[:, i].float(), y) for i in range(len(model.head_blocks)))
    return loss, crossmax(z, model.k).detach()


# -- configs -----------------------------------------------------------------------------------------------------
@dataclass
class CrossMaxConfig(RobustConfig):
    """One model of the chapter. The :class:`~.protocol.RobustConfig` fields set the network
    and its SGD recipe; besides them:

    ``multires``: the CrossMax network (True) or the single-resolution baseline (False: the
    family's ``standard`` model of this recipe on the plain image, its final layer only). The
    stack: ``resolutions`` (px), ``jitter`` (px), ``noise``, ``colour_min``. The heads:
    ``head_blocks`` (1-based blocks with a head; empty: every block), trained for
    ``head_epochs`` with Adam at ``head_lr`` on the frozen network; ``crossmax_k``.
    Evaluation only (not in the recipe): ``eps_grid`` (L∞ radii in [0, 1] besides the
    evaluation's own), ``eot_samples`` and ``eot_steps`` (0: the evaluation's PGD steps) of the
    adaptive attack, ``autoattack_steps`` (0: no AutoAttack; otherwise its iterations, in its
    "rand" version with ``eot_samples`` for CrossMax)."""

    multires: bool = True
    resolutions: tuple[int, ...] = (32, 16, 8, 4)
    jitter: int = 3
    noise: float = 0.2
    colour_min: float = 0.5
    head_blocks: tuple[int, ...] = ()
    crossmax_k: int = 3
    head_epochs: int = 1
    head_lr: float = 3.3e-5
    eps_grid: tuple[float, ...] = ()
    eot_samples: int = 8
    eot_steps: int = 0
    autoattack_steps: int = 0

    #: Fields that set only the evaluation: the recipe (the checkpoint's key) leaves them out.
    EVAL_FIELDS = ("eps_grid", "eot_samples", "eot_steps", "autoattack_steps")
    #: Fields of the multi-resolution network; the baseline's recipe leaves them out.
    MULTIRES_FIELDS = ("resolutions", "jitter", "noise", "colour_min", "head_blocks", "crossmax_k", "head_epochs",
                       "head_lr")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.resolutions = tuple(self.resolutions)
        self.head_blocks = tuple(self.head_blocks)
        self.eps_grid = tuple(float(e) for e in self.eps_grid)
        for name in ("head_epochs", "eot_samples"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ParameterError(f"{name} must be an integer ≥ 1, got {v!r}")
        for name in ("eot_steps", "autoattack_steps", "crossmax_k"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ParameterError(f"{name} must be an integer ≥ 0, got {v!r}")
        if self.multires and self.crossmax_k < 2:
            raise ParameterError(f"crossmax_k must be ≥ 2 (with k = 1 every class scores 0), got {self.crossmax_k}")
        if not (isinstance(self.head_lr, (int, float)) and math.isfinite(self.head_lr) and self.head_lr > 0):
            raise ParameterError(f"head_lr must be a number > 0, got {self.head_lr!r}")
        bad = [e for e in self.eps_grid if not 0.0 < e <= 1.0]
        if bad:
            raise ParameterError(f"eps_grid holds L∞ radii in (0, 1] pixel units (8/255, not 8), got {bad}")
        if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.head_blocks):
            raise ParameterError(f"head_blocks are 1-based block indices, got {list(self.head_blocks)}")
        if self.adversarial or self.poison is not None or self.init is not None:
            raise ParameterError("the CrossMax chapter trains without adversarial training, poison or init")

    def as_record(self) -> dict[str, Any]:
        rec = super().as_record()
        rec.update({f: (list(v) if isinstance(v, tuple) else v) for f in ("multires", *self.MULTIRES_FIELDS,
                                                                           *self.EVAL_FIELDS)
                    for v in [getattr(self, f)]})
        return rec

    def recipe(self) -> dict[str, Any]:
        rec = super().recipe()
        for f in self.EVAL_FIELDS:
            rec.pop(f)
        return rec

    def base(self) -> RobustConfig:
        """The family's plain config of this recipe: the baseline's shared ``standard`` model,
        and the recipe the multi-resolution network trains with."""
        kw = {f.name: getattr(self, f.name) for f in dataclasses.fields(RobustConfig)}
        return RobustConfig(**kw)


def eps_grid(params: Mapping[str, Any]) -> list[float]:
    """The evaluation's L∞ radii: ``eps_grid_255``/255 and ``eval_eps``, sorted, distinct."""
    grid = [float(e) / 255.0 for e in params["eps_grid_255"]]
    bad = [e for e in params["eps_grid_255"] if not 0.0 < float(e) <= 255.0]
    if bad:
        raise ParameterError(f"eps_grid_255 holds radii in units of 1/255, each in (0, 255], got {bad}")
    out: list[float] = []
    for e in sorted(grid + [float(params["eval_eps"])]):
        if not out or abs(e - out[-1]) > 1e-9:
            out.append(e)
    return out


def eps_tag(eps: float) -> str:
    """ε in a metric name: ``8`` for 8/255, ``0p5`` for 0.5/255."""
    k = round(float(eps) * 255, 4)
    return (f"{k:g}" if k != int(k) else f"{int(k)}").replace(".", "p")


def eval_config(params: Mapping[str, Any]) -> EvalConfig:
    """The fixed evaluation subset and the sanity budget (the attacks are the arm's: PGD at
    every ε, ``attack_steps`` steps)."""
    spec = AttackSpec("pgd", eps=float(params["eval_eps"]), steps=int(params["attack_steps"]),
                      seed=int(params["eval_seed"]))
    return EvalConfig(attacks=(spec,), images=int(params["eval_images"]), seed=int(params["eval_seed"]),
                      square_queries=int(params["square_queries"]))


def arm_configs(params: Mapping[str, Any]) -> dict[str, tuple[str, CrossMaxConfig]]:
    """``label → ("crossmax", config)``: ``baseline`` (single resolution, final layer only)
    and ``crossmax`` (multi-resolution network, heads, CrossMax). Every setting is checked
    here (ParameterError before any work)."""
    from .arms import crossmax as _arm  # noqa: F401  (registers the arm; a module-level import would be a cycle)

    check_resolutions(params["resolutions"], int(params["image_size"]))
    ev = eval_config(params)
    common = dict(eps_grid=tuple(eps_grid(params)), eot_samples=int(params["eot_samples"]),
                  eot_steps=int(params["eot_steps"]), autoattack_steps=int(params["autoattack_steps"]), eval=ev)
    multires = dict(resolutions=tuple(params["resolutions"]), jitter=int(params["jitter"]),
                    noise=float(params["noise"]), colour_min=float(params["colour_min"]),
                    head_blocks=tuple(params["head_blocks"]), crossmax_k=int(params["crossmax_k"]),
                    head_epochs=int(params["head_epochs"]), head_lr=float(params["head_lr"]))
    base = robust_config(params)
    check_members(base, tuple(params["head_blocks"]), int(params["crossmax_k"]))
    kw = {f.name: getattr(base, f.name) for f in dataclasses.fields(RobustConfig) if f.name not in ("eval", "title")}
    return {
        "baseline": ("crossmax", CrossMaxConfig(**kw, **common, multires=False, title="single-resolution baseline")),
        "crossmax": ("crossmax", CrossMaxConfig(**kw, **common, **multires, multires=True,
                                                title="multi-resolution CrossMax")),
    }


def check_members(cfg: RobustConfig, head_blocks: Sequence[int], k: int) -> int:
    """The number of blocks of ``cfg``'s network; ParameterError, before any training, when
    ``head_blocks`` names a block it does not have or ``k`` is outside [2, members]."""
    blocks = len(blocks_of(build_model(cfg, 2, 0))[1])
    bad = [b for b in head_blocks if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= blocks]
    if bad or len(set(head_blocks)) != len(head_blocks):
        raise ParameterError(f"head_blocks must be distinct block indices in [1, {blocks}] ({cfg.model} has {blocks} "
                             f"blocks; [] puts a head on each), got {list(head_blocks)}")
    members = (len(head_blocks) or blocks) + 1
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= members:
        raise ParameterError(f"crossmax_k must be an integer in [2, members = {members}] (with k = 1 every class "
                             f"scores 0), got {k!r}")
    return blocks


def build_crossmax(cfg: CrossMaxConfig, net: nn.Module, num_classes: int, image_size: int,
                   stack_seed: int | None = None) -> CrossMaxNet:
    """The CrossMax network of ``cfg`` around a fresh registry network ``net`` (its heads'
    blocks resolved: empty ``head_blocks`` → every block)."""
    stack = MultiResStack(cfg.resolutions, image_size, cfg.jitter, cfg.noise, cfg.colour_min, seed=stack_seed)
    backbone = MultiResNet(net, stack)
    blocks = cfg.head_blocks or tuple(range(1, backbone.num_blocks + 1))
    return CrossMaxNet(backbone, blocks, num_classes, cfg.crossmax_k)


# -- results: curves, tables, guards --------------------------------------------------------------------------------
def _jobs(result: SweepResult, arm: str) -> list[dict[str, Any]]:
    return [j for j in result.of(arm) if "eval_clean" in j["metrics"]]


def robust_curves(result: SweepResult) -> dict[str, dict[float, list[float]]]:
    """Curves for ``figures.plot_robust_vs_eps``: the baseline under PGD, and CrossMax under
    each attack setting (:data:`KINDS`), per ε (0: clean accuracy on the subset), per seed."""
    curves: dict[str, dict[float, list[float]]] = {}
    base = _jobs(result, "baseline")
    if base:
        curves["baseline · PGD"] = _curve(base, "adaptive")
    cm = _jobs(result, "crossmax")
    for kind in KINDS:
        if cm:
            curves[f"CrossMax · {KIND_LABEL[kind]}"] = _curve(cm, kind)
    return curves


def _curve(jobs: Sequence[dict[str, Any]], kind: str) -> dict[float, list[float]]:
    grid = jobs[0]["extra"]["eps_grid"]
    out: dict[float, list[float]] = {0.0: [j["metrics"]["eval_clean"] for j in jobs]}
    for e in grid:
        out[float(e)] = [j["metrics"][f"robust_{kind}_e{eps_tag(e)}"] for j in jobs]
    return out


def member_accuracy(result: SweepResult, setting: str, eps: float) -> tuple[Figure, dict]:
    """Accuracy of each member (heads by block, the final layer) and of CrossMax on the
    evaluation subset, clean and under EOT-PGD crafted on the final layer alone at ``eps``: bars
    are means over seeds, whiskers min–max, dots seeds."""
    jobs = _jobs(result, "crossmax")
    if not jobs:
        raise ParameterError("no crossmax job to plot")
    names = list(jobs[0]["extra"]["members"]) + ["crossmax"]
    fig, ax = new_figure(width=max(4.2, 0.9 * len(names) + 1.6), height=3.4)
    xs = np.arange(len(names))
    width = 0.38
    series: dict[str, Any] = {}
    for i, (what, label, colour) in enumerate((("clean", "clean", COLORS[0]),
                                               ("attacked", f"EOT-PGD on the final layer, ε {eps_label(eps)}", COLORS[1]))):
        stats = [spread([j["metrics"][f"member_{n}_{what}"] for j in jobs]) for n in names]
        pos = xs + (i - 0.5) * width
        ax.bar(pos, [s["mean"] for s in stats], width, color=colour, alpha=0.85, label=label, zorder=2)
        ax.errorbar(pos, [s["mean"] for s in stats], yerr=[[s["mean"] - s["min"] for s in stats],
                                                            [s["max"] - s["mean"] for s in stats]],
                    fmt="none", ecolor="0.2", capsize=2.5, elinewidth=0.9, zorder=3)
        for p, s in zip(pos, stats):
            ax.scatter([p] * s["n"], s["values"], s=9, color="0.15", alpha=0.6, linewidths=0, zorder=4)
        series[what] = {n: s for n, s in zip(names, stats)}
    ax.set_xticks(xs, [n.replace("block", "block ").replace("final", "final layer").replace("crossmax", "CrossMax")
                       for n in names])
    ax.set_ylabel("accuracy on the evaluation subset (%)")
    ax.set_ylim(0, max(10.0, max(s["max"] for s in series["clean"].values()) * 1.25))
    ax.set_title("Members under an attack on the final layer")
    ax.legend(loc="upper left")
    annotate_setting(fig, setting)
    return fig, jsonable({"members": names, "series": series, "eps": eps, "n_seeds": len(jobs),
                          "bars": "mean over seeds, whiskers min-max", "setting": setting})


def stack_examples(data: Any, cfg: CrossMaxConfig, classes: int = 6, seed: int = 0) -> tuple[list[torch.Tensor], list[str]]:
    """Rows for ``repro.plots.image_grid``: the first test image of each of the first
    ``classes`` classes, then its version at each resolution (one fixed draw, ``seed``)."""
    k = min(classes, data.num_classes)
    idx = [int((data.y_test == c).nonzero()[0]) for c in range(k) if bool((data.y_test == c).any())]
    x = data.x_test[torch.as_tensor(idx)]
    stack = MultiResStack(cfg.resolutions, data.image_size, cfg.jitter, cfg.noise, cfg.colour_min, seed=seed)
    with torch.no_grad():
        versions = stack.versions(x.float() / 255.0)
    rows = [x] + [(v * 255).round().clamp(0, 255).to(torch.uint8) for v in versions]
    return rows, [data.class_names[int(data.y_test[i])] for i in idx]


def stack_grid(data: Any, cfg: CrossMaxConfig, setting: str, classes: int = 6) -> tuple[Figure, dict]:
    """The multi-resolution stack: original test images (top) and their version at each
    resolution, as the network's input channels see them (one draw of the noise)."""
    rows, names = stack_examples(data, cfg, classes)
    labels = ["original"] + [f"{r} px" for r in cfg.resolutions]
    fig, fig_data = image_grid(rows, labels, [n.replace("_", " ")[:9] for n in names], setting=setting)
    fig_data.update(classes=names, resolutions=list(cfg.resolutions), jitter=cfg.jitter, noise=cfg.noise,
                    colour_min=cfg.colour_min)
    return fig, fig_data


def _cell(values: Sequence[float]) -> str:
    v = list(values)
    return "—" if not v else f"{np.mean(v):.1f} ({min(v):.1f}–{max(v):.1f})"


def summary_table(result: SweepResult) -> str:
    """One row per arm: clean-test top-1 over the whole test split (CrossMax: also its final
    layer alone), and on the evaluation subset at ``eval_eps`` the clean and robust accuracy
    under each attack setting; mean over seeds (min–max)."""
    rows = []
    for arm in ("baseline", "crossmax"):
        jobs = result.of(arm)
        if not jobs:
            continue
        m = lambda k: [j["metrics"][k] for j in jobs if k in j["metrics"]]  # noqa: E731
        rows.append([f"`{arm}`", _cell(m("top1")), _cell(m("top1_final")), _cell(m("eval_clean")),
                     *[_cell(m(f"robust_{k}")) for k in KINDS]])
    return markdown_table(["arm", "test top-1", "final layer alone", "subset clean",
                           *[KIND_LABEL[k] for k in KINDS]], rows, "lrrrrrrr")


def gap_table(result: SweepResult) -> str:
    """CrossMax at ``eval_eps``, per seed and mean: how much EOT takes away from plain PGD
    through CrossMax (``eot_drop``), and how much further the attack on the final layer alone
    goes than the adaptive attack through CrossMax (``masking_gap``: positive values are the
    follow-up's signature of gradient masking), each with its paired 95% interval from the
    per-image differences."""
    jobs = result.of("crossmax")
    rows = []
    for key, text in (("eot_drop", "PGD without EOT − EOT-PGD, through CrossMax"),
                      ("masking_gap", "EOT-PGD through CrossMax − EOT-PGD on the final layer")):
        cells = []
        for j in jobs:
            v, var = j["metrics"][key], (j.get("test_var") or {}).get(key, 0.0)
            cells.append(f"{v:+.1f} ± {1.96 * math.sqrt(var):.1f}")
        vals = [j["metrics"][key] for j in jobs]
        rows.append([text, *cells, f"{np.mean(vals):+.1f}" if vals else "—"])
    seeds = [f"seed {j['seed']}" for j in jobs]
    return markdown_table(["robust accuracy difference (pts)", *seeds, "mean"], rows, "l" + "r" * (len(seeds) + 1))


def member_table(result: SweepResult) -> str:
    """Per member of CrossMax: clean-test top-1, and on the subset clean and under EOT-PGD on
    the final layer at ``eval_eps`` (mean over seeds, min–max)."""
    jobs = result.of("crossmax")
    if not jobs:
        return ""
    names = list(jobs[0]["extra"]["members"]) + ["crossmax"]
    rows = [[f"`{n}`", _cell([j["metrics"][f"member_{n}_top1"] for j in jobs]),
             _cell([j["metrics"][f"member_{n}_clean"] for j in jobs]),
             _cell([j["metrics"][f"member_{n}_attacked"] for j in jobs])] for n in names]
    return markdown_table(["member", "test top-1", "subset clean", "under EOT-PGD on the final layer"], rows, "lrrr")


SANITY_SETS = (("baseline", "adaptive", "PGD"), ("crossmax", "adaptive", "EOT-PGD through CrossMax"),
               ("crossmax", "final", "EOT-PGD on the final layer"))


def sanity_table(result: SweepResult) -> str:
    """Per evaluated (arm, attack) and seed: clean and white-box accuracy at ``eval_eps`` and
    each sanity check (twice the steps, unbounded, Square, and for CrossMax the transfer of
    the final layer's adversarial images) with its number and verdict, and whether the number
    is only an upper bound."""
    rows = []
    for arm, which, text in SANITY_SETS:
        for j in result.of(arm):
            rec = (j["extra"].get("robustness") or {}).get(which)
            san = (rec or {}).get("sanity")
            if not san:
                continue
            checks = {c["name"]: c for c in san["checks"]}

            def cell(name: str, key: str) -> str:
                c = checks.get(name)
                return "—" if c is None else f"{c['numbers'][key]:.1f} {'✓' if c['passed'] else '✗ FAILED'}"
            transfer = next((c for c in san["checks"] if c["name"].startswith("transfer:")), None)
            rows.append([f"`{arm}`", text, str(j["seed"]), str(rec["n"]), f"{san['clean']:.1f}",
                         f"{san['white_box']:.1f}", cell("more_steps", "more_steps_acc"), cell("unbounded", "acc"),
                         cell("black_box", "acc"), "—" if transfer is None else cell(transfer["name"], "acc"),
                         "yes" if rec["upper_bound"] else "no"])
    return markdown_table(["arm", "attack", "seed", "images", "clean", "white-box", "2× steps", "unbounded (ε = 1)",
                           "Square", "from the final layer", "upper bound"], rows, "llrrrrrrrrl")


#: What each claim rests on: (arm, evaluation) pairs whose failed sanity checks flag it.
RESTS_ON = {
    "adaptive_robustness": (("baseline", "adaptive"), ("crossmax", "adaptive"), ("crossmax", "final")),
    "standard_attack": (("baseline", "adaptive"), ("crossmax", "adaptive")),
    "heads_robust": (("crossmax", "final"),),
}


def guards(result: SweepResult, claims: Sequence[Any]) -> list[tuple[str, str]]:
    """``(claim key, reason)`` for each claim resting on an evaluation whose sanity checks
    failed (:data:`RESTS_ON`); pass each to ``run.flag(reason, claim=key)``."""
    out = []
    for c in claims:
        reasons = []
        for arm, which in RESTS_ON.get(c.id, ()):
            for j in result.of(arm):
                for f in ((j["extra"].get("robustness") or {}).get(which) or {}).get("flags", []):
                    reasons.append(f"{arm} ({which}) seed {j['seed']}: {f}")
        if reasons:
            out.append((c.key, "; ".join(reasons)))
    return out


def comparison_models(params: Mapping[str, Any]) -> dict[str, tuple[str, RobustConfig]]:
    """The chapter's CrossMax model for the family comparison (chapter 46), as ``label →
    (builder, config)``, with the config trained here, so the comparison loads it from the
    shared checkpoints (and attacks it with EOT: it is stochastic)."""
    return {"crossmax": ("crossmax", arm_configs(params)["crossmax"][1])}
