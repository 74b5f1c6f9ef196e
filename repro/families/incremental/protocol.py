"""The class-incremental protocol as a chapter uses it: what its parameters build, and sweeps of
labelled arms over seeds.

The protocol's parameters (``repro/papers/protocols/incremental.toml``: classes, scenario,
class order, image subset, memory, seeds) build the stream (:func:`stream`); a learner arm's
settings are its config class (an ``IncrementalConfig`` subclass) filled from the chapter's
parameters by ``repro.arms.make_config`` (:func:`config`). A *plan* names the jobs of a
chapter: ``{label: (arm, overrides)}``, e.g. ::

    {"finetune": ("finetune", {}), "replay_kd": ("wa", {"align": False, "clip_weights": False}),
     "wa": ("wa", {})}

Labels are identifiers (they are the ``arm`` of the sweep's rows and of the claims); the
same registered arm may appear under several labels with different overrides.

:func:`sweep` trains every (label, seed) with ``run_stream`` through ``repro.sweep`` (seeding,
per-task checkpoints and resume, progress, cost) and returns its ``SweepResult``. Each job's
metrics are the accuracy matrix's numbers (``aia``, ``last``, ``forgetting``, ``old_last``,
``new_last``) and the learner's own (``Learner.metrics``), estimated on the stream's test
images (``n_test``); the matrix, the accuracy after each task and the per-task extras are in
the job's ``extra``. Only this module (and the chapters) see the run; the arms see typed configs.

Chapter-specific glue that needs the run (nmc's backbone and frozen features, OCA's old
model, GTEP's two streams and its search) is at the end of this module.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ... import arms as registry
from ...sweep import Job, JobFn, SweepResult
from ...sweep import sweep as run_sweep
from .learners import IncrementalConfig, Learner, StreamResult, run_stream
from .memory import extract_features
from .stream import Stream, StreamConfig, make_stream

FAMILY = "incremental"
SUMMARY_KEYS = ("aia", "last", "forgetting", "old_last", "new_last")

Factory = Callable[[Any], Learner]
Plan = Mapping[str, tuple[str, Mapping[str, Any]]]


# --------------------------------------------------------------------------- the stream
def stream_config(run) -> StreamConfig:
    return registry.make_config(StreamConfig, run.params)


def stream(run) -> Stream:
    """The stream the protocol's parameters name (its data recorded in the run)."""
    c = stream_config(run)
    return make_stream(classes=c.classes, scenario=c.scenario, order_seed=c.order_seed,
                       per_class=c.per_class or None, test_per_class=c.test_per_class or None,
                       image_size=c.image_size, data_seed=c.data_seed, run=run)


def n_test(stream: Stream) -> int:
    """The test images behind a stream's accuracies: every test image of its classes."""
    return int(sum(stream.test_sizes()))


# --------------------------------------------------------------------------- configs and plans
def config(cls: type, run, **overrides: Any):
    """``cls`` (a dataclass) from the run's parameters, ``overrides`` winning."""
    return registry.make_config(cls, run.params, **overrides)


def check_plan(plan: Plan) -> None:
    """Labels are identifiers (ValueError) and every arm is registered (ParameterError)."""
    for label, (name, _) in plan.items():
        if not str(label).isidentifier():
            raise ValueError(f"label {label!r} must be an identifier (it becomes part of metric names)")
        registry.get(FAMILY, name)


def configs(run, plan: Plan) -> dict[str, tuple[registry.Arm, Any]]:
    """label → (the registered arm, its config from the run's parameters and the overrides).
    Every config is built, and so checked, before anything trains."""
    check_plan(plan)
    out = {}
    for label, (name, overrides) in plan.items():
        a = registry.get(FAMILY, name)
        out[label] = (a, registry.make_config(a.config, run.params, **dict(overrides)))
    return out


# --------------------------------------------------------------------------- jobs and the sweep
def stream_job(res: StreamResult, stream: Stream, learner: Learner | None = None, **extra: Any) -> Job:
    """A sweep Job from one stream run: the matrix's summary and the learner's own metrics."""
    metrics = {**res.summary(), **(learner.metrics(res) if learner is not None else {})}
    return Job(metrics=metrics, n_test=n_test(stream), train_s=res.train_s, train_images=res.train_images,
               extra={**res.extra(), "order_seed": stream.order_seed, **extra}, model=res.model)


