"""Knowledge distillation: a student learns from a teacher (fixed, trained alongside, or its own
earlier self), every method on the same pair, data, schedule and seeds.

Chapters 13 (LSSKD), 15 (PLD), 18 (dataset reinforcement), 34 (NKD/USKD), 37 (BD-KD) and 42
(the comparison) share the protocol ``repro/papers/protocols/distillation.toml``. Parts:

* ``protocol.py``: ``DistillConfig`` (the protocol's parameters; every arm's config extends it),
  the data, the shared teacher, one seed's ``StudentSetup``, the training helpers arms use, the
  student evaluation (top-1, ECE, NLL, confidence) and ``jobs`` / ``sweep``, which turn labelled
  arms with their configs into ``repro.sweep`` jobs;
* ``teachers.py``: teachers trained once per setting and stored (``repro.artifacts``);
* ``arms/``: one module per method, each registering its arms with
  ``@repro.arms.arm(name, family="distillation", config=...)``: ``kd`` (ce, kd, nkd, pld, dist),
  ``uskd``, ``self_kd`` (pskd, lsskd), ``online_kd`` (dml, bdkd), ``reinforce`` (erm,
  reinforced, teacher_kl — dataset reinforcement, its store and its baselines). A module may
  also hold its chapter's arm plan (``kd.pld_plan``, ``online_kd.bdkd_plan``,
  ``reinforce.dr_plan``): labelled arms with their configs, checked before any training;
* ``figures.py``: the family's figures; ``tables.py``: its Markdown tables;
* ``analysis.py``: the chapters' analyses beyond the sweep's metrics (non-target mass, USKD's
  soft labels, PLD's loss surfaces and interpolation, corruptions).

The training-only heads (USKD's weak head, LSSKD's branches, the online pair) are in
``repro.layers.distillation``; the losses in ``repro.losses.distillation``.
"""
