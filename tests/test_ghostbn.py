"""Ghost BatchNorm and the large-batch regime (paper 41), with hand-computed expectations."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from repro.layers.ghost_bn import GhostBatchNorm1d, GhostBatchNorm2d, ghost_norm
from repro.arms import make_config
from repro.families.training.arms import ghostbn as lb
from repro.plots.landscape import recalibrate_bn
from repro.train import StepInfo, TrainConfig, lr_factor


def _pair(c: int, ghost: int, **kw) -> tuple[GhostBatchNorm2d, nn.BatchNorm2d]:
    """A GBN and a BN with the same (non-trivial) affine parameters."""
    g, bn = GhostBatchNorm2d(c, ghost_size=ghost, **kw), nn.BatchNorm2d(c, **kw)
    with torch.no_grad():
        g.weight.copy_(torch.linspace(0.5, 1.5, c))
        g.bias.copy_(torch.linspace(-0.2, 0.3, c))
        bn.weight.copy_(g.weight)
        bn.bias.copy_(g.bias)
    return g, bn


# -- Ghost BN ----------------------------------------------------------------------------------

def test_hand_computed_groups_and_running_stats():
    # Two ghost batches of 2 samples, one channel, 1x1 images: (1, 3) and (5, 9).
    g = GhostBatchNorm2d(1, ghost_size=2, eps=0.0)
    x = torch.tensor([1.0, 3.0, 5.0, 9.0]).view(4, 1, 1, 1)
    y = g(x).flatten()
    # group 1: mean 2, biased var 1 → (−1, 1); group 2: mean 7, biased var 4 → (−1, 1)
    assert torch.allclose(y, torch.tensor([-1.0, 1.0, -1.0, 1.0]))
    # running mean: 0.9·0 + 0.1·mean(2, 7) = 0.45
    assert g.running_mean.item() == pytest.approx(0.45)
    # unbiased group variances: 1·2/1 = 2 and 4·2/1 = 8; running var 0.9·1 + 0.1·5 = 1.4
    assert g.running_var.item() == pytest.approx(1.4)
    assert int(g.num_batches_tracked) == 1


@pytest.mark.parametrize("ghost", [8, 20])
def test_ghost_at_least_batch_is_batchnorm(ghost):
    torch.manual_seed(0)
    g, bn = _pair(3, ghost)
    for _ in range(3):  # several steps: running statistics must agree too
        x = torch.randn(8, 3, 4, 4) * 2 + 1
        assert torch.equal(g(x), bn(x))
    assert torch.equal(g.running_mean, bn.running_mean) and torch.equal(g.running_var, bn.running_var)
    g.eval(), bn.eval()
    x = torch.randn(5, 3, 4, 4)
    assert torch.equal(g(x), bn(x))


def test_single_pass_equals_chunked_forward_and_gradients():
    """The official main_gbn.py forwards chunks of the ghost size one by one, backpropagates
    each chunk's mean loss and divides the accumulated gradients by the number of chunks."""
    torch.manual_seed(0)
    g, bn = _pair(3, 4)
    x = torch.randn(12, 3, 5, 5) * 3 - 1
    t = torch.randn(12, 3, 5, 5)
    xa = x.clone().requires_grad_(True)
    loss = F.mse_loss(g(xa), t)  # mean over the whole batch
    loss.backward()
    xb = x.clone().requires_grad_(True)
    outs = []
    for xc, tc in zip(xb.split(4), t.split(4)):
        out = bn(xc)
        outs.append(out.detach())
        F.mse_loss(out, tc).backward()
    g2, _ = _pair(3, 4)  # fresh layer: same outputs as the chunks
    assert torch.allclose(g2(x), torch.cat(outs), atol=1e-5)
    assert torch.allclose(xa.grad, xb.grad / 3, atol=1e-6)
    assert torch.allclose(g.weight.grad, bn.weight.grad / 3, atol=1e-5)
    assert torch.allclose(g.bias.grad, bn.bias.grad / 3, atol=1e-5)


