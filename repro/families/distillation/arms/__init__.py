"""The distillation family's arms, one module per method; each registers its arms with
``@repro.arms.arm(name, family="distillation", config=...)`` (``repro.arms.load_family``
imports every module here: adding a method is adding a module)."""
