"""Architecture-family networks of chapters 22 (Swin / CoSwin), 23 (weighted-conv VGGs) and
29 (Astroformer / CoAtNet stacks): each builds, follows the features/head convention and
steps; the controls are what their chapters need them to be; bad configs fail early."""
from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn as nn

# Imported for their registrations, so this file works before repro.models imports them.
import repro.models.maxxvit_cifar as maxxvit_cifar
import repro.models.swin_cifar as swin_cifar
import repro.models.wconv_net as wconv_net
from repro.errors import ParameterError
from repro.layers.coswin_block import CoSwinBlock
from repro.layers.weighted_conv import WeightedConv2d, density_matrix, density_parameters
from repro.models import _REGISTRY, create

SWIN = ["swin_micro", "coswin_micro", "swin_micro_wide", "swin_tiny_cifar", "coswin_tiny_cifar",
        "swin_tiny_cifar_wide"]
MAXXVIT = ["astroformer_micro", "coatnet_micro", "astroformer_tiny", "coatnet_tiny"]
WCONV = ["wconv_vgg4", "wconv_vgg11_bn"]
MICRO = ["swin_micro", "coswin_micro", "swin_micro_wide", "astroformer_micro", "coatnet_micro", "wconv_vgg4"]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _n(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _make(name: str, img: int, **kw) -> nn.Module:
    if "img_size" in inspect.signature(_REGISTRY[name]).parameters:
        kw["img_size"] = img
    return create(name, num_classes=7, **kw)


def _drop_prob(block: nn.Module) -> float:
    return getattr(block.drop_path1, "drop_prob", 0.0)  # timm uses Identity for rate 0


def _stage_maps(m: maxxvit_cifar.MaxxVitCifar, img: int) -> list[int]:
    """Side of every stage's output map, read off a forward pass with hooks."""
    sides: list[int] = []
    hooks = [s.register_forward_hook(lambda _m, _i, o: sides.append(o.shape[-1])) for s in m.stages]
    m.eval()(torch.randn(1, 3, img, img))
    for h in hooks:
        h.remove()
    return sides


# -- every registered network -----------------------------------------------------------

def test_all_registered() -> None:
    assert set(SWIN + MAXXVIT + WCONV) <= set(_REGISTRY)
    assert {_REGISTRY[n].__module__ for n in SWIN + MAXXVIT + WCONV} == {
        swin_cifar.__name__, maxxvit_cifar.__name__, wconv_net.__name__}


@pytest.mark.parametrize("name", SWIN + MAXXVIT + WCONV)
def test_builds_follows_convention_and_steps(name: str) -> None:
    m = _make(name, 32, drop_rate=0.1)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 6])
    m.eval()
    with torch.no_grad():
        f = m.features(x)
        out = m(x)
    assert f.shape == (2, m.head.in_features if isinstance(m.head, nn.Linear) else m.head[0].in_features)
    assert out.shape == (2, 7)
    assert isinstance(m.dropout, nn.Dropout) and m.dropout.p == 0.1
    torch.testing.assert_close(out, m.head(m.dropout(f)))
    m.train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in m.parameters()]
    loss = nn.functional.cross_entropy(m(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, m.parameters()))


@pytest.mark.parametrize("name", MICRO)
def test_cpu_tier_runs_at_16px(name: str) -> None:
    m = _make(name, 16).train()
    loss = m(torch.randn(2, 3, 16, 16)).logsumexp(1).mean()
    loss.backward()
    assert torch.isfinite(loss)


# -- Swin / CoSwin (22) -------------------------------------------------------------------

@pytest.mark.parametrize("img", [16, 32])
def test_coswin_gate_is_swin_at_init(img: int) -> None:
    torch.manual_seed(3)
    swin = create("swin_micro", num_classes=5, img_size=img).eval()
    torch.manual_seed(3)
    gated = create("swin_micro", num_classes=5, img_size=img, local_branch="gate").eval()
    torch.manual_seed(3)
    added = create("coswin_micro", num_classes=5, img_size=img).eval()
    x = torch.randn(3, 3, img, img)
    with torch.no_grad():
        torch.testing.assert_close(gated(x), swin(x), rtol=0, atol=0)
        assert not torch.allclose(added(x), swin(x))


