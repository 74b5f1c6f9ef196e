"""Dataset reinforcement: exact re-application, densified targets, the store, training on it."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from repro import models
from repro.data import load
from repro.families.distillation import analysis, protocol
from repro.families.distillation.arms import reinforce
from repro.train import TrainConfig


def test_apply_views_matches_a_naive_crop_and_flip():
    torch.manual_seed(0)
    img = torch.randint(0, 256, (2, 3, 6, 6), dtype=torch.uint8)
    params = torch.tensor([[0, 3, 1], [2, 2, 0]], dtype=torch.int16)
    out = reinforce.apply_views(img, params, pad=2)
    padded = F.pad(img, (2, 2, 2, 2))
    want0 = padded[0, :, 0:6, 3:9].flip(-1)
    want1 = padded[1, :, 2:8, 2:8]
    assert torch.equal(out[0], want0) and torch.equal(out[1], want1)
    assert torch.equal(out[1], img[1])  # (pad, pad, no flip) is the original image


def test_densify_by_hand():
    ids = torch.tensor([[2, 0]], dtype=torch.int16)
    probs = torch.tensor([[0.6, 0.2]], dtype=torch.float16)
    dense = reinforce.densify(ids, probs, 5)
    # leftover 0.2 over the 3 other classes
    assert torch.allclose(dense, torch.tensor([[0.2, 0.2 / 3, 0.6, 0.2 / 3, 0.2 / 3]]), atol=1e-3)
    assert torch.allclose(dense.sum(1), torch.ones(1))


class _Recorder(torch.nn.Module):
    """Wraps a teacher and keeps every input it is shown."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x):
        self.seen.append(x.clone())
        return self.inner(x)


def test_reapplied_views_are_bit_identical_to_what_the_teacher_saw(fake_data):
    data = load(classes=3, per_class=8, test_per_class=4, image_size=8)
    teacher = _Recorder(models.create("cnn3", num_classes=3, width=4).eval())
    store = reinforce.build_store(teacher, data.x_train, views=2, top_k=2, pad=1, seed=3, batch_size=10)
    seen = teacher.seen[1:]  # the first call only probes the number of classes
    # batches of 10 over 24 images, view 0 then view 1
    view1_first_batch = seen[3]
    again = reinforce.normalise(reinforce.apply_views(data.x_train[:10], store.params[:10, 1], store.pad))
    assert torch.equal(again, view1_first_batch)


def test_store_is_bit_exact_and_compact(fake_data):
    data = load(classes=3, per_class=8, test_per_class=4, image_size=8)
    teacher = models.create("cnn3", num_classes=3, width=4).eval()
    store = reinforce.build_store(teacher, data.x_train, views=3, top_k=2, pad=1, seed=5)
    assert store.params.shape == (24, 3, 3) and store.params.dtype == torch.int16
    assert store.ids.shape == (24, 3, 2) and store.probs.dtype == torch.float16
    # the stored targets are the teacher's on the re-applied views
    x = reinforce.normalise(reinforce.apply_views(data.x_train[:4], store.params[:4, 1], 1))
    top = F.softmax(teacher(x), 1).topk(2, dim=1)
    assert torch.equal(top.indices.to(torch.int16), store.ids[:4, 1])
    again = reinforce.build_store(teacher, data.x_train, views=3, top_k=2, pad=1, seed=5)
    assert torch.equal(again.params, store.params)
    with pytest.raises(ValueError, match="views and top_k"):
        reinforce.build_store(teacher, data.x_train, views=0, top_k=2, pad=1)


def test_corruptions_keep_shape_and_clean_is_identity():
    img = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(analysis.corrupt(img, "clean"), img)
    for kind in analysis.CORRUPTIONS[1:]:
        out = analysis.corrupt(img, kind)
        assert out.shape == img.shape and out.dtype == torch.uint8 and not torch.equal(out, img)
    with pytest.raises(ValueError, match="unknown corruption"):
        analysis.corrupt(img, "fog")


