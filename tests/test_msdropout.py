"""Multi-sample dropout: hand-checkable properties of the loss."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from repro import models
from repro.layers.multi_sample_dropout import multi_sample_dropout_loss, multi_sample_logits
from repro.methods.multi_sample import epochs_to_reach, seed_metrics


class Tiny(nn.Module):
    """features = identity on [B, 3]; dropout p; head = Linear(3 → 2)."""

    def __init__(self, p: float):
        super().__init__()
        self.dropout = nn.Dropout(p)
        self.head = nn.Linear(3, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[1.0, -1.0, 0.5], [0.0, 2.0, -1.0]]))
            self.head.bias.zero_()

    def features(self, x):
        return x

    def forward(self, x):
        return self.head(self.dropout(self.features(x)))


def test_m1_equals_ordinary_dropout_with_the_same_masks():
    model = models.create("cnn3_mlp", num_classes=5, drop_rate=0.5).train()
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(7)
    loss, _ = multi_sample_dropout_loss(1)(model, x, y)
    torch.manual_seed(7)
    assert loss.item() == pytest.approx(F.cross_entropy(model(x), y).item(), abs=1e-6)


def test_p0_makes_every_sample_equal_to_plain_ce():
    model = Tiny(0.0).train()
    x, y = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]]), torch.tensor([0, 1])
    # by hand: logits row 0 = [1-2+1.5, 4-3] = [0.5, 1]; row 1 = [0.5+1+1, -2-2] = [2.5, -4]
    expect = (-F.log_softmax(torch.tensor([0.5, 1.0]), 0)[0] - F.log_softmax(torch.tensor([2.5, -4.0]), 0)[1]) / 2
    loss, logits = multi_sample_dropout_loss(8)(model, x, y)
    assert loss.item() == pytest.approx(expect.item(), abs=1e-6)
    assert torch.allclose(logits, torch.tensor([[0.5, 1.0], [2.5, -4.0]]))


def test_eval_mode_ignores_m():
    model = Tiny(0.5).eval()
    x = torch.randn(5, 3)
    assert multi_sample_logits(model, x, 8).shape == (1, 5, 2)
    assert torch.equal(multi_sample_logits(model, x, 8)[0], model(x))


def test_loss_is_the_mean_of_the_m_losses_and_so_is_its_gradient():
    model = Tiny(0.5).train()
    x, y = torch.randn(3, 3), torch.tensor([0, 1, 1])
    torch.manual_seed(1)
    loss, _ = multi_sample_dropout_loss(4)(model, x, y)
    loss.backward()
    g = model.head.weight.grad.clone()
    model.zero_grad()
    torch.manual_seed(1)
    feats = x.repeat(4, 1)
    masked = model.dropout(feats).view(4, 3, 3)  # the same masks, drawn in the same order
    per = [F.cross_entropy(model.head(masked[m]), y) for m in range(4)]
    ref = sum(per) / 4
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), abs=1e-6)
    assert torch.allclose(g, model.head.weight.grad, atol=1e-6)


def test_logit_average_mode_and_bad_input():
    model = Tiny(0.0).train()
    x, y = torch.randn(2, 3), torch.tensor([0, 1])
    a, _ = multi_sample_dropout_loss(3, "logit_avg")(model, x, y)
    assert a.item() == pytest.approx(F.cross_entropy(model(x), y).item(), abs=1e-6)
    with pytest.raises(ValueError, match="mode"):
        multi_sample_dropout_loss(2, "median")
    with pytest.raises(ValueError, match="num_samples"):
        multi_sample_logits(model, x, 0)


def test_seed_metrics_by_hand():
    h1 = [{"epoch": 1, "train_loss": 2.0}, {"epoch": 2, "train_loss": 1.5}]
    h8 = [{"epoch": 1, "train_loss": 1.8}, {"epoch": 2, "train_loss": 1.2}]
    arms = [{"M": 1, "seed": 0, "history": h1, "final_test_err": 40.0, "epoch_s": 2.0},
            {"M": 8, "seed": 0, "history": h8, "final_test_err": 38.5, "epoch_s": 2.1}]
    m = seed_metrics(arms, 0, [1, 8], loss_epoch=1)
    assert m["train_loss_gain"] == pytest.approx(0.2) and m["test_err_gain"] == pytest.approx(1.5)
    assert m["overhead_pct"] == pytest.approx(5.0) and m["overhead_margin"] == pytest.approx(5.0)
    assert epochs_to_reach(h8, "train_loss", 1.5) == 2 and epochs_to_reach(h1, "train_loss", 1.0) is None
