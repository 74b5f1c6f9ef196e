"""The architecture family: recipe, arms, fit's per-batch update, traces, probes, figures."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from repro import models
from repro.data import TensorLoader
from repro.errors import ParameterError
from repro.families.architecture import crrelu, figures, probes, protocol, tables, traces
from repro.layers.hard_attention_gate import GradientRouting, gate_parameters, split_gate_parameters
from repro.sweep import SweepResult
from repro.train import TrainConfig, fit


def _toy(n: int = 48, size: int = 8, classes: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8),
            torch.randint(0, classes, (n,), generator=g))


def _gated_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.create("vit_slot_micro_p4", num_classes=2, img_size=8, gates="hag", depth=1, embed_dim=16)


# -- the recipe ---------------------------------------------------------------------------------
def test_recipe_is_adamw_cosine_with_warmup_and_smoothing() -> None:
    cfg = protocol.arch_config({"epochs": 7, "lr": 2e-3, "warmup_epochs": 1.5, "label_smoothing": 0.2,
                                "weight_decay": 0.1}, "vit_slot_micro_p4", model_kw={"activation": "relu"})
    tc = protocol.train_config(cfg)
    assert (tc.optimizer, tc.schedule, tc.epochs, tc.lr, tc.warmup_epochs, tc.label_smoothing, tc.weight_decay) == \
        ("adamw", "cosine", 7, 2e-3, 1.5, 0.2, 0.1)
    assert tc.grad_clip is None and cfg.model_kw == {"activation": "relu"}
    # bf16 on CUDA; on the CPU only when asked (it halves a slot ViT's speed on the dev CPU)
    assert (tc.bf16, protocol.train_config(cfg, "cuda").bf16) == (False, True)
    assert protocol.train_config(protocol.ArchConfig(cpu_bf16=True)).bf16


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"lr": 0.0}, {"label_smoothing": 1.0}, {"model": "no_such_net"}])
def test_bad_recipe_is_refused(bad: dict) -> None:
    with pytest.raises(ParameterError):
        protocol.ArchConfig(**bad)


def test_jobs_fail_early_on_a_bad_network() -> None:
    data = type("D", (), {"num_classes": 2, "image_size": 8})()
    for kw, msg in [({"mixer": "linear"}, "unknown mixer"), ({"activation": "swish"}, "unknown activation"),
                    ({"patch_size": 3}, "not divisible")]:
        cfg = protocol.ArchConfig(model="vit_slot_micro_p4", model_kw=kw)
        with pytest.raises(ParameterError, match=msg):
            protocol.jobs({"a": ("standard", cfg)}, data)
    with pytest.raises(ParameterError, match="no arm"):
        protocol.jobs({"a": ("sgdr", protocol.ArchConfig())}, data)


def test_img_size_goes_only_to_networks_that_take_it() -> None:
    cfg = protocol.ArchConfig(model="cnn3", model_kw={"width": 8})
    net = protocol.build_model(cfg, 3, 16, 0)  # cnn3 has no img_size: must not be passed
    assert net(torch.zeros(1, 3, 16, 16)).shape == (1, 3)
    vit = protocol.build_model(protocol.ArchConfig(model="vit_slot_micro_p4"), 3, 16, 0)
    assert vit.num_tokens == 1 + 16


def test_model_cost_counts_attention() -> None:
    net = models.create("vit_slot_micro_p4", num_classes=2, img_size=8, depth=1)
    c = protocol.model_cost(net, 8)
    n, d = 1 + 4, 64
    # at least the two N×N attention products (2 FLOPs a multiply-add) and the qkv projection
    assert c["mflops"] * 1e6 >= 2 * 2 * n * n * d + 2 * n * d * 3 * d
    assert c["params"] == sum(p.numel() for p in net.parameters())


# -- gradient routing through fit ---------------------------------------------------------------
def test_routing_trains_gates_on_their_own_optimizer_and_resumes(tmp_path) -> None:
    x, y = _toy()
    model = _gated_vit()
    gates, others = split_gate_parameters(model)
    g0 = [p.detach().clone() for p in gates]
    w0 = [p.detach().clone() for p in others]
    update = GradientRouting(model, lr=0.05)
    cfg = TrainConfig(epochs=1, optimizer="adamw", lr=1e-3, progress=False)
    res = fit(model, TensorLoader(x, y, 16, seed=0), None, cfg, params=others, update=update,
              checkpoint_dir=tmp_path)
    assert res.steps == 3
    assert all(not torch.equal(a, b) for a, b in zip(g0, gates))
    assert any(not torch.equal(a, b) for a, b in zip(w0, others))
    # the gate optimiser took one step a batch; its state is in the checkpoint and comes back
    assert update.opt.state[gates[0]]["step"].item() == 3
    model2 = _gated_vit()
    update2 = GradientRouting(model2, lr=0.05)
    cfg2 = TrainConfig(epochs=2, optimizer="adamw", lr=1e-3, progress=False)
    fit(model2, TensorLoader(x, y, 16, seed=0), None, cfg2, params=split_gate_parameters(model2)[1],
        update=update2, checkpoint_dir=tmp_path)
    assert update2.opt.state[split_gate_parameters(model2)[0][0]]["step"].item() == 6


def test_routing_arm_needs_gates() -> None:
    with pytest.raises(ValueError, match="gates"):
        GradientRouting(models.create("vit_slot_micro_p4", num_classes=2, img_size=8))


# -- traces ---------------------------------------------------------------------------------------
def test_traces_log_eps_gates_and_densities() -> None:
    net = models.create("vit_slot_micro_p4", num_classes=2, img_size=8, depth=2, activation="crrelu", gates="hag")
    with torch.no_grad():
        for i, g in enumerate(gate_parameters(net)):
            g.fill_(0.0)  # σ(0) = 0.5 everywhere
    row = traces.trace(net)
    assert row["eps_0"] == pytest.approx(0.01) and row["eps_1"] == pytest.approx(0.01)
    assert row["gate_q10"] == row["gate_q90"] == pytest.approx(0.5)
    s = traces.final_structure(net)
    assert len(s["gates"]) == 4 and len(s["eps"]) == 2 and s["den"] == []
    assert traces.trace(models.create("cnn3", num_classes=2)) == {}


# -- probes and figures ----------------------------------------------------------------------------
def test_uniform_attention_rolls_out_to_a_uniform_map() -> None:
    n = 1 + 4  # class token and a 2×2 grid
    maps = [torch.full((1, 2, n, n), 1.0 / n)] * 3
    heat = figures.rollout_maps(maps, 0, (2, 2), prefix=1)
    # (A + I)/2 keeps the patch columns of the class-token row equal: the map is flat
    np.testing.assert_allclose(heat, np.full((2, 2), 0.25))
    # mean-pooled models (no prefix): every row counts
    heat0 = figures.rollout_maps([torch.eye(4)[None, None]], 0, (2, 2), prefix=0)
    np.testing.assert_allclose(heat0, np.full((2, 2), 0.25))


def test_attention_maps_are_row_stochastic_for_softmax() -> None:
    net = models.create("vit_slot_micro_p4", num_classes=2, img_size=8, depth=2).train()
    maps = probes.attention_maps(net, torch.randn(3, 3, 8, 8))
    assert len(maps) == 2 and maps[0].shape == (3, 2, 5, 5)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(3, 2, 5))
    assert net.training  # restored
    spectral = models.create("vit_spectformer_micro_p4", num_classes=2, img_size=8, alpha=2)
    assert len(probes.attention_maps(spectral, torch.randn(1, 3, 8, 8))) == 2  # only attention blocks
    assert [f.shape for f in probes.spectral_filters(spectral)] == [(2, 2), (2, 2)]


def test_fixed_images_take_the_first_test_image_of_each_class() -> None:
    y = torch.tensor([2, 0, 1, 0, 2, 1])
    data = type("D", (), {"y_test": y, "x_test": torch.full((6, 3, 4, 4), 255, dtype=torch.uint8),
                          "num_classes": 3})()
    x, x01, idx = probes.fixed_images(data, 2)
    assert idx == [1, 2] and torch.equal(x01, torch.ones(2, 3, 4, 4)) and x.shape == (2, 3, 4, 4)


def _fake_result() -> SweepResult:
    jobs = []
    for arm, base in [("gelu", 30.0), ("crrelu", 31.0)]:
        for seed in (0, 1):
            hist = [{"epoch": e, "train_loss": 2.0 / e, "test_acc": base + e + seed, "eps_0": 0.01 * e}
                    for e in (1, 2, 3)]
            jobs.append({"arm": arm, "seed": seed, "metrics": {"top1": base + 3 + seed, "params": 1000.0,
                                                               "mflops": 2.0, "images_per_s": 100.0, "gap": 1.0},
                         "extra": {"title": arm.upper(), "history": hist,
                                   "structure": {"gates": [[0.2, 0.8]], "eps": [0.03], "den": []}}})
    return SweepResult(jobs)


def test_figures_and_table_from_a_sweep() -> None:
    r = _fake_result()
    fig, data = figures.cost_scatter(r, "setting")
    pts = {p["arm"]: p for p in data["points"]}
    assert pts["crrelu"]["mean"] == pytest.approx(34.5) and pts["crrelu"]["min"] == 34.0
    fig, data = figures.trace_curves(r, ["eps_0"], "setting", "ε", arms=["crrelu"])
    assert data["series"]["crrelu"]["eps_0"]["mean"] == pytest.approx([0.01, 0.02, 0.03])
    fig, data = figures.gate_histograms(r, "setting")
    assert data["arms"]["gelu"]["n"] == 4 and data["arms"]["gelu"]["mean"] == pytest.approx(0.5)
    fig, data = figures.sweep_curve({0.5: [1.0, 3.0], 1.0: [2.0]}, "setting", "den", {"control": [1.0, 2.0]})
    assert data["mean"] == [2.0, 2.0]
    md = tables.summary_table(r)
    assert "34.50" in md and "`crrelu`" in md
    assert crrelu.eps_keys(r) == ["eps_0"]
    assert crrelu.metrics_by_seed(r)[0]["eps_mean"] == pytest.approx(0.03)


def test_crrelu_arms() -> None:
    arms = crrelu.arm_configs({"model": "vit_slot_micro_p4", "activations": ["gelu", "crrelu"], "epochs": 2})
    # the default slot is dropped, so chapter 20's GELU arm is the family's plain ViT
    assert {k: c.model_kw for k, (_, c) in arms.items()} == {"gelu": {}, "crrelu": {"activation": "crrelu"}}
    assert all(a == "standard" and c.epochs == 2 for a, c in arms.values())
    with pytest.raises(ParameterError, match="activation"):
        crrelu.arm_configs({"model": "vit_slot_micro_p4", "activations": ["swish"]})


def test_chapters_share_the_checkpoints_of_the_same_network(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("REPRO_CHECKPOINTS", str(tmp_path))
    run = type("R", (), {"env": {"source_hash": "abc"}, "tier": "cpu", "run_id": "r1"})()
    a = protocol.ArchConfig(model="vit_slot_micro_p4", model_kw={"activation": "gelu"}, title="GELU")
    b = protocol.ArchConfig(model="vit_slot_micro_p4", model_kw={"mixer": "softmax"}, title="softmax")
    c = protocol.ArchConfig(model="vit_slot_micro_p4", model_kw={"activation": "relu"})
    net = "SlotViT(...)"
    d = protocol.shared_checkpoint_dir
    assert d(run, "standard", a, net, "fp", 0) == d(run, "standard", b, net, "fp", 0)
    assert d(run, "standard", a, net, "fp", 0).parent == tmp_path / "architecture" / "cpu"
    assert len({d(run, "standard", a, net, "fp", 0), d(run, "standard", c, net, "fp", 0),
                d(run, "routing", a, net, "fp", 0), d(run, "standard", a, net, "fp", 1),
                d(run, "standard", a, net, "other data", 0)}) == 5
