"""The robustness family's attack suite and sanity checks, on a tiny CNN and a synthetic task
whose answer is known by hand: four classes told apart by mean brightness.

Class k has brightness c_k ∈ {0.2, 0.4, 0.6, 0.8} ± 0.05 (plus ±0.02 pixel noise), so the
nearest-centre rule has a margin of 0.05 to 0.15 per image: an Linf attack of ε = 0.01 cannot
move any image across a boundary of that rule, and one of ε = 0.2 can move every image (add
−ε or +ε to every pixel). A small CNN learns the rule in a few hundred full-batch steps.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from repro.data import MEAN, STD
from repro.errors import ParameterError
from repro.families.robustness.attacks import (ATTACKS, AttackSpec, PixelModel, attack, check_attack,
                                               eval_subset, make_attack, robust_accuracy, robust_correct)
from repro.families.robustness.sanity import SanityReport, binomial_tolerance, is_stochastic, run_sanity_checks
from repro.train import WORK, Precision
from toys import CENTRES, brightness_data

SIZE = 8


def normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def tiny_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(one_thread) -> nn.Module:
    """The tiny CNN trained on normalised images (as TensorLoader gives them), in eval mode."""
    torch.manual_seed(0)
    net = tiny_cnn()
    x, y = brightness_data(128, 1)
    z = normalise(x)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(150):
        loss = F.cross_entropy(net(z), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def model(trained) -> nn.Module:
    return PixelModel(trained).eval()


@pytest.fixture(scope="module")
def test_set() -> tuple[torch.Tensor, torch.Tensor]:
    return brightness_data(32, 2)


class Brightness(nn.Module):
    """The nearest-centre brightness rule itself (differentiable)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -400.0 * (x.mean((1, 2, 3))[:, None] - CENTRES[None]) ** 2


class Quantised(Brightness):
    """A gradient-masked model: the brightness rule after rounding the input to eighths.
    ``round`` has zero gradient, so white-box attacks see no signal at all, while a query-based
    attack, or a transfer from the unrounded rule, still crosses the boundary."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.round(x * 8) / 8)


class Noisy(nn.Module):
    """A stochastic model: the brightness rule on the input plus fresh noise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = (x + 0.05 * torch.randn_like(x)).mean((1, 2, 3))
        return -400.0 * (b[:, None] - CENTRES[None]) ** 2


def spec_for(name: str, norm: str) -> AttackSpec:
    """A fast spec of each attack: a few steps, Square a few dozen queries. The radii can move
    the mean brightness of an 8×8×3 image by 0.1 (Linf) or 0.22 (L2 3/√192) — beyond many
    margins — so every attack fools some images. (L2 Square puts its budget into squares that
    the [0, 1] box clips, so it needs the larger radius.)"""
    eps = 0.1 if norm == "Linf" else 3.0
    steps = {"square": 40, "autoattack": 2, "fab": 3}.get(name, 3)
    return AttackSpec(name, norm=norm, eps=eps, steps=steps, seed=1)


SUITE = [(name, norm) for name, kind in ATTACKS.items() for norm in kind.norms]


# ---------------------------------------------------------------- the model and the task

def test_the_trained_model_knows_the_task_and_pgd_breaks_it_where_the_margin_says(model, test_set):
    """Hand check: every margin is ≥ 0.05, every distance to a far enough boundary ≤ 0.15,
    so ε = 0.01 leaves the (learned) brightness rule intact and ε = 0.2 defeats it."""
    x, y = test_set
    acc = robust_accuracy(model, x, y, [AttackSpec("pgd", eps=0.01, steps=10, label="pgd_small"),
                                        AttackSpec("pgd", eps=0.2, steps=10, label="pgd_large")], batch_size=32)
    assert acc["clean"] == 100.0
    assert acc["pgd_small"] >= 90.0
    assert acc["pgd_large"] == 0.0


