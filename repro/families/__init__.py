"""Families: papers that test their claims on equal terms, one package each.

Every family package (``repro/families/<name>/``) has the same parts:

* ``protocol.py``: what its protocol's parameters build (data, stream, teacher…) and the
  typed config every arm of the family starts from;
* ``arms/``: one module per method, each registering its arms with ``repro.arms.arm``
  (found by ``repro.arms.load_family``: adding a module is all it takes);
* ``figures.py``: the family's standard figures, drawn from sweep results;
* ``tables.py``: its standard tables (Markdown, through ``repro.tables``).

What several families share (the seeded data subset, its fingerprint, the family-wide
checkpoint folders) is in :mod:`repro.families.common`.

The shared parameters and tier values of a family's protocol are data, in
``repro/papers/protocols/<name>.toml``; a chapter that sets ``protocol = "<name>"`` gets them
and may not redefine them.
"""

# Moving a chapter onto this shape (what every family follows; see README "Adding a paper"):
#
# * Results must not change. Before moving a chapter, run it at the smoke tier on the real data
#   (fixed seeds make CPU runs bit-identical) and keep its record's per-seed metrics; after the
#   move every metric must be identical (timings aside). tests/test_notebooks.py pins three
#   chapters (24-wa, 34-nkd, 35-msdropout).
# * Arms (``repro.arms.arm``) take a typed config built by ``repro.arms.make_config(Config,
#   run.params, **overrides)``; algorithm code never sees the run or ``p["…"]``. Only the
#   family's protocol glue, at the level of the sweep, takes the run.
# * Chapters train arms × seeds with ``repro.sweep.sweep(run, jobs)``; jobs return
#   ``repro.sweep.Job`` (metrics, n_test, cost from the FitResults, extra).
# * Claims name their parts in the spec (``metric``, ``arm``, ``baseline``): the run pairs the
#   sweep's rows by seed; hand-made difference metrics are no longer logged for them.
# * nn.Modules go to repro/layers or repro/models (registered), losses to repro/losses,
#   figures to the family's figures.py (generic ones to repro/plots), Markdown tables through
#   repro.tables.markdown_table; cached expensive things through repro.artifacts.
