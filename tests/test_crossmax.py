"""Chapter 25 (CrossMax): the aggregation rule on hand-made logits, the multi-resolution stack
against hand-computed cases, the network and its heads, the configs and their checks, the arm
end to end on a tiny synthetic set, and the chapter's guards, tables and figures."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from repro.data import MEAN, STD, Dataset
from repro.errors import ParameterError
from repro.families.robustness import crossmax as cm, protocol
from repro.families.robustness.attacks import AttackSpec, robust_correct, transfer_correct
from repro.families.robustness.protocol import RobustConfig, build_model
from repro.papers import load_spec
from repro.sweep import SweepResult


pytestmark = pytest.mark.usefixtures("one_thread")


def normalise(x01: torch.Tensor) -> torch.Tensor:
    return (x01 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


# -- CrossMax by hand ----------------------------------------------------------------------------------------
def test_crossmax_on_a_hand_made_matrix():
    """One image, three members, three classes:
        Z = [[ 2, 1, 0],      step 1 (− each row's max):  [[ 0, −1, −2],
             [ 0, 5, 1],                                  [−5,  0, −4],
             [ 3, 3, 0]]                                  [ 0,  0, −3]]
    step 2 (− each column's max, which is 0, 0, −2):      [[ 0, −1,  0],
                                                           [−5,  0, −2],
                                                           [ 0,  0, −1]]
    k = 2: the second largest of each column: class 0 → 0, class 1 → 0, class 2 → −1;
    k = 3: the smallest: −5, −1, −2 (argmax class 1: the class no member rates far below)."""
    z = torch.tensor([[[2.0, 1, 0], [0, 5, 1], [3, 3, 0]]])
    assert cm.crossmax(z, 2).tolist() == [[0.0, 0.0, -1.0]]
    assert cm.crossmax(z, 3).tolist() == [[-5.0, -1.0, -2.0]]
    # step 1 removes any constant a member adds to all its logits
    shifted = z.clone()
    shifted[0, 1] += 100.0
    assert torch.equal(cm.crossmax(shifted, 2), cm.crossmax(z, 2))


def test_one_member_cannot_outvote_the_others():
    """Plain averaging follows a single member with huge logits; CrossMax with k = 2 does not:
    member 0 shouts class 0, members 1 and 2 (mildly) prefer class 1."""
    z = torch.tensor([[[50.0, 0, 0], [0, 2, 0], [0, 1.5, 0]]])
    assert int(z.mean(1).argmax()) == 0
    assert int(cm.crossmax(z, 2).argmax()) == 1


@pytest.mark.parametrize("k", [0, 1, 4, True])
def test_crossmax_refuses_k_outside_two_to_members(k):
    with pytest.raises(ParameterError, match="k must be"):
        cm.crossmax(torch.zeros(1, 3, 5), k)
    with pytest.raises(ParameterError, match="members, classes"):
        cm.crossmax(torch.zeros(3, 5), 2)


# -- the stack ------------------------------------------------------------------------------------------------
def test_roll_each_is_torch_roll_per_image():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 5, 6, generator=g)
    dy, dx = torch.tensor([0, 1, -2, 3]), torch.tensor([2, -1, 0, 5])
    out = cm.roll_each(x, dy, dx)
    for i in range(4):
        assert torch.equal(out[i], torch.roll(x[i], (int(dy[i]), int(dx[i])), dims=(-2, -1)))


def test_stack_without_randomness_is_the_image_at_full_resolution():
    """noise 0, jitter 0, colour_min 1 (amount a = 1: no contrast or grey change): the
    full-resolution version is the image (bicubic to the same size is the identity), the 4-px
    one is bicubic down then up, and the stack is each version normalised again."""
    g = torch.Generator().manual_seed(1)
    x01 = torch.rand(2, 3, 8, 8, generator=g)
    stack = cm.MultiResStack((8, 4), 8, jitter=0, noise=0.0, colour_min=1.0)
    v = stack.versions(x01)
    torch.testing.assert_close(v[0], x01, atol=1e-6, rtol=0)
    low = F.interpolate(F.interpolate(x01, size=(4, 4), mode="bicubic", align_corners=False), size=(8, 8),
                        mode="bicubic", align_corners=False).clamp(0, 1)
    torch.testing.assert_close(v[1], low, atol=1e-6, rtol=0)
    out = stack(normalise(x01))
    assert out.shape == (2, 6, 8, 8) and stack.channels == 6
    torch.testing.assert_close(out[:, :3], normalise(x01), atol=1e-5, rtol=0)


def test_grey_mix_and_contrast_by_hand():
    """colour_min = 0 draws a ∈ [0, 1); with a fixed seed we recover a and check both steps
    on a constant-colour image (r, g, b) = (0.8, 0.2, 0.5): contrast blends with the luma
    mean m = 0.2989·0.8 + 0.587·0.2 + 0.114·0.5, then the grey mix with the channel mean."""
    x01 = torch.tensor([0.8, 0.2, 0.5]).view(1, 3, 1, 1).expand(1, 3, 4, 4).contiguous()
    stack = cm.MultiResStack((4,), 4, jitter=0, noise=0.0, colour_min=0.0, seed=3)
    a = float(torch.rand(1, 1, 1, 1, generator=torch.Generator().manual_seed(3)))
    m = 0.2989 * 0.8 + 0.587 * 0.2 + 0.114 * 0.5
    c = [a * v + (1 - a) * m for v in (0.8, 0.2, 0.5)]
    want = [a * v + (1 - a) * sum(c) / 3 for v in c]
    got = stack.versions(x01)[0][0, :, 0, 0].tolist()
    assert got == pytest.approx(want, abs=1e-5)


def test_stack_is_random_unless_seeded_stays_in_range_and_passes_gradients():
    g = torch.Generator().manual_seed(2)
    x = normalise(torch.rand(3, 3, 16, 16, generator=g)).requires_grad_(True)
    free = cm.MultiResStack((16, 8, 4, 2), 16, jitter=2)
    assert free.channels == 12
    assert not torch.equal(free(x), free(x))                 # a new draw on every call
    fixed = cm.MultiResStack((16, 8, 4, 2), 16, jitter=2, seed=7)
    assert torch.equal(fixed(x), fixed(x))                   # a fixed function of the batch
    for v in fixed.versions(torch.rand(3, 3, 16, 16, generator=g)):
        assert float(v.min()) >= 0.0 and float(v.max()) <= 1.0
    free(x).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


@pytest.mark.parametrize("kw, msg", [({"resolutions": (16, 32)}, "resolutions"), ({"resolutions": ()}, "empty"),
                                     ({"resolutions": (8, 8)}, "repeat"), ({"jitter": -1}, "jitter"),
                                     ({"noise": -0.1}, "noise"), ({"colour_min": 1.5}, "colour_min")])
def test_bad_stack_settings_are_refused(kw, msg):
    args = {"resolutions": (16, 8), "image_size": 16, **kw}
    with pytest.raises(ParameterError, match=msg):
        cm.MultiResStack(**args)


# -- the network ----------------------------------------------------------------------------------------------
def test_blocks_and_widened_input():
    stem, blocks = cm.blocks_of(build_model(RobustConfig(model="resnet18"), 10, 0))
    assert len(blocks) == 8
    net = build_model(RobustConfig(model="cnn3", width=4), 10, 0)
    assert len(cm.blocks_of(net)[1]) == 3
    cm.widen_input(net, 12)
    first = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 12 and first.out_channels == 4
    assert net(torch.zeros(2, 12, 16, 16)).shape == (2, 10)


def _net(k: int = 2, blocks: tuple[int, ...] = ()) -> cm.CrossMaxNet:
    cfg = cm.CrossMaxConfig(model="cnn3", width=4, resolutions=(16, 8), jitter=1, crossmax_k=k, head_blocks=blocks)
    return cm.build_crossmax(cfg, build_model(cfg.base(), 5, 0), 5, 16, stack_seed=0)


def test_members_views_and_crossmax_output():
    net = _net().eval()
    x = normalise(torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
    z = net.member_logits(x)
    assert net.members == ["block1", "block2", "block3", "final"] and z.shape == (4, 4, 5)
    torch.testing.assert_close(net(x), cm.crossmax(z, 2))
    torch.testing.assert_close(net.view("final")(x), z[:, 3])            # the seeded stack: same draws
    torch.testing.assert_close(net.view("block2")(x), z[:, 1])
    torch.testing.assert_close(net.view("crossmax")(x), net(x))
    torch.testing.assert_close(net.backbone(x), net.backbone.block_outputs(x)[1])
    with pytest.raises(ParameterError, match="no member"):
        net.view("block9")
    # flattened sizes: cnn3 width 4 at 16 px → 4·8·8, 8·4·4, 16·2·2
    assert [h[1].num_features for h in net.heads] == [256, 128, 64]


def test_heads_stage_trains_only_the_heads_and_keeps_the_network_in_eval_mode():
    net = _net()
    net.freeze_backbone()
    net.train()
    assert net.heads.training and not net.backbone.training
    assert not any(m.training for m in net.backbone.modules())
    bn = next(m for m in net.backbone.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone()
    x = normalise(torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    loss, logits = cm.heads_loss(net, x, y)
    z = net.member_logits(x)
    want = sum(F.cross_entropy(z[:, i], y) for i in range(3))         # the three heads, not the final layer
    assert loss.item() == pytest.approx(want.item(), rel=1e-5) and logits.shape == (6, 5)
    loss.backward()
    assert all(p.grad is None for p in net.backbone.parameters())
    assert all(p.grad is not None for p in net.heads.parameters())
    assert torch.equal(bn.running_mean, before)


def test_crossmaxnet_refuses_bad_heads_and_k():
    with pytest.raises(ParameterError, match="head_blocks"):
        _net(blocks=(1, 4))
    with pytest.raises(ParameterError, match="crossmax_k"):
        _net(k=3, blocks=(1,))


# -- attacks: the transfer helper ------------------------------------------------------------------------------
class _Constant(nn.Module):
    """Always predicts class 0, whatever the image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x.flatten(1).sum(1) * 0 + 1.0, x.flatten(1).sum(1) * 0], dim=1)


