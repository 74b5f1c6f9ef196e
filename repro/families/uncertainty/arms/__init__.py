"""The uncertainty family's trained models, one module per method (each registers its arm)."""
