"""The training family: papers that change *how* one network is trained on CIFAR-100 (the
loss formed per batch, the batches trained on, the batch size and its regime) and compare
the trained settings on equal terms: the same data subset, initial weights and batch
order per seed.

Chapters: 35 msdropout (multi-sample dropout), 36 hardbatch (training on the highest-loss
mini-batches), 41 ghostbn (large batches without a generalisation gap: √-LR, Ghost BN,
regime adaptation).

Parts:

* ``protocol.py``: the data subset every chapter draws from its parameters
  (:func:`~repro.families.training.protocol.data_subset`), the typed config every arm
  starts from (:class:`~repro.families.training.protocol.TrainingConfig`) and the
  ``repro.train.TrainConfig`` it builds, and :func:`~repro.families.training.protocol.jobs`,
  which turns arms + configs into the jobs of ``repro.sweep.sweep``;
* ``arms/``: one module per method (``msdropout``, ``hardbatch``, ``ghostbn``); each registers
  its arm with ``@repro.arms.arm(name, family="training", config=...)``. An arm is one trained
  setting, a function ``(config, data, seed, checkpoint_dir, device) -> repro.sweep.Job``
  whose metrics (``test_err``, ``top1``, ``train_loss``…) become the sweep's rows;
* ``figures.py``: the family's figures, drawn from sweep results;
* ``tables.py``: its Markdown tables (through ``repro.tables.markdown_table``).

Layers live in ``repro/layers`` (``multi_sample_dropout``, ``ghost_bn``), networks in
``repro/models``, the 1-D loss-landscape interpolation in ``repro.plots.landscape``.
"""