def learner_job(stream: Stream, factory: Factory, cfg: Any, device: Any, label: str,
                progress: bool = True) -> JobFn:
    """The job that trains ``factory(cfg)`` over ``stream`` for one seed (resumable per task)."""
    def job(seed: int, checkpoint_dir) -> Job:
        learner = factory(cfg)
        res = run_stream(stream, learner, seed, device, checkpoint_dir=checkpoint_dir, progress=progress,
                         label=label)
        return stream_job(res, stream, learner)
    return job


def sweep(run, stream: Stream, plan: Plan, *, factory: Callable[[registry.Arm], Factory] | None = None,
          keep_models: bool = False, progress: bool = True, note: bool = True) -> SweepResult:
    """Train every (label, seed) of ``plan`` over ``stream`` (all labels of a seed, then the
    next seed); returns the sweep's result, its rows logged in the run.

    ``factory(arm)``: how to make the learner of an arm from its config (default: the arm's
    class). ``note``: keep every job's metrics and extras in the record's notes
    (``notes["jobs"]``).
    """
    cfgs = configs(run, plan)
    make = factory or (lambda a: a.impl)
    jobs = {label: learner_job(stream, make(a), cfg, run.device, label, progress) for label, (a, cfg) in cfgs.items()}
    res = run_sweep(run, jobs, keep_models=keep_models, progress=progress)
    guard_tasks(run, res)
    if note:
        note_jobs(run, res)
    return res


def note_jobs(run, res: SweepResult) -> None:
    """Add the sweep's jobs (metrics, cost, extras; no models) to the record's notes."""
    run.note(jobs=run.notes.get("jobs", []) + res.jsonable())


def untrained_tasks(A: Sequence[Sequence[float]], task_sizes: Sequence[int] | None = None) -> list[int]:
    """Tasks t that were not learned even right after training on them: A[t][t] at or below
    chance, the accuracy of guessing among the classes seen so far (100 / their number; 0
    when the task sizes are unknown)."""
    out = []
    for t, row in enumerate(A):
        if t >= len(row):
            continue
        chance = 100.0 / sum(task_sizes[: t + 1]) if task_sizes and len(task_sizes) > t else 0.0
        if row[t] <= chance:
            out.append(t)
    return out


def guard_tasks(run, res: SweepResult) -> None:
    """Flag every arm that scored at or below chance on a task right after learning it (a guard
    of the verdict rule: such an arm learned nothing there, so a comparison with it says nothing)."""
    for j in res.jobs:
        extra = j.get("extra") or {}
        A = extra.get("A") or []
        bad = untrained_tasks(A, extra.get("task_sizes"))
        if bad:
            t = bad[0]
            run.flag(f"arm {j['arm']} scored {A[t][t]:.1f}% (at or below chance) on task {t} right after "
                     f"learning it (seed {j['seed']})", arm=j["arm"])


# --------------------------------------------------------------------------- chapter 10 (nmc)
def frozen_job(features: Any, impl: Callable[..., StreamResult], cfg: Any, label: str) -> JobFn:
    """The job of a frozen-feature arm (``impl(features, cfg, seed, label=…)``, no training of
    the backbone) on features extracted once."""
    def job(seed: int, checkpoint_dir) -> Job:
        return stream_job(impl(features, cfg, seed, label=label), features.stream)
    return job


