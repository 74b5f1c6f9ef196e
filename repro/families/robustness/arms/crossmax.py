"""The ``crossmax`` arm of chapter 25: a network trained with the family's recipe, then
attacked on the fixed evaluation subset at every ε of the chapter's grid.

* ``multires=False`` — the single-resolution baseline: the family's ``standard`` model of the
  recipe (:meth:`~..crossmax.CrossMaxConfig.base`, trained once and shared with every chapter
  that asks for it), on the plain image, its final layer only. One deterministic head: PGD is
  the adaptive attack, and every attack setting is that one PGD.
* ``multires=True`` — CrossMax: stage 1 trains the multi-resolution network
  (:class:`~..crossmax.MultiResNet`) with the same recipe (plain cross-entropy on its final
  layer; checkpoint sub-folder ``backbone``); stage 2 freezes it and trains the heads with
  Adam (``head_epochs``, ``head_lr``; sub-folder ``heads``). Both live in the job's own shared
  folder (``where(cfg, seed, own=True)``). Then, per ε, per image:

  - ``adaptive``: EOT-PGD through the random stack and CrossMax (``eot_samples`` gradient
    samples per step, ``eot_steps`` steps);
  - ``standard``: PGD without EOT through CrossMax (what an evaluation that ignores the
    randomness runs);
  - ``transfer``: EOT-PGD on the final layer alone, its images read by every member and by
    CrossMax (the paper's observation that intermediate heads resist an attack on the full
    classifier; an attack that ignores the heads);
  - ``worst``: robust only if robust under all three (and AutoAttack, with
    ``autoattack_steps``), the tightest of our upper bounds.

  The family's sanity checks (:func:`sanity`) run at ``eval_eps`` for EOT-PGD on CrossMax —
  with the final layer's adversarial images as a transfer set, so that a transfer attack
  beating the white-box one (the follow-up's gradient-masking signature) fails check (c) —
  and for EOT-PGD on the final layer.

Metrics (both arms): ``top1`` (test top-1 over the whole test split; CrossMax's output for the
CrossMax arm), ``train_acc``, ``grad_evals``, ``eval_clean`` (on the subset),
``robust_<kind>_e<ε·255>`` and ``robust_<kind>`` at ``eval_eps`` (``robust_autoattack`` with
``autoattack_steps``). CrossMax only: ``top1_final`` and ``member_<m>_top1`` (test top-1 of
each member and of ``crossmax``), ``member_<m>_clean`` / ``member_<m>_attacked`` (on the
subset, clean and under EOT-PGD on the final layer at ``eval_eps``), ``head_gap`` (mean
accuracy of the heads minus the final layer's under that attack), ``eot_drop`` (PGD without
EOT minus EOT-PGD through CrossMax) and ``masking_gap`` (EOT-PGD through CrossMax minus
EOT-PGD on the final layer, read by CrossMax); the last three with their paired per-image
test-set variance.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ....arms import arm
from ....errors import ParameterError
from ....sweep import Job
from ....train import TrainConfig, dry_run, fit, predict
from ..attacks import AttackSpec, PixelModel, clean_correct, robust_correct, transfer_correct
from ..crossmax import KINDS, CrossMaxConfig, CrossMaxNet, build_crossmax, crossmax, eps_tag, heads_loss
from ..evaluate import eval_images
from ..sanity import run_sanity_checks
from ..protocol import CheckpointFor, build_model, checkpoint_folders, train_config
from .compare import Built, builder
from .standard import train_model


def _binomial_var(pct: float, n: int) -> float:
    q = min(max(pct / 100.0, 0.0), 1.0)
    return 100.0 ** 2 * q * (1.0 - q) / max(n, 1)


def _pct(correct: torch.Tensor) -> float:
    return 100.0 * float(correct.float().mean())


def pgd(cfg: CrossMaxConfig, eps: float, eot: bool) -> AttackSpec:
    """The chapter's PGD at ``eps``: with ``eot``, ``eot_samples`` gradient samples per step
    and ``eot_steps`` steps (0: the evaluation's); without, the evaluation's plain PGD."""
    assert cfg.eval is not None
    base = cfg.eval.attacks[0]
    if not eot:
        return AttackSpec("pgd", eps=eps, steps=base.steps, seed=base.seed, label=f"e{eps_tag(eps)}")
    return AttackSpec("pgd", eps=eps, steps=cfg.eot_steps or base.steps, eot_samples=cfg.eot_samples,
                      seed=base.seed, label=f"e{eps_tag(eps)}")


def autoattack(cfg: CrossMaxConfig, eot: bool) -> AttackSpec | None:
    """AutoAttack at ``eval_eps`` with ``autoattack_steps`` iterations ("rand" version with
    ``eot_samples`` when ``eot``), or None when ``autoattack_steps`` is 0."""
    if not cfg.autoattack_steps:
        return None
    base = cfg.eval.attacks[0]  # type: ignore[union-attr]
    return AttackSpec("autoattack", eps=base.eps, steps=cfg.autoattack_steps,
                      eot_samples=cfg.eot_samples if eot else 1, seed=base.seed)


def sanity(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: CrossMaxConfig, spec: AttackSpec,
           transfer: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """The family's sanity checks (``sanity.run_sanity_checks``) of the white-box attack
    ``spec`` on ``model`` (which takes [0, 1] images) on the evaluation subset: more steps,
    unbounded, Square at the same ε, and every ``transfer`` set (adversarial images made on
    another model or member: a transfer attack that beats the white-box one means its
    gradients are masked). ``spec`` is declared adaptive (a stochastic model attacked without
    EOT is caught anyway, and its number marked an upper bound). Returns the record the
    chapter's tables and guards read: ``n``, ``sanity``, ``flags``, ``upper_bound``."""
    ev = cfg.eval
    assert ev is not None
    square = AttackSpec("square", norm=spec.norm, eps=spec.eps, steps=ev.square_queries, seed=spec.seed)
    n = len(transfer[next(iter(transfer))]) if transfer else len(x)
    report = run_sanity_checks(model, x[:n], y[:n], spec, black_box=square, transfer=transfer, adaptive=True,
                               batch_size=ev.batch_size)
    return {"n": report.n, "sanity": report.as_record(), "flags": report.flags(), "upper_bound": report.upper_bound,
            "attack": spec.as_record()}


def _curves(correct: dict[str, dict[float, torch.Tensor]], cfg: CrossMaxConfig) -> tuple[dict, dict]:
    """``robust_<kind>_e<tag>`` per ε and ``robust_<kind>`` at ``eval_eps`` for every kind, from
    per-image correctness, with their binomial variances on the subset."""
    at = cfg.eval.attacks[0].eps  # type: ignore[union-attr]
    metrics: dict[str, float] = {}
    for kind, per_eps in correct.items():
        for e, ok in per_eps.items():
            metrics[f"robust_{kind}_e{eps_tag(e)}"] = _pct(ok)
        metrics[f"robust_{kind}"] = _pct(per_eps[at])
    n = len(next(iter(correct["adaptive"].values())))
    return metrics, {k: _binomial_var(v, n) for k, v in metrics.items()}


#: A dry run (``REPRO_DRY_RUN``) checks the code paths, not the numbers: it attacks this many
#: images with at most this many steps, EOT samples and Square queries, so a gpu-tier dry run
#: of a ResNet-18 under EOT-PGD finishes on a CPU in minutes, not hours.
DRY_IMAGES, DRY_STEPS, DRY_QUERIES = 8, 2, 10


def dry_config(cfg: CrossMaxConfig) -> CrossMaxConfig:
    """``cfg`` with its evaluation cut to the dry run's size (the recipe, hence the weights
    and checkpoints, untouched)."""
    ev = cfg.eval
    assert ev is not None
    spec = dataclasses.replace(ev.attacks[0], steps=min(ev.attacks[0].steps, DRY_STEPS))
    small = dataclasses.replace(ev, attacks=(spec,), images=min(ev.images or DRY_IMAGES, DRY_IMAGES),
                                square_queries=min(ev.square_queries, DRY_QUERIES))
    return dataclasses.replace(cfg, eval=small, eot_samples=min(cfg.eot_samples, DRY_STEPS),
                               eot_steps=min(cfg.eot_steps, DRY_STEPS) if cfg.eot_steps else 0,
                               autoattack_steps=min(cfg.autoattack_steps, DRY_STEPS))


@arm("crossmax", family="robustness", config=CrossMaxConfig)
def train_crossmax(cfg: CrossMaxConfig, data: Any, seed: int, checkpoint_dir: Path | None = None,
                   device: torch.device | str = "cpu", checkpoints: CheckpointFor | None = None) -> Job:
    """The single-resolution baseline (``cfg.multires`` False) or the CrossMax network, trained
    and evaluated as the module docstring says."""
    if checkpoints is None:
        checkpoints = checkpoint_folders(None, "", checkpoint_dir, "crossmax")
    if cfg.eval is None:
        raise ValueError("the crossmax arm needs an evaluation config (its attacks are the chapter's)")
    if dry_run():
        cfg = dry_config(cfg)
    if cfg.multires:
        return _crossmax(cfg, data, seed, checkpoints, device)
    return _baseline(cfg, data, seed, checkpoints, device)


def _baseline(cfg: CrossMaxConfig, data: Any, seed: int, checkpoints: CheckpointFor,
              device: torch.device | str) -> Job:
    model, fits, grad_evals = train_model(cfg.base(), data, seed, checkpoints, device, own=False)
    last = fits[-1].history[-1]
    model.eval()
    assert cfg.eval is not None
    at = cfg.eval.attacks[0].eps
    x, y, _ = eval_images(data.x_test, data.y_test, cfg.eval.images, cfg.eval.seed)
    net = PixelModel(model).eval()
    # one deterministic head: PGD is the adaptive attack, and every kind is that one PGD
    pgd_ok = {e: robust_correct(net, x, y, pgd(cfg, e, eot=False), cfg.eval.batch_size) for e in cfg.eps_grid}
    worst = dict(pgd_ok)
    aa = autoattack(cfg, eot=False)
    if aa is not None:
        aa_ok = robust_correct(net, x, y, aa, cfg.eval.batch_size)
        worst[at] = worst[at] & aa_ok
    metrics, test_var = _curves({**{k: pgd_ok for k in KINDS if k != "worst"}, "worst": worst}, cfg)
    n = len(pgd_ok[at])
    metrics.update(top1=last["test_acc"], train_acc=last["train_acc"], grad_evals=sum(grad_evals),
                   eval_clean=_pct(clean_correct(net, x, y, cfg.eval.batch_size)))
    test_var["eval_clean"] = _binomial_var(metrics["eval_clean"], n)
    if aa is not None:
        metrics["robust_autoattack"] = _pct(aa_ok)
        test_var["robust_autoattack"] = _binomial_var(metrics["robust_autoattack"], n)
    extra = {"title": cfg.title, "config": cfg.as_record(), "history": fits[-1].history,
             "eps_grid": list(cfg.eps_grid),
             "robustness": {"adaptive": sanity(net, x, y, cfg, pgd(cfg, at, eot=False))},
             "train_images": int(len(data.y_train))}
    return Job.from_fits(fits, metrics, n_test=len(data.y_test), extra=extra, model=model, test_var=test_var)


class _Members(nn.Module):
    """Every member's logits as one output, for ``repro.train.predict``."""

    def __init__(self, net: CrossMaxNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.member_logits(x)


def train_stages(cfg: CrossMaxConfig, data: Any, seed: int, checkpoints: CheckpointFor,
                 device: torch.device | str) -> tuple[CrossMaxNet, list[Any]]:
    """Stage 1 (the multi-resolution network, the family's recipe) and stage 2 (the heads on
    the frozen network, Adam), each checkpointed in a sub-folder of the job's own folder →
    ``(model, [fit of stage 1, fit of stage 2])``."""
    net = build_model(cfg.base(), data.num_classes, seed)  # seeds torch with the job's seed
    model = build_crossmax(cfg, net, data.num_classes, data.image_size)
    folder = checkpoints(cfg, seed, True)
    train = data.loader("train", cfg.batch_size, device, seed=seed)
    test = data.loader("test", 1000, device)
    desc = f"{cfg.title or 'crossmax'} · seed {seed}"
    res1 = fit(model.backbone, train, test, train_config(cfg, desc=f"{desc} · network"),
               checkpoint_dir=folder / "backbone" if folder is not None else None)
    model.freeze_backbone()
    heads_cfg = TrainConfig(epochs=cfg.head_epochs, optimizer="adamw", lr=cfg.head_lr, weight_decay=0.0,
                            schedule="constant", desc=f"{desc} · heads")  # AdamW without decay is Adam
    res2 = fit(model, train, test, heads_cfg, loss_fn=heads_loss, params=model.heads.parameters(),
               checkpoint_dir=folder / "heads" if folder is not None else None)
    return model, [res1, res2]


@builder("crossmax")
def build_crossmax_model(cfg: CrossMaxConfig, data: Any, seed: int, checkpoints: CheckpointFor, device: Any) -> Built:
    """The CrossMax model (multi-resolution network, heads, CrossMax; stochastic) for the
    family comparison, from the ``crossmax`` arm's own checkpoints (trained here if absent),
    with its final layer as a surrogate (the comparison also transfers attacks from it)."""
    if not isinstance(cfg, CrossMaxConfig) or not cfg.multires:
        raise ParameterError("the crossmax builder takes the chapter's multi-resolution CrossMaxConfig")

    def theirs(c: Any, s: int, own: bool = False, of: str = "") -> Path | None:
        return checkpoints(c, s, of="crossmax") if own else checkpoints(c, s, own, of)
    model, fits = train_stages(cfg, data, seed, theirs, device)
    model.eval()
    z, y_all = predict(_Members(model), data.loader("test", 1000, device))
    top1 = _pct(crossmax(z, model.k).argmax(1) == y_all)
    # the chapter's finding: an attack on the final layer alone can beat the one through CrossMax
    return Built(model.view("crossmax").eval(), True, fits, float(fits[0].train_images + fits[1].train_images), top1,
                 {"members": list(model.members), "k": model.k}, surrogates={"final": model.view("final").eval()})


def _crossmax(cfg: CrossMaxConfig, data: Any, seed: int, checkpoints: CheckpointFor,
              device: torch.device | str) -> Job:
    model, fits = train_stages(cfg, data, seed, checkpoints, device)
    model.eval()
    names = model.members
    assert cfg.eval is not None
    bs, at = cfg.eval.batch_size, cfg.eval.attacks[0].eps
    metrics: dict[str, float] = {"train_acc": fits[0].history[-1]["train_acc"],
                                 # stage 2 counted as one pass per image, though its backward stops at the heads
                                 "grad_evals": float(fits[0].train_images + fits[1].train_images)}
    # test top-1 of every member and of CrossMax over the whole test split (one pass)
    z, y_all = predict(_Members(model), data.loader("test", 1000, device))
    for i, name in enumerate(names):
        metrics[f"member_{name}_top1"] = _pct(z[:, i].argmax(1) == y_all)
    metrics["member_crossmax_top1"] = _pct(crossmax(z, model.k).argmax(1) == y_all)
    metrics["top1"], metrics["top1_final"] = metrics["member_crossmax_top1"], metrics["member_final_top1"]

    x, y, _ = eval_images(data.x_test, data.y_test, cfg.eval.images, cfg.eval.seed)
    cm, final = PixelModel(model.view("crossmax")).eval(), PixelModel(model.view("final")).eval()
    targets = {name: PixelModel(model.view(name)).eval() for name in names + ["crossmax"]}
    correct: dict[str, dict[float, torch.Tensor]] = {k: {} for k in KINDS}
    members_at: dict[str, torch.Tensor] = {}
    transfer: dict[str, dict[str, float]] = {}
    for e in cfg.eps_grid:
        correct["adaptive"][e] = robust_correct(cm, x, y, pgd(cfg, e, eot=True), bs)
        correct["standard"][e] = robust_correct(cm, x, y, pgd(cfg, e, eot=False), bs)
        # EOT-PGD on the final layer alone, read by every member and by CrossMax
        ok, robust, adv = transfer_correct(final, targets, x, y, pgd(cfg, e, eot=True), bs)
        correct["transfer"][e] = robust["crossmax"]
        transfer[f"e{eps_tag(e)}"] = {k: _pct(v) for k, v in robust.items()}
        if e == at:
            members_clean, members_at, adv_final = {k: _pct(v) for k, v in ok.items()}, robust, adv
        correct["worst"][e] = correct["adaptive"][e] & correct["standard"][e] & correct["transfer"][e]
    aa = autoattack(cfg, eot=True)
    if aa is not None:
        aa_ok = robust_correct(cm, x, y, aa, bs)
        correct["worst"][at] = correct["worst"][at] & aa_ok
    curve_metrics, test_var = _curves(correct, cfg)
    metrics.update(curve_metrics)
    n = len(correct["adaptive"][at])
    metrics["eval_clean"] = _pct(clean_correct(cm, x, y, bs))
    test_var["eval_clean"] = _binomial_var(metrics["eval_clean"], n)
    if aa is not None:
        metrics["robust_autoattack"] = _pct(aa_ok)
        test_var["robust_autoattack"] = _binomial_var(metrics["robust_autoattack"], n)
    for name in names + ["crossmax"]:
        metrics[f"member_{name}_clean"] = members_clean[name]
        metrics[f"member_{name}_attacked"] = _pct(members_at[name])
    # per image: mean over the heads of "still right" minus the final layer's; its variance is
    # the paired one (the same images), not two independent binomials
    heads = torch.stack([members_at[name].float() for name in names[:-1]]).mean(0)
    diff = 100.0 * (heads - members_at["final"].float())
    metrics["head_gap"] = float(diff.mean())
    test_var["head_gap"] = float(diff.var(unbiased=True)) / len(diff) if len(diff) > 1 else 0.0
    # the follow-up's signature of gradient masking: an attack that ignores CrossMax (on the
    # final layer) beats the white-box attack through it
    for key, a, b in (("eot_drop", "standard", "adaptive"), ("masking_gap", "adaptive", "transfer")):
        d = 100.0 * (correct[a][at].float() - correct[b][at].float())
        metrics[key] = float(d.mean())
        test_var[key] = float(d.var(unbiased=True)) / len(d) if len(d) > 1 else 0.0
    for k in list(metrics):
        if k.startswith("member_"):
            test_var[k] = _binomial_var(metrics[k], len(y_all) if k.endswith("_top1") else n)

    spec = pgd(cfg, at, eot=True)
    robustness = {"adaptive": sanity(cm, x, y, cfg, spec, transfer={"EOT-PGD on the final layer": adv_final}),
                  "final": sanity(final, x, y, cfg, spec), "transfer": transfer}
    extra = {"title": cfg.title, "config": cfg.as_record(), "history": fits[0].history,
             "head_history": fits[1].history, "members": names, "eps_grid": list(cfg.eps_grid),
             "train_images": int(len(data.y_train)),
             "robustness": robustness}
    return Job.from_fits(fits, metrics, n_test=len(data.y_test), extra=extra, model=model, test_var=test_var)
