"""Families: papers that test their claims on equal terms, one package each.

Every family package (``repro/families/<name>/``) has the same parts:

* ``protocol.py``: what its protocol's parameters build (data, stream, teacher…) and the
  typed config every arm of the family starts from;
* ``arms/``: one module per method, each registering its arms with ``repro.arms.arm``
  (found by ``repro.arms.load_family``: adding a module is all it takes);
* ``figures.py``: the family's standard figures, drawn from sweep results;
* ``tables.py``: its standard tables (Markdown, through ``repro.tables``).

The shared parameters and tier values of a family's protocol are data, in
``repro/papers/protocols/<name>.toml``; a chapter that sets ``protocol = "<name>"`` gets them
and may not redefine them.
"""
