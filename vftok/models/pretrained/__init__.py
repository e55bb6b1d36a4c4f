"""Frozen pretrained networks ported to JAX (weights read offline)."""