def test_ragged_last_group_is_its_own_group():
    torch.manual_seed(1)
    g, bn = _pair(2, 4)
    x = torch.randn(10, 2, 3, 3) + 2
    y = g(x)
    ref = torch.cat([F.batch_norm(c, None, None, bn.weight, bn.bias, training=True) for c in x.split(4)])
    assert torch.allclose(y, ref.detach(), atol=1e-5)
    # running mean: 0.1 × size-weighted mean of the group means (4, 4, 2 samples)
    means = torch.stack([c.mean(dim=(0, 2, 3)) for c in x.split(4)])
    expect = 0.1 * (4 * means[0] + 4 * means[1] + 2 * means[2]) / 10
    assert torch.allclose(g.running_mean, expect, atol=1e-6)


def test_one_value_remainder_folds_into_previous_group():
    torch.manual_seed(2)
    g = GhostBatchNorm1d(3, ghost_size=4, affine=False)
    x = torch.randn(9, 3)  # groups 4 + 5: a 1-sample group would have no variance
    ref = torch.cat([F.batch_norm(x[:4], None, None, training=True),
                     F.batch_norm(x[4:], None, None, training=True)])
    assert torch.allclose(g(x), ref, atol=1e-5)
    assert g.group_sizes(9, 1) == (1, 4, 5)
    assert g.group_sizes(10, 1) == (2, 4, 2)


def test_eval_uses_running_stats_only():
    torch.manual_seed(3)
    g, _ = _pair(2, 4)
    for _ in range(5):
        g(torch.randn(16, 2, 3, 3) * 2 + 3)
    g.eval()
    x = torch.randn(16, 2, 3, 3)
    rm, rv = g.running_mean.clone(), g.running_var.clone()
    expect = (x - rm.view(1, 2, 1, 1)) / torch.sqrt(rv.view(1, 2, 1, 1) + g.eps)
    expect = expect * g.weight.view(1, 2, 1, 1) + g.bias.view(1, 2, 1, 1)
    assert torch.allclose(g(x), expect, atol=1e-5)
    assert torch.allclose(g(x[:1]), g(x)[:1], atol=1e-6)  # no dependence on the batch
    assert torch.equal(g.running_mean, rm)  # and no update in eval


def test_cumulative_momentum_none():
    g = GhostBatchNorm2d(1, ghost_size=2, momentum=None, eps=0.0)
    g(torch.tensor([1.0, 3.0, 5.0, 9.0]).view(4, 1, 1, 1))   # mean of group means 4.5
    g(torch.tensor([0.0, 2.0, 0.0, 2.0]).view(4, 1, 1, 1))   # 1.0
    assert g.running_mean.item() == pytest.approx((4.5 + 1.0) / 2)


def test_ghost_norm_factory_as_norm_layer():
    from repro import models

    m = models.create("cnn3", num_classes=5, norm_layer=ghost_norm(4))
    gbns = [mod for mod in m.modules() if isinstance(mod, GhostBatchNorm2d)]
    assert len(gbns) == 3 and all(mod.ghost_size == 4 for mod in gbns)
    assert m.state_dict().keys() == models.create("cnn3", num_classes=5).state_dict().keys()
    assert m(torch.randn(8, 3, 16, 16)).shape == (8, 5)


# -- learning rate, regime, arms ----------------------------------------------------------------

def test_sqrt_lr_and_regime_factor():
    assert lb.sqrt_lr(0.1, 512, 128) == pytest.approx(0.2)
    assert lb.sqrt_lr(0.01, 4096, 128) == pytest.approx(0.01 * math.sqrt(32))
    assert lb.regime_factor(4096, 128) == 32
    assert lb.regime_factor(100, 32) == 4  # ⌈3.125⌉, as in the official code


def test_regime_stretch_multiplies_every_milestone():
    r = lb.Regime(epochs=3, lr=0.1, milestones=(1.5, 2.25), warmup_epochs=0.5).stretched(4)
    assert r.epochs == 12 and r.milestones == (6.0, 9.0) and r.warmup_epochs == 2.0
    assert r.fractions() == [0.5, 0.75]
    assert lb.Regime(epochs=10, lr=0.1, milestones=(5.0, 10.0, 12.0)).fractions() == [0.5]
    assert r.first_drop_update(10) == 60


