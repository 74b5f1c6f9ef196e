"""The trainer: one loop for every chapter, resumable, with per-epoch history.

``fit(model, train, test, TrainConfig(...), checkpoint_dir=...)`` trains for ``epochs``
epochs (or a batch plan's budget), evaluating after each epoch. A checkpoint is written
atomically at the end of every epoch (or every ``checkpoint_every_s`` seconds, for epochs
so short that saving each one would cost more than it saves) and at the end of training.
Ctrl-C or SIGTERM saves one at the exact batch the run was in, then stops. Calling ``fit``
again with the same folder resumes from it (a finished job returns at once: "load or
train"). Data order and augmentation depend only on (seed, epoch) and the RNG states are
saved, so a resumed run on the same device follows the uninterrupted one exactly.

``fit`` reports its cost (training seconds and images) in the ``FitResult`` it returns and
adds it to :data:`COST`, which a run reads for its record: nothing here knows about runs.

Precision: ``TrainConfig.bf16`` and ``channels_last`` (both on by default) let a job use bf16
autocast and channels_last memory. CUDA always follows them; the CPU follows them only when the
process-wide switch ``REPRO_CPU_PRECISION=bf16`` is set (:func:`repro.modes.cpu_precision`),
and otherwise stays fp32/NCHW. :func:`precision` is the one place that decides, for ``fit`` and
``predict`` alike. Under autocast the trained model's outputs are cast back to float32, so
losses and metrics are computed in fp32. A CPU-bf16 job checkpoints to its own file, so jobs
never resume across precisions.
"""
from __future__ import annotations

import contextlib
import copy
import math
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data.loader import TensorLoader
from .errors import Interrupted
from .io import save_torch
from .modes import CPU_PRECISION_ENV, DRY_RUN_ENV, FRESH_ENV, cpu_precision, dry_run, fresh  # noqa: F401


@dataclass
class CostMeter:
    """Training seconds and images, summed over every ``fit`` of the process (a run reads the
    difference between its start and its end)."""

    train_s: float = 0.0
    train_images: int = 0
    # stored models (artifacts) loaded instead of trained: key → (seconds, images) it cost to
    # build them, and the order they were loaded in (a run counts each key once)
    reused: dict[str, tuple[float, int]] = field(default_factory=dict)
    reuse_log: list[str] = field(default_factory=list)

    def add(self, seconds: float, images: int) -> None:
        self.train_s += float(seconds)
        self.train_images += int(images)

    def reuse(self, key: str, seconds: float, images: int) -> None:
        """Note a stored model (an artifact, ``key``) that this process loaded instead of
        training, with what producing it cost when it was built."""
        self.reused[key] = (float(seconds), int(images))
        self.reuse_log.append(key)

    def reused_since(self, mark: int) -> tuple[float, int]:
        """Seconds and images of the distinct stored models loaded since ``len(reuse_log)`` was
        ``mark``."""
        keys = set(self.reuse_log[mark:])
        return sum(self.reused[k][0] for k in keys), sum(self.reused[k][1] for k in keys)


#: Every ``fit`` adds the cost of producing its model here (resumed work included).
COST = CostMeter()
#: Work done in this process: optimizer steps and evaluated batches. A dry-run test counts
#: these instead of timing a run.
WORK: Counter[str] = Counter()


LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Update(Protocol):
    """Replaces the update of one batch for methods that need more than one backward pass or
    more than one optimiser (gradient routing, chapter 19). Called as
    ``update(model, x, y, opt, autocast) -> (loss, logits)``: it runs its own forward passes
    (inside ``autocast()``), backward passes and ``opt.step()`` (``opt`` is fit's optimiser,
    with the scheduled lr already set). An optional ``state_dict`` / ``load_state_dict`` pair
    (an optimiser of its own) is saved in fit's checkpoints."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer,
                 autocast: Callable[[], Any]) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass
class TrainConfig:
    """Everything that sets how a model is trained (stored in its checkpoints)."""

    epochs: int = 10
    optimizer: str = "sgd"            # "sgd" | "adamw"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"          # "cosine" | "step" | "constant" | "linear" (to 0 after the warm-up)
    milestones: Sequence[float] = (0.5, 0.75)  # step schedule: fractions of training (≤ 1) or epochs
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    ema_decay: float | None = None    # keep an exponential moving average of the weights
    frozen_bn: bool = False           # BatchNorm layers stay in eval mode (running statistics frozen)
    bf16: bool = True                 # bf16 autocast: on CUDA, and on the CPU with REPRO_CPU_PRECISION=bf16
    channels_last: bool = True        # channels_last memory: likewise
    eval_every: int = 1
    checkpoint_every_s: float = 0.0   # 0: a checkpoint after every epoch
    progress: bool = True
    desc: str = ""

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', not {self.optimizer!r}")
        if self.schedule not in ("cosine", "step", "constant", "linear"):
            raise ValueError(f"schedule must be 'cosine', 'step', 'constant' or 'linear', not {self.schedule!r}")
        if self.epochs < 0 or self.lr <= 0:
            raise ValueError("epochs must be ≥ 0 and lr > 0")


@dataclass(frozen=True)
class Precision:
    """How one device runs a model: bf16 autocast or not, channels_last memory or not."""

    device_type: str
    bf16: bool
    channels_last: bool

    @property
    def tag(self) -> str:
        """'fp32', 'bf16', 'fp32+cl' or 'bf16+cl' ('cl': channels_last)."""
        return ("bf16" if self.bf16 else "fp32") + ("+cl" if self.channels_last else "")

    def autocast(self) -> torch.autocast:
        """The autocast context of this precision (disabled for fp32)."""
        return torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in this precision's memory format (image batches only)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x


def precision(device: torch.device | str, bf16: bool = True, channels_last: bool = True) -> Precision:
    """The precision a job asking for (bf16, channels_last) gets on ``device``: what it asks for
    on CUDA, and on the CPU when ``REPRO_CPU_PRECISION=bf16``; fp32/NCHW otherwise."""
    kind = torch.device(device).type
    if kind == "cuda" or (kind == "cpu" and cpu_precision() == "bf16"):
        return Precision(kind, bf16, channels_last)
    return Precision(kind, False, False)


def checkpoint_name(prec: Precision) -> str:
    """File of a job's checkpoint: ``last.pt``, or ``last.cpu-<tag>.pt`` for a reduced-precision
    CPU job, so that switching ``REPRO_CPU_PRECISION`` never resumes a job in another precision."""
    if prec.device_type == "cpu" and (prec.bf16 or prec.channels_last):
        return f"last.cpu-{prec.tag}.pt"
    return "last.pt"


def _float_outputs(module: nn.Module, args: Any, out: Any) -> Any:
    """Forward hook: the floating tensors of a model's output (also in tuples, lists and dicts)
    cast to float32, so losses and metrics on them are computed in fp32 under autocast."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, tuple) and hasattr(out, "_fields"):  # a namedtuple
        return type(out)(*(_float_outputs(module, args, o) for o in out))
    if isinstance(out, (tuple, list)):
        return type(out)(_float_outputs(module, args, o) for o in out)
    if isinstance(out, dict):
        return {k: _float_outputs(module, args, v) for k, v in out.items()}
    return out


@contextlib.contextmanager
def _fp32_outputs(model: nn.Module, enabled: bool) -> Iterator[None]:
    """While active (and ``enabled``), ``model``'s outputs are float32 (:func:`_float_outputs`)."""
    handle = model.register_forward_hook(_float_outputs) if enabled else None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


class BatchPlan(Protocol):
    """Decides which batches an epoch trains on (default: all, in the loader's order)."""

    def epoch_batches(self, loader: TensorLoader, epoch: int) -> Iterable[tuple[int, torch.Tensor]]: ...
    def observe(self, batch_id: int, loss: float) -> None: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class AllBatches:
    """The ordinary epoch: every batch of the loader's (seeded) order."""

    def epoch_batches(self, loader: TensorLoader, epoch: int):
        loader.set_epoch(epoch)
        return enumerate(loader.batches())

    def observe(self, batch_id: int, loss: float) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@dataclass
class StepInfo:
    """What a step callback sees."""

    model: nn.Module
    step: int
    epoch: int
    loss: float


