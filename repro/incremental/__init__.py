"""Transitional: the chapter mechanics of the chapters not yet moved to ``repro.families.incremental``."""