def test_arms_batch_lr_epochs():
    base = lb.Regime(epochs=3, lr=0.05, milestones=(1.5, 2.25))
    got = {a: lb.arm_regime(a, base, 32, 128) for a in lb.ARMS}
    assert got["SB"] == (32, base)
    assert got["LB"] == (128, base)
    assert got["LB_LR"][1].lr == pytest.approx(0.1) and got["LB_LR"][1].epochs == 3
    assert got["LB_LR_GBN"][1] == got["LB_LR"][1]
    assert lb.arm_regime("LB+LR+GBN+RA", base, 32, 128) == got["LB_LR_GBN_RA"]  # Table 1's names work too
    ra = got["LB_LR_GBN_RA"][1]
    assert ra.lr == pytest.approx(0.1) and ra.epochs == 12 and ra.milestones == (6.0, 9.0)
    with pytest.raises(ValueError):
        lb.check_arms(["SB", "XL"])


def test_regime_adaptation_drops_lr_at_the_same_update_as_sb():
    # SB: 3 epochs × 8 updates; RA: 12 epochs × 2 updates (B = 4b): both 24 updates, drop at 12
    sb = TrainConfig(epochs=3, schedule="step", milestones=(0.5,))
    ra = TrainConfig(epochs=12, schedule="step", milestones=(0.5,))
    f_sb = [lr_factor(sb, s, 24, 8) for s in range(24)]
    f_ra = [lr_factor(ra, s, 24, 2) for s in range(24)]
    assert f_sb == f_ra and f_sb[11] == 1.0 and f_sb[12] == pytest.approx(0.1)


# -- distance from initialisation -------------------------------------------------------------

def test_weight_distance_and_its_state():
    m = nn.Linear(2, 1, bias=False)
    cb = lb.WeightDistance(m, every=10)
    with torch.no_grad():
        m.weight.add_(torch.tensor([[3.0, 4.0]]))
    for s in range(1, 25):
        cb.on_step(StepInfo(model=m, step=s, epoch=0, loss=0.0))
    assert cb.steps == [1, 2, 4, 8, 10, 16, 20]
    assert cb.dist == pytest.approx([5.0] * 7)
    other = lb.WeightDistance(nn.Linear(2, 1, bias=False), every=3)
    other.load_state_dict(cb.state_dict())
    assert other.every == 10 and other.steps == cb.steps
    assert other.distance(m) == pytest.approx(5.0)  # w0 restored, not the new model's


def test_log_fit_tells_log_from_sqrt():
    t = [2.0 ** k for k in range(1, 12)]
    f = lb.log_fit(t, [2 + 3 * math.log10(s) for s in t])
    assert f["slope_per_decade"] == pytest.approx(3.0) and f["intercept"] == pytest.approx(2.0)
    assert f["r2_log"] == pytest.approx(1.0) and f["r2_sqrt"] < 0.9
    g = lb.log_fit(t, [math.sqrt(s) for s in t], t_max=512)
    assert g["r2_sqrt"] == pytest.approx(1.0) and g["r2_log"] < g["r2_sqrt"] and g["n"] == 9


def test_seed_metrics_are_the_distance_fits_only():
    accs = {"SB": 60.0, "LB": 50.0, "LB_LR": 54.0, "LB_LR_GBN": 55.5, "LB_LR_GBN_RA": 61.0}
    by_arm = {a: {"final_acc": v, "dist_steps": [], "dist": [], "warmup_updates": 0,
                  "first_drop_update": 10} for a, v in accs.items()}
    assert lb.seed_metrics(by_arm) == {}  # no distance log → no fit; accuracies are the sweep's rows
    t = [2 ** k for k in range(1, 8)]
    by_arm["LB"].update(dist_steps=t, dist=[2 + 3 * math.log10(s) for s in t], first_drop_update=128)
    m = lb.seed_metrics(by_arm)
    assert m["dist_slope_lb"] == pytest.approx(3.0) and m["dist_r2_log_lb"] == pytest.approx(1.0)
    assert m["dist_log_vs_sqrt_lb"] == pytest.approx(1.0 - m["dist_r2_sqrt_lb"])
    assert "gap_lb" not in m and "acc_lb" not in m


