"""Parameters, tiers, run records and the verdict rule."""
from __future__ import annotations

import json

import pytest

from repro import records
from repro.papers import COMMON_PARAMS, Claim, PaperSpec, ParameterError, all_specs, load_spec
from repro.verdicts import judge


def _spec(claims=()):
    return PaperSpec(
        number=99, slug="toy", title="Toy", family="training", info={},
        params={**COMMON_PARAMS, "epochs": {"default": 100, "help": "epochs"},
                "lr": {"default": 0.1, "help": "lr"}, "seeds": {"default": [0, 1, 2], "help": "seeds"},
                "arch": {"default": "resnet20", "help": "model"}},
        tiers={"smoke": {"epochs": 1, "seeds": [0]}, "cpu": {"epochs": 5, "lr": 0.05}},
        claims=list(claims))


def test_resolve_applies_tier_then_explicit():
    s = _spec()
    assert s.resolve("paper")["epochs"] == 100
    p = s.resolve("cpu", {"lr": 0.2})
    assert p["epochs"] == 5 and p["lr"] == 0.2 and p["tier"] == "cpu"
    assert s.resolve("cpu", {"lr": 1})["lr"] == 1.0  # an int may stand for a float


@pytest.mark.parametrize("over, match", [({"epochz": 3}, "unknown parameter.*epochz"),
                                         ({"epochs": "3"}, "epochs='3' has type str"),
                                         ({"epochs": 2.5}, "expected int"),
                                         ({"seeds": [0, "a"]}, "seeds")])
def test_bad_parameters_name_the_valid_ones(over, match):
    with pytest.raises(ParameterError, match=match):
        _spec().resolve("cpu", over)


def test_unknown_tier():
    with pytest.raises(ValueError, match="smoke, cpu, gpu, paper"):
        _spec().resolve("tiny")


def test_start_validates_injected_parameters(monkeypatch, tmp_path):
    monkeypatch.setattr(records, "load_spec", lambda slug: _spec())
    monkeypatch.setenv("REPRO_RESULTS", str(tmp_path))
    monkeypatch.delenv("REPRO_TIER", raising=False)
    ns = {"tier": "cpu", "device": "auto", "epochs": 100, "lr": 0.1, "seeds": [0, 1, 2], "arch": "resnet20",
          "In": ["", "# Parameters\ntier = 'cpu'\nbatchsize = 4\n"], "batchsize": 4}
    with pytest.raises(ParameterError, match="unknown parameter.*batchsize"):
        records.start("toy", ns)
    ns["In"] = ["", "# Parameters\ntier = 'cpu'\nlr = 0.3\n"]
    ns["lr"] = 0.3
    run = records.start("toy", ns)
    assert ns["epochs"] == 5 and ns["lr"] == 0.3 and run.tier == "cpu"
    ns2 = dict(ns, In=[], tier="cpu", lr=0.1, epochs=7)  # edited by hand in the cell
    records.start("toy", ns2)
    assert ns2["epochs"] == 7 and ns2["lr"] == 0.05
    with pytest.raises(ParameterError, match="has type str"):
        records.start("toy", dict(ns, In=["# Parameters\nepochs = 'x'\n"], epochs="x"))


def test_record_is_written_with_verdicts(monkeypatch, tmp_path):
    c = Claim(id="gain", text="M>1 helps", metric="gain", kind="effect", direction="higher")
    monkeypatch.setattr(records, "load_spec", lambda slug: _spec([c]))
    monkeypatch.setenv("REPRO_RESULTS", str(tmp_path))
    ns = {k: v["default"] for k, v in _spec().params.items()}
    ns["tier"] = "cpu"
    run = records.start("toy", ns)
    run.log(0, gain=1.0)
    run.log(1, gain=3.0)
    rec = run.finish()
    on_disk = json.loads((tmp_path / "99-toy.cpu.json").read_text())
    assert on_disk["metrics"]["gain"]["mean"] == 2.0 and on_disk["metrics"]["gain"]["n"] == 2
    assert rec["claims"][0]["verdict"] == "partly"  # t(0.975, 1) = 12.7: the CI spans 0
    assert {"python", "torch", "git_commit", "device_name"} <= set(rec["environment"])
    assert "wall_s" in rec["cost"] and rec["status"] == "complete"
    assert "| M>1 helps |" in run.claims_table()
    assert not list(tmp_path.glob(".*tmp"))  # atomic: no temporary left behind


C_UP = Claim(id="c", text="", metric="m", kind="effect", direction="higher", paper_value=2.0, tolerance=1.0)
C_ABS = Claim(id="a", text="", metric="m", kind="absolute", paper_value=57.5, tolerance=1.0)


def _ours(mean, lo, hi, n=3):
    return {"mean": mean, "ci_low": lo, "ci_high": hi, "n": n}


@pytest.mark.parametrize("claim, ours, tier, verdict", [
    (C_UP, _ours(1.0, 0.2, 1.8), "cpu", "reproduced"),          # CI above 0; size not judged below paper tier
    (C_UP, _ours(1.0, -0.5, 2.5), "cpu", "partly"),             # right side, CI spans 0
    (C_UP, _ours(-0.3, -1.0, 0.4), "cpu", "not reproduced"),    # wrong side
    (C_UP, _ours(1.0, 0.2, 1.8), "paper", "reproduced"),        # |1 − 2| ≤ 1
    (C_UP, _ours(5.0, 4.0, 6.0), "paper", "partly"),            # right side, size off
    (C_UP, _ours(1.0, 0.2, 1.8), "smoke", "budget-limited"),
    (C_ABS, _ours(57.0, 56, 58), "cpu", "budget-limited"),
    (C_ABS, _ours(57.0, 56, 58), "paper", "reproduced"),
    (C_ABS, _ours(55.8, 55, 56), "paper", "partly"),
    (C_ABS, _ours(27.3, 27, 28), "paper", "not reproduced"),
    (C_UP, None, "cpu", "not reproduced"),
])
def test_verdict_rule(claim, ours, tier, verdict):
    assert judge(claim, ours, tier)[0] == verdict


def test_lower_is_better_claims():
    c = Claim(id="c", text="", metric="m", direction="lower")
    assert judge(c, _ours(-1.0, -1.5, -0.5), "cpu")[0] == "reproduced"
    assert judge(c, _ours(1.0, 0.5, 1.5), "cpu")[0] == "not reproduced"


def test_every_paper_spec_loads_and_its_tiers_resolve():
    specs = all_specs()
    for s in specs:
        for t in ("smoke", "cpu", "gpu", "paper"):
            s.resolve(t)
        assert s.claims, f"{s.name} has no claims"
        assert load_spec(s.name) is s
    with pytest.raises(KeyError, match="no paper"):
        load_spec("nosuchpaper")


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "r.json"
    records.write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        records.write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
