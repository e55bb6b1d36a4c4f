"""Procedural latent videos whose structure is known (the learning tests).

Clips are generated directly as tokenizer latents [B, T, H, W, C] (no pixel
codec): T = 5 latent frames of 8 x 8 x 4. Each clip is a textured background
into which a coloured shape slides:

  * background: a palette colour (PALETTE: 8 corners of the {-0.8, 0.8}^4
    hypercube) plus a texture, one of three period-2 patterns (horizontal
    stripes, vertical stripes, checkerboard) of amplitude 0.5 on one channel
    each, static in time. A period-2 pattern averages out over any 2 x 2
    area, so the 2x2 / 4x4 thumbnail baselines cannot reproduce it, while one
    code can name it;
  * shape: a half-plane of another palette colour whose straight, soft edge
    moves 1 latent pixel per latent frame in one of four directions (the
    clip's class: right, left, down, up; the shape covers the side the edge
    comes from, so it grows into the frame), edge start uniform in
    [1.5, 2.5] pixels from its side; its colour drifts half-way to a third
    palette colour over the clip.

The clip's layout is the two colours and the edge's position in every frame;
`edge_position`, `colours` and `classify_direction` read them from any
latents (originals, reconstructions, AR samples) without a model.

Training draws fresh clips from a numpy Generator every step (unlimited
data); held-out sets come from a disjoint seed (HELDOUT_SEED).
"""
from typing import Dict, Optional

import numpy as np

FRAMES, SIZE, CHANNELS = 5, 8, 4
NUM_CLASSES = 4
CLASS_NAMES = ('right', 'left', 'down', 'up')
# Per class: the axis the edge moves along (0: y, 1: x) and its sign.
AXIS = np.array([1, 1, 0, 0])
SIGN = np.array([1, -1, 1, -1])
SPEED = 1.0              # latent pixels per latent frame
EDGE_START = (1.5, 2.5)  # pixels from the shape's side at frame 0
EDGE_SOFTNESS = 0.3      # logistic width of the edge, pixels
TEXTURE_AMPLITUDE = 0.5
COLOUR_DRIFT = 0.5       # the shape's colour moves this far to a third colour
TEXTURE_ON = 'frame'
HELDOUT_SEED = 1_000_003  # training generators use small seeds


def _palette():
  corners = np.array(np.meshgrid(*[[-0.8, 0.8]] * CHANNELS, indexing='ij'))
  corners = corners.reshape(CHANNELS, -1).T                    # [16, C]
  return corners[np.random.default_rng(7).permutation(len(corners))[:8]]


PALETTE = _palette()                                           # [8, C]
TEXTURE_COLOURS = TEXTURE_AMPLITUDE * np.eye(CHANNELS)[:3]     # [3, C]
# REPA teacher features per latent pixel (a stand-in for a pretrained network
# that knows the scene, as DINOv2 separates objects from background):
# [shape mask, (1 - mask) * one-hot background colour, (1 - mask) * one-hot
# texture, mask * one-hot shape colour].
TEACHER_DIM = 1 + len(PALETTE) + 3 + len(PALETTE)


def _textures(size):
  y, x = np.mgrid[:size, :size]
  return np.stack([(-1.0) ** y, (-1.0) ** x, (-1.0) ** (x + y)])  # [3, H, W]


def edge_trajectory(labels, start, frames: int = FRAMES, size: int = SIZE):
  """Edge coordinate along the class's axis per frame [n, T]: the shape
  covers coordinates below it (SIGN > 0) or above it (SIGN < 0)."""
  t = np.arange(frames)
  grow = start[:, None] + SPEED * t[None, :]
  return np.where(SIGN[labels][:, None] > 0, grow, size - grow)


def shape_mask(labels, edges, size: int = SIZE):
  """[n, T, H, W]: 1 inside the shape, 0 outside, a logistic edge."""
  coord = np.arange(size) + 0.5
  signed = SIGN[labels][:, None, None] * (edges[..., None] - coord)  # [n, T, S]
  along = 1 / (1 + np.exp(-signed / EDGE_SOFTNESS))
  return np.where((AXIS[labels] == 1)[:, None, None, None],
                  along[:, :, None, :], along[:, :, :, None]) * np.ones(
                      (1, 1, size, size))


