"""Split conformal prediction sets from softmax probabilities: THR, APS and RAPS.

Conventions (the dtcp chapter quotes them):

* **Scores are non-conformity scores** (higher = the label fits worse). The calibration
  threshold is ``q̂ = conformal_quantile(cal_scores, alpha)``, the ``k``-th smallest score
  with ``k = ⌈(n + 1)(1 − α)⌉``, and the prediction set of ``x`` is every class ``j`` whose
  score ``s(x, j, u) ≤ q̂``. The set constructors evaluate *the same* score function for
  every class, so ``y ∈ set(x) ⟺ s(x, y, u) ≤ q̂`` holds exactly, which is what the
  coverage guarantee ``P(y ∈ set) ≥ 1 − α`` rests on (and, with continuous scores, the
  upper bound ``≤ 1 − α + 1/(n + 1)``).
* **THR** (LAC, Sadinle et al. 2019): ``s = 1 − p_y``.
* **RAPS** (Angelopoulos et al. 2021): sort the probabilities in decreasing order (ties to
  the lower class index), let ``r`` be the 1-based rank of ``y``; then
  ``s = Σ_{j ≤ r} p_(j) + λ · max(r − k_reg, 0) − u · p_y`` with ``u ~ U[0, 1]`` drawn once
  per sample (``u = 0`` for the non-randomised score). **APS** (Romano et al. 2020) is
  RAPS with ``λ = 0``; one implementation serves both.
* **Empty sets are allowed.** The RAPS reference code forces at least the top class by
  default (``allow_zero_sets=False``); that only adds coverage but breaks the upper bound,
  so this module keeps the exact rule and the chapter reports empty sets as they occur.
* The dual-threshold paper's code scales λ at *test time* by ``1 − H(p)/log C``
  (:func:`entropy_factor`) but not at calibration; :func:`calibrate_and_predict` offers that
  ("paper") next to the consistent rules ("fixed" at both, "adaptive" at both). Since the
  factor is in [0, 1], the paper's test scores are never above the fixed-λ ones, so its
  sets are supersets of the "fixed" sets for the same ``u``: it over-covers, never
  under-covers, and loses the upper bound.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from repro.errors import ParameterError
from repro.metrics import to_numpy

__all__ = [
    "check_alpha", "check_coverage", "conformal_quantile", "thr_scores", "thr_sets",
    "aps_scores", "aps_sets", "raps_scores", "raps_sets", "predictive_entropy", "entropy_factor",
    "ConformalResult", "calibrate_and_predict", "coverage", "set_sizes", "mean_set_size",
    "METHODS", "LAMBDA_RULES",
]

METHODS = ("thr", "aps", "raps")
LAMBDA_RULES = ("fixed", "adaptive", "paper")


# -- checks -----------------------------------------------------------------------------
def check_alpha(alpha: float) -> float:
    """Return ``alpha`` as a float, or raise :class:`ParameterError` unless ``0 < alpha < 1``."""
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise ParameterError(f"alpha (miscoverage level) must be a number in (0, 1), got {alpha!r}") from None
    if not 0.0 < a < 1.0:  # also rejects NaN
        raise ParameterError(
            f"alpha (miscoverage level) must be in (0, 1), got {alpha!r}; e.g. alpha=0.1 for 90% coverage")
    return a


def check_coverage(level: float) -> float:
    """Return a target coverage ``1 − α`` as a float, or raise unless ``0 < level < 1``."""
    try:
        c = float(level)
    except (TypeError, ValueError):
        raise ParameterError(f"coverage level must be a number in (0, 1), got {level!r}") from None
    if not 0.0 < c < 1.0:
        raise ParameterError(f"coverage level must be in (0, 1), got {level!r}; e.g. 0.9 for 90% coverage")
    return c


def _probs(probs: object) -> np.ndarray:
    p = to_numpy(probs, np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] < 2:
        raise ParameterError(f"probs must be [N, C] with N >= 1 and C >= 2, got shape {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any():
        raise ParameterError("probs must be finite and non-negative (softmax outputs)")
    return p


def _labels(labels: object, p: np.ndarray) -> np.ndarray:
    y = to_numpy(labels).reshape(-1)
    if y.shape[0] != p.shape[0]:
        raise ParameterError(f"got {y.shape[0]} labels for {p.shape[0]} probability rows")
    y = y.astype(np.int64)
    if ((y < 0) | (y >= p.shape[1])).any():
        raise ParameterError(f"labels must be class indices in [0, {p.shape[1]})")
    return y


def _uniforms(u: object, n: int, randomized: bool) -> np.ndarray:
    if not randomized:
        return np.zeros(n)
    if u is None:
        raise ParameterError("randomized scores need u (a float, an [N] array) or a numpy Generator")
    if isinstance(u, np.random.Generator):
        return u.uniform(size=n)
    arr = to_numpy(u, np.float64).reshape(-1)
    if arr.size == 1:
        arr = np.full(n, arr[0])
    if arr.shape[0] != n:
        raise ParameterError(f"u must be a scalar or have one value per sample ({n}), got {arr.shape[0]}")
    if not ((arr >= 0) & (arr <= 1)).all():
        raise ParameterError("u must lie in [0, 1]")
    return arr


def _lambdas(lam: float, lam_per_sample: object, n: int) -> np.ndarray:
    if lam_per_sample is not None:
        lv = to_numpy(lam_per_sample, np.float64).reshape(-1)
        if lv.shape[0] != n:
            raise ParameterError(f"lam_per_sample must have one value per sample ({n}), got {lv.shape[0]}")
    else:
        lv = np.full(n, float(lam))
    if not np.isfinite(lv).all() or (lv < 0).any():
        raise ParameterError("lambda (RAPS regularisation) must be finite and >= 0")
    return lv


# -- quantile ---------------------------------------------------------------------------
def conformal_quantile(scores: object, alpha: float) -> float:
    """Split-conformal threshold: the ``k``-th smallest score, ``k = ⌈(n + 1)(1 − α)⌉``.

    This is the order statistic itself, with no interpolation; it equals mapie's
    ``np.quantile(s, k/n, method="lower")`` (and numpy's ``"inverted_cdf"``). The
    dual-threshold paper's code uses ``method="higher"``, which for ``k < n`` picks the
    ``(k + 1)``-th smallest score (numpy indexes ``(n − 1)·k/n``), one order statistic
    more conservative than the split-conformal rule. When ``k > n`` (too few calibration
    points for the requested coverage, e.g. ``n = 4``, ``α = 0.1``) no finite score
    guarantees coverage, so the result is ``+inf`` (every set is the full label set).

    Args:
        scores: ``[n]`` calibration non-conformity scores (finite).
        alpha: miscoverage level in (0, 1).
    """
    a = check_alpha(alpha)
    s = to_numpy(scores, np.float64).reshape(-1)
    n = s.size
    if n == 0:
        raise ParameterError("conformal_quantile needs at least one calibration score")
    if not np.isfinite(s).all():
        raise ParameterError("calibration scores must be finite")
    # The epsilon keeps e.g. (9 + 1) * 0.9 = 9.000000000000002 from becoming k = 10.
    k = math.ceil((n + 1) * (1.0 - a) - 1e-9)
    if k > n:
        return math.inf
    return float(np.partition(s, k - 1)[k - 1])


# -- THR --------------------------------------------------------------------------------
def thr_scores(probs: object, labels: object) -> np.ndarray:
    """THR/LAC non-conformity ``1 − p_y`` of each sample, ``[N]``."""
    p = _probs(probs)
    y = _labels(labels, p)
    return 1.0 - p[np.arange(p.shape[0]), y]


def thr_sets(probs: object, qhat: float) -> np.ndarray:
    """THR prediction sets ``{j : 1 − p_j ≤ q̂}`` as a bool mask ``[N, C]``."""
    p = _probs(probs)
    return (1.0 - p) <= float(qhat)


# -- RAPS / APS -------------------------------------------------------------------------
def _raps_score_matrix(p: np.ndarray, lam_i: np.ndarray, k_reg: int, u: np.ndarray,
                       randomize_penalty: bool) -> np.ndarray:
    """Score ``s(x_i, j, u_i)`` for every class ``j``, ``[N, C]`` in the original class order.

    Both the calibration scores (read at ``j = y``) and the sets (thresholded everywhere)
    come from this one matrix, so score and set agree bit for bit.
    """
    n, c = p.shape
    order = np.argsort(-p, axis=1, kind="stable")  # ties -> lower class index ranks first
    sp = np.take_along_axis(p, order, axis=1)
    ranks = np.arange(1, c + 1)[None, :]
    pen = lam_i[:, None] * np.maximum(ranks - k_reg, 0)
    own = sp + (lam_i[:, None] * (ranks > k_reg) if randomize_penalty else 0.0)
    sorted_scores = np.cumsum(sp, axis=1) + pen - u[:, None] * own
    out = np.empty_like(sorted_scores)
    np.put_along_axis(out, order, sorted_scores, axis=1)
    return out


def _check_k_reg(k_reg: int) -> int:
    if int(k_reg) != k_reg or k_reg < 0:
        raise ParameterError(f"k_reg must be an integer >= 0, got {k_reg!r}")
    return int(k_reg)


def raps_scores(probs: object, labels: object, lam: float = 0.02, k_reg: int = 5,
                u: object = None, lam_per_sample: object = None, *, randomized: bool = True,
                randomize_penalty: bool = False) -> np.ndarray:
    """RAPS non-conformity of the true labels, ``[N]``.

    ``s = Σ_{j ≤ r} p_(j) + λ_i · max(r − k_reg, 0) − u_i · p_y`` with ``r`` the 1-based rank of
    ``y`` (ties broken towards the lower class index).

    Args:
        probs: ``[N, C]`` softmax probabilities; labels: ``[N]`` class indices.
        lam: λ ≥ 0, used for every sample unless ``lam_per_sample`` is given.
        k_reg: ranks ``1..k_reg`` carry no penalty.
        u: the uniforms: a float, an ``[N]`` array, or a ``numpy.random.Generator`` to draw
            them from; ignored (taken as 0) when ``randomized`` is False.
        lam_per_sample: ``[N]`` absolute λ per sample (the entropy-adaptive rule passes
            ``lam * entropy_factor(probs)``); overrides ``lam``.
        randomized: False gives the deterministic score ``u = 0``.
        randomize_penalty: True subtracts ``u · (p_y + λ_i·[r > k_reg])``, the paper code's
            variant (it randomises the regularised term); False is the RAPS paper's rule.
    """
    p = _probs(probs)
    y = _labels(labels, p)
    m = _raps_score_matrix(p, _lambdas(lam, lam_per_sample, p.shape[0]), _check_k_reg(k_reg),
                           _uniforms(u, p.shape[0], randomized), randomize_penalty)
    return m[np.arange(p.shape[0]), y]


def raps_sets(probs: object, qhat: float, lam: float = 0.02, k_reg: int = 5, u: object = None,
              lam_per_sample: object = None, *, randomized: bool = True,
              randomize_penalty: bool = False) -> np.ndarray:
    """RAPS prediction sets ``{j : s(x, j, u) ≤ q̂}`` as a bool mask ``[N, C]``.

    The score is the one of :func:`raps_scores` evaluated for every class with the sample's
    single ``u``; it increases along the sorted order, so each set is a top-``m`` prefix
    (possibly empty). Arguments as in :func:`raps_scores`; pass *test-time* uniforms here,
    independent of the calibration ones.
    """
    p = _probs(probs)
    m = _raps_score_matrix(p, _lambdas(lam, lam_per_sample, p.shape[0]), _check_k_reg(k_reg),
                           _uniforms(u, p.shape[0], randomized), randomize_penalty)
    return m <= float(qhat)


def aps_scores(probs: object, labels: object, u: object = None, *, randomized: bool = True) -> np.ndarray:
    """APS non-conformity ``Σ_{j ≤ r} p_(j) − u · p_y``, ``[N]`` (RAPS with λ = 0)."""
    return raps_scores(probs, labels, 0.0, 0, u, randomized=randomized)


def aps_sets(probs: object, qhat: float, u: object = None, *, randomized: bool = True) -> np.ndarray:
    """APS prediction sets as a bool mask ``[N, C]`` (RAPS sets with λ = 0)."""
    return raps_sets(probs, qhat, 0.0, 0, u, randomized=randomized)


def predictive_entropy(probs: object) -> np.ndarray:
    """Shannon entropy ``H(p) = −Σ p log p`` of each row in nats, ``[N]``, with ``0 · log 0 = 0``."""
    p = _probs(probs)
    safe = np.where(p > 0, p, 1.0)  # log(1) = 0 stands in for the 0 · log 0 terms
    return -(p * np.log(safe)).sum(axis=1)


def entropy_factor(probs: object) -> np.ndarray:
    """The paper's test-time λ scale ``1 − H(p)/log C`` per sample, ``[N]`` in [0, 1].

    ``H`` is :func:`predictive_entropy` (nats): a one-hot prediction gives 1 (full
    regularisation), a uniform one gives 0 (none).
    """
    p = _probs(probs)
    return np.clip(1.0 - predictive_entropy(p) / math.log(p.shape[1]), 0.0, 1.0)


# -- one call for the chapter -----------------------------------------------------------
@dataclass(frozen=True)
class ConformalResult:
    """What :func:`calibrate_and_predict` returns.

    Attributes:
        qhat: the calibration threshold (``+inf`` when too few calibration points).
        sets: ``[N_test, C]`` bool prediction sets.
        cal_scores: ``[N_cal]`` calibration scores of the true labels.
        lam_cal, lam_test: the per-sample λ used at calibration and test (zeros for THR/APS).
    """

    qhat: float
    sets: np.ndarray
    cal_scores: np.ndarray
    lam_cal: np.ndarray
    lam_test: np.ndarray


def calibrate_and_predict(probs_cal: object, y_cal: object, probs_test: object, alpha: float,
                          method: Literal["thr", "aps", "raps"] = "raps", lam: float = 0.02,
                          k_reg: int = 5,
                          lambda_rule: Literal["fixed", "adaptive", "paper"] = "fixed",
                          seed: int = 0, *, randomized: bool = True,
                          randomize_penalty: bool = False) -> ConformalResult:
    """Split conformal: scores on the calibration set, ``q̂``, then the test sets.

    ``lambda_rule`` (RAPS only) says which λ each phase uses:

    * ``"fixed"``: ``lam`` at calibration and at test (exchangeable, guarantee holds);
    * ``"adaptive"``: ``lam · entropy_factor(probs)`` at both (still a fixed function of
      ``(x, y, u)``, so exchangeable and the guarantee holds);
    * ``"paper"``: ``lam`` at calibration, ``lam · entropy_factor`` at test, as the
      dual-threshold paper's code does (no guarantee; in practice conservative, see the
      module docstring).

    The uniforms come from ``numpy.random.default_rng(seed)``: ``N_cal`` draws for the
    calibration set, then ``N_test`` for the test set, so the three rules share the same
    ``u`` for the same seed and differ only in λ.
    """
    a = check_alpha(alpha)
    if method not in METHODS:
        raise ParameterError(f"method must be one of {METHODS}, got {method!r}")
    if lambda_rule not in LAMBDA_RULES:
        raise ParameterError(f"lambda_rule must be one of {LAMBDA_RULES}, got {lambda_rule!r}")
    pc, pt = _probs(probs_cal), _probs(probs_test)
    if pc.shape[1] != pt.shape[1]:
        raise ParameterError(f"calibration and test probs have {pc.shape[1]} and {pt.shape[1]} classes")
    yc = _labels(y_cal, pc)
    rng = np.random.default_rng(seed)
    u_cal = rng.uniform(size=pc.shape[0])
    u_test = rng.uniform(size=pt.shape[0])

    if method == "thr":
        cal = thr_scores(pc, yc)
        q = conformal_quantile(cal, a)
        zc, zt = np.zeros(pc.shape[0]), np.zeros(pt.shape[0])
        return ConformalResult(q, thr_sets(pt, q), cal, zc, zt)

    if method == "aps":
        lam_c, lam_t, k = np.zeros(pc.shape[0]), np.zeros(pt.shape[0]), 0
    else:
        k = _check_k_reg(k_reg)
        fixed_c, fixed_t = _lambdas(lam, None, pc.shape[0]), _lambdas(lam, None, pt.shape[0])
        lam_c = fixed_c * entropy_factor(pc) if lambda_rule == "adaptive" else fixed_c
        lam_t = fixed_t if lambda_rule == "fixed" else fixed_t * entropy_factor(pt)
    cal = raps_scores(pc, yc, 0.0, k, u_cal, lam_c, randomized=randomized,
                      randomize_penalty=randomize_penalty)
    q = conformal_quantile(cal, a)
    sets = raps_sets(pt, q, 0.0, k, u_test, lam_t, randomized=randomized,
                     randomize_penalty=randomize_penalty)
    return ConformalResult(q, sets, cal, lam_c, lam_t)


# -- set metrics ------------------------------------------------------------------------
def _sets(sets: object) -> np.ndarray:
    s = to_numpy(sets).astype(bool)
    if s.ndim != 2 or s.shape[0] == 0:
        raise ParameterError(f"sets must be a non-empty [N, C] bool mask, got shape {s.shape}")
    return s


def coverage(sets: object, labels: object) -> float:
    """Fraction of samples whose label is in its prediction set (a fraction in [0, 1])."""
    s = _sets(sets)
    y = _labels(labels, s)
    return float(s[np.arange(s.shape[0]), y].mean())


def set_sizes(sets: object) -> np.ndarray:
    """Number of classes in each prediction set, ``[N]`` ints (0 for an empty set)."""
    return _sets(sets).sum(axis=1).astype(np.int64)


def mean_set_size(sets: object) -> float:
    """Average prediction-set size (empty sets count as 0)."""
    return float(set_sizes(sets).mean())
