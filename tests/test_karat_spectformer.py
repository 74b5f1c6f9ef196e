"""Chapters 26 (KArAt) and 33 (SpectFormer): the arms and their mixers, the parameter-matched
control and the operator's parameter count by hand, the score probe against the attention
maps, the unit functions against the operator, and the early errors."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from repro import models
from repro.errors import ParameterError
from repro.families.architecture import karat, probes, protocol, spectformer
from repro.flops import count_params
from repro.layers.kan_attention import FourierKANOperator
from repro.layers.spectral_filter import SpectralBlock
from repro.papers import load_spec
from repro.sweep import SweepResult

# The recipe both chapters resolve at the smoke tier, with the micro ViT at 16 px (4×4 grid).
RECIPE = {"model": "vit_slot_micro_p4", "classes": 4, "image_size": 16, "epochs": 2, "batch_size": 16,
          "lr": 2e-3, "weight_decay": 0.1, "warmup_epochs": 0.0, "label_smoothing": 0.0, "grad_clip": 1.0}
KARAT = dict(RECIPE)
SPECT = {**{k: v for k, v in RECIPE.items() if k != "grad_clip"}, "alphas": [0, 1, 2, 4], "reversed_arm": True}


def _without(cfg: protocol.ArchConfig, *keys: str) -> dict:
    d = dataclasses.asdict(cfg)
    d["model_kw"] = {k: v for k, v in d["model_kw"].items() if k not in keys}
    d.pop("title")
    return d


# -- 26 karat: arms ------------------------------------------------------------------------------
def test_karat_arms_have_the_right_mixers_and_one_recipe() -> None:
    arms = karat.arm_configs(KARAT)
    assert list(arms) == ["softmax", "g3b", "g3u", "softmax_wide"]
    assert {a for a, _ in arms.values()} == {"standard"}
    cfg = {k: c for k, (_, c) in arms.items()}
    # softmax is the family's plain ViT ("mixer softmax" is dropped as the slot's default)
    assert cfg["softmax"].model_kw == {}
    assert cfg["g3b"].model_kw == {"mixer": "karat"}
    assert cfg["g3u"].model_kw == {"mixer": "karat_universal"}
    assert set(cfg["softmax_wide"].model_kw) == {"mlp_ratio"}
    # everything but the network is the same, including the paper's gradient clip
    base = _without(cfg["softmax"])
    for c in cfg.values():
        assert _without(c, "mixer", "mlp_ratio") == base
    assert base["grad_clip"] == 1.0 and base["model"] == "vit_slot_micro_p4"
    # the networks built from them: mixers per block as named
    kinds = {k: [type(b.attn).__name__ for b in protocol.build_model(c, 4, 16, 0).blocks] for k, c in cfg.items()}
    assert kinds == {"softmax": ["Attention"] * 4, "g3b": ["KANAttention"] * 4, "g3u": ["KANAttention"] * 4,
                     "softmax_wide": ["Attention"] * 4}


def test_karat_operator_counts_by_hand() -> None:
    # micro ViT at 16 px, patch 4: N = 16 patches + class token = 17, 2 heads, 4 blocks.
    # One head: 2·G·r·N + N·r = 2·3·12·17 + 17·12 = 1224 + 204 = 1428.
    assert karat.operator_params(1, 17) == 1428
    counts = karat.param_counts("vit_slot_micro_p4", 16, 4)
    assert counts["g3b"]["extra"] == 4 * 2 * 1428 == 11424      # per head per block
    assert counts["g3u"]["extra"] == 2 * 1428 == 2856            # per head, the shared operator once
    for arm in ("g3b", "g3u", "softmax_wide"):
        assert counts[arm]["extra"] == counts[arm]["formula"]
    # the shared operator really is one object in every block, counted once
    net = models.create("vit_slot_micro_p4", num_classes=4, img_size=16, mixer="karat_universal")
    ops = {id(b.attn.operator) for b in net.blocks}
    assert len(ops) == 1 and count_params(net) == counts["g3u"]["params"]


@pytest.mark.parametrize("model, size, hidden", [("vit_slot_micro_p4", 16, 150), ("vit_slot_tiny_p4", 32, 811)])
def test_the_control_matches_g3b_within_5_percent(model: str, size: int, hidden: int) -> None:
    m = karat.matched_mlp_ratio(model, size, 100)
    # micro: G3B adds 11 424; a hidden unit costs depth·(2·dim + 1) = 4·129 = 516, so 22 units
    # (128 → 150). tiny at 32 px: N = 65, G3B adds 6·3·84·65 = 98 280; a unit costs
    # 6·385 = 2 310, so 43 units (768 → 811).
    assert m["hidden"] == hidden
    assert abs(m["params_wide"] - m["params_target"]) / m["params_target"] < 0.05
    assert abs(m["rel_diff"]) < 0.005  # within half a hidden unit per block
    if model == "vit_slot_micro_p4":  # (the tiny ViT's builds are checked inside matched_mlp_ratio)
        net = models.create(model, num_classes=100, img_size=size, mlp_ratio=m["mlp_ratio"])
        assert all(b.mlp.fc1.out_features == hidden for b in net.blocks)
        assert count_params(net) == m["params_wide"]
        # the arm the chapter builds is that network
        wide = karat.arm_configs({**KARAT, "image_size": size, "classes": 100})["softmax_wide"][1]
        assert wide.model_kw["mlp_ratio"] == m["mlp_ratio"]


def test_karat_refuses_a_bad_model_before_any_work() -> None:
    with pytest.raises(ParameterError, match="unknown model 'vit_nope'"):
        karat.arm_configs({**KARAT, "model": "vit_nope"})
    for name in ("resnet18", "vit_micro_p4", "vit_karat_micro_p4"):  # not a softmax slot ViT
        with pytest.raises(ParameterError, match="slot ViT"):
            karat.arm_configs({**KARAT, "model": name})
    with pytest.raises(ParameterError, match="not divisible"):
        karat.arm_configs({**KARAT, "image_size": 18})


# -- 26 karat: probes ----------------------------------------------------------------------------
def test_scores_give_back_the_attention_maps() -> None:
    x = torch.randn(2, 3, 16, 16)
    for mixer in ("softmax", "karat"):
        torch.manual_seed(0)
        net = models.create("vit_slot_micro_p4", num_classes=4, img_size=16, mixer=mixer)
        net.train()
        a = karat.scores(net, x)
        assert net.training  # restored
        maps = probes.attention_maps(net, x)[-1]
        if mixer == "softmax":
            want = a.softmax(-1)
            assert karat.operator_stats(net, x) == pytest.approx({"row_sum": 1.0, "negative_pct": 0.0}, abs=1e-5)
        else:
            with torch.no_grad():
                want = net.blocks[-1].attn.operator(a)
        torch.testing.assert_close(maps, want, rtol=1e-4, atol=1e-5)


def test_unit_functions_sum_to_the_operator_features() -> None:
    # u_p(k) = Σ_q φ_pq(A_kq): the φ drawn in the figure are the operator's own.
    torch.manual_seed(0)
    op = FourierKANOperator(num_heads=2, num_tokens=5, grid=3, rank=4)
    a = torch.randn(1, 2, 5, 5)
    with torch.no_grad():
        u = torch.einsum("bhkqg,hrqg->bhkr", op.basis(a), op.coef)
    head, k = 1, 3
    for p in range(4):
        by_hand = sum(karat.unit_function(op, head, p, q, a[0, head, k, q:q + 1])[0] for q in range(5))
        assert float(by_hand) == pytest.approx(float(u[0, head, k, p]), rel=1e-5, abs=1e-5)
    # φ(0) = Σ_m a_m (cos 0 = 1, sin 0 = 0)
    with torch.no_grad():
        phi0 = float(karat.unit_function(op, 0, 0, 0, torch.zeros(1))[0])
        assert phi0 == pytest.approx(float(op.coef[0, 0, 0, :3].sum()))


def test_unit_function_figure_draws_both_karat_arms() -> None:
    nets = {}
    for mixer in ("karat", "karat_universal"):
        torch.manual_seed(0)
        nets[mixer] = models.create("vit_slot_micro_p4", num_classes=4, img_size=16, mixer=mixer)
    fig, data = karat.unit_functions(nets, torch.randn(2, 3, 16, 16), "setting")
    assert set(data["functions"]) == {"karat", "karat_universal"}
    lo, hi = data["functions"]["karat"]["scores_q01_q99"]
    xs = data["functions"]["karat"]["x"]
    assert xs[0] <= lo <= hi <= xs[-1]
    with pytest.raises(ParameterError, match="not a KArAt block"):
        karat.unit_functions({"softmax": models.create("vit_slot_micro_p4", num_classes=4, img_size=16)},
                             torch.randn(1, 3, 16, 16), "s")


# -- 33 spectformer ------------------------------------------------------------------------------
def test_spectformer_arms_differ_only_in_their_mixers() -> None:
    arms = spectformer.arm_configs(SPECT)
    assert list(arms) == ["alpha_0", "alpha_1", "alpha_mid", "alpha_all", "reversed"]
    cfg = {k: c for k, (_, c) in arms.items()}
    S, A = "spectral", "softmax"
    assert {k: c.model_kw["mixer"] for k, c in cfg.items()} == {
        "alpha_0": [A, A, A, A], "alpha_1": [S, A, A, A], "alpha_mid": [S, S, A, A], "alpha_all": [S, S, S, S],
        "reversed": [A, A, S, S]}
    base = _without(cfg["alpha_0"], "mixer")
    for c in cfg.values():
        assert c.model_kw["class_token"] is False
        assert _without(c, "mixer") == base
    assert spectformer.arm_alphas(SPECT) == {"alpha_0": 0, "alpha_1": 1, "alpha_mid": 2, "alpha_all": 4}
    # the built networks: block types as named, no class token, mean pooling
    for name, c in cfg.items():
        net = protocol.build_model(c, 4, 16, 0)
        assert net.cls_token is None and net.num_tokens == 16
        kinds = ["S" if isinstance(b, SpectralBlock) else "A" for b in net.blocks]
        assert kinds == ["S" if m == S else "A" for m in c.model_kw["mixer"]]


def test_spectformer_parameters_by_hand() -> None:
    # micro, dim 64, 4×4 grid: an attention mixer has qkv + proj = 4·64² + 4·64 = 16 640
    # parameters; a spectral filter 4·(4//2 + 1)·64 complex = 4·3·64·2 = 1 536 reals. Both
    # blocks have two LayerNorms and the same MLP, so each swap saves 15 104.
    cfg = {k: c for k, (_, c) in spectformer.arm_configs(SPECT).items()}
    p = {k: count_params(protocol.build_model(c, 4, 16, 0)) for k, c in cfg.items()}
    assert p["alpha_0"] - p["alpha_1"] == 15104
    assert p["alpha_0"] - p["alpha_mid"] == 2 * 15104 and p["alpha_0"] - p["alpha_all"] == 4 * 15104
    assert p["reversed"] == p["alpha_mid"]


def test_spectformer_refuses_bad_settings_before_any_work() -> None:
    with pytest.raises(ParameterError, match=r"integers in 0\.\.4.*\[5\]"):
        spectformer.arm_configs({**SPECT, "alphas": [0, 2, 4, 5]})
    with pytest.raises(ParameterError, match="repeat"):
        spectformer.arm_configs({**SPECT, "alphas": [0, 2, 2, 4]})
    with pytest.raises(ParameterError, match=r"must include 0, 2 and 4.*missing \[4\]"):
        spectformer.arm_configs({**SPECT, "alphas": [0, 2]})
    with pytest.raises(ParameterError, match="slot ViT"):
        spectformer.arm_configs({**SPECT, "model": "vit_micro_p4"})
    with pytest.raises(ParameterError, match="unknown model"):
        spectformer.arm_configs({**SPECT, "model": "nope"})
    with pytest.raises(ParameterError, match="not divisible"):
        spectformer.arm_configs({**SPECT, "image_size": 18})
    # without the reversed arm the third claim has no baseline: refused where it is judged
    no_rev = {**SPECT, "reversed_arm": False}
    assert "reversed" not in spectformer.arm_configs({**no_rev, "tier": "cpu"})
    with pytest.raises(ParameterError, match="reversed_arm"):
        spectformer.arm_configs({**no_rev, "tier": "gpu"})


def test_spectformer_judged_tiers_are_the_specs() -> None:
    spec = load_spec("spectformer")
    assert {tuple(c.tiers) for c in spec.claims} == {spectformer.JUDGED_TIERS}
    names = {n for c in spec.claims for n in (c.arm, c.baseline)}
    for tier in ("smoke", "cpu", "gpu", "paper"):  # every tier trains every arm the claims name
        assert names <= set(spectformer.arm_configs(spec.resolve(tier))), tier
    kspec = load_spec("karat")
    for tier in ("smoke", "cpu", "gpu", "paper"):
        assert {n for c in kspec.claims for n in (c.arm, c.baseline)} <= set(karat.ARMS)


def test_spectformer_sweep_points_and_arm_lists() -> None:
    cfg = {k: c for k, (_, c) in spectformer.arm_configs(SPECT).items()}
    jobs = [{"arm": k, "seed": s, "metrics": {"top1": 10.0 * i + s}, "extra": {"model_kw": c.model_kw}}
            for i, (k, c) in enumerate(cfg.items()) for s in (0, 1)]
    res = SweepResult(jobs)
    assert spectformer.sweep_points(res, SPECT) == {0: [0.0, 1.0], 1: [10.0, 11.0], 2: [20.0, 21.0], 4: [30.0, 31.0]}
    assert spectformer.attention_arms(res) == ["alpha_0", "alpha_1", "alpha_mid", "reversed"]
    assert spectformer.spectral_arms(res) == ["alpha_1", "alpha_mid", "alpha_all", "reversed"]


def test_spectral_arms_run_in_channels_last_memory() -> None:
    # fit moves every model to channels_last on CUDA and on a bf16 CPU; KArAt's 4-D
    # coefficients and the spectral filters' 4-D weights are then permuted in memory.
    cfg = {k: c for k, (_, c) in spectformer.arm_configs(SPECT).items()}
    x = torch.randn(2, 3, 16, 16)
    kar = models.create("vit_slot_micro_p4", num_classes=4, img_size=16, mixer="karat").to(
        memory_format=torch.channels_last)
    assert kar(x).shape == (2, 4)
    net = protocol.build_model(cfg["alpha_mid"], 4, 16, 0).to(memory_format=torch.channels_last)
    assert net(x).shape == (2, 4)
