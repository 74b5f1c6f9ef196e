"""Uncertainty and OOD detection: chapters 06 dtcp, 30 tca, 31 palm and the OOD-detector
comparison (44 oodcompare).

Every chapter of the family trains a classifier (or encoder) once per tier, setting and seed,
stores its logits and features on every evaluation set as an artifact
(:mod:`~repro.families.uncertainty.predictions`), and then runs its analysis on those cached
predictions in seconds:

* ``protocol``: the data and typed configs a chapter's parameters build, the arm contract
  and the sweep's jobs;
* ``predictions``: cached logits/features per evaluation set (clean test, corrupted test,
  OOD sets), keyed by a hash of the setting and the data checksum;
* ``detectors``: OOD scores, one definition each (MSP, energy, max-logit, Mahalanobis,
  kNN distance, the class-agnostic Mahalanobis of SSD+/PALM);
* ``conformal`` and ``abstention``: split conformal prediction sets (THR/APS/RAPS and the
  dual-threshold paper's variant) and the abstention ROC;
* ``arms/``: the trained models (cross-entropy classifier, PALM encoder…);
* ``figures`` and ``tables``: the family's ROC curves and its chapters' own figures/tables.

Corruptions and OOD sets are data (``repro.data.corruptions``, ``repro.data.ood``).
"""
