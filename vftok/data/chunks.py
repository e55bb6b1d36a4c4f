"""Long clips as overlapping 17-frame chunks: the arithmetic and the encoding.

A video of F = 4 n + 1 >= 17 frames (the causal VAE contract) is split into
chunks of 17 frames sharing one frame with their neighbour: frames [0, 16],
[16, 32], ..., the last chunk possibly shorter (4 r + 1 frames), as the
release encodes long videos (paper Sec. 3.4). The causal VAE encodes each
chunk on its own, so chunk i's first latent frame is its first pixel frame
alone: the last pixel frame of chunk i - 1.

A latent record of a long clip stores the chunks' latents one after the
other along T ([sum_i t_i, h, w, C]: 81 frames -> 5 chunks x 5 = 25 latent
frames); `split_latents` cuts them apart again. api/long_video.py tokenizes
them into [B, (F - 1) / 4 + 1, K] (21 latent frames for 81) and decodes
chunk by chunk.
"""
from typing import List, Sequence, Tuple

import numpy as np

CHUNK_FRAMES = 17
OVERLAP = 1
TIME_STRIDE = 4  # causal VAE: 4 n + 1 frames -> n + 1 latent frames


def chunk_spans(num_frames: int, chunk: int = CHUNK_FRAMES,
                overlap: int = OVERLAP) -> List[Tuple[int, int]]:
  """[(start, end_exclusive)] pixel-frame spans of the chunks of a video."""
  if num_frames < chunk or (num_frames - 1) % TIME_STRIDE:
    raise ValueError(
        f'a long video needs >= {chunk} frames and 4 n + 1 frames (the causal '
        f'VAE contract), got {num_frames}')
  step = chunk - overlap
  spans, start = [], 0
  while start + overlap < num_frames:
    spans.append((start, min(start + chunk, num_frames)))
    start += step
  return spans


def latent_frames(pixel_frames: int) -> int:
  return (pixel_frames - 1) // TIME_STRIDE + 1


def is_long(num_frames: int) -> bool:
  """More frames than one chunk: encoded chunk by chunk."""
  return num_frames > CHUNK_FRAMES


def chunk_latent_frames(num_frames: int) -> List[int]:
  """Latent frames of each chunk (what a long latent record stores)."""
  return [latent_frames(b - a) for a, b in chunk_spans(num_frames)]


def stored_latent_frames(num_frames: int) -> int:
  """Latent frames a record of an F-frame clip holds: (F - 1) / 4 + 1 for
  one chunk, the sum over the chunks for a long clip."""
  if not is_long(num_frames):
    return latent_frames(num_frames)
  return sum(chunk_latent_frames(num_frames))


def manifest_entry(num_frames: int) -> dict:
  """The manifest's `chunks` of a set of long clips (records of F frames)."""
  return dict(num_frames=int(num_frames), chunk_frames=CHUNK_FRAMES,
              overlap=OVERLAP, latent_frames=chunk_latent_frames(num_frames))


def split_frames(frames) -> List[np.ndarray]:
  """[B, F, H, W, 3] pixels -> list of chunk clips [B, f_i, H, W, 3]."""
  frames = np.asarray(frames)
  if frames.ndim != 5:
    raise ValueError(f'frames must be [B, F, H, W, 3], got {frames.shape}')
  return [frames[:, a:b] for a, b in chunk_spans(frames.shape[1])]


def stitch_frames(chunks: Sequence[np.ndarray]) -> np.ndarray:
  """Inverse of split_frames: drop each later chunk's overlapping frame."""
  return np.concatenate([chunks[0]] + [c[:, OVERLAP:] for c in chunks[1:]],
                        axis=1)


def encode_clips(codec, frames) -> np.ndarray:
  """uint8 [B, F, H, W, 3] -> latents [B, stored_latent_frames(F), h, w, C]:
  one codec pass for a clip of one chunk, one per chunk (concatenated along
  T) for a long clip, as the release encodes 81-frame videos."""
  frames = np.asarray(frames)
  if not is_long(frames.shape[1]):
    return codec.encode(frames)
  return np.concatenate([codec.encode(c) for c in split_frames(frames)],
                        axis=1)


def split_latents(latents, num_frames: int) -> List[np.ndarray]:
  """[..., sum_i t_i, h, w, C] of a long F-frame clip -> the chunks' latents
  [..., t_i, h, w, C] (the input of api/long_video.tokenize_long)."""
  latents = np.asarray(latents)
  counts = chunk_latent_frames(num_frames)
  axis = latents.ndim - 4
  if latents.shape[axis] != sum(counts):
    raise ValueError(f'latents of shape {latents.shape}: a {num_frames}-frame '
                     f'clip stores {sum(counts)} latent frames ({counts} per '
                     'chunk)')
  return np.split(latents, np.cumsum(counts)[:-1], axis=axis)
