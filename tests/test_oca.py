"""Chapter 01 (OCA): leave-one-out mAP and CMC on a hand-made example, the truncation rule,
the losses by hand, the orthogonal layer, the pseudo-classifier, the per-seed metrics and a
tiny end-to-end run on fake data (with resume)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from repro import arms
from repro.families.incremental import figures, protocol, tables
from repro.families.incremental.arms import oca as C
from repro.families.incremental.stream import make_stream
from repro.losses import incremental as L
from repro.papers import load_spec
from repro.run import Run

# Six unit vectors at these angles (degrees) with these labels. Cosine similarity ranks by
# angular distance, and no two distances from one query tie.
ANGLES = [0, 20, 50, 90, 140, 170]
LABELS = [0, 0, 1, 1, 0, 1]
# Leave-one-out rankings by hand (relevant = same label), AP = mean precision at the relevant ranks:
#  q0: x1✓ x2 x3 x4✓ x5 → (1/1 + 2/4)/2 = .75      q1: x0✓ x2 x3 x4✓ x5 → .75
#  q2: x1 x3✓ x0 x4 x5✓ → (1/2 + 2/5)/2 = .45      q3: x2✓ x4 x1 x5✓ x0 → (1 + 2/4)/2 = .75
#  q4: x5 x3 x2 x1✓ x0✓ → (1/4 + 2/5)/2 = .325     q5: x4 x3✓ x2✓ x1 x0 → (1/2 + 2/3)/2 = .58333
HAND_AP = [0.75, 0.75, 0.45, 0.75, 0.325, 0.5 + 1 / 12]
HAND_TOP1 = [1, 1, 0, 1, 0, 0]
HAND_TOP2 = [1, 1, 1, 1, 0, 1]


def _points() -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.tensor(ANGLES, dtype=torch.float64) * math.pi / 180
    return torch.stack([a.cos(), a.sin()], 1).float(), torch.tensor(LABELS)


def test_leave_one_out_map_and_cmc_on_the_hand_example():
    x, y = _points()
    m = C.retrieval_metrics(x * 3.0, y, x, y, topk=(1, 2), chunk=4)  # query scale is irrelevant; 2 chunks
    assert m["map"] == pytest.approx(100 * np.mean(HAND_AP), abs=1e-4)
    assert m["map"] == pytest.approx(60.138889, abs=1e-4)
    assert m["top1"] == pytest.approx(100 * np.mean(HAND_TOP1))
    assert m["top2"] == pytest.approx(100 * np.mean(HAND_TOP2))
    assert m["queries"] == 6


def _naive(q, yq, g, yg, loo, ks):
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    aps, hits = [], {k: [] for k in ks}
    for i in range(len(q)):
        items = [j for j in range(len(g)) if not (loo and j == i)]
        items.sort(key=lambda j: -float(q[i] @ g[j]))  # sort is stable: ties keep gallery order
        rel = [yg[j] == yq[i] for j in items]
        if not any(rel):
            continue
        found, prec = 0, []
        for r, ok in enumerate(rel, 1):
            if ok:
                found += 1
                prec.append(found / r)
        aps.append(np.mean(prec))
        for k in ks:
            hits[k].append(any(rel[:k]))
    return 100 * np.mean(aps), {k: 100 * np.mean(v) for k, v in hits.items()}, len(aps)


@pytest.mark.parametrize("loo", [True, False])
def test_map_equals_a_naive_loop(loo):
    g = torch.Generator().manual_seed(0)
    q, yq = torch.randn(23, 5, generator=g), torch.randint(0, 4, (23,), generator=g)
    gal, yg = (q, yq) if loo else (torch.randn(17, 5, generator=g), torch.randint(0, 5, (17,), generator=g))
    m = C.retrieval_metrics(q, yq, gal, yg, leave_one_out=loo, topk=(1, 5), chunk=7)
    mAP, hits, n = _naive(q.double().numpy(), yq.numpy(), gal.double().numpy(), yg.numpy(), loo, (1, 5))
    assert m["map"] == pytest.approx(mAP, abs=1e-4) and m["queries"] == n
    assert m["top1"] == pytest.approx(hits[1]) and m["top5"] == pytest.approx(hits[5])


def test_truncation_rule_ignores_the_extra_dimensions():
    q = torch.tensor([[3.0, 4.0, 100.0], [0.0, 1.0, -7.0]])
    g = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    a, b = C.match_dims(q, g)
    assert a.shape == (2, 2) and b.shape == (2, 2)
    assert torch.allclose(a, torch.tensor([[0.6, 0.8], [0.0, 1.0]])) and torch.allclose(b, torch.eye(2))
    y = torch.tensor([0, 1])
    assert C.retrieval_metrics(q, y, g, y, leave_one_out=False) == C.retrieval_metrics(q[:, :2], y, g, y, leave_one_out=False)
    # a "new" model whose first two coordinates are the "old" feature and whose third is large:
    # compared with the old gallery, only the shared part counts, so new/old = old/old exactly
    old = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    new = torch.cat([old, torch.tensor([[0.0], [0.0], [5.0], [-5.0]])], 1)
    labels = torch.tensor([0, 0, 1, 1])
    full = C.compatibility_matrix(old, new, labels)
    assert set(full) == {"old_old", "new_old", "new_new", "old_new"}
    assert full["old_old"]["map"] == pytest.approx(75.0, abs=1e-4)  # APs 1, ½, ½, 1 by hand
    assert full["new_old"] == full["old_old"] == full["old_new"]
    assert full["new_new"]["map"] != pytest.approx(75.0, abs=1e-2)  # the third coordinate reorders


CE_1_0 = math.log(1 + math.exp(-1))   # CE of logits [1, 0] at class 0 = 0.313262
CE_2_0 = math.log(1 + math.exp(-2))   # 0.126928


def test_influence_and_alignment_by_hand():
    P, y = torch.eye(2), torch.tensor([0])
    assert L.influence_loss(torch.tensor([[5.0, 0.0]]), P, y, 0.0).item() == pytest.approx(CE_1_0, abs=1e-6)
    # label smoothing 0.1 over 2 classes: 0.9·CE + 0.1·mean_c(−log p_c)
    ls = 0.9 * CE_1_0 + 0.1 * (CE_1_0 + (1 + CE_1_0)) / 2
    assert L.influence_loss(torch.tensor([[5.0, 0.0]]), P, y, 0.1).item() == pytest.approx(ls, abs=1e-6)
    assert L.alignment_loss(torch.tensor([[1.0, 1.0]]), P, y).item() == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)


class Stub(nn.Module):
    """features(x) = a fixed f, classify(f) = fixed logits [2, 0]: the losses' terms by hand."""

    def __init__(self, f):
        super().__init__()
        self.f = nn.Parameter(torch.tensor(f))

    def features(self, x):
        return self.f.expand(x.shape[0], -1)

    def classify(self, f):
        return torch.tensor([[2.0, 0.0]]).expand(f.shape[0], -1) + 0 * f.sum()


