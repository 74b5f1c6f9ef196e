"""Training throughput (images/s) of reference models on this device, in every precision, recorded
in ``results/bench.json``.

Each model is timed in four precisions: fp32 or bf16 autocast, each with NCHW or channels_last
memory (:data:`COMBOS`). It uses the real trainer step (augmentation included) on random uint8
images held on the device, so it measures the loop the chapters run. A timed run takes at least
``steps`` updates and at least ``min_seconds`` in the fastest precision (small models get more
steps, so a scheduler's hiccup does not decide their number). The combinations are timed
in turns (fp32, fp32+cl, bf16, bf16+cl, fp32, …), ``repeats`` times, and each one's best is kept
(other work on a shared machine only ever slows a run down, so the fastest of the repeats is the
closest to the machine's speed); every repeat's images/s and the median are recorded too. ``ratios`` divides every precision's
images/s by the same model's fp32/NCHW.

``results/bench.json`` holds ``runs`` (one row per model, device and precision; read by the
book's results page) and ``ratios`` (device name → model → precision tag → speed-up).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import statistics
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from . import models
from .data.loader import TensorLoader
from .io import write_json
from .modes import CPU_PRECISION_ENV
from .paths import results_dir
from .provenance import environment
from .run import pick_device
from .train import Precision, TrainConfig, fit

#: (bf16 autocast, channels_last) of the four timed precisions; the first is the baseline.
COMBOS: tuple[tuple[bool, bool], ...] = ((False, False), (False, True), (True, False), (True, True))
DEFAULT_MODELS = ("cnn3", "resnet20", "resnet18", "vit_tiny_p4")


@contextlib.contextmanager
def _cpu_follows_config() -> Iterator[None]:
    """While active, the CPU runs each job in the precision its ``TrainConfig`` asks for (as
    CUDA always does), so the bench can time all four on either device."""
    old = os.environ.get(CPU_PRECISION_ENV)
    os.environ[CPU_PRECISION_ENV] = "bf16"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(CPU_PRECISION_ENV, None)
        else:
            os.environ[CPU_PRECISION_ENV] = old


def _tag(row: dict[str, Any]) -> str:
    return Precision(row["device"], row["dtype"] == "bf16", bool(row["channels_last"])).tag


def ratios(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """device name → model → precision tag → images/s over that model's fp32/NCHW images/s
    (models without an fp32/NCHW row are left out)."""
    base = {(r["device_name"], r["model"]): r["images_per_s"] for r in rows
            if r["dtype"] == "fp32" and not r["channels_last"]}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for r in rows:
        b = base.get((r["device_name"], r["model"]))
        if b:
            out.setdefault(r["device_name"], {}).setdefault(r["model"], {})[_tag(r)] = round(r["images_per_s"] / b, 2)
    return out


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table: one line per model, images/s and the ratio to fp32/NCHW per precision."""
    tags = [Precision("cpu", b, c).tag for b, c in COMBOS]
    rat = ratios(rows)
    ips = {(r["device_name"], r["model"], _tag(r)): r["images_per_s"] for r in rows}
    lines = [f"{'model':<13} {'device':<26} {'batch':>5}  " + "  ".join(f"{t:>17}" for t in tags)]
    seen = []
    for r in rows:
        key = (r["device_name"], r["model"])
        if key in seen:
            continue
        seen.append(key)
        cells = []
        for t in tags:
            v, q = ips.get((*key, t)), rat.get(key[0], {}).get(key[1], {}).get(t)
            cells.append(f"{v:>8,.0f} ({q:4.2f}×)" if v is not None and q is not None else f"{'—':>17}")
        lines.append(f"{r['model']:<13} {r['device_name'][:26]:<26} {r['batch_size']:>5}  " + "  ".join(cells))
    lines.append("images/s (ratio to fp32/NCHW); +cl: channels_last; bf16: bf16 autocast, fp32 master weights")
    return "\n".join(lines)


