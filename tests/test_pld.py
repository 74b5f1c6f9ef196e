"""Chapter 15 (PLD): the arm plan, the paired claim values, the loss surfaces and the spec,
checked against hand-computed values. The loss itself is tested in test_distill_losses.py."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from repro.families.distillation import analysis, figures
from repro.families.distillation.arms import kd
from repro.families.distillation.protocol import DistillConfig, hyperparameters
from repro.papers import Claim, load_spec
from repro.sweep import SweepResult

# ------------------------------------------------------------------ arms, checked before training


def test_arm_plan_lists_baselines_then_one_pld_per_tau():
    arms, names = kd.pld_plan([1.0, 4.0], 4.0)
    assert list(arms) == ["ce", "kd", "dist", "pld_tau1", "pld"]
    assert names == {"ce": "CE", "kd": "KD", "dist": "DIST", "pld_tau1": "PLD τ=1", "pld": "PLD τ=4"}
    assert arms["pld_tau1"][0] == arms["pld"][0] == "pld"
    assert arms["pld_tau1"][1].pld_tau_t == 1.0 and arms["pld"][1].pld_tau_t == 4.0
    # the arms' defaults are filled in: CRD-style KD and the paper's DIST
    assert hyperparameters(arms["kd"][1]) == {"kd_temperature": 4.0, "kd_ce_weight": 0.1, "kd_weight": 0.9}
    assert hyperparameters(arms["dist"][1]) == {"dist_temperature": 4.0, "dist_beta": 2.0, "dist_gamma": 2.0}
    assert arms["ce"][0] == "ce" and type(arms["ce"][1]) is DistillConfig
    # an integer τ from the command line names the same arm; labels are identifiers
    assert kd.pld_plan([2], 2)[1]["pld"] == "PLD τ=2"
    assert kd.pld_label(0.5) == "pld_tau0_5" and kd.pld_label(0.5).isidentifier()
    # the chapter's protocol parameters reach every config
    arms, _ = kd.pld_plan([1.0], 1.0, {"epochs": 7})
    assert {cfg.epochs for _, cfg in arms.values()} == {7}


@pytest.mark.parametrize("taus, claim, match", [
    ([1.0, 4.0], 2.0, "claim_tau_t=2.0 must be one of"),
    ([], 1.0, "at least one"),
    ([4.0, 4], 4.0, "must not repeat"),
    ([0.0, 4.0], 4.0, "pld_tau_t"),
    ([-1.0], -1.0, "pld_tau_t"),
])
def test_bad_plans_fail_before_training(taus, claim, match):
    with pytest.raises(ValueError, match=match):
        kd.pld_plan(taus, claim)


# ------------------------------------------------------------------ paired claim values

def _job(arm, seed, top1, train_s=1.0):
    return {"arm": arm, "seed": seed, "metrics": {"top1": top1}, "train_s": train_s, "extra": {}}


RESULTS = SweepResult([_job("ce", 0, 50.0), _job("kd", 0, 53.0), _job("dist", 0, 54.5), _job("pld", 0, 55.0, 2.5),
                       _job("pld_tau1", 0, 52.0),
                       _job("ce", 1, 48.0), _job("kd", 1, 51.0), _job("dist", 1, 50.0), _job("pld", 1, 49.5, 3.0),
                       _job("pld_tau1", 1, 51.0)])


def test_claims_are_paired_differences_by_seed():
    # seed 0: 55 − 53, 55 − 54.5, 55 − 50; seed 1: 49.5 − 51, 49.5 − 50, 49.5 − 48
    assert RESULTS.paired("top1", "pld", "kd") == pytest.approx({0: 2.0, 1: -1.5})
    assert RESULTS.paired("top1", "pld", "dist") == pytest.approx({0: 0.5, 1: -0.5})
    assert RESULTS.paired("top1", "pld", "ce") == pytest.approx({0: 5.0, 1: 1.5})
    assert RESULTS.per_seed("top1", "pld") == {0: 55.0, 1: 49.5}
    # the spec's claims name exactly these parts
    claims = {c.id: c for c in load_spec("pld").claims}
    assert [(claims[k].metric, claims[k].arm, claims[k].baseline) for k in ("pld_beats_kd", "pld_beats_dist",
            "pld_beats_ce", "pld_top1_r56_r20")] == [("top1", "pld", "kd"), ("top1", "pld", "dist"),
                                                     ("top1", "pld", "ce"), ("top1", "pld", None)]
    assert isinstance(claims["pld_beats_kd"], Claim) and claims["pld_beats_kd"].key == "top1:pld-kd"


# ------------------------------------------------------------------ loss surfaces (App. J)

def test_two_class_surfaces_by_hand():
    """C = 2 with d1 = (1, 1)/√2 (a pure shift) and d2 = (1, −1)/√2 (moves the margin)."""
    r2 = math.sqrt(2)
    surf = analysis.loss_surfaces(num_classes=2, steps=5, span=2.0, temperature=4.0, tau_t=4.0,
                             directions=(torch.tensor([1 / r2, 1 / r2]), torch.tensor([1 / r2, -1 / r2])))
    t, y = surf["teacher"], surf["label"]
    assert y == int(np.argmax(t))
    o = 1 - y
    grid = surf["grid"]
    assert grid == pytest.approx([-2.0, -1.0, 0.0, 1.0, 2.0])
    alpha_y = math.exp(t[y] / 4) / (math.exp(t[0] / 4) + math.exp(t[1] / 4))
    p_t = [math.exp(v / 4) / (math.exp(t[0] / 4) + math.exp(t[1] / 4)) for v in t]
    for i, b in enumerate(grid):
        s = [t[0] + b / r2, t[1] - b / r2]                      # a drops out: every loss is shift-invariant
        margin = s[y] - s[o]
        pld_hand = alpha_y * math.log1p(math.exp(-margin))      # α_y·(lse(s) − s_y) + α_o·(s_o − s_o)
        p_s = [math.exp(v / 4) / (math.exp(s[0] / 4) + math.exp(s[1] / 4)) for v in s]
        kd_hand = 16 * sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s))
        # two classes: the Pearson correlation of the softmax rows is ±1 with the ordering
        same_order = (s[0] - s[1]) * (t[0] - t[1]) > 0
        dist_hand = 0.0 if same_order else 16 * 2.0
        for j in range(5):
            assert surf["surfaces"]["PLD"][i][j] == pytest.approx(pld_hand, rel=1e-6)
            assert surf["surfaces"]["KD"][i][j] == pytest.approx(kd_hand, rel=1e-6, abs=1e-9)
            assert surf["surfaces"]["DIST"][i][j] == pytest.approx(dist_hand, abs=1e-9)


def test_surfaces_kd_and_dist_vanish_at_the_teacher_and_pld_is_convex():
    surf = analysis.loss_surfaces(num_classes=10, steps=21, span=4.0, seed=3)
    c = 10  # centre of a 21-point grid: a = b = 0, s = t
    kd, dist, pl = (np.asarray(surf["surfaces"][k]) for k in ("KD", "DIST", "PLD"))
    assert kd[c, c] == pytest.approx(0.0, abs=1e-12) and kd.min() == kd[c, c]
    assert dist[c, c] == pytest.approx(0.0, abs=1e-9)
    # PLD is convex in s and s is affine in (a, b): second differences are ≥ 0 along both axes
    assert (np.diff(pl, 2, axis=0) >= -1e-9).all() and (np.diff(pl, 2, axis=1) >= -1e-9).all()
    # the plane's directions are orthonormal
    d1, d2 = np.asarray(surf["d1"]), np.asarray(surf["d2"])
    assert np.dot(d1, d2) == pytest.approx(0.0, abs=1e-12) and np.linalg.norm(d1) == pytest.approx(1.0)


def test_surface_input_is_checked():
    with pytest.raises(ValueError, match="num_classes"):
        analysis.loss_surfaces(num_classes=1)
    with pytest.raises(ValueError, match="tau_t"):
        analysis.loss_surfaces(tau_t=0.0)
    with pytest.raises(ValueError, match="3 entries"):
        analysis.loss_surfaces(num_classes=3, directions=(torch.ones(2), torch.ones(2)))


# ------------------------------------------------------------------ figures' data

def test_tau_figure_data_and_missing_arm():
    _, data = figures.plot_tau(RESULTS, [4.0, 1.0], 4.0, "test setting")
    assert data["pld"] == {"1.0": [52.0, 51.0], "4.0": [55.0, 49.5]}
    assert data["reference"]["KD"] == [53.0, 51.0] and data["setting"] == "test setting"
    with pytest.raises(ValueError, match="no results for 'pld_tau8'"):
        figures.plot_tau(RESULTS, [1.0, 8.0], 4.0, "x")


def test_interpolation_figure_keeps_the_curve():
    curve = {s: {"alpha": [0.0, 0.5, 1.0], "loss": [1.0, 2.0, 1.5], "acc": [50.0, 30.0, 55.0]}
             for s in ("train", "test")}
    _, data = figures.plot_interpolation(curve, "x")
    assert data["curve"]["test"]["acc"] == [50.0, 30.0, 55.0]


# ------------------------------------------------------------------ spec

def test_spec_claims_are_table1_resnet56_resnet20_differences():
    spec = load_spec("pld")
    assert spec.number == 15 and spec.info["protocol"] == "distillation"
    claims = {c.id: c for c in spec.claims}
    # Table 1, ResNet-56 → ResNet-20: CE 67.57, KD 69.45, DIST 69.66, PLD 70.28
    assert claims["pld_beats_kd"].paper_value == pytest.approx(70.28 - 69.45)
    assert claims["pld_beats_dist"].paper_value == pytest.approx(70.28 - 69.66)
    assert claims["pld_beats_ce"].paper_value == pytest.approx(70.28 - 67.57)
    assert all(claims[k].kind == "effect" and claims[k].direction == "higher"
               for k in ("pld_beats_kd", "pld_beats_dist", "pld_beats_ce"))
    absolute = claims["pld_top1_r56_r20"]
    assert absolute.kind == "absolute" and absolute.paper_value == 70.28 and absolute.key == "top1:pld"
    for tier in ("smoke", "cpu", "gpu", "paper"):
        p = spec.resolve(tier)
        assert p["claim_tau_t"] in p["tau_ts"] and sorted(p["tau_ts"]) == [1.0, 4.0]
        kd.pld_plan(p["tau_ts"], p["claim_tau_t"], p)
    paper = spec.resolve("paper")
    assert (paper["teacher"], paper["student"]) == ("resnet56", "resnet20")


# ------------------------------------------------------------------ CE ↔ PLD interpolation

def test_interpolation_grid_by_hand(monkeypatch):
    monkeypatch.delenv("REPRO_DRY_RUN", raising=False)
    alphas, n = analysis.interpolation_grid(5, 1000)
    assert alphas == pytest.approx([-0.5, 0.0, 0.5, 1.0, 1.5]) and n == 1000
    alphas17 = analysis.interpolation_grid(17, 0)[0]  # step 0.125: 0 and 1 on the grid
    assert alphas17[4] == 0.0 and alphas17[12] == 1.0
    with pytest.raises(ValueError, match="landscape_points"):
        analysis.interpolation_grid(1, 10)
    with pytest.raises(ValueError, match="landscape_samples"):
        analysis.interpolation_grid(5, -1)
    monkeypatch.setenv("REPRO_DRY_RUN", "1")
    assert analysis.interpolation_grid(21, 2000) == (pytest.approx([-0.5, 0.5, 1.5]), 64)


def test_interpolating_a_model_with_itself_is_flat_with_bn_reestimated(fake_data, monkeypatch):
    """θ(α) = θ for every α when both ends are one model: the loss must not move, and the
    re-estimated BN statistics are the same at every α (they do not depend on the stored ones)."""
    from repro import models
    from repro.data import load

    monkeypatch.delenv("REPRO_DRY_RUN", raising=False)
    data = load(classes=3, per_class=8, test_per_class=4, image_size=8)
    torch.manual_seed(0)
    model = models.create("cnn3", num_classes=3, width=4)
    curve = analysis.interpolate_students(model, model, data, points=3, samples=0)
    assert curve["train"]["alpha"] == pytest.approx([-0.5, 0.5, 1.5])
    assert curve["train"]["n_samples"] == 24 and curve["test"]["n_samples"] == 12
    for split in ("train", "test"):
        assert np.ptp(curve[split]["loss"]) == pytest.approx(0.0, abs=1e-5)
        assert len(set(curve[split]["acc"])) == 1
