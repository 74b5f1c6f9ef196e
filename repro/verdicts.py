"""One rule turns a claim and our numbers into a verdict. The book prints this rule
(``RULE_MARKDOWN``) on its Protocol page, and the audit re-applies it to every record.

Nothing here imports torch: the rule works on per-seed numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

STATES = ("reproduced", "partly", "inconclusive", "not reproduced", "budget-limited")
VERDICTS = STATES  # the name older code imports
MIN_SEEDS = 3        # fewer never give "reproduced" or "not reproduced"
CONFIDENCE = 0.95    # two-sided interval
POWER = 0.80         # for the smallest detectable effect
# Metrics that are proportions (in percent) of test images: their test-set sampling error is
# binomial. A claim may say otherwise with ``test_noise = "none"`` (or ``"binomial"``).
BINOMIAL_METRICS = ("top1", "top5", "aia", "last", "test_err", "acc")

RULE_MARKDOWN = """\
Every claim of a chapter is judged by one rule, `repro.verdicts.judge`, from the run's
per-seed numbers. A verdict is one of five states:

| verdict | meaning |
| --- | --- |
| **reproduced** | the evidence supports the claim |
| **partly** | an absolute value within twice the tolerance; or a paper whose headline claim is reproduced while another judged claim is not |
| **inconclusive** | the run cannot tell: its interval is too wide, it has fewer than 3 seeds, or a guard fired |
| **not reproduced** | the evidence speaks against the claim: the interval excludes it |
| **budget-limited** | the tier cannot judge this claim (smoke, or declared not testable at this tier); the number is shown, not judged |

**The interval.** An effect is a paired difference per seed, d_i = arm_i − baseline_i (same
seed, same data, same test images). Its 95% interval is

mean(d) ± t(0.975, ν) · √(s²/n + v_test),

where s is the spread of d over the n seeds, v_test the test-set sampling variance of the
difference, and ν the Welch–Satterthwaite degrees of freedom (n − 1 when v_test is 0; more as
the known test term dominates). Every seed is scored on the same test images, so that error does not shrink with
more seeds. For accuracies (top-1, average incremental accuracy, last-task accuracy, test
error) v_test is binomial, 100²·(p_a(1 − p_a) + p_b(1 − p_b))/N on N test images, averaged over
seeds. It ignores the correlation between two models scored on the same images, so it errs on
the wide side. A chapter may store a metric's own test-set variance with each per-seed value
(AUROC: the Hanley–McNeil variance; coverage or abstention rate: binomial on the images they
count); v_test is then that variance, summed over arm and baseline and averaged over seeds.
Other metrics (ECE, forgetting, R², timings) count the spread over seeds only.
No accuracy interval has zero width.

**Effect claims** (the paper says the difference is positive, or negative):
- *reproduced*: the interval excludes 0 on the claimed side;
- *not reproduced*: the interval excludes 0 on the wrong side, or, where the tier's setting is
  comparable with the paper's (the paper tier, or a tier the spec declares comparable), the
  interval lies wholly below the paper's effect;
- *inconclusive*: everything else. The reason gives the smallest effect this run could detect
  (95% two-sided, 80% power: (t(0.975, ν) + t(0.80, ν)) · √(s²/n + v_test)) and, where the
  paper's effect is known, the seeds that would detect it.

**Non-inferiority and parity claims** ("at least as accurate as") carry a margin δ fixed in the
spec before running: *reproduced* if the lower bound is above −δ, *not reproduced* if the upper
bound is below −δ, else *inconclusive*.

**Absolute claims** (a value, e.g. 57.5% top-1) are judged only where the setting is
comparable: *reproduced* if |mean − paper| ≤ tolerance, *partly* within twice the tolerance,
*not reproduced* if the whole interval lies further than twice the tolerance from the paper's
value, else *inconclusive*. At other tiers they read *budget-limited*.

**What is never judged.**
- Smoke runs and dry runs.
- A claim the spec declares not testable at the run's tier (`tiers = ["gpu", "paper"]` with a
  reason, where the tier leaves the paper's regime or the card calls it mechanics only). It
  shows its number and reads *budget-limited*.
- Fewer than 3 seeds: at most *inconclusive*.

