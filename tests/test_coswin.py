"""Chapter 22 (CoSwin): the arms and their networks, the parameter counts by hand and the
control's match, the local-branch probe and the attention-distance probe against values
computed by hand, the figures, and the early errors."""
from __future__ import annotations

import dataclasses
import math

import matplotlib.pyplot as plt
import pytest
import torch
from timm.models.swin_transformer import SwinTransformerBlock

from repro import models
from repro.errors import ParameterError
from repro.families.architecture import coswin, protocol
from repro.layers.coswin_block import CoSwinBlock
from repro.papers import load_spec

# The smoke tier's recipe with the micro Swin at 16 px (token grids 8 → 4 → 2).
RECIPE = {"model": "swin_micro", "gate_arm": False, "classes": 4, "image_size": 16, "epochs": 2, "batch_size": 16,
          "lr": 2e-3, "weight_decay": 0.1, "warmup_epochs": 0.0, "label_smoothing": 0.0, "cpu_bf16": True}


def _recipe(cfg: protocol.ArchConfig) -> dict:
    d = dataclasses.asdict(cfg)
    for k in ("model", "model_kw", "title"):
        d.pop(k)
    return d


def _blocks(net: torch.nn.Module) -> list[SwinTransformerBlock]:
    return [b for stage in net.layers for b in stage.blocks]


# -- arms -----------------------------------------------------------------------------------------
def test_arms_have_the_right_networks_and_one_recipe() -> None:
    arms = coswin.arm_configs(RECIPE)
    assert list(arms) == ["swin", "coswin", "swin_wide"]
    assert {a for a, _ in arms.values()} == {"standard"}
    cfg = {k: c for k, (_, c) in arms.items()}
    assert {k: (c.model, c.model_kw) for k, c in cfg.items()} == {
        "swin": ("swin_micro", {}), "coswin": ("coswin_micro", {}), "swin_wide": ("swin_micro_wide", {})}
    base = _recipe(cfg["swin"])
    assert all(_recipe(c) == base for c in cfg.values())
    assert base["cpu_bf16"] is True and base["epochs"] == 2
    gated = coswin.arm_configs({**RECIPE, "gate_arm": True})
    assert list(gated) == ["swin", "coswin", "swin_wide", "coswin_gate"]
    assert (gated["coswin_gate"][1].model, gated["coswin_gate"][1].model_kw) == ("coswin_micro", {"local_branch": "gate"})
    # the networks the family builds from them
    nets = {k: protocol.build_model(c, 4, 16, 0) for k, c in {**cfg, "coswin_gate": gated["coswin_gate"][1]}.items()}
    kinds = {k: [type(b).__name__ for b in _blocks(n)] for k, n in nets.items()}
    assert kinds == {"swin": ["SwinTransformerBlock"] * 4, "coswin": ["CoSwinBlock"] * 4,
                     "swin_wide": ["SwinTransformerBlock"] * 4, "coswin_gate": ["CoSwinBlock"] * 4}
    assert [b.local_gate is None for b in _blocks(nets["coswin"])] == [True] * 4
    assert [b.local_gate.item() for b in _blocks(nets["coswin_gate"])] == [0.0] * 4
    assert nets["swin"].patch_embed.proj.out_channels == 32 and nets["swin_wide"].patch_embed.proj.out_channels == 33
    # one seed: CoSwin holds every Swin weight of the plain Swin, unchanged
    sw, co = nets["swin"].state_dict(), nets["coswin"].state_dict()
    assert set(sw) < set(co) and all(".local." in k for k in set(co) - set(sw))
    assert all(torch.equal(sw[k], co[k]) for k in sw)


def test_parameter_counts_by_hand() -> None:
    # micro Swin: blocks of width 32, 64, 128, 128. A local branch of width C has
    # 9C + C (depthwise 3×3 with bias) + 2C (BN) + C² + C (1×1 with bias) = C² + 13C:
    # 1 440 + 4 928 + 2 · 18 048 = 42 464; the gated CoSwin one scalar more per block.
    assert [coswin.local_branch_params(c) for c in (32, 64, 128)] == [1440, 4928, 18048]
    counts = coswin.param_counts("swin_micro", 16, 4)
    assert counts["coswin"]["extra"] == counts["coswin"]["formula"] == 42464
    assert counts["coswin_gate"]["extra"] == 42464 + 4
    assert counts["swin"]["extra"] == 0 and counts["swin_wide"]["formula"] is None
    for arm, c in counts.items():
        assert c["params"] == sum(p.numel() for p in models.create(c["model"], num_classes=4, img_size=16,
                                                                   **({"local_branch": "gate"} if arm == "coswin_gate"
                                                                      else {})).parameters())
    table = coswin.param_table(counts)
    assert "42,464" in table and "—" in table


