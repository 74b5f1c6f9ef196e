"""Adversarial training as a loss for ``repro.train.fit`` (PGD-AT, FGSM-RS, TRADES) and the
robustness family's two standard figures, on tiny tensors whose answers are known by hand.

The hand-checkable model: a two-class linear model without bias on 3×2×2 images. Its CE
gradient with respect to the input of an image of class y is p_other · (w_other − w_y)/σ (in
pixels), whose sign does not depend on the point, so every sign step of PGD moves each pixel
towards ε·sign(w_other − w_y), and after enough steps δ is exactly that (for pixels far from
0 and 1); the adversarial margin then grows by ε·Σ|w_other − w_y|/σ.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from matplotlib.figure import Figure

from repro.data import MEAN, STD, TensorLoader
from repro.errors import ParameterError
from repro.families.robustness.figures import eps_label, plot_clean_vs_robust, plot_robust_vs_eps
from repro.families.robustness.training import (AdvTrainConfig, adversarial_loss, gradient_evals_per_step,
                                                perturb, random_start, to_pixels)
from repro.modes import CPU_PRECISION_ENV
from repro.train import WORK, TrainConfig, fit

EPS = 8 / 255
M = torch.tensor(MEAN).view(1, 3, 1, 1)
S = torch.tensor(STD).view(1, 3, 1, 1)


pytestmark = pytest.mark.usefixtures("one_thread")


def normalise(x01: torch.Tensor) -> torch.Tensor:
    return (x01 - M) / S


def pixels(n: int, seed: int, size: int = 4, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(n, 3, size, size, generator=g)


def linear2() -> nn.Module:
    """Two classes, 3×2×2 inputs, fixed weights with no zero difference w1 − w0."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 2, bias=False))
    with torch.no_grad():
        w0 = torch.linspace(-1.0, 1.0, 12)
        net[1].weight.copy_(torch.stack([w0, w0.flip(0) + 0.05]))
    return net


