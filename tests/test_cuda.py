"""Chapter 21 (CUDA): the class-wise filters, the poison against values computed by hand, the
poisoned fraction, the chapter's arms and guards, and its figures."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from repro.data import Dataset
from repro.data.poison import CudaPoison, apply_filters, cuda_filters, cuda_poison, poison_dataset, poison_indices
from repro.errors import ParameterError
from repro.families.robustness import cuda
from repro.papers import load_spec
from repro.sweep import SweepResult


# -- filters ---------------------------------------------------------------------------------------
def test_filters_have_blur_taps_and_one_tap_at_one():
    f = cuda_filters(10, key=0, blur=0.3)
    assert f.shape == (10, 3, 3) and f.dtype == torch.float32
    for w in f:
        flat = w.flatten()
        assert int((flat == 1.0).sum()) == 1                  # the centre parameter
        others = flat[flat != 1.0]
        assert len(others) == 8 and float(others.min()) >= 0.0 and float(others.max()) < 0.3


def test_same_key_same_filters_other_key_or_class_other_filters():
    a, b = cuda_filters(20, key=7), cuda_filters(20, key=7)
    assert torch.equal(a, b)
    assert not torch.equal(a, cuda_filters(20, key=8))
    # each class its own filter
    assert all(not torch.equal(a[i], a[j]) for i in range(20) for j in range(i))
    # class c's filter depends on the key and c only: a subset of classes gets the same first filters
    torch.testing.assert_close(cuda_filters(5, key=7), a[:5], rtol=0, atol=0)
    # blur 0: the filter is a single 1 (a shift by at most one pixel)
    z = cuda_filters(4, key=7, blur=0.0)
    assert torch.equal(z.flatten(1).sum(1), torch.ones(4)) and torch.equal(z.flatten(1).amax(1), torch.ones(4))


# -- the poison, by hand -----------------------------------------------------------------------------
def test_an_impulse_gives_the_flipped_filter_scaled_by_the_image_maximum():
    """Hand computation. Channel 0 is an impulse of 255 in the centre of a 3×3 image, channel 1
    an impulse of 51 (0.2), channel 2 black. F.conv2d is a cross-correlation,
    out[i, j] = Σ_ab w[a, b]·x[i + a − 1, j + b − 1], so an impulse at (1, 1) returns
    w[2 − i, 2 − j], the filter turned by 180°:
        w = [[0.2, 0.4, 0], [0, 1, 0], [0, 0, 0.6]]  →  [[0.6, 0, 0], [0, 1, 0], [0, 0.4, 0.2]].
    The largest value over all channels is 1 (channel 0's centre), so channel 0 becomes
    255·[[0.6, 0, 0], [0, 1, 0], [0, 0.4, 0.2]] = [[153, 0, 0], [0, 255, 0], [0, 102, 51]] and
    channel 1, 0.2 times that: [[30.6, 0, 0], [0, 51, 0], [0, 20.4, 10.2]] → rounded
    [[31, 0, 0], [0, 51, 0], [0, 20, 10]]."""
    x = torch.zeros(1, 3, 3, 3, dtype=torch.uint8)
    x[0, 0, 1, 1] = 255
    x[0, 1, 1, 1] = 51
    w = torch.tensor([[[0.2, 0.4, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.6]]])
    out = apply_filters(x, torch.tensor([0]), w)
    assert out.dtype == torch.uint8
    assert out[0, 0].tolist() == [[153, 0, 0], [0, 255, 0], [0, 102, 51]]
    assert out[0, 1].tolist() == [[31, 0, 0], [0, 51, 0], [0, 20, 10]]
    assert out[0, 2].tolist() == [[0, 0, 0]] * 3


def _by_loops(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Depthwise cross-correlation with zero padding 1, in float64, by explicit loops."""
    c, h, wd = x.shape
    pad = np.zeros((c, h + 2, wd + 2))
    pad[:, 1:-1, 1:-1] = x
    out = np.zeros((c, h, wd))
    for k in range(c):
        for i in range(h):
            for j in range(wd):
                out[k, i, j] = sum(w[a, b] * pad[k, i + a, j + b] for a in range(3) for b in range(3))
    return out


def test_the_poison_of_a_random_image_matches_the_convolution_by_loops():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 3, 6, 5), generator=g, dtype=torch.uint8)
    y = torch.tensor([2, 0])
    filters = cuda_filters(3, key=11, blur=0.3)
    out = apply_filters(x, y, filters)
    for n in range(2):
        ref = _by_loops(x[n].double().numpy() / 255, filters[y[n]].double().numpy())
        ref = np.clip(np.round(255 * ref / ref.max()), 0, 255)
        assert np.abs(out[n].numpy().astype(int) - ref.astype(int)).max() <= 1   # fp32 vs fp64 at a .5
        assert (out[n].numpy() == ref).mean() > 0.99


