"""Metrics against values computed by hand (the arithmetic is in the comments)."""
import math

import numpy as np
import pytest
import torch

from repro.metrics import (METRICS, auroc, ece, fpr95, fpr_at_tpr, mean_ci, reliability_bins,
                           roc_curve, top1, top5, topk_accuracy)

# 4 samples, 3 classes.
LOGITS = np.array([
    [0.1, 0.7, 0.2],  # label 1: top-1 right
    [0.5, 0.3, 0.2],  # label 2: ranking 0, 1, 2 -> wrong at k = 1 and k = 2
    [0.2, 0.2, 0.6],  # label 0: top-1 is 2; tie 0/1 broken to the lower index -> right at k = 2
    [0.3, 0.4, 0.3],  # label 1: top-1 right
])
LABELS = np.array([1, 2, 0, 1])


def test_topk_hand_example():
    assert top1(LOGITS, LABELS) == pytest.approx(50.0)  # 2 of 4
    assert topk_accuracy(LOGITS, LABELS, k=2) == pytest.approx(75.0)  # 3 of 4
    assert topk_accuracy(LOGITS, LABELS, k=3) == pytest.approx(100.0)
    assert top5(LOGITS, LABELS) == pytest.approx(100.0)  # k clipped to C = 3


def test_topk_accepts_torch():
    assert top1(torch.tensor(LOGITS, dtype=torch.float32), torch.tensor(LABELS)) == pytest.approx(50.0)
    assert top1(torch.tensor(LOGITS, dtype=torch.bfloat16, requires_grad=True), torch.tensor(LABELS)) \
        == pytest.approx(50.0)


def test_topk_rejects_bad_shapes():
    with pytest.raises(ValueError):
        top1(LOGITS, LABELS[:3])


# ECE with 5 bins: edges 0, .2, .4, .6, .8, 1, bins (lo, hi].
#   s1 [.9 .1]  y0 conf .90 right -> bin 4
#   s2 [.7 .3]  y1 conf .70 wrong -> bin 3
#   s3 [.6 .4]  y0 conf .60 right -> bin 2  (.6 is the bin's closed upper edge)
#   s4 [.55 .45] y1 conf .55 wrong -> bin 2
# bin 4: |1 - .9| = .1, weight 1/4            -> .025
# bin 3: |0 - .7| = .7, weight 1/4            -> .175
# bin 2: conf (.6 + .55)/2 = .575, acc .5, gap .075, weight 2/4 -> .0375
# ECE = .025 + .175 + .0375 = .2375
PROBS = np.array([[0.9, 0.1], [0.7, 0.3], [0.6, 0.4], [0.55, 0.45]])
PLAB = np.array([0, 1, 0, 1])


def test_ece_hand_example():
    assert ece(PROBS, PLAB, n_bins=5) == pytest.approx(0.2375)
    b = reliability_bins(PROBS, PLAB, n_bins=5)
    assert b["count"].tolist() == [0, 0, 2, 1, 1]
    np.testing.assert_allclose(b["edges"], [0, 0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(b["confidence"][2:], [0.575, 0.7, 0.9])
    np.testing.assert_allclose(b["accuracy"][2:], [0.5, 0.0, 1.0])
    assert np.isnan(b["confidence"][:2]).all()
    assert b["ece"] == pytest.approx(0.2375)


def test_ece_perfect_and_torch():
    # One-hot predictions that are all right: confidence 1 = accuracy 1 -> ECE 0.
    p = torch.eye(3)
    assert ece(p, torch.arange(3)) == pytest.approx(0.0)
    # All wrong with confidence 1 -> ECE 1.
    assert ece(p, torch.tensor([1, 2, 0])) == pytest.approx(1.0)


def test_auroc_hand_example():
    # Pairs (in > out): .9 beats both, .8 beats both, .4 beats .3 only -> 5 of 6.
    assert auroc([0.9, 0.8, 0.4], [0.5, 0.3]) == pytest.approx(5 / 6)
    # Ties: (.5,.5) counts 1/2, (.5,.3), (.7,.5), (.7,.3) count 1 -> 3.5 / 4.
    assert auroc([0.5, 0.7], [0.5, 0.3]) == pytest.approx(0.875)
    # All tied -> 1/2; reversed roles -> 1 - AUROC.
    assert auroc([1.0, 1.0], [1.0]) == pytest.approx(0.5)
    assert auroc([0.5, 0.3], [0.9, 0.8, 0.4]) == pytest.approx(1 / 6)


def test_roc_curve_hand_example():
    fpr, tpr, thr = roc_curve([0.9, 0.8, 0.4], [0.5, 0.3])
    np.testing.assert_allclose(thr, [np.inf, 0.9, 0.8, 0.5, 0.4, 0.3])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1])
    np.testing.assert_allclose(fpr, [0, 0, 0, 0.5, 0.5, 1])