def test_robust_accuracy_falls_with_eps_and_never_exceeds_clean(model, test_set):
    x, y = test_set
    accs = [robust_accuracy(model, x, y, [AttackSpec("pgd", eps=e, steps=5)], 32) for e in (0.0, 0.03, 0.06, 0.1)]
    assert accs[0]["pgd"] == accs[0]["clean"]          # ε = 0: the attack cannot move anything
    rob = [a["pgd"] for a in accs]
    assert rob == sorted(rob, reverse=True) and rob[-1] < rob[0]
    assert all(a["pgd"] <= a["clean"] for a in accs)


def test_pixel_model_normalises_like_the_loader(trained, test_set):
    x, _ = test_set
    torch.testing.assert_close(PixelModel(trained)(x), trained(normalise(x)))


# ---------------------------------------------------------------- every attack keeps its budget

@pytest.mark.parametrize("name,norm", SUITE, ids=[f"{n}-{m}" for n, m in SUITE])
def test_every_attack_stays_in_its_eps_ball_and_in_pixel_range(model, test_set, name, norm):
    x, y = test_set[0][:16], test_set[1][:16]
    spec = spec_for(name, norm)
    adv = attack(model, x, y, spec, batch_size=8)
    assert adv.shape == x.shape and adv.dtype == torch.float32
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    d = (adv - x).flatten(1)
    if norm == "Linf":
        assert float(d.abs().amax(1).max()) <= spec.eps + 1e-6
    else:
        assert float(d.norm(dim=1).max()) <= spec.eps + 1e-5
    # the attack does something: every image was correct and some are within reach
    assert float(d.abs().max()) > 0


@pytest.mark.parametrize("name", ["pgd", "apgd_ce", "square", "difgsm"])
def test_attacks_are_deterministic_under_the_seed_and_leave_the_global_rng_alone(model, test_set, name):
    x, y = test_set
    spec = spec_for(name, "Linf")
    torch.manual_seed(123)
    a = attack(model, x, y, spec, batch_size=16)
    after_a = torch.rand(3)
    torch.manual_seed(123)
    b = attack(model, x, y, spec, batch_size=16)
    after_b = torch.rand(3)
    assert torch.equal(a, b)
    torch.manual_seed(123)
    torch.testing.assert_close(after_a, torch.rand(3))  # as if no attack had run
    assert torch.equal(after_a, after_b)


def test_another_seed_gives_another_random_start(model, test_set):
    x, y = test_set
    a = attack(model, x, y, AttackSpec("pgd", eps=0.05, steps=1, seed=0), 32)
    b = attack(model, x, y, AttackSpec("pgd", eps=0.05, steps=1, seed=1), 32)
    assert not torch.equal(a, b)


def test_restarts_only_add_adversarial_examples(model, test_set):
    """Restart 0 is the single run, and a fooled image is kept: per image, robust under three
    restarts implies robust under one."""
    x, y = test_set
    one = robust_correct(model, x, y, AttackSpec("pgd", eps=0.04, steps=2, restarts=1), 32)
    three = robust_correct(model, x, y, AttackSpec("pgd", eps=0.04, steps=2, restarts=3), 32)
    assert not bool((three & ~one).any())


def test_dry_run_attacks_one_batch_and_counts_it(model, test_set, monkeypatch):
    x, y = test_set
    before = WORK["eval_batches"]
    assert len(attack(model, x, y, AttackSpec("fgsm", eps=0.05), batch_size=8)) == 32
    assert WORK["eval_batches"] - before == 4
    monkeypatch.setenv("REPRO_DRY_RUN", "1")
    before = WORK["eval_batches"]
    assert len(attack(model, x, y, AttackSpec("fgsm", eps=0.05), batch_size=8)) == 8
    assert WORK["eval_batches"] - before == 1


