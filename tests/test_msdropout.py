"""Multi-sample dropout: hand-checkable properties of the loss and the chapter's metrics."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from repro import models
from repro.data import Dataset
from repro.layers.multi_sample_dropout import (MultiSampleDropout, multi_sample_dropout_loss,
                                               multi_sample_logits)
from repro.arms import make_config
from repro.families.training.arms.msdropout import (MSDropoutConfig, arm_configs, epochs_to_reach,
                                                    seed_metrics, step_time_benchmark, train_msdropout)


class Tiny(nn.Module):
    """features = identity on [B, D]; dropout p; head = Linear(D → 2) with given weights."""

    def __init__(self, p: float, weight: list[list[float]]):
        super().__init__()
        self.dropout = nn.Dropout(p)
        self.head = nn.Linear(len(weight[0]), 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor(weight))
            self.head.bias.zero_()

    def features(self, x):
        return x

    def forward(self, x):
        return self.head(self.dropout(self.features(x)))


class FixedMasks(nn.Module):
    """A 'dropout' that multiplies its [M·B, D] input by given (already scaled) masks."""

    def __init__(self, masks: torch.Tensor):
        super().__init__()
        self.masks = masks

    def forward(self, h):
        return h * self.masks


W3 = [[1.0, -1.0, 0.5], [0.0, 2.0, -1.0]]


def test_m1_equals_ordinary_dropout_with_the_same_masks():
    model = models.create("cnn3_mlp", num_classes=5, drop_rate=0.5).train()
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(7)
    loss, logits = MultiSampleDropout(1)(model, x, y)
    torch.manual_seed(7)
    ref = model(x)  # both dropouts (before and inside the head) draw the same masks
    assert torch.allclose(logits, ref, atol=1e-6)
    assert loss.item() == pytest.approx(F.cross_entropy(ref, y).item(), abs=1e-6)


def test_p0_makes_every_sample_equal_to_plain_ce():
    model = Tiny(0.0, W3).train()
    x, y = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]]), torch.tensor([0, 1])
    # by hand: row 0 logits = [1 − 2 + 1.5, 4 − 3] = [0.5, 1]; row 1 = [0.5 + 1 + 1, −2 − 2] = [2.5, −4]
    ce0 = math.log(1 + math.exp(0.5))       # −log softmax([0.5, 1])[0]
    ce1 = math.log(1 + math.exp(6.5))       # −log softmax([2.5, −4])[1]
    samples = multi_sample_logits(model, x, 8)
    assert samples.shape == (8, 2, 2) and torch.equal(samples, samples[:1].expand(8, -1, -1))
    for mode in ("loss_avg", "logit_avg"):
        loss, logits = multi_sample_dropout_loss(8, mode)(model, x, y)
        assert loss.item() == pytest.approx((ce0 + ce1) / 2, abs=1e-6)
        assert torch.allclose(logits, torch.tensor([[0.5, 1.0], [2.5, -4.0]]))


def test_eval_mode_ignores_m():
    model = Tiny(0.5, W3).eval()
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 1])
    assert multi_sample_logits(model, x, 8).shape == (1, 5, 2)
    loss, logits = MultiSampleDropout(8)(model, x, y)
    assert torch.equal(logits, model(x))  # deterministic: dropout off
    assert loss.item() == pytest.approx(F.cross_entropy(model(x), y).item(), abs=1e-7)


def test_gradient_by_hand_with_fixed_masks():
    # one image x = [2, 4], label 0, head W = 0 (so p(y) = ½ for every sample), M = 2 masks
    # (scaled by 1/(1−p) = 2): m1 = [2, 0] → h1 = [4, 0], m2 = [0, 2] → h2 = [0, 8].
    # dCE/dlogits = softmax − onehot = [−½, ½]; dL/dW = [−½, ½]ᵀ·mean(h) = [−½, ½]ᵀ·[2, 4].
    model = Tiny(0.5, [[0.0, 0.0], [0.0, 0.0]]).train()
    model.dropout = FixedMasks(torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
    x, y = torch.tensor([[2.0, 4.0]]), torch.tensor([0])
    loss, _ = MultiSampleDropout(2)(model, x, y)
    loss.backward()
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert torch.allclose(model.head.weight.grad, torch.tensor([[-1.0, -2.0], [1.0, 2.0]]))
    assert torch.allclose(model.head.bias.grad, torch.tensor([-0.5, 0.5]))
    # … which is the average of the two single-sample gradients
    grads = []
    for h in ([4.0, 0.0], [0.0, 8.0]):
        model.zero_grad()
        F.cross_entropy(model.head(torch.tensor([h])), y).backward()
        grads.append(model.head.weight.grad.clone())
    assert torch.allclose((grads[0] + grads[1]) / 2, torch.tensor([[-1.0, -2.0], [1.0, 2.0]]))


def test_loss_average_vs_logit_average_by_hand():
    # W = I, same masks: logits1 = [4, 0], logits2 = [0, 8], label 0.
    model = Tiny(0.5, [[1.0, 0.0], [0.0, 1.0]]).train()
    model.dropout = FixedMasks(torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
    x, y = torch.tensor([[2.0, 4.0]]), torch.tensor([0])
    loss_avg, logits = MultiSampleDropout(2, "loss_avg")(model, x, y)
    logit_avg, _ = MultiSampleDropout(2, "logit_avg")(model, x, y)
    assert loss_avg.item() == pytest.approx((math.log(1 + math.exp(-4)) + math.log(1 + math.exp(8))) / 2, abs=1e-5)
    assert logit_avg.item() == pytest.approx(math.log(1 + math.exp(2)), abs=1e-6)  # CE of [2, 4]
    assert torch.allclose(logits, torch.tensor([[2.0, 4.0]]))


def test_loss_is_the_mean_of_the_m_losses_and_so_is_its_gradient():
    model = Tiny(0.5, W3).train()
    x, y = torch.randn(3, 3), torch.tensor([0, 1, 1])
    torch.manual_seed(1)
    loss, _ = MultiSampleDropout(4)(model, x, y)
    loss.backward()
    g = model.head.weight.grad.clone()
    model.zero_grad()
    torch.manual_seed(1)
    masked = model.dropout(x.repeat(4, 1)).view(4, 3, 3)  # the same masks, drawn in the same order
    per = [F.cross_entropy(model.head(masked[m]), y) for m in range(4)]
    assert len({round(p.item(), 6) for p in per}) > 1  # the masks do differ
    ref = sum(per) / 4
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), abs=1e-6)
    assert torch.allclose(g, model.head.weight.grad, atol=1e-6)


def test_inner_head_dropout_is_sampled_per_copy():
    model = models.create("cnn3_mlp", num_classes=5, drop_rate=0.5).train()
    model.dropout.p = 0.0  # only the head's own dropout is left
    logits = multi_sample_logits(model, torch.randn(2, 3, 16, 16), 3)
    assert logits.shape == (3, 2, 5)
    assert not torch.allclose(logits[0], logits[1])


def test_bad_input():
    with pytest.raises(ValueError, match="mode"):
        multi_sample_dropout_loss(2, "median")
    with pytest.raises(ValueError, match="num_samples"):
        MultiSampleDropout(0)
    with pytest.raises(ValueError, match="num_samples"):
        multi_sample_logits(Tiny(0.0, W3), torch.randn(2, 3), 0)


def test_arms_and_seed_metrics_by_hand():
    params = {"samples": [1, 8], "dropout": 0.5, "no_dropout_arm": True, "lr_control": 2.0}
    arms = arm_configs(params)
    assert list(arms) == ["M1", "Mmax", "no_dropout", "M1_lr_control"]
    assert [c.label for _, c in arms.values()] == ["M = 1", "M = 8", "no dropout", "M = 1, lr × 2"]
    c = arms["M1_lr_control"][1]
    assert (c.m, c.dropout, c.lr_scale) == (1, 0.5, 2.0) and arms["Mmax"][1].m == 8
    assert arms["no_dropout"][1].dropout == 0.0
    assert list(arm_configs({"samples": [1, 2, 4], "dropout": 0.5})) == ["M1", "M2", "Mmax"]

    h1 = [{"epoch": 1, "train_loss": 2.0}, {"epoch": 2, "train_loss": 1.5}, {"epoch": 3, "train_loss": 1.1}]
    h8 = [{"epoch": 1, "train_loss": 1.4}, {"epoch": 2, "train_loss": 1.2}, {"epoch": 3, "train_loss": 1.0}]
    base = {"M": 1, "history": h1, "epoch_s": 2.0}
    top = {"M": 8, "history": h8, "epoch_s": 2.5}
    m = seed_metrics(base, top, loss_epoch=2, bench={1: 0.10, 8: 0.104}, steps_per_epoch=10)
    assert m["overhead_pct"] == pytest.approx(4.0) and m["overhead_margin"] == pytest.approx(6.0)
    assert m["job_overhead_pct"] == pytest.approx(25.0)
    assert m["epochs_saved"] == pytest.approx(1.0)                  # M=1 reaches 1.5 at epoch 2, M=8 at 1
    assert m["epoch_s_M8"] == pytest.approx(1.04) and m["epoch_s_M1"] == pytest.approx(1.0)
    # the differences of two arms' values are the claims' paired rows, not metrics of their own
    assert "test_err_gain" not in m and "train_loss_gain" not in m
    # without a benchmark the overhead comes from the jobs' epoch times
    assert seed_metrics(base, top, 2)["overhead_pct"] == pytest.approx(25.0)
    assert epochs_to_reach(h8, "train_loss", 1.25) == 2 and epochs_to_reach(h1, "train_loss", 1.0) is None


def test_loss_epoch():
    assert MSDropoutConfig(epochs=2, loss_epoch_frac=0.5).loss_epoch == 1
    assert MSDropoutConfig(epochs=12, loss_epoch_frac=0.5).loss_epoch == 6
    assert MSDropoutConfig(epochs=1, loss_epoch_frac=0.1).loss_epoch == 1


def _tiny_data() -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.arange(16) % 2
    return Dataset(x_train=x, y_train=y, x_test=x[:8], y_test=y[:8], classes=[0, 1],
                   class_names=["a", "b"], checksum="")


PARAMS = {"model": "cnn3_mlp", "dropout": 0.5, "epochs": 1, "batch_size": 8, "lr": 0.05,
          "weight_decay": 5e-4, "loss_mode": "loss_avg"}


def test_arm_and_benchmark_run_on_a_tiny_set(tmp_path):
    cfg = make_config(MSDropoutConfig, PARAMS, m=2)
    a = train_msdropout(cfg, _tiny_data(), 0, tmp_path / "ck")
    assert a.extra["M"] == 2 and len(a.extra["history"]) == 1 and a.n_test == 8
    assert a.metrics["test_err"] == pytest.approx(100 - a.extra["history"][0]["test_acc"])
    assert a.metrics["train_loss"] == a.extra["history"][0]["train_loss"]
    again = train_msdropout(cfg, _tiny_data(), 0, tmp_path / "ck")  # loaded, not retrained
    assert again.extra["history"] == a.extra["history"]
    bench = step_time_benchmark(cfg, _tiny_data(), 0, [1, 4], steps=1, rounds=1)
    assert set(bench) == {1, 4} and all(v > 0 for v in bench.values())
