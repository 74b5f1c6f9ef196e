"""Distillation losses against hand-computed values and the properties the papers state."""
import math

import pytest
import torch
import torch.nn.functional as F

from repro.losses import distillation as D


def test_kd_loss_three_classes_by_hand():
    s = torch.zeros(1, 3)                                   # student uniform
    t = torch.log(torch.tensor([[1.0, 2.0, 1.0]]))          # teacher [.25, .5, .25]
    want = 0.25 * math.log(0.75) * 2 + 0.5 * math.log(1.5)  # KL(p_t ‖ uniform)
    assert D.kd_loss(s, t, temperature=1.0).item() == pytest.approx(want, rel=1e-6)
    # T²-scaling: logits scaled by T at temperature T give T² × the T = 1 value
    assert D.kd_loss(2 * s, 2 * t, temperature=2.0).item() == pytest.approx(4 * want, rel=1e-6)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "4", True])
def test_temperature_must_be_positive(bad):
    s = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="temperature"):
        D.kd_loss(s, s, temperature=bad)


def test_mismatched_class_counts_are_refused():
    with pytest.raises(ValueError, match="same classes"):
        D.kd_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def test_soft_target_loss_with_one_hot_is_cross_entropy():
    s = torch.tensor([[1.0, -0.5, 2.0], [0.3, 0.1, -1.0]])
    y = torch.tensor([2, 0])
    assert D.soft_target_loss(s, F.one_hot(y, 3).float()).item() == pytest.approx(F.cross_entropy(s, y).item())


def test_nkd_by_hand_three_classes():
    s = torch.tensor([[0.0, 1.0, 2.0]])
    t = torch.tensor([[2.0, 0.0, 1.0]])
    y = torch.tensor([0])
    p_t = torch.softmax(t, 1)[0]
    log_s = torch.log_softmax(s, 1)[0]
    target = -(p_t[0] * log_s[0]).item()
    # non-target classes 1, 2 renormalised at τ = 2
    tau, gamma = 2.0, 1.5
    qt = torch.softmax(torch.tensor([0.0, 1.0]) / tau, 0)
    ls = torch.log_softmax(torch.tensor([1.0, 2.0]) / tau, 0)
    non_target = -(qt * ls).sum().item()
    got = D.nkd_loss(s, t, y, temperature=tau, gamma=gamma).item()
    assert got == pytest.approx(target + gamma * tau ** 2 * non_target, rel=1e-6)
    # γ = 0 leaves only the soft target term
    assert D.nkd_loss(s, t, y, temperature=tau, gamma=0.0).item() == pytest.approx(target, rel=1e-6)


def test_non_target_distributions_sum_to_one_and_skip_the_label():
    logits = torch.randn(5, 7)
    y = torch.randint(0, 7, (5,))
    p = D._non_target_log_softmax(logits, y, 3.0).exp()
    assert torch.allclose(p.sum(1), torch.ones(5))
    assert (p.gather(1, y[:, None]) == 0).all()


def test_zipf_labels_by_hand():
    z = D.zipf_labels(torch.tensor([[3.0, 1.0, 2.0]]), torch.tensor([0]))
    # ranks 1, 3, 2 → weights 1, 1/3, 1/2 → drop class 0 → [0, 1/3, 1/2] / (5/6)
    assert torch.allclose(z, torch.tensor([[0.0, 0.4, 0.6]]))


def test_uskd_is_finite_and_trains_the_weak_head():
    torch.manual_seed(0)
    s = torch.randn(6, 5, requires_grad=True)
    w = torch.randn(6, 5, requires_grad=True)
    y = torch.randint(0, 5, (6,))
    loss = D.uskd_loss(s, w, y)
    loss.backward()
    assert torch.isfinite(loss) and s.grad.abs().sum() > 0 and w.grad.abs().sum() > 0


