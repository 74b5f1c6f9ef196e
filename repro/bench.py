"""Training throughput (images/s) of reference models on this device, appended to
``results/bench.json``. Uses the real trainer step (augmentation included) on random
uint8 images held on the device, so it measures the loop the chapters run."""
from __future__ import annotations

import datetime as _dt
import json
import time
from typing import Any

import torch

from . import models
from .data.loader import TensorLoader
from .io import write_json
from .paths import results_dir
from .provenance import environment
from .run import pick_device
from .train import TrainConfig, fit


def bench(models_: list[str] | None = None, steps: int | None = None, batch_size: int | None = None,
          device: str = "auto", record: bool = True, **kw: Any) -> list[dict[str, Any]]:
    """Time ``steps`` training updates per model after one warm-up epoch; return the rows."""
    names = models_ or kw.get("models") or ["resnet18", "resnet20", "vit_tiny_p4"]
    dev = pick_device(device)
    cuda = dev.type == "cuda"
    steps = steps or (50 if cuda else 5)
    bs = batch_size or (512 if cuda else 128)
    env = environment(dev)
    rows = []
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (bs * steps, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 100, (bs * steps,), generator=g)
    for name in names:
        model = models.create(name, num_classes=100)
        loader = TensorLoader(images, labels, bs, dev, train=True, seed=0)
        cfg = TrainConfig(epochs=1, lr=0.01, progress=False, checkpoint_every_s=1e9)
        warm = TensorLoader(images[: bs * 2], labels[: bs * 2], bs, dev, train=True, seed=0)
        fit(model, warm, None, cfg)  # warm-up: allocator, cuDNN autotune
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = fit(model, loader, None, cfg)
        dt = time.perf_counter() - t0
        rows.append({
            "model": name, "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "device": dev.type, "device_name": env["device_name"], "dtype": "bf16" if cuda else "fp32",
            "channels_last": cuda, "batch_size": bs, "steps": res.steps,
            "images_per_s": round(res.train_images / dt, 1), "torch": env["torch"],
            "git_commit": env["git_commit"], "when": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        })
    if record:
        path = results_dir() / "bench.json"
        old = json.loads(path.read_text()) if path.is_file() else {"runs": []}
        keep = [r for r in old["runs"] if not any(r["model"] == n["model"] and r["device_name"] == n["device_name"]
                                                   for n in rows)]
        write_json(path, {"runs": keep + rows})
    return rows
