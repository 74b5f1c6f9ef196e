"""repro.plots: figures come back with JSON-serialisable data; landscape maths checked."""
import copy
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from repro import metrics  # noqa: E402
from repro.plots.landscape import recalibrate_bn  # noqa: E402
from repro.plots import (annotate_setting, attention_grid, attention_rollout, bar_with_errors,  # noqa: E402
                         filter_normalized_directions, interpolate_1d, new_figure, plane_2d,
                         plot_1d, plot_2d, reliability_diagram, roc_panels, roc_plot, save, training_curves)

SETTING = "tier cpu · 2 seeds · 20 classes × 250 img · cnn3"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _check(fig, data):
    assert isinstance(fig, matplotlib.figure.Figure)
    json.dumps(data, allow_nan=False)  # plain JSON, no NaN
    assert any(t.get_text() == SETTING for t in fig.texts)
    fig.canvas.draw()  # layout and rendering must not fail


# -- style -----------------------------------------------------------------------------
def test_annotate_setting_and_save(tmp_path):
    fig, ax = new_figure()
    ax.plot([0, 1], [0, 1])
    annotate_setting(fig, SETTING)
    assert [t.get_text() for t in fig.texts] == [SETTING]
    png = save(fig, tmp_path / "sub" / "fig.png", data={"a": np.arange(3), "b": float("nan")})
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "sub" / "fig.json").read_text()) == {"a": [0, 1, 2], "b": None}
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["fig.json", "fig.png"]  # no tmp left


# -- curves ----------------------------------------------------------------------------
def _hist(offset):
    return [{"epoch": e, "step": 10 * e, "train_loss": 2.0 - 0.1 * e + offset,
             "test_acc": 10.0 * e + offset, "images_per_s": 100.0} for e in range(1, 5)]


def test_training_curves_single_and_seeds():
    fig, data = training_curves({"base": _hist(0.0), "ghost": [_hist(0.0), _hist(1.0)]},
                                setting=SETTING, title="t")
    _check(fig, data)
    g = data["series"]["test_acc"]["ghost"]
    assert g["n"] == 2 and g["x"] == [1, 2, 3, 4]
    assert g["mean"] == pytest.approx([10.5, 20.5, 30.5, 40.5])
    assert g["min"] == pytest.approx([10, 20, 30, 40]) and g["max"] == pytest.approx([11, 21, 31, 41])
    assert data["series"]["train_loss"]["base"]["n"] == 1


def test_training_curves_missing_keys_and_step_axis():
    h = _hist(0.0)
    del h[0]["test_acc"]  # evaluated only from epoch 2 on
    fig, data = training_curves({"a": h}, x="step", ys=("test_acc",), setting=SETTING)
    _check(fig, data)
    assert data["series"]["test_acc"]["a"]["x"] == [20, 30, 40]


def test_bar_with_errors():
    fig, data = bar_with_errors({"a": [1.0, 2.0, 3.0], "b": [4.0]}, "top-1 (%)", SETTING)
    _check(fig, data)
    assert data["bars"]["a"]["mean"] == pytest.approx(2.0) and data["bars"]["a"]["std"] == pytest.approx(1.0)
    assert data["bars"]["b"]["std"] == 0.0


# -- landscape -------------------------------------------------------------------------
def _model(seed):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    with torch.no_grad():  # non-trivial BN running statistics
        m.train()
        for _ in range(3):
            m(torch.randn(16, 3, 8, 8) * 2 + seed)
    return m


def _batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 5, (8,), generator=g)),
            (torch.randn(5, 3, 8, 8, generator=g), torch.randint(0, 5, (5,), generator=g))]


def _direct_loss(m, batches):
    m.eval()
    with torch.no_grad():
        x = torch.cat([b[0] for b in batches])
        y = torch.cat([b[1] for b in batches])
        out = m(x)
        return float(F.cross_entropy(out, y)), 100.0 * float((out.argmax(1) == y).float().mean())


def _snapshot(m):
    return {k: v.clone() for k, v in m.state_dict().items()}, m.training


def _unchanged(m, snap):
    sd, training = snap
    assert m.training == training
    for k, v in m.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_interpolate_1d_endpoints_and_models_unchanged():
    a, b = _model(0), _model(1)
    a.train()  # the call must not switch the caller's model to eval
    snap_a, snap_b = _snapshot(a), _snapshot(b)
    batches = _batches()
    r = interpolate_1d(a, b, batches, alphas=[0.0, 0.5, 1.0])
    _unchanged(a, snap_a)
    _unchanged(b, snap_b)
    assert r["alpha"] == [0.0, 0.5, 1.0] and r["n_samples"] == 13
    loss_a, acc_a = _direct_loss(_model(0), batches)
    loss_b, acc_b = _direct_loss(_model(1), batches)
    assert r["loss"][0] == pytest.approx(loss_a, rel=1e-5)
    assert r["loss"][2] == pytest.approx(loss_b, rel=1e-5)
    assert r["acc"][0] == pytest.approx(acc_a) and r["acc"][2] == pytest.approx(acc_b)
    fig, data = plot_1d({"a→b": r}, SETTING)
    _check(fig, data)
    assert data["curves"]["a→b"]["loss"] == r["loss"]


