"""The robustness family's protocol, arm and evaluation: the recipe, the errors that must come
before any work, and clean ≥ robust accuracy on a tiny trained model.

The tiny task is the one of test_attacks.py: four classes told apart by mean brightness
(0.2, 0.4, 0.6, 0.8 ± 0.05), which a one-layer CNN learns in a few hundred full-batch steps;
an L∞ attack of ε = 0.2 can move every image across a boundary, one of ε = 0.01 none.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from repro.data import MEAN, STD, Dataset
from repro.data.poison import CudaPoison, poison_indices
from repro.errors import ParameterError
from repro.families.robustness import protocol
from repro.families.robustness.arms.standard import train_standard, training_set
from repro.families.robustness.attacks import AttackSpec
from repro.families.robustness.evaluate import EvalConfig, EvalResult, eval_images, evaluate
from repro.families.robustness.training import AdvTrainConfig
from toys import brightness_uint8


pytestmark = pytest.mark.usefixtures("one_thread")


def normalise(x01: torch.Tensor) -> torch.Tensor:
    return (x01 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def trained(one_thread) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 4))
    x, y = brightness_uint8(128, 1)
    z = normalise(x.float() / 255)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(150):
        loss = F.cross_entropy(net(z), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def tiny_data(train: int = 48, test: int = 24) -> Dataset:
    xtr, ytr = brightness_uint8(train, 1)
    xte, yte = brightness_uint8(test, 2)
    return Dataset(x_train=xtr, y_train=ytr, x_test=xte, y_test=yte, classes=[0, 1, 2, 3],
                   class_names=["a", "b", "c", "d"], checksum="tiny", info={"per_class": None})


PARAMS = {"model": "cnn3", "width": 4, "epochs": 3, "batch_size": 16, "lr": 0.05, "momentum": 0.9,
          "weight_decay": 5e-4, "schedule": "step", "milestones": [0.5, 0.75], "gamma": 0.1, "warmup_epochs": 0.0,
          "grad_clip": 5.0, "at_method": "pgd", "at_eps": 0.03, "at_steps": 2, "at_step_size": 0.0}


# -- the recipe ----------------------------------------------------------------------------------
def test_recipe_is_sgd_with_the_chapters_schedule_and_clip():
    cfg = protocol.robust_config(PARAMS, "base")
    tc = protocol.train_config(cfg)
    assert (tc.optimizer, tc.lr, tc.momentum, tc.weight_decay, tc.schedule, tuple(tc.milestones), tc.gamma,
            tc.grad_clip, tc.epochs) == ("sgd", 0.05, 0.9, 5e-4, "step", (0.5, 0.75), 0.1, 5.0, 3)
    assert protocol.train_config(dataclasses.replace(cfg, grad_clip=0.0)).grad_clip is None
    assert cfg.milestones == (0.5, 0.75) and not cfg.adversarial
    rec = cfg.as_record()
    assert rec["adv"] is None and rec["poison"] is None and rec["title"] == "base"


def test_adv_config_from_the_at_parameters():
    at = protocol.adv_config(PARAMS)
    assert (at.method, at.eps, at.effective_steps(), at.effective_step_size()) == ("pgd", 0.03, 2, 0.03 / 4)
    fgsm = protocol.adv_config({**PARAMS, "at_method": "fgsm_rs"})  # FGSM ignores at_steps: one step
    assert fgsm.effective_steps() == 1 and fgsm.effective_step_size() == pytest.approx(1.25 * 0.03)
    assert protocol.adv_config({**PARAMS, "at_step_size": 0.01}).effective_step_size() == 0.01


@pytest.mark.parametrize("bad, msg", [
    ({"epochs": 0}, "epochs"), ({"lr": 0.0}, "lr"), ({"momentum": 1.5}, "momentum"),
    ({"schedule": "onecycle"}, "unknown schedule"), ({"model": "no_such_net"}, "unknown model"),
    ({"milestones": [0.5, -1.0]}, "milestones"), ({"adv": "pgd"}, "AdvTrainConfig"),
    ({"train_on": "unpoisoned"}, "needs a poison"), ({"train_on": "some"}, "train_on")])
def test_bad_recipe_is_refused(bad, msg):
    with pytest.raises(ParameterError, match=msg):
        protocol.RobustConfig(**{"model": "cnn3", **bad})


@pytest.mark.parametrize("make, msg", [
    (lambda: AdvTrainConfig("pgd", eps=8), "eps"),                       # 8, not 8/255
    (lambda: AdvTrainConfig("pgd", eps=-0.01), "eps"),
    (lambda: EvalConfig(attacks=(AttackSpec("pgd", eps=-0.1),)), "eps"),
    (lambda: EvalConfig(attacks=(AttackSpec("pgd", eps=8.0),)), "eps"),
    (lambda: EvalConfig(attacks=(AttackSpec("cw"),)), "unknown attack"),
    (lambda: EvalConfig(attacks=(AttackSpec("pgd", norm="L1"),)), "unknown norm"),
    (lambda: EvalConfig(attacks=(AttackSpec("square"),)), "white-box"),   # nothing for the sanity checks to test
    (lambda: EvalConfig(attacks=(AttackSpec("pgd"), AttackSpec("pgd"))), "distinct"),
    (lambda: CudaPoison(mix=1.5), "mix"),
])
def test_bad_attack_and_training_settings_fail_when_the_config_is_built(make, msg):
    with pytest.raises(ParameterError, match=msg):
        make()


def test_jobs_fail_before_any_work(monkeypatch):
    """Unknown arm, a bad evaluation, more images than the test set: errors from jobs(), and
    no job ever starts (fit would raise)."""
    import repro.families.robustness.arms.standard as std

    monkeypatch.setattr(std, "fit", lambda *a, **k: pytest.fail("a job started"))
    data = tiny_data()
    cfg = protocol.robust_config(PARAMS)
    with pytest.raises(ParameterError, match="no arm 'pgd_at'"):
        protocol.jobs({"a": ("pgd_at", cfg)}, data)
    with pytest.raises(ParameterError, match="asks for 1000 images"):
        protocol.jobs({"a": ("standard", dataclasses.replace(cfg, eval=EvalConfig((AttackSpec("pgd"),))))}, data)
    with pytest.raises(ParameterError, match="RobustConfig"):
        protocol.jobs({"a": ("standard", {"model": "cnn3"})}, data)
    # a spec mutated after construction is still caught by jobs()
    ev = EvalConfig((AttackSpec("pgd", eps=0.01),), images=8)
    object.__setattr__(ev, "attacks", (AttackSpec("pgd", eps=-1.0),))
    with pytest.raises(ParameterError, match="eps"):
        protocol.jobs({"a": ("standard", dataclasses.replace(cfg, eval=ev))}, data)


# -- the evaluation ------------------------------------------------------------------------------
def test_evaluate_gives_clean_above_robust_and_records_everything(trained):
    x, y = brightness_uint8(32, 2)
    cfg = EvalConfig(attacks=(AttackSpec("pgd", eps=0.01, steps=5, label="small"),
                              AttackSpec("pgd", eps=0.2, steps=5, label="large")),
                     images=24, seed=3, batch_size=12, square_queries=20, sanity_attack="large")
    res = evaluate(trained, x, y, cfg)
    assert isinstance(res, EvalResult) and res.n == 24
    assert res.clean == 100.0                                   # the brightness rule, learned
    assert res.clean >= res.robust["small"] >= res.robust["large"]
    assert res.robust["small"] >= 90.0 and res.robust["large"] == 0.0
    assert res.worst == 0.0 and res.metrics() == {"eval_clean": 100.0, "robust_small": res.robust["small"],
                                                 "robust_large": 0.0, "robust_worst": 0.0}
    assert res.test_var()["eval_clean"] == 0.0 and res.test_var()["robust_small"] >= 0.0
    # the subset: 24 sorted, distinct indices fixed by the seed, and recorded
    again = eval_images(x, y, 24, 3)[2]
    assert res.indices == again == sorted(set(again)) and len(again) == 24
    rec = res.as_record()
    assert rec["attacks"]["large"]["eps"] == 0.2 and rec["attacks"]["large"]["steps"] == 5
    assert rec["attacks"]["small"]["step_size"] == pytest.approx(2.5 * 0.01 / 5)
    assert rec["sanity"]["white_box_spec"]["eps"] == 0.2 and rec["sanity"]["specs"]["black_box"]["steps"] == 20
    assert res.flags == [] and rec["sanity"]["passed"] and not res.upper_bound


def test_evaluate_refuses_a_model_in_train_mode_and_images_outside_0_1(trained):
    x, y = brightness_uint8(16, 2)
    cfg = EvalConfig(attacks=(AttackSpec("pgd", eps=0.01, steps=2),), images=8, sanity=False)
    trained.train()
    try:
        with pytest.raises(ParameterError, match="train mode"):
            evaluate(trained, x, y, cfg)
    finally:
        trained.eval()
    with pytest.raises(ParameterError, match="< 0"):
        evaluate(trained, normalise(x.float() / 255), y, cfg)     # normalised images, not pixels
    with pytest.raises(ParameterError, match="> 1"):
        evaluate(trained, x.float(), y, cfg)                        # [0, 255] floats
    res = evaluate(trained, x.float() / 255, y, cfg)                # [0, 1] floats are fine
    assert res.sanity is None and res.n == 8


def test_a_failed_sanity_check_becomes_a_flag(trained, monkeypatch):
    import repro.families.robustness.evaluate as ev_mod
    from repro.families.robustness.sanity import Check, SanityReport

    def fake(*a, **k):
        return SanityReport(n=8, clean=100.0, white_box=50.0, white_box_spec={}, adaptive=True,
                            checks=[Check("unbounded", False, "PGD at eps 1 leaves 40%")])
    monkeypatch.setattr(ev_mod, "run_sanity_checks", fake)
    x, y = brightness_uint8(16, 2)
    res = evaluate(trained, x, y, EvalConfig((AttackSpec("fgsm", eps=0.01),), images=8))
    assert res.flags == ["sanity check failed (unbounded): PGD at eps 1 leaves 40%"]


# -- the arm ---------------------------------------------------------------------------------------
def test_unpoisoned_training_set_drops_exactly_the_poisoned_images():
    data = tiny_data()
    cfg = protocol.robust_config(PARAMS, poison=CudaPoison(key=4, mix=0.25), train_on="unpoisoned")
    kept = training_set(cfg, data)
    dropped = poison_indices(48, 0.25, 4)
    assert len(dropped) == 12 and len(kept.y_train) == 36
    mask = torch.ones(48, dtype=torch.bool)
    mask[dropped] = False
    assert torch.equal(kept.x_train, data.x_train[mask]) and torch.equal(kept.x_test, data.x_test)
    assert kept.info["poison"]["dropped"] == 12
    full = training_set(dataclasses.replace(cfg, train_on="all"), data)
    assert len(full.y_train) == 48 and full.info["poison"]["poisoned"] == 12
    assert training_set(protocol.robust_config(PARAMS), data) is data


def test_standard_arm_trains_poisoned_and_adversarially_then_evaluates():
    data = tiny_data()
    ev = EvalConfig((AttackSpec("pgd", eps=0.03, steps=2),), images=16, batch_size=16, square_queries=5)
    cfg = protocol.robust_config(PARAMS, "cuda at", adv=protocol.adv_config(PARAMS), poison=CudaPoison(key=1),
                                 eval=ev, epochs=2)
    job = train_standard(cfg, data, seed=0)
    m = job.metrics
    assert set(m) >= {"top1", "train_acc", "grad_evals", "eval_clean", "robust_pgd", "robust_worst"}
    assert m["eval_clean"] >= m["robust_pgd"]
    assert m["grad_evals"] == 2 * 48 * (1 + 2)                    # PGD-2: one training + two attack passes
    assert job.n_test == 24 and job.test_var["robust_pgd"] >= 0.0
    assert job.extra["poison"]["poisoned"] == 48 and job.extra["config"]["adv"]["steps"] == 2
    assert len(job.extra["history"]) == 2 and job.extra["robustness"]["n"] == 16
    assert not job.model.training  # evaluated in eval mode


# -- fine-tuning and shared checkpoints ----------------------------------------------------------
def test_fine_tuning_starts_from_the_init_model_and_counts_both_stages(tmp_path):
    data = tiny_data()
    base = protocol.robust_config(PARAMS, "base", epochs=2)
    ft = protocol.robust_config(PARAMS, "ft", adv=protocol.adv_config(PARAMS), init=base, epochs=1,
                                schedule="linear", warmup_epochs=0.5)
    job = train_standard(ft, data, seed=0, checkpoint_dir=tmp_path / "job")
    # base: 2 epochs × 48 images × 1 pass; fine-tuning: 1 epoch × 48 × (1 + 2 PGD steps)
    assert job.metrics["grad_evals"] == 2 * 48 + 48 * 3 and job.metrics["grad_evals_finetune"] == 48 * 3
    assert len(job.extra["init_history"]) == 1 and len(job.extra["init_history"][0]) == 2
    assert job.train_images == 2 * 48 + 48
    # the init model is checkpointed in a sub-folder named by its recipe: a second fine-tuning from the
    # same base finds it (the base's weights are the same as training it alone, seed for seed)
    sub = [p for p in (tmp_path / "job").iterdir() if p.is_dir() and p.name.startswith("standard-")]
    assert len(sub) == 1
    alone = train_standard(base, data, seed=0)
    from repro.families.robustness.arms.standard import train_model
    again, fits, _ = train_model(base, data, 0, protocol.checkpoint_folders(None, "", tmp_path / "job", "standard"),
                                 own=False)
    for a, b in zip(alone.model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_recipe_ignores_title_and_evaluation_but_not_the_init():
    base = protocol.robust_config(PARAMS, "a")
    ev = EvalConfig((AttackSpec("pgd", eps=0.03, steps=2),), images=16)
    assert protocol.robust_config(PARAMS, "b", eval=ev).recipe() == base.recipe()
    ft1 = protocol.robust_config(PARAMS, "ft", init=base)
    ft2 = protocol.robust_config(PARAMS, "ft", init=protocol.robust_config(PARAMS, "a", epochs=9))
    assert ft1.recipe() != ft2.recipe() and ft1.recipe() != base.recipe()
    with pytest.raises(ParameterError, match="init"):
        protocol.robust_config(PARAMS, "ft", init=protocol.robust_config(PARAMS, "a", model="resnet18"))


def test_frozen_bn_keeps_running_statistics_while_weights_train():
    from repro.train import TrainConfig, fit
    data = tiny_data()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 4))
    bn = net[1]
    mean0, var0, w0 = bn.running_mean.clone(), bn.running_var.clone(), net[0].weight.clone()
    fit(net, data.loader("train", 16, "cpu", seed=0), None,
        TrainConfig(epochs=2, lr=0.1, frozen_bn=True, bf16=False, channels_last=False, progress=False))
    assert torch.equal(bn.running_mean, mean0) and torch.equal(bn.running_var, var0)
    assert not torch.equal(net[0].weight, w0)


def test_tracking_robustness_per_epoch_leaves_the_weights_alone():
    data = tiny_data()
    ev = EvalConfig((AttackSpec("pgd", eps=0.03, steps=2),), images=16, batch_size=16, square_queries=5, sanity=False)
    adv = protocol.adv_config(PARAMS)
    plain = train_standard(protocol.robust_config(PARAMS, "at", adv=adv, eval=ev, epochs=2), data, seed=0)
    tracked = train_standard(protocol.robust_config(PARAMS, "at", adv=adv, eval=ev, epochs=2, track_images=8),
                             data, seed=0)
    for a, b in zip(plain.model.state_dict().values(), tracked.model.state_dict().values()):
        assert torch.equal(a, b)
    rows = tracked.extra["history"]
    assert all(0 <= r["track_robust"] <= r["track_clean"] <= 100 for r in rows) and len(rows) == 2
    assert all(r["track_clean"] * 8 / 100 == round(r["track_clean"] * 8 / 100) for r in rows)  # 8 images
    with pytest.raises(ParameterError, match="track_images"):
        protocol.robust_config(PARAMS, "x", track_images=4)


def test_the_worst_case_is_per_image_over_the_attacks_at_the_main_eps(monkeypatch):
    """PGD breaks images 0–1, APGD-CE image 2: the worst case keeps only the images that survive
    both (3 and 4: 25%), not the lower of the two rates (37.5%); PGD at a curve radius of
    16/255, which breaks everything, does not enter it."""
    from repro.families.robustness import evaluate as evaluate_mod
    t = lambda *bits: torch.tensor(bits, dtype=torch.bool)  # noqa: E731
    masks = {"clean": t(1, 1, 1, 1, 1, 0, 0, 0), "pgd": t(0, 0, 1, 1, 1, 0, 0, 0),
             "apgd_ce": t(1, 1, 0, 1, 1, 0, 0, 0), "pgd_16": t(0, 0, 0, 0, 0, 0, 0, 0)}
    monkeypatch.setattr(evaluate_mod, "robust_masks", lambda *a, **k: dict(masks))
    cfg = EvalConfig(attacks=(AttackSpec("pgd"), AttackSpec("apgd_ce"), AttackSpec("pgd", eps=16 / 255, label="pgd_16")),
                     images=8, sanity=False)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 4)).eval()
    x, y = brightness_uint8(8, 0, size=4)
    res = evaluate(net, x, y, cfg)
    assert res.worst_of == ["pgd", "apgd_ce"]
    m = res.metrics()
    assert m["robust_pgd"] == 37.5 and m["robust_apgd_ce"] == 50.0 and m["robust_pgd_16"] == 0.0
    assert m["robust_worst"] == 25.0 and res.as_record()["worst_of"] == ["pgd", "apgd_ce"]
    # a result written by hand (no masks) falls back to the lowest rate
    assert EvalResult(n=8, indices=[], clean=50.0, robust={"a": 30.0, "b": 20.0}, attacks={}).worst == 20.0
