"""Chapter 07 (NAPA-VQ): the Neural-Gas edge update, the NA loss, the neighbour interpolation,
frozen coding vectors, PASS's radius and the chapter's bookkeeping, by hand-computed values;
bad hyper-parameters fail before any training."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from repro import arms
from repro.families.incremental import figures, make_stream, protocol, tables
from repro.families.incremental.arms import napavq as N
from repro.families.incremental.learners import IncrementalConfig, run_stream
from repro.layers import coding_vectors as CV
from repro.losses import incremental as LS
from repro.papers import load_spec
from repro.run import Run


# ------------------------------------------------------------------ small pieces
def test_rotate_batch_orders_rotations_per_image():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]).expand(1, 3, 2, 2)
    y = torch.tensor([5])
    xr, yr = N.rotate_batch(x, y, 4)
    assert yr.tolist() == [20, 21, 22, 23]
    # rot90 by 90° counter-clockwise: [[1,2],[3,4]] → [[2,4],[1,3]]
    assert xr[1, 0].tolist() == [[2.0, 4.0], [1.0, 3.0]]
    assert xr[2, 0].tolist() == [[4.0, 3.0], [2.0, 1.0]]
    x1, y1 = N.rotate_batch(x, y, 1)
    assert x1 is x and y1 is y


def test_feature_kd_is_the_frobenius_norm_over_the_batch():
    f = torch.tensor([[3.0, 0.0], [0.0, 0.0]])
    f_old = torch.tensor([[0.0, 4.0], [0.0, 0.0]])
    assert LS.feature_kd(f, f_old).item() == pytest.approx(5.0)


def test_pass_radius_by_hand():
    # class 0: unbiased variances [2, 0] → trace/D = 1; class 1: [0, 8] → 4; √((1 + 4)/2)
    f = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 0.0], [0.0, 4.0]])
    y = torch.tensor([0, 0, 1, 1])
    assert N.pass_radius(f, y) == pytest.approx(math.sqrt(2.5))
    with pytest.raises(ValueError, match="two images"):
        N.pass_radius(f[:1], y[:1])


CVS = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]])


def test_update_edges_refreshes_the_winners_k_nearest_and_symmetrises():
    E = torch.eye(3)
    # two features near CV 0: winner 0 (twice), k = 2 nearest = {0, 1} (twice each) → no ageing
    out = N.update_edges(E, torch.tensor([[0.1, 0.0], [0.2, 0.0]]), CVS, k=2, eps=0.5, e_min=0.125)
    assert torch.allclose(out, torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    assert torch.equal(E, out)  # in place
    # a feature near CV 2: winner 2, nearest {2, 1}; row 2 gets 1 to CV 1, then (0 + 1)/2
    N.update_edges(E, torch.tensor([[4.9, 0.0]]), CVS, k=2, eps=0.5, e_min=0.125)
    assert torch.allclose(E, torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.5], [0.0, 0.5, 1.0]]))
    assert torch.equal(E, E.T)


def test_update_edges_ages_and_prunes():
    E = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]])
    # winner 0 with k = 1: its edge to CV 1 is not refreshed and ages once: 0.5 · 0.5 = 0.25,
    # row 1 keeps 0.5, so the symmetric edge is 0.375; the diagonal stays 1
    N.update_edges(E, torch.tensor([[0.1, 0.0]]), CVS, k=1, eps=0.5, e_min=0.125)
    assert E[0, 1].item() == pytest.approx(0.375) and E[1, 0].item() == pytest.approx(0.375)
    assert E[0, 0].item() == 1.0
    # three wins in one batch age it by 0.5³ = 0.125·0.375 < e_min = 0.05 → removed in row 0;
    # row 1 still holds 0.375, so the symmetrised edge is 0.1875
    N.update_edges(E, torch.tensor([[0.1, 0.0]] * 3), CVS, k=1, eps=0.5, e_min=0.05)
    assert E[0, 1].item() == pytest.approx(0.1875)


def test_update_edges_touches_only_the_first_m_cvs():
    E = torch.eye(4)
    E[3, 2] = E[2, 3] = 0.7
    N.update_edges(E, torch.tensor([[0.1, 0.0]]), CVS[:2], k=2, eps=0.5, e_min=0.1)
    assert E[2, 3].item() == pytest.approx(0.7) and E[0, 1].item() == 0.5  # (1 + 0)/2


def test_na_loss_by_hand():
    z = torch.tensor([[0.9, 0.0]])
    y = torch.tensor([0])
    only_1 = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    # d²(z, cv0) = 0.81, d²(z, cv1) = 0.01 → relu(0.81 − 0.01)
    assert LS.na_loss(z, y, CVS, only_1).item() == pytest.approx(0.80, abs=1e-5)
    # no neighbour (only the diagonal): the official code leaves relu(d_pos)
    assert LS.na_loss(z, y, CVS, torch.eye(3)).item() == pytest.approx(0.81, abs=1e-5)
    # a far neighbour makes the weighted mean large enough: the hinge is 0
    assert LS.na_loss(z, y, CVS, torch.ones(3, 3)).item() == 0.0


def test_na_loss_weights_are_softmax_of_distances_and_held_constant():
    cvs = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.1]])
    z = torch.tensor([[0.9, 0.0]], requires_grad=True)
    loss = LS.na_loss(z, torch.tensor([0]), cvs, torch.ones(3, 3))
    d1, d2 = 0.01, 0.02
    w1 = math.exp(-0.001 * d1) / (math.exp(-0.001 * d1) + math.exp(-0.001 * d2))
    assert loss.item() == pytest.approx(0.81 - (w1 * d1 + (1 - w1) * d2), abs=1e-5)
    loss.backward()
    # constant weights: ∇z = 2(z − cv0) − Σ w_j 2(z − cv_j)
    zz = torch.tensor([0.9, 0.0])
    g = 2 * zz - w1 * 2 * (zz - cvs[1]) - (1 - w1) * 2 * (zz - cvs[2])
    assert torch.allclose(z.grad[0], g, atol=1e-5)


def test_neighbour_interpolation_stays_on_the_segment_near_the_prototype():
    protos = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    E = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    a, nb = N.neighbour_interpolation(torch.tensor([0] * 50), E, protos, generator=g)
    assert (nb == 1).all()
    # a = (1 − γ)·[10, 0] with γ ∈ [½, 1] → first coordinate in [0, 5], second 0
    assert (a[:, 0] >= 0).all() and (a[:, 0] <= 5.0 + 1e-6).all() and (a[:, 1] == 0).all()
    a, nb = N.neighbour_interpolation(torch.tensor([1, 1]), E, protos, generator=g)
    assert torch.equal(a, protos[[1, 1]])  # its only "neighbour" is itself
    with pytest.raises(ValueError, match="no edge"):
        N.neighbour_interpolation(torch.tensor([2]), E, protos)


def test_frozen_coding_vectors_do_not_move():
    cv = CV.CodingVectors(4, 2, lr_mult=10.0)
    assert torch.allclose(cv.vectors(), cv.theta * 10)
    before = cv.vectors().detach().clone()
    cv.freeze(2)
    cv.vectors()[:, 0].sum().backward()
    assert cv.theta.grad[:2].abs().sum() == 0 and (cv.theta.grad[2:, 0] == 10).all()
    with torch.no_grad():
        cv.theta.add_(1.0)   # e.g. weight decay or a stray step on the unused rows
    after = cv.vectors()
    assert torch.equal(after[:2], before[:2]) and not torch.equal(after[2:], before[2:])
    cv.freeze(3)             # only row 2 is newly copied; rows 0–1 keep their frozen values
    assert torch.equal(cv.vectors()[:2], before[:2])
    assert torch.allclose(cv.vectors()[2], (before[2] + 10.0))
    with pytest.raises(ValueError, match="frozen already"):
        cv.freeze(1)
    state = cv.state_dict()
    assert int(state["n_frozen"]) == 3 and "edges" in state


class Flat(nn.Module):
    """features(x) = the first two pixel values of channel 0 (a fixed 2-d embedding)."""

    num_features = 2

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(2, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, 0, :2]


def test_cvnet_predicts_the_nearest_normalised_rotation_0_cv():
    net = CV.CVNet(Flat(), num_classes=2, rotations=2, lr_mult=1.0)
    with torch.no_grad():  # CVs (class, rotation): (0,0)=[1,0], (0,1)=[-1,0], (1,0)=[0,5], (1,1)=[0,-1]
        net.cv.theta.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 5.0], [0.0, -1.0]]))
    x = torch.zeros(2, 3, 2, 2)
    x[0, 0, 0, :2] = torch.tensor([3.0, 0.5])   # close to class 0 by angle
    x[1, 0, 0, :2] = torch.tensor([0.2, 0.3])   # short, but closer in angle to [0, 5]
    out = net(x)
    assert out.shape == (2, 2) and out.argmax(1).tolist() == [0, 1]


def test_nearest_cv_normalised_or_euclidean():
    cvs = torch.tensor([[1.0, 0.0], [0.0, 5.0]])
    z = torch.tensor([[0.2, 0.3], [3.0, 0.5]])
    # by angle [0.2, 0.3] is nearer [0, 1]; by plain distance it is nearer [1, 0]
    assert N.nearest_cv(z, cvs).tolist() == [1, 0]
    assert N.nearest_cv(z, cvs, normalise=False).tolist() == [0, 0]


def test_class_graph_and_stats():
    E = torch.eye(6)
    E[0, 4] = E[4, 0] = 0.5    # rotation-0 CVs of classes 0 and 2 (R = 2)
    E[0, 1] = E[1, 0] = 1.0    # a rotation edge, not between classes' rotation-0 CVs
    G = N.class_graph(E, 3, 2)
    assert G.tolist() == [[0.0, 0.0, 0.5], [0.0, 0.0, 0.0], [0.5, 0.0, 0.0]]
    assert N.graph_stats(E, 3, 2) == {"graph_edges": 1, "graph_mean_degree": pytest.approx(2 / 3)}


def test_pca_2d_recovers_a_line():
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [2.0, 2.0, 0.0], [3.0, 3.0, 0.0]])
    P, mu, axes = figures.pca_2d(x)
    assert torch.allclose(mu, torch.tensor([1.5, 1.5, 0.0], dtype=torch.float64))
    assert torch.allclose(P[:, 0].abs(), torch.tensor([1.5, 0.5, 0.5, 1.5]) * math.sqrt(2), atol=1e-5)
    assert torch.allclose(P[:, 1], torch.zeros(4), atol=1e-5)


# ------------------------------------------------------------------ configuration and errors
def test_bad_hyper_parameters_fail_at_construction():
    for kw, msg in [({"rotations": 5}, "rotations"), ({"temperature": 0.0}, "temperature"),
                    ({"augment": "mixup"}, "augment"), ({"na_eps": 1.0}, "na_eps"), ({"na_k": 0}, "na_k"),
                    ({"cv_lr_mult": 0.0}, "cv_lr_mult"), ({"kd_weight": -1.0}, "kd_weight")]:
        with pytest.raises(ValueError, match=msg):
            N.NapaConfig(memory=0, **kw)
    with pytest.raises(ValueError, match="lr_later_factor"):
        N.NecilConfig(lr_later_factor=0.0, memory=0)
    with pytest.raises(ValueError, match="exemplar-free"):
        N.NapaVQ(N.NapaConfig(memory=20))
    with pytest.raises(ValueError, match="exemplar-free"):
        N.PassLearner(N.NapaConfig(memory=20))
    with pytest.raises(TypeError, match="NapaConfig"):
        N.PassLearner(IncrementalConfig(memory=0))
    with pytest.raises(ValueError, match="unknown ablation"):
        N.ablation_overrides("no_kd")
    assert N.NapaConfig(na_eps=0.5, na_age=3).e_min == 0.125


def test_later_tasks_use_the_reduced_learning_rate_and_adamw():
    cfg = N.NecilConfig(lr=0.01, lr_later_factor=0.1, memory=0, epochs=3, epochs_first=5)
    t0, t1 = cfg.train_config(0), cfg.train_config(1)
    assert (t0.lr, t0.epochs, t0.optimizer) == (0.01, 5, "adamw")
    assert t1.lr == pytest.approx(0.001) and t1.epochs == 3 and t1.optimizer == "adamw"


def test_chapter_plan_and_configs_check_parameters_first():
    plan = N.chapter_plan(["no_na", "gaussian_pa"])
    assert list(plan) == ["finetune", "pass", "napavq", "napavq_no_na", "napavq_gaussian_pa"]
    assert all(o["memory"] == 0 for _, o in plan.values())
    made = {label: arms.make_config(arms.get("incremental", a).config, {"rotations": 2}, **o)
            for label, (a, o) in plan.items()}
    assert type(made["finetune"]) is N.NecilConfig and arms.get("incremental", "necil_finetune").impl is N.NecilFineTune
    g = N.NapaVQ(made["napavq_gaussian_pa"]).hp
    assert g.augment == "gaussian" and g.na and g.rotations == 2
    assert not N.NapaVQ(made["napavq_no_na"]).hp.na
    with pytest.raises(ValueError, match="rotations"):
        arms.make_config(N.NapaConfig, {"rotations": 7}, memory=0)


def test_euclidean_metrics_need_every_task():
    assert N.euclidean_metrics([{"acc_euclidean": 60.0}, {"acc_euclidean": 40.0}]) == {
        "aia_euclidean": 50.0, "last_euclidean": 40.0}
    assert N.euclidean_metrics([{"acc_euclidean": 60.0}, {}]) == {} and N.euclidean_metrics([]) == {}


# ------------------------------------------------------------------ on a tiny stream
def _stream():
    return make_stream(classes=6, scenario="B0-Inc3", per_class=8, test_per_class=4, image_size=8)


def _cfg(**kw):
    return N.NapaConfig(arch="cnn3", arch_width=4, epochs=1, lr=0.01, batch_size=8, memory=0, **kw)


class _Spy(N.NapaVQ):
    """Keeps a copy of the CVs after each task."""

    def post_train(self, model, t, stream):
        self.snap = getattr(self, "snap", []) + [model.cv.vectors().detach().clone()]
        return super().post_train(model, t, stream)


def test_napavq_freezes_old_cvs_and_stores_next_task_prototypes(fake_data):
    stream = _stream()
    learner = _Spy(_cfg(rotations=2, na_k=3))
    res = run_stream(stream, learner, seed=0, progress=False)
    first, second = learner.snap
    assert torch.equal(first[:6], second[:6])         # 3 classes × 2 rotations frozen in task 2
    assert not torch.equal(first[6:], second[6:])     # the new classes' CVs trained
    assert learner.has_proto.all() and learner.protos.shape == (12, 16)
    E = res.model.cv.edges
    assert torch.equal(E, E.T) and (E.diagonal() == 1).all()
    assert res.extras[-1]["graph_mean_degree"] >= 0 and len(res.matrix.rows) == 2
    assert 0 <= res.extras[-1]["acc_euclidean"] <= 100


def test_pass_stores_rotation_0_prototypes_and_a_first_task_radius(fake_data):
    stream = _stream()
    learner = N.PassLearner(_cfg(rotations=2))
    res = run_stream(stream, learner, seed=0, progress=False)
    assert learner.has_proto.tolist() == [True, False] * 6     # rows c·R only
    assert learner.radius > 0 and res.extras[0]["radius"] == res.extras[1]["radius"]
    out = res.model(stream.data.x_test[:2].float())
    assert out.shape == (2, 6)


def test_chapter_sweep_pairs_the_claims_and_draws_the_graph(fake_data, tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_CHECKPOINTS", str(tmp_path / "ckpt"))
    spec = load_spec("napavq")
    params = spec.resolve("smoke", {"classes": 6, "scenario": "B0-Inc3", "per_class": 8, "test_per_class": 4,
                                    "image_size": 8, "seeds": [0, 1], "rotations": 2, "ablations": ["no_na"]})
    run = Run(spec, params, torch.device("cpu"), folder=tmp_path / "run")
    stream = protocol.stream(run)
    res = protocol.sweep(run, stream, N.chapter_plan(params["ablations"]), keep_models=True, progress=False)
    assert res.arms() == ["finetune", "pass", "napavq", "napavq_no_na"]
    assert "aia_euclidean" in res.of("napavq")[0]["metrics"] and "aia_euclidean" not in res.of("pass")[0]["metrics"]
    claims = {c.id: run.claim_values(c) for c in spec.claims}
    assert claims["napavq_beats_pass_aia"] == {str(s): v for s, v in res.paired("aia", "napavq", "pass").items()}
    assert "| napavq_no_na |" in tables.inference_markdown(res, ["napavq", "napavq_no_na"])
    assert tables.graph_markdown(res, ["napavq"]).startswith("| learner | after task 1 | after task 2 |")
    fig, data = figures.plot_neighbourhood(res.of("napavq")[0]["model"], stream, "t", max_classes=4)
    assert data["shown_classes"] == 4 and len(data["class_graph"]) == 6