def test_arm_configs_and_labels():
    params = {"arms": ["SB", "LB+LR+GBN", "LB_LR_GBN_RA"], "milestones": [1.5], "epochs": 2, "small_batch": 4,
              "large_batch": 16, "ghost_size": 4, "model": "cnn3"}
    arms = lb.arm_configs(params)
    assert list(arms) == ["SB", "LB_LR_GBN", "LB_LR_GBN_RA"]
    cfg = arms["LB_LR_GBN"][1]
    assert cfg.column == "LB_LR_GBN" and cfg.milestones == (1.5,) and cfg.base_regime.epochs == 2
    assert lb.metric_key("LB+LR+GBN") == lb.metric_key("LB_LR_GBN") == "lb_lr_gbn"
    with pytest.raises(ValueError):
        lb.arm_configs({**params, "arms": ["XL"]})


def test_c3_shapes():
    m = lb.build_model("c3", 100, 32, ghost_size=4)
    assert m.num_features == 64 * 7 * 7
    assert m(torch.randn(8, 3, 32, 32)).shape == (8, 100)
    assert sum(isinstance(x, GhostBatchNorm1d) for x in m.modules()) == 2


def test_run_arm_ra_matches_sb_updates():
    from repro.data import Dataset

    g = torch.Generator().manual_seed(0)
    data = Dataset(x_train=torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=g),
                   y_train=torch.arange(64) % 4,
                   x_test=torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=g),
                   y_test=torch.arange(16) % 4, classes=[0, 1, 2, 3], class_names=list("abcd"),
                   checksum="synthetic")
    params = {"model": "cnn3", "image_size": 8, "small_batch": 8, "large_batch": 32, "ghost_size": 8,
              "epochs": 1, "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0, "milestones": [0.5],
              "gamma": 0.1, "warmup_epochs": 0.0, "grad_clip_gbn": 5.0, "dist_every": 1}
    job_sb = lb.train_ghostbn(make_config(lb.GhostBNConfig, params, column="SB"), data, 0)
    job_ra = lb.train_ghostbn(make_config(lb.GhostBNConfig, params, column="LB+LR+GBN+RA"), data, 0)
    sb, ra = job_sb.extra, job_ra.extra
    assert job_ra.metrics == {"top1": ra["final_acc"]} and job_ra.n_test == 16 and job_ra.model is not None
    assert sb["updates"] == ra["updates"] == 8 and ra["epochs"] == 4 and ra["batch_size"] == 32
    assert ra["first_drop_update"] == sb["first_drop_update"] == 4
    assert ra["dist_steps"] == [1, 2, 3, 4, 5, 6, 7, 8] and len(ra["history"]) == 4
    assert "test_err" in ra["history"][-1]


def test_recalibrate_bn_is_the_exact_average_over_batches():
    bn = nn.BatchNorm2d(1)
    model = nn.Sequential(bn)
    b1 = torch.tensor([1.0, 3.0]).view(2, 1, 1, 1)   # mean 2, unbiased var 2
    b2 = torch.tensor([5.0, 9.0]).view(2, 1, 1, 1)   # mean 7, unbiased var 8
    recalibrate_bn(model, [(b1, None), (b2, None)])
    assert bn.running_mean.item() == pytest.approx(4.5) and bn.running_var.item() == pytest.approx(5.0)
    assert bn.momentum == 0.1 and not model.training


def test_fit_window_skips_warmup_and_momentum_transient():
    assert lb.fit_start(0, 0.9) == 10  # 1 / (1 − 0.9), not 11 from float rounding
    assert lb.fit_start(0, 0.0) == 1
    assert lb.fit_start(1920, 0.0) == 1920
