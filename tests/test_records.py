"""Parameters, tiers, runs, their records and the verdict rule."""
from __future__ import annotations

import importlib
import json
import stat

import pytest

from repro import io, run as run_mod
from repro.errors import RecordError
from repro.papers import COMMON_PARAMS, Claim, PaperSpec, ParameterError, all_specs, load_spec


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
                                         ({"seeds": [0, "a"]}, r"element 1 \('a'\) has type str; expected int"),
                                         ({"seeds": []}, "seeds is empty"),
                                         ({"seeds": [1, 1]}, "seeds repeat")])
def test_bad_parameters_name_the_valid_ones(over, match):
    with pytest.raises(ParameterError, match=match):
        _spec().resolve("cpu", over)


def test_unknown_tier():
    with pytest.raises(ValueError, match="smoke, cpu, gpu, paper"):
        _spec().resolve("tiny")


def test_start_validates_injected_parameters(monkeypatch, tmp_path):
    monkeypatch.setattr(run_mod, "load_spec", lambda slug: _spec())
    monkeypatch.setenv("REPRO_RUNS", str(tmp_path))
    monkeypatch.delenv("REPRO_TIER", raising=False)
    ns = {"tier": "cpu", "device": "auto", "epochs": 100, "lr": 0.1, "seeds": [0, 1, 2], "arch": "resnet20",
          "In": ["", "# Parameters\ntier = 'cpu'\nbatchsize = 4\n"], "batchsize": 4}
    with pytest.raises(ParameterError, match="unknown parameter.*batchsize"):
        run_mod.start("toy", ns)
    ns["In"] = ["", "# Parameters\ntier = 'cpu'\nlr = 0.3\n"]
    ns["lr"] = 0.3
    run = run_mod.start("toy", ns)
    assert ns["epochs"] == 5 and ns["lr"] == 0.3 and run.tier == "cpu"
    ns2 = dict(ns, In=[], tier="cpu", lr=0.1, epochs=7)  # edited by hand in the cell
    run_mod.start("toy", ns2)
    assert ns2["epochs"] == 7 and ns2["lr"] == 0.05
    with pytest.raises(ParameterError, match="epochs='x' is not a Python literal"):
        run_mod.start("toy", dict(ns, In=["# Parameters\nepochs = 'x'\n"], epochs="x"))
    with pytest.raises(ParameterError, match="has type float"):
        run_mod.start("toy", dict(ns, In=["# Parameters\nepochs = 2.5\n"], epochs=2.5))


def test_papermill_text_values_are_read_as_literals(monkeypatch, tmp_path):
    """papermill's ``-p seeds "[0, 1, 2]"`` injects the text "[0, 1, 2]"."""
    monkeypatch.setattr(run_mod, "load_spec", lambda slug: _spec())
    monkeypatch.setenv("REPRO_RUNS", str(tmp_path))
    monkeypatch.delenv("REPRO_TIER", raising=False)
    ns = {"tier": "cpu", "device": "auto", "epochs": "7", "lr": "0.5", "seeds": "[0, 1]", "arch": "resnet20",
          "In": ["# Parameters\ntier = 'cpu'\nepochs = '7'\nlr = '0.5'\nseeds = '[0, 1]'\n"]}
    run = run_mod.start("toy", ns)
    assert (ns["epochs"], ns["lr"], ns["seeds"]) == (7, 0.5, [0, 1]) and run.seeds == [0, 1]
    ns.update(seeds="[0, 'x']", In=["# Parameters\nseeds = \"[0, 'x']\"\n"])
    with pytest.raises(ParameterError, match="element 1"):
        run_mod.start("toy", ns)
    ns.update(seeds="0, 1, oops", In=["# Parameters\nseeds = '0, 1, oops'\n"])
    with pytest.raises(ParameterError, match="not a Python literal"):
        run_mod.start("toy", ns)


def _toy_run(monkeypatch, tmp_path, claims, dry=False):
    monkeypatch.setattr(run_mod, "load_spec", lambda slug: _spec(claims))
    monkeypatch.setenv("REPRO_RUNS", str(tmp_path))
    monkeypatch.delenv("REPRO_RUN_DIR", raising=False)
    monkeypatch.delenv("REPRO_TIER", raising=False)
    if dry:
        monkeypatch.setenv("REPRO_DRY_RUN", "1")
    else:
        monkeypatch.delenv("REPRO_DRY_RUN", raising=False)
    ns = {k: v["default"] for k, v in _spec().params.items()}
    ns["tier"] = "cpu"
    return run_mod.start("toy", ns)


