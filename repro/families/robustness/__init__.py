"""Robustness: one attack suite and one evaluation for every claim about adversarial robustness
(chapters 03 adasmooth, 12 dat, 21 cuda, 25 crossmax, 32 pubdef, 40 advft and 46 robcompare).

Parts:

* ``attacks``: the attack suite over maintained libraries — torchattacks 3.5 (FGSM, PGD Linf
  and L2, APGD-CE, APGD-T, FAB, Square; MI-/DI-/TI-/NI-FGSM for transfer) and pyautoattack's
  AutoAttack as the final check — behind one typed
  :class:`~repro.families.robustness.attacks.AttackSpec` whose ``as_record()`` holds every
  setting (ε, steps, step size, restarts, EOT samples, seed). Attacks run on [0, 1] pixels:
  a model trained on normalised inputs is wrapped in
  :class:`~repro.families.robustness.attacks.PixelModel`; the perturbation arithmetic stays
  fp32 when the model runs in bf16. :func:`~repro.families.robustness.attacks.eval_subset`
  draws the fixed evaluation subset whose indices go into the record, and
  :func:`~repro.families.robustness.attacks.robust_accuracy` measures clean and robust
  accuracy on it;
* ``sanity``: the checks that run with every robustness result (more steps never raise robust
  accuracy; an unbounded attack reaches ~0%; black-box or transfer attacks are not stronger
  than white-box ones) in a :class:`~repro.families.robustness.sanity.SanityReport`, whose
  ``flags()`` make a claim inconclusive and whose ``upper_bound`` marks a number measured by
  an attack not adapted to the defence.

* ``training``: adversarial training as a loss for the one trainer (``fit(..., loss_fn=
  adversarial_loss(AdvTrainConfig(...)))``): PGD-AT, FGSM with a random start and TRADES, the
  perturbation crafted in fp32 by the package's own loop (each method in the mode its
  reference code uses), every attack step counted in ``repro.train.WORK["attack_grads"]``;
* ``figures``: the family's standard figures, robust accuracy against ε (one curve per model)
  and clean against robust accuracy across arms;
* ``protocol``: the data subset, :class:`~repro.families.robustness.protocol.RobustConfig`
  (network, SGD recipe, optional adversarial training, poison and evaluation) and ``jobs`` for
  ``repro.sweep``, which checks every setting (ε, attacks, norms) before any job starts;
* ``evaluate``: clean and robust accuracy of a trained model on the fixed evaluation subset
  under every attack of the config, with the sanity checks and their flags;
* ``tables``: the tables, robustness curves and guards every chapter reads from a sweep
  (robust accuracy per attack and per ε, the sanity report, a failed check or an adversarial
  training that did not harden the model as a flag);
* ``arms/standard.py``: the family's main arm (train, plainly or adversarially, from scratch or
  fine-tuning a shared model, then evaluate); the checkpoints of every model go to the
  family's shared folders (``protocol.checkpoint_folders``), so a model two chapters ask for is
  trained once; ``arms/compare.py``: the comparison chapter's arm, which builds any chapter's
  model with that chapter's registered builder and evaluates it;
* chapters: ``adasmooth`` (03, mixing a standard and a robust network), ``dat`` (12, dual
  adversarial training, with L2 adversarial training in ``training``), ``cuda`` (21,
  class-wise convolution poison, ``repro.data.poison``), ``crossmax`` (25, multi-resolution
  self-ensemble), ``pubdef`` (32, training against transfer attacks, ``transfer``), ``advft``
  (40, adversarial fine-tuning) and ``robcompare`` (46, every model under one evaluation).
"""
