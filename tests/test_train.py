"""The trainer: schedules, history, and resuming a killed run."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from repro.data import TensorLoader
from repro.modes import CPU_PRECISION_ENV, cpu_precision
from repro.train import Precision, TrainConfig, checkpoint_name, fit, lr_factor, precision, predict


def _toy(seed=0, n=96):
    g = torch.Generator().manual_seed(seed)
    imgs = torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 4, (n,), generator=g)
    return imgs, labels


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.Dropout(0.3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(8, 4))


def test_lr_schedules_by_hand():
    cfg = TrainConfig(schedule="step", milestones=(0.5, 0.75), gamma=0.1)
    assert [lr_factor(cfg, s, 100, 10) for s in (0, 49, 50, 74, 75)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    cfg = TrainConfig(schedule="step", milestones=(3, 6), gamma=0.5)  # epochs
    assert lr_factor(cfg, 29, 100, 10) == 1 and lr_factor(cfg, 30, 100, 10) == 0.5
    cfg = TrainConfig(schedule="cosine")
    assert lr_factor(cfg, 0, 100, 10) == 1 and lr_factor(cfg, 50, 100, 10) == pytest.approx(0.5)
    cfg = TrainConfig(schedule="cosine", warmup_epochs=1)
    assert lr_factor(cfg, 4, 100, 10) == pytest.approx(0.5)
    # "slow start, fast decay": ramp over the first 40 of 100 steps, then linear to 0
    cfg = TrainConfig(schedule="linear", warmup_epochs=4)
    assert [lr_factor(cfg, s, 100, 10) for s in (0, 19, 39, 40, 70, 100)] == pytest.approx([0.025, 0.5, 1, 1, 0.5, 0])


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="lamb")
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="poly")


def test_fit_learns_and_keeps_history():
    imgs, labels = _toy()
    imgs[labels == 1] //= 4  # make two classes easy to tell apart
    tr = TensorLoader(imgs, labels, 16, seed=0)
    te = TensorLoader(imgs, labels, 64, train=False)
    res = fit(_model(), tr, te, TrainConfig(epochs=3, lr=0.05, progress=False))
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    assert res.steps == 3 * len(tr) and res.train_images == 3 * len(tr) * 16
    assert {"train_loss", "test_acc", "images_per_s", "lr"} <= set(res.history[0])


def test_finished_job_is_loaded_not_retrained(tmp_path):
    imgs, labels = _toy()
    tr = TensorLoader(imgs, labels, 16, seed=0)
    cfg = TrainConfig(epochs=2, lr=0.05, progress=False)
    a = fit(_model(), tr, None, cfg, checkpoint_dir=tmp_path)
    m = _model()
    b = fit(m, tr, None, cfg, checkpoint_dir=tmp_path)
    assert b.resumed_from_epoch == 2 and b.history == a.history
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), m.state_dict().values()))


SCRIPT = textwrap.dedent("""
    import os, signal, sys, torch
    sys.path.insert(0, {tests!r})
    from test_train import _toy, _model
    from repro.data import TensorLoader
    from repro.train import TrainConfig, fit
    torch.set_num_threads(1)
    imgs, labels = _toy()
    class KillAt:
        def on_step(self, info):
            if info.epoch == 2 and info.step % 6 == 2:  # in the middle of the third epoch
                os.kill(os.getpid(), signal.SIGKILL)
    fit(_model(), TensorLoader(imgs, labels, 16, seed=0), None,
        TrainConfig(epochs=4, lr=0.05, progress=False, checkpoint_every_s=0),
        checkpoint_dir={ckpt!r}, callbacks=[KillAt()])
