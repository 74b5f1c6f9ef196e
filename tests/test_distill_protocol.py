"""The distillation family's shared protocol, registered arms, typed configs and bad-input errors."""
from __future__ import annotations

import pytest
import torch

from repro import models
from repro.data import load
from repro import arms
from repro.families.distillation import protocol
from repro.papers import ParameterError, _with_protocol, all_specs, load_protocol
from repro.train import TrainConfig


def test_protocol_is_merged_and_a_paper_regime_wins():
    proto = load_protocol("distillation")
    params, tiers = _with_protocol("x.toml", "distillation", {"mine": {"default": 1}}, {"cpu": {"mine": 2}})
    assert set(proto["params"]) < set(params) and "mine" in params
    assert tiers["cpu"]["mine"] == 2 and tiers["cpu"]["student"] == proto["tiers"]["cpu"]["student"]
    # A paper keeps its own regime: a new default and tier value win, the meaning stays.
    params, tiers = _with_protocol("x.toml", "distillation", {"epochs": {"default": 3}}, {"cpu": {"epochs": 7}})
    assert params["epochs"]["default"] == 3 and params["epochs"]["help"] == proto["params"]["epochs"]["help"]
    assert tiers["cpu"]["epochs"] == 7
    with pytest.raises(ParameterError, match="has type str"):
        _with_protocol("x.toml", "distillation", {"epochs": {"default": "many"}}, {})
    with pytest.raises(ParameterError, match="only get a new default"):
        _with_protocol("x.toml", "distillation", {"epochs": {"default": 3, "extra": 1}}, {})
    with pytest.raises(ParameterError, match="no protocol"):
        load_protocol("nope")


def test_family_chapters_share_one_protocol_at_every_tier():
    family = [s for s in all_specs() if s.info.get("protocol") == "distillation"]
    shared = load_protocol("distillation")["params"]
    for tier in ("smoke", "cpu", "gpu", "paper"):
        settings = {s.name: {k: s.resolve(tier)[k] for k in shared} for s in family}
        assert len({repr(v) for v in settings.values()}) <= 1, settings


def test_unknown_arm_and_hyperparameters_are_refused():
    with pytest.raises(ParameterError, match="no arm 'kdd'"):
        protocol.arm_config("kdd")
    with pytest.raises(ParameterError, match="no field"):
        protocol.arm_config("kd", tau=4)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="kd_temperature"):
            protocol.arm_config("kd", kd_temperature=bad)
        with pytest.raises(ValueError, match="pld_tau_t"):
            protocol.arm_config("pld", pld_tau_t=bad)
    with pytest.raises(ValueError, match="kappa"):
        protocol.arm_config("bdkd", kappa=0.0)
    with pytest.raises(ValueError, match="pskd_alpha"):
        protocol.arm_config("pskd", pskd_alpha=1.5)
    cfg = protocol.arm_config("kd")
    assert protocol.hyperparameters(cfg) == {"kd_temperature": 4.0, "kd_ce_weight": 0.1, "kd_weight": 0.9}
    assert {"ce", "kd", "nkd", "pld", "dist"} <= set(arms.available("distillation"))


FAMILY_ARMS = {"bdkd", "ce", "dist", "dml", "kd", "lsskd", "nkd", "pld", "pskd", "uskd"}


def test_every_arm_is_registered_and_its_config_builds_from_every_chapter_at_every_tier():
    assert FAMILY_ARMS <= set(arms.available("distillation"))
    family = [s for s in all_specs() if s.family == "distillation"]
    assert {s.slug for s in family} >= {"lsskd", "pld", "dr", "nkd", "bdkd", "kdcompare"}
    for spec in family:
        for tier in ("smoke", "cpu", "gpu", "paper"):
            params = spec.resolve(tier)
            for name in arms.available("distillation"):
                a = arms.get("distillation", name)
                cfg = arms.make_config(a.config, params)
                assert isinstance(cfg, protocol.DistillConfig), name
                assert (cfg.student, cfg.epochs) == (params["student"], params["epochs"])
    # a chapter parameter of a field's name sets it
    assert protocol.arm_config("nkd", {"nkd_temperature": 2.0}).nkd_temperature == 2.0
    assert protocol.arm_config("pld", {"pld_tau_t": 4.0}).pld_tau_t == 4.0


def test_sweep_jobs_refuse_a_config_of_another_arm():
    with pytest.raises(TypeError, match="takes a KDConfig"):
        protocol.jobs(None, None, None, {"kd": ("kd", protocol.arm_config("nkd"))})


def test_mismatched_pair_is_refused():
    t = models.create("cnn3", num_classes=10, width=4)
    s = models.create("cnn3", num_classes=5, width=4)
    with pytest.raises(ValueError, match="same label space"):
        protocol.check_pair(t, s, image_size=8)
    assert protocol.check_pair(t, models.create("cnn3", num_classes=10, width=4), image_size=8) == 10


def _setup(data, teacher=None, seed=0):
    return protocol.StudentSetup(
        student="cnn3", student_kwargs={"width": 4}, num_classes=data.num_classes,
        train=data.loader("train", 8, seed=seed), test=data.loader("test", 16),
        cfg=TrainConfig(epochs=1, lr=0.05, progress=False), teacher=teacher, seed=seed)


def test_fixed_teacher_arms_train_and_need_a_teacher(fake_data):
    data = load(classes=3, per_class=8, test_per_class=4, image_size=8)
    with pytest.raises(ValueError, match="trained teacher"):
        protocol.train("kd", _setup(data))
    teacher = models.create("cnn3", num_classes=3, width=4)
    for name in ("ce", "kd", "nkd", "pld", "dist"):
        res = protocol.train(name, _setup(data, teacher))
        assert res.steps == 3 and torch.isfinite(torch.tensor(res.final["train_loss"]))
    # the teacher is frozen by the arms
    assert not any(p.requires_grad for p in teacher.parameters())


def test_same_seed_gives_the_same_initial_student(fake_data):
    data = load(classes=3, per_class=8, test_per_class=4, image_size=8)
    a, b = _setup(data, seed=3).new_student(), _setup(data, seed=3).new_student()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
