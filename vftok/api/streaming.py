"""Streaming tokenization: one latent frame in, that frame's K tokens out.

The encoder is time-causal: frame t's registers see frames <= t only. So a
video can be tokenized as it arrives, keeping each block's keys and values of
the frames seen so far (a KV cache) instead of re-encoding the whole prefix.

    stream = tok.stream(batch=1)         # up to the model's max_frames
    for frame in latent_frames:          # [B, H, W, C] each
      tokens_t = stream.push(frame)      # int32 [B, K]

The tokens equal `tok.tokenize(whole_clip)[:, t]` (tests/test_stage2_sampling.py).
A stream holds at most the encoder's `max_frames` latent frames: each frame
has its own learned registers and time position (as in the release).
Every push runs the same compiled step (the cache has a fixed size and the
frame index is a traced argument), so there is one compilation per stream
shape, not one per frame.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from vftok.models import fsq
from vftok.models import tokenizer as tokenizer_lib


class TokenStream:
  def __init__(self, tok, batch: int, max_frames: int):
    if batch < 1 or max_frames < 1:
      raise ValueError(f'need batch >= 1 and max_frames >= 1, got {batch}, '
                       f'{max_frames}')
    enc = tok.model.encoder
    if max_frames > enc.max_frames:
      raise ValueError(f'max_frames={max_frames}: this encoder has registers '
                       f'for at most {enc.max_frames} latent frames '
                       '(config.model.max_frames); stream longer videos in '
                       'chunks (Tokenizer.tokenize_long)')
    self.tok, self.batch, self.max_frames = tok, batch, max_frames
    self.frames_per_push = tok.config.model.patch_size[0]
    self.cache = enc.init_cache(batch, max_frames, enc.dtype)
    self.pushed = 0

  def push(self, frame) -> jax.Array:
    """frame: latents [B, H, W, C] (or [B, pt, H, W, C] with a time patch
    size pt > 1) -> int32 tokens [B, K] of that frame."""
    frame = np.asarray(frame)
    if frame.ndim == 4:
      frame = frame[:, None]
    if frame.shape[0] != self.batch or frame.shape[1] != self.frames_per_push:
      raise ValueError(f'push takes [B={self.batch}, H, W, C] latent frames '
                       f'({self.frames_per_push} at a time), got {frame.shape}')
    if self.pushed >= self.max_frames:
      raise ValueError(f'stream is full: {self.max_frames} frames pushed '
                       '(start a new stream or raise max_frames)')
    latents = self.tok._check_latents(frame, native_size=True)  # pylint: disable=protected-access
    tokens, self.cache = _step(self.tok, self.tok.params, self.cache,
                               jnp.asarray(latents),
                               jnp.asarray(self.pushed, jnp.int32))
    self.pushed += 1
    return tokens


# Static on the (long-lived) Tokenizer, not the stream: a new stream of the
# same shape reuses the compiled step.
@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def _step(tok, params, cache, latents, offset):
  codes, _, cache = tok.model.apply(
      params, latents, cache, offset,
      method=tokenizer_lib.VideoFlexTok.encode_streaming)
  return fsq.codes_to_indices(codes, tok.levels)[:, 0], cache