""")


def test_killed_run_resumes_and_matches_an_uninterrupted_one(tmp_path):
    ckpt = tmp_path / "ckpt"
    script = SCRIPT.format(tests=str(Path(__file__).parent), ckpt=str(ckpt))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    saved = torch.load(ckpt / "last.pt", weights_only=False)
    assert saved["epoch"] == 2  # lost at most the epoch in progress
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the killed child ran single-threaded: same reduction order
    imgs, labels = _toy()
    cfg = TrainConfig(epochs=4, lr=0.05, progress=False, checkpoint_every_s=0)
    resumed = fit(_model(), TensorLoader(imgs, labels, 16, seed=0), None, cfg, checkpoint_dir=ckpt)
    straight = fit(_model(), TensorLoader(imgs, labels, 16, seed=0), None, cfg)
    torch.set_num_threads(threads)
    assert resumed.resumed_from_epoch == 2 and resumed.steps == straight.steps
    for x, y in zip(resumed.model.state_dict().values(), straight.model.state_dict().values()):
        assert torch.allclose(x.float(), y.float(), atol=1e-6)
    assert [h["train_loss"] for h in resumed.history] == pytest.approx([h["train_loss"] for h in straight.history])


INTERRUPT_SCRIPT = textwrap.dedent("""
    import os, signal, sys, torch
    sys.path.insert(0, {tests!r})
    from test_train import _toy, _model
    from repro.data import TensorLoader
    from repro.train import TrainConfig, fit
    torch.set_num_threads(1)
    imgs, labels = _toy()
    class SignalAt:
        def on_step(self, info):
            if info.step == 15:  # the third batch of the third epoch (6 batches an epoch)
                os.kill(os.getpid(), signal.{sig})
    try:
        fit(_model(), TensorLoader(imgs, labels, 16, seed=0), None,
            TrainConfig(epochs=4, lr=0.05, progress=False), checkpoint_dir={ckpt!r}, callbacks=[SignalAt()])
    except KeyboardInterrupt as exc:
        print("stopped by", type(exc).__name__)
        sys.exit(130)
