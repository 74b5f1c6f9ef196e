"""Chapter 43 (clcompare): its spec, its plan of labelled arms against the family's registry,
its claims against the plan, the configs of every tier, and a tiny sweep whose record has a
value for every claim."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from repro import arms
from repro.families.incremental import compare, protocol
from repro.families.incremental.learners import IncrementalConfig, Learner
from repro.papers import load_spec
from repro.run import Run
from repro.tiers import TIERS

SPEC = load_spec("clcompare")


def _plan(params):
    return compare.plan(params["learners"], napa_lr=params["napa_lr"], napa_weight_decay=params["napa_weight_decay"],
                        gcab_lr=params["gcab_lr"], gcab_weight_decay=params["gcab_weight_decay"])


def test_spec_is_the_incremental_synthesis_chapter():
    assert (SPEC.number, SPEC.name, SPEC.family) == (43, "43-clcompare", "incremental")
    assert SPEC.synthesis and SPEC.info["protocol"] == "incremental"
    assert SPEC.claims and len({c.id for c in SPEC.claims}) == len(SPEC.claims)


def test_every_learner_is_a_registered_arm():
    arms.load_family("incremental")
    available = set(arms.available("incremental"))
    for label, (arm, group, _, _) in compare.LEARNERS.items():
        assert arm in available, label
        assert group in compare.GROUPS
    assert set(SPEC.defaults["learners"]) == set(compare.LEARNERS)


def test_oca_is_left_out_because_it_is_no_incremental_learner():
    arms.load_family("incremental")
    for name in ("independent", "bct", "oca", "oca_no_ortho"):
        a = arms.get("incremental", name)
        assert not (isinstance(a.impl, type) and issubclass(a.impl, Learner))
        assert not issubclass(a.config, IncrementalConfig)
    assert "oca" in compare.EXCLUDED and not set(compare.LEARNERS) & {"independent", "bct", "oca"}


@pytest.mark.parametrize("tier", TIERS)
def test_every_claim_names_learners_of_the_plan_and_every_config_builds(tier):
    params = SPEC.resolve(tier)
    plan = _plan(params)
    for c in SPEC.claims:
        assert c.arm in plan and c.baseline in plan, c.id
    compare.check_claims(SPEC.claims, list(plan))
    cfgs = protocol.configs(SimpleNamespace(params=params), plan)  # raises on any bad value
    # one recipe: every trained learner has the shared epochs and schedule, the CNNs one network
    for label, (a, cfg) in cfgs.items():
        group = compare.LEARNERS[label][1]
        if label != "nmc":
            assert (cfg.epochs, cfg.epochs_first, cfg.schedule, cfg.batch_size) == (
                params["epochs"], params["epochs_first"], params["schedule"], params["batch_size"]), label
        if group in ("sgd", "adamw") or label == "replay_pre":
            assert (cfg.arch, cfg.arch_width) == (params["arch"], params["arch_width"]), label
        if group in ("adamw", "vit"):
            assert cfg.memory == 0 and cfg.optimizer == "adamw", label
    assert cfgs["wa"][1].kd_mode == params["kd_mode"] and cfgs["napavq"][1].lr == params["napa_lr"]
    assert cfgs["replay"][1].lr == params["lr"] and cfgs["gcab"][1].lr == params["gcab_lr"]


def test_a_claim_without_its_learners_is_refused_before_training():
    with pytest.raises(ValueError, match="need learners"):
        compare.check_claims(SPEC.claims, ["finetune", "replay"])
    with pytest.raises(ValueError, match="distinct labels"):
        compare.plan(["replay", "icarl"], napa_lr=1e-3, napa_weight_decay=0.0, gcab_lr=1e-3, gcab_weight_decay=0.0)


def test_a_tiny_smoke_sweep_gives_every_claim_a_value(fake_data, tmp_path, monkeypatch):
    """The chapter's own path (stream with NMC's pretraining classes set aside, the claims'
    learners in one sweep, figures, the record) on the fake set with one seed."""
    monkeypatch.setenv("REPRO_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("REPRO_CHECKPOINTS", str(tmp_path / "ckpt"))
    monkeypatch.setenv("REPRO_ARTIFACTS", str(tmp_path / "artifacts"))
    claimed = [x for x in compare.LEARNERS if any(x in (c.arm, c.baseline) for c in SPEC.claims)]
    params = SPEC.resolve("smoke", {"seeds": [0], "per_class": 8, "test_per_class": 4, "image_size": 8,
                                    "pretrain_per_class": 8, "learners": claimed})
    run = Run(SPEC, params, torch.device("cpu"))
    plan = _plan(params)
    stream, pre = compare.stream(run, params["learners"])
    assert stream.num_tasks == 3 and len(pre) == params["pretrain_classes"]
    assert not set(pre) & set(stream.order)
    bbs = compare.backbones(run, stream, pre, params["learners"])
    res = compare.sweep(run, stream, plan, bbs, progress=False)
    assert [j["arm"] for j in res.jobs] == list(plan)
    assert all(len(j["extra"]["A"]) == stream.num_tasks for j in res.jobs)
    for fig_fn in (lambda: compare.plot_curves(res, stream, "s", list(plan)),
                   lambda: compare.plot_aia(res, "s", list(plan)),
                   lambda: compare.plot_cost(res, "s", list(plan), compare.pretrain_seconds(run.notes["backbones"]))):
        fig, data = fig_fn()
        assert data
    assert "`napavq`" in compare.recipe_markdown(protocol.configs(run, plan))
    record = run.finish()
    assert {c["id"] for c in record["claims"]} == {c.id for c in SPEC.claims}
    assert all(c["ours"] is not None for c in record["claims"])
