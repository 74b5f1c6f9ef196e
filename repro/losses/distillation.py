"""Distillation losses: one function per loss, each on plain logit tensors.

Conventions: ``s`` are student logits ``[B, C]``, ``t`` teacher logits ``[B, C]`` (callers
detach them when the teacher is fixed), ``y`` integer labels ``[B]``. Every loss returns a
scalar averaged over the batch. Temperatures must be > 0 (checked here, so a bad notebook
parameter fails before any training).

The chapters compose these with cross-entropy (see the arms of ``repro.families.distillation``); nothing here
knows about models or optimisers.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def check_temperature(name: str, value: float) -> float:
    """Raise ``ValueError`` unless ``value`` is a finite number > 0."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a number > 0, not {value!r}")
    return float(value)


def _check(s: Tensor, t: Tensor | None = None, y: Tensor | None = None) -> None:
    if s.dim() != 2:
        raise ValueError(f"student logits must be [batch, classes], got shape {tuple(s.shape)}")
    if t is not None and t.shape != s.shape:
        raise ValueError(f"teacher logits {tuple(t.shape)} and student logits {tuple(s.shape)} differ: "
                         "teacher and student must predict the same classes")
    if y is not None and (y.dim() != 1 or y.shape[0] != s.shape[0]):
        raise ValueError(f"labels must be [batch] = [{s.shape[0]}], got {tuple(y.shape)}")


# --------------------------------------------------------------------------- KL family
def kl_div(p_logits: Tensor, q_logits: Tensor, temperature: float = 1.0, reduce: bool = True) -> Tensor:
    """KL(p ‖ q) between the softmaxes of two logit tensors at ``temperature`` (no T² factor).

    Per sample when ``reduce`` is False. Gradients flow into both arguments; detach the
    one that is a fixed target.
    """
    check_temperature("temperature", temperature)
    lp = F.log_softmax(p_logits / temperature, dim=1)
    lq = F.log_softmax(q_logits / temperature, dim=1)
    per = (lp.exp() * (lp - lq)).sum(1)
    return per.mean() if reduce else per


