"""Abstention threshold, AUC orientation and label-free scores against hand-computed values."""
import math

import numpy as np
import pytest

from repro.errors import ParameterError
from repro.families.uncertainty.abstention import (LABEL_FREE, LABEL_USING, abstention_auc,
                                                   abstention_rate, abstention_scores,
                                                   abstention_summary, should_abstain,
                                                   youden_threshold)

SCORES = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
POS = np.array([0, 0, 1, 1, 1], dtype=bool)


def test_youden_hand_example():
    # tau = .2 flags {.3, .8, .9}: TPR 3/3, FPR 0/2 -> J = 1, the only tau reaching it.
    assert youden_threshold(SCORES, POS) == pytest.approx(0.2)
    s = abstention_summary(SCORES, POS, SCORES, POS)
    assert s == pytest.approx({"tau": 0.2, "auc_test": 1.0, "rate_test": 0.6, "tpr_test": 1.0,
                               "fpr_test": 0.0})


def test_youden_ties_go_to_smallest_tau():
    # scores [.1, .2, .3, .4], positives [0, 1, 0, 1]:
    #   tau = .1: TPR 1, FPR 1/2 -> .5;  tau = .2: TPR 1/2, FPR 1/2 -> 0;
    #   tau = .3: TPR 1/2, FPR 0 -> .5;  tau = .4: 0.  Tie .1 / .3 -> .1.
    assert youden_threshold([0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1]) == pytest.approx(0.1)


def test_youden_without_signal_abstains_on_nothing():
    # A constant score: the only tau is the score itself, J = 0, nothing is flagged.
    tau = youden_threshold([0.5] * 4, [0, 1, 0, 1])
    assert tau == 0.5 and abstention_rate([0.5] * 4, tau) == 0.0


def test_auc_and_orientation():
    assert abstention_auc(SCORES, POS) == 1.0
    assert abstention_auc(-SCORES, POS) == 0.0
    assert abstention_auc(np.ones(5), POS) == 0.5
    # Positives higher on average but overlapping: pairs (pos, neg) with pos > neg:
    # pos {.3, .5}, neg {.1, .4}: .3>.1, .5>.1, .5>.4 -> 3 of 4.
    assert abstention_auc([0.1, 0.3, 0.4, 0.5], [0, 1, 0, 1]) == pytest.approx(0.75)


def test_abstention_rate():
    assert abstention_rate(SCORES, 0.25) == pytest.approx(0.6)
    assert abstention_rate(SCORES, 0.9) == 0.0  # strict ">"


def test_should_abstain():
    sets = np.array([[True, False, False], [False, True, True], [False, False, False]])
    assert should_abstain(sets, [0, 0, 2]).tolist() == [False, True, True]


def test_label_free_scores_by_hand():
    p = np.array([[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]])
    sets = np.array([[True, True, False], [True, False, False]])
    got = abstention_scores(p, labels=[1, 0], sets=sets)
    assert set(LABEL_FREE) <= set(got) and LABEL_USING in got
    assert got["one_minus_maxp"] == pytest.approx([0.5, 0.0])
    # H = -(.5 log .5 + 2 * .25 log .25) = .5 log 2 + log 2 = 1.5 log 2 nats; one-hot -> 0.
    assert got["entropy"] == pytest.approx([1.5 * math.log(2), 0.0])
    assert got["set_size"] == pytest.approx([2.0, 1.0])
    assert got[LABEL_USING] == pytest.approx([math.log(4), 0.0])  # -log .25, -log 1


def test_label_scores_only_when_given():
    p = np.array([[0.5, 0.5]])
    assert set(abstention_scores(p)) == {"one_minus_maxp", "entropy"}
    # p_y = 0 stays finite (clipped) so the ROC helpers accept it.
    assert np.isfinite(abstention_scores([[1.0, 0.0]], labels=[1])[LABEL_USING]).all()


def test_degenerate_sets_give_nan():
    assert math.isnan(abstention_auc(SCORES, np.zeros(5, bool)))
    assert math.isnan(abstention_auc(SCORES, np.ones(5, bool)))
    assert math.isnan(youden_threshold(SCORES, np.zeros(5, bool)))
    # Calibration fine, test without positives: AUC and TPR NaN, the rest defined.
    s = abstention_summary(SCORES, POS, SCORES, np.zeros(5, bool))
    assert math.isnan(s["auc_test"]) and math.isnan(s["tpr_test"])
    assert s["fpr_test"] == pytest.approx(0.6) and s["rate_test"] == pytest.approx(0.6)
    # Calibration degenerate: no tau, so no rates.
    s = abstention_summary(SCORES, np.zeros(5, bool), SCORES, POS)
    assert math.isnan(s["tau"]) and math.isnan(s["rate_test"]) and s["auc_test"] == 1.0


def test_bad_input():
    with pytest.raises(ParameterError):
        youden_threshold(SCORES, POS[:3])
    with pytest.raises(ParameterError):
        abstention_scores([[0.5, 0.5]], sets=[[True, False, True]])
