"""The architecture family's slot ViT: every slot builds and steps, bad configs fail early,
parameters and FLOPs match hand counts."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import repro.models.slot_vit as slot_vit
from repro.errors import ParameterError
from repro.flops import count_flops
from repro.layers.crrelu import CRReLU
from repro.layers.hard_attention_gate import HardAttentionGate, split_gate_parameters
from repro.layers.kan_attention import KANAttention
from repro.models import create
from repro.models.slot_vit import SlotViT, spectral_first

MIXERS = ["softmax", "spectral", "karat", "karat_universal", ["spectral", "softmax"], ["softmax", "karat"]]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _tiny(img: int = 16, mixer="softmax", **kw) -> SlotViT:
    mixers = [mixer] if isinstance(mixer, str) else mixer
    kw.setdefault("class_token", "spectral" not in mixers)
    return SlotViT(img_size=img, patch_size=4, embed_dim=16, depth=2, heads=2, mlp_ratio=2.0,
                   num_classes=5, mixer=mixer, **kw)


def _step(m: nn.Module, img: int) -> None:
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    before = [p.detach().clone() for p in m.parameters()]
    x, y = torch.randn(2, 3, img, img), torch.tensor([0, 3])
    loss = nn.functional.cross_entropy(m(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, m.parameters()))


@pytest.mark.parametrize("activation", ["gelu", "relu", "crrelu"])
@pytest.mark.parametrize("mixer", MIXERS, ids=str)
def test_every_mixer_and_activation_steps_at_16(mixer, activation: str) -> None:
    m = _tiny(16, mixer, activation=activation).train()
    assert m(torch.randn(2, 3, 16, 16)).shape == (2, 5)
    _step(m, 16)


@pytest.mark.parametrize("mixer", MIXERS, ids=str)
def test_every_mixer_steps_at_32_with_gates(mixer) -> None:
    m = _tiny(32, mixer, gates="hag").train()
    assert sum(isinstance(g, HardAttentionGate) for g in m.modules()) == sum(
        1 if k == "spectral" else 2 for k in m.mixers)
    _step(m, 32)


def test_features_head_convention() -> None:
    m = _tiny(16, drop_rate=0.3).eval()
    x = torch.randn(2, 3, 16, 16)
    assert m.features(x).shape == (2, 16)
    assert isinstance(m.head, nn.Linear) and isinstance(m.dropout, nn.Dropout) and m.dropout.p == 0.3
    torch.testing.assert_close(m(x), m.head(m.dropout(m.features(x))))


def test_param_count_by_hand() -> None:
    # img 8, patch 4 (2×2 grid), dim 8, 1 block, 2 heads, MLP ratio 2, 3 classes, class token.
    d, classes = 8, 3
    patch_embed = 3 * 4 * 4 * d + d
    tokens = (4 + 1) * d + d  # position embedding + class token
    block = 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * 2 * d + 2 * d) + (2 * d * d + d)
    final = 2 * d + (d * classes + classes)
    expected = patch_embed + tokens + block + final
    assert expected == 1083

    def n(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    kw = dict(img_size=8, patch_size=4, embed_dim=d, depth=1, heads=2, mlp_ratio=2.0, num_classes=classes)
    assert n(SlotViT(**kw)) == expected
    assert n(SlotViT(**kw, activation="crrelu")) == expected + 1  # one ε per block
    assert n(SlotViT(**kw, gates="hag")) == expected + 2 * d  # θ₁, θ₂
    # KArAt G3, r 12, N = 5 tokens: + heads·(2·G·r·N + N·r), the softmax has no parameters.
    assert n(SlotViT(**kw, mixer="karat")) == expected + 2 * (2 * 3 * 12 * 5 + 5 * 12)
    # Spectral: no attention, no class token; filter 2×(2//2+1)×d complex = 2·2·d·2 reals.
    attn = (d * 3 * d + 3 * d) + (d * d + d)
    assert n(SlotViT(**kw, mixer="spectral", class_token=False)) == expected - attn - 2 * d + 2 * 2 * d * 2


def test_softmax_flops_include_attention() -> None:
    img, p, d, depth, mlp, classes = 16, 4, 16, 2, 2, 5
    m = _tiny(img)
    P, N = (img // p) ** 2, (img // p) ** 2 + 1
    attention = depth * 2 * 2 * N * N * d
    linears = depth * 2 * N * (3 * d * d + d * d + 2 * mlp * d * d)
    total = 2 * P * d * 3 * p * p + linears + attention + 2 * d * classes
    got = count_flops(m, (1, 3, img, img))
    assert got["by_op"]["bmm"] == attention
    assert got["flops"] == total


def test_universal_karat_shares_one_operator() -> None:
    m = SlotViT(img_size=16, patch_size=4, embed_dim=16, depth=3, heads=2, mixer="karat_universal",
                num_classes=5)
    ops = {id(b.attn.operator) for b in m.blocks}
    assert len(ops) == 1
    blockwise = SlotViT(img_size=16, patch_size=4, embed_dim=16, depth=3, heads=2, mixer="karat", num_classes=5)
    assert len({id(b.attn.operator) for b in blockwise.blocks}) == 3
    assert m.num_tokens == 17 and isinstance(m.blocks[0].attn, KANAttention)


def test_crrelu_and_gates_slots() -> None:
    m = _tiny(16, activation="crrelu", gates=True)
    assert sum(isinstance(a, CRReLU) for a in m.modules()) == 2
    gates, others = split_gate_parameters(m)
    assert len(gates) == 4 and len(gates) + len(others) == len(list(m.parameters()))


def test_spectral_first() -> None:
    assert spectral_first(4, 0) == ["softmax"] * 4
    assert spectral_first(4, 3) == ["spectral"] * 3 + ["softmax"]
    assert spectral_first(4, 1, reverse=True) == ["softmax"] * 3 + ["spectral"]
    with pytest.raises(ParameterError):
        spectral_first(4, 5)


@pytest.mark.parametrize("kw", [
    dict(img_size=30),                              # not divisible by the patch
    dict(mixer="linear"),                           # unknown mixer
    dict(mixer=["softmax", "spectral", "sofmax"]),  # one bad name in a list
    dict(mixer=["softmax"] * 3),                    # wrong length
    dict(activation="swish"),
    dict(gates="soft"),
    dict(embed_dim=15),                             # not divisible by heads
    dict(mixer="spectral", class_token=True),       # spectral needs a pure grid
], ids=str)
def test_bad_input_fails_before_building(kw: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a, **k):
        raise AssertionError("built something before validating")

    monkeypatch.setattr(slot_vit, "PatchEmbed", boom)
    args = dict(img_size=16, patch_size=4, embed_dim=16, depth=2, heads=2, num_classes=5)
    args.update(kw)
    with pytest.raises(ParameterError):
        SlotViT(**args)


@pytest.mark.parametrize("name,kw", [
    ("vit_slot_micro_p4", {}),
    ("vit_slot_micro_p4", {"activation": "crrelu", "gates": "hag"}),
    ("vit_spectformer_micro_p4", {}),
    ("vit_spectformer_micro_p4", {"alpha": 1, "reverse": True}),
    ("vit_karat_micro_p4", {"universal": True}),
])
def test_registered_variants(name: str, kw: dict) -> None:
    m = create(name, num_classes=7, img_size=16, **kw)
    assert m(torch.randn(2, 3, 16, 16)).shape == (2, 7)
    if name == "vit_spectformer_micro_p4":
        expected = ["softmax"] * 3 + ["spectral"] if kw else ["spectral"] * 2 + ["softmax"] * 2
        assert m.mixers == expected and m.cls_token is None


def test_gated_network_starts_like_its_gate_free_twin() -> None:
    # gates draw from their own stream: every shared tensor of the same seed is identical
    torch.manual_seed(3)
    plain = SlotViT(img_size=8, patch_size=4, embed_dim=16, depth=2, heads=2, num_classes=3)
    torch.manual_seed(3)
    gated = SlotViT(img_size=8, patch_size=4, embed_dim=16, depth=2, heads=2, num_classes=3, gates="hag")
    g = gated.state_dict()
    for k, v in plain.state_dict().items():
        assert torch.equal(v, g[k]), k
    thetas = [v for k, v in g.items() if k.endswith("theta")]
    assert len(thetas) == 4 and not torch.equal(thetas[0], thetas[1])


@pytest.mark.parametrize("mixer", ["karat", "karat_universal"])
def test_karat_network_starts_like_its_softmax_twin(mixer: str) -> None:
    torch.manual_seed(5)
    plain = SlotViT(img_size=8, patch_size=4, embed_dim=16, depth=2, heads=2, num_classes=3)
    torch.manual_seed(5)
    kan = SlotViT(img_size=8, patch_size=4, embed_dim=16, depth=2, heads=2, num_classes=3, mixer=mixer)
    k = kan.state_dict()
    for name, v in plain.state_dict().items():
        assert torch.equal(v, k[name]), name
