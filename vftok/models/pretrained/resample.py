"""Resampling of feature grids by separable [n_out, n_in] matrices.

One place for the resizes of REPA targets and position tables: teacher
features onto the decoder's patch grid (area average when shrinking — a
target is the mean feature of what the latent patch covers — half-pixel
bilinear when growing), and DINOv2's position table to a new grid with
torch's bicubic kernels (checkpoint parity). Matrices are NumPy constants
built once per shape; the resize is two small f32 einsums.
"""
import jax
import jax.numpy as jnp
import numpy as np


def _cubic(x, a):
  x = np.abs(x)
  return np.where(x <= 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                  np.where(x < 2, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a, 0))


def bicubic_matrix(n_in: int, n_out: int, antialias: bool) -> np.ndarray:
  """[n_out, n_in] weights of torch's 1-D bicubic resize, align_corners=False."""
  f32 = np.float32
  scale = f32(n_in) / f32(n_out)
  m = np.zeros((n_out, n_in), np.float32)
  for i in range(n_out):
    if antialias:  # torch _upsample_bicubic2d_aa (PIL's ImagingResample)
      support = f32(2.0) * scale if scale >= 1 else f32(2.0)
      invscale = f32(1.0) / scale if scale >= 1 else f32(1.0)
      center = scale * f32(i + 0.5)
      lo = max(int(center - support + f32(0.5)), 0)
      hi = min(int(center + support + f32(0.5)), n_in)
      j = np.arange(lo, hi)
      w = _cubic((j - center + f32(0.5)) * invscale, f32(-0.5)).astype(f32)
      m[i, lo:hi] = w / w.sum() if w.sum() != 0 else w
    else:  # torch upsample_bicubic2d: taps floor(src)-1..+2, clamped indices
      src = scale * f32(i + 0.5) - f32(0.5)
      base = min(int(np.floor(src)), n_in - 1)
      t = min(max(src - f32(base), f32(0)), f32(1))
      ws = _cubic(np.array([t + 1, t, 1 - t, 2 - t], f32), f32(-0.75))
      for k, w in enumerate(ws):
        m[i, min(max(base - 1 + k, 0), n_in - 1)] += w
  return m


def area_or_linear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in]: box (area) average when shrinking, bilinear when growing.

  Area keeps every DINOv2 patch that falls in a latent cell with its covered
  fraction, so a target is the mean feature of the pixels the latent patch
  sees; growing uses half-pixel bilinear (area would give blocky copies).
  """
  m = np.zeros((n_out, n_in), np.float64)
  if n_out <= n_in:
    step = n_in / n_out
    for i in range(n_out):
      lo, hi = i * step, (i + 1) * step
      for j in range(int(np.floor(lo)), min(int(np.ceil(hi)), n_in)):
        m[i, j] = (min(hi, j + 1) - max(lo, j)) / step
  else:
    for i in range(n_out):
      src = min(max((i + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1.0)
      j, t = min(int(src), n_in - 2), src - min(int(src), n_in - 2)
      if n_in == 1:
        m[i, 0] = 1.0
      else:
        m[i, j], m[i, j + 1] = 1 - t, t
  return m.astype(np.float32)


def resize_grid(x, out_hw, matrix_fn=area_or_linear_matrix):
  """x [..., h, w, D] -> [..., out_h, out_w, D] with separable [out, in]
  matrices (default: area average when shrinking, bilinear when growing)."""
  h, w = x.shape[-3], x.shape[-2]
  if (h, w) == tuple(out_hw):
    return x
  hi = jax.lax.Precision.HIGHEST  # tiny matmuls; keep f32 exact on TPU/GPU
  x = jnp.einsum('ih,...hwd->...iwd', matrix_fn(h, out_hw[0]), x, precision=hi)
  return jnp.einsum('jw,...iwd->...ijd', matrix_fn(w, out_hw[1]), x, precision=hi)
