"""Chapter 40 (adversarial fine-tuning): its arms, evaluation, compute accounting, guards, and
the family tables it reads (robust accuracy per ε, sanity flags, the hardening guard)."""
from __future__ import annotations

import pytest

from repro.errors import ParameterError
from repro.families.robustness import advft, tables
from repro.papers import load_spec
from repro.sweep import SweepResult
from repro.train import lr_factor


def params(tier: str = "cpu", **kw):
    return load_spec("advft").resolve(tier, kw)


def test_evaluation_has_pgd_apgd_and_the_curve_radii():
    ev = advft.eval_config(params(curve_eps_255=[2.0, 4.0, 16.0]))
    got = {s.key: (s.name, round(s.eps * 255, 6)) for s in ev.attacks}
    assert got == {"pgd": ("pgd", 8.0), "apgd_ce": ("apgd_ce", 8.0), "pgd_2": ("pgd", 2.0), "pgd_4": ("pgd", 4.0),
                   "pgd_16": ("pgd", 16.0)}
    assert ev.white_box().key == "pgd" and ev.images == 500
    # a curve radius equal to eval_eps is not attacked twice
    assert [s.key for s in advft.eval_config(params(curve_eps_255=[8.0])).attacks] == ["pgd", "apgd_ce"]
    with pytest.raises(ParameterError, match="curve_eps_255"):
        advft.eval_config(params(curve_eps_255=[300.0]))


def test_fine_tunings_share_one_pretrained_start_and_differ_only_in_their_schedule():
    arms = advft.arm_configs(params())
    pre = arms["pretrained"][1]
    assert pre.adv is None and pre.epochs == 15
    ft = {k: arms[k][1] for k in advft.FINE_TUNED}
    assert all(c.init == pre and c.epochs == 2 and c.adv.steps == 3 for c in ft.values())
    assert (ft["ft_slowfast"].schedule, ft["ft_slowfast"].lr, ft["ft_slowfast"].warmup_epochs) == ("linear", 0.1, 1.0)
    assert (ft["ft_constant"].schedule, ft["ft_constant"].lr) == ("constant", 0.01)
    assert (ft["ft_step"].schedule, ft["ft_step"].lr, ft["ft_step"].warmup_epochs) == ("step", 0.1, 0.0)
    scratch = arms["at_scratch"][1]
    assert scratch.init is None and scratch.epochs == 15 and scratch.schedule == "step"
    # the slow start: 40 steps per epoch, 2 epochs → ramp over 40 steps, then down to 0
    tc = advft.train_config(ft["ft_slowfast"])
    assert [lr_factor(tc, s, 80, 40) for s in (0, 39, 40, 60, 79)] == pytest.approx([1 / 40, 1, 1, 0.5, 1 / 40])


@pytest.mark.parametrize("bad, msg", [({"ft_warmup": 1.0}, "ft_warmup"), ({"ft_epochs": 0}, "ft_epochs"),
                                      ({"track_images": 600}, "track_images")])
def test_bad_settings_fail_before_any_work(bad, msg):
    with pytest.raises(ParameterError, match=msg):
        advft.arm_configs(params(**bad))


def job(arm, seed, clean, robust, evals, ft=None, flags=(), n=100, pgd=None):
    metrics = {"top1": clean, "eval_clean": clean, "robust_pgd": robust if pgd is None else pgd,
               "robust_worst": robust, "grad_evals": evals}
    cfg = {"epochs": 2, "adv": None, "init": None}
    if ft is not None:
        metrics["grad_evals_finetune"] = ft
        cfg["init"] = {"adv": None}
    rob = {"n": n, "clean": clean, "robust": {"pgd": metrics["robust_pgd"]}, "flags": list(flags),
           "attacks": {"pgd": {"name": "pgd", "eps": 8 / 255}}}
    return {"arm": arm, "seed": seed, "metrics": metrics, "extra": {"config": cfg, "robustness": rob, "title": arm}}


def fake(flags=()):
    jobs = []
    for s in (0, 1):
        jobs += [job("pretrained", s, 60, 0, 1000), job("at_scratch", s, 40, 20, 4000, flags=flags),
                 job("ft_slowfast", s, 45, 22, 1400, ft=400)]
    return SweepResult(jobs)


def test_compute_table_counts_the_fine_tuning_with_and_without_its_pretraining():
    table = advft.compute_table(fake())
    row = next(r for r in table.splitlines() if r.startswith("| `ft_slowfast`"))
    assert "| 0.10 (0.35) |" in row and "| 400 | 1400 |" in row


def test_guards_flag_only_the_claims_on_adversarial_arms():
    claims = load_spec("advft").claims
    assert advft.guards(fake(), claims) == []
    flagged = advft.guards(fake(flags=["sanity check failed (unbounded): x"]), claims)
    assert {k for k, _ in flagged} == {c.key for c in claims} and "at_scratch seed 0" in flagged[0][1]


def test_hardening_flag_by_hand():
    # pretrained loses 60 points to PGD, at_scratch 20: clearly harder to attack
    assert tables.hardening_flag(fake(), "at_scratch", "pretrained") is None
    # an "AT" model that loses as much as the standard one is flagged
    res = SweepResult([job("pretrained", 0, 60, 0, 1), job("at_scratch", 0, 50, 0, 1)])
    assert "did not make at_scratch harder" in tables.hardening_flag(res, "at_scratch", "pretrained")


def test_eps_curves_put_clean_accuracy_at_zero_and_each_pgd_radius_on_its_own():
    res = fake()
    res.jobs[1]["extra"]["robustness"]["attacks"]["pgd_2"] = {"name": "pgd", "eps": 2 / 255}
    res.jobs[1]["extra"]["robustness"]["robust"]["pgd_2"] = 33.0
    curves = tables.eps_curves(res, ["at_scratch", "pretrained"])
    assert curves["at_scratch"] == {0.0: [40, 40], 8 / 255: [20, 20], 2 / 255: [33.0]}
    assert curves["pretrained"] == {0.0: [60, 60], 8 / 255: [0, 0]}


def test_table_cells_by_hand():
    from repro.families.robustness.tables import count, fmt
    assert fmt(None) == "—" and fmt(float("nan")) == "—" and fmt(12.345) == "12.3" and fmt(1.0, 2) == "1.00"
    assert count(None) == "—" and count(950.0) == "950" and count(25_000.0) == "25 k" and count(3_400_000.0) == "3.40 M"


def test_eps_curves_leave_out_attacks_crafted_on_a_surrogate():
    job = {"arm": "m", "seed": 0, "metrics": {}, "extra": {"robustness": {
        "clean": 50.0, "robust": {"pgd": 20.0, "pgd_16": 5.0, "transfer_final": 10.0},
        "attacks": {"pgd": {"name": "pgd", "eps": 8 / 255}, "pgd_16": {"name": "pgd", "eps": 16 / 255},
                    "transfer_final": {"name": "pgd", "eps": 8 / 255, "transfer_from": "final"}}}}}
    from repro.sweep import SweepResult
    assert tables.eps_curves(SweepResult([job]), ["m"]) == {"m": {0.0: [50.0], 8 / 255: [20.0], 16 / 255: [5.0]}}
