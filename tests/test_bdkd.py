"""Chapter 37 (BD-KD): the online pair's loss and gradients by hand, the entropy-gap log, the
arm checks and the per-seed metrics."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from repro.data import load
from repro.families.distillation import figures, protocol, tables
from repro.families.distillation.arms import online_kd as O
from repro.layers.distillation import OnlinePair
from repro.sweep import SweepResult
from repro.train import TrainConfig

# Two classes, τ = 1: the student predicts uniform [½, ½], the teacher [¾, ¼] (logits ln 3, 0).
KL_TS = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)   # KL(p_T ‖ p_S) = 0.130812
KL_ST = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(2.0)  # KL(p_S ‖ p_T) = 0.143841
H_S = math.log(2)
H_T = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))


class Const(nn.Module):
    """Logits = a learnable bias, whatever the input (so gradients are easy to compute)."""

    def __init__(self, bias: list[float]) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor(bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(x.shape[0], -1)


def _pair() -> OnlinePair:
    return OnlinePair(teacher=Const([math.log(3.0), 0.0]), student=Const([0.0, 0.0]))


X, Y = torch.zeros(1, 3), torch.tensor([0])


def test_hand_values_of_the_example():
    assert KL_TS == pytest.approx(0.130812, abs=1e-6) and KL_ST == pytest.approx(0.143841, abs=1e-6)
    assert H_S - H_T == pytest.approx(0.130812, abs=1e-6)  # the student is the less sure one


def test_dml_loss_and_gradients_by_hand():
    pair = _pair()
    loss, logits = O.online_loss(*O.dml_terms(1.0))(pair, X, Y)
    # CE(s) = ln 2, CE(t) = −ln ¾, student KL(p_T‖p_S), teacher KL(p_S‖p_T)
    assert loss.item() == pytest.approx(math.log(2) - math.log(0.75) + KL_TS + KL_ST, abs=1e-5)
    assert torch.equal(logits, torch.zeros(1, 2))  # the trainer scores the student
    loss.backward()
    # student: (p_S − y) + (p_S − p_T) = [−½, ½] + [−¼, ¼]
    assert torch.allclose(pair.student.bias.grad, torch.tensor([-0.75, 0.75]), atol=1e-6)
    # teacher: (p_T − y) + (p_T − p_S) = [−¼, ¼] + [¼, −¼] = 0. Had the student's KL leaked into
    # the teacher, its gradient (p_T − p_S) would make this non-zero.
    assert torch.allclose(pair.teacher.bias.grad, torch.zeros(2), atol=1e-6)


@pytest.mark.parametrize("kappa,hard", [(5.0, False), (1.0, False), (5.0, True)])
def test_bdkd_loss_and_gradients_by_hand(kappa, hard):
    pair = _pair()
    log = O.BalanceLog()
    loss, _ = O.online_loss(*O.bdkd_terms(1.0, kappa, hard, log))(pair, X, Y)
    w_r = 1.0 if hard else 1 / (1 + math.exp(-kappa * (H_S - H_T)))
    student_term = (1 - w_r) * KL_TS + w_r * KL_ST
    # teacher regulariser: KL(p_T ‖ p_S), the reverse KL seen from the teacher
    assert loss.item() == pytest.approx(math.log(2) - math.log(0.75) + student_term + KL_TS, abs=1e-5)
    loss.backward()
    # teacher: CE gives [−¼, ¼]; d KL(p_T‖p_S)/dt = p_T ⊙ (log p_T − log p_S − KL) per class
    lp = [math.log(0.75 / 0.5), math.log(0.25 / 0.5)]
    dkl = [0.75 * (lp[0] - KL_TS), 0.25 * (lp[1] - KL_TS)]
    assert torch.allclose(pair.teacher.bias.grad, torch.tensor([-0.25 + dkl[0], 0.25 + dkl[1]]), atol=1e-5)
    log.on_step(None)
    assert log.gap == [pytest.approx(H_S - H_T, abs=1e-6)] and log.w_reverse == [pytest.approx(w_r, abs=1e-6)]


def test_a_sharper_student_gets_forward_kl_with_the_hard_switch():
    # swap the roles: the student is the sure one, so w_R = 0 and BD-KD is DML's student term
    s, t = torch.tensor([[math.log(3.0), 0.0]]), torch.zeros(1, 2)
    bd_student, _ = O.bdkd_terms(1.0, 5.0, True)
    dml_student, _ = O.dml_terms(1.0)
    assert bd_student(s, t).item() == pytest.approx(dml_student(s, t).item(), abs=1e-7)
    assert bd_student(s, t).item() == pytest.approx(KL_ST, abs=1e-6)  # KL(p_T=U ‖ p_S=[¾,¼])


def test_balance_log_histograms_clip_into_the_end_bins_and_resume():
    log = O.BalanceLog(bound=1.0, bins=4)  # edges −1, −½, 0, ½, 1
    assert log.edges() == [-1.0, -0.5, 0.0, 0.5, 1.0]

    class Info:
        epoch = 1

    log.stage(torch.tensor([-2.0, -0.7, 0.1, 0.6, 5.0]), torch.tensor([0.0, 0.0, 1.0, 1.0, 0.5]))
    log.on_step(Info())
    log.stage(torch.tensor([-0.2]), torch.tensor([0.25]))
    log.on_step(Info())
    assert log.hist == {1: [2, 1, 1, 2]}
    assert log.gap == pytest.approx([0.6, -0.2]) and log.w_reverse == pytest.approx([0.5, 0.25])
    log.on_step(Info())  # nothing staged: nothing recorded
    assert len(log.gap) == 2
    again = O.BalanceLog()
    again.load_state_dict(log.state_dict())
    assert again.hist == log.hist and again.bound == 1.0 and again.bins == 4
    with pytest.raises(ValueError, match="bound"):
        O.BalanceLog(bound=0.0)


def test_export_keeps_first_and_last_epochs_only_up_to_the_limit():
    log = O.BalanceLog(bound=1.0, bins=2)
    log.hist = {e: [e, 1] for e in range(10)}
    hist = log.export(max_epochs=4)["hist"]
    assert len(hist) == 4 and "0" in hist and "9" in hist and hist["9"] == [9, 1]
    assert len(log.export(max_epochs=20)["hist"]) == 10


def test_coarsen_averages_consecutive_chunks():
    assert O._coarsen([1, 2, 3, 4, 5], 2) == [2.0, 4.5]
    assert O._coarsen([1, 2, 3], 5) == [1.0, 2.0, 3.0]
    assert O._coarsen([], 5) == []


@pytest.mark.parametrize("kw,match", [
    ({"kappa": 0.0}, "kappa"), ({"kappa": -1.0}, "kappa"), ({"kappa": float("inf")}, "kappa"),
    ({"kappa": float("nan")}, "kappa"), ({"kappa": True}, "kappa"), ({"with_hard": "yes"}, "with_hard"),
    ({"kappa_ablation": [5.0]}, "distinct"), ({"kappa_ablation": [1.0, 1.0]}, "distinct"),
    ({"kappa_ablation": [-2.0]}, "kappa"), ({"temperature": 0.0}, "temperature"),
])
def test_bad_hyper_parameters_fail_before_training(kw, match):
    args = {"temperature": 3.0, "kappa": 5.0, "with_hard": False, "kappa_ablation": [], **kw}
    with pytest.raises(ValueError, match=match):
        O.bdkd_plan(**args)


def test_chapter_arms_labels_and_full_hyper_parameters():
    arms, names = O.bdkd_plan(2.0, 5.0, True, [1.0, 20.0])
    assert list(arms) == ["ce", "dml", "bdkd", "bdkd_hard", "bdkd_kappa1", "bdkd_kappa20"]
    assert list(names.values()) == ["CE", "DML", "BD-KD", "BD-KD hard", "BD-KD κ=1", "BD-KD κ=20"]
    assert arms["dml"][0] == "dml" and protocol.hyperparameters(arms["dml"][1]) == {"temperature": 2.0}
    assert arms["bdkd_hard"][0] == "bdkd"
    assert protocol.hyperparameters(arms["bdkd_hard"][1]) == {"temperature": 2.0, "kappa": 5.0, "hard": True}
    assert protocol.hyperparameters(arms["bdkd_kappa20"][1]) == {"temperature": 2.0, "kappa": 20.0, "hard": False}
    with pytest.raises(ValueError, match="kappa"):
        protocol.arm_config("bdkd", kappa=-1.0)  # the arm's config refuses too


def _job(arm, seed, top1, ece, teacher=None):
    m = {"top1": top1, "ece": ece, "nll": 1.0, "confidence": 50.0}
    if teacher is not None:
        m.update({"teacher_top1": teacher, "teacher_ece": 2.0, "teacher_nll": 0.5, "teacher_confidence": 60.0})
    return {"arm": arm, "seed": seed, "metrics": m, "train_s": 2.0, "extra": {"arm": arm}}


def test_claims_are_paired_differences_and_the_summary_table():
    result = SweepResult([_job("ce", 0, 40.0, 10.0), _job("dml", 0, 42.0, 8.0, 55.0), _job("bdkd", 0, 43.5, 6.5, 54.0),
                          _job("ce", 1, 41.0, 9.0), _job("dml", 1, 41.0, 7.0, 56.0), _job("bdkd", 1, 40.0, 7.5, 57.0)])
    assert result.paired("ece", "dml", "bdkd") == {0: 1.5, 1: -0.5}
    assert result.paired("top1", "bdkd", "dml") == {0: 1.5, 1: -1.0}
    assert result.paired("top1", "bdkd", "ce") == {0: 3.5, 1: -1.0}
    assert result.paired("top1", "dml", "ce") == {0: 2.0, 1: 0.0}
    assert result.per_seed("teacher_top1", "bdkd") == {0: 54.0, 1: 57.0} and result.per_seed("teacher_top1", "ce") == {}
    from repro.papers import load_spec
    claims = {c.key for c in load_spec("bdkd").claims}
    assert claims == {"ece:dml-bdkd", "top1:bdkd-dml", "top1:bdkd-ce"}
    table = tables.online_summary_markdown(result, ["ce", "dml", "bdkd"], {"ce": "CE"}).splitlines()
    assert table[2].startswith("| CE (n=2) | 40.50 ± 0.71 | 9.50 ± 0.71 |") and "| — | — |" in table[2]


def test_online_teacher_metrics_only_for_a_pair(fake_data):
    data = load(classes=3, per_class=8, test_per_class=4, image_size=8)
    test = data.loader("test", 16)
    torch.manual_seed(0)
    student = models_create("cnn3", 4)
    assert O.teacher_metrics(student, test) == {}
    m = O.teacher_metrics(OnlinePair(models_create("cnn3", 8), student), test)
    assert set(m) == {"teacher_top1", "teacher_ece", "teacher_nll", "teacher_confidence"}


def models_create(arch, width):
    from repro import models
    return models.create(arch, num_classes=3, width=width)


def test_plot_balance_histograms_are_densities():
    edges = [-1.0, -0.5, 0.0, 0.5, 1.0]
    bal = {"gap": [0.1, 0.2, 0.3], "w_reverse": [0.6, 0.5, 0.4], "edges": edges,
           "hist": {"0": [0, 1, 3, 0], "4": [1, 1, 1, 1]}}
    result = SweepResult([{"arm": "bdkd", "seed": s, "extra": {"arm": "bdkd", "balance": bal}} for s in (0, 1)])
    fig, data = figures.plot_balance(result, ["bdkd"], setting="test", names={"bdkd": "BD-KD"})
    last = data["arms"]["BD-KD"]["epoch_5"]["counts"]
    assert last == [2, 2, 2, 2]  # pooled over the two seeds
    assert data["arms"]["BD-KD"]["mean_w_reverse"] == {"0": pytest.approx(0.5), "1": pytest.approx(0.5)}
    stairs = [p for p in fig.axes[0].patches]
    dens = [np.asarray(p.get_data().values) for p in stairs]
    assert all(float(np.sum(d * 0.5)) == pytest.approx(1.0) for d in dens)


def _setup(data, seed=0):
    return protocol.StudentSetup(student="cnn3", student_kwargs={"width": 4}, num_classes=data.num_classes,
                                train=data.loader("train", 8, seed=seed), test=data.loader("test", 16),
                                cfg=TrainConfig(epochs=2, lr=0.05, progress=False), teacher_arch="cnn3",
                                teacher_kwargs={"width": 8}, seed=seed)


def test_online_arm_logs_every_training_sample_and_pairs_the_initialisation(fake_data):
    data = load(classes=3, per_class=8, test_per_class=4, image_size=16)
    a, b = O._pair(_setup(data)), O._pair(_setup(data))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    res = protocol.train("bdkd", _setup(data), protocol.arm_config("bdkd", hard=True))
    bal = res.extra["balance"]
    assert sorted(bal["hist"]) == ["0", "1"]
    assert [sum(c) for c in bal["hist"].values()] == [24, 24]  # 3 classes × 8 images, each epoch
    assert bal["edges"][0] == pytest.approx(-math.log(3)) and bal["edges"][-1] == pytest.approx(math.log(3))
    assert set(bal["w_reverse"]) <= {0.0, 1 / 8, 2 / 8, 3 / 8, 4 / 8, 5 / 8, 6 / 8, 7 / 8, 1.0}  # hard: 0/1 per sample
    assert all("teacher_acc" in row for row in res.history)


def test_balance_table_quantiles_are_linear_within_a_bin():
    edges = [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert tables._quantiles([0, 2, 2, 0], edges, (0.05, 0.5, 0.95)) == pytest.approx([-0.45, 0.0, 0.45])
    bal = {"gap": [0.0], "w_reverse": [0.25, 0.75], "edges": edges, "hist": {"0": [9, 0, 0, 0], "3": [0, 2, 2, 0]}}
    result = SweepResult([{"arm": "bdkd", "seed": 0, "extra": {"arm": "bdkd", "balance": bal}}])
    row = tables.balance_markdown(result, ["bdkd", "ce"], {"bdkd": "BD-KD"}).splitlines()[2:]
    assert row == ["| BD-KD | 0.500 ± 0.000 | -0.450 / +0.000 / +0.450 |"]  # last epoch only; CE has no log
