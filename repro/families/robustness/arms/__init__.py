"""The robustness family's arms (found by ``repro.arms.load_family``)."""
