"""Chapter 19 (hard-attention gates with gradient routing): the arms, gradient routing through
fit on a tiny gated ViT (by hand: AdamW's first step moves every parameter by its lr), resuming
the gate optimiser, the equal-compute arm's cost, and the chapter's tables and figures."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from repro import models
from repro.data import Dataset, TensorLoader
from repro.errors import ParameterError
from repro.families.architecture import hag, protocol
from repro.layers.hard_attention_gate import GradientRouting, split_gate_parameters
from repro.sweep import SweepResult
from repro.train import TrainConfig, fit

PARAMS = {"model": "vit_slot_micro_p4", "arms": list(hag.ARMS), "gate_lr": 0.05, "epochs": 5, "warmup_epochs": 2.0,
          "lr": 2e-3, "weight_decay": 0.1, "batch_size": 16, "label_smoothing": 0.0}


def _toy(n: int = 32, size: int = 8, classes: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8),
            torch.randint(0, classes, (n,), generator=g))


def _gated_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.create("vit_slot_micro_p4", num_classes=2, img_size=8, patch_size=4, gates="hag")


class _Recording(GradientRouting):
    """GradientRouting that remembers the main optimiser fit hands it."""

    def __call__(self, model, x, y, opt, autocast):
        self.main_opt = opt
        return super().__call__(model, x, y, opt, autocast)


# -- arms -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("epochs, half", [(1, 1), (2, 1), (3, 2), (12, 6), (15, 8), (200, 100)])
def test_half_epochs_round_up_and_never_reach_zero(epochs: int, half: int) -> None:
    assert hag.half_epochs(epochs) == half


def test_arm_configs_build_the_four_arms() -> None:
    arms = hag.arm_configs(PARAMS)
    assert list(arms) == ["baseline", "joint", "routing", "routing_half"]
    assert {k: a for k, (a, _) in arms.items()} == {"baseline": "standard", "joint": "standard",
                                                    "routing": "routing", "routing_half": "routing"}
    cfg = {k: c for k, (_, c) in arms.items()}
    assert cfg["baseline"].model_kw == {} and not cfg["baseline"].routing
    assert cfg["joint"].model_kw == {"gates": "hag"} and not cfg["joint"].routing
    assert cfg["routing"].model_kw == {"gates": "hag"} and cfg["routing"].routing and cfg["routing"].gate_lr == 0.05
    # equal gradient evaluations: half the epochs (5 → 3, rounded up), warm-up shortened alike
    half = cfg["routing_half"]
    assert half.routing and half.epochs == 3 and half.warmup_epochs == pytest.approx(2.0 * 3 / 5)
    assert cfg["routing"].epochs == cfg["baseline"].epochs == 5 and cfg["routing"].warmup_epochs == 2.0
    # the recipe is the same for every arm
    for c in cfg.values():
        assert (c.model, c.lr, c.weight_decay, c.batch_size, c.label_smoothing) == \
            ("vit_slot_micro_p4", 2e-3, 0.1, 16, 0.0)
    # the baseline is the family's plain ViT (its checkpoints are shared with other chapters),
    # whatever the gate lr: the gates' lr does not reach arms without routing
    plain = protocol.arch_config(PARAMS, "vit_slot_micro_p4")
    strip = lambda c: {k: v for k, v in dataclasses.asdict(c).items() if k not in ("title", "gate_lr")}  # noqa: E731
    assert strip(cfg["baseline"]) == strip(plain) and cfg["baseline"].gate_lr == protocol.ArchConfig.gate_lr
    assert hag.arm_configs({**PARAMS, "arms": ["routing_half"], "epochs": 1})["routing_half"][1].epochs == 1


def test_unknown_or_no_arm_is_refused() -> None:
    with pytest.raises(ParameterError, match="unknown arm.*'gates'"):
        hag.arm_configs({**PARAMS, "arms": ["baseline", "gates"]})
    with pytest.raises(ParameterError, match="empty"):
        hag.arm_configs({**PARAMS, "arms": []})


def test_one_epoch_makes_routing_half_no_equal_compute_arm() -> None:
    assert hag.guards(PARAMS) == []
    (reason, key), = hag.guards({**PARAMS, "epochs": 1})
    assert key == "top1:routing_half-baseline" and "not equal compute" in reason
    assert hag.guards({**PARAMS, "epochs": 1, "arms": ["baseline", "routing"]}) == []


# -- gradient routing through fit ---------------------------------------------------------------
def test_routing_moves_gates_and_weights_on_separate_optimizers() -> None:
    x, y = _toy(n=16)
    model = _gated_vit()
    gates, others = split_gate_parameters(model)
    assert len(gates) == 2 * 4 and all(g.shape == (64,) for g in gates)  # θ₁, θ₂ per block
    g0 = [p.detach().clone() for p in gates]
    w0 = [p.detach().clone() for p in others]
    update = _Recording(model, lr=0.05)
    cfg = TrainConfig(epochs=1, optimizer="adamw", lr=1e-3, weight_decay=0.0, schedule="constant", progress=False)
    res = fit(model, TensorLoader(x, y, 16, seed=0), None, cfg, params=others, update=update)
    assert res.steps == 1
    # the main optimiser holds every non-gate weight and no gate; the gate optimiser the gates only
    main = {id(p) for grp in update.main_opt.param_groups for p in grp["params"]}
    gate = {id(p) for grp in update.opt.param_groups for p in grp["params"]}
    assert main == {id(p) for p in others} and gate == {id(p) for p in gates} and not main & gate
    # AdamW's first step is lr · g/(|g| + ε), ε = 1e-8 (no weight decay): ±lr unless |g| is tiny.
    # Every gate channel moves by at most the gate lr, 0.05, and nearly all by exactly that;
    # the other weights likewise by the main lr, 1e-3.
    for new, old, lr in [(gates, g0, 0.05), (others, w0, 1e-3)]:
        d = torch.cat([(a - b).abs().flatten() for a, b in zip(new, old)])
        assert d.max() <= lr * (1 + 1e-4)
        assert ((d - lr).abs() < 0.01 * lr).float().mean() > 0.9


def test_resume_restores_the_gate_optimizer(tmp_path) -> None:
    x, y = _toy()
    # a constant lr: the first epoch of a 1-epoch and of a 2-epoch run are the same
    cfg = lambda e: TrainConfig(epochs=e, optimizer="adamw", lr=1e-3, schedule="constant", progress=False)  # noqa: E731

    def train(epochs: int, checkpoint_dir=None):
        model = _gated_vit()
        update = GradientRouting(model, lr=0.05)
        fit(model, TensorLoader(x, y, 16, seed=0), None, cfg(epochs), params=split_gate_parameters(model)[1],
            update=update, checkpoint_dir=checkpoint_dir)
        return model, update

    straight, up_straight = train(2)
    train(1, tmp_path)                      # stops after epoch 1, checkpointed
    resumed, up_resumed = train(2, tmp_path)  # resumes at epoch 2
    gates = split_gate_parameters(resumed)[0]
    # two batches an epoch: four gate steps, two of them before the checkpoint
    assert up_resumed.opt.state[gates[0]]["step"].item() == 4
    s, r = up_straight.state_dict()["opt"]["state"], up_resumed.state_dict()["opt"]["state"]
    for k in s:
        torch.testing.assert_close(r[k]["exp_avg_sq"], s[k]["exp_avg_sq"])
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)


# -- the arms' cost, and the chapter's tables and figures -----------------------------------------
def _data() -> Dataset:
    x, y = _toy(n=32)
    xt, yt = _toy(n=20, seed=1)
    return Dataset(x, y, xt, yt, classes=[0, 1], class_names=["a", "b"], checksum="toy", info={"per_class": 16})


def test_routing_half_spends_the_baselines_gradient_evaluations(tmp_path) -> None:
    data = _data()
    arms = hag.arm_configs({**PARAMS, "epochs": 2, "warmup_epochs": 0.0})
    jobs = protocol.jobs(arms, data)
    rows = []
    for label, job in jobs.items():
        res = job(0, tmp_path / label)
        rows.append({"arm": label, "seed": 0, "metrics": res.metrics, "train_s": res.train_s, "extra": res.extra,
                     "model": res.model})
    result = SweepResult(rows)
    ev = {r["arm"]: r["metrics"]["grad_evals"] for r in rows}
    # 32 images × epochs × passes a batch
    assert ev == {"baseline": 64.0, "joint": 64.0, "routing": 128.0, "routing_half": 64.0}
    assert hag.gated_arms(result) == ["joint", "routing", "routing_half"]
    per_seed = hag.metrics_by_seed(result)[0]
    assert 0 < per_seed["gate_mean_routing"] < 1 and per_seed["gate_sd_routing"] > 0
    assert {"time_ratio_joint", "time_ratio_routing", "time_ratio_routing_half"} <= set(per_seed)
    assert "time_ratio_baseline" not in per_seed and "gate_mean_baseline" not in per_seed
    table = hag.compute_table(result)
    assert "| `routing_half` |" in table and "| 1 |" in table and "| 128 |" in table
    fig, data_ = hag.compute_curves(result, "setting")
    s = data_["series"]
    assert s["routing"]["grad_evals"] == pytest.approx([64.0, 128.0])  # two passes an epoch
    assert s["baseline"]["grad_evals"] == pytest.approx([32.0, 64.0])
    assert s["routing_half"]["grad_evals"] == pytest.approx([64.0])  # one epoch of two passes
    assert s["routing_half"]["grad_evals"][-1] == s["baseline"]["grad_evals"][-1]
    fig, data_ = hag.accuracy_gap_curves(result, "setting")
    b = data_["series"]["baseline"]
    np.testing.assert_allclose(b["gap"]["mean"], np.asarray(b["train_acc"]["mean"]) - np.asarray(b["test_acc"]["mean"]))
    fig, data_ = hag.gate_heatmap(result, "setting", 0)
    assert np.asarray(data_["gates"]["routing"]).shape == (8, 64)  # 4 blocks × (A, M) gates × 64 channels
    with pytest.raises(ValueError, match="seed 3"):
        hag.gate_heatmap(result, "setting", 3)