def test_bct_and_oca_losses_by_hand():
    cfg = C.CompatConfig(arch="cnn3", embed_dim=2, extra_dim=1, label_smoothing=0.0)
    P, x, y = torch.eye(2), torch.zeros(1, 3, 8, 8), torch.tensor([0])
    loss, logits = C.loss_fn("bct", cfg, P)(Stub([1.0, 0.0]), x, y)
    assert loss.item() == pytest.approx(CE_2_0 + 10 * CE_1_0, abs=1e-5) and logits.shape == (1, 2)
    # OCA: the extra coordinate (here 7) is ignored by influence and alignment (f_old = [1, 0])
    loss, _ = C.loss_fn("oca", cfg, P)(Stub([1.0, 0.0, 7.0]), x, y)
    assert loss.item() == pytest.approx(5 * CE_2_0 + 10 * CE_1_0 + 5 * 0.0, abs=1e-5)
    loss, _ = C.loss_fn("oca", cfg, P)(Stub([1.0, 1.0, 0.0]), x, y)  # f_old at 45°: cosine 1/√2 to P[0]
    infl = math.log(1 + math.exp(0.0))  # normalised [1/√2, 1/√2] · I: equal logits
    assert loss.item() == pytest.approx(5 * CE_2_0 + 10 * infl + 5 * (1 - 1 / math.sqrt(2)), abs=1e-5)


