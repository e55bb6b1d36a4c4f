"""Autoregressive orders over a video's [T, K] token grid (paper App. C.3).

T latent frames, K coarse-to-fine tokens per frame. Two flat orders:

  * 'time_first' (the paper's default): token 1 of every frame, then token 2
    of every frame, ...; sequence index s = k * T + t. Every prefix of n * T
    tokens is exactly the first n tokens of every frame, so one model serves
    every token budget n and can stop early.
  * 'depth_first': all K tokens of frame 1, then frame 2, ...; s = t * K + k.
    A budget n < K needs a model trained on [T, n] grids.
  * 'raster': the same index map under the name it has for grid tokens
    ([T, h * w], the 3D-grid counterpart): frame by frame, row by row,
    the paper's raster-scan order for its grid baseline.

Functions take NumPy or JAX arrays (tracers included) and only use array
methods, so the result has the input's array type; leading dims before the
last two (or the last one, for sequences) are batch dims.
"""
from typing import Tuple

import numpy as np

ORDERS = ('time_first', 'depth_first', 'raster')


def _check(order: str):
  if order not in ORDERS:
    raise ValueError(f'order must be one of {ORDERS}, got {order!r}')


def _as_array(x):
  has_methods = hasattr(x, 'reshape') and hasattr(x, 'swapaxes')
  return x if has_methods else np.asarray(x)


def to_sequence(tokens, order: str):
  """[..., T, K] -> [..., T * K] in `order`."""
  _check(order)
  tokens = _as_array(tokens)
  *batch, t, k = tokens.shape
  if order == 'time_first':
    tokens = tokens.swapaxes(-1, -2)  # [..., K, T]: frames vary fastest
  return tokens.reshape(*batch, t * k)


def from_sequence(seq, num_frames: int, tokens_per_frame: int, order: str):
  """[..., T * K] in `order` -> [..., T, K]."""
  _check(order)
  seq = _as_array(seq)
  *batch, length = seq.shape
  t, k = num_frames, tokens_per_frame
  if length != t * k:
    raise ValueError(f'sequence length {length} != T * K = {t} * {k}')
  if order == 'time_first':
    return seq.reshape(*batch, k, t).swapaxes(-1, -2)
  return seq.reshape(*batch, t, k)


def prefix_to_frames(seq, num_frames: int, n: int):
  """First n * T tokens of a time-first sequence -> [..., T, n].

  `seq` may be longer (a full K-token sequence): the prefix is cut first.
  """
  seq = _as_array(seq)
  if seq.shape[-1] < n * num_frames:
    raise ValueError(f'time-first prefix of {n} tokens per frame needs '
                     f'{n * num_frames} tokens, got {seq.shape[-1]}')
  return from_sequence(seq[..., :n * num_frames], num_frames, n, 'time_first')


def positions(num_frames: int, tokens_per_frame: int, order: str
              ) -> Tuple[np.ndarray, np.ndarray]:
  """(frame_index [L], token_index [L]) int32 of every sequence slot.

  token_index is the coarse-to-fine index within the frame (0 = coarsest).
  Static NumPy: the model turns them into learned position embeddings.
  """
  t, k = num_frames, tokens_per_frame
  frame, token = np.meshgrid(np.arange(t, dtype=np.int32),
                             np.arange(k, dtype=np.int32), indexing='ij')
  return (to_sequence(frame, order), to_sequence(token, order))
