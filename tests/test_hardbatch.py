"""Hard-batch selection (chapter 36): hand-computed selections, the update budget, δ = 1
as plain training, and state round-trips (including a resumed ``fit`` mid-round)."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from repro.data.loader import TensorLoader
from repro.families.training.arms.hardbatch import (HardBatchConfig, HardBatchPlan, arm_configs, arm_label,
                                                    num_selected, speedup_pct, updates_to_reach)
from repro.train import AllBatches, TrainConfig, fit


def _loader(n: int = 12, batch: int = 2, shuffle: bool = False, seed: int = 0) -> TensorLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 4, 4), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % 3
    return TensorLoader(x, y, batch, "cpu", shuffle=shuffle, augment=False, drop_last=True, seed=seed)


def _drive(plan: HardBatchPlan, loader: TensorLoader, epochs, loss_of) -> list[int]:
    """Run the plan outside fit: positions served, reporting loss_of(position, update)."""
    served = []
    for e in epochs:
        for pos, _ in plan.epoch_batches(loader, e):
            served.append(pos)
            plan.observe(pos, loss_of(pos, plan.updates))
    return served


def test_num_selected():
    assert num_selected(0.5, 6) == 3
    assert num_selected(0.5, 7) == 3          # floor
    assert num_selected(0.29, 100) == 29      # 0.29 * 100 = 28.999… in binary
    assert num_selected(0.01, 6) == 1         # at least one batch
    assert num_selected(1.0, 156) == 156
    with pytest.raises(ValueError):
        num_selected(0.0, 6)


def test_six_batches_half_takes_the_three_hardest_in_partition_order():
    loader = _loader()                        # 12 samples, batch 2 → B = 6, partition 0..5
    plan = HardBatchPlan(0.5)
    first = list(plan.epoch_batches(loader, 0))
    assert [p for p, _ in first] == [0, 1, 2, 3, 4, 5]          # pass 1: every batch, in order
    assert first[2][1].tolist() == [4, 5]
    for p, loss in enumerate([0.1, 0.9, 0.3, 0.8, 0.2, 0.7]):
        plan.observe(p, loss)
    # Round 1 takes {1, 3, 5} (losses 0.9, 0.8, 0.7) in partition order; their new losses
    # 0.05, 0.6, 0.4 make round 2 take {3, 5, 2} (0.6, 0.4, 0.3) → served as 2, 3, 5.
    new = {1: 0.05, 3: 0.6, 5: 0.4, 2: 0.25}
    served = []
    for p, idx in plan.epoch_batches(loader, 1):
        served.append(p)
        plan.observe(p, new.get(p, 0.0))
    assert served == [1, 3, 5, 2, 3, 5]
    assert plan.counts == [1, 2, 2, 3, 1, 3] and sum(plan.counts) == 2 * 6
    assert [r["start_update"] for r in plan.rounds] == [6, 9]  # exactly 3 updates per round
    assert plan.rounds[0]["mean_selected"] == pytest.approx(0.8)
    assert plan.rounds[0]["mean_unselected"] == pytest.approx(0.2)


def test_fit_takes_epochs_times_b_updates_in_rounds_of_delta_b():
    loader = _loader()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
    plan = HardBatchPlan(0.5)
    cfg = TrainConfig(epochs=3, lr=0.1, weight_decay=0.0, schedule="constant", progress=False)
    res = fit(model, loader, None, cfg, plan=plan)
    assert res.steps == 3 * 6 and plan.updates == 18 and sum(plan.counts) == 18
    assert [h["step"] for h in res.history] == [6, 12, 18]       # one fit epoch = B updates
    assert [r["start_update"] for r in plan.rounds] == [6, 9, 12, 15]
    assert all(c >= 1 for c in plan.counts)                       # pass 1 touched every batch


@pytest.mark.parametrize("reshuffle", [False, True])
def test_delta_one_serves_the_plain_order(reshuffle):
    loader = _loader(shuffle=True, seed=3)
    plan = HardBatchPlan(1.0, reshuffle=reshuffle)
    for e in range(3):
        got = [idx.tolist() for _, idx in plan.epoch_batches(loader, e)]
        loader.set_epoch(e if reshuffle else 0)
        assert got == [b.tolist() for b in loader.batches()]


def test_delta_one_trains_exactly_like_plain_fit():
    def train(plan):
        loader = _loader(shuffle=True, seed=1)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
        cfg = TrainConfig(epochs=3, lr=0.1, weight_decay=0.0, schedule="constant", progress=False)
        fit(model, loader, None, cfg, plan=plan)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert torch.equal(train(HardBatchPlan(1.0, reshuffle=True)), train(AllBatches()))


def test_state_round_trips_mid_round():
    loader = _loader()
    loss_of = lambda pos, u: ((pos * 7 + u * 3) % 11) / 10  # noqa: E731  deterministic "losses"
    whole = HardBatchPlan(0.5, updates_per_call=4)
    ref = _drive(whole, loader, range(5), loss_of)
    first = HardBatchPlan(0.5, updates_per_call=4)
    head = _drive(first, loader, range(2), loss_of)               # stops 2 updates into round 1
    state = json.loads(json.dumps(first.state_dict()))             # survives serialisation
    second = HardBatchPlan(0.5, updates_per_call=4)
    second.load_state_dict(state)
    assert head + _drive(second, loader, range(2, 5), loss_of) == ref
    assert second.state_dict() == whole.state_dict()
    with pytest.raises(ValueError):
        HardBatchPlan(0.2, updates_per_call=4).load_state_dict(state)


def test_fit_resumes_mid_round(tmp_path):
    def train(epochs, ckpt):
        loader = _loader(shuffle=True, seed=2)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
        plan = HardBatchPlan(0.7, reshuffle=True)          # ⌊0.7 · 6⌋ = 4 batches per round
        cfg = TrainConfig(epochs=epochs, lr=0.1, weight_decay=0.0, schedule="constant", progress=False)
        fit(model, loader, None, cfg, plan=plan, checkpoint_dir=ckpt)
        return torch.cat([p.detach().flatten() for p in model.parameters()]), plan.counts

    w_ref, c_ref = train(4, None)
    train(2, tmp_path)                     # 12 updates = 6 (pass 1) + 4 (round 1) + 2 of round 2
    state = torch.load(tmp_path / "last.pt", weights_only=False)["plan"]
    assert (state["round"], state["cursor"]) == (2, 2)            # the checkpoint is mid-round
    w, c = train(4, tmp_path)              # resumes from it
    assert torch.equal(w, w_ref) and c == c_ref


def test_updates_to_reach_and_speedup():
    assert updates_to_reach([0, 10, 20], [0, 40, 80], 60) == 15.0
    assert updates_to_reach([0, 10, 20], [0, 40, 80], 90) == 20.0  # never reached: the budget
    base = {"steps": [0, 10, 20], "test_acc": [0, 50, 100], "final_acc": 100.0}
    arm = {"steps": [0, 10, 20], "test_acc": [0, 90, 95], "final_acc": 95.0}
    # target 90: baseline at 10 + (90 − 50) / 50 · 10 = 18, arm at 10 → 100 · 8 / 18
    assert speedup_pct(base, arm) == pytest.approx(100 * 8 / 18)


def test_arm_labels_and_configs():
    params = {"settings": ["paper", "standard"], "deltas": [1.0, 0.5, 0.2], "claim_delta": 0.5,
              "model": "cnn3", "batch_size": 10, "epochs": 2, "lr": 0.005, "momentum": 0.9, "weight_decay": 0.0}
    arms = arm_configs(params)
    assert list(arms) == ["paper_all", "paper_hard", "paper_delta0_2",
                          "standard_all", "standard_hard", "standard_delta0_2"]
    cfg = arms["standard_delta0_2"][1]
    assert (cfg.setting, cfg.delta, cfg.batch_size, cfg.model) == ("standard", 0.2, 10, "cnn3")
    assert arm_label("paper", 0.25, 0.5) == "paper_delta0_25"
    with pytest.raises(ValueError):
        arm_configs({**params, "deltas": [0.5]})  # no baseline
    with pytest.raises(ValueError):
        HardBatchConfig(setting="mixed")
