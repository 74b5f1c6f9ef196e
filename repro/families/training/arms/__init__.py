"""The training family's methods, one module each (found by ``repro.arms.load_family``)."""
