"""Split conformal THR/APS/RAPS against hand-computed values, the coverage guarantee on
exchangeable toy data, and mapie 1.6 on the same numbers."""
import math

import numpy as np
import pytest

from repro.errors import ParameterError
from repro.families.uncertainty.conformal import (aps_scores, aps_sets, calibrate_and_predict,
                                                  check_alpha, check_coverage,
                                                  conformal_quantile, coverage, entropy_factor,
                                                  mean_set_size, predictive_entropy, raps_scores,
                                                  raps_sets, set_sizes, thr_scores, thr_sets)

# One sample, 3 classes. Sorted: class 1 (.5), class 2 (.3), class 0 (.2);
# cumsums .5, .8, 1.0; ranks: class 1 -> 1, class 2 -> 2, class 0 -> 3.
P = np.array([[0.2, 0.5, 0.3]])


# -- quantile ---------------------------------------------------------------------------
def test_quantile_hand_cases():
    # n = 9, alpha = .1: k = ceil(10 * .9) = 9 = n -> the largest score.
    assert conformal_quantile([5, 1, 9, 3, 7, 2, 8, 4, 6], 0.1) == 9
    # n = 4: k = ceil(5 * .9) = ceil(4.5) = 5 > 4 -> no finite threshold.
    assert conformal_quantile([0.1, 0.2, 0.3, 0.4], 0.1) == math.inf
    # n = 19: k = ceil(20 * .9) = 18 -> the 18th smallest of 1..19 (shuffled).
    s = np.random.default_rng(0).permutation(np.arange(1, 20))
    assert conformal_quantile(s, 0.1) == 18
    # alpha = .5, n = 3: k = ceil(4 * .5) = 2 -> the median.
    assert conformal_quantile([0.9, 0.1, 0.5], 0.5) == 0.5


# -- scores and sets by hand ------------------------------------------------------------
def test_thr_by_hand():
    assert thr_scores(P, [2]) == pytest.approx([0.7])  # 1 - .3
    # 1 - p = [.8, .5, .7]: q = .6 keeps class 1 only, q = .75 adds class 2.
    assert thr_sets(P, 0.6).tolist() == [[False, True, False]]
    assert thr_sets(P, 0.75).tolist() == [[False, True, True]]


def test_aps_by_hand():
    # y = 2 (rank 2): cumsum .8 - u * .3, u = .5 -> .65; non-randomised -> .8.
    assert aps_scores(P, [2], 0.5) == pytest.approx([0.65])
    assert aps_scores(P, [2], randomized=False) == pytest.approx([0.8])
    # Per-class scores with u = .5: class 1 .5 - .25 = .25, class 2 .65, class 0 1 - .1 = .9.
    assert aps_sets(P, 0.7, 0.5).tolist() == [[False, True, True]]
    assert aps_sets(P, 0.2, 0.5).tolist() == [[False, False, False]]  # empty sets are allowed
    assert aps_sets(P, 0.95, 0.5).tolist() == [[True, True, True]]
    # u = 1 includes the class whose cumsum first crosses q: q = .6 -> {1, 2}.
    assert aps_sets(P, 0.6, 1.0).tolist() == [[False, True, True]]


def test_raps_penalty_by_hand():
    # lam = .1, k_reg = 1: penalty .1 * (rank - 1); u = .5.
    # y = 0 (rank 3): 1.0 + .2 - .5 * .2 = 1.1
    # y = 2 (rank 2): .8 + .1 - .5 * .3 = .75
    # y = 1 (rank 1): .5 + 0 - .5 * .5 = .25
    got = raps_scores(np.repeat(P, 3, axis=0), [0, 2, 1], lam=0.1, k_reg=1, u=0.5)
    assert got == pytest.approx([1.1, 0.75, 0.25])
    # Same q = .7 that gave APS {1, 2}: the penalty pushes class 2 to .75 > .7.
    assert raps_sets(P, 0.7, lam=0.1, k_reg=1, u=0.5).tolist() == [[False, True, False]]
    assert raps_sets(P, 0.8, lam=0.1, k_reg=1, u=0.5).tolist() == [[False, True, True]]
    # k_reg = 3 >= C: no penalty at all, RAPS = APS.
    assert raps_scores(P, [0], lam=0.1, k_reg=3, u=0.5) == pytest.approx([0.9])
    # The paper code's variant also randomises the penalty of y's own rank:
    # y = 0: 1.0 + .2 - .5 * (.2 + .1) = 1.05.
    assert raps_scores(P, [0], lam=0.1, k_reg=1, u=0.5, randomize_penalty=True) == pytest.approx([1.05])