def test_perturbation_is_fp32_when_the_model_runs_in_bf16(trained, test_set):
    """The model's convolution runs in bf16 under autocast, but δ is not rounded to bf16."""
    x, y = test_set
    bf16 = PixelModel(trained, precision=Precision("cpu", bf16=True, channels_last=False)).eval()
    seen: list[torch.dtype] = []
    hook = trained[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        logits = bf16(x)
        adv = attack(bf16, x, y, AttackSpec("pgd", eps=0.05, steps=3), batch_size=32)
    finally:
        hook.remove()
    assert logits.dtype == torch.float32
    assert seen and set(seen) == {torch.bfloat16}
    assert adv.dtype == torch.float32
    delta = adv - x
    # a bf16 δ would have at most 8 significant bits: most fp32 δ values are not bf16 numbers
    assert float((delta.bfloat16().float() != delta).float().mean()) > 0.5
    assert float(delta.abs().max()) <= 0.05 + 1e-6


# ---------------------------------------------------------------- bad inputs: clear errors, no work

class CountingModel(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


@pytest.mark.parametrize("spec,match", [
    (AttackSpec("pgd", eps=-0.1), "eps"),
    (AttackSpec("pgd", eps=1.5), "eps"),
    (AttackSpec("pgd", eps=float("nan")), "eps"),
    (AttackSpec("cw", eps=0.1), "unknown attack"),
    (AttackSpec("pgd", norm="L1", eps=0.1), "unknown norm"),
    (AttackSpec("pgd", norm="L2", eps=0.1), "pgd_l2"),
    (AttackSpec("fgsm", norm="L2", eps=0.1), "norm"),
    (AttackSpec("pgd", eps=0.1, steps=0), "steps"),
    (AttackSpec("apgd_ce", eps=0.1, step_size=0.01), "step size"),
    (AttackSpec("fgsm", eps=0.1, restarts=2), "restarts"),
    (AttackSpec("square", eps=0.1, eot_samples=4), "EOT"),
    (AttackSpec("pgd", eps=0.1, seed=-1), "seed"),
])
def test_bad_specs_fail_before_any_work(model, test_set, spec, match):
    x, y = test_set
    counted = CountingModel(model).eval()
    before = WORK["eval_batches"]
    with pytest.raises(ParameterError, match=match):
        check_attack(spec)
    with pytest.raises(ParameterError, match=match):
        robust_accuracy(counted, x, y, [AttackSpec("fgsm", eps=0.1), spec], 32)
    assert counted.calls == 0 and WORK["eval_batches"] == before


def test_attack_on_a_model_in_train_mode_is_refused(trained, test_set):
    x, y = test_set
    m = CountingModel(PixelModel(trained)).train()
    try:
        with pytest.raises(ParameterError, match="train mode"):
            attack(m, x, y, AttackSpec("pgd", eps=0.05), 32)
        with pytest.raises(ParameterError, match="train mode"):
            make_attack(m, AttackSpec("pgd", eps=0.05))
        m.eval()
        m.inner.model[0].train()       # one BatchNorm/dropout-like layer left in train mode is enough
        with pytest.raises(ParameterError, match="train mode"):
            attack(m, x, y, AttackSpec("pgd", eps=0.05), 32)
        assert m.calls == 0
    finally:
        trained.eval()


@pytest.mark.parametrize("images,match", [
    (lambda x: x * 255, "divide"),
    (lambda x: (x * 255).to(torch.uint8), "uint8"),
    (normalise, "normalised"),
])
def test_images_outside_pixel_range_are_refused(model, test_set, images, match):
    x, y = test_set
    with pytest.raises(ParameterError, match=match):
        attack(model, images(x), y, AttackSpec("pgd", eps=0.05), 32)


def test_targeted_attacks_need_enough_classes(test_set):
    two = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 2)).eval()
    x, y = test_set
    with pytest.raises(ParameterError, match="at least 4 classes"):
        attack(two, x, y % 2, AttackSpec("apgd_t", eps=0.05), 32)


def test_robust_accuracy_keys_must_be_distinct(model, test_set):
    x, y = test_set
    with pytest.raises(ParameterError, match="distinct"):
        robust_accuracy(model, x, y, [AttackSpec("pgd", eps=0.01), AttackSpec("pgd", eps=0.02)], 32)