def nmc_stream(run) -> tuple[Stream, list[int]]:
    """Chapter 10's evaluated stream and pretraining classes (CIFAR-100 ids; [] for a timm backbone).

    Every config is checked first; then the protocol's stream is loaded, less the tasks that hold
    pretraining classes (recorded in the run's notes, and in the figure captions through the
    data description)."""
    from ...data import class_order
    from .arms import nmc

    bcfg = config(nmc.BackboneConfig, run)
    for label, (a, cfg) in configs(run, nmc.PLAN).items():
        if a.name not in nmc.FROZEN_ARMS:
            nmc.check_finetune(cfg)
    scfg = stream_config(run)
    pre: list[int] = []
    kept = None
    if bcfg.backbone == nmc.CIFAR:
        pre, kept = nmc.pretrain_split(class_order(scfg.order_seed), nmc.protocol_tasks(scfg), bcfg.pretrain_classes)
    s = stream(run)
    if kept is None:
        return s, []
    if kept < s.num_tasks:
        s = nmc.restrict_stream(s, kept)
        run.data_info["description"] = s.data.describe()
    run.note(stream={"scenario": s.scenario, "tasks": s.num_tasks, "classes": s.num_classes,
                     "order": s.order, "pretrain_classes": pre})
    return s, pre


def nmc_backbone(run, stream: Stream, pretrain_ids: list[int], seed: int):
    """The backbone of run seed ``seed``: with ``backbone='cifar'`` the one pretrained here with
    that seed (from the backbones store: trained once per setting and seed); with a timm model
    name its checkpoint, the same for every seed."""
    from .arms import nmc

    bcfg = config(nmc.BackboneConfig, run)
    if bcfg.per_seed:
        return nmc.cifar_backbone(bcfg, stream_config(run), stream, pretrain_ids, seed, run.device).value
    return nmc.timm_backbone(bcfg.backbone, bcfg.weights, bcfg.timm_pretrained)


def nmc_backbones(run, stream: Stream, pretrain_ids: list[int]):
    """The chapter's backbones as ``nmc.SeedBackbones``: one per run seed when pretrained here,
    one timm checkpoint shared by every seed otherwise. Nothing is loaded or trained yet: a
    seed's backbone is prepared when its first job asks for it, and its facts then go in the
    record's notes (``notes["backbones"][seed]``)."""
    from .arms import nmc

    bcfg = config(nmc.BackboneConfig, run)
    if bcfg.per_seed:
        name = f"{bcfg.arch} pretrained here on {len(pretrain_ids)} CIFAR-100 classes, one per seed"
    else:
        name = f"{bcfg.backbone} (one checkpoint for every seed)"
    run.note(backbones={})
    return nmc.SeedBackbones(lambda seed: nmc_backbone(run, stream, pretrain_ids, seed), stream, run.device,
                             per_seed=bcfg.per_seed, name=name)


def _note_backbone(run, backbones, seed: int) -> None:
    """The seed's backbone facts (source, accuracy, cost, store key, features) in the notes."""
    notes = run.notes.setdefault("backbones", {})
    if str(seed) not in notes:
        bb, feats = backbones.get(seed)
        notes[str(seed)] = {**bb.info, "shared": not backbones.per_seed, "feature_dim": int(feats.f_train.shape[1]),
                            "extract_s": round(feats.extract_s, 2)}


def nmc_sweep(run, stream: Stream, backbones: Any, progress: bool = True) -> SweepResult:
    """Chapter 10's arms over the seeds, each seed's from that seed's backbone
    (``backbones``: :func:`nmc_backbones`): the frozen-feature ones (``nmc``, ``nmc_raw``,
    ``probe_seq``, ``joint_probe``) on its features, extracted once, fine-tuning and replay
    starting from it through the incremental loop (checkpointed per task). The sweep runs every
    arm of a seed before the next, so one seed's backbone and features are held at a time."""
    from .arms import nmc

    def frozen(a: registry.Arm, cfg: Any, label: str) -> JobFn:
        def job(seed: int, checkpoint_dir) -> Job:
            _note_backbone(run, backbones, seed)
            return frozen_job(backbones.features(seed), a.impl, cfg, label)(seed, checkpoint_dir)
        return job

    def tuned(a: registry.Arm, cfg: Any, label: str) -> JobFn:
        def job(seed: int, checkpoint_dir) -> Job:
            _note_backbone(run, backbones, seed)
            factory = nmc.pretrained(a.impl, backbones.backbone(seed))
            return learner_job(stream, factory, cfg, run.device, label, progress)(seed, checkpoint_dir)
        return job

    jobs = {label: (frozen if a.name in nmc.FROZEN_ARMS else tuned)(a, cfg, label)
            for label, (a, cfg) in configs(run, nmc.PLAN).items()}
    res = run_sweep(run, jobs, progress=progress)
    guard_tasks(run, res)
    note_jobs(run, res)
    return res


