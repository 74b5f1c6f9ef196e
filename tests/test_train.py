"""The trainer: schedules, history, and resuming a killed run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from repro.data import TensorLoader
from repro.train import TrainConfig, fit, lr_factor


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


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_interrupt_saves_the_batch_it_was_in_and_resumes_exactly(tmp_path, sig):
    """Ctrl-C (SIGINT) or SIGTERM mid-epoch: the checkpoint keeps every finished batch, and the
    resumed run ends with the weights of an uninterrupted one."""
    ckpt = tmp_path / "ckpt"
    script = INTERRUPT_SCRIPT.format(tests=str(Path(__file__).parent), ckpt=str(ckpt), sig=sig)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130, proc.stderr
    assert ("Interrupted" if sig == "SIGTERM" else "KeyboardInterrupt") in proc.stdout
    saved = torch.load(ckpt / "last.pt", weights_only=False)
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
