"""Loaders and JAX ports of pretrained models and released checkpoints:
the VidTok causal VAE (vidtok.py) and VideoFlexTok release checkpoints
(official.py)."""