# ---------------------------------------------------------------- records and the evaluation subset

def test_the_record_holds_every_setting_as_run():
    rec = AttackSpec("pgd", eps=8 / 255, steps=10, restarts=2, eot_samples=4, seed=3).as_record()
    assert json.loads(json.dumps(rec)) == rec
    for key in ("name", "norm", "eps", "steps", "step_size", "restarts", "eot_samples", "seed", "library_version"):
        assert key in rec
    assert rec["step_size"] == pytest.approx(2.5 * (8 / 255) / 10)   # Madry's rule: 2/255
    assert rec["eot_samples"] == 4 and rec["restarts"] == 2 and rec["random_start"] is True
    fgsm = AttackSpec("fgsm", eps=0.1, steps=10).as_record()
    assert fgsm["steps"] == 1 and fgsm["step_size"] == 0.1              # what FGSM really does
    assert AttackSpec("mifgsm", eps=0.1, steps=10).as_record()["step_size"] == pytest.approx(0.01)
    assert AttackSpec("apgd_ce", eps=0.1).as_record()["step_size"] is None
    aa = AttackSpec("autoattack", eps=8 / 255, steps=100).as_record()
    assert aa["version"] == "standard" and aa["queries"] == 5000 and aa["library"] == "pyautoattack"
    assert AttackSpec("autoattack", eps=8 / 255, steps=100, eot_samples=20).as_record()["version"] == "rand"


def test_eval_subset_is_a_fixed_sorted_sample():
    a = eval_subset(10_000, 500, seed=0)
    assert a.dtype == np.int64 and len(a) == 500 and len(np.unique(a)) == 500
    assert np.all(np.diff(a) > 0) and a.min() >= 0 and a.max() < 10_000
    assert np.array_equal(a, eval_subset(10_000, 500, seed=0))
    assert not np.array_equal(a, eval_subset(10_000, 500, seed=1))
    assert np.array_equal(eval_subset(5, 5, seed=0), np.arange(5))
    with pytest.raises(ParameterError):
        eval_subset(10, 11, seed=0)


# ---------------------------------------------------------------- sanity checks

def test_binomial_tolerance_by_hand():
    assert binomial_tolerance(50.0, 100, z=2.0) == pytest.approx(10.0)      # 200·√(0.25/100)
    assert binomial_tolerance(20.0, 400, z=2.0) == pytest.approx(4.0)       # 200·√(0.16/400)
    assert binomial_tolerance(0.0, 32) == pytest.approx(100 / 32)           # at least one image


def test_a_normal_model_passes_every_check(model, test_set):
    x, y = test_set
    report = run_sanity_checks(model, x, y, AttackSpec("pgd", eps=0.05, steps=5),
                               black_box=AttackSpec("square", eps=0.05, steps=100), adaptive=True, batch_size=32)
    assert isinstance(report, SanityReport)
    assert report.passed and report.flags() == []
    assert [c.name for c in report.checks] == ["more_steps", "unbounded", "black_box"]
    more = report.check("more_steps").numbers
    assert more["steps"] == 5 and more["more_steps"] == 10 and more["more_steps_acc"] <= more["acc"] + more["tolerance"]
    assert report.check("unbounded").numbers["acc"] == 0.0
    assert report.clean == 100.0 and not report.upper_bound
    assert json.loads(json.dumps(report.as_record()))["passed"] is True


