"""Every chapter notebook: its parameters cell matches its spec, it runs at the smoke tier,
and an unknown parameter fails the run."""
from __future__ import annotations

import ast
import json
import os
import time
from pathlib import Path

import pytest

from repro.papers import all_specs

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]-*.ipynb"))
SPECS = {s.name: s for s in all_specs()}


def _parameters_cell(path: Path) -> str:
    nb = json.loads(path.read_text())
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is cells[0], f"{path.name}: the first code cell must be tagged 'parameters'"
    return "".join(tagged[0]["source"])


def test_every_spec_has_a_notebook_and_back():
    assert {p.stem for p in NOTEBOOKS} == set(SPECS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_matches_the_spec(path):
    spec = SPECS[path.stem]
    tree = ast.parse(_parameters_cell(path))
    values = {}
    for node in tree.body:
        assert isinstance(node, ast.Assign), f"{path.name}: only assignments in the parameters cell"
        values[node.targets[0].id] = ast.literal_eval(node.value)  # literals only
    assert values == spec.defaults, f"{path.name}: parameters cell differs from repro/papers/{spec.slug}.toml"


def test_parameters_source_is_what_the_spec_says():
    for spec in SPECS.values():
        src = spec.parameters_source()
        values = {n.targets[0].id: ast.literal_eval(n.value) for n in ast.parse(src).body}
        assert values == spec.defaults, spec.name
        # papermill reads "name = value  # comment"; an "=" in the comment confuses it
        assert all("=" not in line.partition("#")[2] for line in src.splitlines()), spec.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_sources_carry_no_outputs(path):
    nb = json.loads(path.read_text())
    assert not any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")


def _execute(path: Path, out: Path, params: dict, env: dict, monkeypatch) -> None:
    import papermill as pm

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    pm.execute_notebook(str(path), str(out), parameters=params, cwd=str(path.parent),
                        progress_bar=False, kernel_name="python3")


def run_record(runs: Path, name: str, tier: str) -> dict:
    """The record of the one run of ``name`` at ``tier`` in a runs folder."""
    found = list(runs.glob(f"{name}.{tier}.*/{name}.{tier}.json"))
    assert len(found) == 1, f"expected one {tier} run folder of {name} in {runs}, found {found}"
    return json.loads(found[0].read_text())


PINNED = json.loads((Path(__file__).parent / "pinned" / "smoke_metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_at_smoke_tier(path, tmp_path, notebook_data_env, monkeypatch, smoke_seconds):
    for k in ("REPRO_RESULTS", "REPRO_BOOK", "REPRO_RUN_DIR", "REPRO_RUN_ID", "REPRO_DRY_RUN", "REPRO_FRESH"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("REPRO_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("REPRO_CHECKPOINTS", str(tmp_path / "ckpt"))
    monkeypatch.setenv("REPRO_TEACHERS", str(tmp_path / "teachers"))
    t0 = time.time()
    _execute(path, tmp_path / "out.ipynb", {"tier": "smoke"}, notebook_data_env, monkeypatch)
    # A timing is a benchmark figure, not a test: it goes to the report printed at the end.
    smoke_seconds[path.stem] = time.time() - t0
    rec = run_record(tmp_path / "runs", path.stem, "smoke")
    assert rec["tier"] == "smoke" and rec["status"] == "complete" and rec["schema"] == 3
    assert all(c["ours"] is not None for c in rec["claims"]), "every claim's metric must be logged"
    assert rec["figures"], "the chapter saved no figure"
    nb = json.loads((tmp_path / "out.ipynb").read_text())
    text = json.dumps(nb["cells"])
    assert "Traceback" not in text
    assert f"run id {rec['run_id']}" in text


PINNED_IDS = sorted(PINNED)


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.parametrize("name", PINNED_IDS)
def test_smoke_metrics_are_pinned(name, tmp_path, monkeypatch):
    """The refactors into runs, records and families must not change results: with fixed
    seeds a smoke run gives exactly the per-seed metrics it gave before them (three chapters
    of three families, recorded on the real data at commit a9156ca)."""
    from conftest import real_data_available

    if not real_data_available():
        pytest.skip("the pinned values are on the real CIFAR-100")
    for k in ("REPRO_RESULTS", "REPRO_BOOK", "REPRO_RUN_DIR", "REPRO_RUN_ID", "REPRO_DRY_RUN", "REPRO_FRESH",
              "REPRO_ALLOW_FAKE_DATA"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("REPRO_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("REPRO_CHECKPOINTS", str(tmp_path / "ckpt"))
    monkeypatch.setenv("REPRO_TEACHERS", str(tmp_path / "teachers"))
    path = ROOT / "notebooks" / f"{name}.ipynb"
    _execute(path, tmp_path / "out.ipynb", {"tier": "smoke"}, {}, monkeypatch)
    rec = run_record(tmp_path / "runs", name, "smoke")
    got = {k: v["per_seed"] for k, v in rec["metrics"].items()}
    # A swept arm's value is a row: pinned as "metric:arm", a paired difference as
    # "metric:arm-baseline" (the same subtraction the chapter made before its sweep).
    rows: dict[str, dict[str, float]] = {}
    for r in rec.get("rows", []):
        rows.setdefault(f"{r['metric']}:{r['arm']}", {})[str(r["seed"])] = r["value"]
    for key in PINNED[name]:
        if key not in got and ":" in key:
            metric, arms = key.split(":", 1)
            a, _, b = arms.partition("-")
            if not b:
                got[key] = rows.get(key, {})
            else:
                va, vb = rows.get(f"{metric}:{a}", {}), rows.get(f"{metric}:{b}", {})
                got[key] = {s: va[s] - vb[s] for s in va if s in vb}
    want = PINNED[name]  # every metric but wall-clock timings (epoch seconds, overheads)
    assert set(want) <= set(got)
    for metric, per_seed in want.items():
        for seed, value in per_seed.items():
            # rel 1e-4: CPUs with other vector units (AMX or not) round differently, by ~1e-6
            # relative after two epochs; a refactor that changed results would change random
            # streams or code paths, and move them by percent, not by parts per million.
            assert got[metric][seed] == pytest.approx(value, rel=1e-4, abs=1e-6), f"{metric} seed {seed}"


@pytest.mark.slow
def test_unknown_parameter_fails_the_run(tmp_path, notebook_data_env, monkeypatch):
    import papermill as pm

    path = NOTEBOOKS[0]
    monkeypatch.setenv("REPRO_RUNS", str(tmp_path))
    with pytest.raises(pm.PapermillExecutionError, match="unknown parameter"):
        _execute(path, tmp_path / "out.ipynb", {"tier": "smoke", "no_such_parameter": 1}, notebook_data_env,
                 monkeypatch)
    assert not list(tmp_path.rglob("*.json")), "a failed run must not write a record"


def test_cli_refuses_bad_parameters_before_running(capsys):
    from repro.cli import main

    name = NOTEBOOKS[0].stem
    assert main(["run", name, "--tier", "smoke", "-p", "no_such_parameter", "1"]) == 2
    assert "Valid parameters" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", name, "--tier", "tiny"])
