"""The uncertainty family's glue: detectors (hand-computed and against scikit-learn), the AUROC
variance, the predictions cache (reuse, checksum guard), the stored test-set variance in the
verdict rule, and the bad-input checks that run before any work."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn as nn

from repro import arms
from repro.artifacts import ArtifactError
from repro.errors import ParameterError
from repro.families.uncertainty import detectors as det
from repro.families.uncertainty import dtcp, ood, predictions
from repro.families.uncertainty.predictions import EvalSet, Outputs
from repro.families.uncertainty.protocol import FamilyData, ModelConfig, Trained
from repro.metrics import auroc, fpr95
from repro.papers import Claim
from repro.verdicts import claim_evidence


def _outs(logits, feats=None, labels=None) -> Outputs:
    logits = np.asarray(logits, float)
    labels = np.zeros(len(logits), int) if labels is None else np.asarray(labels)
    return Outputs(logits.astype(np.float32), labels, None if feats is None else np.asarray(feats, np.float32))


def test_logit_detectors_by_hand() -> None:
    o = _outs([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    s = det.fit(o, ["msp", "energy", "maxlogit"])
    e2 = math.exp(2)
    np.testing.assert_allclose(s["msp"](o), [e2 / (e2 + 2), 1 / 3], rtol=1e-6)
    np.testing.assert_allclose(s["energy"](o), [math.log(e2 + 2), math.log(3)], rtol=1e-6)
    np.testing.assert_allclose(s["maxlogit"](o), [2.0, 0.0], rtol=1e-6)


def test_ssd_matches_a_naive_computation() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(200, 4)) + [3, 0, 0, 0]
    test = rng.normal(size=(5, 4))
    s = det.fit(_outs(np.zeros((200, 2)), train), ["ssd"])["ssd"](_outs(np.zeros((5, 2)), test))
    n = train / np.linalg.norm(train, axis=1, keepdims=True)
    mean, std = n.mean(0), n.std(0)
    z = (n - mean) / std
    prec = np.linalg.pinv(np.cov(z, rowvar=False))
    t = (test / np.linalg.norm(test, axis=1, keepdims=True) - mean) / std - z.mean(0)
    np.testing.assert_allclose(s, [-(v @ prec @ v) for v in t], rtol=1e-6)


def test_feature_detectors_rank_far_points_as_ood() -> None:
    rng = np.random.default_rng(1)
    train_f = np.concatenate([rng.normal(size=(50, 3)) + [5, 0, 0], rng.normal(size=(50, 3)) + [0, 5, 0]])
    train = _outs(np.zeros((100, 2)), train_f, [0] * 50 + [1] * 50)
    near = _outs(np.zeros((20, 2)), rng.normal(size=(20, 3)) + [5, 0, 0])
    far = _outs(np.zeros((20, 2)), rng.normal(size=(20, 3)) + [0, 0, -6])
    for name, s in det.fit(train, ["mahalanobis", "knn", "ssd"], knn_k=5).items():
        assert auroc(s(near), s(far)) > 0.95, name


def test_auroc_and_fpr95_match_scikit_learn() -> None:
    from sklearn.metrics import roc_auc_score, roc_curve

    rng = np.random.default_rng(2)
    s_in, s_out = rng.normal(1.0, 1.0, 300), rng.normal(0.0, 1.0, 200)
    y = np.r_[np.ones(300), np.zeros(200)]
    s = np.r_[s_in, s_out]
    assert auroc(s_in, s_out) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s)
    assert fpr95(s_in, s_out) == pytest.approx(fpr[np.searchsorted(tpr, 0.95, side="left")], abs=1e-12)


def test_hanley_mcneil_variance_by_hand() -> None:
    # a = 1/2, 2 + 2 samples: Q1 = Q2 = 1/3, (1/4 + 1/12 + 1/12) / 4
    assert det.auroc_var(0.5, 2, 2) == pytest.approx((0.25 + 1 / 12 + 1 / 12) / 4)
    assert det.auroc_var(1.0, 10, 10) == pytest.approx(0.0)
    m = det.ood_metrics(np.array([1.0, 2.0]), np.array([0.0, 1.5]))
    assert m["auroc"] == pytest.approx(75.0) and m["auroc_var"] == pytest.approx(1e4 * det.auroc_var(0.75, 2, 2))


def test_unknown_names_fail_before_any_work() -> None:
    with pytest.raises(ParameterError, match="detectors"):
        det.check_detectors(["msp", "odin2"])
    with pytest.raises(ParameterError, match="models"):
        ood.check_models(["ce", "vae"])
    fd = FamilyData(data=None, x_calib=None, y_calib=None, x_held_out=None, held_out_classes=[])
    with pytest.raises(ParameterError, match="OOD sets"):
        ood.eval_sets(fd, ["svhn"])
    good = {"alpha": 0.1, "raps_lambda": 0.02, "raps_k": 5, "corruptions": ["contrast"], "severities": [1, 5]}
    dtcp.check_params(good)
    for bad in ({"alpha": 1.0}, {"alpha": 0.0}, {"corruptions": ["fog"]}, {"severities": [0, 6]}, {"raps_lambda": -1.0}):
        with pytest.raises(ParameterError):
            dtcp.check_params({**good, **bad})


def test_stored_test_variance_is_used_by_the_verdict_rule() -> None:
    claim = Claim(id="c", text="", metric="auroc", arm="a", baseline="b")
    rows = [{"arm": arm, "seed": s, "metric": "auroc", "value": v, "n_test": 100, "test_var": tv}
            for s in range(3) for arm, v, tv in (("a", 80.0 + s, 2.0), ("b", 70.0, 1.0))]
    ev = claim_evidence(claim, rows)
    assert ev.test_var == pytest.approx(3.0)
    assert ev.per_seed == {"0": 10.0, "1": 11.0, "2": 12.0}
    no_var = [{k: v for k, v in r.items() if k != "test_var"} for r in rows]
    assert claim_evidence(claim, no_var).test_var == 0.0  # AUROC is not binomial


# -- the predictions cache -----------------------------------------------------------------
class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.features(x))


CALLS = []


@dataclass
class _TinyConfig(ModelConfig):
    model: str = "tiny"


@arms.arm("test_tiny", family="uncertainty", config=_TinyConfig)
def _train_tiny(cfg, data, seed, checkpoint_dir=None, device="cpu") -> Trained:
    CALLS.append(seed)
    return Trained(_Tiny(), [], {"note": "untrained"})


@dataclass
class _Data:
    checksum: str
    classes: list
    info: dict


def test_predictions_are_cached_and_guarded_by_the_data_checksum(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("REPRO_ARTIFACTS", str(tmp_path))
    x = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8)
    sets = {"test": EvalSet(x, torch.tensor([0, 1, 0, 1, 0, 1])), "ood": EvalSet(x.flip(0), torch.full((6,), -1), features=False)}
    data = _Data("abc", [0, 1], {"per_class": 3})
    CALLS.clear()
    first = predictions.cached("test_tiny", _TinyConfig(), data, 0, sets)
    second = predictions.cached("test_tiny", _TinyConfig(), data, 0, sets)
    assert CALLS == [0] and first.built_now and not second.built_now
    np.testing.assert_array_equal(first["test"].logits, second["test"].logits)
    assert second["ood"].features is None and second["test"].features.shape == (6, 3)
    assert list(second["ood"].labels) == [-1] * 6
    # a stored artifact whose recorded checksum differs from the data in use is refused
    meta = next(tmp_path.glob("predictions/*/artifact.json"))
    meta.write_text(meta.read_text().replace('"data_checksum": "abc"', '"data_checksum": "xyz"'))
    with pytest.raises(ArtifactError, match="another data checksum"):
        predictions.cached("test_tiny", _TinyConfig(), data, 0, sets)


def test_a_reused_artifact_counts_its_training_cost(tmp_path, monkeypatch):
    from repro.artifacts import ArtifactStore
    from repro.train import COST

    monkeypatch.setenv("REPRO_ARTIFACTS", str(tmp_path))
    store = ArtifactStore("things")
    build = lambda work: ("made", {"train_s": 12.5, "train_images": 300})  # noqa: E731
    mark = len(COST.reuse_log)
    assert store.get("x", "k1", build, lambda f, i: "loaded").built_now
    assert COST.reused_since(mark) == (0.0, 0)  # built now: its fit counted itself
    for _ in range(2):  # loaded twice, counted once
        assert store.get("x", "k1", build, lambda f, i: "loaded").value == "loaded"
    assert COST.reused_since(mark) == (12.5, 300)


def test_a_dry_run_keeps_every_class_of_a_labelled_set():
    from repro.families.uncertainty.predictions import _one_batch

    y = torch.arange(1000) % 100  # 100 classes, 10 images each
    s = _one_batch(EvalSet(torch.zeros(1000, 3, 2, 2, dtype=torch.uint8), y), size=500)
    assert len(s.labels) == 500 and sorted(torch.bincount(s.labels).tolist()) == [5] * 100
    ood_set = _one_batch(EvalSet(torch.zeros(900, 3, 2, 2, dtype=torch.uint8), torch.full((900,), -1)), size=500)
    assert len(ood_set.labels) == 500
