"""The training family: every arm is registered, and every arm's config builds from each
chapter's resolved parameters at every tier (a ParameterError here would stop a chapter
before training)."""
from __future__ import annotations

import pytest

import repro.arms
from repro.families.training import protocol
from repro.papers import load_spec

CHAPTERS = {"msdropout": ["msdropout"], "hardbatch": ["hardbatch"], "ghostbn": ["ghostbn"]}
TIERS = ["smoke", "cpu", "gpu", "paper"]


def test_every_arm_is_registered():
    names = repro.arms.available("training")
    assert sorted(a for arms in CHAPTERS.values() for a in arms) == names
    for name in names:
        arm = repro.arms.get("training", name)
        assert arm.family == "training" and arm.config is not None and arm.doc


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("slug", sorted(CHAPTERS))
def test_configs_build_from_the_spec_at_every_tier(slug, tier):
    params = load_spec(slug).resolve(tier)
    for name in CHAPTERS[slug]:
        cfg = repro.arms.make_config(repro.arms.get("training", name).config, params)
        assert cfg.epochs == params["epochs"]
    repro.arms.make_config(protocol.DataConfig, params)


@pytest.mark.parametrize("tier", TIERS)
def test_msdropout_arms_at_every_tier(tier):
    from repro.families.training.arms.msdropout import arm_configs

    params = load_spec("msdropout").resolve(tier)
    arms = arm_configs(params)
    assert "M1" in arms and "Mmax" in arms and all(label.isidentifier() for label in arms)
    assert arms["Mmax"][1].m == max(params["samples"])
    jobs = protocol.jobs(arms, data=None)
    assert list(jobs) == list(arms)


@pytest.mark.parametrize("tier", TIERS)
def test_hardbatch_arms_at_every_tier(tier):
    from repro.families.training.arms.hardbatch import arm_configs

    params = load_spec("hardbatch").resolve(tier)
    arms = arm_configs(params)
    assert all(label.isidentifier() for label in arms)
    for c in load_spec("hardbatch").claims:  # every claim's arms are trained
        assert c.arm is None or (c.arm in arms and c.baseline in arms)


@pytest.mark.parametrize("tier", TIERS)
def test_ghostbn_arms_at_every_tier(tier):
    from repro.families.training.arms.ghostbn import arm_configs

    params = load_spec("ghostbn").resolve(tier)
    arms = arm_configs(params)
    assert all(label.isidentifier() for label in arms)
    for c in load_spec("ghostbn").claims:  # every claim's arms are trained
        assert c.arm is None or (c.arm in arms and (c.baseline is None or c.baseline in arms))
