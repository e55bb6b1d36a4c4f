"""Pixel metrics, in JAX and batched. Frames are [..., H, W, 3] in [0, 255]."""
import jax.numpy as jnp


def mse(a, b):
  """Mean squared error per clip: [B, ...] -> [B]."""
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  return jnp.mean(jnp.square(a - b), axis=tuple(range(1, a.ndim)))


def psnr(a, b, max_value: float = 255.0):
  """PSNR in dB per clip (over all its frames): [B, ...] -> [B]."""
  return 10.0 * jnp.log10(max_value ** 2 / jnp.maximum(mse(a, b), 1e-10))
