"""Chapter 30 (TCA): token reduction, the reservoir, the logit correction, FLOPs, the stream."""
from __future__ import annotations

import math

import pytest
import torch

from repro.errors import ParameterError
from repro.families.uncertainty import tca
from repro.layers.token_condensation import (FUSED, KEPT, MERGED, check_keep, cls_attention, condense,
                                             condense_owner, evit_prune, n_keep, tome_merge)


def _seq(patches: list[list[float]], cls: list[float] | None = None) -> torch.Tensor:
    """[1, 1 + P, D] with the given patch rows (CLS = zeros unless given)."""
    d = len(patches[0])
    return torch.tensor([[cls or [0.0] * d, *patches]])


# -- keep rate -------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.0001, 2, float("nan"), True, "0.9"])
def test_bad_keep_is_a_parameter_error_before_any_work(bad):
    x = torch.randn(1, 5, 4)
    a = torch.rand(1, 4)
    for call in (lambda: check_keep(bad), lambda: evit_prune(x, a, bad), lambda: tome_merge(x, bad),
                 lambda: condense(x, a, bad)):
        with pytest.raises(ParameterError, match="0 < R ≤ 1"):
            call()


def test_n_keep_is_the_ceiling():
    assert n_keep(64, 0.9) == 58      # ⌈57.6⌉
    assert n_keep(10, 0.9) == 9       # exactly 9, not 10 through float error
    assert n_keep(16, 0.7) == 12      # ⌈11.2⌉
    assert n_keep(16, 0.01) == 1


def test_keep_one_is_the_identity_for_every_method():
    x = torch.randn(2, 17, 8)
    a = torch.rand(2, 16)
    assert torch.equal(evit_prune(x, a, 1.0), x)
    assert torch.equal(tome_merge(x, 1.0), x)
    out, info = condense(x, a, 1.0)
    assert torch.equal(out, x)
    assert info["kept"].shape == (2, 16)


def test_cls_attention_averages_the_heads():
    attn = torch.zeros(1, 2, 3, 3)
    attn[0, 0, 0] = torch.tensor([0.2, 0.6, 0.2])
    attn[0, 1, 0] = torch.tensor([0.0, 0.2, 0.8])
    assert torch.allclose(cls_attention(attn), torch.tensor([[0.4, 0.5]]))


# -- EViT ------------------------------------------------------------------------------------
def test_evit_keeps_the_top_l_and_fuses_the_rest_by_attention():
    x = _seq([[1.0, 1.0], [2.0, 2.0], [3.0, 0.0], [0.0, 3.0]], cls=[9.0, 9.0])
    a = torch.tensor([[0.3, 0.4, 0.2, 0.1]])
    out = evit_prune(x, a, 0.5)                          # L = 2 of 4 patches
    assert out.shape == (1, 4, 2)
    assert torch.equal(out[0, 0], torch.tensor([9.0, 9.0]))             # CLS first, untouched
    assert torch.equal(out[0, 1], torch.tensor([2.0, 2.0]))             # most attended first
    assert torch.equal(out[0, 2], torch.tensor([1.0, 1.0]))
    # (0.2·[3, 0] + 0.1·[0, 3]) / 0.3 = [2, 1]
    assert torch.allclose(out[0, 3], torch.tensor([2.0, 1.0]))


def test_evit_count_on_random_tokens():
    out = evit_prune(torch.randn(3, 65, 8), torch.rand(3, 64), 0.7)
    assert out.shape == (3, 1 + 45 + 1, 8)              # ⌈44.8⌉ kept + 1 fused


