"""Chapter 04 (GCAB): HAT's schedule, masks, compensation and regulariser by hand; the gated
class-attention block; the projector cascade; old tasks' class-attention weights stay
bit-identical while a new task trains; bad inputs fail before training."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from repro import arms
from repro.families.incremental import figures, protocol, tables
from repro.families.incremental.arms import gcab as G
from repro.families.incremental.learners import run_stream
from repro.families.incremental.stream import make_stream
from repro.layers import gated_attention as GL
from repro.losses import incremental as LS
from repro.papers import load_spec
from repro.run import Run


def tiny_cfg(**kw) -> G.GCABConfig:
    base = dict(epochs=2, lr=1e-3, weight_decay=1e-2, batch_size=8, memory=0, dim=16, depth=1, heads=2,
                mlp_ratio=2.0, image_size=16, probe_images=8, loss="ce")
    return G.GCABConfig(**{**base, **kw})


def make(cls, cfg, stream):
    """A learner set up on ``stream`` (what ``run_stream`` does first)."""
    learner = cls(cfg)
    learner.setup(stream)
    return learner


@pytest.fixture
def stream(fake_data):
    return make_stream(classes=6, scenario="B0-Inc2", per_class=16, test_per_class=4, image_size=16)


# -- HAT pieces by hand --------------------------------------------------------------------
def test_s_is_annealed_within_the_epoch():
    # s_max = 2, 4 batches: 1/2 + (2 − 1/2)·b/4 = 0.5, 0.875, 1.25, 1.625
    assert [GL.anneal_s(b, 4, 2.0) for b in range(4)] == pytest.approx([0.5, 0.875, 1.25, 1.625])
    with pytest.raises(ValueError):
        GL.anneal_s(4, 4, 2.0)


def test_masks_become_binary_at_smax():
    e = torch.tensor([-0.5, -0.02, 0.02, 0.5])
    binary = GL.hat_mask(e, 800.0, binary=True)
    assert torch.equal(binary, torch.tensor([0.0, 0.0, 1.0, 1.0]))
    # σ(800·0.02) = σ(16) = 1 − 1.1e−7: the soft mask at s_max is the binary one
    assert torch.allclose(GL.hat_mask(e, 800.0, binary=False), binary, atol=2e-7)
    # at s = 1/s_max every unit is half open
    assert torch.allclose(GL.hat_mask(e, 1 / 800, binary=False), torch.full((4,), 0.5), atol=1e-3)


def test_compensation_factor_by_hand():
    # e = 0: s_max/s·(cosh 0 + 1)/(cosh 0 + 1) = s_max/s
    assert GL.compensation(torch.tensor([0.0]), 1.0, 800.0).item() == pytest.approx(800.0)
    # e = 1, s = 2, s_max = 4: 2·(cosh 2 + 1)/(cosh 1 + 1)
    want = 2 * (math.cosh(2) + 1) / (math.cosh(1) + 1)
    assert GL.compensation(torch.tensor([1.0]), 2.0, 4.0).item() == pytest.approx(want, rel=1e-6)
    # the clamp: s·e = 100 is clamped to 50
    want = 1 * (math.cosh(50) + 1) / (math.cosh(1) + 1)
    assert GL.compensation(torch.tensor([1.0]), 100.0, 100.0).item() == pytest.approx(want, rel=1e-5)


def test_scaled_gradient_keeps_the_value_and_scales_the_gradient():
    x = torch.tensor([0.3, -1.2], requires_grad=True)
    y = GL.with_scaled_grad(x, torch.tensor([2.0, 5.0]))
    assert torch.equal(y.detach(), x.detach())
    (y * torch.tensor([1.0, 3.0])).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([2.0, 15.0]))


def test_sparsity_regulariser_by_hand():
    m = [torch.tensor([1.0, 0.0, 0.5, 0.5])]
    # task 0: λ·mean(m) = 0.5·0.5
    assert LS.hat_regulariser(m, None, 0.5).item() == pytest.approx(0.25)
    # free units [0, 1, 1, 0]: Σ m·free = 0.5, Σ free = 2 → λ·0.25
    pre = [torch.tensor([1.0, 0.0, 0.0, 1.0])]
    assert LS.hat_regulariser(m, pre, 0.5).item() == pytest.approx(0.125)
    # two masks are pooled: second mask [1, 1] with free [1, 0] → (0.5 + 1)/(2 + 1)
    m2, pre2 = m + [torch.tensor([1.0, 1.0])], pre + [torch.tensor([0.0, 1.0])]
    assert LS.hat_regulariser(m2, pre2, 1.0).item() == pytest.approx(0.5)
    # every unit claimed: nothing to penalise
    assert LS.hat_regulariser(m, [torch.ones(4)], 1.0).item() == 0.0


def test_frozen_entries_are_the_claimed_outer_product():
    out, inp = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0, 0.0])
    assert torch.equal(GL.frozen_entries(out, inp), torch.tensor([[True, True, False], [False, False, False]]))
    assert torch.equal(GL.frozen_entries(out, None), torch.tensor([True, False]))


def test_losses_by_hand():
    logits, y = torch.tensor([[math.log(3.0), 0.0]]), torch.tensor([0])
    # BCE: mean of −log σ(ln 3) = −log ¾ and −log(1 − σ(0)) = log 2
    assert LS.seen_classes_loss(logits, y, "bce").item() == pytest.approx((-math.log(0.75) + math.log(2)) / 2)
    assert LS.seen_classes_loss(logits, y, "ce").item() == pytest.approx(math.log(4 / 3))


# -- network pieces ----------------------------------------------------------------------------
def test_masked_channels_of_the_class_token_pass_unchanged():
    torch.manual_seed(0)
    blk = GL.GatedClassAttention(8, 2, 2.0)
    cls, x = torch.randn(3, 1, 8), torch.randn(3, 5, 8)
    m0 = torch.tensor([1.0, 1, 0, 0, 1, 0, 1, 1])
    out, attn = blk(cls, x, m0, torch.ones(16))
    closed = m0 == 0
    assert torch.equal(out[..., closed], cls[..., closed])  # every residual branch is gated by m0
    assert not torch.allclose(out[..., ~closed], cls[..., ~closed])
    assert attn.shape == (3, 2, 1, 6) and torch.allclose(attn.sum(-1), torch.ones(3, 2, 1))
    # all-open masks are the ungated block
    a, _ = blk(cls, x, torch.ones(8), torch.ones(16))
    b, _ = blk(cls, x)
    assert torch.allclose(a, b)


class Affine(nn.Module):
    def __init__(self, k: float) -> None:
        super().__init__()
        self.k = k

    def forward(self, x):
        return 10 * x + self.k


def test_cascade_order_and_identity():
    x = torch.tensor([1.0])
    projs = [nn.Identity(), Affine(1), Affine(2), Affine(3)]
    # from task 3 to task 1: P_2(P_3(x)) = 10·(10x + 3) + 2
    assert GL.cascade(x, projs, 3, 1).item() == pytest.approx(132.0)
    assert torch.equal(GL.cascade(x, projs, 2, 2), x)
    ident = [nn.Identity()] * 4
    assert torch.equal(GL.cascade(x, ident, 3, 0), x)
    with pytest.raises(ValueError):
        GL.cascade(x, projs, 1, 2)


def test_eval_reads_old_tasks_through_the_cascade():
    torch.manual_seed(0)
    m = GL.GatedCAViT([2, 2, 2], image_size=16, dim=16, depth=1, heads=2, mlp_ratio=2.0, gated=True, fdc=True)
    m.task.fill_(2)
    m.eval()
    feats = torch.randn(4, 16, 16)
    with torch.no_grad():
        comp, _ = m.classify(feats)
        raw, _ = m.classify(feats, compensate=False)
        # the newest task never goes through a projector; old ones do
        assert torch.equal(comp[:, 4:], raw[:, 4:]) and not torch.allclose(comp[:, :4], raw[:, :4])
        # task 0 reads P_1(P_2(feats)): the same as running the raw path on the cascaded features
        m.task.fill_(0)
        direct, _ = m.classify(m.projectors[1](m.projectors[2](feats)), compensate=False)
        assert torch.allclose(comp[:, :2], direct[:, :2], atol=1e-6)
        # identity projectors: compensation changes nothing
        m.task.fill_(2)
        m.projectors = nn.ModuleList([nn.Identity()] * 3)
        assert torch.allclose(m.classify(feats)[0], raw, atol=1e-6)
        assert torch.equal(comp[:, 6:], torch.zeros(4, 0))


# -- the learners on a fake stream ---------------------------------------------------------------
class Snap(G.GCAB):
    """GCAB that keeps a copy of the model after task 0."""

    def post_train(self, model, t, stream):
        extra = super().post_train(model, t, stream)
        if t == 0:
            self.after0 = copy.deepcopy(model)
        return extra


def test_old_task_class_attention_stays_bit_identical(stream):
    learner = Snap(tiny_cfg())
    res = run_stream(stream, learner, seed=0, progress=False)
    before, after = learner.after0, res.model
    pre0 = (before.e0[0] > 0).float()
    pre2 = (before.e2[0] > 0).float()
    assert torch.equal(before.mask_pre0, pre0) and torch.equal(before.mask_pre2, pre2)
    changed_free = 0
    for name, (layer, out, inp) in after.tab.gated_linears().items():
        old = dict(before.tab.named_modules())[name]
        pre = {"m0": pre0, "m2": pre2}
        fz = GL.frozen_entries(pre[out], pre[inp])
        assert torch.equal(layer.weight[fz], old.weight[fz]), name
        changed_free += int((layer.weight[~fz] != old.weight[~fz]).sum())
        if layer.bias is not None:
            fb = GL.frozen_entries(pre[out], None)
            assert torch.equal(layer.bias[fb], old.bias[fb]), name
    assert changed_free > 0, "the unclaimed units must stay trainable"
    for name in ("norm1", "norm2"):
        assert torch.equal(getattr(after.tab, name).weight, getattr(before.tab, name).weight)
    assert torch.equal(after.tokens[0], before.tokens[0]) and torch.equal(after.heads[0].weight, before.heads[0].weight)
    assert torch.equal(after.e0[0], before.e0[0]) and torch.equal(after.e2[0], before.e2[0])
    # hence task 0's branch gives the same logits on the same features
    feats = torch.randn(3, 16, 16)
    with torch.no_grad():
        before.eval(), after.eval()
        a, _ = before.classify(feats)
        after.task.fill_(0)
        b, _ = after.classify(feats)
    assert torch.equal(a[:, :2], b[:, :2])
    # the backbone did move (plasticity), and the drift was measured against task 0's features
    assert not torch.equal(after.patch_embed.proj.weight, before.patch_embed.proj.weight)
    drift = res.extras[2]["drift"]
    assert [d["task"] for d in drift] == [0, 1] and all(d["raw"] > 0 and "compensated" in d for d in drift)
    assert res.extras[0]["drift"] == [] and 0 < res.extras[0]["mask_usage"]["m2"] <= 1


def test_finetune_trains_shared_weights_but_freezes_old_tokens_and_heads(stream):
    learner = make(G.TokenFineTune, tiny_cfg(), stream)
    model = learner.build(stream.num_classes)
    learner.loss_fn(1, 4, 2)  # set up task 1
    assert not model.tokens[0].requires_grad and model.tokens[1].requires_grad
    assert not any(p.requires_grad for p in model.heads[0].parameters())
    assert all(p.requires_grad for p in model.tab.parameters()) and model.projectors is None
    res = run_stream(stream, G.TokenFineTune(tiny_cfg()), seed=0, progress=False)
    assert "mask_usage" not in res.extras[0] and len(res.matrix.rows) == 3


def test_one_training_step_gives_the_new_gate_a_gradient(stream):
    learner = make(G.GCAB, tiny_cfg(), stream)
    model = learner.build(stream.num_classes)
    fn = learner.loss_fn(0, 2, 0)
    x, y = next(iter(stream.train_loader(stream.train_indices(0), 8)))
    loss, logits = fn(model, x, y)
    loss.backward()
    assert logits.shape == (8, 2) and model.s == pytest.approx(1 / 800)
    assert model.e0.grad[0].abs().sum() > 0 and model.e0.grad[1:].abs().sum() == 0


def test_the_learners_are_registered_arms_and_the_chapter_sweeps_them(stream, tmp_path, monkeypatch):
    assert {a: arms.get("incremental", a).impl for a in ("token_finetune", "gated", "gcab")} == {
        "token_finetune": G.TokenFineTune, "gated": G.GatedOnly, "gcab": G.GCAB}
    assert all(o == {"memory": 0} for _, o in G.PLAN.values()) and G.LABELS == ("finetune", "gated", "gcab")
    monkeypatch.setenv("REPRO_CHECKPOINTS", str(tmp_path / "ckpt"))
    spec = load_spec("gcab")
    params = spec.resolve("smoke", {"classes": 6, "scenario": "B0-Inc2", "per_class": 16, "test_per_class": 4,
                                    "image_size": 16, "seeds": [0, 1], "dim": 16, "depth": 1, "heads": 2,
                                    "probe_images": 8, "batch_size": 8})
    run = Run(spec, params, torch.device("cpu"), folder=tmp_path / "run")
    assert protocol.configs(run, G.PLAN)["gcab"][1].memory == 0  # the protocol's memory is not used
    res = protocol.sweep(run, protocol.stream(run), G.PLAN, progress=False)
    claims = {c.id: run.claim_values(c) for c in spec.claims}
    assert claims["gcab_less_forgetting"] == {str(s): v for s, v in res.paired("forgetting", "finetune", "gcab").items()}
    assert claims["fdc_helps"]["1"] == pytest.approx(res.value("gcab", 1, "aia") - res.value("gated", 1, "aia"))
    assert "| task (gcab) |" in tables.mask_markdown(res, "gcab") and tables.mask_markdown(res, "finetune") == ""
    fig, data = figures.plot_drift_and_masks(res, "t")
    assert set(data["mask_usage"]) == {"gated", "gcab"} and "gcab_compensated" in data["drift_task1"]
    D = figures.drift_table(res, "gcab")
    assert D["raw"].shape == (3, 3) and np.isnan(D["raw"][0, 0]) and D["raw"][2, 0] > 0


# -- bad inputs fail before training -------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(dim=30, heads=4), dict(smax=1.0), dict(lambda_gcab=-1.0), dict(loss="mse"),
                                dict(patch_size=3), dict(optimizer="adam"), dict(probe_images=0)])
def test_bad_config_raises(kw):
    with pytest.raises(ValueError):
        tiny_cfg(**kw)


def test_bad_learner_inputs_raise(stream):
    with pytest.raises(ValueError, match="exemplar-free"):
        G.GCAB(tiny_cfg(memory=10))
    with pytest.raises(ValueError, match="image_size"):
        make(G.GCAB, tiny_cfg(image_size=32), stream).build(stream.num_classes)
    with pytest.raises(ValueError, match="setup"):
        G.GCAB(tiny_cfg()).build(6)
    with pytest.raises(TypeError):
        G.GCAB(G.IncrementalConfig(memory=0))
    with pytest.raises(ValueError):
        GL.GatedCAViT([2, 0])