def test_three_trainings_run(fake_data):
    data = load(classes=3, per_class=8, test_per_class=4, image_size=8)
    teacher = models.create("cnn3", num_classes=3, width=4).eval()
    store = reinforce.build_store(teacher, data.x_train, views=2, top_k=2, pad=1)
    setup = protocol.StudentSetup(student="cnn3", student_kwargs={"width": 4}, num_classes=3,
                                 train=data.loader("train", 8), test=data.loader("test", 16),
                                 cfg=TrainConfig(epochs=1, lr=0.05, progress=False), teacher=teacher)
    for res in (reinforce.train_erm(setup), reinforce.train_reinforced(setup, store), reinforce.train_online(setup)):
        assert res.steps == 3 and torch.isfinite(torch.tensor(res.final["train_loss"]))
    with pytest.raises(ValueError, match="p_view"):
        reinforce.train_reinforced(setup, store, p_view=1.5)
    # the same three as registered arms; the reinforced arm needs a setup that carries the store
    for name in ("erm", "reinforced", "teacher_kl"):
        s = reinforce.warm_start(setup, "", store) if name == "reinforced" else setup
        assert protocol.train(name, s).steps == 3
    with pytest.raises(ValueError, match="stored dataset"):
        protocol.train("reinforced", setup)
    with pytest.raises(ValueError, match="p_view"):
        protocol.arm_config("reinforced", p_view=1.5)


def test_plan_labels_are_identifiers_and_configs_come_from_the_params():
    plan, names = reinforce.dr_plan({"erm_smoothing": 0.2, "p_view": 0.5, "epochs": 3}, ["vit_micro_p4"])
    assert list(plan) == ["erm", "reinforced", "online_kd", "erm_vit_micro_p4", "reinforced_vit_micro_p4"]
    assert names["online_kd"] == "online KD" and names["reinforced_vit_micro_p4"] == "reinforced · vit_micro_p4"
    assert [plan[k][0] for k in plan] == ["erm", "reinforced", "teacher_kl", "erm", "reinforced"]
    assert plan["erm"][1].erm_smoothing == 0.2 and plan["reinforced"][1].p_view == 0.5 and plan["erm"][1].epochs == 3
    assert plan["erm_vit_micro_p4"][2] == "vit_micro_p4" and plan["erm"][2] is None


def _tiny_store():
    # 4 images of 2×2, 2 views; top-2 over 4 classes
    images = torch.arange(4 * 3 * 2 * 2, dtype=torch.uint8).view(4, 3, 2, 2)
    params = torch.tensor([[[1, 1, 1], [0, 0, 0]]] * 4, dtype=torch.int16)  # view 0: flip only
    ids = torch.tensor([[[1, 0], [2, 3]]] * 4, dtype=torch.int16)
    probs = torch.tensor([[[0.7, 0.1], [0.5, 0.5]]] * 4, dtype=torch.float16)
    return images, reinforce.ReinforcedStore(params, ids, probs, pad=1, build_seconds=0.0, teacher_key="t")


def test_reinforced_batches_p1_uses_stored_views_and_targets():
    images, store = _tiny_store()
    labels = torch.tensor([0, 1, 2, 3])
    plan = reinforce.ReinforcedBatches(store, images, labels, num_classes=4, p_view=1.0, seed=0)
    idx = torch.tensor([2, 0])
    x_orig = reinforce.normalise(images[idx])
    x, target = plan.batch(idx, x_orig, epoch=0, batch_id=0)
    v, use = plan.draw(2, 0, 0)
    assert use.all()
    for j in range(2):
        want = reinforce.normalise(reinforce.apply_views(images[idx[j:j + 1]], store.params[idx[j], v[j]][None], 1))
        assert torch.equal(x[j:j + 1], want)
        dense = torch.tensor([[0.1, 0.7, 0.1, 0.1], [0.0, 0.0, 0.5, 0.5]])[v[j]]
        assert torch.allclose(target[j], dense, atol=1e-3)
    assert torch.allclose(target.sum(1), torch.ones(2))
    # the same (seed, epoch, batch) draws the same views: a resumed run sees the same data
    assert torch.equal(plan.batch(idx, x_orig, 0, 0)[0], x)


