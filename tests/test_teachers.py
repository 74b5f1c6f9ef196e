"""Teacher artifacts: content-hashed, trained once, reused, never silently replaced; dry runs."""
from __future__ import annotations

import pytest
import torch

from repro.families.distillation import teachers
from repro.data import load
from repro.train import TrainConfig, fit

SPEC = teachers.TeacherSpec(arch="cnn3", arch_kwargs={"width": 4}, classes=3, per_class=8, test_per_class=4,
                            image_size=8, train={"epochs": 1, "lr": 0.05, "progress": False}, batch_size=8)


@pytest.fixture
def tiny(fake_data, tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_TEACHERS", str(tmp_path / "teachers"))
    # the checkout's own committed teachers (artifacts/teachers) stay out of these tests
    monkeypatch.setattr(teachers.STORE, "committed_dir", lambda: tmp_path / "committed")
    monkeypatch.delenv("REPRO_DRY_RUN", raising=False)
    return load(classes=3, per_class=8, test_per_class=4, image_size=8)


def test_key_depends_on_spec_data_and_version(monkeypatch):
    k = SPEC.key("md5-a")
    assert k == SPEC.key("md5-a")
    assert k != SPEC.key("md5-b")
    other = teachers.TeacherSpec(**{**SPEC.as_dict(), "seed": 1})
    assert other.key("md5-a") != k
    from repro import artifacts

    monkeypatch.setattr(artifacts, "__version__", "9.9.9")
    assert SPEC.key("md5-a") != k


def test_trained_once_then_loaded(tiny):
    first = teachers.get(SPEC, tiny)
    assert first.built_now and first.path is not None and 0 <= first.test_acc <= 100
    second = teachers.get(SPEC, tiny)
    assert not second.built_now and second.path == first.path
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a.cpu(), b.cpu())
    assert [t["key"] for t in teachers.stored()] == [first.key]


def test_corrupt_teacher_is_an_error_not_a_replacement(tiny):
    t = teachers.get(SPEC, tiny)
    (t.path / "weights.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(teachers.TeacherError, match="Delete that folder"):
        teachers.get(SPEC, tiny)
    rebuilt = teachers.get(SPEC, tiny, rebuild=True)
    assert rebuilt.built_now


def test_committed_teacher_is_found_first(tiny, tmp_path):
    cached = teachers.get(SPEC, tiny)
    dest = teachers.commit(cached)
    assert dest.parent == tmp_path / "committed" and (dest / "weights.pt").is_file()
    again = teachers.get(SPEC, tiny)
    assert not again.built_now and again.path == dest
    assert sorted(t["where"] for t in teachers.stored()) == ["cache", "committed"]


def test_class_count_must_match(tiny):
    with pytest.raises(ValueError, match="classes"):
        teachers.get(teachers.TeacherSpec(**{**SPEC.as_dict(), "classes": 5}), tiny)


def test_dry_run_teacher_is_never_stored(tiny, monkeypatch):
    monkeypatch.setenv("REPRO_DRY_RUN", "1")
    t = teachers.get(SPEC, tiny)
    assert t.built_now and t.path is None and t.info["dry_run"]
    assert teachers.stored() == []
    with pytest.raises(teachers.TeacherError, match="dry-run"):
        teachers.commit(t)


def test_commit_refuses_large_teachers(tiny, monkeypatch, tmp_path):
    monkeypatch.setattr(teachers.STORE, "committed_dir", lambda: tmp_path / "committed")
    t = teachers.get(SPEC, tiny)
    assert (teachers.commit(t) / "weights.pt").is_file()
    from repro import artifacts

    monkeypatch.setattr(artifacts, "COMMIT_LIMIT_BYTES", 10)
    with pytest.raises(teachers.TeacherError, match="5 MB"):
        teachers.commit(t)


def test_dry_run_fit_takes_one_step_and_keeps_no_checkpoint(tiny, monkeypatch, tmp_path):
    monkeypatch.setenv("REPRO_DRY_RUN", "1")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))
    res = fit(model, tiny.loader("train", 4), tiny.loader("test", 4), TrainConfig(epochs=5, progress=False),
              checkpoint_dir=tmp_path / "ck")
    assert res.steps == 1 and len(res.history) == 1
    assert not (tmp_path / "ck").exists()