@pytest.mark.parametrize("model, size, classes", [("swin_micro", 16, 20), ("swin_micro", 32, 100),
                                                  ("swin_tiny_cifar", 32, 100)])
def test_the_control_is_within_5_percent_of_coswin(model: str, size: int, classes: int) -> None:
    c = coswin.param_counts(model, size, classes)
    assert abs(c["swin_wide"]["params"] - c["coswin"]["params"]) / c["coswin"]["params"] < 0.05
    assert c["swin_wide"]["vs_coswin"] == pytest.approx((c["swin_wide"]["params"] - c["coswin"]["params"])
                                                         / c["coswin"]["params"])
    assert abs(c["swin"]["vs_coswin"]) > 0.05       # the plain Swin is not matched already
    assert c["swin_wide"]["params"] > c["swin"]["params"]


def test_bad_names_and_sizes_fail_before_any_work() -> None:
    with pytest.raises(ParameterError, match="unknown model 'swin_nope'"):
        coswin.arm_configs({**RECIPE, "model": "swin_nope"})
    for name in ("coswin_micro", "swin_micro_wide", "vit_slot_micro_p4"):  # registered, not a base Swin
        with pytest.raises(ParameterError, match="not one of the base Swins"):
            coswin.arm_configs({**RECIPE, "model": name})
    with pytest.raises(ParameterError, match="not divisible by patch"):
        coswin.arm_configs({**RECIPE, "image_size": 17})
    with pytest.raises(ParameterError, match="does not tile"):
        coswin.arm_configs({**RECIPE, "image_size": 24})
    with pytest.raises(ParameterError, match="not a Swin"):
        coswin.local_share(models.create("vit_slot_micro_p4", num_classes=4, img_size=16), torch.randn(1, 3, 16, 16))


def test_every_tier_builds_the_arms_its_claims_compare() -> None:
    spec = load_spec("coswin")
    for tier in ("smoke", "cpu", "gpu", "paper"):
        params = spec.resolve(tier)
        arms = coswin.arm_configs(params)
        for claim in spec.claims:
            assert claim.arm in arms and claim.baseline in arms, (tier, claim.id)
    assert spec.resolve("cpu")["model"] == "swin_micro" and spec.resolve("cpu")["epochs"] == 15
    assert spec.resolve("cpu")["gate_arm"] is False and spec.resolve("smoke")["gate_arm"] is True


# -- the local-branch probe -----------------------------------------------------------------------
def _gated_micro() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.create("swin_micro", num_classes=4, img_size=16, local_branch="gate")


def test_local_share_is_zero_with_a_zero_gate() -> None:
    net = _gated_micro()
    net.train()
    rows = coswin.local_share(net, torch.randn(2, 3, 16, 16))
    assert net.training                                     # restored
    assert [r["label"] for r in rows] == ["s0.b0", "s1.b0", "s2.b0", "s2.b1"] == coswin.block_labels(net)
    assert [r["share"] for r in rows] == [0.0] * 4
    assert [r["rms_local"] for r in rows] == [0.0] * 4 and all(r["rms_attn"] > 0 for r in rows)
    assert [r["gate"] for r in rows] == [0.0] * 4
    assert coswin.local_share(models.create("swin_micro", num_classes=4, img_size=16), torch.randn(1, 3, 16, 16)) == []


def test_local_share_by_hand() -> None:
    # Block 0 made constant: the attention projection outputs only its bias d (weights 0),
    # the local branch only its 1×1 bias c (depthwise conv 0, BN(0) = 0 in eval, GELU(0) = 0),
    # scaled by the gate g. Then RMS(a) = |d|, RMS(l) = |g·c|, share = |gc| / (|d| + |gc|),
    # and the cosine between them is the sign of g·c·d.
    net = _gated_micro()
    b = _blocks(net)[0]
    c, d = 0.3, 0.1
    with torch.no_grad():
        b.attn.proj.weight.zero_()
        b.attn.proj.bias.fill_(d)
        b.local.dw.weight.zero_()
        b.local.dw.bias.zero_()
        b.local.pw.weight.zero_()
        b.local.pw.bias.fill_(c)
    x = torch.randn(3, 3, 16, 16)
    for g, share, cos in [(1.0, 0.75, 1.0), (0.5, 0.6, 1.0), (-2.0, 6 / 7, -1.0)]:
        with torch.no_grad():
            b.local_gate.fill_(g)
        r = coswin.local_share(net, x)[0]
        assert r["rms_attn"] == pytest.approx(d, rel=1e-5)
        assert r["rms_local"] == pytest.approx(abs(g) * c, rel=1e-5)
        assert r["share"] == pytest.approx(share, rel=1e-5)
        assert r["cos"] == pytest.approx(cos, rel=1e-5)
        assert r["gate"] == g


