"""Chapter 32 (PubDef): the 8-bit transfer sets (rounding by hand, stored and reloaded
identically), the slot loader and the slot loss against hand-computed values, the transfer
summary on a hand-made matrix, the chapter's arms and guards, and one end-to-end job of each
target on a tiny task."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from repro.data import MEAN, STD, Dataset
from repro.errors import ParameterError
from repro.families.robustness import pubdef, transfer
from repro.families.robustness.arms.pubdef import PubDefConfig, PubDefTraining, SlotLoader, plain_config, \
    slot_loss, train_pubdef, training_sets
from repro.families.robustness.attacks import AttackSpec
from repro.families.robustness.evaluate import EvalConfig
from repro.families.robustness.protocol import RobustConfig, robust_config
from repro.families.robustness.transfer import Source, TransferConfig, TransferResult, quantise, summarise
from repro.papers import load_spec
from repro.sweep import SweepResult


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(**kw) -> RobustConfig:
    base = dict(model="cnn3", width=4, epochs=1, batch_size=16)
    return RobustConfig(**{**base, **kw})


def _sources() -> tuple[Source, Source, Source]:
    return (Source("a", _cfg(), 10, "standard"), Source("b", _cfg(width=6), 11, "standard"),
            Source("c", _cfg(), 12, "standard"))


# -- 8-bit storage ---------------------------------------------------------------------------------------------
def test_quantise_rounds_and_keeps_the_8bit_ball_by_hand():
    """ε = 8/255 → k = 8 steps. Clean 100: 100 + 8.4 rounds to 108 (inside); 100 + 8.6 rounds
    to 109, clipped to 108; 100 − 8.6 → 91, clipped to 92. Clean 3: 3 − 8 = −5 → rounds to
    −5, clipped to the box at 0. Clean 250: 258 → clipped to 255."""
    clean = torch.tensor([100, 100, 100, 3, 250], dtype=torch.uint8).view(1, 5, 1, 1)
    adv = torch.tensor([108.4, 108.6, 91.4, -5.0, 258.0]).view(1, 5, 1, 1) / 255
    q = quantise(adv, clean, 8 / 255)
    assert q.dtype == torch.uint8 and q.flatten().tolist() == [108, 108, 92, 0, 255]
    # ε not a whole number of steps: floor(255 · 0.03) = 7
    q = quantise(torch.tensor([107.6 / 255]).view(1, 1, 1, 1), torch.tensor([100], dtype=torch.uint8).view(1, 1, 1, 1),
                 0.03)
    assert int(q) == 107
    with pytest.raises(ParameterError, match="uint8"):
        quantise(adv, clean.float(), 8 / 255)


class Brightness(nn.Module):
    """A fixed classifier over 4 classes: the nearest of the brightness centres 0.2, 0.4, 0.6,
    0.8 (it takes normalised inputs, as the family's networks do)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("c", torch.tensor([0.2, 0.4, 0.6, 0.8]))
        self.register_buffer("m", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("s", torch.tensor(STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = (x * self.s + self.m).mean((1, 2, 3)).unsqueeze(1)   # brightness in [0, 1]
        return -100.0 * (b - self.c) ** 2


def _images(n: int, seed: int = 0, size: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    level = torch.tensor([0.2, 0.4, 0.6, 0.8])[y] + (torch.rand(n, generator=g) - 0.5) * 0.1
    x = (level.view(n, 1, 1, 1).expand(n, 3, size, size) * 255).round().to(torch.uint8)
    return x.contiguous(), y


def test_crafted_sets_are_uint8_within_eps_and_reload_identically(tmp_path):
    model = Brightness().eval()
    x, y = _images(40)
    spec = AttackSpec("pgd", eps=0.16, steps=10, seed=3)   # > 0.15, the farthest any image is from a boundary
    calls = []

    def make():
        calls.append(1)
        return {"adv": transfer.craft(model, x, y, spec, batch_size=16)}
    key = {"set": "test", "attack": spec.as_record()}
    first = transfer.cached(tmp_path, key, make)["adv"]
    again = transfer.cached(tmp_path, key, make)["adv"]
    assert len(calls) == 1 and len(list(tmp_path.glob("transfer-*.pt"))) == 1
    assert first.dtype == torch.uint8 and torch.equal(first, again)
    d = first.to(torch.int16) - x.to(torch.int16)
    assert int(d.abs().max()) == 40                     # floor(255 · 0.16): PGD goes to the edge of the ball
    # the attack fools the model it was crafted on, clean images are all classified right
    def acc(u8):
        z = (u8.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
        return float((model(z).argmax(1) == y).float().mean())
    assert acc(x) == 1.0 and acc(first) == 0.0
    # another key, another file
    transfer.cached(tmp_path, {**key, "set": "other"}, make)
    assert len(calls) == 2


# -- the slot loader and the loss ------------------------------------------------------------------------------
def _sets(n_src: int, copies: int, n: int) -> torch.Tensor:
    """Set value of source k, copy c, image i: 100 + 10·k + c, everywhere in the image."""
    out = torch.empty((n_src, copies, n, 3, 4, 4), dtype=torch.uint8)
    for k in range(n_src):
        for c in range(copies):
            out[k, c] = 100 + 10 * k + c
    return out


def _unnormalise(x: torch.Tensor) -> torch.Tensor:
    return (x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)) * 255


@pytest.mark.parametrize("mode", ["mix", "stack"])
def test_slot_loader_layout(mode):
    n = 12
    clean = (torch.arange(n, dtype=torch.uint8) * 5).view(n, 1, 1, 1).expand(n, 3, 4, 4).contiguous()
    labels = torch.arange(n) % 4
    loader = SlotLoader(clean, labels, _sets(3, 2, n), batch_size=4, seed=1, mode=mode, augment=False)
    assert loader.slots == (2 if mode == "mix" else 4) and len(loader) == 3
    idx = loader.batches()[0]
    x, y = loader.fetch(idx)
    k = loader.slots
    assert x.shape == (4 * k, 3, 4, 4) and torch.equal(y, labels[idx].repeat(k))
    v = _unnormalise(x).round()[:, 0, 0, 0].view(k, 4)
    assert v[0].tolist() == (idx * 5).float().tolist()          # the clean slot, in batch order
    if mode == "mix":
        assert all(100 <= a <= 121 and (a - 100) % 10 in (0, 1) for a in v[1].tolist())
    else:
        for s in range(3):                                     # slot s + 1: source s, either copy
            assert all(a in (100 + 10 * s, 101 + 10 * s) for a in v[s + 1].tolist())
    # every draw is a function of (seed, epoch): the same batch twice is the same
    loader.set_epoch(0)
    x2, _ = loader.fetch(idx, loader._generator(2))
    x1, _ = loader.fetch(idx, loader._generator(2))
    assert torch.equal(x1, x2)


def test_mix_mode_draws_every_source_and_copy_over_an_epoch():
    n = 400
    clean = torch.zeros((n, 3, 4, 4), dtype=torch.uint8)
    loader = SlotLoader(clean, torch.zeros(n, dtype=torch.long), _sets(2, 2, n), batch_size=400, seed=0, augment=False)
    x, _ = loader.fetch(loader.batches()[0])
    v = _unnormalise(x[n:]).round()[:, 0, 0, 0]
    counts = {int(a): int((v == a).sum()) for a in v.unique()}
    assert set(counts) == {100, 101, 110, 111} and min(counts.values()) > 60   # about 100 each


def test_slot_loader_refuses_misaligned_sets():
    clean = torch.zeros((5, 3, 4, 4), dtype=torch.uint8)
    with pytest.raises(ParameterError, match="aligned"):
        SlotLoader(clean, torch.zeros(5, dtype=torch.long), _sets(1, 1, 4), batch_size=2)
    with pytest.raises(ParameterError, match="mode"):
        SlotLoader(clean, torch.zeros(5, dtype=torch.long), _sets(1, 1, 5), batch_size=2, mode="both")


def test_slot_loss_by_hand():
    """Two slots of two images; logits [0, 0] give CE = ln 2, logits [ln 3, 0] with label 0
    give CE = ln(4/3), with label 1 ln 4. Clean slot (labels 0, 0): logits [0, 0] and
    [ln 3, 0] → mean (ln 2 + ln 4/3)/2. Adversarial slot (labels 0, 0): [ln 3, 0] twice with
    the second labelled... labels are the same per slot: y = [0, 1, 0, 1]. Slot 0: ln 2 and
    CE([ln 3, 0], 1) = ln 4 → (ln 2 + ln 4)/2 = 1.5 ln 2; slot 1: CE([ln 3, 0], 0) = ln(4/3)
    and CE([0, 0], 1) = ln 2 → (ln 4/3 + ln 2)/2. Weights (1, 3) → (0.25, 0.75)."""
    l3 = math.log(3.0)
    logits = torch.tensor([[0.0, 0.0], [l3, 0.0], [l3, 0.0], [0.0, 0.0]])
    y = torch.tensor([0, 1, 0, 1])

    class Fixed(nn.Module):
        def forward(self, x):
            return logits
    loss, out = slot_loss([1.0, 3.0])(Fixed(), torch.zeros(4, 1), y)
    want = 0.25 * 1.5 * math.log(2) + 0.75 * (math.log(4 / 3) + math.log(2)) / 2
    assert float(loss) == pytest.approx(want, rel=1e-6) and out is logits
    # equal weights: the plain mean CE over the whole batch
    loss, _ = slot_loss([1.0, 1.0])(Fixed(), torch.zeros(4, 1), y)
    assert float(loss) == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-6)
    with pytest.raises(ParameterError, match="equal slots"):
        slot_loss([1.0, 1.0, 1.0])(Fixed(), torch.zeros(4, 1), y)
    with pytest.raises(ParameterError, match="≥ 0"):
        slot_loss([1.0, -1.0])


def test_pubdef_training_weights_modes_and_errors():
    a, b, _ = _sources()
    spec = AttackSpec("pgd", eps=8 / 255, steps=10)
    d = PubDefTraining(sources=(a, b), attack=spec)
    assert d.slots == 2 and d.slot_weights() == (0.5, 0.5)
    assert PubDefTraining((a, b), spec, weights=(1.0, 3.0)).slot_weights() == (0.25, 0.75)
    st = PubDefTraining((a, b), spec, mode="stack", weights=(2.0, 1.0, 1.0))
    assert st.slots == 3 and st.slot_weights() == (0.5, 0.25, 0.25)
    assert sum(PubDefTraining((a, b), spec, mode="stack").slot_weights()) == pytest.approx(1.0)
    assert d.copy_spec(2).seed == spec.seed + 2 and d.grad_evals(100) == 2 * 1 * 100 * 10
    for kw, msg in (({"mode": "blend"}, "mode"), ({"weights": (1.0, 1.0, 1.0)}, "2 slots"),
                    ({"weights": (0.0, 0.0)}, "positive sum"), ({"copies": 0}, "copies"),
                    ({"attack": AttackSpec("pgd_l2", norm="L2", eps=0.5)}, "L∞")):
        with pytest.raises(ParameterError, match=msg):
            PubDefTraining(**{"sources": (a, b), "attack": spec, **kw})
    with pytest.raises(ParameterError, match="repeat"):
        PubDefTraining((a, a), spec)


# -- configs ---------------------------------------------------------------------------------------------------
def _tc(seen=("a", "b")) -> TransferConfig:
    return TransferConfig(sources=_sources(), attacks=(AttackSpec("pgd", steps=2), AttackSpec("mifgsm", steps=2)),
                          seen=seen, images=8)


def test_transfer_config_checks():
    tc = _tc()
    assert tc.held_out == ("c",)
    with pytest.raises(ParameterError, match="not in the zoo"):
        _tc(seen=("a", "z"))
    with pytest.raises(ParameterError, match="distinct"):
        TransferConfig(sources=(_sources()[0], _sources()[0]), attacks=(AttackSpec("pgd"),))
    with pytest.raises(ParameterError, match="distinct"):
        TransferConfig(sources=_sources(), attacks=(AttackSpec("pgd"), AttackSpec("pgd", steps=3)))
    with pytest.raises(ParameterError, match="L∞"):
        TransferConfig(sources=_sources(), attacks=(AttackSpec("pgd_l2", norm="L2", eps=0.5),))
    with pytest.raises(ParameterError, match="unknown attack"):
        TransferConfig(sources=_sources(), attacks=(AttackSpec("zoo"),))
    with pytest.raises(ParameterError, match="identifier"):
        Source("a-b", _cfg())


def test_pubdef_config_recipe_keys_the_defence_not_the_evaluation():
    a, b, _ = _sources()
    d = PubDefTraining((a, b), AttackSpec("pgd", steps=2))
    start = _cfg(width=8)
    cfg = PubDefConfig(model="cnn3", width=8, epochs=2, init=start, defence=d, transfer=_tc())
    other_eval = dataclasses.replace(cfg, transfer=dataclasses.replace(_tc(), images=4), title="x")
    assert cfg.recipe() == other_eval.recipe() and "transfer" not in cfg.recipe()
    assert cfg.recipe() != dataclasses.replace(cfg, defence=dataclasses.replace(d, copies=2)).recipe()
    assert cfg.as_record()["transfer"]["held_out"] == ["c"]
    # without a defence the target is the standard arm's model of the same recipe
    undefended = PubDefConfig(model="cnn3", width=8, epochs=2, transfer=_tc())
    assert type(plain_config(undefended)) is RobustConfig
    assert plain_config(undefended).recipe() == RobustConfig(model="cnn3", width=8, epochs=2).recipe()
    with pytest.raises(ParameterError, match="seen sources"):
        PubDefConfig(model="cnn3", width=8, init=start, defence=d, transfer=_tc(seen=("a",)))
    with pytest.raises(ParameterError, match="no adversarial"):
        from repro.families.robustness.training import AdvTrainConfig
        PubDefConfig(model="cnn3", width=8, defence=d, adv=AdvTrainConfig("fgsm_rs"))


@pytest.mark.parametrize("tier", ["smoke", "cpu", "gpu", "paper"])
def test_arms_at_every_tier_cover_every_claim(tier):
    spec = load_spec("pubdef")
    p = spec.resolve(tier)
    arms = pubdef.arm_configs(p)
    assert list(arms) == list(pubdef.TARGETS) and all(a == "pubdef" for a, _ in arms.values())
    for c in spec.claims:
        assert c.arm in arms and c.baseline in arms
    cfg = {k: c for k, (_, c) in arms.items()}
    assert cfg["standard"].defence is None and not cfg["standard"].adversarial
    assert cfg["at"].adversarial and cfg["at"].adv.method == p["at_method"]
    pd = cfg["pubdef"]
    assert pd.init.recipe() == plain_config(cfg["standard"]).recipe()     # PubDef fine-tunes the standard target
    assert pd.epochs == p["ft_epochs"] and pd.defence.copies == p["train_copies"]
    assert [s.name for s in pd.defence.sources] == list(pubdef.SEEN) and pd.transfer.held_out == pubdef.HELD_OUT
    assert pd.transfer.seed == pd.eval.seed and pd.eval.images == p["eval_images"]
    if p["transfer_images"]:   # a superset of the white-box subset
        assert (pd.transfer.images, pd.transfer.contains) == (p["transfer_images"], p["eval_images"])
    else:                      # the white-box subset itself
        assert (pd.transfer.images, pd.transfer.contains) == (p["eval_images"], 0)
    assert [a.key for a in pd.transfer.attacks] == list(p["transfer_attacks"])
    # every target is scored on the same zoo, and no source is a target
    assert cfg["standard"].transfer == cfg["at"].transfer == pd.transfer
    seeds = {s.seed for s in pd.transfer.sources}
    assert len(seeds) == 4 and not seeds & set(p["seeds"])
    at_src = next(s for s in pd.transfer.sources if s.name == "fgsm_at").config.adv
    assert at_src.method == "fgsm_rs" and at_src.eps == p["at_eps"]


def test_paper_tier_is_the_papers_recipe():
    p = load_spec("pubdef").resolve("paper")
    d = pubdef.arm_configs(p)["pubdef"][1]
    assert (d.defence.attack.name, d.defence.attack.effective_steps(), d.defence.copies, d.defence.mode) == \
        ("pgd", 10, 4, "mix")
    assert d.defence.attack.eps == pytest.approx(8 / 255) and d.defence.slot_weights() == (0.5, 0.5)
    assert (d.epochs, d.lr, d.batch_size) == (50, 0.1, 128)
    assert all(a.effective_steps() == 100 for a in d.transfer.attacks)


@pytest.mark.parametrize("kw, msg", [({"transfer_attacks": ["pgd", "sparse"]}, "unknown attack"),
                                     ({"transfer_attacks": []}, "at least one"),
                                     ({"pubdef_mode": "both"}, "mode"),
                                     ({"pubdef_weights": [1.0, 1.0, 1.0]}, "2 slots"),
                                     ({"zoo_seed": 0}, "zoo_seed"),
                                     ({"ft_epochs": 0}, "ft_epochs"),
                                     ({"min_transfer_drop": 120.0}, "min_transfer_drop"),
                                     ({"heldout_model": "nonet"}, "unknown model"),
                                     ({"heldout_model": "vgg11_bn"}, "cannot take 16-px"),
                                     ({"eval_eps": 8.0}, "eps"),
                                     ({"transfer_images": 8}, "transfer_images"),
                                     ({"transfer_images": 41}, "transfer_images")])
def test_bad_settings_fail_before_work(kw, msg):
    p = {**load_spec("pubdef").resolve("smoke"), **kw}
    with pytest.raises(ParameterError, match=msg):
        pubdef.arm_configs(p)


# -- transfer results by hand ----------------------------------------------------------------------------------
def test_summarise_a_hand_made_matrix():
    """Seen a: (40, 30), b: (20, 50); held out c: (35, 25). Worst 20 (b); mean 200/6;
    seen worst 20, mean 35; held-out worst 25, mean 30."""
    pairs = {"a": {"pgd": 40.0, "mi": 30.0}, "b": {"pgd": 20.0, "mi": 50.0}, "c": {"pgd": 35.0, "mi": 25.0}}
    s = summarise(pairs, seen=["a", "b"])
    assert s == pytest.approx({"transfer_worst": 20.0, "transfer_mean": 200 / 6, "transfer_worst_seen": 20.0,
                               "transfer_mean_seen": 35.0, "transfer_worst_heldout": 25.0,
                               "transfer_mean_heldout": 30.0})
    assert set(summarise(pairs)) == {"transfer_worst", "transfer_mean", "transfer_worst_heldout", "transfer_mean_heldout"}
    r = TransferResult(n=500, indices=[], clean=60.0, pairs=pairs, union=12.0, seen=["a", "b"], held_out=["c"])
    assert r.worst_pair() == ("b", "pgd") and r.metrics()["transfer_union"] == 12.0
    assert r.test_var()["transfer_worst"] == pytest.approx(100 ** 2 * 0.2 * 0.8 / 500)
    # white-box PGD at 20%: tolerance 2·√(0.2·0.8/500)·100 ≈ 3.6 → 20 ≥ 16.4 passes; 30% fails
    assert r.check_white_box(20.0) == [] and r.flags == []
    assert "masked" in r.check_white_box(30.0)[0] and len(r.flags) == 1


def test_transfer_subset_contains_the_white_box_subset():
    from repro.families.robustness.attacks import eval_subset
    wb = eval_subset(2000, 250, 7).tolist()
    big = transfer.subset_indices(2000, 1000, 7, contains=250)
    assert len(big) == len(set(big)) == 1000 and big == sorted(big) and set(wb) <= set(big)
    assert big == transfer.subset_indices(2000, 1000, 7, contains=250)          # a function of the seed
    assert transfer.subset_indices(2000, 250, 7) == wb == transfer.subset_indices(2000, 250, 7, contains=250)
    assert transfer.subset_indices(40, 0, 3) == list(range(40))
    with pytest.raises(ParameterError, match="contain"):
        dataclasses.replace(_tc(), images=4, contains=8)


def test_white_box_check_on_the_shared_images():
    """Per-image robustness of two pairs on 6 images (indices 10…15); the white-box attack
    ran on images 11, 12 and 13 only, where pair a/x keeps 1 of 3 (33.3%) and b/x 3 of 3.
    White-box 100% there: tolerance max(2·0, 100/3) = 33.3 → 33.3 < 66.7 fails; white-box
    50%: tolerance 2·√(0.25/3)·100 ≈ 57.7 → passes."""
    a = torch.tensor([True, True, False, False, True, True])
    b = torch.tensor([False, True, True, True, False, False])
    r = TransferResult(n=6, indices=list(range(10, 16)), clean=100.0, pairs={"a": {"x": 66.7}, "b": {"x": 50.0}},
                       union=0.0, seen=[], held_out=["a", "b"], correct={"a": {"x": a}, "b": {"x": b}})
    assert "33.3%" in r.check_white_box(100.0, indices=[11, 12, 13])[0]
    assert r.check_white_box(50.0, indices=[11, 12, 13]) == []
    assert r.check_white_box(50.0, indices=[99]) == []                  # nothing shared: skipped


def test_evaluate_transfer_counts_clean_and_every_pair():
    """The target is the brightness classifier; one 'transfer' set leaves the images as they
    are, one makes them black (class 0). Robust means correct on both, so the black set keeps
    only the class-0 images; every-pair = the same."""
    model = Brightness().eval()
    x, y = _images(40, seed=1)
    sets = transfer.TransferSets(indices=list(range(40)), clean=x, labels=y,
                                 adv={"a": {"same": x.clone(), "black": torch.zeros_like(x)}},
                                 self_acc={}, source_clean={})
    tc = TransferConfig(sources=(Source("a", _cfg()),),
                        attacks=(AttackSpec("pgd", label="same"), AttackSpec("pgd", label="black")), images=40)
    r = transfer.evaluate_transfer(model, sets, tc)
    share0 = 100 * float((y == 0).float().mean())
    assert r.clean == 100.0 and r.pairs["a"]["same"] == 100.0
    assert r.pairs["a"]["black"] == pytest.approx(share0) and r.union == pytest.approx(share0)
    assert r.held_out == ["a"] and "transfer_worst_seen" not in r.metrics()


# -- guards, tables and figures from a made-up sweep -------------------------------------------------------------
def _tr(clean: float, seen: float, held: float) -> dict:
    pairs = {"std": {"pgd": seen, "mifgsm": seen + 5}, "fgsm_at": {"pgd": seen + 8, "mifgsm": seen + 9},
             "std_seed2": {"pgd": held, "mifgsm": held + 3}, "arch": {"pgd": held + 10, "mifgsm": held + 12}}
    s = summarise(pairs, ["std", "fgsm_at"])
    return {"n": 500, "indices": [], "clean": clean, "pairs": pairs, "union": min(seen, held) - 3,
            "seen": ["std", "fgsm_at"], "held_out": ["std_seed2", "arch"], "worst_pair": ["std", "pgd"], **s,
            "flags": []}


def _job(arm: str, seed: int, clean: float, seen: float, held: float, flags=()) -> dict:
    tr = _tr(clean, seen, held)
    zoo = {n: {"name": n, "group": "standard", "seed": 1000 + i, "top1": 40.0, "clean_subset": 41.0,
               "own_attack_acc": {"pgd": 1.0, "mifgsm": 2.0},
               "config": {"model": "cnn3", "width": 32, "epochs": 10,
                          "adv": {"method": "fgsm_rs", "eps_255": 8.0} if n == "fgsm_at" else None}}
           for i, n in enumerate(["std", "fgsm_at", "std_seed2", "arch"])}
    metrics = {"top1": clean, "transfer_clean": clean, "robust_pgd": 1.0, "grad_evals": 7.5e4,
               **{k: v for k, v in tr.items() if k.startswith("transfer_")}, "transfer_union": tr["union"]}
    if arm == "pubdef":
        metrics["grad_evals_precompute"] = 1e5
    rob = {"n": 500, "clean": clean, "robust": {"pgd": 1.0}, "flags": list(flags),
           "sanity": {"checks": [{"name": "more_steps", "passed": True, "numbers": {"more_steps_acc": 1.0}},
                                 {"name": "unbounded", "passed": not flags, "numbers": {"acc": 0.0}},
                                 {"name": "black_box", "passed": True, "numbers": {"acc": 5.0}}]}}
    return {"arm": arm, "seed": seed, "metrics": metrics,
            "extra": {"title": arm, "transfer": tr, "zoo": zoo, "robustness": rob,
                      "history": [{"epoch": 1, "test_acc": clean - 2}, {"epoch": 2, "test_acc": clean}]}}


def _result(std_seen: float = 5.0, std_held: float = 8.0, flags=()) -> SweepResult:
    jobs = []
    for s in range(3):
        jobs += [_job("standard", s, 45.0 + s, std_seen, std_held), _job("at", s, 30.0 + s, 22.0, 24.0, flags),
                 _job("pubdef", s, 44.0 + s, 35.0, 30.0)]
    return SweepResult(jobs)


def test_ceiling_by_hand():
    """Standard target: clean 46 (mean of 45, 46, 47), worst over all 5 → drop 41;
    se = 100·√((0.46·0.54 + 0.05·0.95)/500) ≈ 2.43, 2·se ≈ 4.9 < 10: the needed drop is 10."""
    c = pubdef.ceiling(_result(), "transfer_worst", 10.0)
    assert c["drop"] == pytest.approx(41.0) and c["passed"]
    assert c["se"] == pytest.approx(100 * math.sqrt((0.46 * 0.54 + 0.05 * 0.95) / 500))
    assert c["needed"] == 10.0
    held = pubdef.ceiling(_result(std_held=40.0), "transfer_worst_heldout", 10.0)
    assert held["drop"] == pytest.approx(6.0) and not held["passed"]


def test_guards_flag_only_the_transfer_claims():
    claims = load_spec("pubdef").claims
    keys = {c.id: c.key for c in claims}
    assert pubdef.guards(_result(), claims, 10.0) == []
    # held-out transfer barely bites: only the held-out claim
    flagged = dict(pubdef.guards(_result(std_held=40.0), claims, 10.0))
    assert set(flagged) == {keys["heldout_vs_at"]} and "held-out sources" in flagged[keys["heldout_vs_at"]]
    # nothing bites (worst over all ≥ clean − 10): both transfer claims, never the clean one
    flagged = dict(pubdef.guards(_result(std_seen=40.0, std_held=40.0), claims, 10.0))
    assert set(flagged) == {keys["worst_vs_at"], keys["heldout_vs_at"]} and "ceiling effect" in flagged[keys["worst_vs_at"]]
    # a failed sanity check of a target flags both transfer claims
    flagged = dict(pubdef.guards(_result(flags=("sanity check failed (unbounded): x",)), claims, 10.0))
    assert set(flagged) == {keys["worst_vs_at"], keys["heldout_vs_at"]}
    assert "at seed 0: sanity check failed" in flagged[keys["worst_vs_at"]]


def test_tables_and_figures_fit_the_page():
    res = _result()
    table = pubdef.summary_table(res)
    assert "`pubdef`" in table and "75 k + 100 k" in table and "**30.0**" in table
    zt = pubdef.zoo_table(res)
    assert "held out" in zt and "fgsm_rs, ε 8/255" in zt and "1.0 – 2.0" in zt
    assert "✓" in pubdef.sanity_table(res) and "✓" in pubdef.ceiling_table(res, 10.0)
    assert "worst transfer ≥ PGD" in pubdef.sanity_table(res).splitlines()[0]
    fig, data = pubdef.clean_vs_transfer(res, "setting")
    assert fig.get_size_inches()[0] <= 7.5
    assert data["points"]["pubdef"]["transfer_worst_heldout"]["mean"] == pytest.approx(30.0)
    fig, data = pubdef.heatmap(res, "setting")
    assert fig.get_size_inches()[0] <= 7.5
    assert data["columns"][0] == ["clean", ""] and data["columns"][1] == ["std", "pgd"]
    assert data["held_out"] == ["std_seed2", "arch"] and data["mean"][2][1] == pytest.approx(35.0)
    assert pubdef.finetune_curve(res)["test_acc"] == pytest.approx([43.0, 45.0])


# -- one job of each target, end to end --------------------------------------------------------------------------
def _dataset() -> Dataset:
    x, y = _images(96, seed=2, size=8)
    xt, yt = _images(40, seed=3, size=8)
    return Dataset(x_train=x, y_train=y, x_test=xt, y_test=yt, classes=[0, 1, 2, 3], class_names=list("abcd"),
                   checksum="t", info={})


def test_each_target_trains_and_is_scored_on_the_same_transfer_images(tmp_path):
    base = dict(model="cnn3", width=4, epochs=2, batch_size=32, lr=0.05)
    zoo_cfg = RobustConfig(**base)
    seen = (Source("s1", zoo_cfg, 101), Source("s2", dataclasses.replace(zoo_cfg, width=6), 102))
    held = (Source("h1", dataclasses.replace(zoo_cfg, width=5), 103),)
    tc = TransferConfig(sources=seen + held, attacks=(AttackSpec("pgd", steps=3), AttackSpec("mifgsm", steps=3)),
                        seen=("s1", "s2"), images=24, batch_size=16)
    ev = EvalConfig(attacks=(AttackSpec("pgd", steps=3),), images=24, square_queries=20, batch_size=16)
    d = PubDefTraining(seen, AttackSpec("pgd", steps=3), batch_size=32)
    data = _dataset()
    folders: dict = {}

    def where(cfg, seed, own=False):   # a seed-aware folder per (arm, recipe, seed)
        return tmp_path / f"{'own' if own else 'std'}-{abs(hash(str(cfg.recipe()))) % 10**8}-{seed}"

    std = train_pubdef(PubDefConfig(**base, eval=ev, transfer=tc), data, 0, checkpoints=where)
    pd_cfg = PubDefConfig(**{**base, "epochs": 1}, init=RobustConfig(**base), defence=d, eval=ev, transfer=tc)
    pd = train_pubdef(pd_cfg, data, 0, checkpoints=where)
    for job in (std, pd):
        m = job.metrics
        assert set(transfer.METRICS) <= set(m) and "robust_pgd" in m
        assert m["transfer_worst"] <= m["transfer_mean"] <= m["eval_clean"]
        assert m["transfer_worst"] == min(m["transfer_worst_seen"], m["transfer_worst_heldout"])
        assert m["transfer_union"] <= m["transfer_worst"]
        assert job.extra["transfer"]["indices"] == job.extra["robustness"]["indices"]
        assert set(job.extra["zoo"]) == {"s1", "s2", "h1"}
        assert job.test_var["transfer_worst"] > 0
    # PubDef fine-tuned the standard target: its init is the standard job's checkpoint
    assert pd.train_images == std.train_images + 2 * 96 // 32 * 32      # + one epoch of clean+adversarial slots
    assert pd.metrics["grad_evals_precompute"] == 2 * 96 * 3
    assert pd.extra["pubdef"]["set_shape"] == [2, 1, 96, 3, 8, 8]
    # the training sets were stored as uint8 in the sources' folders and reload identically
    files = sorted(tmp_path.glob("std-*-10[12]/pubdef-train-*.pt"))
    assert len(files) == 2
    sets = training_sets(d, data, transfer.train_zoo(seen, data, where), where)
    assert sets.dtype == torch.uint8 and torch.equal(sets[0, 0], torch.load(files[0] if "101" in str(files[0])
                                                                              else files[1])["adv"])
    # the transfer sets too: a second evaluation of the standard target gives the same numbers
    again = train_pubdef(PubDefConfig(**base, eval=ev, transfer=tc), data, 0, checkpoints=where)
    assert again.metrics == std.metrics


def test_without_a_run_two_sources_of_one_recipe_get_their_own_folders(tmp_path):
    """The zoo has two sources of one recipe (std, std_seed2): their checkpoint folders must
    differ by seed, with or without a run."""
    from repro.families.robustness.protocol import checkpoint_folders
    where = checkpoint_folders(None, "", tmp_path, "pubdef")
    assert where(_cfg(), 1000) != where(_cfg(), 1002)
    assert where(_cfg(), 5, own=True) == tmp_path
    assert checkpoint_folders(None, "", None, "pubdef")(_cfg(), 3) is None


def test_the_zoo_is_trained_or_loaded_once_per_process(tmp_path):
    """Every job of a chapter uses the same zoo: the second call returns the same networks,
    and adds nothing to the run's training cost (a reload would count it again)."""
    from repro.families.robustness.protocol import checkpoint_folders
    from repro.train import COST
    where = checkpoint_folders(None, "", tmp_path, "pubdef")
    src = (Source("s1", RobustConfig(model="cnn3", width=4, epochs=1, batch_size=32), 7),)
    before = COST.train_images
    first = transfer.train_zoo(src, _dataset(), where)
    mid = COST.train_images
    again = transfer.train_zoo(src, _dataset(), where)
    assert mid - before == 96 and COST.train_images == mid
    assert again["s1"].model is first["s1"].model and not first["s1"].model.training
    # without a checkpoint folder nothing is kept: a new network each time
    other = transfer.train_zoo(src, _dataset(), None)
    assert other["s1"].model is not first["s1"].model


def test_the_comparison_loads_pubdefs_own_model(tmp_path):
    """Chapter 46's ``pubdef`` builder finds the fine-tuned target the arm left in its own
    folder (the builder's own folder stays empty) and counts the pre-computed attacks in its
    cost; the chapter offers that very config."""
    from repro.families.robustness.arms.compare import BUILDERS
    base = dict(model="cnn3", width=4, epochs=1, batch_size=32, lr=0.05)
    seen = (Source("s1", RobustConfig(**base), 101),)
    d = PubDefTraining(seen, AttackSpec("pgd", steps=2), batch_size=32)
    cfg = PubDefConfig(**base, init=RobustConfig(**base), defence=d)

    def folders(arm):
        def where(c, seed, own=False, of=""):
            name = arm if own else (of or "standard")
            return tmp_path / f"{name}-{abs(hash(str(c.recipe()))) % 10**8}-{seed}"
        return where
    data = _dataset()
    job = train_pubdef(cfg, data, 0, checkpoints=folders("pubdef"))
    built = BUILDERS["pubdef"](cfg, data, 0, folders("compare"), "cpu")
    assert not list(tmp_path.glob("compare-*"))
    for a, b in zip(job.model.state_dict().values(), built.model.state_dict().values()):
        assert torch.equal(a, b)
    assert built.grad_evals == job.metrics["grad_evals"] + job.metrics["grad_evals_precompute"]
    assert built.info["zoo_not_counted"] == ["s1"] and not built.model.training
    offered = pubdef.comparison_models(load_spec("pubdef").resolve("cpu"))
    assert offered == {"pubdef": ("pubdef", pubdef.arm_configs(load_spec("pubdef").resolve("cpu"))["pubdef"][1])}