# --------------------------------------------------------------------------- chapter 01 (oca)
def oca_sweep(run, stream: Stream, plan: Plan, progress: bool = True) -> SweepResult:
    """Chapter 01's jobs over the seeds: per seed the ``old`` model (the first half of the
    classes) and its pseudo-classifier, then every new model of ``plan`` (all classes), each
    scored by leave-one-out retrieval on the stream's test images against the old model's
    gallery and its own. The old model of a seed is trained once (its job) and reused by the
    new models' jobs; every training is checkpointed under its (label, seed)."""
    from .arms import oca

    base = config(oca.CompatConfig, run)
    cfgs = configs(run, plan)
    K = stream.num_classes
    n_old = oca.old_classes(K)
    y_train = stream.data.y_train
    old_idx = torch.nonzero(y_train < n_old).flatten()
    new_idx = torch.arange(len(y_train))
    x_test, y_test = stream.data.x_test, stream.data.y_test
    n = int(len(y_test))
    olds: dict[int, dict[str, Any]] = {}

    def old_state(seed: int) -> dict[str, Any]:
        if seed not in olds:  # one seed's old model at a time (the sweep runs a seed's jobs together)
            olds.clear()
            model, fitres = oca.train_model(oca.OldModel(base), stream, old_idx, n_old, seed, run.device,
                                            run.checkpoint_dir("old", seed))
            P = oca.pseudo_classifier(model, stream.data.x_train, y_train, K, run.device, base.pseudo_classifier)
            olds[seed] = {"model": model, "fit": fitres, "P": P, "f_old": extract_features(model, x_test, run.device)}
        return olds[seed]

    def old_job(seed: int, checkpoint_dir) -> Job:
        st = old_state(seed)
        pairs = {"old_old": oca.retrieval_metrics(st["f_old"], y_test, st["f_old"], y_test)}
        acc = oca.accuracy(st["model"], stream, n_old, run.device)
        return Job.from_fits([st["fit"]], oca.old_metrics(pairs, acc), n_test=n, extra={"pairs": pairs, "classes": n_old})

    def new_job(a: registry.Arm, cfg: Any) -> JobFn:
        def job(seed: int, checkpoint_dir) -> Job:
            st = old_state(seed)
            model, fitres = oca.train_model(a.impl(cfg), stream, new_idx, K, seed, run.device, checkpoint_dir, st["P"])
            f_new = extract_features(model, x_test, run.device)
            pairs = oca.compatibility_matrix(st["f_old"], f_new, y_test)
            acc = oca.accuracy(model, stream, K, run.device)
            return Job.from_fits([fitres], oca.new_metrics(pairs, acc), n_test=n,
                                 extra={"pairs": pairs, "classes": K, "dim": model.dim,
                                        "ortho_error": model.ortho_error(), "feature_var": f_new.var(0).tolist()})
        return job

    jobs: dict[str, JobFn] = {"old": old_job}
    jobs.update({label: new_job(a, cfg) for label, (a, cfg) in cfgs.items()})
    res = run_sweep(run, jobs, progress=progress)
    note_jobs(run, res)
    return res


# --------------------------------------------------------------------------- chapter 02 (gtep)
def gtep_check(run) -> tuple[list[int], list[int]]:
    """Every setting of chapter 02 checked before any data is read (the search, the learners'
    shared config, the class split and the scenario of each stream); returns the CIFAR-100 ids
    of D^HT and D^E."""
    from ...data import class_order, incremental_tasks
    from .arms import gtep
    from .stream import parse_scenario

    scfg = stream_config(run)
    search_cfg = config(gtep.SearchConfig, run)
    gtep.check_learner_config(config(IncrementalConfig, run))
    tuning, evaluation = gtep.split_classes(class_order(scfg.order_seed), scfg.classes, search_cfg.tuning_split)
    base, inc = parse_scenario(scfg.scenario)
    for cls in (tuning, evaluation):
        incremental_tasks(list(range(len(cls))), base, inc)  # raises if the scenario does not fit
    return tuning, evaluation