# -- ToMe ------------------------------------------------------------------------------------
def test_tome_merges_the_most_similar_pair_into_its_mean():
    # A = patches 0, 2; B = patches 1, 3. Patch 0 and 1 are parallel (cosine 1), the rest orthogonal.
    x = _seq([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], cls=[5.0, 5.0, 5.0])
    out = tome_merge(x, 0.75)                            # 4 → 3 patches: one merge
    assert out.shape == (1, 4, 3)
    assert torch.equal(out[0, 0], torch.tensor([5.0, 5.0, 5.0]))
    rows = {tuple(r.tolist()) for r in out[0, 1:]}
    assert rows == {(0.0, 1.0, 0.0), (1.5, 0.0, 0.0), (0.0, 0.0, 1.0)}


@pytest.mark.parametrize("keep,left", [(0.9, 58), (0.7, 45), (0.3, 20), (0.05, 4)])
def test_tome_keeps_the_right_count(keep, left):
    # below keep ½ one bipartite round cannot merge enough: rounds repeat
    assert tome_merge(torch.randn(2, 65, 8), keep).shape == (2, 1 + left, 8)


def test_tome_measures_similarity_on_the_metric():
    x = _seq([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    # by the tokens, patch 2 matches patch 1; by this metric patch 0 matches patch 1
    metric = _seq([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    out = tome_merge(x, 0.75, metric)
    rows = {tuple(r.tolist()) for r in out[0, 1:]}
    assert (0.5, 0.5) in rows


# -- TCA condensation ------------------------------------------------------------------------
def test_condense_returns_cls_kept_four_merged_and_one_fused():
    torch.manual_seed(0)
    x, a = torch.randn(2, 65, 8), torch.rand(2, 64)
    out, info = condense(x, a, 0.9)                      # L = 58, m = 6: 46 kept, 12 → 4, 6 → 1
    assert out.shape == (2, 1 + 46 + 4 + 1, 8)
    assert info["n_kept"] == 46 and info["n_merged_tokens"] == 4 and info["n_fused_tokens"] == 1
    for b in range(2):
        parts = torch.cat([info["kept"][b], info["merged"][b], info["fused"][b]])
        assert sorted(parts.tolist()) == list(range(64))  # a partition of the patches
        top = set(a[b].argsort(descending=True)[:46].tolist())
        assert set(info["kept"][b].tolist()) == top
        assert torch.equal(out[b, 1:47], x[b, 1:][info["kept"][b]])   # kept tokens unchanged
    assert torch.equal(out[:, 0], x[:, 0])
    assert set(info["cluster"].flatten().tolist()) == {0, 1, 2, 3}


def test_condense_fused_token_is_the_attention_weighted_mean():
    # 4 patches, keep ½: L = 2, m = 2, L − 2m < 0 → nothing kept unchanged, the top 2 "merged"
    # (2 ≤ n_merge: they pass through), the 2 least attended fused.
    x = _seq([[1.0, 1.0], [2.0, 2.0], [3.0, 0.0], [0.0, 3.0]])
    a = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    out, info = condense(x, a, 0.5)
    assert out.shape == (1, 1 + 0 + 2 + 1, 2)
    assert torch.equal(out[0, 1:3], x[0, 1:3])
    assert torch.allclose(out[0, 3], torch.tensor([2.0, 1.0]))     # (0.2·[3,0] + 0.1·[0,3]) / 0.3
    assert info["fused"].tolist() == [[2, 3]]


def test_condense_coreset_merge_by_hand():
    # 9 patches, keep 0.75: L = 7, m = 2 → 3 kept, 4 merged into n_merge = 2, 2 fused.
    patches = [[100.0, 0.0]] * 3 + [[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [12.0, 0.0]] + [[0.0, 5.0]] * 2
    x = _seq(patches)
    a = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]])
    out, info = condense(x, a, 0.75, n_merge=2)
    assert out.shape == (1, 1 + 3 + 2 + 1, 2)
    # k-center: first centre [0, 0] (most attended of the group), then the farthest, [12, 0].
    # [1, 0] joins [0, 0] at d = 1, [10, 0] joins [12, 0] at d = 2; weights 1/(d + 1):
    # (0·1 + 1·½) / 1.5 = 1/3 and (12·1 + 10·⅓) / (4/3) = 11.5
    assert torch.allclose(out[0, 4], torch.tensor([1 / 3, 0.0]))
    assert torch.allclose(out[0, 5], torch.tensor([11.5, 0.0]))
    assert info["cluster"].tolist() == [[0, 0, 1, 1]]
    assert torch.allclose(out[0, 6], torch.tensor([0.0, 5.0]))


def test_condense_owner_maps_every_patch():
    x, a = torch.randn(1, 10, 4), torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]])
    out, info = condense(x, a, 0.75, n_merge=2)        # 3 kept, 4 merged into 2, 2 fused
    new, fate = condense_owner(info, 9)
    assert fate.tolist() == [[KEPT] * 3 + [MERGED] * 4 + [FUSED] * 2]
    assert new[0, :3].tolist() == [0, 1, 2] and new[0, 7:].tolist() == [5, 5]
    assert int(new.max()) == out.shape[1] - 2