""")


@pytest.mark.parametrize("sig, cpu_precision", [("SIGINT", "fp32"), ("SIGTERM", "fp32"), ("SIGINT", "bf16")])
def test_interrupt_saves_the_batch_it_was_in_and_resumes_exactly(tmp_path, monkeypatch, sig, cpu_precision):
    """Ctrl-C (SIGINT) or SIGTERM mid-epoch: the checkpoint keeps every finished batch, and the
    resumed run ends with the weights of an uninterrupted one, in fp32 and in CPU bf16."""
    monkeypatch.setenv(CPU_PRECISION_ENV, cpu_precision)  # the child inherits it
    ckpt = tmp_path / "ckpt"
    script = INTERRUPT_SCRIPT.format(tests=str(Path(__file__).parent), ckpt=str(ckpt), sig=sig)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130, proc.stderr
    assert ("Interrupted" if sig == "SIGTERM" else "KeyboardInterrupt") in proc.stdout
    name = {"fp32": "last.pt", "bf16": "last.cpu-bf16+cl.pt"}[cpu_precision]
    assert [f.name for f in ckpt.iterdir()] == [name]
    saved = torch.load(ckpt / name, weights_only=False)
    assert saved["precision"] == {"fp32": "fp32", "bf16": "bf16+cl"}[cpu_precision]
    assert saved["epoch"] == 2 and saved["partial"]["pos"] == 3 and saved["step"] == 15
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    imgs, labels = _toy()
    cfg = TrainConfig(epochs=4, lr=0.05, progress=False)
    resumed = fit(_model(), TensorLoader(imgs, labels, 16, seed=0), None, cfg, checkpoint_dir=ckpt)
    straight = fit(_model(), TensorLoader(imgs, labels, 16, seed=0), None, cfg)
    torch.set_num_threads(threads)
    assert resumed.steps == straight.steps == 24
    for x, y in zip(resumed.model.state_dict().values(), straight.model.state_dict().values()):
        assert torch.equal(x, y)
    assert [h["train_loss"] for h in resumed.history] == pytest.approx([h["train_loss"] for h in straight.history])


def test_interrupt_inside_a_batch_resumes_with_the_random_state_of_its_start(tmp_path):
    """An interrupt that lands inside a batch, after its crops and a draw from the global RNG
    (a dropout mask) were made, resumes from the random state the batch started from."""
    import torch.nn.functional as F

    calls = {"n": 0}

    def loss_fn(model, x, y, stop_at=None):
        calls["n"] += 1
        noise = 0.01 * torch.rand(())  # a draw from the global RNG, as a dropout mask is
        if calls["n"] == stop_at:
            raise KeyboardInterrupt
        logits = model(x)
        return F.cross_entropy(logits, y) + noise, logits

    imgs, labels = _toy()
    cfg = TrainConfig(epochs=3, lr=0.05, progress=False)
    torch.manual_seed(0)
    straight = fit(_model(), TensorLoader(imgs, labels, 16, seed=0), None, cfg, loss_fn=loss_fn)
    torch.manual_seed(0)
    stop = calls["n"] + 10  # inside the fourth batch of the second epoch (6 batches an epoch)
    with pytest.raises(KeyboardInterrupt):
        fit(_model(), TensorLoader(imgs, labels, 16, seed=0), None, cfg, checkpoint_dir=tmp_path,
            loss_fn=lambda m, x, y: loss_fn(m, x, y, stop_at=stop))
    assert torch.load(tmp_path / "last.pt", weights_only=False)["partial"]["pos"] == 3
    torch.manual_seed(123)  # whatever the global state now, the checkpoint's is restored
    resumed = fit(_model(), TensorLoader(imgs, labels, 16, seed=0), None, cfg, checkpoint_dir=tmp_path, loss_fn=loss_fn)
    for x, y in zip(resumed.model.state_dict().values(), straight.model.state_dict().values()):
        assert torch.equal(x, y)


def test_every_epoch_is_checkpointed_by_default(tmp_path):
    imgs, labels = _toy()
    seen = []

    class Watch:
        def on_step(self, info):
            if info.step % 6 == 1 and info.epoch > 0:  # first batch of epochs 2, 3…
                seen.append(torch.load(tmp_path / "last.pt", weights_only=False)["epoch"])

    fit(_model(), TensorLoader(imgs, labels, 16, seed=0), None, TrainConfig(epochs=3, lr=0.05, progress=False),
        checkpoint_dir=tmp_path, callbacks=[Watch()])
    assert seen == [1, 2]


def test_fit_reports_its_cost_without_knowing_the_run():
    from repro.train import COST, WORK

    imgs, labels = _toy()
    s0, i0, w0 = COST.train_s, COST.train_images, WORK["train_steps"]
    res = fit(_model(), TensorLoader(imgs, labels, 16, seed=0), None, TrainConfig(epochs=2, lr=0.05, progress=False))
    assert COST.train_images - i0 == res.train_images == 2 * 96
    assert COST.train_s - s0 == pytest.approx(res.train_seconds)
    assert WORK["train_steps"] - w0 == res.steps == 12


# -- precision: fp32 or bf16 autocast + channels_last, on the CPU too ---------------------------
def test_cpu_precision_switch_is_read_and_validated(monkeypatch):
    import repro.modes as modes

    monkeypatch.delenv(CPU_PRECISION_ENV, raising=False)
    # the default, auto: bf16 where the CPU computes it natively, else fp32
    for native, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(modes, "cpu_has_bf16", lambda native=native: native)
        assert cpu_precision() == want
        monkeypatch.setenv(CPU_PRECISION_ENV, "auto")
        assert cpu_precision() == want
        monkeypatch.delenv(CPU_PRECISION_ENV)
    for value, want in (("fp32", "fp32"), ("bf16", "bf16"), (" BF16 ", "bf16")):
        monkeypatch.setenv(CPU_PRECISION_ENV, value)
        assert cpu_precision() == want
    monkeypatch.setenv(CPU_PRECISION_ENV, "fp16")
    with pytest.raises(ValueError, match=r"REPRO_CPU_PRECISION='fp16': expected one of auto, fp32, bf16"):
        cpu_precision()
    with pytest.raises(ValueError, match="REPRO_CPU_PRECISION"):  # a fit refuses it before training
        fit(_model(), TensorLoader(*_toy(), 16, seed=0), None, TrainConfig(epochs=1, progress=False))


def test_precision_is_decided_in_one_place(monkeypatch):
    monkeypatch.setenv(CPU_PRECISION_ENV, "fp32")
    assert precision("cpu") == Precision("cpu", bf16=False, channels_last=False)  # the config's wish ignored
    assert precision("cuda", bf16=True, channels_last=False) == Precision("cuda", True, False)  # CUDA follows it
    monkeypatch.setenv(CPU_PRECISION_ENV, "bf16")
    assert precision("cpu") == Precision("cpu", True, True)
    assert precision("cpu", bf16=False, channels_last=True) == Precision("cpu", False, True)
    assert [Precision("cpu", b, c).tag for b, c in ((0, 0), (0, 1), (1, 0), (1, 1))] == \
        ["fp32", "fp32+cl", "bf16", "bf16+cl"]
    # fp32 CPU jobs and CUDA jobs keep the old file; reduced-precision CPU jobs get their own
    assert checkpoint_name(Precision("cpu", False, False)) == "last.pt"
    assert checkpoint_name(Precision("cuda", True, True)) == "last.pt"
    assert checkpoint_name(Precision("cpu", True, True)) == "last.cpu-bf16+cl.pt"


def _fit_in(monkeypatch, value, **kw):
    monkeypatch.setenv(CPU_PRECISION_ENV, value)
    imgs, labels = _toy()
    seen = []

    def loss_fn(model, x, y):  # records what a loss sees under autocast
        logits = model(x)
        seen.append((logits.dtype, x.is_contiguous(memory_format=torch.channels_last)))
        return torch.nn.functional.cross_entropy(logits, y), logits

    res = fit(_model(), TensorLoader(imgs, labels, 16, seed=0), TensorLoader(imgs, labels, 64, train=False),
              TrainConfig(epochs=1, lr=0.05, progress=False, **kw), loss_fn=loss_fn)
    return res, seen


def test_bf16_cpu_step_runs_in_fp32_losses_and_stays_close_to_fp32(monkeypatch):
    """A bf16 CPU epoch: channels_last inputs, float32 logits into the loss (the forward hook),
    fp32 master weights, and losses within bf16 rounding of the fp32 run's."""
    ref, seen32 = _fit_in(monkeypatch, "fp32")
    low, seen16 = _fit_in(monkeypatch, "bf16")
    assert set(seen32) == {(torch.float32, False)} and set(seen16) == {(torch.float32, True)}
    assert all(p.dtype == torch.float32 for p in low.model.parameters())
    assert not low.model._forward_hooks  # the fp32-output hook is gone after fit
    for a, b in zip(ref.history, low.history):
        assert math.isfinite(b["train_loss"]) and math.isfinite(b["test_loss"])
        # 6 SGD steps of a 4-class toy (loss ≈ ln 4 ≈ 1.39): bf16 keeps ~3 significant digits
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=0.03)
        assert b["test_loss"] == pytest.approx(a["test_loss"], abs=0.03)
    # asking for fp32 in the config keeps a job fp32 even with the switch on
    _, seen = _fit_in(monkeypatch, "bf16", bf16=False, channels_last=False)
    assert set(seen) == {(torch.float32, False)}