def bn_cnn(classes: int = 3) -> nn.Module:
    """A tiny CNN with BatchNorm and no dropout (so a forward pass draws no random numbers)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, classes))


def check_in_ball_and_box(x: torch.Tensor, x_adv: torch.Tensor, eps: float) -> None:
    a, b = to_pixels(x), to_pixels(x_adv)
    assert x_adv.dtype == torch.float32
    assert float((b - a).abs().max()) <= eps + 1e-6
    assert float(b.min()) >= -1e-6 and float(b.max()) <= 1 + 1e-6


# -- the config ------------------------------------------------------------------------------


def test_config_defaults_follow_the_recipes():
    pgd = AdvTrainConfig()
    assert (pgd.method, pgd.eps, pgd.effective_steps()) == ("pgd", EPS, 10)
    assert pgd.effective_step_size() == pytest.approx(2 / 255)        # Madry / Rice: 2/255 at 8/255
    assert pgd.effective_craft_mode() == "train"
    fast = AdvTrainConfig("fgsm_rs")
    assert fast.effective_steps() == 1 and fast.effective_step_size() == pytest.approx(10 / 255)  # 1.25 ε
    trades = AdvTrainConfig("trades")
    assert trades.trades_beta == 6.0 and trades.effective_craft_mode() == "eval"
    assert AdvTrainConfig("none").effective_steps() == 0
    assert AdvTrainConfig("pgd", craft_mode="eval").effective_craft_mode() == "eval"
    rec = AdvTrainConfig("pgd", steps=7).as_record()
    assert rec["steps"] == 7 and rec["eps_255"] == pytest.approx(8.0) and rec["gradient_evals_per_step"] == 8
    assert rec["craft_mode"] == "train" and rec["trades_beta"] is None


def test_gradient_evaluations_per_step():
    assert gradient_evals_per_step(AdvTrainConfig("none")) == 1
    assert gradient_evals_per_step(AdvTrainConfig("fgsm_rs")) == 2
    assert gradient_evals_per_step(AdvTrainConfig("pgd")) == 11
    assert gradient_evals_per_step(AdvTrainConfig("pgd", steps=3)) == 4
    assert gradient_evals_per_step(AdvTrainConfig("trades", steps=5)) == 7   # clean + adversarial pass


@pytest.mark.parametrize("kw", [dict(eps=-0.01), dict(eps=1.5), dict(eps=8), dict(eps=float("nan")),
                                dict(eps="8/255"), dict(method="mart"), dict(steps=0), dict(steps=2.5),
                                dict(method="fgsm_rs", steps=3), dict(step_size=0.0), dict(trades_beta=-1.0),
                                dict(craft_mode="frozen")])
def test_bad_config_is_refused(kw):
    with pytest.raises(ParameterError):
        AdvTrainConfig(**kw)


def test_bad_input_is_refused_before_any_work():
    with pytest.raises(ParameterError):
        adversarial_loss("pgd")  # type: ignore[arg-type]
    # a loss told the wrong normalisation sees pixels outside [0, 1]
    loss_fn = adversarial_loss(AdvTrainConfig(), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    before = WORK["attack_grads"]
    with pytest.raises(ParameterError, match="mean and std"):
        loss_fn(bn_cnn(), normalise(pixels(4, 0)), torch.zeros(4, dtype=torch.long))
    assert WORK["attack_grads"] == before


# -- crafting ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["pgd", "fgsm_rs", "trades"])
def test_adversarial_batch_stays_in_the_eps_ball_and_in_0_1(method):
    x01 = pixels(8, 1)
    x01[:, :, 0, 0] = 0.0   # pixels at the box's edges: the clamp to [0, 1] must act
    x01[:, :, 1, 1] = 1.0
    x, y = normalise(x01), torch.arange(8) % 3
    model = bn_cnn().train()
    torch.manual_seed(0)
    x_adv, delta = perturb(model, x, y, AdvTrainConfig(method, eps=EPS, steps=None if method == "fgsm_rs" else 4))
    check_in_ball_and_box(x, x_adv, EPS)
    assert delta.dtype == torch.float32 and float(delta.abs().max()) <= EPS + 1e-7
    assert float(delta.abs().max()) > EPS / 2   # it did move
    assert torch.allclose(to_pixels(x_adv) - to_pixels(x), delta, atol=1e-6)


def test_eps_zero_pgd_loss_is_plain_cross_entropy_exactly():
    x, y = normalise(pixels(8, 2)), torch.arange(8) % 3
    model = bn_cnn().train()
    loss, logits = adversarial_loss(AdvTrainConfig("pgd", eps=0.0, steps=3))(model, x, y)
    ref_logits = model(x)
    assert torch.equal(logits, ref_logits)
    assert torch.equal(loss, F.cross_entropy(ref_logits, y))
    x_adv, delta = perturb(model, x, y, AdvTrainConfig("pgd", eps=0.0, steps=3))
    assert torch.equal(x_adv, x) and not delta.any()


def test_fgsm_rs_starts_uniform_in_the_ball_then_steps_1_25_eps_by_hand():
    """δ before the step (the first forward's input) lies in [−ε, ε] and is what
    ``random_start`` draws; after the step δ = clamp(δ₀ + 1.25·ε·sign(w₁ − w₀), −ε, ε)."""
    x01 = pixels(64, 3, size=2, lo=0.25, hi=0.75)   # away from 0 and 1: no box clamp
    x, y = normalise(x01), torch.zeros(64, dtype=torch.long)
    model = linear2()
    seen = []
    model.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    cfg = AdvTrainConfig("fgsm_rs", eps=EPS)
    torch.manual_seed(5)
    _, delta = perturb(model, x, y, cfg)
    assert len(seen) == 1
    d0 = to_pixels(seen[0]) - x01
    assert float(d0.abs().max()) <= EPS + 1e-6
    assert float(d0.abs().max()) > 0.9 * EPS and abs(float(d0.mean())) < 0.1 * EPS   # uniform over the ball
    torch.manual_seed(5)
    assert torch.allclose(random_start(x01, cfg), d0, atol=1e-6)
    dw = (model[1].weight[1] - model[1].weight[0]).detach().view(1, 3, 2, 2).sign()
    assert torch.allclose(delta, (d0 + 1.25 * EPS * dw).clamp(-EPS, EPS), atol=1e-6)


def test_pgd_on_a_linear_model_reaches_the_corner_and_raises_the_loss_by_hand():
    x01 = pixels(6, 4, size=2, lo=0.25, hi=0.75)
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    x = normalise(x01)
    model = linear2()
    w = model[1].weight.detach().double()
    cfg = AdvTrainConfig("pgd", eps=EPS)   # 10 steps of ε/4: 2.5 ε, enough from any start
    torch.manual_seed(0)
    x_adv, delta = perturb(model, x, y, cfg)
    toward = torch.stack([(w[1 - k] - w[k]).view(3, 2, 2).sign() for k in y.tolist()]).float()
    assert torch.allclose(delta, EPS * toward, atol=1e-6)
    # by hand, in float64: CE = softplus(margin), the margin grows by ε·Σ|Δw|/σ
    xd, sd = x.double().flatten(1), S.double().expand(1, 3, 2, 2).flatten()
    margins = torch.stack([(w[1 - k] - w[k]) @ xd[i] for i, k in enumerate(y.tolist())])
    gain = torch.stack([EPS * ((w[1 - k] - w[k]).abs() / sd).sum() for k in y.tolist()])
    clean = F.softplus(margins).mean().item()
    adv = F.softplus(margins + gain).mean().item()
    torch.manual_seed(0)
    loss, logits = adversarial_loss(cfg)(model, x, y)
    assert loss.item() == pytest.approx(adv, rel=1e-5)
    assert F.cross_entropy(model(x), y).item() == pytest.approx(clean, rel=1e-5)
    assert loss.item() > clean
    assert torch.allclose(logits, model(x_adv))


def test_trades_beta_zero_is_clean_cross_entropy_and_beta_adds_the_kl():
    x, y = normalise(pixels(8, 6)), torch.arange(8) % 3
    model = bn_cnn().train()
    loss, logits = adversarial_loss(AdvTrainConfig("trades", trades_beta=0.0, steps=2))(model, x, y)
    ref = model(x)
    assert torch.equal(logits, ref) and torch.equal(loss, F.cross_entropy(ref, y))
    # β > 0: CE(clean) + β · KL(clean ‖ adv), KL summed over classes and averaged over images
    lin, x2, y2 = linear2(), normalise(pixels(8, 7, size=2)), torch.arange(8) % 2
    cfg = AdvTrainConfig("trades", trades_beta=6.0, steps=3)
    torch.manual_seed(1)
    x_adv, _ = perturb(lin, x2, y2, cfg)
    torch.manual_seed(1)
    loss, logits = adversarial_loss(cfg)(lin, x2, y2)
    p, q = F.softmax(lin(x2).double(), 1), F.softmax(lin(x_adv).double(), 1)
    kl = (p * (p.log() - q.log())).sum(1).mean().item()
    assert kl > 0
    assert loss.item() == pytest.approx(F.cross_entropy(lin(x2), y2).item() + 6.0 * kl, rel=1e-5)


def test_crafting_mode_is_the_methods_and_every_modules_own_mode_is_restored():
    """A model trained with a frozen BatchNorm (eval) while the rest trains: TRADES crafts in
    eval mode and gives back each module's own flag (not a blanket ``model.train()``); PGD-AT
    crafts in the mode the trainer left, touching nothing."""
    x, y = normalise(pixels(8, 8)), torch.arange(8) % 3
    model = bn_cnn().train()
    model[1].eval()
    before = [m.training for m in model.modules()]
    modes = []
    model.register_forward_pre_hook(lambda mod, args: modes.append((mod.training, mod[1].training)))
    adversarial_loss(AdvTrainConfig("trades", steps=2))(model, x, y)
    # clean target + 2 steps in eval mode, then the loss's clean and adversarial passes as left
    assert modes == [(False, False)] * 3 + [(True, False)] * 2
    assert [m.training for m in model.modules()] == before
    modes.clear()
    adversarial_loss(AdvTrainConfig("pgd", steps=2))(model, x, y)
    assert modes == [(True, False)] * 3
    assert [m.training for m in model.modules()] == before
    modes.clear()
    adversarial_loss(AdvTrainConfig("pgd", steps=2, craft_mode="eval"))(model, x, y)
    assert modes == [(False, False)] * 2 + [(True, False)]
    assert [m.training for m in model.modules()] == before


def test_delta_stays_fp32_under_bf16_autocast():
    x, y = normalise(pixels(8, 9)), torch.arange(8) % 3
    model = bn_cnn().train()
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x).dtype == torch.bfloat16   # the model itself does run in bf16
        x_adv, delta = perturb(model, x, y, AdvTrainConfig("pgd", steps=3))
        loss, logits = adversarial_loss(AdvTrainConfig("pgd", steps=3))(model, x, y)
    assert delta.dtype == torch.float32 and x_adv.dtype == torch.float32
    assert bool((delta.bfloat16().float() != delta).any())   # not rounded to the bf16 grid
    check_in_ball_and_box(x, x_adv, EPS)
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())


def test_pgd_is_the_same_attack_as_torchattacks_pgd():
    """In eval mode with the same seed, the loop draws the same random start and takes the
    same steps as ``torchattacks.PGD`` on the pixel-space model (up to float rounding)."""
    import torchattacks

    from repro.families.robustness.attacks import PixelModel

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(6, 4)).eval()
    x01, y = pixels(16, 10), torch.arange(16) % 4
    cfg = AdvTrainConfig("pgd", eps=EPS, steps=5, craft_mode="eval")
    torch.manual_seed(3)
    ours, _ = perturb(net, normalise(x01), y, cfg)
    torch.manual_seed(3)
    theirs = torchattacks.PGD(PixelModel(net).eval(), eps=EPS, alpha=cfg.effective_step_size(), steps=5,
                              random_start=True)(x01, y)
    same = ((to_pixels(ours) - theirs).abs() <= 1e-6).float().mean().item()
    assert same >= 0.999   # (another seed agrees on about a third of the pixels)


# -- inside the one trainer -------------------------------------------------------------------


def _toy(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8), torch.randint(0, 4, (n,), generator=g)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.3),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def _fit(cfg: AdvTrainConfig):
    imgs, labels = _toy()
    return fit(_model(), TensorLoader(imgs, labels, 16, seed=0), TensorLoader(imgs, labels, 48, train=False),
               TrainConfig(epochs=1, lr=0.05, progress=False), loss_fn=adversarial_loss(cfg))


@pytest.mark.parametrize("method,steps", [("pgd", 2), ("fgsm_rs", None), ("trades", 2)])
def test_one_epoch_of_fit_counts_attack_gradients(method, steps):
    grads, train_steps = WORK["attack_grads"], WORK["train_steps"]
    cfg = AdvTrainConfig(method, steps=steps)
    res = _fit(cfg)
    assert res.steps == 3   # 48 images, batches of 16
    assert WORK["train_steps"] - train_steps == 3
    assert WORK["attack_grads"] - grads == cfg.effective_steps() * 3
    row = res.final
    assert math.isfinite(row["train_loss"]) and math.isfinite(row["test_acc"])
    assert res.model.training   # fit's own mode, untouched by the crafting


def test_adversarial_fit_is_deterministic_and_runs_under_bf16(monkeypatch):
    a, b = _fit(AdvTrainConfig("pgd", steps=2)), _fit(AdvTrainConfig("pgd", steps=2))
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
    monkeypatch.setenv(CPU_PRECISION_ENV, "bf16")
    low = _fit(AdvTrainConfig("pgd", steps=2))
    assert math.isfinite(low.final["train_loss"])
    assert low.final["train_loss"] == pytest.approx(a.final["train_loss"], abs=0.05)


# -- L2 adversarial training (chapter 12) ----------------------------------------------------


def _l2(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


def test_l2_config_checks_and_record():
    cfg = AdvTrainConfig("pgd", norm="L2", eps=0.5, steps=10, step_size=0.1)
    rec = cfg.as_record()
    assert rec["norm"] == "L2" and rec["eps"] == 0.5 and rec["eps_255"] is None and rec["step_size"] == 0.1
    assert "N(0, I)" in rec["random_start"]
    assert AdvTrainConfig("pgd", norm="L2", eps=0.5).effective_step_size() == pytest.approx(0.125)   # ε/4
    assert AdvTrainConfig().as_record()["norm"] == "Linf"          # the default threat model is unchanged
    assert AdvTrainConfig(norm="L2", eps=2.0).eps == 2.0          # an L2 radius may exceed 1
    for kw in (dict(norm="L1"), dict(norm="L2", eps=-0.1), dict(norm="L2", eps=float("inf")), dict(norm="Linf", eps=2.0)):
        with pytest.raises(ParameterError):
            AdvTrainConfig(**kw)


@pytest.mark.parametrize("method", ["pgd", "fgsm_rs", "trades"])
def test_l2_adversarial_batch_stays_in_the_l2_ball_and_in_0_1(method):
    eps = 0.5
    x01 = pixels(8, 11)
    x01[:, :, 0, 0] = 0.0   # pixels at the box's edges: the clamp to [0, 1] must act
    x01[:, :, 1, 1] = 1.0
    x, y = normalise(x01), torch.arange(8) % 3
    model = bn_cnn().train()
    torch.manual_seed(0)
    cfg = AdvTrainConfig(method, norm="L2", eps=eps, steps=None if method == "fgsm_rs" else 6, step_size=0.3)
    x_adv, delta = perturb(model, x, y, cfg)
    a, b = to_pixels(x), to_pixels(x_adv)
    assert float(_l2(b - a).max()) <= eps + 1e-5
    assert float(b.min()) >= -1e-6 and float(b.max()) <= 1 + 1e-6
    assert float(_l2(delta).max()) <= eps + 1e-5 and float(_l2(delta).max()) > eps / 2   # it did move
    assert float(delta.abs().max()) > 0.06   # an L2 step is not a sign step: some pixels move further


def test_l2_random_start_is_a_gaussian_direction_with_radius_eps_times_uniform():
    x01 = pixels(256, 12, lo=0.3, hi=0.7)   # away from 0 and 1: no box clamp at ε = 0.1
    cfg = AdvTrainConfig("pgd", norm="L2", eps=0.1)
    torch.manual_seed(4)
    d = random_start(x01, cfg)
    r = _l2(d)
    assert float(r.max()) <= 0.1 + 1e-6 and float(r.min()) < 0.02 and float(r.max()) > 0.09
    assert abs(float(r.mean()) - 0.05) < 0.01    # E[ε·U] = ε/2
    torch.manual_seed(4)                         # by hand: N(0, I) · U / ‖N‖ · ε
    g = torch.empty_like(x01).normal_()
    u = torch.zeros(256, 1, 1, 1).uniform_(0, 1)
    assert torch.allclose(d, g * u / _l2(g).view(-1, 1, 1, 1) * 0.1, atol=1e-6)


def test_l2_pgd_on_a_linear_model_reaches_the_gradient_direction_and_raises_the_loss_by_hand():
    """The input gradient of the linear model points along d = (w_other − w_y)/σ everywhere, so
    L2 PGD ends at δ = ε·d/‖d‖₂ and the margin grows by ε·‖d‖₂ (L∞: by ε·‖d‖₁)."""
    eps = 0.3
    x01 = pixels(6, 13, size=2, lo=0.35, hi=0.65)   # ε·max|d̂| < 0.35: no box clamp
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    x = normalise(x01)
    model = linear2()
    w = model[1].weight.detach().double()
    sd = S.double().expand(1, 3, 2, 2).flatten()
    cfg = AdvTrainConfig("pgd", norm="L2", eps=eps, steps=40, step_size=eps / 2)   # off-axis part × ≤ 2/3 per step
    torch.manual_seed(0)
    x_adv, delta = perturb(model, x, y, cfg)
    dirs = torch.stack([(w[1 - k] - w[k]) / sd for k in y.tolist()])
    target = (eps * dirs / dirs.norm(dim=1, keepdim=True)).float().view(6, 3, 2, 2)
    assert torch.allclose(delta, target, atol=1e-5)
    xd = x.double().flatten(1)
    margins = torch.stack([(w[1 - k] - w[k]) @ xd[i] for i, k in enumerate(y.tolist())])
    adv = F.softplus(margins + eps * dirs.norm(dim=1)).mean().item()
    torch.manual_seed(0)
    loss, _ = adversarial_loss(cfg)(model, x, y)
    assert loss.item() == pytest.approx(adv, rel=1e-5)
    assert loss.item() > F.cross_entropy(model(x), y).item()


def test_l2_pgd_is_the_same_attack_as_torchattacks_pgdl2():
    import torchattacks

    from repro.families.robustness.attacks import PixelModel

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(6, 4)).eval()
    x01, y = pixels(16, 14), torch.arange(16) % 4
    cfg = AdvTrainConfig("pgd", norm="L2", eps=0.5, steps=5, step_size=0.15, craft_mode="eval")
    torch.manual_seed(3)
    ours, _ = perturb(net, normalise(x01), y, cfg)
    torch.manual_seed(3)
    theirs = torchattacks.PGDL2(PixelModel(net).eval(), eps=0.5, alpha=0.15, steps=5, random_start=True)(x01, y)
    assert float((to_pixels(ours) - theirs).abs().max()) <= 1e-5


def test_l2_adversarial_training_in_fit_counts_attack_gradients():
    grads = WORK["attack_grads"]
    res = _fit(AdvTrainConfig("pgd", norm="L2", eps=0.5, steps=2))
    assert res.steps == 3 and WORK["attack_grads"] - grads == 6
    assert math.isfinite(res.final["train_loss"]) and res.model.training


# -- figures ----------------------------------------------------------------------------------


def _readable(fig: Figure) -> None:
    from repro.plots.style import displayed_scale, smallest_text_pt

    assert fig.get_size_inches()[0] <= 7.5
    assert len(fig.axes) <= 3
    assert smallest_text_pt(fig) * displayed_scale(fig) >= 9.0


def test_eps_labels():
    assert [eps_label(e) for e in (0, 2 / 255, 8 / 255, 0.5 / 255)] == ["0", "2/255", "8/255", "0.5/255"]


def test_robust_vs_eps_figure():
    curves = {"standard": {0.0: [60.0, 62.0], 2 / 255: [20.0, 24.0], 8 / 255: [0.0, 1.0]},
              "PGD-AT": {0.0: [50.0, 52.0, 54.0], 2 / 255: [40.0, 42.0, 44.0], 8 / 255: [20.0, 21.0, 25.0]}}
    fig, data = plot_robust_vs_eps(curves, "tier smoke · 2 seeds", attack="PGD-20")
    assert isinstance(fig, Figure)
    assert set(data) >= {"curves", "eps", "attack", "norm", "band", "setting"}
    at = data["curves"]["PGD-AT"]
    assert set(at) >= {"eps", "eps_255", "mean", "min", "max", "per_seed", "n"}
    assert at["eps_255"] == pytest.approx([0, 2, 8])
    assert at["mean"] == pytest.approx([52.0, 42.0, 22.0]) and at["min"][2] == 20.0 and at["max"][2] == 25.0
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "2/255", "8/255"]
    assert ax.get_ylim()[0] == 0
    assert any("tier smoke" in t.get_text() for t in fig.texts)
    _readable(fig)
    # many models, crowded ε: legend outside, still in the column; colliding tick labels thinned
    many = {f"m{i}": {e / 255: [50.0 - e - i] for e in (0, 0.5, 1, 2, 4, 8, 16)} for i in range(6)}
    fig, data = plot_robust_vs_eps(many, "smoke")
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels[0] == "0" and labels[-1] == "16/255" and "" in labels
    assert len(data["eps"]) == 7
    _readable(fig)
    with pytest.raises(ParameterError):
        plot_robust_vs_eps({}, "smoke")


def test_clean_vs_robust_figure(tmp_path):
    from repro.plots import save

    points = [{"label": "standard", "clean": [60.0, 64.0], "robust": [0.0, 2.0]},
              {"label": "PGD-AT", "clean": [50.0, 54.0], "robust": [20.0, 24.0]},
              {"label": "FGSM-RS", "clean": [52.0], "robust": [18.0]}]
    fig, data = plot_clean_vs_robust(points, "tier smoke · 2 seeds")
    assert isinstance(fig, Figure)
    assert set(data) >= {"points", "attack", "bars", "setting"}
    at = data["points"][1]
    assert at["label"] == "PGD-AT" and at["clean"]["mean"] == 52.0 and at["robust"]["min"] == 20.0
    assert at["robust"]["max"] == 24.0 and at["clean"]["n"] == 2
    ax = fig.axes[0]
    assert ax.get_xlim()[0] == 0 and ax.get_ylim()[0] == 0
    assert ax.get_xlim()[1] >= 64.0 and ax.get_ylim()[1] >= 24.0
    _readable(fig)
    assert save(fig, tmp_path / "clean_vs_robust.png", data).is_file()
    many = [{"label": f"arm {i}", "clean": [40.0 + i, 42.0 + i], "robust": [10.0 + i, 12.0]} for i in range(7)]
    fig, _ = plot_clean_vs_robust(many, "smoke")
    _readable(fig)
    with pytest.raises(ParameterError):
        plot_clean_vs_robust([{"label": "x", "clean": [1.0, 2.0], "robust": [1.0]}], "smoke")