def test_roc_area_equals_auroc_with_ties():
    rng = np.random.default_rng(0)
    s_in = rng.integers(0, 6, 40).astype(float)  # many ties on purpose
    s_out = rng.integers(0, 4, 30).astype(float)
    fpr, tpr, _ = roc_curve(s_in, s_out)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(auroc(s_in, s_out))
    brute = np.mean([(a > b) + 0.5 * (a == b) for a in s_in for b in s_out])
    assert auroc(s_in, s_out) == pytest.approx(brute)


def test_fpr_at_tpr_hand_example():
    s_in = np.arange(1, 21, dtype=float)  # 1 .. 20
    # 95% of 20 = 19 scores must be >= t -> t = 19th highest = 2 (TPR exactly 19/20).
    s_out = [0.5, 1.5, 2, 2.5, 3, 10, 25, 0, 1, 1.99]
    # OOD >= 2: 2, 2.5, 3, 10, 25 -> 5 of 10.
    assert fpr_at_tpr(s_in, s_out, 0.95) == pytest.approx(0.5)
    assert fpr95(s_in, s_out) == pytest.approx(0.5)
    # TPR 1 -> t = 1: additionally 1.5, 1.99 and 1 -> 8 of 10.
    assert fpr_at_tpr(s_in, s_out, 1.0) == pytest.approx(0.8)
    # TPR .5 -> 10 scores >= t -> t = 11: OOD 25 only -> 1 of 10.
    assert fpr_at_tpr(s_in, s_out, 0.5) == pytest.approx(0.1)
    # Perfect separation -> 0.
    assert fpr95([5, 6, 7], [1, 2, 3]) == 0.0


def test_mean_ci_hand_example():
    s = mean_ci([1, 2, 3])
    # mean 2, std (ddof 1) = sqrt((1 + 0 + 1) / 2) = 1, half = t_{.975, 2} * 1 / sqrt(3).
    half = 4.302652729911275 / math.sqrt(3)
    assert s["n"] == 3
    assert s["mean"] == pytest.approx(2.0)
    assert s["std"] == pytest.approx(1.0)
    assert s["ci_low"] == pytest.approx(2 - half)
    assert s["ci_high"] == pytest.approx(2 + half)
    # [0, 4]: mean 2, std sqrt(8) , t_{.975, 1} = 12.706204736174698, half = t * sqrt(8)/sqrt(2) = 2t.
    s2 = mean_ci(torch.tensor([0.0, 4.0]))
    assert s2["ci_high"] - s2["mean"] == pytest.approx(2 * 12.706204736174698)


def test_mean_ci_degenerate():
    assert mean_ci([5.0]) == {"mean": 5.0, "std": 0.0, "ci_low": 5.0, "ci_high": 5.0, "n": 1}
    e = mean_ci([])
    assert e["n"] == 0 and math.isnan(e["mean"])


def test_registry():
    assert set(METRICS) == {"top1", "top5", "ece", "auroc", "fpr95"}
    assert METRICS["top1"](LOGITS, LABELS) == pytest.approx(50.0)
    assert METRICS["auroc"]([0.9, 0.8, 0.4], [0.5, 0.3]) == pytest.approx(5 / 6)


def test_mean_std_text_by_hand():
    from repro.metrics import mean_std_text
    assert mean_std_text([1.0, 3.0]) == "2.00 ± 1.41"          # std with ddof=1: √2
    assert mean_std_text([5.0], ".1f") == "5.0 ± 0.0"
    assert mean_std_text([1.0, float("nan"), None, 3.0], ".1f") == "2.0 ± 1.4"
    assert mean_std_text([None, float("nan")]) == "—"
