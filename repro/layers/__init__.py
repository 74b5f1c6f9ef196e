"""Layers the papers introduce (Ghost BatchNorm, multi-sample dropout heads, ...)."""