def test_same_class_same_filter_different_class_different_result():
    g = torch.Generator().manual_seed(1)
    img = torch.randint(0, 256, (1, 3, 8, 8), generator=g, dtype=torch.uint8)
    x = img.repeat(3, 1, 1, 1)
    filters = cuda_filters(4, key=3)
    out = apply_filters(x, torch.tensor([1, 1, 2]), filters)
    assert torch.equal(out[0], out[1])                 # the same class: the same filter
    assert not torch.equal(out[0], out[2])             # another class: another filter
    # the batch's other images do not matter: alone, the image gets the same result
    assert torch.equal(apply_filters(img, torch.tensor([2]), filters)[0], out[2])


def test_poisoned_images_stay_uint8_in_range_and_black_stays_black():
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (20, 3, 8, 8), generator=g, dtype=torch.uint8)
    x[0] = 0
    x[1] = 255
    y = torch.arange(20) % 5
    out, idx = cuda_poison(x, y, CudaPoison(key=5))
    assert out.dtype == torch.uint8 and out.shape == x.shape and len(idx) == 20
    assert int(out.min()) >= 0 and int(out.max()) <= 255
    assert int(out[0].max()) == 0                       # nothing to divide: stays black
    assert all(int(out[i].max()) == 255 for i in range(1, 20))  # each poisoned image is scaled to its maximum
    assert not torch.equal(out, x)


@pytest.mark.parametrize("mix, n, expected", [(0.0, 50, 0), (0.5, 50, 25), (0.3, 7, 2), (0.25, 10, 2), (1.0, 9, 9)])
def test_poison_fraction_selects_round_mix_n_images(mix, n, expected):
    idx = poison_indices(n, mix, key=3)
    assert len(idx) == expected == round(mix * n)
    assert idx.tolist() == sorted(set(idx.tolist())) and all(0 <= i < n for i in idx.tolist())
    assert torch.equal(idx, poison_indices(n, mix, key=3))