def _record(rows: list[dict[str, Any]]) -> None:
    """Merge ``rows`` into ``results/bench.json``: they replace earlier rows of the same model,
    device and precision; ``ratios`` is recomputed from all rows."""
    path = results_dir() / "bench.json"
    old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"runs": []}

    def key(r: dict[str, Any]) -> tuple:
        return r["model"], r["device_name"], r.get("dtype"), bool(r.get("channels_last"))

    new = {key(r) for r in rows}
    runs = [r for r in old.get("runs", []) if key(r) not in new] + rows
    write_json(path, {"runs": runs, "ratios": ratios(runs)})


def bench(models_: Sequence[str] | None = None, steps: int | None = None, batch_size: int | None = None,
          device: str = "auto", record: bool = True, repeats: int = 3,
          combos: Sequence[tuple[bool, bool]] = COMBOS, min_seconds: float = 0.0) -> list[dict[str, Any]]:
    """Time at least ``steps`` training updates (and ``min_seconds`` in the fastest precision)
    per model and precision, after a two-batch warm-up, ``repeats`` times in turns; return one
    row per model and precision (best images/s)."""
    names = list(models_ or DEFAULT_MODELS)
    dev = pick_device(device)
    cuda = dev.type == "cuda"
    steps = steps or (50 if cuda else 5)
    bs = batch_size or (512 if cuda else 128)
    env = environment(dev)
    rows = []
    with _cpu_follows_config():
        for name in names:
            nets, times, probe = {}, {c: [] for c in combos}, 0.0
            images, labels = _images(bs * 2)
            for bf16, cl in combos:
                torch.manual_seed(0)
                nets[bf16, cl] = models.create(name, num_classes=100)
                warm = TensorLoader(images, labels, bs, dev, train=True, seed=0)
                fit(nets[bf16, cl], warm, None, _config(bf16, cl))  # allocator, oneDNN / cuDNN kernels
                if min_seconds:  # a second pass, warm: how fast is this precision?
                    res = fit(nets[bf16, cl], warm, None, _config(bf16, cl))
                    probe = max(probe, res.train_images / res.train_seconds)
            n_steps = timed_steps(steps, min_seconds, probe, bs)
            images, labels = _images(bs * n_steps)
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
            for _ in range(repeats):
                for bf16, cl in combos:
                    loader = TensorLoader(images, labels, bs, dev, train=True, seed=0)
                    res = fit(nets[bf16, cl], loader, None, _config(bf16, cl))
                    times[bf16, cl].append(res.train_images / res.train_seconds)
            for bf16, cl in combos:
                rows.append({
                    "model": name, "params_m": round(sum(p.numel() for p in nets[bf16, cl].parameters()) / 1e6, 2),
                    "device": dev.type, "device_name": env["device_name"], "dtype": "bf16" if bf16 else "fp32",
                    "channels_last": cl, "batch_size": bs, "steps": n_steps, "repeats": repeats,
                    "images_per_s": round(max(times[bf16, cl]), 1),
                    "images_per_s_median": round(statistics.median(times[bf16, cl]), 1),
                    "images_per_s_each": [round(t, 1) for t in times[bf16, cl]],
                    "load_avg_1min": round(load, 2) if load is not None else None,
                    "torch": env["torch"], "git_commit": env["git_commit"],
                    "when": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                })
    if record:
        _record(rows)
    return rows


def timed_steps(steps: int, min_seconds: float, images_per_s: float, batch_size: int) -> int:
    """Updates a timed run takes: ``steps``, or more if they would last under ``min_seconds`` at
    ``images_per_s``."""
    return max(steps, math.ceil(min_seconds * images_per_s / batch_size))


def _images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random uint8 CIFAR-sized images and labels (the same for a given ``n``)."""
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
            torch.randint(0, 100, (n,), generator=g))


def _config(bf16: bool, channels_last: bool) -> TrainConfig:
    return TrainConfig(epochs=1, lr=0.01, progress=False, checkpoint_every_s=1e9, bf16=bf16,
                       channels_last=channels_last)
