"""Dataset reinforcement: exact re-application, densified targets, the store, training on it."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from repro import models
from repro.data import load
from repro.methods import distill, reinforce
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
    assert torch.equal(reinforce.corrupt(img, "clean"), img)
    for kind in reinforce.CORRUPTIONS[1:]:
        out = reinforce.corrupt(img, kind)
        assert out.shape == img.shape and out.dtype == torch.uint8 and not torch.equal(out, img)
    with pytest.raises(ValueError, match="unknown corruption"):
        reinforce.corrupt(img, "fog")


def test_three_trainings_run(fake_data):
    data = load(classes=3, per_class=8, test_per_class=4, image_size=8)
    teacher = models.create("cnn3", num_classes=3, width=4).eval()
    store = reinforce.build_store(teacher, data.x_train, views=2, top_k=2, pad=1)
    setup = distill.StudentSetup(student="cnn3", student_kwargs={"width": 4}, num_classes=3,
                                 train=data.loader("train", 8), test=data.loader("test", 16),
                                 cfg=TrainConfig(epochs=1, lr=0.05, progress=False), teacher=teacher)
    for res in (reinforce.train_erm(setup), reinforce.train_reinforced(setup, store), reinforce.train_online(setup)):
        assert res.steps == 3 and torch.isfinite(torch.tensor(res.final["train_loss"]))
    with pytest.raises(ValueError, match="p_view"):
        reinforce.train_reinforced(setup, store, p_view=1.5)
