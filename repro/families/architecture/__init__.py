"""The architecture family: papers that change one part of a network (token mixer, activation,
gates, convolution kernel, stage layout) and claim it trains to a better CIFAR-100 model.

Chapters: 19 hag (hard-attention gates with gradient routing), 20 crrelu (an entropy-derived
ReLU correction), 22 coswin (Swin with a convolutional local branch), 23 wconv (weighted
convolution), 26 karat (learnable Kolmogorov–Arnold attention), 29 astroformer (C-C-C-T vs
C-C-T-T hybrid stacks at low data), 33 spectformer (spectral blocks first, attention later),
and the comparison chapter 45 archcompare (every variant under one recipe).

One recipe for the whole family (AdamW, cosine with linear warm-up, label smoothing, crop and
flip, the same epochs and batch), set by the shared protocol ``repro/papers/protocols/
architecture.toml``; arms differ only in the network (or, for gradient routing, in the update
of the gates). Every job records parameters and forward FLOPs (``repro.flops``, attention and
FFTs included) and its training throughput.

Parts:

* ``protocol.py``: the data subset, :class:`~repro.families.architecture.protocol.ArchConfig`
  (model name + keyword arguments + the recipe), the ``repro.train.TrainConfig`` it gives, the
  model's cost, and :func:`~repro.families.architecture.protocol.jobs` for ``repro.sweep``;
* ``arms/standard.py``: the two arms: ``standard`` (any registered model, one optimiser) and
  ``routing`` (chapter 19's gradient routing: gates on their own optimiser and pass);
* ``traces.py``: what a job logs about its own parameters each epoch (CRReLU's ε per block,
  gate openings, weighted-convolution densities);
* ``probes.py``: attention matrices of a trained slot ViT, spectral filters;
* ``figures.py`` and ``tables.py``;
* one module per chapter with its arms (``arm_configs(params)``), probes and chapter figures:
  ``hag``, ``crrelu``, ``coswin``, ``wconv``, ``karat``, ``astroformer``, ``spectformer`` and
  ``archcompare`` (which builds its variants through the other modules' ``arm_configs``).

Networks live in ``repro/models`` (``slot_vit``, ``swin_cifar``, ``maxxvit_cifar``,
``wconv_net``), layers in ``repro/layers``.
"""
