"""Does CPU bf16 (autocast + channels_last) train students as good as fp32? A paired check.

Trains chapter 34-nkd's CE and NKD students at the ``cpu`` tier (its spec's values: 20 classes,
200 train images per class, 16 px, a width-16 cnn3 student, 8 epochs; the stored cnn3 teacher)
for the same seeds in ``REPRO_CPU_PRECISION=fp32`` and ``=bf16``, and writes per-seed top-1,
the paired differences and their noise to ``results/precision_check.json``.

Noise: a top-1 on n test images has a binomial standard error sqrt(p(1-p)/n); the standard
deviation of the per-seed differences (same seed, same data order: paired) measures how far the
two precisions' training runs drift apart. Seeds already in the output file are kept (a later call
with other seeds adds to them; the summary covers all). The verdict asks whether the mean difference lies
within two standard errors of the mean of the paired differences, and within 2·SE_binomial·√2.

    .venv/bin/python scripts/precision_check.py [--seeds 0 1 2] [--arms ce nkd] [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from repro import arms as registry
from repro import data as repro_data
from repro.families.distillation import protocol, teachers
from repro.io import write_json
from repro.modes import CPU_PRECISION_ENV
from repro.papers import load_spec
from repro.provenance import environment

PRECISIONS = ("fp32", "bf16")


def _student(name: str, params: dict[str, Any], data: Any, teacher: torch.nn.Module, seed: int) -> dict[str, Any]:
    """Train and evaluate one arm's student for one seed in the current precision."""
    cfg = protocol.arm_config(name, params)
    setup = protocol.setup(cfg, data, seed, "cpu", teacher, checkpoint_dir=None)
    setup.cfg.progress = False
    t0 = time.perf_counter()
    res = protocol.train(name, setup, cfg)
    ev = protocol.evaluate_student(res.model, setup.test)
    return {"top1": ev["top1"], "nll": ev["nll"], "ece": ev["ece"], "train_s": round(res.train_seconds, 2),
            "images_per_s": round(res.images_per_s, 1), "wall_s": round(time.perf_counter() - t0, 2),
            "n_test": int(setup.test.num_samples)}


def binomial_se(p_percent: float, n: int) -> float:
    """Standard error (percentage points) of a top-1 of ``p_percent`` % on ``n`` test images."""
    p = p_percent / 100
    return 100 * math.sqrt(p * (1 - p) / n)


def summarise(per_seed: dict[str, dict[int, dict[str, Any]]], n_test: int) -> dict[str, Any]:
    """Paired differences (bf16 − fp32) of top-1 over seeds, with their noise and a verdict."""
    seeds = sorted(per_seed["fp32"])
    a = [per_seed["fp32"][s]["top1"] for s in seeds]
    b = [per_seed["bf16"][s]["top1"] for s in seeds]
    diff = [y - x for x, y in zip(a, b)]
    mean_diff = statistics.fmean(diff)
    sd_diff = statistics.stdev(diff) if len(diff) > 1 else float("nan")
    se_mean = sd_diff / math.sqrt(len(diff)) if len(diff) > 1 else float("nan")
    se_binom = binomial_se(statistics.fmean(a + b), n_test)
    # a difference of two top-1s on the same test set: at most √2·SE_binomial from sampling alone
    # (the test set is shared, so this overstates it); averaged over k seeds it shrinks by √k
    se_binom_mean = se_binom * math.sqrt(2 / len(diff))
    bound = 2 * max(se_mean if not math.isnan(se_mean) else 0.0, se_binom_mean)
    return {
        "seeds": seeds, "top1_fp32": a, "top1_bf16": b, "diff_bf16_minus_fp32": diff,
        "mean_fp32": statistics.fmean(a), "mean_bf16": statistics.fmean(b),
        "sd_fp32": statistics.stdev(a) if len(a) > 1 else None, "sd_bf16": statistics.stdev(b) if len(b) > 1 else None,
        "mean_diff": mean_diff, "sd_diff": sd_diff, "se_mean_diff": se_mean,
        "binomial_se_one_top1": se_binom, "binomial_se_mean_diff": se_binom_mean,
        "within_noise_bound": bound, "within_noise": abs(mean_diff) <= bound,
        "train_s_fp32": sum(per_seed["fp32"][s]["train_s"] for s in seeds),
        "train_s_bf16": sum(per_seed["bf16"][s]["train_s"] for s in seeds),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=["ce", "nkd"])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "precision_check.json"))
    args = ap.parse_args(argv)

    params = load_spec("nkd").resolve("cpu", {"seeds": list(args.seeds)})
    pcfg = registry.make_config(protocol.DistillConfig, params)
    data = repro_data.load(classes=pcfg.classes, per_class=pcfg.per_class or None,
                           test_per_class=pcfg.test_per_class or None, image_size=pcfg.image_size,
                           seed=pcfg.data_seed)
    os.environ[CPU_PRECISION_ENV] = "fp32"  # the stored teacher is fp32; loading it must not retrain it
    teacher = teachers.get(protocol.teacher_spec(pcfg), data, torch.device("cpu"))
    print(f"{data.describe()} · teacher {teacher.spec.label()} top-1 {teacher.test_acc:.1f}% · "
          f"threads {torch.get_num_threads()}", flush=True)

    out_path = Path(args.out)
    old = json.loads(out_path.read_text(encoding="utf-8")) if out_path.is_file() else {}
    results: dict[str, Any] = dict(old.get("arms", {}))
    for arm in args.arms:
        before = results.get(arm, {}).get("per_seed", {})
        per_seed: dict[str, dict[int, dict[str, Any]]] = {
            p: {int(k): v for k, v in before.get(p, {}).items()} for p in PRECISIONS}
        for seed in args.seeds:
            for prec in PRECISIONS:  # in turns, so that load drift hits both alike
                os.environ[CPU_PRECISION_ENV] = prec
                row = _student(arm, params, data, teacher.model, seed)
                per_seed[prec][seed] = row
                print(f"{arm:<4} seed {seed} {prec}: top-1 {row['top1']:.2f}%  NLL {row['nll']:.3f}  "
                      f"{row['images_per_s']:,.0f} img/s", flush=True)
        os.environ[CPU_PRECISION_ENV] = "fp32"
        n_test = per_seed["fp32"][args.seeds[0]]["n_test"]
        per_seed = {p: dict(sorted(d.items())) for p, d in per_seed.items()}
        results[arm] = {"per_seed": {p: {str(s): v for s, v in d.items()} for p, d in per_seed.items()},
                        "summary": summarise(per_seed, n_test)}
        s = results[arm]["summary"]
        print(f"{arm}: fp32 {s['mean_fp32']:.2f}  bf16 {s['mean_bf16']:.2f}  diff {s['mean_diff']:+.2f} pp "
              f"(± {s['within_noise_bound']:.2f} pp noise bound) → "
              f"{'within noise' if s['within_noise'] else 'OUTSIDE noise'}", flush=True)

    env = environment("cpu")
    out = {"what": "chapter 34-nkd, cpu tier: the same students trained with REPRO_CPU_PRECISION=fp32 and =bf16",
           "params": {k: params[k] for k in ("classes", "per_class", "test_per_class", "image_size", "student",
                                             "student_width", "teacher", "teacher_width", "epochs", "batch_size",
                                             "lr", "schedule")},
           "teacher": {"arch": teacher.spec.label(), "test_acc": teacher.test_acc},
           "n_test": n_test,
           "arms": results,
           "environment": {k: env[k] for k in ("torch", "device_name", "git_commit", "git_dirty", "platform")}}
    write_json(args.out, out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