def test_only_the_selected_images_change_and_the_test_split_never():
    g = torch.Generator().manual_seed(3)
    x = torch.randint(1, 256, (40, 3, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.arange(40) % 4
    out, idx = cuda_poison(x, y, CudaPoison(key=9, mix=0.5))
    changed = (out != x).flatten(1).any(1)
    assert len(idx) == 20 and changed[idx].all() and int(changed.sum()) == 20
    assert not torch.equal(idx, poison_indices(40, 0.5, key=10))   # another key, another subset
    data = Dataset(x_train=x, y_train=y, x_test=x[:8].clone(), y_test=y[:8], classes=[0, 1, 2, 3],
                   class_names=list("abcd"), checksum="t", info={})
    p = poison_dataset(data, CudaPoison(key=9, mix=0.5))
    assert torch.equal(p.x_train, out) and torch.equal(p.x_test, data.x_test) and p.info["poison"]["poisoned"] == 20
    assert torch.equal(data.x_train, x)                 # the original is not modified
    assert poison_dataset(data, None) is data


@pytest.mark.parametrize("kw, msg", [({"key": -1}, "key"), ({"blur": -0.1}, "blur"), ({"blur": math.inf}, "blur"),
                                     ({"mix": 1.01}, "mix"), ({"mix": -0.5}, "mix"), ({"kernel": 2}, "odd")])
def test_bad_poison_settings_are_refused(kw, msg):
    with pytest.raises(ParameterError, match=msg):
        CudaPoison(**kw)


def test_poison_refuses_float_images():
    with pytest.raises(ParameterError, match="uint8"):
        cuda_poison(torch.rand(2, 3, 4, 4), torch.tensor([0, 1]), CudaPoison())


# -- the chapter's arms ----------------------------------------------------------------------------------
@pytest.mark.parametrize("tier", ["smoke", "cpu", "gpu", "paper"])
def test_arms_at_every_tier_cover_every_claim(tier):
    spec = load_spec("cuda")
    params = spec.resolve(tier)
    arms = cuda.arm_configs(params)
    assert list(arms) == ["clean", "cuda", "cuda_mix50", "clean_part50", "clean_at", "cuda_at"]
    for c in spec.claims:
        assert c.arm in arms and c.baseline in arms
    cfg = {k: c for k, (_, c) in arms.items()}
    assert cfg["clean"].poison is None and cfg["cuda"].poison.mix == 1.0 and cfg["cuda_mix50"].poison.mix == 0.5
    assert cfg["clean_part50"].train_on == "unpoisoned" and cfg["cuda_mix50"].train_on == "all"
    assert {k for k, c in cfg.items() if c.adversarial} == {"clean_at", "cuda_at"}
    assert {k for k, c in cfg.items() if c.eval is not None} == set(cuda.EVALUATED)
    assert cfg["cuda_at"].adv.eps == params["at_eps"] and cfg["cuda_at"].eval.attacks[0].eps == params["eval_eps"]
    assert cfg["cuda_at"].epochs == (params["at_epochs"] or params["epochs"])
    assert len({c.poison.key for c in cfg.values() if c.poison is not None}) == 1


def test_paper_tier_is_the_papers_recipe():
    p = load_spec("cuda").resolve("paper")
    at = cuda.arm_configs(p)["cuda_at"][1]
    assert (at.model, at.epochs, at.batch_size, at.lr, at.schedule, at.milestones, at.grad_clip) == \
        ("resnet18", 100, 512, 0.1, "step", (40.0, 80.0), 5.0)
    assert (at.adv.method, at.adv.eps, at.adv.effective_steps()) == ("pgd", 0.015, 10)
    assert at.adv.effective_step_size() == pytest.approx(1.5 * 0.015 / 10)
    assert (at.poison.blur, at.poison.kernel) == (0.3, 3)


@pytest.mark.parametrize("fractions, msg", [([0.25], "include 0.5"), ([0.5, 1.0], r"in \(0, 1\)"),
                                            ([0.0, 0.5], r"in \(0, 1\)"), ([0.5, 0.501], "repeat")])
def test_bad_fractions_fail_before_work(fractions, msg):
    params = {**load_spec("cuda").resolve("smoke"), "fractions": fractions}
    with pytest.raises(ParameterError, match=msg):
        cuda.arm_configs(params)


def test_bad_attack_settings_fail_in_arm_configs():
    base = load_spec("cuda").resolve("smoke")
    with pytest.raises(ParameterError, match="eps"):
        cuda.arm_configs({**base, "eval_eps": 8.0})
    with pytest.raises(ParameterError, match="eps"):
        cuda.arm_configs({**base, "at_eps": -0.1})
    with pytest.raises(ParameterError, match="adversarial-training method"):
        cuda.arm_configs({**base, "at_method": "free"})


# -- guards, tables and figures from a made-up sweep --------------------------------------------------------
def _job(arm: str, seed: int, top1: float, robust: float | None = None, flags: tuple[str, ...] = (),
         epochs: int = 3) -> dict:
    hist = [{"epoch": e + 1, "test_acc": top1 * (e + 1) / epochs, "train_acc": 30.0 + 10 * e} for e in range(epochs)]
    metrics = {"top1": top1, "train_acc": hist[-1]["train_acc"], "grad_evals": 1.5e5}
    extra = {"title": arm, "history": hist, "train_images": 5000, "poison": None,
             "config": {"adv": {"method": "fgsm_rs", "eps": 0.015, "steps": 1} if arm.endswith("_at") else None}}
    if arm.startswith("cuda"):
        extra["poison"] = {"mix": 0.5 if "mix" in arm else 1.0, "train_on": "all", "poisoned": 1, "train": 5000}
    if arm.startswith("clean_part"):
        extra["poison"] = {"mix": 0.5, "train_on": "unpoisoned", "poisoned": 0, "train": 2500}
    if robust is not None:
        metrics.update(eval_clean=top1, robust_pgd=robust)
        extra["robustness"] = {"n": 500, "clean": top1, "robust": {"pgd": robust}, "flags": list(flags),
                               "sanity": {"checks": [{"name": "more_steps", "passed": True,
                                                      "numbers": {"more_steps_acc": robust}},
                                                     {"name": "unbounded", "passed": not flags, "numbers": {"acc": 0.0}},
                                                     {"name": "black_box", "passed": True, "numbers": {"acc": robust}}]}}
    return {"arm": arm, "seed": seed, "metrics": metrics, "extra": extra}


def _result(at_drop: float = 10.0, flags: tuple[str, ...] = ()) -> SweepResult:
    """Three seeds; PGD removes 40 points of the clean ERM model's accuracy, 20 of the CUDA
    ERM model's and ``at_drop`` of each AT model's."""
    jobs = []
    for s in range(3):
        jobs += [_job("clean", s, 60 + s, 20 + s), _job("cuda", s, 33 + s, 13 + s), _job("cuda_mix50", s, 50 + s),
                 _job("clean_part50", s, 52 + s), _job("clean_at", s, 49 + s, 49 + s - at_drop, flags),
                 _job("cuda_at", s, 38 + s, 38 + s - at_drop)]
    return SweepResult(jobs)


def test_guards_flag_only_the_at_claims_when_at_did_not_work():
    """With 500 images the tolerance is 2·100·√((p_a(1 − p_a) + p_b(1 − p_b))/500) ≈ 4.6 to 6
    points: a drop of 10 under AT passes against 20 and 40; 25 fails against CUDA's 20 only;
    and either failure flags both AT claims (both rest on cuda_at), never the others."""
    claims = load_spec("cuda").claims
    assert cuda.guards(_result(10.0), claims) == []
    flagged = cuda.guards(_result(25.0), claims)
    assert {k for k, _ in flagged} == {"top1:cuda_at-clean", "top1:cuda_at-clean_at"}
    assert "harder to attack than cuda" in flagged[0][1] and "than clean:" not in flagged[0][1]
    both = cuda.guards(_result(45.0), claims)[0][1]
    assert "harder to attack than clean:" in both and "harder to attack than cuda:" in both
    failed = cuda.guards(_result(flags=("sanity check failed (unbounded): x",)), claims)
    assert {k for k, _ in failed} == {"top1:cuda_at-clean", "top1:cuda_at-clean_at"}
    assert "clean_at seed 0: sanity check failed (unbounded)" in failed[0][1]


def test_tables_and_figures_fit_the_page():
    res = _result()
    table = cuda.summary_table(res)
    assert "`cuda_mix50`" in table and "50% CUDA" in table and "2500 img" in table and "150 k" in table
    assert "✓" in cuda.sanity_table(res)
    fig, data = cuda.accuracy_vs_epoch(res, "setting", chance=5.0)
    assert fig.get_size_inches()[0] <= 7.5 and len(fig.axes) == 2
    assert data["panels"]["standard training"]["cuda"]["test_acc"]["mean"][-1] == pytest.approx(34.0)
    fig, data = cuda.accuracy_vs_fraction(res, [0.5], "setting", chance=5.0)
    assert fig.get_size_inches()[0] <= 7.5
    xs = [p["fraction"] for p in data["series"]["all images, a fraction CUDA-filtered"]]
    assert xs == [0.0, 0.5, 1.0]
    pts = cuda.clean_vs_robust_points(res)
    assert [p["label"] for p in pts] == list(cuda.EVALUATED) and pts[0]["robust"] == [20.0, 21.0, 22.0]


def test_poison_figures():
    g = torch.Generator().manual_seed(0)
    data = Dataset(x_train=torch.randint(0, 256, (12, 3, 8, 8), generator=g, dtype=torch.uint8),
                   y_train=torch.arange(12) % 4, x_test=torch.zeros(4, 3, 8, 8, dtype=torch.uint8),
                   y_test=torch.arange(4), classes=[0, 1, 2, 3], class_names=["apple", "aquarium_fish", "baby", "bear"],
                   checksum="t", info={})
    rows, names = cuda.example_rows(data, CudaPoison(key=1), classes=7)
    assert [r.shape[0] for r in rows] == [4, 4, 4] and names == ["apple", "aquarium_fish", "baby", "bear"]
    assert torch.equal(rows[2], apply_filters(rows[0], torch.arange(4), cuda_filters(4, 1)))
    fig, _ = cuda.poison_grid(data, CudaPoison(key=1), "setting")
    assert fig.get_size_inches()[0] <= 7.5
    fig, d = cuda.filter_spectra(CudaPoison(key=1), data.class_names, 8, "setting")
    assert fig.get_size_inches()[0] <= 7.5 and len(d["filters"]) == 3
    assert d["spectra_abs_over_dc"][0][4][4] == pytest.approx(1.0)  # normalised at zero frequency