# -- reservoir and logit correction ----------------------------------------------------------
def _cls(*v: float) -> torch.Tensor:
    return torch.tensor([list(v)])          # one layer


def test_reservoir_drops_the_highest_entropy_plus_similarity_entry():
    r = tca.Reservoir(num_classes=1, capacity=3)
    f = torch.zeros(2)
    s = 1 / math.sqrt(2)
    r.add(0, f, 0.1, _cls(1.0, 0.0))        # e0
    r.add(0, f, 0.1, _cls(0.0, 1.0))        # e1
    r.add(0, f, 0.3, _cls(s, s))            # e2
    # new e3 = [-1, 0] with the highest entropy 0.45. Mean cosine to the 3 others:
    # e0 (0 + .707 − 1)/3 = −.098, e1 (0 + .707 + 0)/3 = .236, e2 (.707 + .707 − .707)/3 = .236,
    # e3 (−1 + 0 − .707)/3 = −.569 → scores .002, .336, .536, −.119: e2 goes, not e3
    assert r.add(0, f, 0.45, _cls(-1.0, 0.0)) == 2
    kept = [e.cls[0].tolist() for e in r.entries[0]]
    assert kept == [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]
    # a very uncertain newcomer is the one dropped
    assert r.add(0, f, 5.0, _cls(0.0, -1.0)) == 3
    assert len(r.entries[0]) == 3


