"""Finite scalar quantization (Mentzer et al., 2023), as in the official release.

Each of the D = len(levels) channels is bounded to (-L/2, L/2) and rounded to
one of L integer levels; the product of the levels is the codebook size
((8, 8, 8, 5, 5, 5) -> 64000). Codes are the rounded values divided by L // 2,
so they lie in [-1, 1). Index <-> code maps are exact: the first level is the
least significant digit of the mixed-radix index.

The bound follows the release: half_l = (L-1)(1+eps)/2, offset = 0.5 for even
L else 0, shift = atanh(offset / half_l), z -> tanh(z + shift) * half_l - offset.
The shift centres the even-L range so that all L levels are reachable.
"""
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_LEVELS = (8, 8, 8, 5, 5, 5)
_EPS = 1e-3


def codebook_size(levels: Sequence[int] = DEFAULT_LEVELS) -> int:
  return int(np.prod(levels))


def _levels(levels):
  levels = np.asarray(levels, dtype=np.int64)
  if levels.ndim != 1 or np.any(levels < 2):
    raise ValueError(f'FSQ levels must be integers >= 2, got {levels.tolist()}')
  return levels


def bound(z, levels: Sequence[int] = DEFAULT_LEVELS):
  """Squashes z so that rounding yields one of L levels per channel."""
  lv = _levels(levels)
  half_l = (lv - 1) * (1 + _EPS) / 2
  offset = np.where(lv % 2 == 0, 0.5, 0.0)
  shift = np.arctanh(offset / half_l)
  z = jnp.asarray(z)
  return (jnp.tanh(z + shift.astype(np.float32)) * half_l.astype(np.float32)
          - offset.astype(np.float32)).astype(z.dtype)


def _round_ste(x):
  """Rounds in the forward pass, identity gradient in the backward pass."""
  return x + jax.lax.stop_gradient(jnp.round(x) - x)


def quantize(z, levels: Sequence[int] = DEFAULT_LEVELS, skip_rounding=None):
  """float [..., D] -> codes [..., D] in [-1, 1] (straight-through gradient).

  skip_rounding: optional bool broadcastable to z[..., 0] (training only):
  where True, the bounded value is passed unrounded ("drop_quant_p" of the
  official release), so the decoder sees the encoder's small variations
  before they are large enough to change a code.
  """
  lv = _levels(levels)
  z = jnp.asarray(z)
  if z.shape[-1] != len(lv):
    raise ValueError(f'FSQ input has {z.shape[-1]} channels; levels {tuple(lv)} '
                     f'need {len(lv)}')
  half_width = (lv // 2).astype(np.float32)
  bounded = bound(z, lv)
  rounded = _round_ste(bounded)
  if skip_rounding is not None:
    rounded = jnp.where(jnp.asarray(skip_rounding)[..., None], bounded, rounded)
  return (rounded / half_width).astype(z.dtype)


def _basis(lv):
  return np.concatenate([[1], np.cumprod(lv[:-1])]).astype(np.int64)


def codes_to_indices(codes, levels: Sequence[int] = DEFAULT_LEVELS):
  """codes [..., D] -> int32 indices [...] in [0, prod(levels))."""
  lv = _levels(levels)
  codes = jnp.asarray(codes, jnp.float32)
  half_width = lv // 2
  digits = jnp.round(codes * half_width + half_width).astype(jnp.int32)
  return jnp.sum(digits * _basis(lv).astype(np.int32), axis=-1).astype(jnp.int32)


def indices_to_codes(indices, levels: Sequence[int] = DEFAULT_LEVELS):
  """int indices [...] -> codes [..., D]; raises on ids outside the codebook."""
  lv = _levels(levels)
  indices = jnp.asarray(indices)
  if not jnp.issubdtype(indices.dtype, jnp.integer):
    raise ValueError(f'token ids must be integers, got dtype {indices.dtype}')
  if not isinstance(indices, jax.core.Tracer) and indices.size:
    lo, hi = int(jnp.min(indices)), int(jnp.max(indices))
    if lo < 0 or hi >= codebook_size(lv):
      raise ValueError(f'token id outside [0, {codebook_size(lv)}): '
                       f'found values in [{lo}, {hi}]')
  indices = indices.astype(jnp.int32)[..., None]
  digits = (indices // _basis(lv).astype(np.int32)) % lv.astype(np.int32)
  half_width = (lv // 2).astype(np.float32)
  return (digits.astype(jnp.float32) - half_width) / half_width
