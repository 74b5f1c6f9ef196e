"""Robustness: chapters 03 adasmooth, 12 dat, 21 cuda, 25 crossmax, 32 pubdef and 40 advft —
one attack suite and one evaluation for every claim about adversarial robustness.

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
* ``arms/standard.py``: the one arm (train, plainly or adversarially, then evaluate);
* ``cuda``: chapter 21 (class-wise convolution poison, ``repro.data.poison``).

To come with the other chapters: L2 adversarial training and a BatchNorm that stays frozen
through ``fit`` (12), fine-tuning from a trained model and a piecewise-linear learning-rate
schedule (40), transfer sets in the evaluation (32), wrappers for stochastic or mixed models
with EOT (03, 25), robust accuracy per epoch, and checkpoints shared across chapters (the
comparison chapter).
"""
