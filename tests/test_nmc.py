"""Chapter 10 (nmc): nearest-mean classifier on frozen features, the pretraining split that keeps
the backbone's classes out of the stream, the backbone transplant, probes, and bad inputs."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from repro import arms, models
from repro.data import Dataset
from repro.families.incremental import figures, protocol, tables
from repro.families.incremental.arms import nmc
from repro.families.incremental.arms.baselines import FineTune, Replay
from repro.families.incremental.learners import IncrementalConfig
from repro.families.incremental.stream import Stream
from repro.papers import load_spec
from repro.run import Run


def toy_stream(y_train: list[int], y_test: list[int], tasks: list[list[int]]) -> Stream:
    """A stream whose images are blank: the tests hand the features in directly."""
    n, m = len(y_train), len(y_test)
    data = Dataset(x_train=torch.zeros(n, 3, 4, 4, dtype=torch.uint8), y_train=torch.tensor(y_train),
                   x_test=torch.zeros(m, 3, 4, 4, dtype=torch.uint8), y_test=torch.tensor(y_test),
                   classes=list(range(len({c for t in tasks for c in t}))), class_names=[], checksum="toy")
    return Stream(data=data, order=data.classes, tasks=tasks, scenario="toy", order_seed=None)


# -- the nearest-mean classifier --------------------------------------------------------------------
def test_nmc_predicts_the_nearest_mean():
    mu = torch.tensor([[0.3, 0.9], [1.0, 0.0], [0.0, -1.0]])
    # (1, 5)/|·| ≈ (0.196, 0.981): distance² 0.017 to μ0, 1.6 to μ1 → 0; (2, −1)/√5 = (0.894, −0.447):
    # 0.21 to μ1, 1.1 to μ2 → 1; (0.1, −3) points almost straight down → 2
    x = torch.tensor([[1.0, 5.0], [2.0, -1.0], [0.1, -3.0]])
    assert nmc.nmc_predict(x, mu).tolist() == [0, 1, 2]
    # raw features: (2, -1) is nearest to (1, 0) (distance² 2) before (0, -1) (distance² 4)
    assert nmc.nmc_predict(torch.tensor([[2.0, -1.0]]), mu, normalize=False).tolist() == [1]


def test_nmc_stream_matrix_by_hand():
    # task 0 = class 0, task 1 = class 1; raw 1-D features on the x axis
    s = toy_stream([0, 0, 1, 1], [0, 0, 1], [[0], [1]])
    f_train = torch.tensor([[0.0, 0.0], [2.0, 0.0], [4.0, 0.0], [4.0, 0.0]])   # μ0 = (1, 0), μ1 = (4, 0)
    f_test = torch.tensor([[0.0, 0.0], [3.0, 0.0], [5.0, 0.0]])
    m = nmc.nmc_stream(s, f_train, f_test, normalize=False)
    # after task 0 only μ0 exists: both class-0 test points are right. After task 1 the point at 3
    # is nearer μ1 (1 < 2): class 0 drops to 50 %, class 1 is right.
    assert m.rows == [[100.0], [50.0, 100.0]]
    assert m.acc_after() == pytest.approx([100.0, 200.0 / 3])
    assert m.average_incremental() == pytest.approx((100.0 + 200.0 / 3) / 2)
    assert m.forgetting() == pytest.approx(50.0)


def test_nmc_is_exact_on_its_own_training_points_when_classes_are_separated():
    # the card's smoke check: 3 tasks × 2 classes of tight clusters, exact means → 100 %
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(6) * 10
    y = torch.arange(6).repeat_interleave(5)
    f = centres[y] + 0.01 * torch.randn(len(y), 6, generator=g)
    s = toy_stream(y.tolist(), y.tolist(), [[0, 1], [2, 3], [4, 5]])
    m = nmc.nmc_stream(s, f, f)
    assert m.rows == [[100.0], [100.0, 100.0], [100.0, 100.0, 100.0]]
    assert m.forgetting() == 0.0


# -- linear probes -----------------------------------------------------------------------------------
def test_joint_probe_separates_separable_features_and_sequential_probe_is_seeded():
    y = torch.arange(4).repeat_interleave(8)
    f = torch.eye(4)[y] * 3 + 0.05 * torch.randn(len(y), 4, generator=torch.Generator().manual_seed(1))
    s = toy_stream(y.tolist(), y.tolist(), [[0, 1], [2, 3]])
    m, secs = nmc.probe_stream(s, f, f, joint=True, epochs=60, lr=0.05, batch_size=8, seed=0)
    assert m.rows == [[100.0], [100.0, 100.0]] and secs > 0
    a, _ = nmc.probe_stream(s, f, f, joint=False, epochs=5, lr=0.05, batch_size=8, seed=3)
    b, _ = nmc.probe_stream(s, f, f, joint=False, epochs=5, lr=0.05, batch_size=8, seed=3)
    assert a.rows == b.rows


def test_frozen_arms_give_jobs_that_feed_the_family_tables():
    s = toy_stream([0, 0, 1, 1], [0, 0, 1], [[0], [1]])
    feats = nmc.FrozenFeatures(s, torch.tensor([[0.0, 0], [2, 0], [4, 0], [4, 0]]), torch.tensor([[0.0, 0], [3, 0], [5, 0]]))
    assert arms.get("incremental", "nmc").impl is nmc.nearest_mean
    assert arms.get("incremental", "probe").config is nmc.ProbeConfig
    jobs = []
    for seed in (0, 1):
        job = protocol.frozen_job(feats, nmc.nearest_mean, nmc.NMCConfig(normalize=False), "nmc_raw")(seed, None)
        jobs.append({"arm": "nmc_raw", "seed": seed, "metrics": job.metrics, "train_s": job.train_s, "extra": job.extra})
    assert jobs[0]["metrics"]["forgetting"] == pytest.approx(50.0) and jobs[1]["extra"]["A"] == [[100.0], [50.0, 100.0]]
    assert "| nmc_raw (n=2) | 83.33 ± 0.00 | 66.67 ± 0.00 | 50.00 ± 0.00 |" in tables.summary_markdown(jobs)
    probe = nmc.linear_probe(feats, nmc.ProbeConfig(probe_epochs=2, batch_size=2), seed=0, label="probe_seq")
    assert probe.learner == "probe_seq" and len(probe.matrix.rows) == 2 and probe.memory_sizes == [0, 0]


# -- which classes pretrain the backbone ---------------------------------------------------------------
def test_pretrain_split_takes_the_tail_of_the_order_and_keeps_clear_tasks():
    order = list(range(100))
    tasks10 = [list(range(i, i + 10)) for i in range(0, 100, 10)]
    pre, kept = nmc.pretrain_split(order, tasks10, 50)
    assert pre == list(range(50, 100)) and kept == 5            # the gpu tier: 5 of the 10 tasks
    tasks5 = [list(range(i, i + 5)) for i in range(0, 20, 5)]  # the cpu tier's 20-class stream
    assert nmc.pretrain_split(order[::-1], tasks5, 40) == (list(range(39, -1, -1)), 4)
    with pytest.raises(ValueError, match="both sides"):
        nmc.pretrain_split(order, tasks10, 45)
    with pytest.raises(ValueError, match="at least 2"):
        nmc.pretrain_split(order, tasks10, 90)       # one task left
    with pytest.raises(ValueError, match="1..99"):
        nmc.pretrain_split(order, tasks10, 100)


def test_restrict_stream_drops_the_later_tasks_and_their_images(fake_data):
    from repro.families.incremental import make_stream

    s = make_stream(classes=20, scenario="B0-Inc5", per_class=4, test_per_class=2, image_size=8)
    r = nmc.restrict_stream(s, 2)
    assert r.tasks == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]] and r.order == s.order[:10]
    assert len(r.data.y_train) == 40 and int(r.data.y_train.max()) == 9 and len(r.data.y_test) == 20
    assert r.data.classes == s.data.classes[:10] and "first 2 tasks" in r.scenario
    assert nmc.restrict_stream(s, 4) is s


def test_configs_refuse_bad_settings_before_any_training():
    spec = load_spec("nmc")
    arms.make_config(nmc.BackboneConfig, spec.resolve("cpu"))
    with pytest.raises(ValueError, match="needs its pretrained weights"):
        arms.make_config(nmc.BackboneConfig, spec.resolve("paper"))     # ViT-B/16-in21k: no weights here
    with pytest.raises(ValueError, match="does not exist"):
        arms.make_config(nmc.BackboneConfig, spec.resolve("paper", {"weights": "/no/such/file.pt"}))
    for bad in ({"pretrain_classes": 0}, {"pretrain_classes": 100}, {"pretrain_epochs": 0}, {"arch": "resnet7"},
                {"pretrain_per_class": -1}):
        with pytest.raises(ValueError):
            arms.make_config(nmc.BackboneConfig, spec.resolve("cpu", bad))
    with pytest.raises(ValueError, match="probe_epochs"):
        arms.make_config(nmc.ProbeConfig, spec.resolve("cpu", {"probe_epochs": 0}))
    with pytest.raises(ValueError, match="fine-tuning epochs"):
        nmc.check_finetune(arms.make_config(IncrementalConfig, spec.resolve("cpu", {"epochs": 0})))


def test_nmc_stream_checks_every_config_before_reading_data(monkeypatch, tmp_path):
    def boom(*a, **k):
        raise AssertionError("data was read")
    monkeypatch.setattr("repro.data.load", boom)
    spec = load_spec("nmc")
    for bad in ({"epochs": 0}, {"probe_epochs": 0}, {"pretrain_classes": 45}):
        run = Run(spec, spec.resolve("gpu", bad), torch.device("cpu"), folder=tmp_path)
        with pytest.raises(ValueError):
            protocol.nmc_stream(run)


def test_chapter_stream_errors_on_a_straddling_split_before_training(fake_data, tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_CHECKPOINTS", str(tmp_path / "ckpt"))
    params = load_spec("nmc").resolve("gpu", {"pretrain_classes": 45})
    run = Run(load_spec("nmc"), params, torch.device("cpu"))
    with pytest.raises(ValueError, match="both sides"):
        protocol.nmc_stream(run)


def test_chapter_stream_cuts_the_full_stream_and_keeps_pretraining_classes_out(fake_data, tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_CHECKPOINTS", str(tmp_path / "ckpt"))
    # the gpu tier's 100-class stream, with fewer and smaller images for speed
    params = load_spec("nmc").resolve("gpu", {"per_class": 2, "test_per_class": 1, "image_size": 8})
    run = Run(load_spec("nmc"), params, torch.device("cpu"))
    stream, pre = protocol.nmc_stream(run)
    assert stream.num_tasks == 5 and stream.num_classes == 50 and len(pre) == 50
    assert not set(pre) & set(stream.order) and set(pre) | set(stream.order) == set(range(100))
    assert "50 classes" in run.data_info["description"]


# -- the backbone -------------------------------------------------------------------------------------
def test_backbone_transplants_features_and_gives_a_fresh_head():
    torch.manual_seed(0)
    src = models.create("cnn3", num_classes=7, width=4)
    bb = nmc.Backbone("toy", nmc._without_head(src.state_dict()),
                      lambda c: models.create("cnn3", num_classes=c, width=4))
    torch.manual_seed(1)
    m = bb.make(5)
    x = torch.randn(3, 3, 8, 8)
    src.eval(), m.eval()
    assert torch.equal(m.features(x), src.features(x)) and m.head.out_features == 5
    frozen = bb.frozen()
    assert not any(p.requires_grad for p in frozen.parameters()) and not frozen.training
    learner = nmc.pretrained(Replay, bb)(IncrementalConfig(arch="cnn3", epochs=1, memory=4))
    assert isinstance(learner, Replay) and learner.uses_memory
    assert torch.equal(learner.build(5).eval().features(x), m.features(x))
    assert isinstance(nmc.pretrained(FineTune, bb)(IncrementalConfig()), FineTune)
    wrong = nmc.Backbone("toy", {"extra.weight": torch.zeros(1)}, lambda c: models.create("cnn3", num_classes=c))
    with pytest.raises(RuntimeError, match="do not fit"):
        wrong.make(3)


def test_timm_backbone_from_a_weights_file_sees_unnormalised_resized_images(tmp_path):
    import timm

    from repro.data import MEAN, STD

    torch.manual_seed(0)
    full = timm.create_model("test_resnet", pretrained=False, num_classes=11)  # with its classifier
    path = tmp_path / "w.pt"
    torch.save(full.state_dict(), path)
    bb = nmc.timm_backbone("test_resnet", str(path))
    net = bb.frozen()
    img = torch.rand(2, 3, 16, 16)
    x = (img - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    size = bb.info["input_size"]
    ref = torch.nn.functional.interpolate(img, size=(size, size), mode="bilinear", align_corners=False)
    full.eval()
    with torch.no_grad():
        want = full.forward_head(full.forward_features(ref), pre_logits=True)
        assert torch.allclose(net.features(x), want, atol=1e-5)
    with pytest.raises(ValueError, match="needs weights"):
        nmc.timm_backbone("test_resnet")
    torch.save({"nothing": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="no weights for"):
        nmc.timm_backbone("test_resnet", str(tmp_path / "bad.pt"))


def smoke_run(tmp_path, monkeypatch, **over):
    """A smoke-tier run of the chapter on the fake data, smaller still, with its own stores."""
    monkeypatch.setenv("REPRO_CHECKPOINTS", str(tmp_path / "ckpt"))
    monkeypatch.setenv("REPRO_ARTIFACTS", str(tmp_path / "artifacts"))
    params = load_spec("nmc").resolve("smoke")
    params.update(per_class=4, test_per_class=2, image_size=8, pretrain_per_class=4, **over)
    return Run(load_spec("nmc"), params, torch.device("cpu"))


def test_cifar_backbone_is_trained_once_and_stored(fake_data, tmp_path, monkeypatch):
    run = smoke_run(tmp_path, monkeypatch)
    stream, pre = protocol.nmc_stream(run)
    assert stream.num_classes == 6 and len(pre) == 10 and not set(pre) & set(stream.order)
    a = protocol.nmc_backbone(run, stream, pre, seed=0)
    assert a.info["built_now"] and len(a.info["history"]) == 2 and "nmc_aia" in a.info["history"][0]
    assert a.info["seed"] == 0
    stored = list((tmp_path / "artifacts" / "backbones").glob("cnn3-c10-s0-*/artifact.json"))
    assert len(stored) == 1 and [p.name for p in stored[0].parent.iterdir()] != [] and \
        not (stored[0].parent / "fit").exists()
    b = protocol.nmc_backbone(run, stream, pre, seed=0)
    assert not b.info["built_now"] and all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    assert b.info["history"] == a.info["history"] and b.info["test_acc"] == a.info["test_acc"]
    assert b.info["key"] == a.info["key"]
    # a different setting is another artifact
    run.params["pretrain_epochs"] = 1
    c = protocol.nmc_backbone(run, stream, pre, seed=0)
    assert c.info["built_now"] and c.info["key"] != a.info["key"]


def test_each_seed_pretrains_its_own_backbone_stored_under_its_seed(fake_data, tmp_path, monkeypatch):
    run = smoke_run(tmp_path, monkeypatch)
    assert "pretrain_seed" not in {f.name for f in dataclasses.fields(nmc.BackboneConfig)}
    stream, pre = protocol.nmc_stream(run)
    backbones = protocol.nmc_backbones(run, stream, pre)
    assert backbones.per_seed and backbones.held == [] and "one per seed" in backbones.name
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    b0, f0 = backbones.get(0)
    assert torch.equal(torch.get_rng_state(), rng)       # preparing a seed leaves the random state alone
    assert backbones.held == [0] and backbones.get(0)[0] is b0 and backbones.loads == 1
    b1, f1 = backbones.get(1)
    assert backbones.held == [1] and backbones.loads == 2  # seed 0's backbone and features were dropped
    assert b0.info["seed"] == 0 and b1.info["seed"] == 1 and b0.info["key"] != b1.info["key"]
    assert set(b0.state) == set(b1.state) and any(not torch.equal(b0.state[k], b1.state[k]) for k in b0.state)
    assert f0.f_train.shape == f1.f_train.shape and not torch.equal(f0.f_train, f1.f_train)
    stored = sorted(p.parent.name for p in (tmp_path / "artifacts" / "backbones").glob("*/artifact.json"))
    assert [n.rsplit("-", 1)[0] for n in stored] == ["cnn3-c10-s0", "cnn3-c10-s1"]
    # a re-run reuses each seed's backbone from the store
    again = protocol.nmc_backbones(run, stream, pre)
    a0 = again.backbone(0)
    assert not a0.info["built_now"] and a0.info["key"] == b0.info["key"]
    assert all(torch.equal(a0.state[k], b0.state[k]) for k in a0.state)
    assert torch.equal(again.features(0).f_test, f0.f_test)


def test_a_timm_backbone_is_one_checkpoint_for_every_seed(tmp_path):
    import timm

    torch.manual_seed(0)
    path = tmp_path / "w.pt"
    torch.save(timm.create_model("test_resnet", pretrained=False, num_classes=3).state_dict(), path)
    spec = load_spec("nmc")
    cfg = arms.make_config(nmc.BackboneConfig, spec.resolve("paper", {"backbone": "test_resnet", "weights": str(path)}))
    assert not cfg.per_seed and arms.make_config(nmc.BackboneConfig, spec.resolve("cpu")).per_seed
    s = toy_stream([0, 1], [0, 1], [[0], [1]])
    calls = []

    def load(seed):
        calls.append(seed)
        return nmc.timm_backbone("test_resnet", str(path))

    shared = nmc.SeedBackbones(load, s, "cpu", per_seed=cfg.per_seed)
    b0, f0 = shared.get(0)
    b1, f1 = shared.get(1)
    assert b0 is b1 and f0 is f1 and calls == [0] and shared.held == [None] and shared.key(2) is None
    md = tables.backbones_markdown({"0": {**b0.info, "name": "test_resnet", "feature_dim": 8},
                                    "1": {**b0.info, "name": "test_resnet", "feature_dim": 8}})
    assert "one checkpoint shared by seeds 0, 1" in md


def test_nmc_sweep_runs_every_arm_from_each_seeds_backbone(fake_data, tmp_path, monkeypatch):
    run = smoke_run(tmp_path, monkeypatch, seeds=[0, 1])
    stream, pre = protocol.nmc_stream(run)
    backbones = protocol.nmc_backbones(run, stream, pre)
    seen = []
    load = backbones._load
    backbones._load = lambda seed: (seen.append((seed, list(backbones.held))), load(seed))[1]
    res = protocol.nmc_sweep(run, stream, backbones, progress=False)
    assert res.arms() == list(nmc.PLAN) and all(j["n_test"] == 6 * 2 for j in res.jobs)
    assert seen == [(0, []), (1, [])]   # one load per seed, nothing else held while loading
    notes = run.notes["backbones"]
    assert sorted(notes) == ["0", "1"] and notes["0"]["seed"] == 0 and notes["1"]["seed"] == 1
    assert notes["0"]["key"] != notes["1"]["key"] and not notes["0"]["shared"] and notes["0"]["feature_dim"] > 0
    md = tables.backbones_markdown(notes)
    assert "| 0 |" in md and "| 1 |" in md and "trained in this run" in md
    fig, data = figures.plot_pretraining(notes, {"replay": 50.0}, "toy")
    fig.clf()
    assert sorted(data["seeds"]) == ["0", "1"] and len(data["seeds"]["1"]["nmc_aia"]) == 2
    claims = {c.id: run.claim_values(c) for c in run.spec.claims}
    assert claims["nmc_beats_replay"] == {str(s): v for s, v in res.paired("aia", "nmc", "replay").items()}
    assert claims["nmc_forgets_less"]["1"] == pytest.approx(res.value("replay", 1, "forgetting")
                                                          - res.value("nmc", 1, "forgetting"))
    # re-running the sweep resumes: the backbones come from the store, the results are the same
    again = protocol.nmc_sweep(run, stream, protocol.nmc_backbones(run, stream, pre), progress=False)
    assert again.per_seed("aia", "replay") == res.per_seed("aia", "replay")
    assert again.per_seed("aia", "nmc") == res.per_seed("aia", "nmc")
    assert not run.notes["backbones"]["1"]["built_now"]