def kd_loss(s: Tensor, t: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton et al. (2015): T² · KL(softmax(t/T) ‖ softmax(s/T)), averaged over the batch."""
    _check(s, t)
    return kl_div(t, s, temperature) * temperature ** 2


def soft_target_loss(s: Tensor, target: Tensor) -> Tensor:
    """KL(target ‖ softmax(s)) for given probability rows ``target`` [B, C] (stored soft labels).

    Terms with target 0 contribute 0 (the limit of p·log p).
    """
    _check(s)
    if target.shape != s.shape:
        raise ValueError(f"targets {tuple(target.shape)} do not match logits {tuple(s.shape)}")
    ls = F.log_softmax(s, dim=1)
    logt = torch.where(target > 0, target.clamp_min(1e-30).log(), torch.zeros_like(target))
    return (target * (logt - ls)).sum(1).mean()


# --------------------------------------------------------------------------- NKD / USKD
def _non_target_log_softmax(logits: Tensor, y: Tensor, temperature: float) -> Tensor:
    """log-softmax over the C − 1 non-target classes (the target column is −inf)."""
    masked = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return F.log_softmax(masked / temperature, dim=1)


def nkd_loss(s: Tensor, t: Tensor, y: Tensor, temperature: float = 3.0, gamma: float = 3.5) -> Tensor:
    """NKD (Yang et al., ICCV 2023), the term added to CE.

    Target part −T_y·log S_y (temperature 1) plus γ·τ² times the cross-entropy between the
    teacher's and the student's *normalised* non-target distributions (softmax over the
    C − 1 other classes at τ, so each sums to 1).
    """
    _check(s, t, y)
    check_temperature("temperature", temperature)
    t = t.detach()
    log_s = F.log_softmax(s, dim=1)
    t_y = F.softmax(t, dim=1).gather(1, y[:, None]).squeeze(1)
    target = -(t_y * log_s.gather(1, y[:, None]).squeeze(1)).mean()
    ls_nt = _non_target_log_softmax(s, y, temperature)
    pt_nt = _non_target_log_softmax(t, y, temperature).exp()
    keep = ~F.one_hot(y, s.shape[1]).bool()
    non_target = -(pt_nt * ls_nt.masked_fill(~keep, 0.0)).sum(1).mean()
    return target + gamma * temperature ** 2 * non_target


def zipf_labels(scores: Tensor, y: Tensor) -> Tensor:
    """USKD's non-target soft labels: rank classes by ``scores`` (highest first), weight the
    class at rank r by 1/r, drop the true class and renormalise. Rows sum to 1, column y is 0.
    """
    rank = scores.argsort(dim=1, descending=True).argsort(dim=1) + 1  # 1 = highest score
    z = 1.0 / rank.float()
    z = z.masked_fill(F.one_hot(y, scores.shape[1]).bool(), 0.0)
    return z / z.sum(1, keepdim=True)


def uskd_loss(s: Tensor, weak: Tensor, y: Tensor, alpha: float = 0.1, beta: float = 0.1,
              mu: float = 0.1, weak_smoothing: float = 0.1) -> Tensor:
    """USKD (self-KD, no teacher), the term added to CE.

    ``weak``: logits of the linear head on an intermediate feature. Pieces:
    target p_t = S_y² + 1 − mean_batch(S_y²) (detached) in −α·mean(p_t·log S_y); Zipf
    non-target labels z ranked by p_w / (1 − p_w,y) + log S / (1 − log S_y) (the official
    code's score, log-probabilities included) in
    −β·mean Σ_{i≠y} z_i·log Ŝ_i; and μ·CE(weak, y) with label smoothing ``weak_smoothing``.
    """
    _check(s, weak, y)
    log_s = F.log_softmax(s, dim=1)
    s_y = log_s.gather(1, y[:, None]).squeeze(1).exp().detach()
    p_t = s_y ** 2 + 1 - (s_y ** 2).mean()
    target = -(p_t * log_s.gather(1, y[:, None]).squeeze(1)).mean()
    with torch.no_grad():
        p_w = F.softmax(weak, dim=1)
        w_y = p_w.gather(1, y[:, None])
        ls_d = log_s.detach()
        # As in the official code: the final head enters through its log-probabilities,
        # divided by (1 − log S_y); the weak head through p / (1 − p_y).
        score = p_w / (1 - w_y + 1e-6) + ls_d / (1 - ls_d.gather(1, y[:, None]) + 1e-6)
        z = zipf_labels(score, y)
    ls_nt = _non_target_log_softmax(s, y, 1.0)
    keep = ~F.one_hot(y, s.shape[1]).bool()
    non_target = -(z * ls_nt.masked_fill(~keep, 0.0)).sum(1).mean()
    weak_ce = F.cross_entropy(weak, y, label_smoothing=weak_smoothing)
    return alpha * target + beta * non_target + mu * weak_ce


# --------------------------------------------------------------------------- PLD and DIST
def pld_loss(s: Tensor, t: Tensor, y: Tensor, tau_t: float = 1.0) -> Tensor:
    """PLD (Bassam et al., 2025): teacher-weighted Plackett–Luce list loss; replaces CE.

    π* puts y first, then the other classes by descending teacher logit; the loss is
    Σ_k α_k·(logsumexp_{j≥k} s_{π*_j} − s_{π*_k}) with α_k = softmax(t/τ_T)[π*_k]. Computed
    with one sort and ``logcumsumexp`` over the reversed order (y last).
    """
    _check(s, t, y)
    check_temperature("tau_t", tau_t)
    t = t.detach()
    key = t.float().scatter(1, y[:, None], float("inf"))  # y ranks last in ascending order
    order = key.argsort(dim=1)
    s_sorted = s.gather(1, order)
    alpha = F.softmax(t / tau_t, dim=1).gather(1, order)
    per_pos = torch.logcumsumexp(s_sorted, dim=1) - s_sorted
    return (alpha * per_pos).sum(1).mean()


def _pearson_distance(a: Tensor, b: Tensor, dim: int) -> Tensor:
    a = a - a.mean(dim, keepdim=True)
    b = b - b.mean(dim, keepdim=True)
    corr = (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim)).clamp_min(1e-8)
    return 1 - corr.mean()


def dist_loss(s: Tensor, t: Tensor, temperature: float = 4.0, beta: float = 2.0, gamma: float = 2.0) -> Tensor:
    """DIST (Huang et al., 2022), the term added to CE: τ²·(β·inter + γ·intra).

    inter = 1 − mean per-sample Pearson correlation of the two softmax rows over classes;
    intra = 1 − mean per-class Pearson correlation over the batch.
    """
    _check(s, t)
    check_temperature("temperature", temperature)
    ps = F.softmax(s / temperature, dim=1)
    pt = F.softmax(t.detach() / temperature, dim=1)
    inter = _pearson_distance(ps, pt, dim=1)
    intra = _pearson_distance(ps, pt, dim=0)
    return temperature ** 2 * (beta * inter + gamma * intra)


# --------------------------------------------------------------------------- BD-KD
def entropy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Per-sample Shannon entropy (nats) of softmax(logits / T)."""
    lp = F.log_softmax(logits / temperature, dim=1)
    return -(lp.exp() * lp).sum(1)


def bdkd_weights(s: Tensor, t: Tensor, kappa: float = 5.0, hard: bool = False,
                 temperature: float = 3.0) -> tuple[Tensor, Tensor]:
    """Per-sample (w_forward, w_reverse), summing to 1, from the entropy gap H(p_S) − H(p_T).

    w_R = sigmoid(κ·(H_S − H_T)): a student less sure than the teacher gets more of the
    mode-seeking reverse KL; ``hard`` uses the step 1[H_S > H_T]. Detached. This weighting
    rule is our assumption (the paper's exact form is not public).
    """
    with torch.no_grad():
        gap = entropy(s, temperature) - entropy(t, temperature)
        w_r = (gap > 0).float() if hard else torch.sigmoid(kappa * gap)
    return 1 - w_r, w_r


def bdkd_student_loss(s: Tensor, t: Tensor, temperature: float = 3.0, kappa: float = 5.0,
                      hard: bool = False) -> Tensor:
    """BD-KD's distillation term for the student: τ²·mean_i[w_F·KL(p_T‖p_S) + w_R·KL(p_S‖p_T)].

    With w_R ≡ 0 this is the forward KL of DML / Hinton KD.
    """
    _check(s, t)
    check_temperature("temperature", temperature)
    t = t.detach()
    w_f, w_r = bdkd_weights(s, t, kappa, hard, temperature)
    fwd = kl_div(t, s, temperature, reduce=False)
    rev = kl_div(s, t, temperature, reduce=False)
    return temperature ** 2 * (w_f * fwd + w_r * rev).mean()


# --------------------------------------------------------------------------- self-KD pieces
def ps_kd_targets(y: Tensor, past_probs: Tensor, alpha_t: float) -> Tensor:
    """PS-KD soft targets (1 − α_t)·onehot(y) + α_t·p_prev (the model's own last-epoch output)."""
    return (1 - alpha_t) * F.one_hot(y, past_probs.shape[1]).float() + alpha_t * past_probs


def rotation_labels(y: Tensor, num_rotations: int = 4) -> Tensor:
    """Joint class × rotation labels y·R + k for a batch stacked rotation-major (k = 0..R−1)."""
    k = torch.arange(num_rotations, device=y.device).repeat_interleave(len(y))
    return y.repeat(num_rotations) * num_rotations + k


def rotate_batch(x: Tensor, num_rotations: int = 4) -> Tensor:
    """Stack x rotated by 0°, 90°, 180°, 270° (rotation-major): [R·B, C, H, W]."""
    return torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(num_rotations)])