**Guards** make a verdict *inconclusive*, with the reason:
- an arm that learned nothing (top-1 at chance level, or at chance on a task right after learning it);
- two arms that choose the same configuration by construction;
- an effect with zero spread over seeds whose arms differ, and no test-set error to count.

A claim whose metric the run did not log is a bug in the chapter, not a verdict: the run fails.
A paper's verdict is its headline (first) claim's; *partly* if that one is reproduced and
another judged claim is not reproduced.
"""


def t_quantile(q: float, df: float) -> float:
    """Student-t quantile (scipy); the normal one for infinite df."""
    from scipy import stats

    return float(stats.norm.ppf(q) if math.isinf(df) else stats.t.ppf(q, df))


def binomial_var(pct: float, n: int) -> float:
    """Sampling variance (points²) of an accuracy of ``pct`` percent measured on ``n`` images."""
    if n <= 0:
        return 0.0
    p = min(max(pct / 100.0, 0.0), 1.0)
    return 100.0 ** 2 * p * (1.0 - p) / n


def uses_binomial(claim: Any) -> bool:
    """Whether the claim's metric is a proportion of test images (see BINOMIAL_METRICS)."""
    mode = getattr(claim, "test_noise", "auto")
    if mode in ("binomial", "none"):
        return mode == "binomial"
    return any(claim.metric == m or claim.metric.startswith(m + "_") for m in BINOMIAL_METRICS)


@dataclass
class Evidence:
    """What a claim is judged on: per-seed values, the test-set sampling variance of their
    mean, and the guards that fired."""

    per_seed: dict[str, float]
    test_var: float = 0.0
    flags: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.per_seed)