def test_transfer_correct_reads_one_models_attack_with_others():
    """The source itself reads its own attack as robust_correct does; a target that ignores
    the image is unaffected; the adversarial images stay in the ε-ball."""
    torch.manual_seed(0)
    src = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).eval()
    x = torch.rand(10, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.zeros(10, dtype=torch.long)
    spec = AttackSpec("pgd", eps=0.3, steps=5)
    clean, robust, adv = transfer_correct(src, {"self": src, "const": _Constant().eval()}, x, y, spec)
    assert torch.equal(robust["self"], robust_correct(src, x, y, spec))
    assert bool(clean["const"].all()) and bool(robust["const"].all())
    assert bool((robust["self"] <= clean["self"]).all())
    assert float((adv - x).abs().max()) <= 0.3 + 1e-6 and adv.shape == x.shape
    with pytest.raises(ParameterError, match="train mode"):
        transfer_correct(src, {"t": nn.Linear(2, 2)}, x, y, spec)


# -- configs -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tier", ["smoke", "cpu", "gpu", "paper"])
def test_arms_at_every_tier_cover_every_claim(tier):
    spec = load_spec("crossmax")
    p = spec.resolve(tier)
    arms = cm.arm_configs(p)
    assert list(arms) == ["baseline", "crossmax"] and {a for a, _ in arms.values()} == {"crossmax"}
    for c in spec.claims:
        assert c.arm in arms and (c.baseline is None or c.baseline in arms)
    base, cross = arms["baseline"][1], arms["crossmax"][1]
    assert not base.multires and cross.multires
    assert p["eval_eps"] in cross.eps_grid and list(cross.eps_grid) == sorted(cross.eps_grid)
    # the baseline's model is the family's standard model of this recipe (shared checkpoints)
    assert base.base().recipe() == cross.base().recipe()
    assert base.base().recipe() == protocol.robust_config(p).recipe()


def test_recipe_leaves_out_the_evaluation():
    cfg = cm.CrossMaxConfig(model="cnn3", eps_grid=(0.01,), eot_samples=3)
    other = cm.CrossMaxConfig(model="cnn3", eps_grid=(0.02, 0.03), eot_samples=9, eot_steps=5, autoattack_steps=7)
    assert cfg.recipe() == other.recipe()
    assert cfg.recipe() != cm.CrossMaxConfig(model="cnn3", head_lr=0.1).recipe()
    assert "eps_grid" in cfg.as_record() and "eps_grid" not in cfg.recipe()


@pytest.mark.parametrize("override, msg", [({"resolutions": [32, 16]}, "resolutions"),
                                           ({"crossmax_k": 1}, "crossmax_k"), ({"crossmax_k": 5}, "crossmax_k"),
                                           ({"head_blocks": [4]}, "head_blocks"), ({"head_blocks": [1, 1]}, "head_blocks"),
                                           ({"eps_grid_255": [0.0]}, "eps_grid_255"), ({"eot_samples": 0}, "eot_samples"),
                                           ({"head_lr": 0.0}, "head_lr"), ({"eval_eps": 8.0}, "eps")])
def test_bad_settings_fail_in_arm_configs(override, msg):
    p = {**load_spec("crossmax").resolve("smoke"), **override}
    with pytest.raises(ParameterError, match=msg):
        cm.arm_configs(p)


def test_a_dry_run_attacks_a_few_images_with_few_steps_and_the_same_recipe():
    from repro.families.robustness.arms.crossmax import DRY_IMAGES, DRY_QUERIES, DRY_STEPS, dry_config

    cfg = cm.arm_configs(load_spec("crossmax").resolve("paper"))["crossmax"][1]
    dry = dry_config(cfg)
    assert dry.recipe() == cfg.recipe()
    assert (dry.eval.images, dry.eval.attacks[0].steps, dry.eval.square_queries) == (DRY_IMAGES, DRY_STEPS, DRY_QUERIES)
    assert (dry.eot_samples, dry.eot_steps, dry.autoattack_steps) == (DRY_STEPS, DRY_STEPS, DRY_STEPS)
    assert dry.eval.attacks[0].eps == cfg.eval.attacks[0].eps and dry.eps_grid == cfg.eps_grid


def test_eps_tags_and_grid():
    assert cm.eps_tag(8 / 255) == "8" and cm.eps_tag(0.5 / 255) == "0p5"
    p = {"eps_grid_255": [4.0, 8.0, 2.0], "eval_eps": 8 / 255}
    assert cm.eps_grid(p) == pytest.approx([2 / 255, 4 / 255, 8 / 255])


# -- the arm end to end -------------------------------------------------------------------------------------------
def _tiny_data() -> Dataset:
    """Four classes told apart by brightness (a task a small CNN learns in a few epochs)."""
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % 4
        level = (40 + 55 * y).view(-1, 1, 1, 1).float()
        x = (level + torch.randint(-15, 16, (n, 3, 16, 16), generator=g)).clamp(0, 255).to(torch.uint8)
        return x, y
    (xt, yt), (xe, ye) = split(64), split(24)
    return Dataset(x_train=xt, y_train=yt, x_test=xe, y_test=ye, classes=[0, 1, 2, 3],
                   class_names=["apple", "aquarium_fish", "baby", "bear"], checksum="t", info={})


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    from repro.families.robustness.arms.crossmax import train_crossmax

    p = {**load_spec("crossmax").resolve("smoke"), "epochs": 2, "eval_images": 12, "eps_grid_255": [4.0, 8.0]}
    arms = cm.arm_configs(p)
    data = _tiny_data()
    root = tmp_path_factory.mktemp("ckpt")
    jobs = []
    for label, (_, cfg) in arms.items():
        job = train_crossmax(cfg, data, 0, root / label, "cpu")
        jobs.append({"arm": label, "seed": 0, "metrics": job.metrics, "extra": job.extra, "test_var": job.test_var,
                     "train_images": job.train_images})
    return SweepResult(jobs), arms, data, root


def test_the_arm_reports_every_metric_with_consistent_bounds(swept):
    result, arms, _, root = swept
    b, c = (result.of(a)[0]["metrics"] for a in ("baseline", "crossmax"))
    grid = arms["crossmax"][1].eps_grid
    for m in (b, c):
        for e in grid:
            t = f"_e{cm.eps_tag(e)}"
            worst = m["robust_worst" + t]
            assert worst <= min(m["robust_adaptive" + t], m["robust_standard" + t], m["robust_transfer" + t])
        assert m["robust_worst"] == m["robust_worst_e8"]
    # one deterministic head: every attack setting is the same PGD
    assert b["robust_adaptive_e4"] == b["robust_standard_e4"] == b["robust_transfer_e4"] == b["robust_worst_e4"]
    for name in ("block1", "block2", "block3", "final", "crossmax"):
        assert c[f"member_{name}_attacked"] <= c[f"member_{name}_clean"]
    assert c["member_crossmax_attacked"] == c["robust_transfer"]
    assert c["eot_drop"] == pytest.approx(c["robust_standard"] - c["robust_adaptive"])
    assert c["masking_gap"] == pytest.approx(c["robust_adaptive"] - c["robust_transfer"])
    heads = [c[f"member_block{i}_attacked"] for i in (1, 2, 3)]
    assert c["head_gap"] == pytest.approx(sum(heads) / 3 - c["member_final_attacked"], abs=1e-4)
    assert result.of("crossmax")[0]["test_var"]["head_gap"] >= 0
    # both training stages checkpointed in the job's own folder; the baseline in the standard model's
    assert (root / "crossmax" / "backbone" / "last.pt").is_file() and (root / "crossmax" / "heads" / "last.pt").is_file()
    rec = result.of("crossmax")[0]["extra"]["robustness"]
    names = [ch["name"] for ch in rec["adaptive"]["sanity"]["checks"]]
    assert names == ["more_steps", "unbounded", "black_box", "transfer:EOT-PGD on the final layer"]
    assert rec["adaptive"]["attack"]["eot_samples"] == 2


def test_a_finished_job_loads_instead_of_training(swept):
    from repro.families.robustness.arms.crossmax import train_crossmax
    from repro.train import WORK

    result, arms, data, root = swept
    steps = WORK["train_steps"]
    again = train_crossmax(arms["crossmax"][1], data, 0, root / "crossmax", "cpu")
    assert WORK["train_steps"] == steps
    assert again.metrics["top1"] == pytest.approx(result.of("crossmax")[0]["metrics"]["top1"], abs=30)


def test_tables_figures_and_guards(swept):
    result, arms, data, _ = swept
    assert "`crossmax`" in cm.summary_table(result) and "worst case" in cm.summary_table(result)
    assert "seed 0" in cm.gap_table(result) and "±" in cm.gap_table(result)
    assert "`block1`" in cm.member_table(result)
    assert "from the final layer" in cm.sanity_table(result)
    curves = cm.robust_curves(result)
    assert list(curves) == ["baseline · PGD"] + [f"CrossMax · {cm.KIND_LABEL[k]}" for k in cm.KINDS]
    assert sorted(curves["baseline · PGD"]) == [0.0, 4 / 255, 8 / 255]
    fig, d = cm.member_accuracy(result, "setting", 8 / 255)
    assert fig.get_size_inches()[0] <= 7.5 and d["members"][-1] == "crossmax"
    fig, d = cm.stack_grid(data, arms["crossmax"][1], "setting", classes=3)
    assert list(d["shape"][:2]) == [5, 3] and fig.get_size_inches()[0] <= 7.5  # original + 4 resolutions
    claims = load_spec("crossmax").claims
    # a failed check in the final layer's evaluation flags the heads' claim and the headline
    records = [r for j in result.jobs for k, r in j["extra"]["robustness"].items() if k != "transfer"]
    kept = [r["flags"] for r in records]   # the tiny run's own checks may fail: start from none
    try:
        for r in records:
            r["flags"] = []
        assert cm.guards(result, claims) == []
        result.of("crossmax")[0]["extra"]["robustness"]["final"]["flags"] = ["sanity check failed (unbounded): x"]
        flagged = dict(cm.guards(result, claims))
    finally:
        for r, f in zip(records, kept):
            r["flags"] = f
    assert set(flagged) == {"robust_worst:crossmax-baseline", "head_gap:crossmax"}
    assert "crossmax (final) seed 0" in flagged["head_gap:crossmax"]


def test_the_comparison_gets_crossmax_with_its_final_layer_as_surrogate(monkeypatch):
    """Chapter 46's crossmax builder hands over the CrossMax view and the final layer as a
    surrogate, so the comparison also transfers attacks from it (chapter 25's finding)."""
    from repro.families.robustness.arms import crossmax as cm_arm
    from repro.families.robustness.arms.compare import BUILDERS
    from repro.papers import load_spec
    cfg = cm.arm_configs(load_spec("crossmax").resolve("smoke"))["crossmax"][1]
    calls = {}

    class Fake(nn.Module):
        members = ["block1", "final"]
        k = 2

        def view(self, member):
            calls.setdefault("views", []).append(member)
            return nn.Identity()

    monkeypatch.setattr(cm_arm, "train_stages", lambda *a, **k: (Fake(), [type("F", (), {"train_images": 1})()] * 2))
    monkeypatch.setattr(cm_arm, "predict", lambda *a, **k: (torch.zeros(4, 2, 3), torch.zeros(4, dtype=torch.long)))
    data = type("D", (), {"loader": lambda self, *a, **k: None})()
    built = BUILDERS["crossmax"](cfg, data, 0, lambda *a, **k: None, "cpu")
    assert set(built.surrogates) == {"final"} and calls["views"][-2:] == ["crossmax", "final"]
