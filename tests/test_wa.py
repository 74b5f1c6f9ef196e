"""Chapter 24 (WA): weight aligning, weight clipping, the KD weighting and the bias records,
checked against hand-computed values; bad inputs fail before any training."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from repro import arms, models
from repro.errors import ParameterError
from repro.families.incremental import figures, protocol, tables
from repro.families.incremental.arms import wa
from repro.families.incremental.learners import run_stream
from repro.papers import load_spec
from repro.run import Run


def _layer(weight, bias=None) -> nn.Linear:
    w = torch.tensor(weight, dtype=torch.float32)
    layer = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(w)
        if bias is not None:
            layer.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return layer


# rows: two old classes (norms 5 and 2, mean 3.5), two new ones (norms 10 and 4, mean 7),
# and one class not seen yet; γ = 3.5 / 7 = 0.5
W = [[3.0, 4.0], [0.0, 2.0], [6.0, 8.0], [0.0, 4.0], [9.0, 9.0]]
B = [1.0, 2.0, 3.0, 4.0, 5.0]


def test_gamma_by_hand_and_only_new_rows_scaled():
    layer = _layer(W, B)
    assert wa.align_gamma(layer.weight, old=2, seen=4) == pytest.approx(0.5)
    gamma = wa.weight_align(layer, old=2, seen=4)
    assert gamma == pytest.approx(0.5)
    assert layer.weight.tolist() == [[3.0, 4.0], [0.0, 2.0], [3.0, 4.0], [0.0, 2.0], [9.0, 9.0]]
    assert layer.bias.tolist() == B  # biases are left alone by default


def test_align_bias_scales_the_new_biases_only():
    layer = _layer(W, B)
    wa.weight_align(layer, old=2, seen=4, bias=True)
    assert layer.bias.tolist() == [1.0, 2.0, 1.5, 2.0, 5.0]


def test_aligned_mean_norms_are_equal():
    torch.manual_seed(0)
    layer = nn.Linear(16, 10)
    with torch.no_grad():
        layer.weight[3:7] *= 4.0  # the new classes are longer
    wa.weight_align(layer, old=3, seen=7)
    norms = layer.weight.norm(dim=1)
    assert norms[3:7].mean().item() == pytest.approx(norms[:3].mean().item(), rel=1e-5)


def test_clipping_zeroes_exactly_the_negative_weights():
    layer = _layer([[-1.0, 2.0], [0.5, -0.25]], [-3.0, 1.0])
    wa.clip_nonnegative(layer)
    assert layer.weight.tolist() == [[0.0, 2.0], [0.5, 0.0]]
    assert layer.bias.tolist() == [-3.0, 1.0]


def test_kd_balance_is_old_over_seen():
    assert wa.kd_balance(0, 5) == 0.0
    assert wa.kd_balance(10, 15) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        wa.kd_balance(5, 5)


def test_new_class_share_counts_argmax_over_seen_classes():
    # seen = 3 (labels 0..2), newest class: 2; the last image's largest logit is in unseen class 3
    logits = torch.tensor([[0.0, 0.0, 5.0, 0.0], [5.0, 0.0, 0.0, 0.0], [0.0, 1.0, 2.0, 0.0],
                           [0.0, 3.0, 1.0, 9.0]])
    assert wa.new_class_share(logits, seen_before=2, seen=3) == pytest.approx(50.0)


def test_head_linear_of_a_two_fc_model_is_its_last_layer():
    m = models.create("cnn3_mlp", num_classes=7, width=4, hidden=8)
    assert wa.head_linear(m) is m.head[-1] and wa.head_linear(m).out_features == 7


def _naive_loss(logits, old_logits, y, seen, old, T, mode, w):
    """(1 − λ)·CE + λ·KD (paper) or CE + w·KD (pycil), one image at a time."""
    ce, kd = 0.0, 0.0
    for z, zo, c in zip(logits.tolist(), old_logits.tolist(), y.tolist()):
        z = z[:seen]
        ce += -(z[c] - math.log(sum(math.exp(v) for v in z)))
        zs, zt = [v / T for v in z[:old]], [v / T for v in zo[:old]]
        lse_s, lse_t = math.log(sum(math.exp(v) for v in zs)), math.log(sum(math.exp(v) for v in zt))
        kd += -sum(math.exp(t - lse_t) * (s - lse_s) for s, t in zip(zs, zt))
    ce, kd = ce / len(y), kd / len(y)
    lam = old / seen
    return (1 - lam) * ce + lam * kd if mode == "paper" else ce + w * kd


@pytest.mark.parametrize("mode", ["paper", "pycil"])
def test_loss_matches_a_naive_computation(mode):
    torch.manual_seed(1)
    cfg = wa.WAConfig(arch="cnn3", arch_width=4, kd_temperature=2.0, kd_weight=2.0, align=True, clip_weights=False,
                      kd_mode=mode)
    learner = wa.WeightAligning(cfg)
    model = learner.build(6).eval()
    learner.old_model = learner.build(6).eval()
    x, y = torch.randn(5, 3, 8, 8), torch.tensor([0, 1, 2, 3, 2])
    loss, logits = learner.loss_fn(1, seen=4, seen_before=2)(model, x, y)
    with torch.no_grad():
        expect = _naive_loss(model(x), learner.old_model(x), y, 4, 2, 2.0, mode, 2.0)
    assert loss.item() == pytest.approx(expect, rel=1e-5)
    assert logits.shape == (5, 4)
    # first task: plain CE over the seen classes, no teacher
    y0 = torch.tensor([0, 1, 1, 0, 1])
    loss0, _ = learner.loss_fn(0, seen=2, seen_before=0)(model, x, y0)
    assert loss0.item() == pytest.approx(nn.functional.cross_entropy(model(x)[:, :2], y0).item(), rel=1e-5)


def test_clipping_learner_clips_before_each_forward():
    learner = wa.WeightAligning(wa.WAConfig(arch="cnn3", arch_width=4, clip_weights=True))
    model = learner.build(6)
    assert (model.head.weight < 0).any()
    learner.loss_fn(0, 2, 0)(model, torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))
    assert (model.head.weight >= 0).all()


def test_bad_inputs_fail_before_training():
    with pytest.raises(ValueError, match="kd_mode"):
        wa.WAConfig(arch="cnn3", kd_mode="bic")
    with pytest.raises(ValueError, match="kd_weight"):
        wa.WAConfig(arch="cnn3", kd_mode="pycil", kd_weight=-1.0)
    with pytest.raises(ParameterError, match="kd_mode"):
        arms.make_config(wa.WAConfig, {"kd_mode": "lwf"})
    with pytest.raises(TypeError, match="WAConfig"):
        wa.WeightAligning(wa.IncrementalConfig(arch="cnn3"))
    with pytest.raises(ValueError, match="norm_seed"):
        wa.check_norm_seed(5, [0, 1])
    with pytest.raises(ValueError, match="old"):
        wa.align_gamma(torch.ones(4, 2), old=0, seen=2)
    with pytest.raises(ValueError, match="old"):
        wa.align_gamma(torch.ones(4, 2), old=2, seen=5)
    with pytest.raises(ValueError, match="zero"):
        wa.align_gamma(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), old=1, seen=2)


def test_wa_is_a_registered_arm_and_the_chapter_plan_switches_its_parts():
    a = arms.get("incremental", "wa")
    assert a.impl is wa.WeightAligning and a.config is wa.WAConfig
    plan = wa.chapter_plan(clip_weights=True, with_align_only=True)
    assert list(plan) == ["finetune", "replay_kd", "wa", "wa_noclip"]
    made = {label: arms.make_config(arms.get("incremental", name).config, {"arch": "cnn3"}, **o)
            for label, (name, o) in plan.items()}
    rk, w, nc = (wa.WeightAligning(made[k]) for k in ("replay_kd", "wa", "wa_noclip"))
    assert (rk.align, rk.clip, w.align, w.clip, nc.align, nc.clip) == (False, False, True, True, True, False)
    assert type(made["finetune"]) is wa.IncrementalConfig
    assert list(wa.chapter_plan(clip_weights=False, with_align_only=True)) == ["finetune", "replay_kd", "wa"]


def test_bias_metrics_by_hand():
    extras = [{"task": 0, "seen": 2, "share_before": 100.0, "share_after": 100.0, "true_share": 100.0},
              {"task": 1, "seen": 4, "seen_before": 2, "norm_ratio_before": 1.2, "share_before": 90.0,
               "share_after": 70.0, "true_share": 50.0, "gamma": 1 / 1.2},
              {"task": 2, "seen": 6, "seen_before": 4, "norm_ratio_before": 1.5, "share_before": 80.0,
               "share_after": 40.0, "true_share": 100 / 3, "gamma": 1 / 1.5}]
    b = wa.bias_metrics(extras)
    assert b["new_share_excess"] == pytest.approx(40.0 - 100 / 3)
    assert b["new_share_abs_excess"] == pytest.approx(40.0 - 100 / 3)
    assert b["new_share_excess_unaligned"] == pytest.approx(80.0 - 100 / 3)
    assert b["norm_excess_last"] == pytest.approx(50.0)
    assert b["norm_excess_mean"] == pytest.approx(35.0)
    assert wa.bias_metrics([{}]) == {} and wa.bias_metrics([]) == {}
    b = wa.bias_metrics([extras[0], {**extras[1], "share_after": 20.0}])
    assert b["new_share_excess"] == -30.0 and b["new_share_abs_excess"] == 30.0


PARAMS = dict(tier="smoke", classes=6, scenario="B0-Inc2", order_seed=1993, per_class=8, test_per_class=4,
              image_size=8, data_seed=0, memory=6, memory_mode="herding", seeds=[0, 1], arch="cnn3",
              arch_width=4, epochs=1, epochs_first=0, lr=0.05, weight_decay=5e-4, schedule="cosine",
              milestones=[0.5], batch_size=8, kd_temperature=2.0, kd_mode="paper", kd_weight=2.0,
              clip_weights=True, align_bias=False, with_align_only=False, norm_seed=0)


@pytest.fixture
def run(fake_data, tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("REPRO_CHECKPOINTS", str(tmp_path / "ckpt"))
    return Run(load_spec("wa"), dict(PARAMS), torch.device("cpu"))


def test_a_stream_records_norms_and_shares_and_aligns(run):
    stream = protocol.stream(run)
    res = run_stream(stream, wa.WeightAligning(protocol.config(wa.WAConfig, run)), seed=0, progress=False)
    assert [e["task"] for e in res.extras] == [0, 1, 2] and res.extras[0]["gamma"] is None
    for e in res.extras[1:]:
        old, seen = e["seen_before"], e["seen"]
        nb, na = np.asarray(e["norms_before"]), np.asarray(e["norms_after"])
        assert e["gamma"] == pytest.approx(nb[:old].mean() / nb[old:].mean(), rel=1e-5)
        assert na[old:].mean() == pytest.approx(na[:old].mean(), rel=1e-5)  # aligned
        assert np.allclose(na[:old], nb[:old])                              # old rows untouched
        assert e["true_share"] == pytest.approx(100 * 2 / seen)
        assert e["norm_ratio_before"] == pytest.approx(1 / e["gamma"], rel=1e-5)
    assert (res.model.head.weight >= 0).all()  # clipped after the last update too
    # the teacher of the next task would be the aligned model: the final model's rows are aligned
    final = wa.class_norms(res.model.head.weight, 6)
    assert final[4:].mean().item() == pytest.approx(final[:4].mean().item(), rel=1e-5)


def test_chapter_sweep_rows_claims_and_figures(run):
    stream = protocol.stream(run)
    plan = wa.chapter_plan(clip_weights=True)
    res = protocol.sweep(run, stream, plan, progress=False)
    for s in (0, 1):
        assert res.value("replay_kd", s, "new_share_excess") == res.value("replay_kd", s, "new_share_excess_unaligned")
        assert res.value("wa", s, "new_share_abs_excess") == abs(res.value("wa", s, "new_share_excess"))
    # the claims pair the rows by seed: |excess(replay_kd)| − |excess(wa)|, aia(wa) − aia(replay_kd)
    claims = {c.id: c for c in run.spec.claims}
    bias = run.claim_values(claims["wa_reduces_new_class_bias"])
    assert bias["1"] == pytest.approx(res.value("replay_kd", 1, "new_share_abs_excess")
                                      - res.value("wa", 1, "new_share_abs_excess"))
    assert run.claim_values(claims["wa_raises_aia"]) == {str(s): v for s, v in res.paired("aia", "wa", "replay_kd").items()}
    assert run.claim_values(claims["kd_new_norms_larger"])["0"] == res.value("replay_kd", 0, "norm_excess_last")
    assert "norm_excess_last" not in res.of("finetune")[0]["metrics"]
    md = tables.bias_markdown(res, list(plan))
    assert "| replay_kd (n=2) |" in md and "| wa (n=2) |" in md and "finetune" not in md
    fig, data = figures.plot_norms(res, 0, "test setting")
    assert data["seen"] == 6 and data["old"] == 4 and len(data["norms_after"]) == 6
    assert set(data["ratios"]) == {"replay_kd", "wa"} and data["ratios"]["wa"]["seen"] == [4, 6]
    fig, data = figures.plot_new_share(res, "test setting")
    assert "before" in data["wa"] and "before" not in data["replay_kd"]
    assert data["true_share"]["share"] == pytest.approx([50.0, 100 / 3])
    with pytest.raises(ValueError, match="seed 7"):
        figures.plot_norms(res, 7, "test setting")


def test_arm_colors_follow_the_curves_order():
    res = [{"arm": "finetune"}, {"arm": "replay_kd"}, {"arm": "wa"}, {"arm": "finetune"}]
    assert figures.arm_colors(res) == {"finetune": "C0", "replay_kd": "C1", "wa": "C2"}