def interval(values: Sequence[float], test_var: float = 0.0, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Mean and interval ``mean ± t(q, ν)·√(s²/n + test_var)`` (see RULE_MARKDOWN; ν from
    :func:`effective_df`).

    Returns mean, std (of the values, ddof=1), ci_low, ci_high, n, se (the combined standard
    error), se_seed and se_test. One value: std 0 and an interval from the test term alone
    with a normal quantile; no values: NaNs.
    """
    v = [float(x) for x in values]
    n = len(v)
    nan = float("nan")
    if n == 0:
        return {"mean": nan, "std": nan, "ci_low": nan, "ci_high": nan, "n": 0, "se": nan,
                "se_seed": nan, "se_test": math.sqrt(test_var)}
    mean = sum(v) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1)) if n > 1 else 0.0
    se_seed = std / math.sqrt(n)
    se = math.sqrt(se_seed ** 2 + test_var)
    crit = t_quantile(0.5 + confidence / 2, effective_df(se_seed ** 2, test_var, n))
    return {"mean": mean, "std": std, "ci_low": mean - crit * se, "ci_high": mean + crit * se, "n": n,
            "se": se, "se_seed": se_seed, "se_test": math.sqrt(test_var)}


def effective_df(seed_var: float, test_var: float, n: int) -> float:
    """Welch–Satterthwaite degrees of freedom of ``seed_var + test_var``: the seed term is
    estimated from n − 1 degrees of freedom, the binomial test term is known (infinite).
    n − 1 when the test term is 0; large when it dominates; infinite for one seed."""
    if n < 2 or seed_var == 0:
        return math.inf
    return (seed_var + test_var) ** 2 / (seed_var ** 2 / (n - 1))


def smallest_detectable(seed_sd: float, test_var: float, n: int, confidence: float = CONFIDENCE,
                        power: float = POWER) -> float | None:
    """The smallest true effect a run of ``n`` seeds detects with the given power:
    ``(t(q, ν) + t(power, ν)) · √(seed_sd²/n + test_var)``. None for n < 2."""
    if n < 2:
        return None
    df = effective_df(seed_sd ** 2 / n, test_var, n)
    if seed_sd == 0 and test_var == 0:
        df = n - 1
    return (t_quantile(0.5 + confidence / 2, df) + t_quantile(power, df)) * math.sqrt(seed_sd ** 2 / n + test_var)


def seeds_needed(effect: float | None, seed_sd: float, test_var: float, max_seeds: int = 50) -> int | None:
    """The fewest seeds (≥ MIN_SEEDS) whose smallest detectable effect is ≤ |effect|; None if
    the effect is unknown or more than ``max_seeds`` would be needed (the test-set error alone
    may be too large: then no number of seeds suffices)."""
    if effect is None or effect == 0:
        return None
    for n in range(MIN_SEEDS, max_seeds + 1):
        mde = smallest_detectable(seed_sd, test_var, n)
        if mde is not None and mde <= abs(effect):
            return n
    return None


def claim_evidence(claim: Any, rows: Sequence[dict[str, Any]], logged: dict[str, float] | None = None,
                   flags: Sequence[str] = ()) -> Evidence | None:
    """The evidence for ``claim`` from a run's tidy rows (arm, seed, metric, value, n_test):
    the arm's values, minus the baseline's of the same seed, and their binomial test-set
    variance; or, for a claim on a metric the chapter logs itself, ``logged`` (seed → value,
    no test term). None when nothing was found."""
    if claim.arm is None:
        return Evidence(dict(logged), 0.0, list(flags)) if logged else None

    def of(arm: str) -> dict[str, tuple[float, int]]:
        return {str(r["seed"]): (float(r["value"]), int(r.get("n_test", 0))) for r in rows
                if r["arm"] == arm and r["metric"] == claim.metric}

    def stored(arm: str) -> dict[str, float]:
        return {str(r["seed"]): float(r["test_var"]) for r in rows
                if r["arm"] == arm and r["metric"] == claim.metric and r.get("test_var") is not None}
    a = of(claim.arm)
    b = of(claim.baseline) if claim.baseline else {}
    seeds = [s for s in a if not claim.baseline or s in b]
    if not seeds:
        return None
    per_seed = {s: a[s][0] - (b[s][0] if claim.baseline else 0.0) for s in seeds}
    test_var = 0.0
    va, vb = stored(claim.arm), stored(claim.baseline) if claim.baseline else {}
    if getattr(claim, "test_noise", "auto") != "none" and va and all(s in va for s in seeds) \
            and (not claim.baseline or all(s in vb for s in seeds)):
        # the chapter's own test-set variance of this metric (e.g. Hanley–McNeil for AUROC)
        test_var = sum(va[s] + (vb[s] if claim.baseline else 0.0) for s in seeds) / len(seeds)
    elif uses_binomial(claim):
        v = [binomial_var(a[s][0], a[s][1]) + (binomial_var(b[s][0], b[s][1]) if claim.baseline else 0.0)
             for s in seeds]
        test_var = sum(v) / len(v)
    return Evidence(per_seed, test_var, list(flags))


def chance_flags(claim: Any, rows: Sequence[dict[str, Any]], chance_pct: float | None) -> list[str]:
    """Guard: an arm of an accuracy claim whose mean over seeds is not above chance level
    (within two binomial standard errors at chance), i.e. it learned nothing."""
    if chance_pct is None or claim.arm is None or not uses_binomial(claim) or claim.metric == "test_err":
        return []
    out = []
    for arm in (claim.arm, claim.baseline):
        vals = [(float(r["value"]), int(r.get("n_test", 0))) for r in rows
                if arm and r["arm"] == arm and r["metric"] == claim.metric]
        if not vals:
            continue
        mean = sum(v for v, _ in vals) / len(vals)
        n = max(k for _, k in vals) or 1
        if mean <= chance_pct + 2 * math.sqrt(binomial_var(chance_pct, n)):
            out.append(f"arm {arm} learned nothing ({claim.metric} {mean:.1f}% vs chance {chance_pct:.1f}%)")
    return out


def comparable(claim: Any, tier: str) -> bool:
    """Whether the tier's setting is comparable with the paper's for this claim: the paper
    tier, or a tier listed in the claim's ``comparable``."""
    return tier == "paper" or tier in (getattr(claim, "comparable", None) or ())


def testable(claim: Any, tier: str) -> bool:
    """Whether the claim is judged at ``tier`` (its ``tiers`` list, empty = every tier)."""
    tiers = getattr(claim, "tiers", None) or ()
    return not tiers or tier in tiers


def _fmt(x: float) -> str:
    return f"{x:+.2f}"


def _power_text(claim: Any, ev: Evidence, iv: dict[str, Any]) -> str:
    mde = smallest_detectable(iv["std"], ev.test_var, iv["n"])
    text = f"this run detects effects ≥ {mde:.2f} {claim.unit}" if mde is not None else "too few seeds to estimate power"
    if claim.paper_value is not None and claim.kind == "effect":
        need = seeds_needed(claim.paper_value, iv["std"], ev.test_var)
        text += (f"; the paper's {claim.paper_value:+g} would need {need} seeds" if need else
                 f"; the paper's {claim.paper_value:+g} is below what seeds alone can resolve on this test set")
    return text


def judge(claim: Any, ev: Evidence | None, tier: str) -> tuple[str, str]:
    """Verdict and a one-line reason for one claim (``repro.papers.Claim``) at ``tier``."""
    if tier == "smoke":
        return "budget-limited", "smoke tier: mechanics only"
    if not testable(claim, tier):
        why = getattr(claim, "untestable", "") or "the tier leaves the paper's regime"
        return "budget-limited", f"not testable at the {tier} tier: {why}"
    if ev is None or ev.n == 0:
        return "inconclusive", "the run logged no value for this metric"
    iv = interval(list(ev.per_seed.values()), ev.test_var)
    m, lo, hi, n = iv["mean"], iv["ci_low"], iv["ci_high"], iv["n"]
    ci = f"95% CI [{_fmt(lo)}, {_fmt(hi)}]"
    if claim.kind == "absolute" and not comparable(claim, tier):
        return "budget-limited", f"{tier} tier: its setting is not comparable with the paper's value"
    if ev.flags:
        return "inconclusive", "guard: " + "; ".join(ev.flags)
    if n < MIN_SEEDS:
        return "inconclusive", f"{n} seed{'s' if n != 1 else ''}: at least {MIN_SEEDS} are needed to judge ({ci})"
    if iv["se"] == 0 and claim.arm and claim.baseline:
        return "inconclusive", ("guard: zero spread over seeds although the arms differ, and no test-set "
                                "error to count: the effect is fixed by the design, not estimated")
    if claim.kind == "absolute":
        if claim.paper_value is None:
            return "budget-limited", "the paper's value is unknown"
        diff, tol = abs(m - claim.paper_value), claim.tolerance
        if diff <= tol:
            return "reproduced", f"|ours − paper| = {diff:.2f} ≤ {tol:g} ({ci})"
        if diff <= 2 * tol:
            return "partly", f"|ours − paper| = {diff:.2f} is within 2 × {tol:g} ({ci})"
        if hi < claim.paper_value - 2 * tol or lo > claim.paper_value + 2 * tol:
            return "not reproduced", f"the {ci} lies more than 2 × {tol:g} from the paper's {claim.paper_value:g}"
        return "inconclusive", f"|ours − paper| = {diff:.2f} > 2 × {tol:g}, but the {ci} reaches the tolerance"
    sign = 1.0 if claim.direction == "higher" else -1.0
    olo, ohi = sorted((sign * lo, sign * hi))  # the interval oriented so the claimed side is +
    if claim.kind == "noninferior":
        margin = float(claim.margin or 0.0)
        if olo > -margin:
            return "reproduced", f"{ci} stays within the margin {margin:g} {claim.unit} on the claimed side"
        if ohi < -margin:
            return "not reproduced", f"{ci} lies wholly beyond the margin {margin:g} {claim.unit}"
        return "inconclusive", f"{ci} straddles the margin −{margin:g} {claim.unit}; {_power_text(claim, ev, iv)}"
    if ohi < 0:
        return "not reproduced", f"{ci} excludes 0 on the side opposite to the claim ({claim.direction})"
    if olo > 0:
        if comparable(claim, tier) and claim.paper_value is not None and ohi < sign * claim.paper_value:
            return "not reproduced", f"{ci} lies wholly below the paper's effect {claim.paper_value:+g}"
        return "reproduced", f"{ci} excludes 0 on the claimed side ({claim.direction})"
    return "inconclusive", f"mean {_fmt(m)}, {ci} includes 0; {_power_text(claim, ev, iv)}"


def overall(verdicts: list[str | None]) -> str:
    """A paper's verdict: its headline (first) claim's; *partly* when the headline is
    reproduced and another judged claim is not reproduced."""
    if not verdicts or verdicts[0] is None:
        return "inconclusive"
    if verdicts[0] == "reproduced" and "not reproduced" in verdicts[1:]:
        return "partly"
    return verdicts[0]