def _pld_naive(s, t, y, tau):
    """The Plackett–Luce sum written as the paper states it, one rank at a time."""
    total = 0.0
    for b in range(s.shape[0]):
        others = sorted((c for c in range(s.shape[1]) if c != y[b]), key=lambda c: -t[b, c].item())
        perm = [int(y[b])] + others
        alpha = torch.softmax(t[b] / tau, 0)
        for k, c in enumerate(perm):
            rest = s[b, perm[k:]]
            total += alpha[c] * (torch.logsumexp(rest, 0) - s[b, c])
    return total / s.shape[0]


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_pld_matches_naive_loop(tau):
    torch.manual_seed(1)
    s, t = torch.randn(4, 6), torch.randn(4, 6)
    y = torch.tensor([0, 5, 2, 2])
    assert D.pld_loss(s, t, y, tau).item() == pytest.approx(_pld_naive(s, t, y, tau).item(), rel=1e-5)


def test_pld_properties():
    torch.manual_seed(2)
    s, t = torch.randn(3, 5), torch.randn(3, 5)
    y = torch.tensor([1, 4, 0])
    base = D.pld_loss(s, t, y, 1.0)
    # translation invariance in the student logits
    assert D.pld_loss(s + 7.5, t, y, 1.0).item() == pytest.approx(base.item(), rel=1e-5)
    # a teacher that is certain of y (α = one-hot on the first rank) gives cross-entropy
    t_sure = F.one_hot(y, 5).float() * 50
    assert D.pld_loss(s, t_sure, y, 1.0).item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-5)
    # convex in s: the midpoint is no worse than the mean of the ends
    s2 = torch.randn(3, 5)
    mid = D.pld_loss((s + s2) / 2, t, y, 1.0)
    assert mid.item() <= (base.item() + D.pld_loss(s2, t, y, 1.0).item()) / 2 + 1e-6


def test_pld_gradient_matches_finite_differences():
    torch.manual_seed(3)
    s = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 4, dtype=torch.float64)
    y = torch.tensor([3, 1])
    assert torch.autograd.gradcheck(lambda v: D.pld_loss(v, t, y, 2.0), (s,))


def test_dist_is_zero_when_student_equals_teacher():
    x = torch.randn(8, 6)
    assert D.dist_loss(x, x).item() == pytest.approx(0.0, abs=1e-5)
    assert D.dist_loss(torch.randn(8, 6), x).item() > 0


def test_bdkd_weights_and_limits():
    torch.manual_seed(4)
    s, t = torch.randn(10, 5), 3 * torch.randn(10, 5)
    w_f, w_r = D.bdkd_weights(s, t, kappa=5.0)
    assert torch.allclose(w_f + w_r, torch.ones(10))
    # κ → ∞ gives the hard switch
    soft = D.bdkd_weights(s, t, kappa=1e6)[1]
    hard = D.bdkd_weights(s, t, hard=True)[1]
    assert torch.equal(soft, hard)
    # KL terms are ≥ 0 and vanish when the two agree
    assert D.bdkd_student_loss(s, t).item() >= 0
    assert D.bdkd_student_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)


def test_bdkd_is_plain_forward_kl_when_the_student_is_sharper():
    t = torch.zeros(4, 5)                 # uniform teacher: maximal entropy
    s = torch.randn(4, 5) * 3             # any sharper student
    got = D.bdkd_student_loss(s, t, temperature=3.0, hard=True)
    assert got.item() == pytest.approx(D.kd_loss(s, t, 3.0).item(), rel=1e-6)


def test_rotation_labels_and_marginalisation():
    y = torch.tensor([2, 0])
    assert D.rotation_labels(y, 4).tolist() == [8, 0, 9, 1, 10, 2, 11, 3]
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    r = D.rotate_batch(x)
    assert r.shape == (8, 3, 2, 2) and torch.equal(r[:2], x) and torch.equal(r[2:4], torch.rot90(x, 1, (2, 3)))
    joint = torch.randn(3, 5 * 4)
    lp = D.marginalise_rotations(joint, 5)
    assert torch.allclose(lp.exp().sum(1), torch.ones(3), atol=1e-6)


def test_ps_kd_targets():
    y = torch.tensor([1])
    past = torch.tensor([[0.2, 0.5, 0.3]])
    got = D.ps_kd_targets(y, past, 0.4)
    assert torch.allclose(got, torch.tensor([[0.08, 0.8, 0.12]]))
