"""Arms, typed configs, the sweep and claims that name their parts, on hand-made numbers."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from repro import arms
from repro.errors import ParameterError
from repro.papers import COMMON_PARAMS, Claim, PaperSpec
from repro.sweep import Job, sweep
from repro.tables import markdown_table


@dataclass
class ToyConfig:
    epochs: int = 3
    lr: float = 0.1
    milestones: tuple[float, ...] = (0.5, 0.75)
    mode: str = "paper"


def test_make_config_takes_fields_from_params_then_overrides():
    cfg = arms.make_config(ToyConfig, {"epochs": 7, "lr": 1, "unrelated": "x", "milestones": [0.3]}, mode="pycil")
    assert cfg == ToyConfig(epochs=7, lr=1.0, milestones=(0.3,), mode="pycil")
    assert isinstance(cfg.lr, float) and isinstance(cfg.milestones, tuple)
    assert arms.make_config(ToyConfig) == ToyConfig()


@pytest.mark.parametrize("kw, message", [({"epoch": 3}, "no field.*epoch"), ({"epochs": 2.5}, "epochs=2.5 has type float"),
                                         ({"milestones": [0.5, "x"]}, "element 1"), ({"mode": 1}, "mode=1")])
def test_make_config_refuses_unknown_and_ill_typed_fields(kw, message):
    with pytest.raises(ParameterError, match=message):
        arms.make_config(ToyConfig, {}, **kw)


def test_register_and_look_up_an_arm():
    @arms.arm("toy_arm", family="_test_family", config=ToyConfig)
    def toy(cfg: ToyConfig) -> float:
        """A toy arm."""
        return cfg.lr

    a = arms._REGISTRY["_test_family"]["toy_arm"]
    assert a.impl is toy and a.config is ToyConfig and a.doc == "A toy arm."
    with pytest.raises(ValueError, match="identifier"):
        arms.arm("not an id", family="_test_family")
    with pytest.raises(ParameterError, match="no family"):
        arms.available("no_such_family")


class _FakeRun:
    """What the sweep needs of a run: seeds, a spec name, checkpoint folders and rows."""

    def __init__(self, tmp_path):
        self.seeds = [0, 1, 2]
        self.spec = type("S", (), {"name": "99-toy"})()
        self.rows = []
        self.tmp = tmp_path

    def checkpoint_dir(self, *key):
        return self.tmp / "-".join(map(str, key))

    def add_row(self, arm, seed, metric, value, n_test=0, test_var=None):
        row = {"arm": arm, "seed": seed, "metric": metric, "value": value, "n_test": n_test}
        if test_var is not None:
            row["test_var"] = test_var
        self.rows.append(row)


def test_sweep_seeds_each_job_and_writes_tidy_rows(tmp_path):
    import torch

    run = _FakeRun(tmp_path)
    seen = []

    def job(bonus):
        def fn(seed, ckpt):
            seen.append((seed, ckpt.name, torch.rand(()).item()))
            return Job({"top1": 60.0 + seed + bonus}, n_test=1000, train_s=2.0, train_images=500)
        return fn

    res = sweep(run, {"base": job(0.0), "method": job(1.5)}, progress=False)
    assert [(j["arm"], j["seed"]) for j in res.jobs] == [("base", 0), ("method", 0), ("base", 1), ("method", 1),
                                                          ("base", 2), ("method", 2)]
    assert seen[0][1] == "base-0" and seen[0][2] == seen[1][2]          # both arms start from seed 0's RNG
    assert res.paired("top1", "method", "base") == {0: 1.5, 1: 1.5, 2: 1.5}
    assert len(run.rows) == 6 and run.rows[1] == {"arm": "method", "seed": 0, "metric": "top1", "value": 61.5,
                                                   "n_test": 1000}
    with pytest.raises(ValueError, match="identifier"):
        sweep(run, {"a b": job(0)}, progress=False)


def test_claims_with_parts_are_paired_by_the_run(monkeypatch, tmp_path):
    """A claim naming metric, arm and baseline is judged on arm − baseline per seed."""
    from repro import run as run_mod

    claim = Claim(id="gain", text="method beats base", metric="top1", arm="method", baseline="base")
    spec = PaperSpec(number=99, slug="toy", title="Toy", family="training", info={},
                     params={**COMMON_PARAMS, "seeds": {"default": [0, 1, 2], "help": ""}}, tiers={}, claims=[claim])
    monkeypatch.setattr(run_mod, "load_spec", lambda slug: spec)
    monkeypatch.setenv("REPRO_RUNS", str(tmp_path))
    for k in ("REPRO_TIER", "REPRO_DRY_RUN", "REPRO_RUN_DIR"):
        monkeypatch.delenv(k, raising=False)
    ns = {"tier": "cpu", "device": "cpu", "seeds": [0, 1, 2]}
    run = run_mod.start("toy", ns)
    for seed, (b, m) in enumerate([(60.0, 61.0), (62.0, 64.0), (61.0, 62.5)]):
        run.add_row("base", seed, "top1", b, 1000)
        run.add_row("method", seed, "top1", m, 1000)
    rec = run.finish()
    c = rec["claims"][0]
    assert c["key"] == "top1:method-base" and c["ours"]["mean"] == pytest.approx(1.5)
    assert rec["metrics"]["top1:method-base"]["per_seed"] == {"0": 1.0, "1": 2.0, "2": 1.5}
    assert len(rec["rows"]) == 6
    from repro.records import audit
    assert audit(rec, tmp_path).integrity == []
    rec["rows"][1]["value"] = 70.0                            # a row edited by hand
    assert "do not follow from the run's rows" in " ".join(audit(rec, tmp_path).integrity)


def test_markdown_table_escapes_and_checks_widths():
    assert markdown_table(["a", "b|c"], [[1, None], ["x\ny", "p|q"]], align="lr") == (
        "| a | b\\|c |\n| --- | ---: |\n| 1 | — |\n| x y | p\\|q |")
    with pytest.raises(ValueError, match="row 0 has 1 cells"):
        markdown_table(["a", "b"], [[1]])


def test_table_cells_write_plain_superscripts_as_maths():
    assert markdown_table(["H* picked on D^HT"], [["usual on D^E's test; $D^{HT}$ stays"]]) == (
        "| H* picked on $D^{HT}$ |\n| --- |\n| usual on $D^{E}$'s test; $D^{HT}$ stays |")