def _bn_net(seed):
    """Linear(3 → 4) → BatchNorm1d(4) → ReLU → Linear(4 → 2), with non-trivial BN statistics."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        m.train()
        for _ in range(2):
            m(torch.randn(6, 3) * 2 + seed)
    return m.eval()


def _bn_batches():
    g = torch.Generator().manual_seed(5)
    return [(torch.randn(6, 3, generator=g) + 1, torch.randint(0, 2, (6,), generator=g)) for _ in range(3)]


def _by_hand(m, batches, eval_batches):
    """Loss of ``m`` with BN statistics computed by hand from ``batches``: the mean over batches
    of each batch's mean and unbiased variance of the first layer's outputs (momentum None)."""
    with torch.no_grad():
        hs = [m[0](x) for x, _ in batches]
        mean = torch.stack([h.mean(0) for h in hs]).mean(0)
        var = torch.stack([h.var(0, unbiased=True) for h in hs]).mean(0)
        ref = copy.deepcopy(m).eval()
        ref[1].running_mean.copy_(mean)
        ref[1].running_var.copy_(var)
    return _direct_loss(ref, eval_batches), (mean, var)


def test_interpolate_1d_with_bn_reestimation_by_hand():
    a, b = _bn_net(0), _bn_net(1)
    snap_a, snap_b = _snapshot(a), _snapshot(b)
    bn, ev = _bn_batches(), _bn_batches()[:2]
    # without re-estimation: the endpoints are the two models as they are
    r = interpolate_1d(a, b, ev, alphas=[0.0, 1.0])
    assert r["bn"] == "interpolate"
    assert r["loss"][0] == pytest.approx(_direct_loss(_bn_net(0), ev)[0], rel=1e-6)
    assert r["loss"][1] == pytest.approx(_direct_loss(_bn_net(1), ev)[0], rel=1e-6)
    # with re-estimation: the endpoints' weights, running statistics from the batches
    r = interpolate_1d(a, b, ev, alphas=[0.0, 1.0], bn_batches=bn)
    _unchanged(a, snap_a)
    _unchanged(b, snap_b)
    assert r["bn"] == "recalibrate" and r["n_samples"] == 12
    (loss0, acc0), _ = _by_hand(_bn_net(0), bn, ev)
    (loss1, acc1), _ = _by_hand(_bn_net(1), bn, ev)
    assert r["loss"] == pytest.approx([loss0, loss1], rel=1e-5)
    assert r["acc"] == pytest.approx([acc0, acc1])
    # several evaluation sets at once: one re-estimation per α, the same numbers
    both = interpolate_1d(a, b, {"train": bn, "test": ev}, alphas=[0.0, 1.0], bn_batches=bn)
    assert both["test"]["loss"] == r["loss"] and both["train"]["n_samples"] == 18
    # halfway: the lerped weights, then the statistics of those weights
    mid = _bn_net(0)
    mid.load_state_dict({k: torch.lerp(v.float(), _bn_net(1).state_dict()[k].float(), 0.5) if v.is_floating_point()
                         else v for k, v in _bn_net(0).state_dict().items()})
    (loss_mid, _), _ = _by_hand(mid, bn, ev)
    assert interpolate_1d(a, b, ev, alphas=[0.5], bn_batches=bn)["loss"][0] == pytest.approx(loss_mid, rel=1e-5)


def test_recalibrate_bn_running_stats_equal_the_batches():
    m = _bn_net(0)
    bn = _bn_batches()
    _, (mean, var) = _by_hand(m, bn, bn)
    recalibrate_bn(m, bn)
    assert not m.training
    assert torch.allclose(m[1].running_mean, mean, atol=1e-6)
    assert torch.allclose(m[1].running_var, var, atol=1e-6)
    assert m[1].momentum == 0.1  # restored


def test_filter_normalised_directions():
    m = _model(0)
    d1, d2 = filter_normalized_directions(m, seed=3, n=2)
    for name, p in m.named_parameters():
        if p.dim() <= 1:  # biases and BN affine: zero direction
            assert torch.count_nonzero(d1[name]) == 0
            continue
        w = p.detach().reshape(p.shape[0], -1).norm(dim=1)
        for d in (d1, d2):
            assert d[name].shape == p.shape
            torch.testing.assert_close(d[name].reshape(p.shape[0], -1).norm(dim=1), w, rtol=1e-5, atol=1e-6)
    assert not torch.equal(d1["0.weight"], d2["0.weight"])
    again = filter_normalized_directions(m, seed=3, n=2)
    assert torch.equal(again[0]["0.weight"], d1["0.weight"])  # deterministic in the seed


def test_plane_2d_centre_and_unchanged():
    m = _model(0)
    snap = _snapshot(m)
    batches = _batches()
    r = plane_2d(m, batches, steps=3, span=0.5, seed=0)
    _unchanged(m, snap)
    assert r["x"] == pytest.approx([-0.5, 0.0, 0.5])
    assert np.asarray(r["loss"]).shape == (3, 3)
    loss, acc = _direct_loss(_model(0), batches)
    assert r["loss"][1][1] == pytest.approx(loss, rel=1e-5)
    assert r["acc"][1][1] == pytest.approx(acc)
    assert len({round(v, 6) for row in r["loss"] for v in row}) > 1  # the directions move the loss
    fig, data = plot_2d(r, SETTING)
    _check(fig, data)
    assert data["loss"] == r["loss"]


# -- ROC, reliability ------------------------------------------------------------------
def test_roc_plot():
    rng = np.random.default_rng(0)
    s_in, s_out = rng.normal(1, 1, 3000), rng.normal(0, 1, 2000)
    fig, data = roc_plot({"msp": (s_in, s_out), "perfect": ([2.0, 3.0], [0.0, 1.0])}, SETTING)
    _check(fig, data)
    c = data["curves"]["msp"]
    assert c["auroc"] == pytest.approx(metrics.auroc(s_in, s_out))
    assert c["fpr95"] == pytest.approx(metrics.fpr95(s_in, s_out))
    assert c["fpr"][0] == 0 and c["tpr"][-1] == 1 and len(c["fpr"]) <= 2000
    area = float(np.sum(np.diff(c["fpr"]) * (np.asarray(c["tpr"][1:]) + c["tpr"][:-1]) / 2))
    assert area == pytest.approx(c["auroc"])  # thinning kept the curve's corners
    assert data["curves"]["perfect"]["auroc"] == 1.0
    assert any("AUROC" in t.get_text() for t in fig.axes[0].get_legend().get_texts())


def test_roc_panels_one_panel_per_set_with_exact_auroc():
    rng = np.random.default_rng(1)
    s_in = rng.normal(1, 1, 500)
    panels = {"near": {"a": (s_in, rng.normal(0.5, 1, 300)), "b": ([2.0, 3.0], [0.0, 1.0])},
              "far": {"a": (s_in, rng.normal(-2, 1, 300))}}
    fig, data = roc_panels(panels, SETTING)
    _check(fig, data)
    assert list(data["panels"]) == ["near", "far"]
    assert data["panels"]["near"]["b"]["auroc"] == 1.0
    for title, curves in panels.items():
        for label, (a, b) in curves.items():
            assert data["panels"][title][label]["auroc"] == pytest.approx(metrics.auroc(a, b))
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["near", "far"]


def test_reliability_diagram():
    probs = torch.softmax(torch.randn(200, 10, generator=torch.Generator().manual_seed(0)) * 2, 1)
    labels = torch.randint(0, 10, (200,), generator=torch.Generator().manual_seed(1))
    fig, data = reliability_diagram(probs, labels, n_bins=10, setting=SETTING)
    _check(fig, data)
    assert data["ece"] == pytest.approx(metrics.ece(probs, labels, n_bins=10))
    assert sum(data["count"]) == 200 and len(data["accuracy"]) == 10


# -- attention -------------------------------------------------------------------------
def test_attention_rollout_hand_example():
    # Identity attention stays the identity.
    eye = np.stack([np.eye(3)] * 2)
    np.testing.assert_allclose(attention_rollout([eye, eye]), np.eye(3))
    # Block 1: heads [[1,0],[0,1]] and [[0,1],[0,1]] -> mean [[.5,.5],[0,1]]
    #   + I -> [[1.5,.5],[0,2]] -> rows normalised A1 = [[.75,.25],[0,1]].
    # Block 2: one head [[0,1],[1,0]] + I -> A2 = [[.5,.5],[.5,.5]].
    # Rollout = A2 @ A1 = [[.375, .625], [.375, .625]]  (A1 @ A2 would give all .5).
    b1 = np.array([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]])
    b2 = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    np.testing.assert_allclose(attention_rollout([b1]), [[0.75, 0.25], [0.0, 1.0]])
    np.testing.assert_allclose(attention_rollout([b1, b1]), [[0.5625, 0.4375], [0.0, 1.0]])
    np.testing.assert_allclose(attention_rollout([b1, b2]), [[0.375, 0.625], [0.375, 0.625]])


def test_attention_grid():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 8, 8, generator=g)
    maps = [torch.softmax(torch.randn(3, 5, 5, generator=g), -1) for _ in range(2)]  # 1 CLS + 2x2 patches
    fig, data = attention_grid(image, maps, patch_size=4, setting=SETTING)
    _check(fig, data)
    assert data["grid"] == [2, 2] and len(data["heads"]) == 3
    assert np.sum(data["rollout"]) == pytest.approx(1.0)
    expected = attention_rollout(maps)[0, 1:]
    np.testing.assert_allclose(np.ravel(data["rollout"]), expected / expected.sum())
    with pytest.raises(ValueError):
        attention_grid(image, maps, patch_size=2, setting=SETTING)
