"""The four tiers. A tier is a set of parameter overrides stored with each paper's spec;
the code that runs is the same in every tier."""
from __future__ import annotations

from .errors import ParameterError

TIERS: dict[str, str] = {
    "smoke": "seconds on 2 CPU cores; checks the mechanics in CI, no verdict",
    "cpu": "≤ 5 min on 2 CPU cores, real CIFAR-100, small models: tests the claim's direction",
    "gpu": "≤ 10 min on one H100: a reduced schedule of the paper's setting",
    "paper": "the paper's own schedule (checkpointed and resumable)",
}
ORDER = tuple(TIERS)  # smallest to largest


def check_tier(tier: object) -> str:
    """Return ``tier`` if it names a tier, else raise ParameterError listing the tiers."""
    if not isinstance(tier, str) or tier not in TIERS:
        raise ParameterError(f"unknown tier {tier!r}; choose one of: {', '.join(TIERS)}")
    return tier