@dataclass
class FitResult:
    model: nn.Module
    history: list[dict[str, float]]
    steps: int
    train_seconds: float
    train_images: int
    resumed_from_epoch: int | None = None
    ema_model: nn.Module | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}

    @property
    def images_per_s(self) -> float:
        return self.train_images / self.train_seconds if self.train_seconds else float("nan")


def cross_entropy_loss(label_smoothing: float = 0.0) -> LossFn:
    """Default loss: CE on the model's logits (in fp32); returns (loss, logits)."""
    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        logits = model(x)
        return F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing), logits
    return loss_fn


def freeze_batchnorm(model: nn.Module) -> int:
    """Put every BatchNorm layer of ``model`` in eval mode, so training leaves its running
    statistics alone and normalises with them (their affine weights still train). Returns how
    many layers it froze."""
    n = 0
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            n += 1
    return n


def lr_factor(cfg: TrainConfig, step: int, total: int, steps_per_epoch: int) -> float:
    """Multiplier of the base lr at ``step`` of ``total`` updates (warm-up, then the schedule)."""
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warm:
        return (step + 1) / warm
    if cfg.schedule == "constant" or total <= 0:
        return 1.0
    if cfg.schedule == "cosine":
        t = (step - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    if cfg.schedule == "linear":  # with a warm-up: the piecewise-linear "slow start, fast decay"
        t = (step - warm) / max(1, total - warm)
        return max(0.0, 1.0 - t)
    # step schedule: milestones as fractions of training (≤ 1) or as epochs (> 1)
    f = 1.0
    for m in cfg.milestones:
        at = m * total if m <= 1 else m * steps_per_epoch
        if step >= at:
            f *= cfg.gamma
    return f


def make_optimizer(model: nn.Module, cfg: TrainConfig,
                   params: Iterable[nn.Parameter] | None = None) -> torch.optim.Optimizer:
    """SGD or AdamW (``cfg.optimizer``) over ``params`` (default: every trainable parameter)."""
    # No weight decay on norm layers' and biases' 1-D parameters is a common refinement, but
    # the papers here decay everything, so the default does too.
    params = [p for p in (model.parameters() if params is None else params) if p.requires_grad]
    fused = {"fused": True} if next(model.parameters()).is_cuda else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay, **fused)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)


@torch.no_grad()
def predict(model: nn.Module, loader: TensorLoader, bf16: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [N, K] (float32, CPU) and labels [N] over a loader, model in eval mode, in the
    :func:`precision` the loader's device gives a job asking for ``bf16``."""
    was = model.training
    model.eval()
    outs, ys = [], []
    prec = precision(loader.device, bf16, channels_last=True)
    dry = dry_run()
    for x, y in loader:
        x = prec.prepare(x)
        with prec.autocast():
            out = model(x)
        outs.append(out.float().cpu())
        ys.append(y.cpu())
        WORK["eval_batches"] += 1
        if dry:
            break
    model.train(was)
    return torch.cat(outs), torch.cat(ys)


def evaluate(model: nn.Module, loader: TensorLoader, bf16: bool = True) -> dict[str, float]:
    """Mean CE loss and top-1 accuracy (%) of ``model`` on ``loader``."""
    logits, y = predict(model, loader, bf16)
    return {"loss": F.cross_entropy(logits, y).item(), "acc": (logits.argmax(1) == y).float().mean().item() * 100}


class _SigtermAsInterrupt:
    """While active (main thread only), SIGTERM raises :class:`repro.errors.Interrupted`, so a
    job stopped by a scheduler saves its checkpoint exactly as Ctrl-C does."""

    def __enter__(self) -> "_SigtermAsInterrupt":
        self.old = None
        if threading.current_thread() is threading.main_thread():
            def handler(signum, frame):
                raise Interrupted("SIGTERM")
            try:
                self.old = signal.signal(signal.SIGTERM, handler)
            except ValueError:  # not the main interpreter
                self.old = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)


