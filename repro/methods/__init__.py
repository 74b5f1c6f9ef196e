"""Multi-step algorithms of the papers (large-batch regimes, hard-batch selection, ...)."""
