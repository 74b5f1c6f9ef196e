"""The family's protocol glue: the stream and configs from a run's parameters, plans of labelled
arms, the sweep's jobs and rows, and the tables and figures drawn from its result."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from repro import arms
from repro.errors import ParameterError
from repro.families.incremental import figures, protocol, tables
from repro.families.incremental.learners import IncrementalConfig
from repro.papers import load_spec
from repro.run import Run

PARAMS = dict(tier="smoke", classes=6, scenario="B0-Inc2", order_seed=1993, per_class=8, test_per_class=4,
              image_size=8, data_seed=0, memory=6, memory_mode="herding", seeds=[0, 1], arch="cnn3",
              arch_width=4, epochs=1, epochs_first=0, lr=0.05, weight_decay=5e-4, schedule="cosine",
              milestones=[0.5], batch_size=8)


@pytest.fixture
def run(fake_data, tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("REPRO_CHECKPOINTS", str(tmp_path / "ckpt"))
    return Run(load_spec("wa"), dict(PARAMS), torch.device("cpu"))


def test_the_baselines_are_registered_arms():
    assert {"finetune", "replay", "replay_kd", "joint"} <= set(arms.available("incremental"))
    assert arms.get("incremental", "replay_kd").config is IncrementalConfig


def test_configs_come_from_the_run_and_zero_first_epochs_mean_the_same(run):
    cfg = protocol.config(IncrementalConfig, run)
    assert (cfg.arch, cfg.arch_kwargs, cfg.epochs, cfg.epochs_first, cfg.memory) == ("cnn3", {"width": 4}, 1, 0, 6)
    assert cfg.milestones == (0.5,) and cfg.train_config(0).epochs == 1
    assert protocol.config(IncrementalConfig, run, memory=0).memory == 0
    assert IncrementalConfig(epochs=5, epochs_first=2).train_config(0).epochs == 2
    assert IncrementalConfig(epochs=5, epochs_first=2).train_config(1).epochs == 5


def test_plans_are_checked_before_anything_trains(run):
    with pytest.raises(ValueError, match="identifier"):
        protocol.configs(run, {"replay kd": ("replay_kd", {})})
    with pytest.raises(ParameterError, match="no arm 'icarl'"):
        protocol.configs(run, {"icarl": ("icarl", {})})
    with pytest.raises(ParameterError, match="no field"):
        protocol.configs(run, {"replay": ("replay", {"memroy": 3})})
    with pytest.raises(ParameterError, match="memory budget"):
        protocol.configs(run, {"replay": ("replay", {"memory": -1})})


def test_a_sweep_of_labelled_arms_logs_rows_paired_by_seed(run):
    stream = protocol.stream(run)
    assert stream.tasks == [[0, 1], [2, 3], [4, 5]] and run.data_info["classes"]
    plan = {"finetune": ("finetune", {}), "replay": ("replay", {}), "small_memory": ("replay", {"memory": 2})}
    res = protocol.sweep(run, stream, plan, progress=False)
    assert [(j["arm"], j["seed"]) for j in res.jobs] == [(a, s) for s in (0, 1) for a in plan]
    j = res.of("replay")[1]
    assert set(protocol.SUMMARY_KEYS) <= set(j["metrics"]) and j["n_test"] == 6 * 4
    assert len(j["extra"]["A"]) == 3 and j["extra"]["order_seed"] == 1993 and j["train_images"] > 0
    assert j["extra"]["memory_sizes"] == [6, 4, 6] and res.of("small_memory")[0]["extra"]["memory_sizes"] == [2, 0, 0]
    rows = {(r["arm"], r["seed"], r["metric"]): r["value"] for r in run.rows}
    assert rows[("replay", 1, "aia")] == pytest.approx(j["metrics"]["aia"])
    assert res.paired("last", "replay", "finetune")[0] == pytest.approx(
        res.value("replay", 0, "last") - res.value("finetune", 0, "last"))
    assert [x["arm"] for x in run.notes["jobs"]] == [x["arm"] for x in res.jobs]
    md = tables.summary_markdown(res)
    assert "| finetune (n=2) |" in md and "| small_memory (n=2) |" in md
    fig, data = figures.plot_curves(res, stream, "s", labels=["replay"])
    assert data["curves"]["replay"]["n"] == 2 and data["seen_classes"] == [2, 4, 6]


def test_mean_matrix_and_figures_by_hand():
    res = [{"arm": "a", "seed": 0, "extra": {"A": [[80.0], [40.0, 60.0]], "acc_after": [80.0, 50.0]}},
           {"arm": "a", "seed": 1, "extra": {"A": [[90.0], [50.0, 70.0]], "acc_after": [90.0, 60.0]}},
           {"arm": "b", "seed": 0, "extra": {"A": [[70.0], [60.0, 50.0]], "acc_after": [70.0, 55.0]}}]
    A = figures.mean_matrix(res, "a")
    assert A[0, 0] == 85.0 and np.isnan(A[0, 1]) and A[1].tolist() == [45.0, 65.0]
    fig, data = figures.plot_matrices(res, "test setting")
    assert data["matrices"]["b"][1] == [60.0, 50.0] and data["setting"] == "test setting"
    fig, data = figures.plot_matrices(res, "test setting", labels=["b"])
    assert data["A"][0][0] == 70.0


def test_memory_budget_below_zero_fails_before_training():
    with pytest.raises(ValueError, match="memory budget"):
        IncrementalConfig(memory=-1)