def gtep_streams(run) -> dict[str, Stream]:
    """D^HT and D^E as two streams of the protocol's scenario (one data load, recorded in the run),
    after :func:`gtep_check`. Both class sets are loaded together as a prefix of the class order,
    so in the ``disjoint`` split D^E holds exactly the images of the family's protocol stream."""
    from ...data import class_order, incremental_tasks
    from .arms import gtep
    from .stream import parse_scenario

    tuning, evaluation = gtep_check(run)
    scfg = stream_config(run)
    order = class_order(scfg.order_seed)
    base, inc = parse_scenario(scfg.scenario)
    union = order[:max(order.index(c) for c in tuning + evaluation) + 1]
    data = run.data(classes=union, per_class=scfg.per_class or None, test_per_class=scfg.test_per_class or None,
                    image_size=scfg.image_size, seed=scfg.data_seed)
    out = {}
    for phase, cls in zip(gtep.PHASES, (tuning, evaluation)):
        sub = gtep.subset_dataset(data, [union.index(c) for c in cls])
        out[phase] = Stream(data=sub, order=list(cls), tasks=incremental_tasks(list(range(len(cls))), base, inc),
                            scenario=scfg.scenario, order_seed=scfg.order_seed)
    return out


def gtep_search(run) -> dict[str, list[dict[str, Any]]]:
    """Each algorithm's sampled configurations, from the chapter's search parameters."""
    from .arms import gtep

    return gtep.chapter_search(config(gtep.SearchConfig, run))


def gtep_memory(run, stream: Stream) -> int:
    """The exemplar budget of one of the two streams (the protocol's exemplars per class)."""
    from .arms import gtep

    return gtep.stream_memory(config(IncrementalConfig, run).memory, stream_config(run).classes, stream.num_classes)


def gtep_sweep(run, streams: Mapping[str, Stream], search: Mapping[str, list[dict[str, Any]]],
               progress: bool = True) -> SweepResult:
    """Train every (seed, phase, algorithm, configuration) once with the family's sweep; labels
    ``{phase}_{algorithm}_c{i}``. Each job is checkpointed per task under its (label, seed), so an
    interrupted search resumes where it stopped; its extra names its phase, algorithm,
    configuration and hyper-parameters (``arms.gtep.search_rows`` reads them back)."""
    from .arms import gtep

    jobs: dict[str, JobFn] = {}
    for phase in gtep.PHASES:
        stream = streams[phase]
        mem = gtep_memory(run, stream)
        for algo, hps in search.items():
            a = registry.get(FAMILY, algo)
            for i, hp in enumerate(hps):
                label = gtep.search_label(phase, algo, i)
                cfg = registry.make_config(a.config, run.params, memory=mem, **hp)
                jobs[label] = _tagged(learner_job(stream, a.impl, cfg, run.device, label, progress=False),
                                      phase=phase, algorithm=algo, config=i, hp=dict(hp))
    return run_sweep(run, jobs, progress=progress)


def _tagged(job: JobFn, **tags: Any) -> JobFn:
    """A job whose result's extra also holds ``tags``."""
    def tagged(seed: int, checkpoint_dir) -> Job:
        res = job(seed, checkpoint_dir)
        res.extra.update(tags)
        return res
    return tagged


def gtep_log(run, rows: list[dict[str, Any]], algorithms: list[str]) -> dict[int, dict[str, float]]:
    """Log the chapter's per-seed numbers (``arms.gtep.seed_metrics``; a NaN ρ from a constant
    score list is left out)."""
    import numpy as np

    from .arms import gtep

    per = gtep.seed_metrics(rows, algorithms)
    for s, v in per.items():
        run.log(s, **{k: x for k, x in v.items() if np.isfinite(x)})
    for key, why in gtep.same_choice_flags(rows, algorithms).items():
        run.flag(why, claim=key)
    return per
