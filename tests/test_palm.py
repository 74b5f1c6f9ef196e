"""PALM (chapter 31): Sinkhorn, the prototype loss against hand computations and naive loops,
the SimCLR augmentation, and the ``palm``/``ce`` arms on the fake set."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from repro.data import MEAN, STD
from repro.data.augment import SimCLRAugment, hue_rotate, two_views
from repro.losses.prototypes import PALMLoss, sinkhorn

# -- Sinkhorn ------------------------------------------------------------------------------------


def test_sinkhorn_one_iteration_by_hand():
    # exp(scores / eps) = [[1, 2], [3, 4]] (eps = 1). Total mass 10 → columns to 1/2:
    # [[1/8, 1/6], [3/8, 1/3]] → rows to 1/2, then × N = 2: [[3/7, 4/7], [9/17, 8/17]].
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    q = sinkhorn(a.log(), eps=1.0, iters=1)
    assert torch.allclose(q, torch.tensor([[3 / 7, 4 / 7], [9 / 17, 8 / 17]]), atol=1e-6)
    # a global shift of the scores (or eps rescaling them) divides out in the first step
    assert torch.allclose(sinkhorn(a.log() * 0.05 + 3.0, eps=0.05, iters=1), q, atol=1e-6)


def test_sinkhorn_marginals_3x2():
    torch.manual_seed(0)
    s = torch.randn(3, 2)
    q = sinkhorn(s, eps=0.5, iters=3)
    assert (q > 0).all()
    assert torch.allclose(q.sum(1), torch.ones(3), atol=1e-6)  # every sample's mass is 1
    q = sinkhorn(s, eps=0.5, iters=200)  # at convergence each prototype gets N / M = 3/2
    assert torch.allclose(q.sum(1), torch.ones(3), atol=1e-6)
    assert torch.allclose(q.sum(0), torch.full((2,), 1.5), atol=1e-4)


# -- the loss ------------------------------------------------------------------------------------


def _loss(c: int, k: int, dim: int, protos: torch.Tensor | None = None, **kw) -> PALMLoss:
    m = PALMLoss(c, k, dim, **kw)
    if protos is not None:
        m.prototypes.copy_(F.normalize(protos, dim=1))
    return m


def test_prototype_j_belongs_to_class_j_mod_c():
    m = PALMLoss(3, 2, 4)
    assert m.proto_labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert m.class_mask(torch.tensor([1, 2])).tolist() == [[0, 1, 0, 0, 1, 0], [0, 0, 1, 0, 0, 1]]
    torch.manual_seed(1)
    z = F.normalize(torch.randn(5, 4), dim=1)
    y = torch.tensor([0, 1, 2, 0, 1])
    w = m.assignment(z, y, m.prototypes)
    assert torch.allclose(w.sum(1), torch.ones(5))
    assert (w * (1 - m.class_mask(y)) == 0).all()  # no weight on another class's prototypes


def test_class_logits_are_the_per_class_max_over_k():
    # C = 2, K = 2: prototypes 0, 2 are class 0, prototypes 1, 3 are class 1.
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]])
    m = _loss(2, 2, 2, p, temperature=0.5)
    z = torch.tensor([[0.8, 0.6]])
    # cosines: p0 0.8, p1 0.6, p2 0.96, p3 −0.8 → class 0: max(0.8, 0.96), class 1: max(0.6, −0.8)
    assert torch.allclose(m.class_logits(z), torch.tensor([[0.96 / 0.5, 0.6 / 0.5]]))


def test_ema_update_by_hand_and_unit_norm():
    # K = 1: each prototype moves toward the mean embedding of its class's samples.
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    m = _loss(2, 1, 2, p, topk=1, momentum=0.5)
    z = F.normalize(torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0]]), dim=1)
    y = torch.tensor([0, 0, 1])
    m.train()
    m(z, y)
    want0 = F.normalize(0.5 * p[0] + 0.5 * (z[0] + z[1]) / 2, dim=0)
    want1 = F.normalize(0.5 * p[1] + 0.5 * z[2], dim=0)
    assert torch.allclose(m.prototypes, torch.stack([want0, want1]), atol=1e-6)
    assert int(m.steps) == 1
    # K > 1, random data: the buffer stays on the sphere, step after step
    torch.manual_seed(0)
    m = PALMLoss(4, 3, 8, topk=2, momentum=0.9)
    for _ in range(3):
        m(F.normalize(torch.randn(16, 8), dim=1), torch.randint(0, 4, (16,)))
    assert torch.allclose(m.prototypes.norm(dim=1), torch.ones(12), atol=1e-6)
    assert int(m.steps) == 3
    m.eval()  # eval mode: the loss, but no update
    before = m.prototypes.clone()
    m(F.normalize(torch.randn(16, 8), dim=1), torch.randint(0, 4, (16,)))
    assert torch.equal(m.prototypes, before) and int(m.steps) == 3


def test_mle_loss_by_hand():
    # 2 samples, 2 classes, K = 1, fixed prototypes e1, e2 (momentum 1), τ = 0.1.
    # logits: sample 0 (y 0): [6, 8]; sample 1 (y 1): [10, 0].
    m = _loss(2, 1, 2, torch.eye(2), topk=1, momentum=1.0, lambda_pcon=0.0)
    z = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    loss, parts = m(z, torch.tensor([0, 1]))
    l0 = -(6 - math.log(math.exp(6) + math.exp(8)))
    l1 = -(0 - math.log(math.exp(10) + math.exp(0)))
    assert loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    assert parts["mle"].item() == pytest.approx(loss.item()) and "proto_contra" not in parts
    assert torch.equal(m.prototypes, torch.eye(2))  # momentum 1: unchanged


def test_mle_loss_with_topk_against_a_naive_loop():
    torch.manual_seed(3)
    c, k, dim, topk, tau = 2, 3, 4, 2, 0.1
    m = _loss(c, k, dim, torch.randn(c * k, dim), topk=topk, momentum=1.0, lambda_pcon=0.0, temperature=tau)
    z = F.normalize(torch.randn(5, dim), dim=1)
    y = torch.tensor([0, 1, 1, 0, 1])
    loss, _ = m(z, y)
    p = m.prototypes
    q = sinkhorn(z @ p.T, 0.05, 3)  # checked above
    total = 0.0
    for i in range(len(z)):
        own = [j for j in range(c * k) if j % c == int(y[i])]
        best = sorted(own, key=lambda j: -q[i, j].item())[:topk]
        norm = sum(q[i, j].item() for j in best)
        logits = [(z[i] @ p[j]).item() / tau for j in range(c * k)]
        lse = math.log(sum(math.exp(v) for v in logits))
        total += -(sum(q[i, j].item() / norm * logits[j] for j in best) - lse)
    assert loss.item() == pytest.approx(total / len(z), rel=1e-5)


def test_proto_contrast_against_a_naive_double_loop():
    torch.manual_seed(4)
    c, k, t = 3, 2, 0.5
    m = _loss(c, k, 5, torch.randn(c * k, 5), proto_temperature=t)
    p = m.prototypes
    n = c * k
    total = 0.0
    for i in range(n):
        pos = [j for j in range(n) if j != i and j % c == i % c]
        lse = math.log(sum(math.exp((p[i] @ p[j]).item() / t) for j in range(n) if j != i))
        total += -(sum((p[i] @ p[j]).item() / t for j in pos) / len(pos) - lse)
    assert m.proto_contrast(p).item() == pytest.approx(total / n, rel=1e-5)
    # K = 1: no positives, the term is the mean log-sum-exp over the other prototypes
    m1 = _loss(3, 1, 5, torch.randn(3, 5), proto_temperature=t)
    p1 = m1.prototypes
    want = sum(math.log(sum(math.exp((p1[i] @ p1[j]).item() / t) for j in range(3) if j != i))
               for i in range(3)) / 3
    assert m1.proto_contrast(p1).item() == pytest.approx(want, rel=1e-5)


def test_k1_top1_is_cross_entropy_on_cosine_logits():
    # The CIDER-like reduction: one prototype per class, fixed → CE(z·Pᵀ/τ, y).
    torch.manual_seed(5)
    m = _loss(4, 1, 6, torch.randn(4, 6), topk=1, momentum=1.0, lambda_pcon=0.0)
    z = F.normalize(torch.randn(10, 6), dim=1)
    y = torch.randint(0, 4, (10,))
    loss, _ = m(z, y)
    assert loss.item() == pytest.approx(F.cross_entropy(z @ m.prototypes.T / 0.1, y).item(), rel=1e-6)
    assert torch.allclose(m.class_logits(z), z @ m.prototypes.T / 0.1)


def test_proto_contrast_reaches_the_encoder_only_through_the_update():
    # Prototypes are a buffer: the contrastive term's gradient flows through (1 − m)·Wᵀz.
    torch.manual_seed(6)
    z0 = F.normalize(torch.randn(8, 4), dim=1)
    y = torch.randint(0, 2, (8,))
    p = torch.randn(4, 4)

    def grad(momentum: float, lam: float) -> torch.Tensor:
        m = _loss(2, 2, 4, p, topk=1, momentum=momentum, lambda_pcon=lam).eval()
        z = z0.clone().requires_grad_()
        m(z, y)[0].backward()
        return z.grad

    assert not torch.allclose(grad(0.9, 1.0), grad(0.9, 0.0))
    assert torch.allclose(grad(1.0, 1.0), grad(1.0, 0.0))  # fixed prototypes: no path


def test_loss_is_fp32_under_bf16_autocast():
    torch.manual_seed(7)
    m = PALMLoss(3, 2, 8, momentum=0.9)
    z = F.normalize(torch.randn(6, 8), dim=1).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = m(z, torch.tensor([0, 1, 2, 0, 1, 2]))
    assert loss.dtype == torch.float32 and m.prototypes.dtype == torch.float32
    assert torch.allclose(m.prototypes.norm(dim=1), torch.ones(6), atol=1e-6)


# -- augmentation --------------------------------------------------------------------------------


def _normalised(x01: torch.Tensor) -> torch.Tensor:
    return (x01 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)


def test_augment_shapes_determinism_and_range():
    x = _normalised(torch.rand(6, 3, 16, 16))
    a1, b1 = two_views(x, torch.Generator().manual_seed(0))
    a2, b2 = two_views(x, torch.Generator().manual_seed(0))
    a3, _ = two_views(x, torch.Generator().manual_seed(1))
    assert a1.shape == b1.shape == x.shape and a1.dtype == torch.float32
    assert torch.equal(a1, a2) and torch.equal(b1, b2)
    assert not torch.allclose(a1, b1) and not torch.allclose(a1, a3)
    for v in (a1, b1, a3):
        u = _unit(v)
        assert u.min() >= -1e-5 and u.max() <= 1 + 1e-5


def test_full_crop_without_jitter_is_the_identity_and_flip_mirrors():
    x01 = torch.rand(3, 3, 8, 8)
    same = SimCLRAugment(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0)
    assert torch.allclose(same.unit(x01, torch.Generator().manual_seed(0)), x01, atol=1e-5)
    mirror = SimCLRAugment(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=1.0, jitter_p=0.0, gray_p=0.0)
    assert torch.allclose(mirror.unit(x01, torch.Generator().manual_seed(0)), x01.flip(-1), atol=1e-5)
    # the normalised path is the same map
    assert torch.allclose(_unit(same(_normalised(x01), torch.Generator())), x01, atol=1e-5)


def test_crop_is_a_window_of_the_requested_area():
    aug = SimCLRAugment()
    w, h = aug.crop_params(4000, torch.Generator().manual_seed(0))
    area, ratio = w * h, w / h
    assert (w <= 1).all() and (h <= 1).all()
    assert area.min() >= 0.2 - 1e-6 and ratio.min() >= 3 / 4 - 1e-5 and ratio.max() <= 4 / 3 + 1e-5


def test_grayscale_has_equal_channels_and_jitter_keeps_range():
    x01 = torch.rand(5, 3, 8, 8)
    gray = SimCLRAugment(gray_p=1.0)
    g = gray.unit(x01, torch.Generator().manual_seed(0))
    assert torch.allclose(g[:, 0], g[:, 1]) and torch.allclose(g[:, 1], g[:, 2])
    j = SimCLRAugment(jitter_p=1.0, gray_p=0.0).jitter(x01, torch.Generator().manual_seed(0))
    assert j.min() >= 0 and j.max() <= 1 and not torch.allclose(j, x01)


def test_hue_rotation_keeps_grays_and_a_full_turn():
    x01 = torch.rand(2, 3, 4, 4) * 0.5 + 0.25  # away from the clamp
    assert torch.allclose(hue_rotate(x01, torch.tensor([0.0, 1.0])), x01, atol=1e-5)
    gray = torch.rand(2, 1, 4, 4).expand(2, 3, 4, 4)
    assert torch.allclose(hue_rotate(gray, torch.tensor([0.1, -0.07])), gray, atol=1e-5)


# -- arms ----------------------------------------------------------------------------------------


@pytest.fixture
def tiny(fake_data):
    from repro.data import load

    return load(classes=4, per_class=16, test_per_class=5, image_size=16, seed=0)


def test_palm_step_resumes_the_view_stream():
    from repro.families.uncertainty.arms.palm import PALMConfig, PALMStep, build

    torch.manual_seed(0)
    model = build(PALMConfig(model="cnn3", width=4, prototypes=2), 3)
    straight = PALMStep(seed=5)
    gens = [straight.generator(model) for _ in range(4)]
    model.palm.steps.fill_(3)  # a run resumed after 3 steps
    later = PALMStep(seed=5).generator(model)
    assert torch.equal(later.get_state(), gens[3].get_state())


@pytest.mark.parametrize("name", ["palm", "ce"])
def test_arms_train_return_a_model_and_resume(tiny, tmp_path, name):
    from repro import arms
    from repro.train import WORK

    a = arms.get("uncertainty", name)
    extra = {"prototypes": 2, "topk": 1, "warmup_epochs": 0.0} if name == "palm" else {}
    cfg = arms.make_config(a.config, {"model": "cnn3", "width": 8, "epochs": 1, "batch_size": 16,
                                      "lr": 0.05, **extra})
    t = a.impl(cfg, tiny, 0, tmp_path / "ck", "cpu")
    assert len(t.fits) == 1 and len(t.fits[0].history) == 1
    assert 0 <= t.fits[0].final["test_acc"] <= 100 and math.isfinite(t.fits[0].final["train_loss"])
    model = t.model.eval()
    x, _ = next(iter(tiny.loader("test", 7)))
    with torch.no_grad():
        assert model.features(x).shape == (7, 32) and model(x).shape == (7, 4)
    steps = WORK["train_steps"]
    again = a.impl(cfg, tiny, 0, tmp_path / "ck", "cpu")  # loaded, not retrained
    assert WORK["train_steps"] == steps and again.fits[0].resumed_from_epoch == 1
    assert again.fits[0].history == t.fits[0].history
    for (k, v), w in zip(t.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(v, w), k
    if name == "palm":
        assert int(again.model.palm.steps) == len(tiny.y_train) // 16  # the buffer came back


def test_class_logits_are_fp32_under_bf16_autocast():
    torch.manual_seed(8)
    m = PALMLoss(3, 2, 8)
    z = F.normalize(torch.randn(4, 8), dim=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m.class_logits(z)
    assert out.dtype == torch.float32 and torch.allclose(out, m.class_logits(z))


def test_palm_interrupted_run_resumes_like_an_uninterrupted_one(tiny, tmp_path, monkeypatch):
    # Interrupted in the first batch of epoch 2, the run resumes from epoch 1's checkpoint: the
    # views of epoch 2 continue the stream (palm.steps), so the model equals a straight run's.
    # (Interrupting later in an epoch is not exact for any arm: fit saves the loader's
    # augmentation generator after it has drawn the interrupted batch.)
    from repro import arms
    from repro.families.uncertainty.arms import palm

    cfg = arms.make_config(palm.PALMConfig, {"model": "cnn3", "width": 8, "epochs": 2, "batch_size": 16,
                                             "lr": 0.05, "warmup_epochs": 0.0, "prototypes": 2,
                                             "topk": 1, "momentum": 0.9})
    straight = palm.train_palm(cfg, tiny, 0, None)
    call = palm.PALMStep.__call__
    calls = {"n": 0}

    def interrupt_at_fifth(self, model, x, y):
        calls["n"] += 1
        if calls["n"] == 5:  # 4 batches an epoch: the first of epoch 2
            raise KeyboardInterrupt
        return call(self, model, x, y)

    monkeypatch.setattr(palm.PALMStep, "__call__", interrupt_at_fifth)
    with pytest.raises(KeyboardInterrupt):
        palm.train_palm(cfg, tiny, 0, tmp_path / "ck")
    monkeypatch.setattr(palm.PALMStep, "__call__", call)
    resumed = palm.train_palm(cfg, tiny, 0, tmp_path / "ck")
    assert resumed.fits[0].resumed_from_epoch == 1 and int(resumed.model.palm.steps) == 8
    for (k, v), w in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(v.float(), w.float(), atol=1e-6), k
