"""The class-incremental family's arms, one module per method; each registers its arms with
``repro.arms.arm(name, family="incremental", config=...)`` on import (``repro.arms.load_family``
imports them all).

* ``baselines``: fine-tuning, replay, replay + KD and joint training (every chapter's baselines);
* ``wa``: Weight Aligning (chapter 24);
* ``nmc``: the nearest-mean classifier and linear probes on a frozen pretrained backbone (10);
* ``oca``: backward-compatible representations, BCT and OCA (01);
* ``gcab``: gated class-attention with cascaded drift compensation (04);
* ``napavq``: NAPA-VQ and its PASS-style baseline (07);
* ``gtep``: the two-phase evaluation protocol's search over the baselines' hyper-parameters (02).
"""