def test_coswin_replaces_every_block_with_the_same_settings() -> None:
    swin = create("swin_tiny_cifar", img_size=32, drop_path_rate=0.2)
    co = create("coswin_tiny_cifar", img_size=32, drop_path_rate=0.2)
    sb = [b for s in swin.layers for b in s.blocks]
    cb = [b for s in co.layers for b in s.blocks]
    assert len(sb) == len(cb) == 10 and all(type(b) is CoSwinBlock for b in cb)
    for s, c in zip(sb, cb):
        assert (c.window_size, c.shift_size, c.input_resolution) == (s.window_size, s.shift_size, s.input_resolution)
        assert c.attn.num_heads == s.attn.num_heads and c.local_gate is None
        assert _drop_prob(c) == pytest.approx(_drop_prob(s))
    assert _drop_prob(cb[0]) == 0 and _drop_prob(cb[-1]) == pytest.approx(0.2)
    # Grids 16/8/4/2: shifted windows only where the grid is larger than the window; the last
    # two stages are one full window each (timm's clamp).
    assert [(b.window_size[0], b.shift_size[0]) for b in sb] == [
        (4, 0), (4, 2), (4, 0), (4, 2), (4, 0), (4, 0), (4, 0), (4, 0), (2, 0), (2, 0)]
    assert co.grids == [16, 8, 4, 2]


@pytest.mark.parametrize("size", ["micro", "tiny"])
def test_wide_swin_is_parameter_matched(size: str) -> None:
    names = {"micro": ("swin_micro_wide", "coswin_micro", "swin_micro"),
             "tiny": ("swin_tiny_cifar_wide", "coswin_tiny_cifar", "swin_tiny_cifar")}[size]
    wide, co, plain = (_n(create(n, img_size=32)) for n in names)
    assert abs(wide - co) / co < 0.05
    assert abs(plain - co) / co > 0.05  # the plain Swin is not already matched


