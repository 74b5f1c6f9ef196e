"""The class-incremental protocol: metrics on a hand-made matrix, tasks, memory, the loop."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from repro.families.incremental import AccuracyMatrix, ExemplarMemory, check_tasks, herding_order, make_stream
from repro.families.incremental.arms.baselines import BASELINES
from repro.families.incremental.learners import IncrementalConfig, run_stream
from repro.losses.incremental import kd_old_classes
from repro.families.incremental.stream import parse_scenario


def _matrix() -> AccuracyMatrix:
    # three tasks, test sizes 10 / 10 / 20
    m = AccuracyMatrix([10, 10, 20])
    m.add_row([90.0])
    m.add_row([60.0, 80.0])
    m.add_row([40.0, 70.0, 85.0])
    return m


def test_accuracy_matrix_by_hand():
    m = _matrix()
    A = m.A
    assert np.isnan(A[0, 1]) and A[2, 2] == 85.0
    # acc_t weighted by test size: 90; (60+80)/2 = 70; (10·40 + 10·70 + 20·85)/40 = 70
    assert m.acc_after() == pytest.approx([90.0, 70.0, 70.0])
    assert m.average_incremental() == pytest.approx((90 + 70 + 70) / 3)
    assert m.last() == pytest.approx(70.0)
    # forgetting: task 0: max(90, 60) − 40 = 50; task 1: 80 − 70 = 10 → mean 30
    assert m.forgetting() == pytest.approx(30.0)
    # old/new: after task 1: old 60, new 80; after task 2: old (40+70)/2 = 55, new 85
    assert np.allclose(m.old_new(), [(60.0, 80.0), (55.0, 85.0)])
    s = m.summary()
    assert s["old_last"] == pytest.approx(55.0) and s["new_last"] == pytest.approx(85.0)
    assert AccuracyMatrix.from_state(m.state_dict()).acc_after() == m.acc_after()


def test_accuracy_matrix_rejects_bad_rows():
    m = AccuracyMatrix([5, 5])
    with pytest.raises(ValueError, match="needs 1"):
        m.add_row([1.0, 2.0])
    m.add_row([1.0])
    m.add_row([1.0, 2.0])
    with pytest.raises(ValueError, match="filled"):
        m.add_row([1.0, 2.0, 3.0])


def test_task_split_must_cover_classes_exactly_once():
    check_tasks([[0, 1], [2, 3]], 4)
    with pytest.raises(ValueError, match="repeated \\[1\\]"):
        check_tasks([[0, 1], [1, 2, 3]], 4)
    with pytest.raises(ValueError, match="missing \\[3\\]"):
        check_tasks([[0, 1], [2]], 4)
    with pytest.raises(ValueError, match="no classes"):
        check_tasks([[0, 1, 2, 3], []], 4)


def test_scenario_names():
    assert parse_scenario("B50-Inc10") == (50, 10)
    for bad in ("B50", "b0-inc10", "B0-Inc", 5):
        with pytest.raises(ValueError, match="unknown scenario"):
            parse_scenario(bad)


def test_memory_budget_and_modes_are_checked():
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="budget"):
            ExemplarMemory(bad)
    with pytest.raises(ValueError, match="mode"):
        ExemplarMemory(10, mode="reservoir")
    with pytest.raises(ValueError, match="memory budget"):
        IncrementalConfig(memory=-5)


def test_herding_picks_the_points_that_track_the_mean():
    # 1-D after normalisation is trivial, so use 2-D unit vectors at angles; the mean direction
    # is 0 rad; herding first takes the point closest to it, then the pair that balances it.
    ang = torch.tensor([0.05, 0.9, -0.85, 1.5, -0.1])
    f = torch.stack([ang.cos(), ang.sin()], 1)
    mu = torch.nn.functional.normalize(f, dim=1).mean(0)
    first = herding_order(f, 1)[0]
    assert first == int(((f - mu) ** 2).sum(1).argmin())
    order = herding_order(f, 5)
    assert sorted(order) == list(range(5))            # no repeats, all taken
    assert herding_order(f, 3) == order[:3]           # a prefix: shrinking keeps the first m


def test_memory_keeps_the_budget_and_shrinks_by_prefix():
    labels = torch.tensor([0] * 6 + [1] * 6 + [2] * 6)
    pos = torch.arange(18) + 100
    feats = torch.randn(200, 4)
    mem = ExemplarMemory(6, mode="herding")
    mem.update(labels[:12], pos[:12], [0, 1], lambda p: feats[p])
    assert len(mem) == 6 and all(len(v) == 3 for v in mem.store.values())
    first = {c: list(v) for c, v in mem.store.items()}
    mem.update(labels[12:], pos[12:], [2], lambda p: feats[p])
    assert len(mem) == 6 and all(len(v) == 2 for v in mem.store.values())
    assert mem.store[0] == first[0][:2] and mem.store[1] == first[1][:2]
    assert set(mem.indices().tolist()) <= set(pos.tolist())
    rnd = ExemplarMemory(4, mode="random", seed=1)
    rnd.update(labels[:12], pos[:12], [0, 1])
    assert len(rnd) == 4


def test_kd_old_classes_is_zero_gradient_at_agreement():
    logits = torch.randn(4, 6, requires_grad=True)
    loss = kd_old_classes(logits, logits.detach(), old=3, temperature=2.0)
    loss.backward()
    assert logits.grad[:, :3].abs().max() < 1e-6 and logits.grad[:, 3:].abs().max() == 0


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baselines_fill_the_matrix_and_resume(name, fake_data, tmp_path):
    stream = make_stream(classes=6, scenario="B0-Inc2", order_seed=1993, per_class=8, test_per_class=4,
                         image_size=8)
    assert stream.num_tasks == 3 and stream.tasks == [[0, 1], [2, 3], [4, 5]]
    cfg = IncrementalConfig(arch="cnn3", arch_width=4, epochs=1, lr=0.05, batch_size=8, memory=6)
    res = run_stream(stream, BASELINES[name](cfg), seed=0, checkpoint_dir=tmp_path / "ck", progress=False)
    assert res.matrix.A.shape == (3, 3) and np.isfinite(res.matrix.A[np.tril_indices(3)]).all()
    if BASELINES[name].uses_memory:
        # ⌊6 / seen⌋ per class: 2 classes × 3, 4 classes × 1, 6 classes × 1
        assert res.memory_sizes == [6, 4, 6]
    # a second call finds every task done and returns the same matrix without training
    again = run_stream(stream, BASELINES[name](cfg), seed=0, checkpoint_dir=tmp_path / "ck", progress=False)
    assert again.matrix.rows == res.matrix.rows and again.train_s == res.train_s


def test_unknown_scenario_fails_before_loading(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("data was read")
    monkeypatch.setattr("repro.data.load", boom)
    with pytest.raises(ValueError, match="unknown scenario"):
        make_stream(classes=20, scenario="4x5")
    with pytest.raises(ValueError):
        make_stream(classes=20, scenario="B0-Inc7")  # 20 classes do not split into tasks of 7


def test_family_figures_carry_numbers_and_setting():
    from repro.families.incremental.figures import accuracy_curves, accuracy_matrix_heatmap

    m = _matrix()
    fig, data = accuracy_matrix_heatmap(m.A, setting="tier smoke · seeds 0")
    assert data["A"][2][0] == 40.0
    assert data["A"][0][1] is None or np.isnan(data["A"][0][1])  # not yet seen
    assert any("tier smoke" in t.get_text() for t in fig.texts)
    fig, data = accuracy_curves({"replay": [m.acc_after(), [80.0, 60.0, 65.0]]}, [2, 4, 6], setting="s")
    assert data["curves"]["replay"]["mean"] == pytest.approx([85.0, 65.0, 67.5])
    assert data["curves"]["replay"]["n"] == 2


def test_class_means_by_hand():
    from repro.families.incremental.memory import class_means

    f = torch.tensor([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0], [0.0, -5.0]])
    y = torch.tensor([0, 0, 1, 2])
    mu = class_means(f, y, [0, 1, 2])
    # class 0: mean of (0.6, 0.8) and (0, 1) = (0.3, 0.9), norm ≈ 0.949, not re-normalised
    assert torch.allclose(mu, torch.tensor([[0.3, 0.9], [1.0, 0.0], [0.0, -1.0]]))
    assert torch.allclose(class_means(f, y, [2, 0])[0], torch.tensor([0.0, -1.0]))  # in the given order
    assert torch.allclose(class_means(f, y, [0], normalize=False), torch.tensor([[1.5, 3.0]]))
    with pytest.raises(ValueError, match="class 5 has no training features"):
        class_means(f, y, [5])
    with pytest.raises(ValueError, match="labels"):
        class_means(f, y[:3], [0])