def marginalise_rotations(joint_logits: Tensor, num_classes: int, num_rotations: int = 4) -> Tensor:
    """Log-probabilities over classes of a [B, C·R] joint head, summing out the rotation."""
    lp = F.log_softmax(joint_logits, dim=1).view(-1, num_classes, num_rotations)
    return torch.logsumexp(lp, dim=2)


def lsskd_loss(main: Tensor, aux: list[Tensor], y: Tensor, num_classes: int, temperature: float = 3.0,
               aux_kl: float = 1.0, main_kl: float = 1.0, num_rotations: int = 4) -> Tensor:
    """LSSKD's loss for a rotation-expanded batch (rotation-major, first B rows unrotated):
    CE of the main head on the unrotated images + Σ_s CE(aux_s, joint label)
    + aux_kl·Σ_s τ²·KL(aux_{s+1} ‖ aux_s) (deeper teaches shallower)
    + main_kl·τ²·KL(p̄ ‖ main), p̄ the auxiliaries' mean prediction on the unrotated images
    marginalised over rotations (our reconstruction; no code is public)."""
    B = len(y)
    T = temperature
    joint = rotation_labels(y, num_rotations)
    loss = F.cross_entropy(main[:B], y)
    for a in aux:
        loss = loss + F.cross_entropy(a, joint)
    for s in range(len(aux) - 1):  # the next deeper branch teaches each shallower one
        loss = loss + aux_kl * T * T * kl_div(aux[s + 1].detach(), aux[s], T)
    if main_kl:
        marg = torch.stack([marginalise_rotations(a[:B].detach() / T, num_classes, num_rotations) for a in aux])
        p_bar = marg.exp().mean(0)
        loss = loss + main_kl * T * T * soft_target_loss(main[:B] / T, p_bar)
    return loss