def test_orthogonal_layer_stays_orthogonal_after_a_step():
    torch.manual_seed(0)
    cfg = C.CompatConfig(arch="cnn3", arch_width=4, embed_dim=6, extra_dim=2)
    net = C.build(cfg, 3, "oca")
    assert net.dim == 8 and net.ortho_error() < 1e-5
    W0 = net.transform.weight.detach().clone()
    opt = torch.optim.AdamW(net.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    loss, _ = C.loss_fn("oca", cfg, torch.randn(3, 6))(net, x, y)
    loss.backward()
    opt.step()
    W = net.transform.weight.detach()
    assert not torch.allclose(W, W0)               # the step moved W …
    assert net.ortho_error() < 1e-4                # … and WᵀW = I still
    f = net.features(x).detach()
    assert f.shape == (4, 8) and torch.allclose(f.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.allclose((f @ W.T).norm(dim=1), torch.ones(4), atol=1e-4)  # W preserves norms
    plain = C.build(cfg, 3, "oca_no_ortho")
    assert plain.dim == 8 and plain.ortho_error() == 0.0 and isinstance(plain.transform, nn.Identity)
    assert C.build(cfg, 3, "bct").dim == 6 and C.build(cfg, 3, "old").dim == 6
    with pytest.raises(ValueError, match="role"):
        C.build(cfg, 3, "bt2")


@pytest.mark.parametrize("kw,match", [
    ({"extra_dim": -1}, "extra_dim"), ({"embed_dim": 0}, "embed_dim"), ({"epochs": 0}, "epochs"),
    ({"pseudo_classifier": "mean"}, "pseudo_classifier"), ({"arch": "resnet9000"}, "unknown arch"),
    ({"lr": 0.0}, "lr"), ({"optimizer": "adam"}, "optimizer"), ({"label_smoothing": 1.0}, "label_smoothing"),
    ({"w_align": -1.0}, "w_align"), ({"bct_weight": float("nan")}, "bct_weight"), ({"batch_size": True}, "batch_size"),
])
def test_bad_configuration_fails_before_training(kw, match):
    with pytest.raises(ValueError, match=match):
        C.CompatConfig(**{"arch": "cnn3", **kw})


def test_bad_arms_split_and_inputs():
    assert C.chapter_arms(False) == ["independent", "bct", "oca"]
    assert C.chapter_arms(True)[-1] == "oca_no_ortho"
    for bad in (["oca", "oca"], ["bt2"], []):
        with pytest.raises(ValueError, match="arms"):
            C.check_arms(bad)
    with pytest.raises(ValueError, match="ablation"):
        C.chapter_arms("yes")
    assert C.chapter_plan(True) == {a: (a, {}) for a in C.ARMS}
    assert all(arms.get("incremental", a).config is C.CompatConfig for a in C.ARMS)
    assert arms.get("incremental", "oca").impl(C.CompatConfig(arch="cnn3", embed_dim=4)).build(3).dim == 4 + 32
    assert C.old_classes(100) == 50 and C.old_classes(20) == 10 and C.old_classes(5) == 2
    with pytest.raises(ValueError, match="at least 2"):
        C.old_classes(1)
    cfg = C.CompatConfig(arch="cnn3", embed_dim=4)
    with pytest.raises(ValueError, match="pseudo-classifier"):
        C.loss_fn("bct", cfg)
    with pytest.raises(ValueError, match="columns"):
        C.loss_fn("oca", cfg, torch.zeros(3, 5))
    with pytest.raises(ValueError, match="role"):
        C.loss_fn("bt2", cfg, torch.zeros(3, 4))
    x, y = _points()
    with pytest.raises(ValueError, match="length"):
        C.retrieval_metrics(x, y[:5], x, y)
    with pytest.raises(ValueError, match="Q = G"):
        C.retrieval_metrics(x, y, x[:5], y[:5])


def test_per_seed_numbers_of_the_old_and_the_new_models():
    pairs = {"old_old": {"map": 20.0, "top1": 21.0}, "new_old": {"map": 22.0, "top1": 23.0},
             "new_new": {"map": 29.5, "top1": 30.5}}
    assert C.old_metrics({"old_old": pairs["old_old"]}, 50.0) == {
        "map_old_gallery": 20.0, "top1_old_gallery": 21.0, "map_own_gallery": 20.0, "top1_own_gallery": 21.0,
        "acc": 50.0}
    assert C.new_metrics(pairs, 40.0) == {"map_old_gallery": 22.0, "top1_old_gallery": 23.0,
                                          "map_own_gallery": 29.5, "top1_own_gallery": 30.5, "acc": 40.0}


def test_tiny_sweep_pairs_the_claims_and_resumes(fake_data, tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_CHECKPOINTS", str(tmp_path / "ckpt"))
    spec = load_spec("oca")
    params = spec.resolve("smoke", {"classes": 4, "scenario": "B0-Inc2", "per_class": 8, "test_per_class": 4,
                                    "image_size": 16, "seeds": [0, 1], "epochs": 2, "batch_size": 8,
                                    "arch_width": 4, "embed_dim": 6, "extra_dim": 2, "warmup_epochs": 0.0})
    run = Run(spec, params, torch.device("cpu"), folder=tmp_path / "run")
    stream = protocol.stream(run)
    plan = {"independent": ("independent", {}), "oca": ("oca", {})}
    res = protocol.oca_sweep(run, stream, plan, progress=False)
    assert [(j["arm"], j["seed"]) for j in res.jobs] == [(a, s) for s in (0, 1) for a in ("old", "independent", "oca")]
    old, ind, oca = res.jobs[:3]
    assert old["extra"]["classes"] == 2 and ind["extra"]["classes"] == 4 and oca["extra"]["dim"] == 8
    assert set(oca["extra"]["pairs"]) == set(C.PAIRS) and oca["extra"]["pairs"]["new_new"]["queries"] == 16
    assert oca["extra"]["pairs"]["old_old"] == ind["extra"]["pairs"]["old_old"] == old["extra"]["pairs"]["old_old"]
    assert oca["extra"]["ortho_error"] < 1e-4 and len(oca["extra"]["feature_var"]) == 8 and oca["n_test"] == 16
    assert old["train_images"] > 0 and oca["metrics"]["map_old_gallery"] == oca["extra"]["pairs"]["new_old"]["map"]
    claims = {c.id: c for c in spec.claims}
    compat = run.claim_values(claims["oca_backward_compatible"])
    assert compat["1"] == pytest.approx(res.jobs[5]["extra"]["pairs"]["new_old"]["map"]
                                        - res.jobs[3]["extra"]["pairs"]["old_old"]["map"])
    assert run.claim_values(claims["oca_close_to_independent"])["0"] == pytest.approx(
        oca["extra"]["pairs"]["new_new"]["map"] - ind["extra"]["pairs"]["new_new"]["map"])
    assert run.claim_values(claims["oca_beats_bct_new_new"]) is None  # bct was not trained here
    again = protocol.oca_sweep(run, stream, plan, progress=False)  # every job loads its checkpoint
    assert [j["extra"]["pairs"] for j in again.jobs] == [j["extra"]["pairs"] for j in res.jobs]
    assert "| oca (n=2) |" in tables.compatibility_markdown(res, ["independent", "oca"])
    for fn, args in ((figures.plot_compatibility, (res, ["independent", "oca"], "t")),
                     (figures.plot_pairs, (res, ["independent", "oca"], "t")),
                     (figures.plot_feature_variance, (res, ["independent", "oca"], 6, "t"))):
        fig, data = fn(*args)
        assert data["setting"] == "t"
    assert list(data["arms"]) == ["oca"]  # only the arm with extra dimensions


def test_old_head_pseudo_classifier_uses_the_old_rows(fake_data):
    stream = make_stream(classes=4, scenario="B0-Inc2", per_class=4, test_per_class=2, image_size=16)
    torch.manual_seed(0)
    old = C.build(C.CompatConfig(arch="cnn3", arch_width=4, embed_dim=6), 2, "old")
    means = C.pseudo_classifier(old, stream.data.x_train, stream.data.y_train, 4, mode="means")
    head = C.pseudo_classifier(old, stream.data.x_train, stream.data.y_train, 4, mode="old_head")
    assert means.shape == head.shape == (4, 6)
    assert torch.allclose(head[:2], old.classifier.weight.detach()) and torch.allclose(head[2:], means[2:])
    assert bool((means.norm(dim=1) <= 1 + 1e-6).all())  # means of unit vectors
