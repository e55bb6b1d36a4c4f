"""Pixel metrics, in JAX and batched. Frames are [..., H, W, 3] in [0, 255].

Every metric maps a batch [B, ...] (clips [B, F, H, W, 3] or images
[B, H, W, 3]) to one value per element of the batch, [B]:
  mse, mae: mean over all of the clip's pixels and channels;
  psnr: 10 log10(max^2 / mse) with the mse over the whole clip (as
    skimage.metrics.peak_signal_noise_ratio on the clip array);
  ssim: dm-pix SSIM (Gaussian window 11 x 11, sigma 1.5, k1 0.01, k2 0.03,
    'valid' filtering; channels averaged) of every frame, averaged over the
    clip's frames. Computed on data scaled to [0, 1] (x / max_value, SSIM
    constants for data range 1), which equals SSIM on the [0, 255] data with
    data_range=255 (skimage structural_similarity with gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=255).
"""
import functools

import jax
import jax.numpy as jnp


def _reduce(x):
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def mse(a, b):
  """Mean squared error per clip: [B, ...] -> [B]."""
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  return _reduce(jnp.square(a - b))


def mae(a, b):
  """Mean absolute error per clip: [B, ...] -> [B]."""
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  return _reduce(jnp.abs(a - b))


def psnr(a, b, max_value: float = 255.0):
  """PSNR in dB per clip (over all its frames): [B, ...] -> [B]."""
  return 10.0 * jnp.log10(max_value ** 2 / jnp.maximum(mse(a, b), 1e-10))


def ssim(a, b, max_value: float = 255.0):
  """Mean SSIM per clip: [B, ..., H, W, C] in [0, max_value] -> [B] (frames
  of a clip averaged; H and W must be >= 11)."""
  import dm_pix  # pylint: disable=g-import-not-at-top
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  if a.shape != b.shape:
    raise ValueError(f'shapes differ: {a.shape} vs {b.shape}')
  if a.ndim < 4:
    raise ValueError(f'expected [B, ..., H, W, C], got {a.shape}')
  frames = a.shape[-3:]
  per_frame = dm_pix.ssim(
      (a / max_value).reshape((-1,) + frames),
      (b / max_value).reshape((-1,) + frames),
      max_val=1.0, filter_size=11, filter_sigma=1.5, k1=0.01, k2=0.03)
  return _reduce(per_frame.reshape(a.shape[:-3]).reshape(a.shape[0], -1))


@functools.partial(jax.jit, static_argnames=('max_value',))
def all_metrics(a, b, max_value: float = 255.0):
  """{'mse', 'mae', 'psnr', 'ssim'} per clip, [B] each, in one jitted call."""
  return {'mse': mse(a, b), 'mae': mae(a, b),
          'psnr': psnr(a, b, max_value), 'ssim': ssim(a, b, max_value)}
