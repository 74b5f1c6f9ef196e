"""repro: testing the headline CIFAR-100 claims of deep-learning papers.

``run = repro.start("ghostbn", globals())`` opens a chapter's run; see ``repro.run``.
"""
__version__ = "0.1.0"


def start(slug: str, ns: dict):
    """Validate a notebook's parameters and open its run record (see ``repro.run.start``)."""
    from .run import start as _start

    return _start(slug, ns)