def test_anchors_switch_on_only_when_every_class_holds_two():
    r = tca.Reservoir(num_classes=2, capacity=3)
    f = torch.zeros(2)
    r.add(0, f, 0.1, torch.tensor([[1.0, 0.0], [2.0, 0.0]]))
    r.add(0, f, 0.1, torch.tensor([[3.0, 0.0], [4.0, 0.0]]))
    r.add(0, f, 0.1, torch.tensor([[5.0, 0.0], [6.0, 0.0]]))
    r.add(1, f, 0.1, torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    assert not r.active
    with pytest.raises(RuntimeError):
        r.anchors()
    r.add(1, f, 0.1, torch.tensor([[0.0, 3.0], [0.0, 5.0]]))
    assert r.active
    anchors = r.anchors()                    # [C, layers, D]: per-class, per-layer means
    assert torch.allclose(anchors[0], torch.tensor([[3.0, 0.0], [4.0, 0.0]]))
    assert torch.allclose(anchors[1], torch.tensor([[0.0, 2.0], [0.0, 3.0]]))


def test_layer_weights_by_hand():
    w = tca.layer_weights(3, 0.1)            # ∝ exp(0), exp(5), exp(10)
    z = 1 + math.exp(5) + math.exp(10)
    assert torch.allclose(w, torch.tensor([1 / z, math.exp(5) / z, math.exp(10) / z]))


def test_logit_correction_on_two_classes():
    stored = torch.tensor([[[1.0, 0.0], [1.0, 0.0]],      # class 0
                           [[0.0, 1.0], [0.0, 2.0]]])     # class 1
    labels = torch.tensor([0, 1])
    query = torch.tensor([[[3.0, 0.0], [0.0, 1.0]]])      # layer 0 like class 0, layer 1 like class 1
    w = torch.tensor([0.25, 0.75])
    out = tca.cache_logits(query, stored, labels, 2, w, lam=3.0, beta=5.0)
    # affinities: class 0 0.25·1 + 0.75·0 = 0.25; class 1 0.25·0 + 0.75·1 = 0.75
    want = torch.tensor([[3 * math.exp(-5 * 0.75), 3 * math.exp(-5 * 0.25)]])
    assert torch.allclose(out, want)
    empty = tca.cache_logits(query, torch.zeros(0, 0, 0), torch.zeros(0, dtype=torch.long), 2, w)
    assert torch.equal(empty, torch.zeros(1, 2))


# -- model, FLOPs, stream --------------------------------------------------------------------
CFG = tca.TCAConfig(embed_dim=32, depth=2, heads=2, mlp_ratio=2.0, layers=(1,), stream_batch=8)


def _model(cfg: tca.TCAConfig = CFG, classes: int = 3, size: int = 8) -> tca.TokenReducingViT:
    torch.manual_seed(0)
    return tca.TokenReducingViT(tca.build_vit(cfg, classes, size), cfg.layers).eval()


def test_unreduced_forward_matches_timm():
    m = _model()
    x = torch.randn(2, 3, 8, 8)
    out = m(x)
    assert torch.allclose(out.logits, m.vit(x), atol=1e-5)
    assert out.cls.shape == (2, 2, 32)


def test_flop_count_includes_attention():
    m = _model()                             # 8 px, patch 4: P = 4, N = 5; d = 32, MLP 64, 3 classes
    n, d, hidden, c, p = 5, 32, 64, 3, 4
    patch = 2 * p * d * 3 * 4 * 4
    block = 2 * n * d * 3 * d + 2 * n * d * d + 2 * 2 * n * d * hidden
    attention = 2 * 2 * n * n * d            # q·kᵀ and attn·v
    head = 2 * d * c
    assert tca.flops_per_image(m, "source", 1.0, 8, CFG) == patch + 2 * (block + attention) + head


def test_reduction_lowers_the_flops():
    m = _model(tca.TCAConfig(embed_dim=32, depth=3, heads=2, mlp_ratio=2.0, layers=(1,)), size=32)
    src = tca.flops_per_image(m, "source", 1.0, 32)
    for method in ("evit", "tome", "tca"):
        assert tca.flops_per_image(m, method, 0.7, 32) < src


def test_tiny_stream_runs_for_every_method():
    m = _model(size=16)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (20, 3, 16, 16), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 3, (20,), generator=g)
    for method in tca.METHODS:
        r = tca.evaluate_stream(m, images, labels, method, 0.7, CFG, seed=1)
        assert len(r.correct) == 20 and 0 <= r.acc <= 100
        again = tca.evaluate_stream(m, images, labels, method, 0.7, CFG, seed=1)
        assert (r.correct == again.correct).all()       # the order is fixed by the seed
    with pytest.raises(ParameterError):
        tca.evaluate_stream(m, images, labels, "nope", 0.7, CFG)


def test_condensation_fates_cover_every_patch():
    m = _model(tca.TCAConfig(embed_dim=32, depth=3, heads=2, mlp_ratio=2.0, layers=(1, 2)), size=16)
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    fates = tca.condensation_fates(m, images, 0.5)
    assert set(fates) == {1, 2}
    assert fates[1].shape == (2, 16)
    assert (fates[2] >= fates[1]).all()                 # a patch's fate only worsens


def test_arm_table_labels():
    arms = tca.arm_table(0.9, [0.9, 0.7])
    assert arms["tca"] == ("tca", 0.9) and arms["evit_R70"] == ("evit", 0.7)
    assert list(arms)[:2] == ["source", "cache"] and len(arms) == 8
