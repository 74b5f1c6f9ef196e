"""Chapter 23 (weighted convolution): arm labels from the swept densities, Φ by hand, the
d = 1 arm against the plain network, the init-only control's initial weight, the gradient
and Adam-step relations the chapter's text states, the kernel-profile probe, and the early
errors."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn as nn

from repro.errors import ParameterError
from repro.families.architecture import protocol, traces, wconv
from repro.layers.weighted_conv import WeightedConv2d, density_matrix
from repro.models import wconv_net
from repro.papers import load_spec

PHI_07 = [[0.49, 0.7, 0.49], [0.7, 1.0, 0.7], [0.49, 0.7, 0.49]]


def _params(**over) -> dict:
    p = load_spec("wconv").resolve("cpu")  # wconv_vgg4, dens [0.5, 0.7, 1.0, 1.5]
    return {**p, **over}


def _cfgs(**over) -> dict[str, protocol.ArchConfig]:
    return {k: c for k, (_, c) in wconv.arm_configs(_params(**over)).items()}


# -- arms -------------------------------------------------------------------------------------
def test_labels_and_arms_from_dens() -> None:
    assert [wconv.label(d) for d in (0.5, 0.7, 1.0, 1, 1.5, 0.05)] == \
        ["den_0p5", "den_0p7", "den_1", "den_1", "den_1p5", "den_0p05"]
    arms = wconv.arm_configs(_params(dens=[1.5, 0.7, 1.0, 0.5]))  # any order: arms sorted by d
    assert list(arms) == ["den_0p5", "den_0p7", "den_1", "den_1p5", "learnable", "init_only"]
    assert all(a.isidentifier() for a in arms) and {n for n, _ in arms.values()} == {"standard"}
    cfg = {k: c for k, (_, c) in arms.items()}
    assert cfg["den_0p7"].model_kw == {"den": 0.7}
    assert cfg["den_1"].model_kw == {"den": 1.0} and cfg["den_1"].title == "d = 1 (standard conv)"
    assert cfg["learnable"].model_kw == {"den": 1.0, "learnable_den": True}
    assert cfg["init_only"].model_kw == {"den": wconv.PREREGISTERED, "init_only": True}
    # one recipe: everything but the network's keywords and the title is the same
    base = {k: v for k, v in dataclasses.asdict(cfg["den_1"]).items() if k not in ("model_kw", "title")}
    for c in cfg.values():
        assert {k: v for k, v in dataclasses.asdict(c).items() if k not in ("model_kw", "title")} == base
    assert base["model"] == "wconv_vgg4" and base["cpu_bf16"] is wconv.CPU_BF16 and base["epochs"] == 5
    assert _cfgs(learnable_init=0.8)["learnable"].model_kw["den"] == 0.8


@pytest.mark.parametrize("tier", ["smoke", "cpu", "gpu", "paper"])
def test_every_tier_trains_the_arms_its_claims_compare(tier: str) -> None:
    spec = load_spec("wconv")
    arms = wconv.arm_configs(spec.resolve(tier))
    for c in spec.claims:
        assert c.arm in arms and c.baseline in arms, (tier, c.id)
    assert wconv.label(wconv.PREREGISTERED) == "den_0p7"


@pytest.mark.parametrize(("over", "match"), [
    ({"dens": [0.7, 1.0, 0.0]}, "finite numbers > 0"),
    ({"dens": [0.7, -0.5, 1.0]}, "finite numbers > 0"),
    ({"dens": [0.7, float("nan"), 1.0]}, "finite numbers > 0"),
    ({"dens": [0.7, True, 1.0]}, "finite numbers > 0"),
    ({"dens": [0.5, 0.7, 1.5]}, r"missing \[1.0\]"),
    ({"dens": [0.5, 1.0, 1.5]}, r"missing \[0.7\]"),
    ({"dens": [0.7, 1.0, 0.7]}, "repeat"),
    ({"learnable_init": 0.0}, "learnable_init"),
    ({"model": "vgg11_bn"}, "not one"),
])
def test_bad_parameters_fail_before_any_work(over: dict, match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        wconv.arm_configs(_params(**over))


# -- Φ and the networks -----------------------------------------------------------------------
def test_phi_for_d_07_by_hand() -> None:
    np.testing.assert_allclose(wconv.phi(0.7), PHI_07, rtol=0, atol=1e-12)
    torch.testing.assert_close(density_matrix(torch.tensor([0.7], dtype=torch.float64)),
                               torch.tensor(PHI_07, dtype=torch.float64))
    np.testing.assert_array_equal(wconv.phi(1.0), np.ones((3, 3)))


def test_den_1_arm_is_the_plain_conv_network() -> None:
    cfg = _cfgs()["den_1"]
    net = protocol.build_model(cfg, 20, 16, seed=3).eval()
    torch.manual_seed(3)
    plain = wconv_net.vgg4(num_classes=20).eval()
    assert sum(isinstance(m, WeightedConv2d) for m in net.modules()) == 4
    got, want = dict(net.named_parameters()), dict(plain.named_parameters())
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(net(x), plain(x), rtol=0, atol=0)


def test_init_only_first_conv_is_w_times_phi_at_init() -> None:
    cfg = _cfgs()
    weighted = protocol.build_model(cfg["den_0p7"], 20, 16, seed=7)
    ctrl = protocol.build_model(cfg["init_only"], 20, 16, seed=7)
    torch.manual_seed(7)
    plain = wconv_net.vgg4(num_classes=20)
    conv = ctrl.trunk[0]
    assert type(conv) is nn.Conv2d
    phi = torch.tensor(PHI_07)
    torch.testing.assert_close(conv.weight, plain.trunk[0].weight * phi)
    torch.testing.assert_close(conv.weight, weighted.trunk[0].weight * phi)      # W ⊙ Φ of the weighted arm
    torch.testing.assert_close(conv.weight, weighted.trunk[0].effective_weight())
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():  # the same function at initialisation
        torch.testing.assert_close(ctrl.eval()(x), weighted.eval()(x))


def test_learnable_arm_logs_its_densities() -> None:
    net = protocol.build_model(_cfgs(learnable_init=0.9)["learnable"], 20, 16, seed=0)
    row = traces.trace(net)
    assert sorted(row) == ["den_0_0", "den_1_0", "den_2_0", "den_3_0"]
    assert all(v == pytest.approx(0.9) for v in row.values())


# -- the relations the Method section states ----------------------------------------------------
def test_gradient_on_w_is_phi_times_gradient_on_v_and_adam_steps_v_by_phi() -> None:
    torch.manual_seed(0)
    conv = WeightedConv2d(2, 3, 3, 0.7, padding=1, bias=False)
    x = torch.randn(2, 2, 5, 5)
    target = torch.randn(2, 3, 5, 5)
    # ∂L/∂W = Φ ⊙ ∂L/∂V: V as a leaf with the same value gives ∂L/∂V
    v = conv.effective_weight().detach().requires_grad_(True)
    nn.functional.mse_loss(conv._conv_forward(x, v, None), target).backward()
    nn.functional.mse_loss(conv(x), target).backward()
    phi = torch.tensor(PHI_07)
    torch.testing.assert_close(conv.weight.grad, phi * v.grad)
    # Adam's first step is lr·sign(g) per coordinate, whatever g's scale, so V moves by lr·Φ
    # per tap (SGD: lr·Φ²·∂L/∂V)
    v0 = conv.effective_weight().detach()
    opt = torch.optim.AdamW([conv.weight], lr=1e-3, weight_decay=0.0, eps=1e-12)
    opt.step()
    dv = (conv.effective_weight().detach() - v0).abs()
    torch.testing.assert_close(dv, 1e-3 * phi.expand_as(dv), rtol=1e-4, atol=1e-9)


def test_tap_profile_by_hand() -> None:
    net = nn.Sequential(WeightedConv2d(2, 3, 3, 0.7, bias=False), nn.ReLU(), nn.Conv2d(3, 3, 3, bias=False))
    with torch.no_grad():
        net[0].weight.fill_(2.0)
        net[2].weight.fill_(-1.0)
    # weighted: |V| = 2·Φ, relative to the centre Φ; plain: all taps equal → 1; mean of both
    want = (np.asarray(PHI_07) + 1.0) / 2
    np.testing.assert_allclose(wconv.tap_profile(net), want, rtol=1e-6)
    assert wconv._edge_corner(want) == pytest.approx((0.85, 0.745))
    with pytest.raises(ValueError):
        wconv.tap_profile(nn.Linear(2, 2))


def test_density_maps_layout() -> None:
    import matplotlib.pyplot as plt

    fig, data = wconv.density_maps([0.5, 0.7, 0.9, 1.0, 1.1, 1.3, 1.5], "setting")
    shown = [ax for ax in fig.axes if ax.get_visible() and ax.images]
    assert len(shown) == 7 and fig.get_size_inches()[0] <= 7.5
    assert len({round(ax.get_position().x0, 3) for ax in shown}) <= 3  # ≤ 3 panels a row
    np.testing.assert_allclose(data["phi"]["0.7"], PHI_07)
    plt.close(fig)