def test_swin_features_are_pooled_tokens() -> None:
    m = create("swin_micro", img_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        t = m.tokens(x)
        assert t.shape == (2, 4, 4, 128)
        torch.testing.assert_close(m.features(x), t.mean(dim=(1, 2)))


# -- Astroformer / CoAtNet (29) -------------------------------------------------------------

@pytest.mark.parametrize(("img", "astro_t", "coat_t"), [(16, [2], [4, 2]), (32, [4], [8, 4])])
def test_maxxvit_transformer_stage_map_size(img: int, astro_t: list[int], coat_t: list[int]) -> None:
    for name, want in (("astroformer_micro", astro_t), ("coatnet_micro", coat_t)):
        m = create(name, img_size=img)
        sides = _stage_maps(m, img)
        assert sides == [img, img // 2, img // 4, img // 8] == m.stage_sizes
        t_sides = [s for s, kind in zip(sides, m.stack) if kind == "t"]
        assert t_sides == want
        # The relative-position tables cover exactly the map each T block sees.
        tables = [b.attn.rel_pos.window_size for st in m.stages for b in st.blocks if hasattr(b, "attn")]
        assert [tuple(t) for t in tables] == [(s, s) for s in want]


def test_maxxvit_reduction_16_is_the_stem_only_variant() -> None:
    m = create("astroformer_micro", img_size=32, reduction=16)
    assert _stage_maps(m, 32) == [16, 8, 4, 2]
    assert m.stem.conv1.stride == (1, 1) and m.stages[0].blocks[0].conv2_kxk.stride == (2, 2)


def test_card_recipe_stem_only_at_4x_fails() -> None:
    # The card's "build at 4× and set stem.conv1.stride = 1" leaves the T tables sized for a map
    # twice the one the stage sees; documented in maxxvit_cifar, guarded here.
    from timm.models.maxxvit import MaxxVit, MaxxVitCfg

    cfg = MaxxVitCfg(embed_dim=(16, 32, 64, 128), depths=(1, 1, 1, 1), block_type=("C", "C", "C", "T"),
                     stem_width=16, head_hidden_size=128)
    m = MaxxVit(cfg, img_size=128, num_classes=5)
    m.stem.conv1.stride = (1, 1)
    with pytest.raises(RuntimeError):
        m(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("size", ["micro", "tiny"])
def test_stacks_differ_only_in_block_types(size: str) -> None:
    astro, coat = create(f"astroformer_{size}"), create(f"coatnet_{size}")
    assert astro.stack == "ccct" and coat.stack == "cctt"
    ta, tc = astro.stage_types(), coat.stage_types()
    assert [set(s) for s in ta] == [{"MbConvBlock"}] * 3 + [{"TransformerBlock2d"}]
    assert [set(s) for s in tc] == [{"MbConvBlock"}] * 2 + [{"TransformerBlock2d"}] * 2
    assert [len(s) for s in ta] == [len(s) for s in tc]
    # Everything outside stage 2 has the same shapes (stage 3 is a T stage in both).
    sa = {k: v.shape for k, v in astro.state_dict().items() if not k.startswith("stages.2.")}
    sc = {k: v.shape for k, v in coat.state_dict().items() if not k.startswith("stages.2.")}
    assert sa == sc


def test_maxxvit_keeps_timms_head() -> None:
    m = create("astroformer_micro", num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pooled = m.feature_map(x).mean(dim=(2, 3))
        ln = nn.functional.layer_norm(pooled, (128,), m.head_norm.weight, m.head_norm.bias, eps=m.head_norm.eps)
        torch.testing.assert_close(m.features(x), torch.tanh(m.pre_logits.fc(ln)))
    plain = create("astroformer_micro", head_hidden_size=0)
    assert plain.features(x).shape == (2, 128) and isinstance(plain.pre_logits, nn.Identity)


# -- weighted convolution VGGs (23) ---------------------------------------------------------

def test_wconv_den_one_is_the_plain_network() -> None:
    x = torch.randn(2, 3, 32, 32)
    for plain_fn, name in ((wconv_net.vgg4, "wconv_vgg4"), (lambda: create("vgg11_bn"), "wconv_vgg11_bn")):
        torch.manual_seed(5)
        plain = plain_fn().eval()
        torch.manual_seed(5)
        w = create(name, den=1.0).eval()
        assert sum(isinstance(c, WeightedConv2d) for c in w.modules()) == (4 if name == "wconv_vgg4" else 8)
        with torch.no_grad():
            torch.testing.assert_close(w(x), plain(x), rtol=0, atol=0)
        assert _n(w) == _n(plain)


def test_wconv_init_only_control() -> None:
    x = torch.randn(2, 3, 16, 16)
    torch.manual_seed(1)
    plain = wconv_net.vgg4().eval()
    torch.manual_seed(1)
    weighted = create("wconv_vgg4", den=0.7).eval()
    torch.manual_seed(1)
    ctrl = create("wconv_vgg4", den=0.7, init_only=True).eval()
    phi = torch.tensor([[0.49, 0.7, 0.49], [0.7, 1.0, 0.7], [0.49, 0.7, 0.49]])
    assert type(ctrl.trunk[0]) is nn.Conv2d and not any(isinstance(c, WeightedConv2d) for c in ctrl.modules())
    torch.testing.assert_close(ctrl.trunk[0].weight, plain.trunk[0].weight * phi)
    torch.testing.assert_close(weighted.trunk[0].effective_weight(), ctrl.trunk[0].weight)
    with torch.no_grad():
        torch.testing.assert_close(ctrl(x), weighted(x))
        assert not torch.allclose(ctrl(x), plain(x))


def test_wconv_learnable_den() -> None:
    m = create("wconv_vgg4", den=0.9, learnable_den=True)
    dens = list(density_parameters(m))
    assert len(dens) == 4 and all(d.item() == pytest.approx(0.9) for d in dens)
    m(torch.randn(2, 3, 16, 16)).sum().backward()
    assert all(d.grad is not None for d in dens)
    torch.testing.assert_close(density_matrix(dens[0].detach()), density_matrix(torch.tensor([0.9])))


# -- early errors -------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "kw", "match"), [
    ("swin_micro", {"img_size": 33}, "not divisible by patch"),
    ("swin_micro", {"img_size": 24}, "does not tile stage 1"),
    ("swin_micro", {"img_size": 32, "window_size": 3}, "does not tile stage 0"),
    ("swin_micro", {"img_size": 32, "local_branch": "concat"}, "unknown local_branch"),
    ("swin_tiny_cifar", {"img_size": 32, "embed_dim": 65}, "not divisible by 2 heads"),
    ("swin_micro", {"img_size": 32, "depths": (1, 1), "num_heads": (1, 2, 4)}, "one positive depth"),
    ("astroformer_micro", {"stack": "ccxt"}, "unknown stack"),
    ("coatnet_micro", {"stack": "cct"}, "3 stages"),
    ("astroformer_micro", {"img_size": 20}, "not divisible by the total stride"),
    ("astroformer_micro", {"reduction": 4}, "reduction must be"),
    ("coatnet_micro", {"dims": (16, 32, 48, 128)}, "not a multiple of the head dim"),
    ("wconv_vgg4", {"den": 0.0}, "den must be"),
    ("wconv_vgg4", {"den": (0.7, 0.5)}, "needs 1 density"),
    ("wconv_vgg11_bn", {"init_only": True, "learnable_den": True}, "init_only"),
])
def test_bad_configs_raise_parameter_error(name: str, kw: dict, match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        create(name, **kw)
