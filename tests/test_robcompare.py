"""Chapter 46 (robustness under one evaluation): which models it compares and how, the compare
arm's EOT switch and builders, its leaderboard and guards."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from repro.errors import ParameterError
from repro.families.robustness import robcompare
from repro.families.robustness.arms import compare
from repro.families.robustness.attacks import AttackSpec
from repro.families.robustness.evaluate import EvalConfig
from repro.papers import load_spec
from repro.sweep import SweepResult


def params(tier: str = "cpu", **kw):
    return load_spec("robcompare").resolve(tier, kw)


def test_every_model_comes_from_its_chapter_with_one_evaluation():
    arms, left_out = robcompare.arm_configs(params())
    assert set(arms) | set(left_out) == set(params()["models"])
    evals = {cfg.eval for _, cfg in arms.values()}
    assert len(evals) == 1  # one evaluation for every model
    ev = evals.pop()
    assert [s.key for s in ev.attacks] == ["pgd", "apgd_ce", "apgd_t", "pgd_4", "pgd_16"]
    assert ev.images == 250 and ev.white_box().key == "pgd"
    assert all(name == "compare" for name, _ in arms.values())
    # the standard model is chapter 40's pre-trained network, with its very recipe
    from repro.families.robustness import advft
    assert arms["standard"][1].source_config == advft.arm_configs(load_spec("advft").resolve("cpu"))["pretrained"][1]
    # a chapter on other data at this tier is left out, with the reason
    assert "dat" in left_out and "classes 10 (here 20)" in left_out["dat"]


def test_bad_model_lists_fail_before_any_work():
    with pytest.raises(ParameterError, match="unknown"):
        robcompare.arm_configs(params(models=["standard", "nope"]))
    with pytest.raises(ParameterError, match="standard"):
        robcompare.arm_configs(params(models=["pgd_at"]))
    with pytest.raises(ParameterError, match="curve_eps_255"):
        robcompare.eval_config(params(curve_eps_255=[0.0]))


def test_eot_goes_only_into_attacks_that_take_it():
    ev = EvalConfig((AttackSpec("pgd", eps=0.03, steps=2), AttackSpec("fab", eps=0.03, steps=2)), images=8,
                    adaptive=False)
    got = compare.with_eot(ev, 4)
    assert [s.eot_samples for s in got.attacks] == [4, 1] and got.adaptive


def test_compare_arm_detects_a_stochastic_model_and_attacks_it_with_eot(monkeypatch):
    from repro.data import Dataset
    g = torch.Generator().manual_seed(0)
    data = Dataset(x_train=torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8, generator=g),
                   y_train=torch.arange(8) % 4, x_test=torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8, generator=g),
                   y_test=torch.arange(8) % 4, classes=[0, 1, 2, 3], class_names=list("abcd"), checksum="t", info={})

    class Noisy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3 * 8 * 8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin((x + 0.1 * torch.randn_like(x)).flatten(1))

    seen = {}

    surrogate = nn.Linear(3 * 8 * 8, 4)

    def fake_builder(cfg, data, seed, checkpoints, device):
        return compare.Built(Noisy().eval(), False, [], 0.0, 25.0, surrogates={"part": surrogate})
    monkeypatch.setitem(compare.BUILDERS, "noisy", fake_builder)

    def fake_evaluate(model, x, y, ev, normalised=True, surrogates=None):
        seen["eot"], seen["normalised"] = [s.eot_samples for s in ev.attacks], normalised
        seen["surrogates"] = surrogates
        from repro.families.robustness.evaluate import EvalResult
        return EvalResult(n=8, indices=list(range(8)), clean=50.0, robust={"pgd": 25.0}, attacks={})
    monkeypatch.setattr(compare, "evaluate", fake_evaluate)
    from repro.families.robustness.protocol import RobustConfig
    ev = EvalConfig((AttackSpec("pgd", eps=0.03, steps=2),), images=8, sanity=False)
    _, cfg = compare.compared("noisy", RobustConfig(model="cnn3"), ev, "noisy", eot_samples=3)
    job = compare.evaluate_compared(cfg, data, 0)
    assert seen == {"eot": [3], "normalised": False, "surrogates": {"part": surrogate}}
    assert not surrogate.training  # handed over in eval mode
    assert job.extra["stochastic"] and job.metrics["robust_worst"] == 25.0 and job.metrics["top1"] == 25.0


def _job(arm, seed, worst, clean=50.0, upper=False, flags=()):
    return {"arm": arm, "seed": seed, "metrics": {"top1": clean, "eval_clean": clean, "robust_pgd": worst,
                                                  "robust_worst": worst, "grad_evals": 100.0},
            "extra": {"title": arm, "robustness": {"upper_bound": upper, "flags": list(flags), "n": 100,
                                                   "clean": clean, "robust": {"pgd": worst}, "attacks": {}}}}


def test_leaderboard_sorts_by_worst_case_and_guards_flag_upper_bounds_and_failed_checks():
    res = SweepResult([_job("standard", 0, 1.0), _job("pgd_at", 0, 20.0), _job("advft", 0, 25.0, upper=True),
                       _job("crossmax", 0, 5.0, flags=["sanity check failed (black_box): x"])])
    rows = [r.split("|")[1].strip() for r in robcompare.leaderboard(res, ["pgd"]).splitlines()[2:]]
    assert rows == ["`advft`", "`pgd_at`", "`crossmax`", "`standard`"]
    upper = {r.split("|")[1].strip(): r.split("|")[-3].strip()
             for r in robcompare.leaderboard(res, ["pgd"]).splitlines()[2:]}
    assert upper == {"`advft`": "yes", "`pgd_at`": "no", "`crossmax`": "yes: a check failed", "`standard`": "no"}
    claims = load_spec("robcompare").claims
    flagged = dict(robcompare.guards(res, claims))
    by_arm = {c.arm: c.key for c in claims}
    assert "upper bound" in flagged[by_arm["advft"]] and "black_box" in flagged[by_arm["crossmax"]]
    assert by_arm["adasmooth"] not in flagged