def test_raps_per_sample_lambda():
    two = np.repeat(P, 2, axis=0)
    # Sample 0 lam = 0, sample 1 lam = .1; y = 0 (rank 3), k_reg = 1, u = .5: .9 and 1.1.
    got = raps_scores(two, [0, 0], lam=99.0, k_reg=1, u=0.5, lam_per_sample=[0.0, 0.1])
    assert got == pytest.approx([0.9, 1.1])


def test_ties_rank_lower_index_first():
    # Classes 0 and 1 tie at .4: class 0 ranks first. y = 1 -> cumsum .8, u = 0.
    assert aps_scores([[0.4, 0.4, 0.2]], [1], randomized=False) == pytest.approx([0.8])
    assert aps_scores([[0.4, 0.4, 0.2]], [0], randomized=False) == pytest.approx([0.4])


def test_entropy_factor():
    # One-hot -> H = 0 -> 1; uniform -> H = log C -> 0; [.5, .5, 0]: H = log 2 -> 1 - log2/log3.
    got = entropy_factor([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]])
    assert got == pytest.approx([1.0, 0.0, 1 - math.log(2) / math.log(3)])
    assert predictive_entropy([[0.5, 0.5, 0.0]]) == pytest.approx([math.log(2)])


@pytest.mark.parametrize("kind", ["thr", "aps", "raps", "raps_adaptive"])
def test_set_equals_classes_with_score_below_q(kind):
    rng = np.random.default_rng(1)
    n, c = 50, 6
    p = rng.dirichlet(np.full(c, 0.7), n)
    u = rng.uniform(size=n)
    lam_i = 0.05 * entropy_factor(p)
    q = 0.8

    def score(y):
        if kind == "thr":
            return thr_scores(p, y)
        if kind == "aps":
            return aps_scores(p, y, u)
        return raps_scores(p, y, 0.05, 2, u, lam_i if kind == "raps_adaptive" else None)

    expect = np.stack([score(np.full(n, j)) <= q for j in range(c)], axis=1)
    if kind == "thr":
        got = thr_sets(p, q)
    elif kind == "aps":
        got = aps_sets(p, q, u)
    else:
        got = raps_sets(p, q, 0.05, 2, u, lam_i if kind == "raps_adaptive" else None)
    assert np.array_equal(got, expect)
    assert 0 < got.sum() < got.size  # the check is not vacuous


def test_set_metrics():
    sets = np.array([[True, True, False], [False, False, False], [True, True, True]])
    assert set_sizes(sets).tolist() == [2, 0, 3]
    assert mean_set_size(sets) == pytest.approx(5 / 3)
    assert coverage(sets, [1, 0, 2]) == pytest.approx(2 / 3)


# -- the coverage guarantee -------------------------------------------------------------
def _toy(rng, n, c=10, conc=0.3):
    """Dirichlet 'softmax' outputs with labels drawn from them (a calibrated model)."""
    p = rng.dirichlet(np.full(c, conc), n)
    y = (rng.uniform(size=(n, 1)) > np.cumsum(p, axis=1)).sum(axis=1)
    return p, np.minimum(y, c - 1)


@pytest.mark.parametrize("method,rule", [("thr", "fixed"), ("aps", "fixed"), ("raps", "fixed"),
                                         ("raps", "adaptive")])
def test_coverage_guarantee_on_exchangeable_data(method, rule):
    # E[coverage] = k / (n + 1) = 91 / 101 for n = 100, alpha = .1, within [.9, .9 + 1/101].
    # Over 200 splits the std of the mean is about .0024, so .008 is over 3 sigma; the
    # "paper" rule lands near .95 on this data, well outside the upper bound.
    alpha, n_cal, n_test, tol = 0.1, 100, 500, 0.008
    rng = np.random.default_rng(123)
    covs = []
    for split in range(200):
        p, y = _toy(rng, n_cal + n_test)
        r = calibrate_and_predict(p[:n_cal], y[:n_cal], p[n_cal:], alpha, method=method,
                                  lam=0.05, k_reg=2, lambda_rule=rule, seed=split)
        covs.append(coverage(r.sets, y[n_cal:]))
    mean = float(np.mean(covs))
    assert 1 - alpha - tol <= mean <= 1 - alpha + 1 / (n_cal + 1) + tol


def test_paper_rule_sets_contain_fixed_sets():
    # Entropy factor <= 1 lowers every test score, so with the same u (same seed) the
    # paper's sets contain the fixed-lambda ones: it can over-cover, never under-cover.
    rng = np.random.default_rng(5)
    p, y = _toy(rng, 600)
    fixed = calibrate_and_predict(p[:200], y[:200], p[200:], 0.1, lam=0.05, k_reg=2,
                                  lambda_rule="fixed", seed=3)
    paper = calibrate_and_predict(p[:200], y[:200], p[200:], 0.1, lam=0.05, k_reg=2,
                                  lambda_rule="paper", seed=3)
    assert paper.qhat == fixed.qhat  # calibration is identical
    assert np.all(paper.sets >= fixed.sets)
    assert mean_set_size(paper.sets) > mean_set_size(fixed.sets)
    assert np.all(paper.lam_test <= 0.05) and np.allclose(fixed.lam_test, 0.05)


