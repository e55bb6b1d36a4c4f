"""Long videos: overlapping 17-frame chunks, decoded with frame conditioning.

A video of F = 4 n + 1 >= 17 frames is split into chunks of 17 frames
sharing one frame with their neighbour (data/chunks.py: the arithmetic, and
the chunk-by-chunk VAE encoding of the data path).

Tokens: chunk 0 keeps all its latent frames; later chunks drop their first
latent frame (it is not tokenized: at decoding time it is the previous
chunk's last frame). The result is [B, L, K] with L = (F - 1) / 4 + 1, the
latent frame count of the whole video: 81 frames -> 21 latent frames (672
tokens at 32 tokens per frame, as in the paper).

Decoding: chunk 0 as usual; chunk i > 0 conditioned (stage-2 decoder) on the
clean latent of the previous chunk's last decoded pixel frame, obtained by
`reencode_last_frame(prev_chunk_latents) -> [B, 1, h, w, C]` (VAE-decode the
chunk, VAE-encode its last frame alone; `codec_reencoder` builds it).
"""
from typing import Callable, List, Sequence, Tuple

import numpy as np

from vftok.data import chunks as chunks_lib

CHUNK_FRAMES, OVERLAP = chunks_lib.CHUNK_FRAMES, chunks_lib.OVERLAP


def tokenize_long(tok, chunk_latents: Sequence) -> np.ndarray:
  """chunk_latents: list of [B, t_i, h, w, C] (per-chunk VAE latents) ->
  int32 tokens [B, L, K]."""
  if not chunk_latents:
    raise ValueError('tokenize_long needs at least one chunk')
  full = chunks_lib.latent_frames(CHUNK_FRAMES)
  out = []
  for i, lat in enumerate(chunk_latents):
    lat = np.asarray(lat)
    last = i == len(chunk_latents) - 1
    if lat.ndim != 5 or (lat.shape[1] != full and not (last and 1 < lat.shape[1] < full)):
      raise ValueError(
          f'chunk {i} latents have shape {lat.shape}; every chunk but the last '
          f'must have {full} latent frames (the last 2..{full})')
    tokens = np.asarray(tok.tokenize(lat))
    out.append(tokens if i == 0 else tokens[:, OVERLAP:])
  return np.concatenate(out, axis=1)


def _token_chunks(num_latent: int) -> List[Tuple[int, int]]:
  """Token-frame spans of each chunk inside [B, L, K] (without the overlap)."""
  full = chunks_lib.latent_frames(CHUNK_FRAMES)
  if num_latent < full:
    raise ValueError(f'long-video tokens need >= {full} latent frames, got '
                     f'{num_latent}')
  spans, start = [(0, full)], full
  while start < num_latent:
    spans.append((start, min(start + full - OVERLAP, num_latent)))
    start += full - OVERLAP
  return spans


def detokenize_long(tok, tokens, reencode_last_frame: Callable,
                    **detok_kwargs) -> List[np.ndarray]:
  """tokens [B, L, k] -> list of per-chunk latents [B, t_i, h, w, C], where a
  later chunk's frame 0 is the conditioning frame re-encoded from the
  previous chunk (decode each with the codec and `stitch_frames`)."""
  tokens = np.asarray(tokens)
  if tokens.ndim != 3:
    raise ValueError(f'tokens must be [B, L, k], got shape {tokens.shape}')
  chunks = []
  for i, (a, b) in enumerate(_token_chunks(tokens.shape[1])):
    chunk_tokens = tokens[:, a:b]
    if i == 0:
      chunks.append(np.asarray(tok.detokenize(chunk_tokens, **detok_kwargs)))
      continue
    first = np.asarray(reencode_last_frame(chunks[-1]))
    # The conditioning frame's token slot is a placeholder: its registers are
    # masked inside detokenize(first_frame=...).
    placeholder = np.zeros_like(chunk_tokens[:, :1])
    chunk_tokens = np.concatenate([placeholder, chunk_tokens], axis=1)
    chunks.append(np.asarray(tok.detokenize(chunk_tokens, first_frame=first,
                                            **detok_kwargs)))
  return chunks


def decode_pixels(tok, tokens, to_pixels: Callable,
                  reencode_last_frame: Callable, budgets=None,
                  **detok_kwargs) -> np.ndarray:
  """tokens [B, T, k] -> pixels [B, F, H, W, 3] through to_pixels(latents):
  one clip's latent frames through detokenize (budgets: its per-clip /
  per-frame k), more chunk by chunk (detokenize_long), the chunks' pixels
  stitched at their shared frames."""
  tokens = np.asarray(tokens)
  m = tok.config.model
  if tokens.shape[1] <= m.latent_frames // m.patch_size[0]:
    return to_pixels(tok.detokenize(tokens, budgets=budgets, **detok_kwargs))
  if budgets is not None:
    raise ValueError('budgets with a long video: decode per chunk')
  return chunks_lib.stitch_frames([
      to_pixels(z) for z in detokenize_long(tok, tokens, reencode_last_frame,
                                            **detok_kwargs)])


def codec_reencoder(codec, normalize: Callable, denormalize: Callable
                    ) -> Callable:
  """The VAE round trip for `detokenize_long`: normalised chunk latents ->
  pixels -> last pixel frame alone -> normalised latent [B, 1, h, w, C]."""
  def reencode(chunk_latents):
    pixels = np.clip(codec.decode(denormalize(np.asarray(chunk_latents))), 0, 255)
    return normalize(codec.encode(pixels[:, -1:]))
  return reencode