def test_a_gradient_masked_model_fails_the_black_box_and_unbounded_checks(test_set):
    """White-box PGD sees zero gradients and leaves accuracy at 100%, Square finds the
    boundary: the black-box number lies below the white-box one, which only masking explains."""
    x, y = test_set
    report = run_sanity_checks(Quantised().eval(), x, y, AttackSpec("pgd", eps=0.1, steps=5),
                               black_box=AttackSpec("square", eps=0.1, steps=200), adaptive=True, batch_size=32)
    assert report.white_box == 100.0
    bb = report.check("black_box")
    assert not bb.passed and bb.numbers["acc"] < 100.0 - bb.numbers["tolerance"]
    assert not report.check("unbounded").passed
    flags = report.flags()
    assert len(flags) == 2 and all(isinstance(f, str) and "\n" not in f for f in flags)
    assert any("gradients are masked" in f for f in flags)


def test_a_transfer_attack_stronger_than_white_box_is_flagged(test_set):
    x, y = test_set
    # made on the unrounded rule, these shift the brightness by ~0.1 and transfer to the rounded one
    transfer = attack(Brightness().eval(), x, y, AttackSpec("pgd", eps=0.1, steps=10), 32)
    report = run_sanity_checks(Quantised().eval(), x, y, AttackSpec("pgd", eps=0.1, steps=2),
                               black_box=AttackSpec("square", eps=0.1, steps=5), transfer={"cnn": transfer},
                               adaptive=True, batch_size=32)
    t = report.check("transfer:cnn")
    assert not t.passed and t.numbers["acc"] < report.white_box


def test_non_adaptive_numbers_are_upper_bounds(model, test_set):
    x, y = test_set
    kw = dict(black_box=AttackSpec("square", eps=0.05, steps=5), batch_size=32)
    assert run_sanity_checks(model, x, y, AttackSpec("pgd", eps=0.05, steps=2), **kw).upper_bound
    noisy = Noisy().eval()
    assert is_stochastic(noisy, x) and not is_stochastic(model, x)
    report = run_sanity_checks(noisy, x, y, AttackSpec("pgd", eps=0.05, steps=2), adaptive=True, **kw)
    assert report.upper_bound and "EOT" in report.adaptive_note
    eot = run_sanity_checks(noisy, x, y, AttackSpec("pgd", eps=0.05, steps=2, eot_samples=2), adaptive=True, **kw)
    assert not eot.upper_bound


def test_sanity_checks_refuse_a_black_box_white_box(model, test_set):
    x, y = test_set
    with pytest.raises(ParameterError, match="white-box"):
        run_sanity_checks(model, x, y, AttackSpec("square", eps=0.05, steps=5))
    with pytest.raises(ParameterError, match="norm and eps"):
        run_sanity_checks(model, x, y, AttackSpec("pgd", eps=0.05), black_box=AttackSpec("square", eps=0.1))


def test_evaluate_transfers_from_a_surrogate_into_the_worst_case_and_the_checks(test_set):
    """The rounded rule with the unrounded one as its surrogate: white-box PGD sees no gradient
    (100% robust), PGD crafted on the surrogate transfers; the worst case takes the transfer,
    and the transfer check flags the masking."""
    from repro.families.robustness.evaluate import EvalConfig, evaluate
    x, y = test_set
    cfg = EvalConfig(attacks=(AttackSpec("pgd", eps=0.1, steps=10),), images=0, square_queries=5, batch_size=32)
    res = evaluate(Quantised().eval(), x, y, cfg, normalised=False, surrogates={"rule": Brightness().eval()})
    assert res.robust["pgd"] == 100.0 and res.worst_of == ["pgd", "transfer_rule"]
    expected = attack(Brightness().eval(), x, y, AttackSpec("pgd", eps=0.1, steps=10), 32)
    by_hand = 100.0 * float((Quantised()(expected).argmax(1) == y).float().mean())
    assert res.robust["transfer_rule"] == pytest.approx(by_hand) and by_hand < 100.0
    assert res.worst == pytest.approx(by_hand)
    assert res.attacks["transfer_rule"]["transfer_from"] == "rule"
    assert any("transfer:rule" in f for f in res.flags)
    with pytest.raises(ParameterError, match="identifier"):
        evaluate(Quantised().eval(), x, y, cfg, normalised=False, surrogates={"final layer": Brightness().eval()})