def test_too_few_calibration_points_gives_full_sets():
    p, y = _toy(np.random.default_rng(0), 10)
    r = calibrate_and_predict(p[:4], y[:4], p[4:], 0.1, method="aps")
    assert r.qhat == math.inf and r.sets.all()


# -- bad input --------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0, 1, -0.1, 1.5, float("nan"), "x"])
def test_bad_alpha(alpha):
    with pytest.raises(ParameterError):
        check_alpha(alpha)
    with pytest.raises(ParameterError):
        conformal_quantile([0.1, 0.2], alpha)
    with pytest.raises(ParameterError):
        calibrate_and_predict(P, [0], P, alpha)


def test_other_bad_parameters():
    assert check_coverage(0.9) == 0.9
    with pytest.raises(ParameterError):
        check_coverage(1.0)
    with pytest.raises(ParameterError):
        calibrate_and_predict(P, [0], P, 0.1, method="lac")
    with pytest.raises(ParameterError):
        calibrate_and_predict(P, [0], P, 0.1, lambda_rule="entropy")
    with pytest.raises(ParameterError):
        raps_scores(P, [0], lam=-1.0, k_reg=1, u=0.5)
    with pytest.raises(ParameterError):
        aps_scores(P, [0])  # randomised without u
    with pytest.raises(ParameterError):
        aps_scores(P, [3], 0.5)  # label out of range


# -- mapie 1.6 cross-check --------------------------------------------------------------
def _mapie_sets(est, p_cal, y_cal, p_test, score, seed, include_last_label=True):
    from mapie.classification import SplitConformalClassifier

    mc = SplitConformalClassifier(est, confidence_level=0.9, conformity_score=score,
                                  prefit=True, random_state=seed)
    mc.conformalize(p_cal, y_cal)
    _, sets = mc.predict_set(p_test, conformity_score_params={"include_last_label": include_last_label})
    q = float(np.ravel(mc._mapie_classifier.conformity_score_function_.quantiles_)[0])
    return np.ravel(mc.conformity_scores), q, sets[:, :, 0]


def test_against_mapie():
    pytest.importorskip("mapie")
    from sklearn.base import BaseEstimator, ClassifierMixin

    class Passthrough(ClassifierMixin, BaseEstimator):
        """A 'fitted classifier' whose features are already its [N, C] probabilities."""

        def __init__(self, n_classes=5):
            self.n_classes = n_classes

        def fit(self, X, y=None):
            self.classes_ = np.arange(self.n_classes)
            self.n_features_in_ = self.n_classes
            return self

        def predict_proba(self, X):
            return np.asarray(X, dtype=float)

        def predict(self, X):
            return np.asarray(X).argmax(axis=1)

    rng = np.random.default_rng(0)
    p, y = _toy(rng, 500, c=5, conc=0.5)
    pc, yc, pt = p[:200], y[:200], p[200:]
    est = Passthrough(5).fit(pc)

    # LAC = THR: same scores, same k-th order statistic, same sets.
    cs, q_m, sets_m = _mapie_sets(est, pc, yc, pt, "lac", 7)
    ours = thr_scores(pc, yc)
    q = conformal_quantile(ours, 0.1)
    assert np.allclose(cs, ours) and q == pytest.approx(q_m)
    assert np.array_equal(sets_m, thr_sets(pt, q))

    # APS: mapie always randomises the calibration score, with u drawn from
    # RandomState(seed); feeding the same u gives the same scores and quantile.
    cs, q_m, sets_m = _mapie_sets(est, pc, yc, pt, "aps", 7)
    ours = aps_scores(pc, yc, np.random.RandomState(7).uniform(size=len(yc)))
    q = conformal_quantile(ours, 0.1)
    assert np.allclose(cs, ours) and q == pytest.approx(q_m)
    # include_last_label=True (keep the class that crosses q) is our rule with u = 1 ...
    assert np.array_equal(sets_m, aps_sets(pt, q, 1.0))
    # ... and "randomized" is our rule with u = RandomState(seed) draws for the test rows.
    _, _, sets_r = _mapie_sets(est, pc, yc, pt, "aps", 7, include_last_label="randomized")
    assert np.array_equal(sets_r, aps_sets(pt, q, np.random.RandomState(7).uniform(size=len(pt))))