def fit(
    model: nn.Module,
    train: TensorLoader,
    test: TensorLoader | None,
    cfg: TrainConfig,
    loss_fn: LossFn | None = None,
    plan: BatchPlan | None = None,
    updates_per_epoch: int | None = None,
    checkpoint_dir: str | Path | None = None,
    callbacks: Sequence[Any] = (),
    extra_eval: Callable[[nn.Module], dict[str, float]] | None = None,
    params: Iterable[nn.Parameter] | None = None,
    update: Update | None = None,
) -> FitResult:
    """Train ``model`` in place and return its history.

    loss_fn(model, x, y) → (loss, logits) replaces plain CE (distillation, multi-sample
    heads…). plan chooses the batches of each epoch (default: all); updates_per_epoch sets
    the schedule's length when a plan trains on fewer batches than the loader has.
    callbacks: objects with ``on_step(StepInfo)`` (and optionally state_dict /
    load_state_dict so their logs survive a resume). extra_eval(model) adds entries to each
    epoch's history. params: what fit's optimiser updates (default: every trainable
    parameter). update: replaces the forward/backward/step of each batch (:class:`Update`);
    ``loss_fn`` and ``cfg.grad_clip`` are then the update's business.
    """
    device = train.device
    cuda = device.type == "cuda"
    prec = precision(device, cfg.bf16, cfg.channels_last)
    model.to(device)
    if prec.channels_last:
        model.to(memory_format=torch.channels_last)
    loss_fn = loss_fn or cross_entropy_loss(cfg.label_smoothing)
    plan = plan or AllBatches()
    opt = make_optimizer(model, cfg, params)
    ema = copy.deepcopy(model).eval() if cfg.ema_decay else None
    spe = updates_per_epoch or len(train)
    total = cfg.epochs * spe
    history: list[dict[str, float]] = []
    step, start_epoch, train_s, images = 0, 0, 0.0, 0
    resumed = None
    dry = dry_run()
    # A dry run must neither resume from nor leave behind checkpoints a real run would trust.
    ckpt = Path(checkpoint_dir) / checkpoint_name(prec) if checkpoint_dir and not dry else None

    partial: dict[str, Any] | None = None  # where an interrupted epoch stopped
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        plan.load_state_dict(state.get("plan", {}))
        if update is not None and hasattr(update, "load_state_dict") and state.get("update") is not None:
            update.load_state_dict(state["update"])
        for cb, cs in zip(callbacks, state.get("callbacks", [])):
            if hasattr(cb, "load_state_dict"):
                cb.load_state_dict(cs)
        torch.set_rng_state(state["rng_cpu"])
        if cuda and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"])
        history, step, start_epoch = state["history"], state["step"], state["epoch"]
        train_s, images = state["train_s"], state["images"]
        partial = state.get("partial")
        resumed = start_epoch

    def checkpoint(epoch: int, part: dict[str, Any] | None = None,
                   rng: tuple[torch.Tensor, torch.Tensor | None] | None = None) -> None:
        if ckpt is None:
            return
        rng_cpu, rng_cuda = rng or (torch.get_rng_state(), torch.cuda.get_rng_state() if cuda else None)
        save_torch(ckpt, {
            "model": model.state_dict(), "optimizer": opt.state_dict(),
            "ema": ema.state_dict() if ema is not None else None, "plan": plan.state_dict(),
            "callbacks": [cb.state_dict() if hasattr(cb, "state_dict") else None for cb in callbacks],
            "update": update.state_dict() if update is not None and hasattr(update, "state_dict") else None,
            "rng_cpu": rng_cpu, "rng_cuda": rng_cuda,
            "history": history, "step": step, "epoch": epoch, "train_s": train_s, "images": images,
            "partial": part, "config": asdict(cfg), "precision": prec.tag,
        })

    from tqdm.auto import tqdm

    end_epoch = min(cfg.epochs, start_epoch + 1) if dry else cfg.epochs
    bar = tqdm(range(start_epoch, end_epoch), desc=cfg.desc or "train", unit="ep",
               disable=not cfg.progress, initial=start_epoch, total=cfg.epochs, leave=False)
    last_ckpt = time.time()
    with _SigtermAsInterrupt(), _fp32_outputs(model, prec.bf16):
        for epoch in bar:
            model.train()
            if cfg.frozen_bn:
                freeze_batchnorm(model)
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device)
            seen, done_in_epoch, spent = 0, 0, 0.0
            train.set_epoch(epoch)
            batches = plan.epoch_batches(train, epoch)
            gen = train._generator(2)  # this epoch's augmentation stream
            if partial is not None and partial["epoch"] == epoch:
                # Resume inside the epoch: skip the batches already trained, restore the sums.
                done_in_epoch, seen, spent = partial["pos"], partial["seen"], partial["seconds"]
                loss_sum += partial["loss_sum"]
                correct += partial["correct"]
                gen.set_state(partial["gen_state"])
            skip = done_in_epoch

            def snapshot() -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor | None]]:
                # The random state the next batch starts from: an interrupt inside a batch
                # (after its crops or dropout masks were drawn) must resume from here.
                return gen.get_state(), (torch.get_rng_state(), torch.cuda.get_rng_state() if cuda else None)
            gen_state, rng_state = snapshot()
            try:
                for batch_id, idx in batches:
                    if skip:
                        skip -= 1
                        continue
                    x, y = train.fetch(idx, gen)
                    x = prec.prepare(x)
                    f = lr_factor(cfg, step, total, spe)
                    for g in opt.param_groups:
                        g["lr"] = cfg.lr * f
                    if update is not None:
                        loss, logits = update(model, x, y, opt, prec.autocast)
                    else:
                        with prec.autocast():
                            loss, logits = loss_fn(model, x, y)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        if cfg.grad_clip:
                            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                        opt.step()
                    if ema is not None:
                        with torch.no_grad():
                            for pe, pm in zip(ema.state_dict().values(), model.state_dict().values()):
                                if pe.dtype.is_floating_point:
                                    pe.lerp_(pm, 1 - cfg.ema_decay)
                                else:
                                    pe.copy_(pm)
                    step += 1
                    WORK["train_steps"] += 1
                    n = len(y)
                    seen += n
                    ld = loss.detach()
                    loss_sum += ld * n
                    if logits is not None and logits.dim() == 2 and logits.shape[0] == n:
                        correct += (logits.detach().argmax(1) == y).sum()
                    done_in_epoch += 1  # the batch is trained: an interrupt from here on keeps it
                    gen_state, rng_state = snapshot()
                    if callbacks or not isinstance(plan, AllBatches):
                        lv = ld.item()
                        plan.observe(batch_id, lv)
                        for cb in callbacks:
                            cb.on_step(StepInfo(model=model, step=step, epoch=epoch, loss=lv))
                    if dry:
                        break
            except KeyboardInterrupt:
                # Ctrl-C or SIGTERM: keep every finished batch, then let the interrupt go on.
                if not dry and done_in_epoch:
                    dt = time.perf_counter() - t0
                    checkpoint(epoch, {"epoch": epoch, "pos": done_in_epoch, "seen": seen,
                                       "seconds": spent + dt, "loss_sum": loss_sum.detach().cpu(),
                                       "correct": correct.detach().cpu(), "gen_state": gen_state}, rng_state)
                raise
            partial = None
            if cuda:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0 + spent
            train_s += dt
            images += seen
            row = {"epoch": epoch + 1, "step": step, "lr": cfg.lr * lr_factor(cfg, max(step - 1, 0), total, spe),
                   "train_loss": (loss_sum / max(seen, 1)).item(), "train_acc": (correct / max(seen, 1)).item() * 100,
                   "images_per_s": seen / dt if dt > 0 else float("nan"), "epoch_s": dt}
            if test is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 in (cfg.epochs, end_epoch)):
                ev = evaluate(ema if ema is not None else model, test, cfg.bf16)
                row.update(test_loss=ev["loss"], test_acc=ev["acc"])
            if extra_eval is not None:
                row.update(extra_eval(model))
            history.append(row)
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", acc=f"{row.get('test_acc', float('nan')):.1f}",
                            ips=f"{row['images_per_s']:.0f}")
            if epoch + 1 == cfg.epochs or time.time() - last_ckpt >= cfg.checkpoint_every_s:
                checkpoint(epoch + 1)
                last_ckpt = time.time()
    bar.close()
    COST.add(train_s, images)  # the full cost of producing this model, resumed or not
    return FitResult(model=model, history=history, steps=step, train_seconds=train_s, train_images=images,
                     resumed_from_epoch=resumed, ema_model=ema)
