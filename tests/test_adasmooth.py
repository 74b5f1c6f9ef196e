"""Chapter 03 (adaptive smoothing): the mixed classifier and its mixing weight against values
computed by hand, the mixing network's loss, the chord and the confidence gap, the arm end to
end on a tiny made-up data set, and the chapter's guards, tables and figures."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from repro import models
from repro.data import Dataset
from repro.errors import ParameterError
from repro.families.robustness import adasmooth as A
from repro.families.robustness import protocol
from repro.families.robustness.arms import adasmooth as arm
from repro.families.robustness.arms.standard import train_model
from repro.families.robustness.attacks import check_model
from repro.papers import load_spec
from repro.sweep import SweepResult
from repro.train import WORK


class Const(nn.Module):
    """A 'network' whose logits are a fixed row, whatever the image (for hand computations)."""

    def __init__(self, logits: list[float], calls: list | None = None) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.register_buffer("z", torch.tensor(logits))
        self.calls = calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calls is not None:
            self.calls.append(1)
        return self.z.expand(len(x), -1) + 0 * self.w


X = torch.zeros(2, 3, 8, 8)
LN3 = math.log(3.0)


# -- the mixture, by hand ------------------------------------------------------------------------------
def test_probability_mixture_by_hand():
    """s_g = s_h = 1: p_g = softmax([0, ln 3]) = [1/4, 3/4], p_h = softmax([0, 0]) = [1/2, 1/2];
    α = 0.2: (0.8·[0.25, 0.75] + 0.2·[0.5, 0.5]) = [0.3, 0.7], so F = log [0.3, 0.7]."""
    m = A.MixedClassifier(Const([0.0, LN3]), Const([0.0, 0.0]), alpha=0.2, scale_g=1.0, scale_h=1.0)
    out = m(X)
    torch.testing.assert_close(out, torch.log(torch.tensor([[0.3, 0.7]] * 2)))
    torch.testing.assert_close(torch.logsumexp(out, 1), torch.zeros(2))   # a log-probability


def test_logit_scales_by_hand():
    """s_g = 2: p_g = softmax([0, 2 ln 3]) = [1/10, 9/10]; h = [0, ln 3] → [1/4, 3/4]; α = 1/2:
    [0.175, 0.825]. Logit mixing: 0.5·2·[0, ln 3] + 0.5·[0, ln 3] = [0, 1.5 ln 3]."""
    g, h = Const([0.0, LN3]), Const([0.0, LN3])
    m = A.MixedClassifier(g, h, alpha=0.5, scale_g=2.0, scale_h=1.0)
    torch.testing.assert_close(m(X)[0], torch.log(torch.tensor([0.175, 0.825])))
    lm = A.MixedClassifier(g, h, mode="logit", alpha=0.5, scale_g=2.0, scale_h=1.0)
    torch.testing.assert_close(lm(X)[0], torch.tensor([0.0, 1.5 * LN3]))


def test_log_of_the_mixture_stays_finite_where_probabilities_underflow():
    """Logits 200 apart: both networks give class 0 a probability below fp32's range, and a
    naive log((1 − α)p_g + αp_h) is −inf; the log-sum-exp form gives log(e^-200) = −200."""
    m = A.MixedClassifier(Const([-200.0, 0.0]), Const([-200.0, 0.0]), alpha=0.5, scale_g=1.0, scale_h=1.0)
    out = m(X)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0], torch.tensor([-200.0, 0.0]), atol=1e-4, rtol=0)


def test_alpha_zero_and_one_run_only_the_network_they_keep():
    cg, ch = [], []
    g, h = Const([0.0, LN3], cg), Const([LN3, 0.0], ch)
    out = A.MixedClassifier(g, h, alpha=0.0, scale_g=2.0)(X)
    assert len(cg) == 1 and not ch
    torch.testing.assert_close(out[0], torch.log(torch.tensor([0.1, 0.9])))
    A.MixedClassifier(g, h, alpha=1.0)(X)
    assert len(cg) == 1 and len(ch) == 1


def _cnn(seed: int, classes: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return models.create("cnn3", num_classes=classes, width=4).eval()


class FixedRaw(nn.Module):
    """A stand-in mixing network whose raw γ is given."""

    def __init__(self, raw: list[float]) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.raw = torch.tensor(raw)

    def forward(self, f1, f2) -> torch.Tensor:
        return self.raw + 0 * self.w


def test_adaptive_alpha_by_hand_in_each_phase():
    """BatchNorm's running mean 0 and variance 1 leave γ (up to √(1 + 1e-5)). Evaluation:
    γ = 2γ + 1.3, α = 0.84 + 0.15·sigmoid(γ): raw 0 → 0.84 + 0.15·0.785835 = 0.957875, raw −1
    → 0.84 + 0.15·sigmoid(−0.7) = 0.889772. Crafting (eval BatchNorm, training constants, α
    unsquashed): raw 0 → sigmoid(0.4) = 0.598688. Training (batch statistics: raw [−1, 1] has
    mean 0 and biased variance 1): γ = 2·[−1, 1] + 0.4 → α = sigmoid([−1.6, 2.4])."""
    g, h = _cnn(0), _cnn(1)
    x = torch.rand(2, 3, 16, 16)
    m = A.MixedClassifier(g, h, mixer=FixedRaw([0.0, -1.0])).eval()
    out, gamma, alpha = m.mix(x)
    s = 1 / math.sqrt(1 + 1e-5)
    torch.testing.assert_close(gamma, torch.tensor([1.3, -2 * s + 1.3]))
    torch.testing.assert_close(alpha, torch.tensor([0.957875, 0.889772]), atol=2e-6, rtol=0)
    pg, ph = torch.softmax(2 * g(x), 1), torch.softmax(h(x), 1)
    want = torch.log((1 - alpha)[:, None] * pg + alpha[:, None] * ph)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    with m.crafting():
        _, _, a = m.mix(x)
    assert float(a[0].detach()) == pytest.approx(0.598688, abs=1e-6)
    t = A.MixedClassifier(g, h, mixer=FixedRaw([-1.0, 1.0])).train()
    _, _, a = t.mix(x)
    torch.testing.assert_close(a, torch.sigmoid(torch.tensor([-2 * s + 0.4, 2 * s + 0.4])), atol=1e-6, rtol=0)


def test_bases_stay_frozen_and_in_eval_mode_whatever_train_asks():
    g, h = _cnn(0), _cnn(1)
    mixer = A.build_mixer(g, h, 16, 8)
    m = A.MixedClassifier(g, h, mixer=mixer)
    m.train()
    assert m.training and mixer.training and not g.training and not h.training
    assert not any(p.requires_grad for p in list(g.parameters()) + list(h.parameters()))
    assert all(p.requires_grad for p in mixer.parameters())
    m.eval()
    check_model(m)  # every module in eval mode: the family's attacks accept it


@pytest.mark.parametrize("kw, msg", [({"mode": "mean"}, "mixing mode"), ({"alpha": 1.5}, "alpha"),
                                     ({"alpha_bias": 0.9, "alpha_scale": 0.2}, "alpha_scale"),
                                     ({"scale_g": 0.0}, "scale_g")])
def test_bad_mixture_settings_are_refused(kw, msg):
    with pytest.raises(ParameterError, match=msg):
        A.MixedClassifier(Const([0.0, 0.0]), Const([0.0, 0.0]), **kw)


def test_the_mixing_network_mixes_probabilities_only():
    g, h = _cnn(0), _cnn(1)
    with pytest.raises(ParameterError, match="mode='prob'"):
        A.MixedClassifier(g, h, mode="logit", mixer=A.build_mixer(g, h, 16, 8))


# -- loss, mechanics ----------------------------------------------------------------------------------------
def test_composite_loss_by_hand():
    """γ = [0, ln 3], labels (attacked?) [0, 1]: BCE = [ln 2, −ln 0.75] = [0.693147, 0.287682];
    F = log [[.5, .5], [.25, .75]], classes [0, 1]: CE = [ln 2, −ln 0.75]. Per image
    1.5·BCE + 0·CE + 0.2·BCE·CE = [1.135812, 0.448075]; mean 0.791943."""
    logp = torch.log(torch.tensor([[0.5, 0.5], [0.25, 0.75]]))
    loss = A.composite_loss(logp, torch.tensor([0.0, LN3]), torch.tensor([0, 1]), torch.tensor([0.0, 1.0]),
                            A.MixerConfig())
    assert float(loss) == pytest.approx(0.791943, abs=1e-6)


def test_mixer_loss_attacks_the_composite_and_trains_only_the_mixer():
    g, h = _cnn(0), _cnn(1)
    mixer = A.build_mixer(g, h, 16, 8)
    cfg = A.MixerConfig(width=8, attack_steps=2)
    m = A.MixedClassifier(g, h, mixer=mixer).train()
    x, y = torch.randn(6, 3, 16, 16).clamp(-1.5, 1.5), torch.randint(0, 4, (6,))
    before = WORK["attack_grads"]
    loss, logits = A.mixer_loss(cfg)(m, x, y)
    assert WORK["attack_grads"] - before == 2 and logits.shape == (6, 4) and torch.isfinite(loss)
    assert m.training and mixer.training and not m._crafting   # the crafting state is undone
    loss.backward()
    assert all(p.grad is None for p in list(g.parameters()) + list(h.parameters()))
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in mixer.parameters())
    with pytest.raises(ParameterError, match="adaptive"):
        A.mixer_loss(cfg)(A.MixedClassifier(g, h, alpha=0.5), x, y)


def test_mechanics_valid_log_probabilities_and_gradients_reach_every_part():
    g, h = _cnn(0), _cnn(1)
    m = A.MixedClassifier(g, h, mixer=A.build_mixer(g, h, 16, 8)).eval()
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 4, (8,))
    out = A.mechanics(m, x, y)
    assert out["logprob_error"] < 1e-5
    assert out["grad_g"] > 0 and out["grad_h"] > 0 and out["grad_mixer"] > 0
    assert not any(p.requires_grad or p.grad is not None for p in g.parameters())
    lm = A.MixedClassifier(g, h, mode="logit", alpha=0.5)
    assert A.mechanics(lm, x, y)["logprob_error"] is None


@pytest.mark.parametrize("kw, msg", [({"eps_range": (1.2, 0.4)}, "eps_range"), ({"bce_weight": 0.0, "prod_weight": 0.0},
                                     "nothing would teach"), ({"attack_steps": 0}, "mix_attack_steps"),
                                     ({"eps": 0.5, "eps_range": (0.4, 2.5)}, "> 1"), ({"width": 0}, "mixer_width"),
                                     ({"bn_momentum": 0.0}, "gamma_bn_momentum")])
def test_bad_mixer_settings_are_refused(kw, msg):
    with pytest.raises(ParameterError, match=msg):
        A.MixerConfig(**kw)


# -- the chord, the confidence gap and their test variance ------------------------------------------------------
def test_chord_gain_by_hand():
    """g = (80, 0), h = (40, 20): at clean 60 the chord gives 20 + 20·(−20/40) = 10, so a mixture
    at (60, 15) lies 5 points above it; the bases themselves and any chord point give 0."""
    assert A.chord_gain(80, 0, 40, 20, 60, 15) == pytest.approx(5.0)
    assert A.chord_gain(80, 0, 40, 20, 80, 0) == pytest.approx(0.0)
    assert A.chord_gain(80, 0, 40, 20, 40, 20) == pytest.approx(0.0)
    assert A.chord_gain(80, 0, 40, 20, 50, 15) == pytest.approx(0.0)
    assert math.isnan(A.chord_gain(50, 0, 50, 20, 50, 10))
    np.testing.assert_allclose(A.chord_gain(80, 0, 40, 20, np.array([60.0, 50.0]), np.array([15.0, 15.0])), [5.0, 0.0])


def _point(label, clean, adv, conf=None, alpha=None):
    clean, adv = np.asarray(clean, bool), np.asarray(adv, bool)
    c = np.asarray(conf if conf is not None else [0.5] * len(clean), float)
    a = np.asarray(alpha if alpha is not None else [0.9] * len(clean), float)
    return A.PointResult(label, "prob", 0.5, clean, adv, c, c, a, a)


def test_gain_of_per_image_results_by_hand():
    """Four images. g: clean 1 1 1 1 (100%), robust 0 0 0 0 (0%); h: clean 1 1 0 0 (50%),
    robust 1 1 0 0 (50%); mixture: clean 1 1 1 0 (75%), robust 1 0 0 0 (25%). The chord at 75:
    50 + 25·(0 − 50)/50 = 25, so the gain is 0; a mixture that keeps h's robust images
    (1 1 0 0, 50%) at the same clean accuracy lies 25 points above."""
    g = _point("g", [1, 1, 1, 1], [0, 0, 0, 0])
    h = _point("h", [1, 1, 0, 0], [1, 1, 0, 0])
    m = _point("m", [1, 1, 1, 0], [1, 0, 0, 0])
    assert A.gain_of(g, h, m) == pytest.approx(0.0)
    m2 = _point("m", [1, 1, 1, 0], [1, 1, 0, 0])
    assert A.gain_of(g, h, m2) == pytest.approx(25.0)
    assert A.gain_of(g, h, m2, np.arange(4)[None])[0] == pytest.approx(25.0)


def test_confidence_gap_by_hand():
    """Confidences 0.9, 0.8 (correct) and 0.3, 0.5 (wrong): 100·(0.85 − 0.40) = 45 points."""
    assert A.confidence_gap([0.9, 0.8, 0.3, 0.5], [True, True, False, False]) == pytest.approx(45.0)
    assert math.isnan(A.confidence_gap([0.9, 0.8], [True, True]))
    rows = A.confidence_gap([0.9, 0.8, 0.3, 0.5], [True, True, False, False], np.array([[0, 1, 2, 3], [0, 0, 2, 2]]))
    np.testing.assert_allclose(rows, [45.0, 60.0])


def test_bootstrap_variance_of_an_accuracy_is_binomial():
    """A mean of 400 Bernoulli(0.25) outcomes has variance 100²·0.25·0.75/400 = 4.6875 pts²."""
    a = np.zeros(400, bool)
    a[:100] = True
    v = A.bootstrap_var(lambda idx: 100 * a[idx].mean(1), 400, boots=4000, seed=1)
    assert v == pytest.approx(4.6875, rel=0.1)
    assert A.bootstrap_var(lambda idx: idx.mean(1), 1) == 0.0


def test_paired_bootstrap_is_tighter_than_adding_variances():
    """A mixture that agrees with h on all but a few images: its gain's paired bootstrap
    variance is far below the sum of the binomial variances of the accuracies it is made of."""
    rng = np.random.default_rng(0)
    n = 300
    hc = rng.random(n) < 0.45
    hr = hc & (rng.random(n) < 0.6)
    g = _point("g", rng.random(n) < 0.6, np.zeros(n))
    h = _point("h", hc, hr)
    m = _point("m", hc | (rng.random(n) < 0.1), hr)
    v = A.bootstrap_var(lambda idx: A.gain_of(g, h, m, idx), n, boots=2000)
    naive = sum(A.binomial_var(100 * x.mean(), n) for x in (h.robust, m.robust, m.clean))
    assert 0 < v < naive


def test_derived_metrics_and_warnings():
    g = _point("g", [1, 1, 1, 1], [0, 0, 0, 0])
    h = _point("h", [1, 1, 0, 0], [1, 1, 0, 0], conf=[0.9, 0.7, 0.2, 0.4])
    pts = {"g": g, "h": h, "prob": _point("p", [1, 1, 1, 0], [1, 1, 0, 0]),
           "logit": _point("l", [1, 1, 1, 0], [1, 0, 0, 0]), "adaptive": _point("a", [1, 1, 1, 1], [1, 1, 0, 0])}
    metrics, var, warn = arm.derived_metrics(pts, boots=200)
    assert metrics["gain_prob"] == pytest.approx(25.0) and metrics["gain_logit"] == pytest.approx(0.0)
    assert metrics["prob_vs_logit"] == pytest.approx(25.0)
    assert metrics["gain_adaptive"] == pytest.approx(50.0)    # (100, 50): the chord gives 0 there
    assert metrics["adaptive_vs_fixed"] == pytest.approx(25.0)
    assert metrics["conf_gap_adv"] == pytest.approx(50.0)     # 100·(0.8 − 0.3)
    assert metrics["clean_h"] == 50.0 and var["clean_h"] == pytest.approx(625.0)  # 100²·¼/4
    assert all(v >= 0 for v in var.values()) and warn == {}
    same = dict(pts, h=_point("h", [1, 1, 1, 1], [1, 1, 1, 1]))  # no wrong prediction and no chord
    metrics, _, warn = arm.derived_metrics(same, boots=50)
    assert metrics["gain_prob"] == 0.0 and "no chord" in warn["gain_prob"] and "no correct or no wrong" in warn["conf_gap_adv"]


# -- configs -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tier", ["smoke", "cpu", "gpu", "paper"])
def test_arms_at_every_tier(tier):
    spec = load_spec("adasmooth")
    p = spec.resolve(tier)
    arms = A.arm_configs(p)
    assert list(arms) == ["g", "h", "adasmooth"]
    g, h, ada = (c for _, c in arms.values())
    assert arms["g"][0] == arms["h"][0] == "standard" and arms["adasmooth"][0] == "adasmooth"
    assert g.adv is None and h.adv is not None and h.adv.eps == p["at_eps"]
    assert ada.base_g.recipe() == g.recipe() and ada.base_h.recipe() == h.recipe()
    assert 0.0 in ada.grid() and 1.0 in ada.grid() and round(ada.fixed_alpha, 6) in ada.grid()
    assert ada.fixed_alpha == pytest.approx(1 / (1 + math.exp(-p["fixed_gamma"])))
    assert [s.name for s in ada.eval.attacks] == ["pgd", "apgd_ce", "apgd_t"] and ada.eval.sanity
    assert {c.arm for c in spec.claims} == {"adasmooth"}
    assert set(A.CLAIM_RESTS_ON) == {c.metric for c in spec.claims}


def test_paper_tier_is_the_papers_config():
    p = load_spec("adasmooth").resolve("paper")
    ada = A.arm_configs(p)["adasmooth"][1]
    mix = ada.mixer
    assert (mix.scale_g, mix.scale_h, mix.alpha_bias, mix.alpha_scale) == (2.0, 1.0, 0.84, 0.15)
    assert (mix.gamma_train, mix.gamma_eval, mix.bn_momentum) == ((2.0, 0.4), (2.0, 1.3), 0.01)
    assert (mix.bce_weight, mix.ce_weight, mix.prod_weight, mix.eps_range) == (1.5, 0.0, 0.2, (0.4, 1.1))
    assert (ada.epochs, ada.lr, ada.weight_decay, ada.grad_clip) == (3, 5e-5, 1e-5, 10.0)
    assert ada.fixed_alpha == pytest.approx(0.924142, abs=1e-6)


def test_the_mixers_checkpoint_key_ignores_the_study():
    p = load_spec("adasmooth").resolve("smoke")
    a = A.arm_configs(p)["adasmooth"][1]
    b = A.arm_configs({**p, "alphas": [0.0, 0.3, 1.0], "fixed_gamma": 1.0, "eval_images": 8})["adasmooth"][1]
    c = A.arm_configs({**p, "mixer_width": 16})["adasmooth"][1]
    d = A.arm_configs({**p, "at_eps": 4 / 255})["adasmooth"][1]
    assert a.recipe() == b.recipe() and a.recipe() != c.recipe() and a.recipe() != d.recipe()


def test_weight_files_replace_the_base_jobs():
    p = load_spec("adasmooth").resolve("smoke")
    arms = A.arm_configs({**p, "g_weights": "/some/g.pt"})
    assert list(arms) == ["h", "adasmooth"]


@pytest.mark.parametrize("over, msg", [({"alphas": [0.0, 1.2]}, "alphas"), ({"alphas": []}, "alphas is empty"),
                                       ({"apgd_targets": 0}, "apgd_targets"), ({"alpha_bias": 0.9}, "alpha_scale"),
                                       ({"eval_eps": 8.0}, "eps"), ({"mix_eps_range": [0.4]}, "two numbers"),
                                       ({"check_images": 10**6}, "test set has"), ({"fixed_gamma": 20.0}, "not a mixture")])
def test_bad_settings_fail_before_any_work(over, msg):
    p = {**load_spec("adasmooth").resolve("smoke"), **over}
    with pytest.raises(ParameterError, match=msg):
        arms = A.arm_configs(p)
        protocol.jobs(arms, _data(), "cpu")


# -- end to end, on made-up data --------------------------------------------------------------------------------------
def _data(classes: int = 4, train: int = 16, test: int = 10) -> Dataset:
    g = torch.Generator().manual_seed(0)
    # class-dependent brightness, so the networks learn something in one epoch
    yt, ye = torch.arange(classes * train) % classes, torch.arange(classes * test) % classes
    def imgs(y):
        base = (y.float() * 60 + 20).view(-1, 1, 1, 1)
        return (base + torch.randint(-20, 20, (len(y), 3, 16, 16), generator=g)).clamp(0, 255).to(torch.uint8)
    return Dataset(x_train=imgs(yt), y_train=yt, x_test=imgs(ye), y_test=ye, classes=list(range(classes)),
                   class_names=[f"c{i}" for i in range(classes)], checksum="t", info={})


@pytest.fixture(scope="module")
def smoke_result(tmp_path_factory) -> SweepResult:
    d = tmp_path_factory.mktemp("ada")
    p = load_spec("adasmooth").resolve("smoke")
    data = _data()
    jobs = protocol.jobs(A.arm_configs(p), data, "cpu")
    out = []
    for seed in (0, 1):
        for label, fn in jobs.items():
            torch.manual_seed(seed)
            j = fn(seed, d / f"{label}-{seed}")
            out.append({"arm": label, "seed": seed, "metrics": j.metrics, "extra": j.extra, "test_var": j.test_var})
    return SweepResult(out)


def test_the_arm_end_to_end(smoke_result):
    jobs = smoke_result.of("adasmooth")
    assert len(jobs) == 2
    j = jobs[0]
    for key in ("gain_prob", "gain_logit", "gain_adaptive", "prob_vs_logit", "adaptive_vs_fixed", "conf_gap_adv",
                "eval_clean", "robust_pgd", "robust_apgd_ce", "robust_apgd_t", "robust_worst", "alpha_clean"):
        assert key in j["metrics"] and math.isfinite(j["metrics"][key]) and key in j["test_var"] or key == "alpha_clean"
    assert j["metrics"]["prob_vs_logit"] == pytest.approx(j["metrics"]["gain_prob"] - j["metrics"]["gain_logit"])
    # the sweep: g, h, and both modes at each interior α (0.5 and the paper's 0.924), then the adaptive model
    labels = [s["label"] for s in j["extra"]["sweep"]]
    assert labels == ["g", "prob_0.5", "logit_0.5", "prob_0.924142", "logit_0.924142", "h", "adaptive"]
    assert set(j["extra"]["checks"]) == set(A.CLAIM_POINTS) and len(j["extra"]["eval_indices"]) == 16
    assert all(0.84 <= a <= 0.99 for a in j["extra"]["alpha_values"]["clean"] + j["extra"]["alpha_values"]["adv"])
    mech = j["extra"]["mechanics"]
    assert mech["prob"]["logprob_error"] < 1e-5 and mech["adaptive"]["grad_mixer"] > 0
    assert mech["prob"]["grad_g"] > 0 and mech["prob"]["grad_h"] > 0
    for p in j["extra"]["points"].values():
        assert 0 <= p["robust"] <= p["clean"] <= 100
    # α = 0 and 1 of the two modes are the same models: one point each
    assert sum(s["alpha"] == 0.0 for s in j["extra"]["sweep"]) == 1


def test_tables_and_figures(smoke_result):
    assert "probability mixing, fixed α" in A.points_table(smoke_result)
    assert "APGD-T" in A.checks_table(smoke_result) and "‖∇g‖" in A.mechanics_table(smoke_result)
    base = A.base_table(smoke_result)
    assert "`g`" in base and "`h`" in base and "pgd, ε 8/255" in base
    fig, data = A.tradeoff_figure(smoke_result, "setting")
    assert fig.get_size_inches()[0] <= 7.5 and [p["alpha"] for p in data["prob"]][0] == 0.0
    assert data["points"]["g"]["clean"]["n"] == 2
    fig, data = A.confidence_figure(smoke_result, "setting")
    assert fig.get_size_inches()[0] <= 7.5 and set(data["adv"]) == {"correct", "wrong"}
    fig, data = A.alpha_figure(smoke_result, "setting")
    assert fig.get_size_inches()[0] <= 7.5 and data["range"] == [0.84, 0.99]


def test_base_network_loads_the_standard_arms_checkpoint_or_a_weight_file(tmp_path):
    p = load_spec("adasmooth").resolve("smoke")
    cfg = A.arm_configs(p)["g"][1]
    data = _data()
    where = lambda c, seed, own=False: tmp_path / "g"  # noqa: E731  (one shared folder)
    model, fits, _ = train_model(cfg, data, 0, where, "cpu", own=False)
    loaded, fits2, ge, src = arm.base_network(cfg, "", data, 0, where, "cpu")
    assert src == "checkpoint of the standard arm" and fits2 == [] and ge == []
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    torch.save(model.state_dict(), tmp_path / "g.pt")
    from_file, *_ , src = arm.base_network(cfg, str(tmp_path / "g.pt"), data, 0, None, "cpu")
    assert src.startswith("weight file") and torch.equal(from_file.head.weight, model.head.weight)
    with pytest.raises(ParameterError, match="not found"):
        arm.base_network(cfg, str(tmp_path / "missing.pt"), data, 0, None, "cpu")
    wrong = models.create("cnn3", num_classes=7, width=8).state_dict()
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(ParameterError, match="does not fit"):
        arm.base_network(cfg, str(tmp_path / "wrong.pt"), data, 0, None, "cpu")


# -- guards ----------------------------------------------------------------------------------------------------------------
def _job(seed: int, flags: dict[str, list[str]] | None = None, apgd: float = 20.0, g_clean: float = 60.0,
         warnings: dict | None = None) -> dict:
    pts = {"g": {"clean": g_clean, "robust": 5.0, "n": 300}, "h": {"clean": 40.0, "robust": 25.0, "n": 300},
           "prob": {"clean": 50.0, "robust": 22.0, "n": 300}, "logit": {"clean": 50.0, "robust": 20.0, "n": 300},
           "adaptive": {"clean": 52.0, "robust": 22.0, "n": 300}}
    checks = {k: {"n": 100, "clean": v["clean"], "flags": (flags or {}).get(k, []), "sanity": {"checks": []},
                  "robust": {"pgd": 20.0, "apgd_ce": 20.0, "apgd_t": apgd if k == "prob" else 20.0}}
              for k, v in pts.items()}
    return {"arm": "adasmooth", "seed": seed, "metrics": {}, "extra": {"points": pts, "checks": checks,
                                                                       "warnings": warnings or {}}}


def test_guards_flag_the_claims_resting_on_a_failed_model():
    """APGD 20 vs PGD 20 passes; APGD 5 on the mixture (tolerance 2·100·√(0.2·0.8/100) = 8)
    flags every claim resting on the probability mixture, not h's confidence claim; a failed
    sanity check on h flags all four; g only 3 points above h in clean accuracy (tolerance
    2·√(2·100²·0.24/300) ≈ 8) flags the three trade-off claims."""
    claims = load_spec("adasmooth").claims
    assert A.guards(SweepResult([_job(s) for s in range(3)]), claims) == []
    flagged = dict(A.guards(SweepResult([_job(0, apgd=5.0), _job(1)]), claims))
    assert set(flagged) == {"gain_prob:adasmooth", "prob_vs_logit:adasmooth", "adaptive_vs_fixed:adasmooth"}
    assert "PGD overstates" in flagged["gain_prob:adasmooth"]
    flagged = dict(A.guards(SweepResult([_job(0, flags={"h": ["sanity check failed (unbounded): x"]})]), claims))
    assert len(flagged) == 4 and "h seed 0: sanity check failed" in flagged["conf_gap_adv:adasmooth"]
    flagged = dict(A.guards(SweepResult([_job(0, g_clean=43.0)]), claims))
    assert set(flagged) == {"gain_prob:adasmooth", "prob_vs_logit:adasmooth", "adaptive_vs_fixed:adasmooth"}
    assert "no trade-off" in flagged["gain_prob:adasmooth"]
    flagged = dict(A.guards(SweepResult([_job(0, warnings={"conf_gap_adv": "empty"})]), claims))
    assert set(flagged) == {"conf_gap_adv:adasmooth"}