def test_record_is_written_with_verdicts(monkeypatch, tmp_path):
    c = Claim(id="gain", text="M>1 helps", metric="gain", kind="effect", direction="higher")
    run = _toy_run(monkeypatch, tmp_path, [c])
    run.log(0, gain=1.0)
    run.log(1, gain=3.0)
    rec = run.finish()
    assert run.folder.parent == tmp_path and run.run_id in run.folder.name
    on_disk = json.loads((run.folder / "99-toy.cpu.json").read_text())
    assert stat.S_IMODE((run.folder / "99-toy.cpu.json").stat().st_mode) == 0o644
    assert on_disk["run_id"] == run.run_id and on_disk["schema"] == 3
    assert on_disk["metrics"]["gain"]["mean"] == 2.0 and on_disk["metrics"]["gain"]["n"] == 2
    assert rec["claims"][0]["verdict"] == "inconclusive"  # 2 seeds never judge
    assert "2 seeds" in rec["claims"][0]["reason"]
    assert {"python", "torch", "git_commit", "device_name"} <= set(rec["environment"])
    assert "wall_s" in rec["cost"] and rec["status"] == "complete"
    assert "| M>1 helps |" in run.claims_table()
    assert not list(run.folder.glob(".*tmp"))  # atomic: no temporary left behind


def test_a_claim_whose_metric_was_not_logged_fails_finish(monkeypatch, tmp_path):
    c = Claim(id="gain", text="M>1 helps", metric="gain", kind="effect", direction="higher")
    run = _toy_run(monkeypatch, tmp_path, [c])
    run.log(0, other=1.0)
    with pytest.raises(RecordError, match="no value for claim metric.*gain"):
        run.finish()
    assert not run.record_path.exists()


def test_dry_run_records_carry_no_verdict(monkeypatch, tmp_path):
    c = Claim(id="gain", text="M>1 helps", metric="gain", kind="effect", direction="higher")
    run = _toy_run(monkeypatch, tmp_path, [c], dry=True)
    run.log(0, gain=1.0)
    rec = run.finish()
    assert rec["status"] == "dry-run" and rec["verdict"] is None and rec["claims"][0]["verdict"] is None


def test_finish_records_the_evidence_and_judges_with_the_rule(monkeypatch, tmp_path):
    """Rows of two arms on 1000 test images: the claim's interval counts the binomial
    test-set error, and the record keeps it so the audit can re-derive the verdict."""
    c = Claim(id="gain", text="a beats b", metric="top1", arm="a", baseline="b")
    run = _toy_run(monkeypatch, tmp_path, [c])
    for seed, (va, vb) in enumerate([(60, 50), (62, 52), (61, 51)]):
        run.add_row("a", seed, "top1", va, 1000)
        run.add_row("b", seed, "top1", vb, 1000)
    rec = run.finish()
    cl = rec["claims"][0]
    assert cl["evidence"]["test_var"] == pytest.approx(4.876667, abs=1e-6)
    # zero spread over seeds, yet the interval has the (known) test-set width: 10 ± 1.96·√4.8767
    assert (cl["ours"]["ci_low"], cl["ours"]["ci_high"]) == pytest.approx((10 - 4.32823, 10 + 4.32823), abs=1e-3)
    # (z(0.975) + z(0.80)) · √4.876667 = (1.959964 + 0.841621) · 2.208318
    assert cl["verdict"] == "reproduced" and cl["mde"] == pytest.approx(6.18681, abs=1e-3)
    assert cl["comparable"] is False and cl["difference"] is None


def test_run_flags_make_the_claims_on_that_arm_inconclusive(monkeypatch, tmp_path):
    c = Claim(id="gain", text="a beats b", metric="top1", arm="a", baseline="b")
    run = _toy_run(monkeypatch, tmp_path, [c])
    for seed in range(3):
        run.add_row("a", seed, "top1", 60 + seed, 1000)
        run.add_row("b", seed, "top1", 50, 1000)
    run.flag("a and b pick the same grid corner by construction", arm="b")
    cl = run.finish()["claims"][0]
    assert cl["verdict"] == "inconclusive" and "same grid corner" in cl["reason"]


def test_every_paper_spec_loads_and_its_tiers_resolve():
    specs = all_specs()
    for s in specs:
        for t in ("smoke", "cpu", "gpu", "paper"):
            s.resolve(t)
        assert s.claims, f"{s.name} has no claims"
        assert load_spec(s.name) is s
    with pytest.raises(ParameterError, match="no paper"):
        load_spec("nosuchpaper")


def test_every_spec_names_modules_that_import():
    for s in all_specs():
        assert s.modules, f"{s.name}: [paper] modules is empty"
        for m in s.modules:
            importlib.import_module(m)


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "r.json"
    io.write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        io.write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 and not list(tmp_path.glob(".*"))
