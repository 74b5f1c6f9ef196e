"""Chapter 02 (GTEP): the class split, per-stream memory, search sampling, the two selection
rules, rank changes and every logged metric on hand-made score tables; bad inputs fail before
any training."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from repro import arms
from repro.data import load
from repro.families.incremental import figures, protocol, tables
from repro.families.incremental.arms import gtep as G
from repro.papers import load_spec
from repro.run import Run

ORDER = list(range(100, 0, -1))  # a made-up order of 100 "class ids" (100, 99, …, 1)


# -- the class sets ---------------------------------------------------------------------------
def test_halves_split_the_protocol_classes_first_half_tuning():
    ht, ev = G.split_classes(ORDER, 10, "halves")
    assert ht == [100, 99, 98, 97, 96] and ev == [95, 94, 93, 92, 91]
    ht, ev = G.split_classes(ORDER, 100, "halves")
    assert len(ht) == len(ev) == 50 and not set(ht) & set(ev) and set(ht) | set(ev) == set(ORDER)


def test_disjoint_split_keeps_the_protocol_stream_for_evaluation():
    ht, ev = G.split_classes(ORDER, 3, "disjoint")
    assert ev == [100, 99, 98] and ht == [97, 96, 95]


@pytest.mark.parametrize("classes,split,match", [(7, "halves", "even"), (51, "disjoint", "2 × classes"),
                                                 (10, "random", "tuning_split")])
def test_bad_splits_fail(classes, split, match):
    with pytest.raises(ValueError, match=match):
        G.split_classes(ORDER, classes, split)


def test_each_stream_keeps_the_protocols_exemplars_per_class():
    assert G.stream_memory(2000, 100, 50) == 1000  # the paper's 20 per class
    assert G.stream_memory(200, 20, 20) == 200
    assert G.stream_memory(12, 6, 3) == 6


def test_subset_dataset_relabels_in_the_given_order(fake_data):
    data = load(classes=[5, 6, 7], per_class=4, test_per_class=2, image_size=8)
    sub = G.subset_dataset(data, [2, 0])
    assert sub.classes == [7, 5] and sub.num_classes == 2
    assert sorted(sub.y_train.tolist()) == [0] * 4 + [1] * 4 and len(sub.y_test) == 4
    # image i of new class 0 is an image of old label 2 (CIFAR class 7)
    assert torch.equal(sub.x_train[sub.y_train == 0], data.x_train[data.y_train == 2])
    assert torch.equal(sub.x_test[sub.y_test == 1], data.x_test[data.y_test == 0])


# -- the search -------------------------------------------------------------------------------
def test_kd_hyperparameters_are_searched_only_for_distilling_learners():
    grids = {"lr": [0.1, 0.2], "epochs": [1], "kd_weight": [0.5, 2.0], "kd_temperature": [2.0]}
    assert G.algorithm_space(grids, "replay") == {"lr": [0.1, 0.2], "epochs": [1]}
    assert G.algorithm_space(grids, "replay_kd") == grids


def test_sample_configs_whole_grid_or_a_seeded_sample_without_repeats():
    space = {"lr": [0.1, 0.2], "epochs": [1, 2, 3]}
    full = G.sample_configs(space, 10, seed=0)
    assert full == [{"lr": 0.1, "epochs": 1}, {"lr": 0.1, "epochs": 2}, {"lr": 0.1, "epochs": 3},
                    {"lr": 0.2, "epochs": 1}, {"lr": 0.2, "epochs": 2}, {"lr": 0.2, "epochs": 3}]
    some = G.sample_configs(space, 4, seed=3)
    assert len(some) == 4 and all(c in full for c in some)
    assert len({tuple(c.values()) for c in some}) == 4               # no repeats
    assert [full.index(c) for c in some] == sorted(full.index(c) for c in some)  # grid order
    assert some == G.sample_configs(space, 4, seed=3)                 # seeded


def test_chapter_search_uses_the_same_configs_and_one_seed_per_algorithm():
    p = load_spec("gtep").resolve("cpu")
    s1 = G.chapter_search(arms.make_config(G.SearchConfig, p))
    s2 = G.chapter_search(arms.make_config(G.SearchConfig, {**p, "algorithms": ["replay_kd", "finetune", "replay"]}))
    assert s1 == {k: s2[k] for k in s1}  # independent of the list's order
    # the cpu grid: 4 learning rates × 1 epochs × 1 batch × 1 wd (× 2 KD weights), 8 trials at most
    assert len(s1["finetune"]) == 4 and "kd_weight" not in s1["finetune"][0]
    assert len(s1["replay_kd"]) == 8 and {c["kd_weight"] for c in s1["replay_kd"]} <= {0.5, 2.0}
    assert G.describe_config({"lr": 0.05, "epochs": 3, "kd_weight": 2.0}) == "lr 0.05 · ep 3 · kd_w 2"


# -- selection and metrics on a hand-made table -------------------------------------------------
def _rows(table):
    """table[(phase, method)] = [[seed-0 AIA, seed-1 AIA] per config]; last = AIA − 10."""
    rows = []
    for (phase, method), configs in table.items():
        for c, per_seed in enumerate(configs):
            for s, v in enumerate(per_seed):
                rows.append({"phase": phase, "method": method, "config": c, "seed": s, "aia": v,
                             "last": v - 10, "acc_after": [v + 5, v - 5], "hp": {"lr": 0.1 * (c + 1)}})
    return rows


TABLE = {
    # replay: config 0 wins on D^HT, config 1 on D^E
    ("tuning", "replay"): [[50, 52], [40, 44], [30, 30]],
    ("evaluation", "replay"): [[41, 43], [47, 45], [20, 22]],
    # replay_kd: config 2 wins on D^HT, config 0 on D^E
    ("tuning", "replay_kd"): [[45, 47], [20, 20], [60, 62]],
    ("evaluation", "replay_kd"): [[55, 51], [30, 30], [38, 40]],
    # finetune: the same config wins on both
    ("tuning", "finetune"): [[10, 12], [20, 22], [15, 15]],
    ("evaluation", "finetune"): [[11, 11], [25, 23], [16, 18]],
}
ALGOS = ["finetune", "replay", "replay_kd"]


def test_pick_is_the_best_seed_mean_with_ties_to_the_lowest_index_and_nan_last():
    assert G.pick({0: {0: 1.0, 1: 3.0}, 1: {0: 2.5, 1: 2.0}}) == 1  # seed means 2.0 < 2.25
    assert G.pick({0: {0: 2.0}, 1: {0: 3.0}, 2: {0: 3.0}}) == 1
    assert G.pick({0: {0: float("nan")}, 1: {0: -5.0}}) == 1
    with pytest.raises(ValueError, match="no configurations"):
        G.pick({})


def test_protocol_table_by_hand():
    t = G.protocol_table(_rows(TABLE), ALGOS)
    assert (t["replay"]["gtep_config"], t["replay"]["usual_config"]) == (0, 1)
    assert t["replay"]["gtep"] == {0: 41, 1: 43} and t["replay"]["usual"] == {0: 47, 1: 45}
    assert t["replay"]["tuning"] == {0: 50, 1: 52}
    assert (t["replay_kd"]["gtep_config"], t["replay_kd"]["usual_config"]) == (2, 0)
    assert (t["finetune"]["gtep_config"], t["finetune"]["usual_config"]) == (1, 1)


def test_same_choice_is_flagged_as_fixed_by_the_design():
    # finetune picks config 1 under both protocols: its gap is 0 by construction.
    flags = G.same_choice_flags(_rows(TABLE), ALGOS)
    assert set(flags) == {"gap_finetune"} and "configuration 1" in flags["gap_finetune"]
    same = {k: v for k, v in TABLE.items() if k[1] == "finetune"}
    same.update({(p, m): TABLE[("tuning", "finetune")] for p in ("tuning", "evaluation") for m in ("replay", "replay_kd")})
    flags = G.same_choice_flags(_rows(same), ALGOS)
    assert {"gap_mean", "rank_swaps", "advantage_shrink_replay_kd_over_replay"} <= set(flags)


def test_discordant_pairs_and_ranks():
    a = {"x": 3.0, "y": 2.0, "z": 1.0}
    assert G.discordant_pairs(a, a) == 0
    assert G.discordant_pairs(a, {"x": 1.0, "y": 2.0, "z": 3.0}) == 3
    assert G.discordant_pairs(a, {"x": 3.0, "y": 1.0, "z": 2.0}) == 1
    assert G.discordant_pairs(a, {"x": 3.0, "y": 2.0, "z": 2.0}) == 1  # a new tie is a change
    assert G.ranks({"x": 3.0, "y": 5.0, "z": 3.0}) == {"x": 2, "y": 1, "z": 2}


def test_seed_metrics_by_hand():
    per = G.seed_metrics(_rows(TABLE), ALGOS)
    s0, s1 = per[0], per[1]
    # replay: usual = config 1 (47, 45), GTEP = config 0 (41, 43)
    assert (s0["gap_replay"], s1["gap_replay"]) == (6, 2)
    # replay_kd: usual = config 0 (55, 51), GTEP = config 2 (38, 40)
    assert (s0["gap_replay_kd"], s1["gap_replay_kd"]) == (17, 11)
    assert (s0["gap_finetune"], s1["gap_finetune"]) == (0, 0)
    assert s0["gap_mean"] == pytest.approx(23 / 3) and s1["gap_mean"] == pytest.approx(13 / 3)
    assert s0["advantage_shrink_replay_kd_over_replay"] == 11 and s1["advantage_shrink_replay_kd_over_replay"] == 9
    assert (s0["last_usual_replay"], s0["last_gtep_replay"]) == (37, 31)
    assert s1["e_minus_ht_replay"] == 43 - 52
    # seed 0: usual ft 25 < replay 47 < kd 55; GTEP ft 25 < kd 38 < replay 41 → one pair swapped
    assert s0["rank_swaps"] == 1
    # seed 1: usual ft 23 < replay 45 < kd 51; GTEP ft 23 < kd 40 < replay 43 → one pair
    assert s1["rank_swaps"] == 1
    # ρ of seed 0, replay: D^HT (50, 40, 30) vs D^E (41, 47, 20) → ranks (3,2,1) vs (2,3,1): ρ = 0.5
    assert s0["rho_replay"] == pytest.approx(0.5)
    assert math.isnan(G.spearman([1, 2], [2, 1])) and math.isnan(G.spearman([1, 1, 1], [1, 2, 3]))


def test_no_advantage_metric_without_the_pair_and_metrics_are_logged(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_RESULTS", str(tmp_path))
    rows = [r for r in _rows(TABLE) if r["method"] != "replay_kd"]
    per = G.seed_metrics(rows, ["finetune", "replay"])
    assert "advantage_shrink_replay_kd_over_replay" not in per[0]
    run = Run(load_spec("gtep"), load_spec("gtep").resolve("smoke"), torch.device("cpu"))
    protocol.gtep_log(run, _rows(TABLE), ALGOS)
    assert run.metrics["gap_replay"] == {"0": 6.0, "1": 2.0}
    md = tables.protocol_markdown(_rows(TABLE), {m: [{"lr": 0.1}, {"lr": 0.2}, {"lr": 0.3}] for m in ALGOS}, ALGOS)
    assert "| replay | #0: lr 0.1 | #1: lr 0.2 |" in md and "| finetune | #1: lr 0.2 | #1: lr 0.2 (same) |" in md
    # mean AIA, usual: finetune 24, replay 46, replay_kd 53; GTEP: finetune 24, replay 42, replay_kd 39
    assert md.count("| 3 → 3 |") == 1 and md.count("| 2 → 1 |") == 1 and md.count("| 1 → 2 |") == 1


# -- bad inputs fail before any data is read ---------------------------------------------------
@pytest.mark.parametrize("override,match", [
    ({"algorithms": ["replay", "icarl"]}, "algorithms"),
    ({"algorithms": ["replay", "replay"]}, "algorithms"),
    ({"algorithms": ["replay"]}, "algorithms"),
    ({"trials": 0}, "trials"),
    ({"lr_grid": []}, "lr_grid is empty"),
    ({"lr_grid": [0.1, -0.1]}, "lr_grid"),
    ({"epochs_grid": [0]}, "epochs_grid"),
    ({"epochs_grid": [2, 2]}, "repeats"),
    ({"weight_decay_grid": [-1e-4]}, "weight_decay_grid"),
    ({"schedule": "linear"}, "schedule"),
    ({"arch": "resnet-18"}, "unknown arch"),
    ({"tuning_split": "halves"}, "cannot be split"),   # smoke: 6 classes → halves of 3, Inc2
    ({"scenario": "B3-Inc4"}, "cannot be split"),
    ({"tuning_split": "disjoint", "classes": 60}, "2 × classes"),
])
def test_bad_parameters_fail_before_any_data_is_read(override, match, monkeypatch, tmp_path):
    def boom(*a, **k):
        raise AssertionError("data was read")
    monkeypatch.setattr("repro.data.load", boom)
    spec = load_spec("gtep")
    run = Run(spec, {**spec.resolve("smoke"), **override}, torch.device("cpu"), folder=tmp_path)
    with pytest.raises(ValueError, match=match):
        protocol.gtep_streams(run)


def test_the_spec_is_consistent(tmp_path):
    spec = load_spec("gtep")
    with pytest.raises(ValueError, match="seeds"):
        spec.resolve("smoke", {"seeds": []})
    for tier in ("smoke", "cpu", "gpu", "paper"):
        protocol.gtep_check(Run(spec, spec.resolve(tier), torch.device("cpu"), folder=tmp_path))
    metrics = {c.metric for c in spec.claims}
    assert {"gap_mean", "rank_swaps", "advantage_shrink_replay_kd_over_replay"} <= metrics
    assert {f"gap_{m}" for m in spec.defaults["algorithms"]} <= metrics


# -- the streams and a tiny search on the fake set --------------------------------------------
@pytest.fixture
def smoke_run(fake_data, tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("REPRO_CHECKPOINTS", str(tmp_path / "ckpt"))
    spec = load_spec("gtep")
    p = spec.resolve("smoke", {"per_class": 6, "test_per_class": 3, "image_size": 8, "seeds": [0]})
    return Run(spec, p, torch.device("cpu"))


def test_streams_are_disjoint_and_evaluation_is_the_protocol_stream(smoke_run):
    streams = protocol.gtep_streams(smoke_run)
    ht, ev = streams["tuning"], streams["evaluation"]
    assert not set(ht.order) & set(ev.order) and len(ht.order) == len(ev.order) == 6
    assert ht.tasks == ev.tasks == [[0, 1], [2, 3], [4, 5]]
    assert len(ht.data.y_train) == 36 and len(ev.data.y_test) == 18
    ref = protocol.stream(smoke_run)  # the family's own stream over the same parameters
    assert ev.order == ref.order
    assert torch.equal(ev.data.x_train, ref.data.x_train) and torch.equal(ev.data.y_train, ref.data.y_train)


def test_the_search_sweep_trains_every_cell_and_resumes(smoke_run):
    streams = protocol.gtep_streams(smoke_run)
    search = {"finetune": [{"lr": 0.05, "epochs": 1, "batch_size": 16}],
              "replay_kd": [{"lr": 0.05, "epochs": 1, "batch_size": 16, "kd_weight": 1.0},
                            {"lr": 0.2, "epochs": 1, "batch_size": 16, "kd_weight": 2.0}]}
    res = protocol.gtep_sweep(smoke_run, streams, search, progress=False)
    assert res.arms() == ["tuning_finetune_c0", "tuning_replay_kd_c0", "tuning_replay_kd_c1",
                          "evaluation_finetune_c0", "evaluation_replay_kd_c0", "evaluation_replay_kd_c1"]
    # the disjoint split: each stream has the protocol's 6 classes and its memory of 12 (2 classes × 6)
    assert res.of("tuning_replay_kd_c1")[0]["extra"]["memory_sizes"][0] == 12
    rows = G.search_rows(res.jobs)
    assert [(r["phase"], r["method"], r["config"]) for r in rows] == [
        ("tuning", "finetune", 0), ("tuning", "replay_kd", 0), ("tuning", "replay_kd", 1),
        ("evaluation", "finetune", 0), ("evaluation", "replay_kd", 0), ("evaluation", "replay_kd", 1)]
    r = rows[1]
    assert len(r["A"]) == 3 and r["aia"] == pytest.approx(np.mean(r["acc_after"]))
    assert r["hp"] == search["replay_kd"][0]
    again = G.search_rows(protocol.gtep_sweep(smoke_run, streams, search, progress=False).jobs)  # from checkpoints
    assert [x["aia"] for x in again] == [x["aia"] for x in rows]
    assert "| 0 | tuning | replay_kd | 2 |" in tables.search_blocks_markdown(rows)
    with pytest.raises(ValueError, match="identifier"):
        G.search_label("tuning", "replay-kd", 0)


def test_chosen_results_are_the_evaluation_runs_of_the_tuning_pick():
    def row(phase, config, seed, aia):
        return {"phase": phase, "method": "replay", "config": config, "seed": seed, "aia": aia,
                "A": [[aia]], "acc_after": [aia]}
    # config 1 wins on D^HT (20 > 10); config 0 would win on D^E (30 > 25)
    rows = [row("tuning", 0, 0, 10.0), row("tuning", 1, 0, 20.0),
            row("evaluation", 0, 0, 30.0), row("evaluation", 1, 0, 25.0)]
    got = G.chosen_results(rows, ["replay"])
    assert got == [{"arm": "replay", "seed": 0, "extra": {"A": [[25.0]], "acc_after": [25.0]}}]
    fig, data = figures.plot_matrices(got, "t")
    assert data["A"][0][0] == 25.0
