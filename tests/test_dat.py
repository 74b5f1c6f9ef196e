"""Chapter 12 (DAT): the sampler, the EBM loss, the AUC and the curriculum against values computed
by hand, BatchNorm frozen through stage 2, the Fréchet distance, the start images, the configs,
the guards, and the arm end to end on a tiny synthetic set."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from repro.data import MEAN, STD, Dataset, TensorLoader
from repro.errors import ParameterError
from repro.families.robustness import dat
from repro.families.robustness.arms import dat as A
from repro.families.robustness.protocol import RobustConfig
from repro.families.robustness.training import AdvTrainConfig
from repro.papers import load_spec
from repro.sweep import SweepResult
from repro.train import WORK, TrainConfig, fit

M = torch.tensor(MEAN).view(1, 3, 1, 1)
S = torch.tensor(STD).view(1, 3, 1, 1)


pytestmark = pytest.mark.usefixtures("one_thread")


def pixels(n: int, seed: int, size: int = 4, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(n, 3, size, size, generator=g)


def bn_cnn(classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, classes))


def linear(classes: int = 3, size: int = 2) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, classes, bias=False))


# -- the sampler ----------------------------------------------------------------------------------------
def test_pgd_on_logsumexp_increases_it_and_stays_in_0_1():
    model = bn_cnn().eval()
    x01 = pixels(16, 0)
    before = torch.logsumexp(model((x01 - M) / S), 1)
    after_x = A.ascend(model, x01, steps=5, step_size=0.3)
    after = torch.logsumexp(model((after_x - M) / S), 1)
    assert bool((after > before).all())
    assert float(after_x.min()) >= 0.0 and float(after_x.max()) <= 1.0
    assert not after_x.requires_grad and after_x.dtype == torch.float32
    assert all(p.grad is None for p in model.parameters())      # the sampler never touches weight gradients


def test_pgd_on_f_y_increases_the_target_logit():
    model = bn_cnn().eval()
    x01, y = pixels(12, 1), torch.arange(12) % 3
    f = lambda x: model((x - M) / S).gather(1, y.view(-1, 1)).squeeze(1)  # noqa: E731
    assert bool((f(A.ascend(model, x01, 4, 0.3, target=y)) > f(x01)).all())


def test_ascent_on_a_linear_model_moves_along_w_y_over_sigma_by_hand():
    """For f(x) = W·(x − μ)/σ the input gradient of f_y is w_y/σ wherever x is, so T
    unclamped steps of length a move x by T·a·d/‖d‖₂ with d = w_y/σ (and logsumexp likewise
    gains, to first order, along its own gradient)."""
    model = linear()
    x01, y = pixels(6, 2, size=2, lo=0.45, hi=0.55), torch.tensor([0, 1, 2, 0, 1, 2])
    w = model[1].weight.detach()
    d = w[y] / S.expand(1, 3, 2, 2).flatten()
    expected = x01 + 3 * 0.02 * (d / d.norm(dim=1, keepdim=True)).view(6, 3, 2, 2)
    torch.testing.assert_close(A.ascend(model, x01, 3, 0.02, target=y), expected, atol=1e-6, rtol=0)
    # one step is exactly one step length in L2 when nothing is clamped
    one = A.ascend(model, x01, 1, 0.02)
    torch.testing.assert_close((one - x01).flatten(1).norm(dim=1), torch.full((6,), 0.02), atol=1e-6, rtol=0)


def test_ascent_restores_every_modules_mode_and_counts_steps():
    model = bn_cnn().train()
    model[1].eval()  # a frozen BN inside a training model: must stay as it was
    before = WORK["attack_grads"]
    A.ascend(model, pixels(4, 3), 3, 0.1)
    assert WORK["attack_grads"] - before == 3
    assert model.training and model[0].training and not model[1].training
    assert torch.equal(A.ascend(model, pixels(4, 3), 0, 0.1), pixels(4, 3))   # T = 0: the starts themselves


# -- the EBM loss, the AUC, the curriculum -------------------------------------------------------------
def test_bce_on_logsumexp_by_hand():
    """real logits [0, 0] → lse = ln 2, loss −ln σ(ln 2) = −ln(2/3); generated [0, ln 3] → lse =
    ln 4, loss −ln(1 − σ(ln 4)) = ln 5; the mean of the two: (0.40547 + 1.60944)/2 = 1.00745."""
    real = torch.tensor([[0.0, 0.0]])
    gen = torch.tensor([[0.0, math.log(3.0)]])
    assert A.ebm_bce(real, gen).item() == pytest.approx((math.log(1.5) + math.log(5.0)) / 2, abs=1e-6)
    assert A.ebm_bce(real, gen).item() == pytest.approx(1.00745, abs=1e-5)


def test_auc_by_hand():
    # pairs (3 > 2), (3 > 0), (1 < 2), (1 > 0): 3 of 4
    assert A.batch_auc(torch.tensor([3.0, 1.0]), torch.tensor([2.0, 0.0])) == pytest.approx(0.75)
    assert A.batch_auc(torch.tensor([1.0]), torch.tensor([1.0])) == pytest.approx(0.5)   # a tie counts ½
    assert A.batch_auc(torch.tensor([0.0, 0.1]), torch.tensor([1.0, 2.0])) == 0.0


def _toy(n: int = 32, size: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8), torch.randint(0, 3, (n,), generator=g)


def _stage2(frozen: bool, ebm: A.EbmConfig, adv: AdvTrainConfig | None = None, epochs: int = 1):
    imgs, labels = _toy()
    model = bn_cnn()
    pool, _ = _toy(64, seed=5)
    update = A.DatUpdate(ebm, adv, pool, batch_size=8)
    res = fit(model, TensorLoader(imgs, labels, 8, seed=0), None,
              TrainConfig(epochs=epochs, lr=0.05, progress=False, frozen_bn=frozen), update=update)
    return model, update, res


def test_curriculum_moves_t_when_the_running_auc_reaches_the_threshold(monkeypatch):
    """A scripted AUC sequence with a window of two batches (auc_window 16, batch 8): T moves
    at the batch where the window is full and its mean is ≥ 0.8, the window restarts, and T
    stops at t_max."""
    script = iter([0.9, 0.72, 0.9, 0.6])
    monkeypatch.setattr(A, "batch_auc", lambda real, gen: next(script))
    ebm = A.EbmConfig(t_start=0, t_max=2, auc_window=16, auc_th=0.8, starts=("uniform",), pool=4)
    _, update, res = _stage2(True, ebm)
    assert res.steps == 4   # 32 images / 8
    # batch 1: window [0.9]; 2: [0.9, 0.72] mean 0.81 → T 1, reset; 3: [0.9]; 4: [0.9, 0.6] mean 0.75
    assert update.log["T"] == [0, 0, 1, 1] and update.T == 1
    assert update.log["running_auc"] == [0.9, 0.81, 0.9, 0.75]
    # two epochs: T 1 after batch 2, T 2 after batch 4, then capped at t_max = 2
    script = iter([0.9, 0.72, 0.95, 0.95, 0.9, 0.9, 0.9, 0.9])
    _, update2, _ = _stage2(True, ebm, epochs=2)
    assert update2.log["T"] == [0, 0, 1, 1, 2, 2, 2, 2] and update2.T == 2


def test_stage2_with_frozen_bn_leaves_the_running_statistics_alone():
    ebm = A.EbmConfig(t_start=2, t_max=3, starts=("uniform",), pool=4)
    adv = AdvTrainConfig("pgd", norm="L2", eps=0.5, steps=2)
    imgs, labels = _toy()
    model0 = bn_cnn()
    stats0 = {k: v.clone() for k, v in model0.state_dict().items() if "running" in k or "num_batches" in k}
    model, update, res = _stage2(True, ebm, adv)
    for k, v in stats0.items():
        assert torch.equal(model.state_dict()[k], v), k
    assert not torch.equal(model[1].weight.detach(), model0[1].weight.detach())   # BN's affine weights still train
    assert not torch.equal(model[0].weight.detach(), model0[0].weight.detach())
    # with BN in train mode (the "BN issue" arm) every batch moves them
    model_bn, _, _ = _stage2(False, ebm, adv)
    assert not torch.equal(model_bn[1].running_mean, stats0["1.running_mean"])
    # gradient evaluations: T + adversarial steps + 3 per image and step
    assert update.grad_evals == 32 * (2 + 2 + 3)
    assert math.isfinite(res.final["train_loss"])


def test_update_state_round_trips():
    ebm = A.EbmConfig(t_start=1, t_max=3, auc_window=16, starts=("uniform",), pool=4)
    _, update, _ = _stage2(True, ebm)
    fresh = A.DatUpdate(ebm, None, _toy(8)[0], batch_size=8)
    fresh.load_state_dict(update.state_dict())
    assert fresh.state_dict() == update.state_dict() and fresh.window.maxlen == 2


# -- the Fréchet distance -----------------------------------------------------------------------------------
def test_frechet_distance_by_hand():
    """1-D: a = {0, 2} (mean 1, variance 2), b = {1, 5} (mean 3, variance 8):
    (1 − 3)² + 2 + 8 − 2·√(2·8) = 4 + 10 − 8 = 6 (= Δμ² + (σa − σb)²)."""
    assert A.frechet_distance(np.array([[0.0], [2.0]]), np.array([[1.0], [5.0]])) == pytest.approx(6.0)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 3))
    assert A.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # independent diagonal dimensions add up
    two = A.frechet_distance(np.array([[0.0, 0.0], [2.0, 0.0]]), np.array([[1.0, 0.0], [5.0, 0.0]]))
    assert two == pytest.approx(6.0, abs=1e-4)
    with pytest.raises(ValueError):
        A.frechet_distance(a, a[:, :2])


# -- start images ----------------------------------------------------------------------------------------
def test_start_images_split_the_kinds_and_are_seeded():
    src = _toy(40, size=8)[0]
    x = A.start_images(("uniform", "blur", "shuffle"), 10, src, "train", seed=0)
    assert x.dtype == torch.uint8 and x.shape == (10, 3, 8, 8)
    assert torch.equal(x, A.start_images(("uniform", "blur", "shuffle"), 10, src, "train", seed=0))
    assert not torch.equal(x, A.start_images(("uniform", "blur", "shuffle"), 10, src, "train", seed=1))
    # shares 4, 3, 3: the blurred ones are smoother than uniform noise
    tv = (x[:, :, 1:] .float() - x[:, :, :-1].float()).abs().flatten(1).mean(1)
    assert float(tv[4:7].max()) < float(tv[:4].min())
    with pytest.raises(ParameterError):
        A.start_images(("uniform", "tinyimages"), 4, src, "train", seed=0)


def test_cifar10_starts_of_the_pool_and_of_the_evaluation_never_overlap():
    pytest.importorskip("repro.data")
    try:
        A.check_starts(("cifar10",))
    except ParameterError:
        pytest.skip("no CIFAR-10 test set here")
    src = _toy(4, size=8)[0]
    tr = A.start_images(("cifar10",), 300, src, "train", seed=0)
    ev = A.start_images(("cifar10",), 300, src, "eval", seed=0)
    a = {bytes(t.numpy().tobytes()) for t in tr}
    assert not a & {bytes(t.numpy().tobytes()) for t in ev}


# -- configs ---------------------------------------------------------------------------------------------
def _params(tier: str = "smoke") -> dict:
    return load_spec("dat").resolve(tier)


def test_arm_configs_build_the_two_stages():
    arms = dat.arm_configs({**_params(), "at_continued": True})
    assert list(arms) == ["standard", "at", "dat", "dat_bn", "at_ft"]
    assert all(name == "dat" for name, _ in arms.values())
    std, at, d, dbn, ft = (c for _, c in arms.values())
    assert std.adv is None and std.init is None and std.ebm is None
    assert at.adv.norm == "L2" and at.adv.eps == 0.5 and at.init is None
    assert d.init.recipe() == at.base().recipe()        # stage 2 starts from the `at` model (shared checkpoint)
    assert d.frozen_bn and not dbn.frozen_bn and ft.frozen_bn and ft.ebm is None
    assert d.schedule == "constant" and d.lr == 0.01 and d.nesterov
    assert d.recipe() != dbn.recipe() and "gen" not in d.recipe() and "judge" not in d.recipe()
    assert d.recipe()["ebm"]["t_max"] == 2
    assert "at_ft" not in dat.arm_configs(_params())   # the smoke tier leaves the control out


@pytest.mark.parametrize("change", [dict(at_norm="Linf"), dict(at_method="trades"), dict(sampling="energy"),
                                    dict(auc_th=1.5), dict(t_start=5), dict(ood_starts=["tinyimages"]),
                                    dict(dat_epochs=0), dict(dat_ema=1.0), dict(gen_per_class=0),
                                    dict(at_eps=-0.5), dict(ood_pool=100000), dict(gen_per_class=40)])
def test_bad_settings_are_refused_before_any_work(change):
    with pytest.raises(ParameterError):
        dat.arm_configs({**_params(), **change})


def test_dat_config_checks():
    ebm = A.EbmConfig(starts=("uniform",), pool=4)
    init = RobustConfig(model="cnn3")
    with pytest.raises(ParameterError, match="init"):
        A.DatConfig(model="cnn3", ebm=ebm)
    with pytest.raises(ParameterError, match="judge"):
        A.DatConfig(model="cnn3", gen=A.GenConfig(starts=("uniform",)))
    with pytest.raises(ParameterError, match="judge"):
        A.DatConfig(model="cnn3", gen=A.GenConfig(starts=("uniform",)),
                    judge=RobustConfig(model="cnn3", adv=AdvTrainConfig()))
    with pytest.raises(ParameterError, match="stage-2"):
        A.DatConfig(model="cnn3", nesterov=True)
    cfg = A.DatConfig(model="cnn3", ebm=ebm, init=init, frozen_bn=True)
    assert type(cfg.base()) is RobustConfig and cfg.base().frozen_bn


# -- the arm end to end, and the chapter's tables, guards and figures --------------------------------------
def _tiny_data(classes: int = 3, size: int = 8) -> Dataset:
    g = torch.Generator().manual_seed(0)
    y_tr, y_te = torch.arange(classes).repeat(12), torch.arange(classes).repeat(6)
    x_tr = torch.randint(0, 256, (len(y_tr), 3, size, size), generator=g, dtype=torch.uint8)
    x_te = torch.randint(0, 256, (len(y_te), 3, size, size), generator=g, dtype=torch.uint8)
    # a class signal the networks can pick up: class c brightens channel c
    for x, y in ((x_tr, y_tr), (x_te, y_te)):
        x[torch.arange(len(y)), y] = (x[torch.arange(len(y)), y].int() // 2 + 128).to(torch.uint8)
    return Dataset(x_tr, y_tr, x_te, y_te, classes=list(range(classes)), class_names=[f"c{i}" for i in range(classes)],
                   checksum="tiny")


def _tiny_params() -> dict:
    p = _params()
    return {**p, "classes": 3, "width": 4, "batch_size": 12, "eval_images": 9, "square_queries": 5,
            "gen_per_class": 2, "ood_pool": 12, "auc_window": 12, "t_start": 1, "t_max": 2, "at_continued": True}


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory):
    from repro.families.robustness import protocol

    data = _tiny_data()
    arms = dat.arm_configs(_tiny_params())
    jobs = protocol.jobs(arms, data, "cpu")
    root = tmp_path_factory.mktemp("dat")
    rows = []
    for label, fn in jobs.items():
        j = fn(0, root / label)
        rows.append({"arm": label, "seed": 0, "metrics": j.metrics, "n_test": j.n_test, "extra": j.extra,
                     "test_var": j.test_var, "model": j.model})
    return data, SweepResult(rows)


def test_the_arm_reports_robustness_generation_and_the_curriculum(tiny_result):
    data, result = tiny_result
    assert result.arms() == ["standard", "at", "dat", "dat_bn", "at_ft"]
    for arm in result.arms():
        m = result.of(arm)[0]["metrics"]
        for key in ("top1", "eval_clean", "robust_pgd_l2", "gen_acc", "gen_fd", "gen_fd_start", "gen_auc", "grad_evals"):
            assert key in m and math.isfinite(m[key]), (arm, key)
        assert 0 <= m["gen_acc"] <= 100 and 0 <= m["gen_auc"] <= 100
        assert result.of(arm)[0]["extra"]["robustness"]["sanity"] is not None
        assert "gen_acc" in result.of(arm)[0]["test_var"]
    d = result.of("dat")[0]
    assert d["metrics"]["T_final"] >= 1 and d["extra"]["curriculum"]["T"][0] == 1
    # stage-2 cost: 3 steps of 12 images, each T + 2 attack steps + 3 passes
    assert d["metrics"]["grad_evals_stage2"] == sum(12 * (t + 2 + 3) for t in d["extra"]["curriculum"]["T"])
    assert d["metrics"]["grad_evals"] > result.of("at")[0]["metrics"]["grad_evals"]
    # the same start images and judge for every arm: the starts' distance is one number
    starts = {round(result.of(a)[0]["metrics"]["gen_fd_start"], 6) for a in result.arms()}
    assert len(starts) == 1


def test_tables_guards_and_figures(tiny_result):
    data, result = tiny_result
    assert "`dat`" in dat.summary_table(result) and "Square" in dat.sanity_table(result)
    claims = load_spec("dat").claims
    for key, why in dat.guards(result, claims, chance_pct=100 / 3):
        assert key in {c.key for c in claims} and why
    seed, models = dat.first_seed_models(result)
    assert seed == 0 and set(models) == set(result.arms()) and all("model" not in j for j in result.jobs)
    gen = dat.gen_config(_tiny_params())
    fig, fd = dat.sample_grid(models, data, gen, "cpu", "setting", classes=3)
    assert fd["shape"] == [6, 3, 8] and set(fd["own_prob_of_target"]) == set(models)
    fig, fd = dat.energy_histograms(models, data, gen, "cpu", "setting", n=6)
    assert set(fd["arms"]) == set(models) and sum(fd["arms"]["dat"]["generated"]["counts"]) == 6
    fig, fd = dat.curriculum(result, "setting", 0.8)
    assert set(fd["curves"]) == {"dat/seed0", "dat_bn/seed0"}
    fig, fd = dat.clean_vs_robust_bars(result, "setting", 0.5, 2)
    assert set(fd["robust"]) == set(result.arms())
    fig, fd = dat.generation_bars(result, "setting", 100 / 3)
    assert set(fd["gen_acc"]) == set(result.arms())


def test_guards_flag_robust_claims_on_a_failed_sanity_check_and_gen_claims_on_a_chance_judge():
    claims = load_spec("dat").claims

    def job(arm, clean, robust, flags=(), judge=50.0):
        return {"arm": arm, "seed": 0, "n_test": 1000,
                "metrics": {"eval_clean": clean, dat.ROBUST: robust, "gen_acc": 10.0, "gen_fd": 1.0},
                "extra": {"robustness": {"n": 500, "flags": list(flags)},
                          "generation": {"judge_top1": judge, "judge_seed": 1000}}}
    ok = SweepResult([job("standard", 60, 5), job("at", 45, 30), job("dat", 44, 29), job("dat_bn", 40, 25)])
    assert dat.guards(ok, claims, chance_pct=1.0) == []
    bad = SweepResult([job("standard", 60, 5), job("at", 45, 30, flags=["sanity check failed (unbounded)"]),
                       job("dat", 44, 29), job("dat_bn", 40, 25, judge=1.0)])
    flagged = dict(dat.guards(bad, claims, chance_pct=1.0))
    assert set(flagged) == {c.key for c in claims}
    assert "unbounded" in flagged["robust_pgd_l2:dat-at"] and "chance" in flagged["gen_acc:dat-at"]
    # AT no harder to attack than standard training: the robustness claims are flagged
    weak = SweepResult([job("standard", 60, 5), job("at", 45, 0), job("dat", 44, 29), job("dat_bn", 40, 25)])
    keys = {k for k, _ in dat.guards(weak, claims, chance_pct=1.0)}
    assert keys == {c.key for c in claims if c.metric == dat.ROBUST}
