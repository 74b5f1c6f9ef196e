"""The verdict rule (repro.verdicts) on hand-made numbers: one test per state and guard."""
from __future__ import annotations

import pytest

from repro.papers import Claim
from repro.verdicts import (Evidence, binomial_var, effective_df, chance_flags, claim_evidence, interval, judge, overall,
                            seeds_needed, smallest_detectable)


def effect(**kw) -> Claim:
    base = dict(id="c", text="arm beats base", metric="top1", arm="a", baseline="b")
    return Claim(**{**base, **kw})


def ev(*values: float, test_var: float = 0.0, flags=()) -> Evidence:
    return Evidence({str(i): v for i, v in enumerate(values)}, test_var, list(flags))


def test_interval_counts_seed_spread_and_test_set_error():
    iv = interval([1.0, 2.0, 3.0])  # s = 1, se = 1/√3, t(0.975, 2) = 4.302653
    assert iv["mean"] == 2.0 and iv["std"] == pytest.approx(1.0)
    assert (iv["ci_low"], iv["ci_high"]) == pytest.approx((2 - 2.484138, 2 + 2.484138), abs=1e-5)
    # Three seeds that agree exactly still have the shared test-set error, a known (binomial)
    # variance: half-width z(0.975)·√0.25 = 1.959964 · 0.5.
    iv = interval([2.0, 2.0, 2.0], test_var=0.25)
    assert (iv["ci_low"], iv["ci_high"]) == pytest.approx((2 - 0.979982, 2 + 0.979982), abs=1e-5)
    assert iv["se_test"] == 0.5 and iv["se_seed"] == 0.0
    # Both terms: se² = 1/3 + 1/4; Satterthwaite ν = (7/12)² / ((1/3)² / 2) = 6.125,
    # t(0.975, 6.125) = 2.43490, half-width 2.43490 · 0.763763 = 1.85965.
    assert effective_df(1 / 3, 0.25, 3) == pytest.approx(6.125)
    iv = interval([1.0, 2.0, 3.0], test_var=0.25)
    assert iv["ci_high"] - 2 == pytest.approx(1.85965, abs=1e-4)


def test_binomial_variance_of_an_accuracy():
    assert binomial_var(50.0, 1000) == pytest.approx(2.5)   # 100² · 0.25 / 1000
    assert binomial_var(100.0, 1000) == 0.0 and binomial_var(50.0, 0) == 0.0


def test_smallest_detectable_effect_and_seeds_needed():
    # (t(0.975, 2) + t(0.80, 2)) / √3 = (4.302653 + 1.060660) / 1.732051
    assert smallest_detectable(1.0, 0.0, 3) == pytest.approx(3.096518, abs=1e-5)
    assert smallest_detectable(1.0, 0.0, 1) is None
    assert seeds_needed(10.0, 1.0, 0.0) == 3
    assert seeds_needed(1.0, 1.0, 0.0) == 10      # 9 seeds: 1.065 > 1; 10 seeds: 0.995
    assert seeds_needed(1.0, 1.0, 1.0) is None    # the test-set error alone exceeds the effect
    assert seeds_needed(None, 1.0, 0.0) is None


def test_reproduced_not_reproduced_inconclusive():
    assert judge(effect(), ev(5, 6, 7), "cpu")[0] == "reproduced"           # CI [3.52, 8.48]
    assert judge(effect(), ev(-5, -6, -7), "cpu")[0] == "not reproduced"    # CI [−8.48, −3.52]
    v, why = judge(effect(), ev(1, -1, 0.5), "cpu")
    assert v == "inconclusive" and "includes 0" in why and "detects effects ≥" in why
    # direction "lower": a negative difference is the claimed side
    assert judge(effect(direction="lower"), ev(-5, -6, -7), "cpu")[0] == "reproduced"


def test_inconclusive_reason_gives_seeds_for_the_papers_effect():
    v, why = judge(effect(paper_value=1.0), ev(1, -1, 0.5), "cpu")
    assert v == "inconclusive" and "the paper's +1 would need" in why


def test_fewer_than_three_seeds_never_judge():
    v, why = judge(effect(), ev(5, 6), "cpu")
    assert v == "inconclusive" and "2 seeds" in why
    assert judge(effect(), ev(-5, -6), "cpu")[0] == "inconclusive"