def test_predict_in_bf16_returns_float32_logits_close_to_fp32(monkeypatch):
    imgs, labels = _toy()
    model = _model().eval()
    loader = TensorLoader(imgs, labels, 32, train=False)
    monkeypatch.setenv(CPU_PRECISION_ENV, "fp32")
    ref, y = predict(model, loader)
    monkeypatch.setenv(CPU_PRECISION_ENV, "bf16")
    low, y2 = predict(model, loader)
    assert low.dtype == torch.float32 and torch.equal(y, y2)
    assert not torch.equal(low, ref)  # bf16 really ran…
    assert torch.allclose(low, ref, atol=0.05)  # …within bf16 rounding (8 bits of mantissa)
    monkeypatch.setenv(CPU_PRECISION_ENV, "bf16")
    # bf16=False: fp32 (channels_last inputs: another conv kernel, the same numbers to fp32 rounding)
    assert torch.allclose(predict(model, loader, bf16=False)[0], ref, atol=1e-5)


def test_switching_precision_never_resumes_the_other_ones_checkpoint(tmp_path, monkeypatch):
    imgs, labels = _toy()
    cfg = TrainConfig(epochs=1, lr=0.05, progress=False)
    monkeypatch.setenv(CPU_PRECISION_ENV, "fp32")
    fit(_model(), TensorLoader(imgs, labels, 16, seed=0), None, cfg, checkpoint_dir=tmp_path)
    monkeypatch.setenv(CPU_PRECISION_ENV, "bf16")
    res = fit(_model(), TensorLoader(imgs, labels, 16, seed=0), None, cfg, checkpoint_dir=tmp_path)
    assert res.resumed_from_epoch is None  # trained, not loaded from the fp32 job
    assert sorted(f.name for f in tmp_path.iterdir()) == ["last.cpu-bf16+cl.pt", "last.pt"]
    again = fit(_model(), TensorLoader(imgs, labels, 16, seed=0), None, cfg, checkpoint_dir=tmp_path)
    assert again.resumed_from_epoch == 1 and again.history == res.history
