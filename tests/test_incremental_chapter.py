"""The family's chapter mechanics: learners over seeds, per-seed logging, tables and figures."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from repro.incremental import chapter
from repro.incremental.learners import FineTune, IncrementalConfig, Replay
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


def test_protocol_config_reads_the_run_and_maps_zero_first_epochs_to_none(run):
    cfg = chapter.protocol_config(run)
    assert (cfg.arch, cfg.arch_kwargs, cfg.epochs, cfg.epochs_first, cfg.memory) == ("cnn3", {"width": 4}, 1, None, 6)
    assert chapter.protocol_config(run, memory=0).memory == 0


def test_learners_over_seeds_log_paired_metrics(run):
    stream = chapter.protocol_stream(run)
    assert stream.tasks == [[0, 1], [2, 3], [4, 5]] and run.data_info["classes"]
    cfg = chapter.protocol_config(run)
    res = chapter.run_learners(run, stream, {"finetune": FineTune, "replay": Replay}, cfg, [0, 1])
    assert [(r["method"], r["seed"]) for r in res] == [("finetune", 0), ("replay", 0), ("finetune", 1), ("replay", 1)]
    assert all(r["order_seed"] == 1993 and len(r["A"]) == 3 for r in res)
    chapter.log_seed_metrics(run, res)
    assert run.metrics["aia_replay"]["1"] == pytest.approx(res[3]["summary"]["aia"])
    gains = chapter.log_gain(run, res, "replay", "finetune", "last")
    assert gains[0] == pytest.approx(res[1]["summary"]["last"] - res[0]["summary"]["last"])
    assert run.metrics["last_replay_minus_finetune"]["0"] == pytest.approx(gains[0])
    md = chapter.summary_markdown(res)
    assert "| finetune (n=2) |" in md and "| replay (n=2) |" in md
    assert all("histories" not in r and "model" not in r for r in chapter.jsonable_results(res))


def test_mean_matrix_and_figures_by_hand():
    res = [{"method": "a", "seed": 0, "A": [[80.0], [40.0, 60.0]], "acc_after": [80.0, 50.0]},
           {"method": "a", "seed": 1, "A": [[90.0], [50.0, 70.0]], "acc_after": [90.0, 60.0]},
           {"method": "b", "seed": 0, "A": [[70.0], [60.0, 50.0]], "acc_after": [70.0, 55.0]}]
    A = chapter.mean_matrix(res, "a")
    assert A[0, 0] == 85.0 and np.isnan(A[0, 1]) and A[1].tolist() == [45.0, 65.0]
    fig, data = chapter.plot_matrices(res, "test setting")
    assert data["matrices"]["b"][1] == [60.0, 50.0] and data["setting"] == "test setting"
    fig, data = chapter.plot_matrices(res, "test setting", labels=["b"])
    assert data["A"][0][0] == 70.0


def test_labels_must_be_identifiers():
    with pytest.raises(ValueError, match="identifier"):
        chapter.check_labels({"replay kd": Replay})


def test_memory_budget_below_zero_fails_before_training():
    with pytest.raises(ValueError, match="memory budget"):
        IncrementalConfig(memory=-1)
