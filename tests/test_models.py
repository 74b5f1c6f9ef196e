"""Tests for the model registry and architectures in ``repro.models``."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn as nn

import repro.models as models
from repro.models import available, create, register
from repro.models.vit import attention_maps

ALL = available()
# Forward+backward of the 36.5M-parameter WRN-28-10 is too slow for the unit
# suite; it gets a parameter count and a batch-1 forward instead.
HEAVY = {"wrn28_10"}
# Transformers and hybrids fix their token grid from img_size; the CNNs take any size and a
# norm_layer (the architecture family's protocol splits them the same way).
VITS = [n for n in ALL if "img_size" in inspect.signature(models._REGISTRY[n]).parameters]
CONV = [n for n in ALL if n not in VITS]

# Published CIFAR-100 parameter counts (CRD table / WRN paper / common CIFAR code).
PUBLISHED = {
    "resnet20": 278_324,
    "resnet32": 0.47e6,
    "resnet56": 0.86e6,
    "resnet110": 1.73e6,
    "resnet8x4": 1.23e6,
    "resnet32x4": 7.43e6,
    "resnet18": 11.22e6,
    "resnet34": 21.33e6,
    "wrn16_2": 0.70e6,
    "wrn16_4": 2.77e6,
    "wrn40_2": 2.26e6,
    "wrn28_10": 36.5e6,
}


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_registry_contents() -> None:
    expected = {
        "resnet8", "resnet20", "resnet32", "resnet56", "resnet110",
        "resnet8x4", "resnet32x4", "resnet18", "resnet34",
        "wrn16_2", "wrn16_4", "wrn16_8", "wrn28_4", "wrn28_10", "wrn40_2",
        "cnn3", "cnn3_mlp", "vgg11_bn", "vgg16_bn",
        "vit_micro_p4", "vit_tiny_p4", "vit_small_p4",
    }
    assert expected <= set(ALL)
    assert ALL == sorted(ALL)


def test_unknown_name_lists_available() -> None:
    with pytest.raises(KeyError) as exc:
        create("resnet21")
    msg = str(exc.value)
    assert "resnet21" in msg
    for name in ("resnet20", "wrn16_4", "cnn3", "vit_tiny_p4"):
        assert name in msg


def test_register_rejects_conflicting_name() -> None:
    with pytest.raises(ValueError):
        @register("resnet20")
        def other(num_classes: int = 100, **kw):  # pragma: no cover - never built
            return nn.Linear(1, num_classes)
    assert models._REGISTRY["resnet20"].__name__ == "resnet20"


@pytest.mark.parametrize("name", [n for n in ALL if n not in HEAVY])
def test_forward_backward(name: str) -> None:
    m = create(name)
    m.train()
    x = torch.randn(2, 3, 32, 32)
    out = m(x)
    assert out.shape == (2, 100)
    out.logsumexp(1).sum().backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert all(torch.isfinite(g).all() for g in grads)
    # Features/head convention.
    f = m.features(x)
    assert f.ndim == 2 and f.shape[0] == 2
    first_fc = m.head[0] if isinstance(m.head, nn.Sequential) else m.head
    assert isinstance(first_fc, nn.Linear)
    assert f.shape[1] == first_fc.in_features
    assert isinstance(m.dropout, nn.Dropout)


@pytest.mark.parametrize("name", sorted(HEAVY))
def test_heavy_forward(name: str) -> None:
    m = create(name, num_classes=10).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 32, 32)).shape == (1, 10)


# One representative per model class keeps the suite fast.
@pytest.mark.parametrize("name", ["cnn3", "cnn3_mlp", "resnet20", "wrn16_2", "vgg11_bn", "vit_micro_p4"])
def test_forward_equals_head_of_features(name: str) -> None:
    m = create(name, drop_rate=0.3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m.head(m.dropout(m.features(x))))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_param_counts(name: str) -> None:
    got = n_params(create(name))
    assert abs(got - PUBLISHED[name]) / PUBLISHED[name] < 0.02, (name, got)


def test_resnet20_exact_and_option_a() -> None:
    assert n_params(create("resnet20")) == 278_324
    # Option A has no shortcut parameters: 2,752 fewer (two 1x1 convs + norms).
    assert n_params(create("resnet20", shortcut="A")) == 275_572
    m = create("resnet20", shortcut="A")
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_cnn3_size() -> None:
    assert 0.09e6 < n_params(create("cnn3")) < 0.12e6
    assert create("cnn3", width=8).features(torch.randn(1, 3, 16, 16)).shape == (1, 32)


@pytest.mark.parametrize("name", ["cnn3", "resnet20", "wrn16_2", "vgg11_bn", "vit_micro_p4"])
def test_num_classes_respected(name: str) -> None:
    m = create(name, num_classes=7)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    last = m.head[-1] if isinstance(m.head, nn.Sequential) else m.head
    assert last.out_features == 7


class MyBN(nn.BatchNorm2d):
    pass


class MyLN(nn.LayerNorm):
    pass


@pytest.mark.parametrize("name", [n for n in CONV if n not in HEAVY])
def test_norm_layer_honoured(name: str) -> None:
    m = create(name, num_classes=10, norm_layer=MyBN)
    bns = [mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)]
    assert bns and all(isinstance(b, MyBN) for b in bns)


def test_vit_norm_layer_honoured() -> None:
    m = create("vit_micro_p4", norm_layer=MyLN)
    assert any(isinstance(mod, MyLN) for mod in m.modules())


def test_cnn3_mlp_head_structure() -> None:
    m = create("cnn3_mlp", width=16, hidden=64, drop_rate=0.5)
    kinds = [type(l) for l in m.head]
    assert kinds == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert m.head[0].in_features == 64 and m.head[0].out_features == 64
    assert m.head[2].p == 0.5 and m.dropout.p == 0.5


def test_dropout_controls_determinism() -> None:
    x = torch.randn(4, 3, 32, 32)
    m = create("cnn3").train()
    torch.testing.assert_close(m(x), m(x))
    md = create("cnn3_mlp", drop_rate=0.5).train()
    assert not torch.equal(md(x), md(x))
    md.eval()
    torch.testing.assert_close(md(x), md(x))


def test_wrn_block_dropout() -> None:
    m = create("wrn16_2", block_drop_rate=0.3)
    ps = [mod.p for mod in m.modules() if isinstance(mod, nn.Dropout)]
    assert ps.count(0.3) == 6 and m.dropout.p == 0.0


@pytest.mark.parametrize("name,img", [("vit_micro_p4", 32), ("vit_tiny_p4", 32), ("vit_micro_p4", 16)])
def test_attention_maps(name: str, img: int) -> None:
    m = create(name, img_size=img).train()
    fused = [blk.attn.fused_attn for blk in m.blocks]
    x = torch.randn(2, 3, img, img)
    maps = attention_maps(m, x)
    n = 1 + (img // 4) ** 2
    heads = m.blocks[0].attn.num_heads
    assert len(maps) == len(m.blocks)
    for a in maps:
        assert a.shape == (2, heads, n, n)
        torch.testing.assert_close(a.sum(-1), torch.ones(2, heads, n))
    # Settings restored.
    assert m.training
    assert [blk.attn.fused_attn for blk in m.blocks] == fused


def test_vit_img_size_16() -> None:
    m = create("vit_micro_p4", img_size=16)
    assert m(torch.randn(2, 3, 16, 16)).shape == (2, 100)
    assert m.features(torch.randn(2, 3, 16, 16)).shape == (2, 64)


def test_stage_shapes_of_a_cnn3_by_hand():
    """cnn3 at width 8 on 16-px images: three stages of 8, 16, 32 channels, each pooled by 2
    (16 → 8 → 4 → 2), read without changing the training flag."""
    from repro.models.stages import stage_channels, stage_shapes
    net = models.create("cnn3", num_classes=5, width=8).train()
    assert stage_shapes(net, 16) == [(8, 8), (16, 4), (32, 2)]
    assert stage_channels(net, 16) == [8, 16, 32] and net.training