def test_reinforced_batches_p0_is_the_original_image_with_one_hot():
    images, store = _tiny_store()
    labels = torch.tensor([0, 1, 2, 3])
    plan = reinforce.ReinforcedBatches(store, images, labels, num_classes=4, p_view=0.0)
    idx = torch.tensor([3, 1])
    x_orig = reinforce.normalise(images[idx])
    x, target = plan.batch(idx, x_orig, 0, 5)
    assert torch.equal(x, x_orig)
    assert torch.equal(target, torch.tensor([[0.0, 0, 0, 1], [0, 1, 0, 0]]))
    with pytest.raises(ValueError, match="different training set"):
        reinforce.ReinforcedBatches(store, images[:3], labels[:3], 4)


def test_overhead_uses_median_epochs():
    erm = [{"epoch_s": s} for s in (1.0, 2.0, 9.0)]   # median 2
    other = [{"epoch_s": s} for s in (2.1, 2.2, 2.0)]  # median 2.1
    assert reinforce.overhead_pct(erm, other) == pytest.approx(5.0)


def test_store_artifact_round_trip(tmp_path, fake_data, monkeypatch):
    monkeypatch.setenv("REPRO_ARTIFACTS", str(tmp_path))
    monkeypatch.delenv("REPRO_DRY_RUN", raising=False)
    monkeypatch.setattr(reinforce.STORE, "committed_dir", lambda: tmp_path / "committed")
    data = load(classes=3, per_class=8, test_per_class=4, image_size=8)
    teacher = models.create("cnn3", num_classes=3, width=4).eval()
    a, loaded_a = reinforce.load_or_build_store(teacher, data.x_train, 2, 2, 1, seed=0, teacher_key="abc")
    b, loaded_b = reinforce.load_or_build_store(teacher, data.x_train, 2, 2, 1, seed=0, teacher_key="abc")
    assert (loaded_a, loaded_b) == (False, True)
    assert torch.equal(a.params, b.params) and torch.equal(a.ids, b.ids) and torch.equal(a.probs, b.probs)
    assert b.build_seconds == pytest.approx(a.build_seconds)
    assert [r["info"]["spec"]["top_k"] for r in reinforce.STORE.stored()] == [2]
    assert all(r["folder"].startswith(str(tmp_path / "reinforced")) for r in reinforce.STORE.stored())
    # another k is another store
    _, loaded_c = reinforce.load_or_build_store(teacher, data.x_train, 2, 3, 1, seed=0, teacher_key="abc")
    assert not loaded_c
    # a teacher without a key is never stored
    _, loaded_d = reinforce.load_or_build_store(teacher, data.x_train, 2, 2, 1, seed=0, teacher_key="")
    assert not loaded_d and len(reinforce.STORE.stored()) == 2


def test_warm_start_loads_student_weights(tmp_path, fake_data):
    data = load(classes=3, per_class=8, test_per_class=4, image_size=8)
    setup = protocol.StudentSetup(student="cnn3", student_kwargs={"width": 4}, num_classes=3,
                                 train=data.loader("train", 8), test=data.loader("test", 16),
                                 cfg=TrainConfig(epochs=1, progress=False), seed=0)
    torch.manual_seed(42)
    donor = models.create("cnn3", num_classes=3, width=4)
    torch.save(donor.state_dict(), tmp_path / "w.pt")
    warm = reinforce.warm_start(setup, str(tmp_path / "w.pt"))
    got = warm.new_student()
    assert all(torch.equal(a, b) for a, b in zip(got.state_dict().values(), donor.state_dict().values()))
    assert reinforce.warm_start(setup, "") is setup


def test_check_params_rejects_bad_input(tmp_path):
    ok = dict(views=2, top_k=3, p_view=0.99, erm_smoothing=0.1, teacher_weights="", student_weights="",
              extra_students=[], seeds=[0, 1], reliability_seed=0)
    reinforce.check_params(**ok)
    for bad, match in ((dict(views=0), "views and top_k"), (dict(p_view=2.0), "p_view"),
                       (dict(teacher_weights=str(tmp_path / "none.pt")), "teacher_weights"),
                       (dict(extra_students=["resnet9000"]), "unknown extra_students"),
                       (dict(reliability_seed=7), "reliability_seed")):
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            reinforce.check_params(**{**ok, **bad})
