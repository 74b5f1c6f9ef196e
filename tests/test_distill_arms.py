"""The arms that change the model or train two networks: inference graphs, state, one step."""
from __future__ import annotations

import pytest
import torch

from repro import models
from repro.data import load
from repro.losses import distillation as D
from repro.families.distillation import protocol
from repro.families.distillation.arms.online_kd import BalanceLog
from repro.families.distillation.arms.self_kd import IndexedBatches
from repro.layers.distillation import AuxBranchStudent, OnlinePair, WeakHeadStudent
from repro.models.stages import split_stages, stage_outputs
from repro.train import TrainConfig


@pytest.mark.parametrize("arch,kw", [("cnn3", {"width": 4}), ("resnet8", {})])
def test_stage_split_reproduces_the_forward(arch, kw):
    m = models.create(arch, num_classes=5, **kw).eval()
    x = torch.randn(3, 3, 16, 16)
    outs, logits = stage_outputs(m, x)
    assert len(outs) == len(split_stages(m)[1]) == 3
    assert torch.allclose(logits, m(x), atol=1e-6)


def test_training_only_heads_leave_inference_unchanged():
    torch.manual_seed(0)
    base = models.create("cnn3", num_classes=5, width=4).eval()
    x = torch.randn(4, 3, 16, 16)
    want = base(x)
    weak = WeakHeadStudent(base, 5, 16).eval()
    aux = AuxBranchStudent(base, 5, 16).eval()
    assert torch.equal(weak(x), want) and torch.equal(aux(x), want)
    s, w = weak.forward_both(x)
    assert torch.allclose(s, want, atol=1e-6) and w.shape == (4, 5)
    main, branches = aux.forward_all(x)
    assert [b.shape for b in branches] == [(4, 20)] * 3
    # the branches are fresh copies, not the backbone's own stages
    assert not any(p is q for p in aux.branches.parameters() for q in base.parameters())
    pair = OnlinePair(models.create("cnn3", num_classes=5, width=8), base).eval()
    assert torch.equal(pair(x), want)


def test_lsskd_loss_is_ce_plus_joint_ce_when_kl_is_off():
    torch.manual_seed(1)
    y = torch.tensor([0, 2])
    main = torch.randn(8, 3)
    aux = [torch.randn(8, 12), torch.randn(8, 12)]
    joint = D.rotation_labels(y)
    want = torch.nn.functional.cross_entropy(main[:2], y) + sum(torch.nn.functional.cross_entropy(a, joint) for a in aux)
    got = D.lsskd_loss(main, aux, y, 3, aux_kl=0.0, main_kl=0.0)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    assert D.lsskd_loss(main, aux, y, 3).item() > got.item()


def test_indexed_batches_keep_last_epochs_predictions(fake_data):
    data = load(classes=3, per_class=8, test_per_class=4, image_size=8)
    loader = data.loader("train", 8)
    plan = IndexedBatches(loader.num_samples, 3)
    seen = []
    for _, idx in plan.epoch_batches(loader, 0):
        assert torch.equal(plan.current, idx)
        plan.fresh[idx] = 1.0
        seen.append(idx)
    assert sorted(torch.cat(seen).tolist()) == list(range(24))
    list(plan.epoch_batches(loader, 1))  # a new epoch: last epoch's predictions become the targets
    assert (plan.past == 1.0).all() and (plan.fresh == 0).all()
    clone = IndexedBatches(24, 3)
    clone.load_state_dict(plan.state_dict())
    assert clone.epoch == 1 and torch.equal(clone.past, plan.past)


def test_balance_log_survives_a_resume():
    log = BalanceLog()
    log.stage(torch.tensor([0.5, 1.5]), torch.tensor([0.25, 0.75]))
    log.on_step(None)
    again = BalanceLog()
    again.load_state_dict(log.state_dict())
    assert again.gap == [1.0] and again.w_reverse == [0.5]


def _setup(data, seed=0):
    return protocol.StudentSetup(student="cnn3", student_kwargs={"width": 4}, num_classes=data.num_classes,
                                train=data.loader("train", 8, seed=seed), test=data.loader("test", 16),
                                cfg=TrainConfig(epochs=2, lr=0.05, progress=False), teacher_arch="cnn3",
                                teacher_kwargs={"width": 8}, seed=seed)


@pytest.mark.parametrize("arm", ["uskd", "pskd", "lsskd", "dml", "bdkd"])
def test_model_changing_arms_train(arm, fake_data):
    data = load(classes=3, per_class=8, test_per_class=4, image_size=16)
    res = protocol.train(arm, _setup(data))
    assert res.steps == 6 and torch.isfinite(torch.tensor(res.final["train_loss"]))
    if arm in ("dml", "bdkd"):
        assert "teacher_acc" in res.final
        first = _setup(data)
        pair_before = OnlinePair(models.create("cnn3", num_classes=3, width=8), first.new_student())
        # both networks moved away from their initialisation
        assert not torch.equal(res.model.student.head.weight, pair_before.student.head.weight)
    if arm == "bdkd":
        assert len(res.extra["balance"]["gap"]) == 6


def test_training_only_heads_train_backward():
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    for model in (WeakHeadStudent(models.create("cnn3", num_classes=5, width=4), 5, 16),
                  AuxBranchStudent(models.create("cnn3", num_classes=5, width=4), 5, 16),
                  OnlinePair(models.create("cnn3", num_classes=5, width=8), models.create("cnn3", num_classes=5, width=4))):
        out = model.forward_both(x) if isinstance(model, WeakHeadStudent) else \
            model.forward_all(x) if isinstance(model, AuxBranchStudent) else (model(x), [model.teacher(x)])
        loss = sum(torch.nn.functional.cross_entropy(o[:, :5] if o.shape[1] > 5 else o, y)
                   for o in [out[0], *([out[1]] if torch.is_tensor(out[1]) else out[1])])
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