def sample_clips(rng: np.random.Generator, n: int,
                 labels: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
  """n clips -> {'latents' float32 [n, T, H, W, C], 'label' int32 [n],
  'edges' [n, T] (edge coordinate along the class's axis), 'background' /
  'shape_colours' ([n, C] / [n, T, C]), 'repa_features' [n, T, H, W,
  TEACHER_DIM]}. labels: the classes to draw (default: uniform)."""
  if labels is None:
    labels = rng.integers(0, NUM_CLASSES, n)
  labels = np.asarray(labels, np.int32)
  picks = np.argsort(rng.random((n, len(PALETTE))), axis=1)[:, :3]
  bg, c0, c1 = (PALETTE[picks[:, i]] for i in range(3))        # [n, C] each
  pattern = rng.integers(0, 3, n)
  texture = (_textures(SIZE)[pattern][..., None]
             * TEXTURE_COLOURS[pattern][:, None, None, :])       # [n, H, W, C]
  background = bg[:, None, None, :] + (texture if TEXTURE_ON == 'background' else 0)
  edges = edge_trajectory(labels, rng.uniform(*EDGE_START, n))
  mask = shape_mask(labels, edges)[..., None]                   # [n, T, H, W, 1]
  w = COLOUR_DRIFT * np.arange(FRAMES) / (FRAMES - 1)
  colour = c0[:, None] * (1 - w[None, :, None]) + c1[:, None] * w[None, :, None]
  latents = ((1 - mask) * background[:, None]
             + mask * colour[:, :, None, None, :])
  if TEXTURE_ON == 'frame':
    latents = latents + texture[:, None]
  onehot = lambda i, k: np.eye(k)[i]
  rest = np.concatenate([onehot(picks[:, 0], len(PALETTE)),
                         onehot(pattern, 3)], axis=-1)[:, None, None, None]
  features = np.concatenate(
      [mask, (1 - mask) * rest,
       mask * onehot(picks[:, 1], len(PALETTE))[:, None, None, None]], axis=-1)
  return {'latents': latents.astype(np.float32), 'label': labels,
          'edges': edges.astype(np.float32),
          'background': bg.astype(np.float32),
          'shape_colours': colour.astype(np.float32),
          'pattern': pattern, 'repa_features': features.astype(np.float32)}


def heldout(n: int, seed: int = HELDOUT_SEED, **kwargs):
  """A fixed held-out set (its seed is disjoint from the training ones)."""
  return sample_clips(np.random.default_rng(seed), n, **kwargs)


# ---- model-free readers of the known structure --------------------------------

def smooth(latents):
  """[1, 2, 1] / 4 filter along H and W (edge-padded): removes the period-2
  textures exactly and moves nothing."""
  x = np.asarray(latents, np.float64)
  for axis in (-3, -2):
    pad = [(0, 0)] * x.ndim
    pad[axis] = (1, 1)
    p = np.pad(x, pad, 'edge')
    n = x.shape[axis]
    cut = lambda i: np.take(p, np.arange(i, i + n), axis=axis)
    x = (cut(0) + 2 * cut(1) + cut(2)) / 4
  return x


def edge_position(latents, clips):
  """The edge coordinate per frame [n, T] read from `latents` [n, T, H, W,
  C], given the clips' true class and colours: each pixel's fraction of the
  way from the background colour to the shape's colour, summed along the
  class's axis (the shape's extent from its side)."""
  x = smooth(latents)
  bg = clips['background'][:, None, None, None, :]
  fg = clips['shape_colours'][:, :, None, None, :]
  frac = np.clip(np.sum((x - bg) * (fg - bg), -1) / np.sum(
      np.square(fg - bg), -1), 0, 1)                            # [n, T, H, W]
  labels = clips['label']
  extent = np.where((AXIS[labels] == 1)[:, None], frac.mean(2).sum(-1),
                    frac.mean(3).sum(-1))
  return np.where((SIGN[labels] > 0)[:, None], extent, SIZE - extent)


def classify_direction(latents):
  """[n, T, H, W, C] -> int32 [n]: the class (the side the shape enters
  from). The first frame is mostly background and the last mostly shape:
  the class's entry strip (the two rows / columns along its side) is the
  one whose last-frame colour is farthest from the first frame's median
  colour."""
  x = smooth(latents)
  n = x.shape[0]
  bg = np.median(x[:, 0].reshape(n, -1, x.shape[-1]), axis=1)
  dist = np.sqrt(np.sum(np.square(x[:, -1] - bg[:, None, None]), -1))  # [n, H, W]
  strips = np.stack([dist[:, :, :2].mean((1, 2)), dist[:, :, -2:].mean((1, 2)),
                     dist[:, :2].mean((1, 2)), dist[:, -2:].mean((1, 2))], -1)
  return np.argmax(strips, axis=-1).astype(np.int32)