def test_local_share_splits_the_blocks_own_update() -> None:
    # a + l recomputed by the probe is what the CoSwin block adds to its residual stream.
    torch.manual_seed(1)
    net = models.create("coswin_micro", num_classes=4, img_size=16).eval()
    b = _blocks(net)[1]
    got = {}
    b.register_forward_hook(lambda _m, i, o: got.update(x=i[0], y=o))
    x = torch.randn(2, 3, 16, 16)
    rows = coswin.local_share(net, x)
    with torch.no_grad():
        z = b.norm1(got["x"])
        a, loc = SwinTransformerBlock._attn(b, z), b.local(z)
        torch.testing.assert_close(a + loc, CoSwinBlock._attn(b, z))
        h = got["x"] + a + loc
        h = h + b.mlp(b.norm2(h))
        torch.testing.assert_close(h, got["y"], rtol=1e-5, atol=1e-5)
    assert rows[1]["rms_attn"] == pytest.approx(float(a.pow(2).mean().sqrt()), rel=1e-5)
    assert rows[1]["rms_local"] == pytest.approx(float(loc.pow(2).mean().sqrt()), rel=1e-5)


# -- the attention-distance probe -----------------------------------------------------------------
def _mean_pair_distance(ws: int) -> float:
    cells = [(i, j) for i in range(ws) for j in range(ws)]
    return sum(math.dist(p, q) for p in cells for q in cells) / len(cells) ** 2


def test_attention_distance_by_hand() -> None:
    # With q = k = 0 and no position bias the softmax is uniform over the window, so the mean
    # distance is the mean pairwise distance of its cells times the token stride: a 4×4
    # window of 2-px tokens at stage 0, a 4×4 window of 4-px tokens at stage 1, and the 2×2
    # window (clamped to the grid) of 8-px tokens at stage 2: (0 + 1 + 1 + √2)/4 · 8.
    torch.manual_seed(0)
    net = models.create("coswin_micro", num_classes=4, img_size=16)
    with torch.no_grad():
        for b in _blocks(net):
            b.attn.qkv.weight.zero_()
            b.attn.qkv.bias.zero_()
            b.attn.relative_position_bias_table.zero_()
    rows = coswin.attention_distance(net, torch.randn(2, 3, 16, 16))
    want = [_mean_pair_distance(4) * 2, _mean_pair_distance(4) * 4, _mean_pair_distance(2) * 8,
            _mean_pair_distance(2) * 8]
    assert [(r["window"], r["stride"]) for r in rows] == [(4, 2), (4, 4), (2, 8), (2, 8)]
    assert _mean_pair_distance(2) * 8 == pytest.approx((2 + math.sqrt(2)) / 4 * 8)
    for r, w in zip(rows, want):
        assert r["distance_px"] == pytest.approx(w, rel=1e-5)
        assert r["uniform_px"] == pytest.approx(w, rel=1e-5)
        assert r["shifted"] is False


# -- figures and per-seed metrics -----------------------------------------------------------------
def test_figures_and_metrics_from_the_probes() -> None:
    x = torch.randn(2, 3, 16, 16)
    torch.manual_seed(0)
    co = models.create("coswin_micro", num_classes=4, img_size=16)
    sw = models.create("swin_micro", num_classes=4, img_size=16)
    gated = _gated_micro()
    shares = {"coswin": {0: coswin.local_share(co, x), 1: coswin.local_share(co, x)},
              "coswin_gate": {0: coswin.local_share(gated, x)}}
    m = coswin.metrics_by_seed(shares)
    assert set(m[0]) == {"local_share_coswin", "local_share_coswin_gate", "gate_abs_mean"}
    assert m[0]["local_share_coswin_gate"] == 0.0 and m[0]["gate_abs_mean"] == 0.0
    assert set(m[1]) == {"local_share_coswin"}
    fig, data = coswin.local_share_figure({"CoSwin": shares["coswin"], "gated": shares["coswin_gate"]}, "setting",
                                          init=shares["coswin"][0])
    assert data["labels"] == ["s0.b0", "s1.b0", "s2.b0", "s2.b1"] and set(data["arms"]) == {"CoSwin", "gated"}
    assert data["arms"]["gated"]["share_max"] == [0.0] * 4
    plt.close(fig)
    fig, data = coswin.distance_figure({"Swin": {0: coswin.attention_distance(sw, x)},
                                        "CoSwin": {0: coswin.attention_distance(co, x)}}, "setting")
    assert set(data["arms"]) == {"Swin", "CoSwin"} and len(data["uniform_px"]) == 4
    plt.close(fig)
    with pytest.raises(ValueError, match="no CoSwin"):
        coswin.local_share_figure({"Swin": {0: []}}, "s")
