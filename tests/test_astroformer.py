"""Chapter 29 (Astroformer): the arms and their configs, the equal-steps schedule by hand (and
against the training loader), the structure of the three networks (the transformer stage's map
at each tier), the gap growth and its test-set variance by hand on a fake sweep, the spec's
claims, and the early errors."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from repro.data import Dataset, TensorLoader
from repro.errors import ParameterError
from repro.families.architecture import astroformer, protocol
from repro.flops import count_params
from repro.papers import load_spec
from repro.sweep import SweepResult
from repro.verdicts import binomial_var, claim_evidence

# The cpu tier's resolved recipe (20 classes × 250 images at 16 px, batch 128), with 3 epochs.
CPU = {"model_size": "micro", "low_fraction": 0.2, "resnet": True, "epochs": 3, "classes": 20, "per_class": 250,
       "image_size": 16, "batch_size": 128, "lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 1.0,
       "label_smoothing": 0.1, "drop_path": 0.0}


def _recipe(cfg: protocol.ArchConfig) -> dict:
    d = dataclasses.asdict(cfg)
    for k in ("model", "model_kw", "title", "epochs", "warmup_epochs"):
        d.pop(k)
    return d


# -- arms ---------------------------------------------------------------------------------------
def test_arms_are_three_networks_at_two_sizes_in_priority_order() -> None:
    arms = astroformer.arm_configs(CPU)
    assert list(arms) == ["ccct_low", "cctt_low", "ccct_full", "cctt_full", "resnet_low", "resnet_full"]
    assert {a for a, _ in arms.values()} == {"standard"}
    cfg = {k: c for k, (_, c) in arms.items()}
    assert {k: c.model for k, c in cfg.items()} == {
        "ccct_low": "astroformer_micro", "ccct_full": "astroformer_micro", "cctt_low": "coatnet_micro",
        "cctt_full": "coatnet_micro", "resnet_low": "resnet8", "resnet_full": "resnet8"}
    # the width-matched ResNet: the hybrids' stem (16) and stage widths (16, 32, 64, 128)
    assert cfg["resnet_full"].model_kw == cfg["resnet_low"].model_kw == {"num_filters": [16, 16, 32, 64, 128]}
    assert cfg["ccct_full"].model_kw == cfg["cctt_low"].model_kw == {}
    # full: the tier's epochs; low: 50 img/class = 1 000 images, 7 steps an epoch against 39,
    # so round(3 · 39 / 7) = round(16.71) = 17 epochs and 1 · 39 / 7 warm-up epochs
    for k, c in cfg.items():
        if k.endswith("_full"):
            assert (c.epochs, c.warmup_epochs) == (3, 1.0)
        else:
            assert c.epochs == 17 and c.warmup_epochs == pytest.approx(39 / 7)
    # everything else is the one recipe (same lr, batch, weight decay, smoothing, precision)
    base = _recipe(cfg["ccct_full"])
    assert all(_recipe(c) == base for c in cfg.values())
    assert base["batch_size"] == 128 and base["cpu_bf16"] is False
    assert cfg["ccct_low"].title == "C-C-C-T · 20%" and cfg["resnet_full"].title == "ResNet · 100%"
    # without the ResNet: the four hybrid arms
    assert list(astroformer.arm_configs({**CPU, "resnet": False})) == ["ccct_low", "cctt_low", "ccct_full",
                                                                       "cctt_full"]


def test_tiny_arms_and_the_resnets_widths() -> None:
    arms = astroformer.arm_configs({**CPU, "model_size": "tiny", "image_size": 32, "classes": 100, "per_class": 0,
                                    "batch_size": 256, "epochs": 15, "warmup_epochs": 3.0})
    assert arms["ccct_full"][1].model == "astroformer_tiny" and arms["cctt_full"][1].model == "coatnet_tiny"
    assert arms["resnet_full"][1].model_kw == {"num_filters": [48, 48, 96, 192, 384]}
    # all of CIFAR-100: 195 steps an epoch at batch 256, the 20% subset 39: exactly 5 × the epochs
    assert (arms["ccct_low"][1].epochs, arms["ccct_low"][1].warmup_epochs) == (75, 15.0)


# -- equal steps --------------------------------------------------------------------------------
def test_steps_per_epoch_by_hand_and_as_the_loader_counts() -> None:
    assert astroformer.steps_per_epoch(5000, 128) == 39      # 39.06: the last partial batch is dropped
    assert astroformer.steps_per_epoch(1000, 128) == 7       # 7.8
    assert astroformer.steps_per_epoch(50000, 256) == 195
    assert astroformer.steps_per_epoch(10000, 256) == 39
    assert astroformer.steps_per_epoch(12, 32) == 1          # fewer images than a batch: one step
    for n, b in [(5000, 128), (1000, 128), (64, 32), (12, 32), (100, 7)]:
        loader = TensorLoader(torch.zeros(n, 3, 2, 2, dtype=torch.uint8), torch.zeros(n, dtype=torch.long), b,
                              train=True)
        assert len(loader) == astroformer.steps_per_epoch(n, b), (n, b)
    with pytest.raises(ParameterError):
        astroformer.steps_per_epoch(0, 128)


def test_equal_steps_by_hand() -> None:
    # cpu: 3 epochs × 39 = 117 steps; 117 / 7 = 16.71 → 17 epochs × 7 = 119 steps (within one
    # low-data epoch); warm-up 1 epoch of 39 steps = 39/7 low-data epochs
    s = astroformer.equal_steps(3, 1.0, 39, 7)
    assert s == {"epochs_low": 17, "warmup_low": pytest.approx(39 / 7), "ratio": pytest.approx(39 / 7),
                 "steps_full": 117, "steps_low": 119}
    # gpu: a whole ratio of 5 gives exactly the same steps
    s = astroformer.equal_steps(15, 3.0, 195, 39)
    assert (s["epochs_low"], s["warmup_low"], s["steps_full"], s["steps_low"]) == (75, 15.0, 2925, 2925)
    # smoke: 2 steps an epoch against 1
    assert astroformer.equal_steps(1, 0.0, 2, 1)["epochs_low"] == 2


def test_per_class_sizes() -> None:
    assert astroformer.per_class_sizes({"low_fraction": 0.2, "per_class": 0}) == {"low": 100, "full": 500}
    assert astroformer.per_class_sizes({"low_fraction": 0.2, "per_class": 250}) == {"low": 50, "full": 250}
    assert astroformer.per_class_sizes({"low_fraction": 0.2, "per_class": 16}) == {"low": 3, "full": 16}  # 3.2
    for frac in (0.0, 1.0, 1.5):
        with pytest.raises(ParameterError, match="low_fraction"):
            astroformer.per_class_sizes({"low_fraction": frac, "per_class": 250})
    with pytest.raises(ParameterError, match="per_class"):
        astroformer.per_class_sizes({"low_fraction": 0.2, "per_class": 600})


def _data(per_class: int, classes: int = 2, test: int = 6, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    n = per_class * classes
    return Dataset(torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8),
                   torch.arange(n) % classes,
                   torch.zeros(test, 3, 16, 16, dtype=torch.uint8), torch.arange(test) % classes,
                   classes=list(range(classes)), class_names=["a", "b"][:classes], checksum="x",
                   info={"per_class": per_class})


def test_schedule_table_counts_the_loaders_steps() -> None:
    params = {**CPU, "classes": 2, "per_class": 40, "batch_size": 16, "epochs": 2}
    sched = astroformer.schedule(params)
    # full 80 images → 5 steps; low 8 per class = 16 images → 1 step; 2 · 5 / 1 = 10 epochs
    assert sched["full"]["steps"] == 10 and sched["low"]["epochs"] == 10 and sched["low"]["steps"] == 10
    md = astroformer.schedule_table(sched, {"low": _data(8), "full": _data(40)}, 16)
    assert "| low | 8 × 2 = 16 | 1 | 10 |" in md
    with pytest.raises(ParameterError, match="schedule assumed"):
        astroformer.schedule_table(sched, {"low": _data(9), "full": _data(40)}, 16)


# -- networks -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("size", "image", "ccct_tokens", "cctt_tokens"),
                         [("micro", 16, [4], [16, 4]), ("tiny", 32, [16], [64, 16])])
def test_the_transformer_stages_see_these_maps(size: str, image: int, ccct_tokens: list, cctt_tokens: list) -> None:
    # cpu tier (micro, 16 px): Astroformer's one T stage attends over 2×2 = 4 tokens (why its
    # claims are not judged there); gpu/paper (tiny, 32 px): 4×4 = 16, CoAtNet's 8×8 and 4×4.
    arms = astroformer.arm_configs({**CPU, "model_size": size, "image_size": image})
    nets = astroformer.networks(arms, image, 10)
    got, widths = {}, {}
    for stack, net in nets.items():
        rows = astroformer.structure(net, image)
        assert sum(r["params"] for r in rows) == count_params(net)
        got[stack] = [r["tokens"] for r in rows if r.get("tokens")]
        stages = [r for r in rows if r["part"].startswith("stage")]
        assert [r["side"] for r in stages] == [image, image // 2, image // 4, image // 8]  # the same maps
        widths[stack] = [r["channels"] for r in stages]
    assert got == {"ccct": ccct_tokens, "cctt": cctt_tokens, "resnet": []}
    assert widths["ccct"] == widths["cctt"] == widths["resnet"]
    if size == "micro":
        md = astroformer.structure_table(nets, image)
        assert "1 × Transformer" in md and "BasicBlock" in md and "2×2 (4 tokens)" in md


# -- the gap growth -----------------------------------------------------------------------------
def _fake(top1: dict[str, dict[int, float]], n_test: int = 2000) -> SweepResult:
    return SweepResult([{"arm": arm, "seed": s, "metrics": {"top1": v}, "n_test": n_test, "extra": {"title": arm}}
                        for arm, per in top1.items() for s, v in per.items()])


def test_gap_growth_by_hand_with_binomial_variance() -> None:
    r = _fake({"ccct_low": {0: 40.0, 1: 42.0}, "cctt_low": {0: 37.0, 1: 41.0},
               "ccct_full": {0: 60.0, 1: 61.0}, "cctt_full": {0: 59.0, 1: 61.5},
               "resnet_low": {0: 35.0}, "resnet_full": {0: 58.0}})
    g = astroformer.gap_growth(r)
    # seed 0: (40 − 37) − (60 − 59) = 3 − 1 = 2; seed 1: (42 − 41) − (61 − 61.5) = 1 + 0.5 = 1.5
    assert g[0]["value"] == pytest.approx(2.0) and g[1]["value"] == pytest.approx(1.5)
    # no per-image results: the four binomial variances add, e.g. 40%: 100²·0.4·0.6/2000 = 1.2
    want = 1.2 + 100 ** 2 * 0.37 * 0.63 / 2000 + 1.2 + 100 ** 2 * 0.59 * 0.41 / 2000
    assert g[0]["test_var"] == pytest.approx(want) and g[0]["n_test"] == 2000
    assert g[0]["test_var"] == pytest.approx(sum(binomial_var(p, 2000) for p in (40, 37, 60, 59)))
    # a seed missing one of the four jobs has no value
    r2 = _fake({"ccct_low": {0: 40.0, 1: 42.0}, "cctt_low": {0: 37.0}, "ccct_full": {0: 60.0, 1: 61.0},
                "cctt_full": {0: 59.0, 1: 61.5}})
    assert list(astroformer.gap_growth(r2)) == [0]
    # the ResNet gaps, logged and not judged: 40 − 35 = 5 at low, 60 − 58 = 2 at full, growth 3
    m = astroformer.metrics_by_seed(r)
    assert m[0] == pytest.approx({"ccct_minus_resnet_low": 5.0, "ccct_minus_resnet_full": 2.0,
                                  "gap_growth_resnet": 3.0})
    assert 1 not in m


def test_gap_growth_paired_test_variance_by_hand() -> None:
    # four test images; correct (1) or not per network:
    #   ccct_low  1 1 0 0  (50%)    cctt_low  1 0 0 0  (25%)
    #   ccct_full 1 1 1 0  (75%)    cctt_full 1 1 1 0  (75%)
    # d_i = 100·(a_low − b_low − a_full + b_full) = (0, 100, 0, 0): mean 25 = (50 − 25) − (75 − 75)
    # sample variance of d: ((−25)² · 3 + 75²) / 3 = (1875 + 5625) / 3 = 2500; / N = 625
    c = {"ccct_low": [1, 1, 0, 0], "cctt_low": [1, 0, 0, 0], "ccct_full": [1, 1, 1, 0], "cctt_full": [1, 1, 1, 0]}
    r = _fake({k: {0: 100.0 * sum(v) / 4} for k, v in c.items()}, n_test=4)
    correct = {(k, 0): torch.tensor(v, dtype=torch.bool) for k, v in c.items()}
    g = astroformer.gap_growth(r, correct)
    assert g[0] == pytest.approx({"value": 25.0, "n_test": 4, "test_var": 625.0})
    # the same numbers unpaired (four binomial terms) are wider: 100²·(.25+.1875+.1875+.1875)/4
    assert astroformer.gap_growth(r)[0]["test_var"] == pytest.approx(2031.25)


def test_the_growth_claim_is_judged_with_the_stored_variance() -> None:
    spec = load_spec("astroformer")
    claims = {c.id: c for c in spec.claims}
    assert list(claims) == ["ccct_beats_cctt_low", "ccct_beats_cctt_full", "gap_grows_as_data_shrinks"]
    for c in claims.values():   # not judged at cpu: the T stage sees 2×2 there
        assert c.tiers == ("gpu", "paper") and "2×2" in c.untestable and c.paper_value is None
    growth = claims["gap_grows_as_data_shrinks"]
    assert (growth.metric, growth.arm, growth.baseline) == (astroformer.GROWTH, astroformer.CONTRAST, None)
    rows = [{"arm": astroformer.CONTRAST, "seed": s, "metric": astroformer.GROWTH, "value": v, "n_test": 4,
             "test_var": tv} for s, v, tv in [(0, 2.0, 0.5), (1, 1.0, 0.7)]]
    ev = claim_evidence(growth, rows)
    assert ev.per_seed == {"0": 2.0, "1": 1.0} and ev.test_var == pytest.approx(0.6)


# -- errors -------------------------------------------------------------------------------------
def test_bad_names_fail_early() -> None:
    with pytest.raises(ParameterError, match="model size"):
        astroformer.arm_configs({**CPU, "model_size": "huge"})
    with pytest.raises(ParameterError, match="stack"):
        astroformer.hybrid_model("cttt", "micro")
    with pytest.raises(ParameterError, match="low_fraction"):
        astroformer.arm_configs({**CPU, "low_fraction": 2.0})
    arms = astroformer.arm_configs({**CPU, "classes": 2, "per_class": 40, "resnet": False})
    with pytest.raises(ParameterError, match="no dataset"):
        astroformer.jobs(arms, {"full": _data(40)})
    with pytest.raises(ParameterError, match="test sets"):
        astroformer.jobs(arms, {"low": _data(8, seed=1, test=4), "full": _data(40)})