def test_guards_make_a_verdict_inconclusive():
    v, why = judge(effect(), ev(5, 6, 7, flags=["arm a learned nothing"]), "cpu")
    assert v == "inconclusive" and "learned nothing" in why
    # Zero spread between arms that differ, with no test-set error: fixed by the design.
    v, why = judge(effect(metric="rank_swaps"), ev(1.1, 1.1, 1.1), "cpu")
    assert v == "inconclusive" and "zero spread" in why
    # The same numbers with a test-set error are an estimate: CI 1.1 ± 1.96 · 0.1.
    assert judge(effect(), ev(1.1, 1.1, 1.1, test_var=0.01), "cpu")[0] == "reproduced"


def test_not_testable_tier_and_smoke_are_budget_limited():
    c = effect(tiers=("gpu", "paper"), untestable="mechanics only on the cpu tier")
    v, why = judge(c, ev(5, 6, 7), "cpu")
    assert v == "budget-limited" and "mechanics only" in why
    assert judge(c, ev(5, 6, 7), "gpu")[0] == "reproduced"
    assert judge(effect(), ev(5, 6, 7), "smoke")[0] == "budget-limited"
    with pytest.raises(ValueError, match="must say why"):
        effect(tiers=("paper",))


def test_comparable_tier_checks_the_size_against_the_paper():
    c = effect(paper_value=10.0)
    assert judge(c, ev(5, 6, 7), "cpu")[0] == "reproduced"          # sizes not comparable
    v, why = judge(c, ev(5, 6, 7), "paper")                          # CI ends at 8.48 < 10
    assert v == "not reproduced" and "wholly below" in why
    assert judge(effect(paper_value=10.0, comparable=("gpu",)), ev(5, 6, 7), "gpu")[0] == "not reproduced"
    assert judge(c, ev(8, 10, 12), "paper")[0] == "reproduced"


def test_noninferiority_with_a_margin():
    c = effect(kind="noninferior", margin=1.0)
    assert judge(c, ev(-0.2, 0.1, 0.0), "cpu")[0] == "reproduced"       # lower bound −0.41 > −1
    assert judge(c, ev(-3.0, -2.5, -3.5), "cpu")[0] == "not reproduced"  # upper bound −1.76 < −1
    assert judge(c, ev(-1.0, 0.0, -2.0), "cpu")[0] == "inconclusive"     # [−3.48, +1.48]
    with pytest.raises(ValueError, match="margin"):
        effect(kind="noninferior")


def test_absolute_claims_only_where_comparable():
    c = effect(kind="absolute", baseline=None, paper_value=57.5, tolerance=2.0)
    assert judge(c, ev(57.0, 57.5, 58.0), "cpu")[0] == "budget-limited"
    assert judge(c, ev(57.0, 57.5, 58.0), "paper")[0] == "reproduced"
    assert judge(c, ev(54.0, 54.5, 55.0), "paper")[0] == "partly"           # 3 from the paper
    assert judge(c, ev(40.0, 40.5, 41.0), "paper")[0] == "not reproduced"


def test_overall_verdict_of_a_paper():
    assert overall(["reproduced", "reproduced"]) == "reproduced"
    assert overall(["reproduced", "not reproduced"]) == "partly"
    assert overall(["inconclusive", "reproduced"]) == "inconclusive"
    assert overall([]) == "inconclusive"


def rows(arm: str, values, n: int = 1000, metric: str = "top1"):
    return [{"arm": arm, "seed": s, "metric": metric, "value": v, "n_test": n} for s, v in enumerate(values)]


def test_evidence_from_rows_pairs_seeds_and_counts_binomial_error():
    r = rows("a", [60, 62, 61]) + rows("b", [50, 52, 51])
    e = claim_evidence(effect(), r)
    assert e.per_seed == {"0": 10, "1": 10, "2": 10}
    # mean over seeds of 100²(p_a q_a + p_b q_b)/1000: (4.9 + 4.852 + 4.878) / 3
    assert e.test_var == pytest.approx(4.876667, abs=1e-6)
    assert claim_evidence(effect(metric="ece"), rows("a", [3, 4, 5], metric="ece") + rows("b", [5, 6, 7], metric="ece")).test_var == 0.0
    assert claim_evidence(effect(arm="zzz"), r) is None
    assert claim_evidence(Claim(id="x", text="t", metric="gap"), [], {"0": 1.0}).per_seed == {"0": 1.0}


def test_chance_level_guard():
    r = rows("a", [1.0, 1.2, 0.8]) + rows("b", [30, 31, 32])
    # chance 1%: 1 + 2·√(100²·0.01·0.99/1000) = 1.63 ≥ the arm's mean 1.0
    flags = chance_flags(effect(), r, 1.0)
    assert len(flags) == 1 and "arm a learned nothing" in flags[0]
    assert chance_flags(effect(), rows("a", [20, 21, 22]) + rows("b", [30, 31, 32]), 1.0) == []
