"""One rule turns a claim and our numbers into a verdict. The book prints this rule.

For an **effect** claim (a difference that the paper says is positive, or negative),
with our mean m and Student-t 95% interval [lo, hi] over seeds:

* *not reproduced* — m is zero or on the other side of the claimed sign;
* *partly* — m is on the claimed side but the interval includes zero (fewer than two seeds
  count as such), or, at the paper tier, the size differs from the paper's value by more
  than the claim's tolerance;
* *reproduced* — the whole interval is on the claimed side (and, at the paper tier, the
  size is within tolerance of the paper's value when the paper gives one).

Below the paper tier only the direction of an effect is judged: the reduced schedules are
not expected to match the paper's magnitudes.

For an **absolute** claim (a value, e.g. 57.5% top-1), only a paper-tier run is judged:
*reproduced* if |m − paper| ≤ tolerance, *partly* within twice the tolerance, otherwise
*not reproduced*. Smaller tiers give *budget-limited*: the number is shown, not judged.

Smoke runs check mechanics and never give a verdict (*budget-limited*).
"""
from __future__ import annotations

from typing import Any

VERDICTS = ("reproduced", "partly", "not reproduced", "budget-limited")


def judge(claim: Any, ours: dict[str, float] | None, tier: str) -> tuple[str, str]:
    """Verdict and a one-line reason for one claim.

    claim: a ``repro.papers.Claim``; ours: ``repro.metrics.mean_ci`` output (mean,
    ci_low, ci_high, n) or None when the metric was not logged.
    """
    if not ours or ours.get("n", 0) == 0:
        return "not reproduced", "the run logged no value for this metric"
    m, lo, hi, n = ours["mean"], ours["ci_low"], ours["ci_high"], ours["n"]
    if tier == "smoke":
        return "budget-limited", "smoke tier: mechanics only"
    if claim.kind == "absolute":
        if tier != "paper":
            return "budget-limited", f"{tier} tier: a reduced schedule is not compared with the paper's value"
        if claim.paper_value is None:
            return "budget-limited", "the paper's value is unknown"
        diff = abs(m - claim.paper_value)
        if diff <= claim.tolerance:
            return "reproduced", f"|ours − paper| = {diff:.2f} ≤ {claim.tolerance}"
        if diff <= 2 * claim.tolerance:
            return "partly", f"|ours − paper| = {diff:.2f} is within 2 × {claim.tolerance}"
        return "not reproduced", f"|ours − paper| = {diff:.2f} > 2 × {claim.tolerance}"
    sign = 1.0 if claim.direction == "higher" else -1.0
    if sign * m <= 0:
        return "not reproduced", f"mean {m:+.2f} is not on the claimed side ({claim.direction})"
    if n < 2 or sign * lo <= 0 or sign * hi <= 0:
        return "partly", f"mean {m:+.2f} on the claimed side, but the 95% CI [{lo:+.2f}, {hi:+.2f}] includes 0"
    if tier == "paper" and claim.paper_value is not None and abs(m - claim.paper_value) > claim.tolerance:
        return "partly", f"direction holds; size {m:+.2f} vs paper {claim.paper_value:+.2f} (tolerance {claim.tolerance})"
    return "reproduced", f"95% CI [{lo:+.2f}, {hi:+.2f}] excludes 0 on the claimed side"


def overall(verdicts: list[str]) -> str:
    """A paper's verdict is its headline (first) claim's."""
    return verdicts[0] if verdicts else "not reproduced"
