"""Loaders and JAX ports of pretrained models and released checkpoints."""
