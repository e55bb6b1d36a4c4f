"""VideoFlexTok encoder: latent patches + K registers per frame -> FSQ codes.

Sequence: [p_1, r_1, ..., p_T, r_T]. Time-causal mask; within a frame patches
see patches and register i sees the frame's patches and registers <= i
(vftok/models/masks.py). Register outputs -> linear -> FSQ -> codes [B, T, K, D].

Because frame t never sees frames > t, tokens of a prefix of frames do not
depend on later frames: tokenization can stream (see `tests/test_models.py`).
"""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vftok.models import fsq
from vftok.models import layers
from vftok.models import masks


class Encoder(nn.Module):
  width: int
  depth: int
  head_dim: int
  registers: int
  patch_size: Sequence[int]
  grid_hw: Sequence[int]            # latent patch grid (H / ph, W / pw)
  fsq_levels: Sequence[int] = fsq.DEFAULT_LEVELS
  # z = readout_scale * Linear(h). Under Adam the 6-wide readout moves z by
  # about lr * width per step whatever its gradient, so at a small width and
  # a high lr z runs into tanh saturation and every clip gets one token
  # within tens of steps; a scale < 1 keeps z in FSQ's working range.
  readout_scale: float = 1.0
  register_init_std: float = 0.02
  pos_init_std: float = 0.02        # learned patch position embedding
  mlp_ratio: float = 4.0
  remat: str = 'none'               # layers.REMAT_POLICIES
  attention_impl: Optional[str] = None  # None: XLA's choice; 'xla' | 'cudnn'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, latents, skip_rounding=None, cache=None, frame_offset=0):
    """latents [B, T, H, W, C] -> (codes [B, T', K, D] in [-1, 1], pre-quant z).

    skip_rounding: bool [B, 1, 1] or None (see fsq.quantize); training only.

    Streaming (cache is not None): latents are the next latent frame(s) of a
    video whose earlier `frame_offset` frames (a traced int) were pushed
    before; `cache` holds their keys and values per block ({'k', 'v'}:
    [depth, B, max_frames * (N + K), heads, head_dim], see `init_cache`). The
    call attends to the cached frames exactly as the full-clip mask would
    (time-causal) and returns (codes, z, updated cache).
    """
    patches = layers.patchify(latents.astype(self.dtype), self.patch_size)
    b, t, n, _ = patches.shape
    k = self.registers
    x = layers.dense(self.width, ('patch', 'embed'), 'patch_embed', self.dtype,
                     use_bias=True)(patches)
    x = x + layers.learned('pos_patch', (n, self.width), ('length', 'embed'),
                           self, self.pos_init_std).astype(self.dtype)
    # Frame position on the patches only: a register's content should be what
    # it reads from its frame (the mask already ties it to that frame); a
    # large constant added to every register drowns that signal at init and
    # the codes collapse to one value.
    frame_index = frame_offset + jnp.arange(t)
    x = x + layers.sincos(frame_index, self.width)[None, :, None].astype(self.dtype)
    regs = layers.learned('registers', (k, self.width), ('registers', 'embed'),
                          self, self.register_init_std).astype(self.dtype)
    x = jnp.concatenate([x, jnp.broadcast_to(regs, (b, t, k, self.width))], axis=2)
    x = x.reshape(b, t * (n + k), self.width)

    layout = masks.interleaved(t, n, k, registers_first=False)
    mask = masks.encoder_mask(layout, layout)
    if cache is not None:
      # Cached positions before frame_offset are earlier frames: visible to
      # every token of the new frames (time-causal); later slots are empty.
      cached = cache['k'].shape[2]
      visible = jnp.arange(cached) < frame_offset * (n + k)
      mask = jnp.concatenate(
          [jnp.broadcast_to(visible, (len(layout), cached)), mask], axis=1)
      new_k, new_v = [], []
    block_cls = layers.remat_block(layers.Block, self.remat)
    for i in range(self.depth):
      block = block_cls(self.width, self.head_dim, self.mlp_ratio, self.dtype,
                        self.attention_impl, name=f'blocks_{i}')
      if cache is None:
        x = block(x, mask)
      else:
        x, (k_i, v_i) = block(x, mask, (cache['k'][i], cache['v'][i]))
        new_k.append(k_i)
        new_v.append(v_i)
    x = layers.layer_norm('norm_out', self.dtype)(x)
    x = x.reshape(b, t, n + k, self.width)[:, :, n:]
    z = layers.dense(len(self.fsq_levels), ('embed', 'codes'), 'to_codes',
                     jnp.float32, use_bias=True)(x) * self.readout_scale
    codes = fsq.quantize(z.astype(jnp.float32), self.fsq_levels, skip_rounding)
    if cache is None:
      return codes, z
    start = frame_offset * (n + k)
    update = lambda c, new: jax.lax.dynamic_update_slice_in_dim(
        c, jnp.stack(new).astype(c.dtype), start, axis=2)
    return codes, z, {'k': update(cache['k'], new_k),
                      'v': update(cache['v'], new_v)}

  def init_cache(self, batch: int, max_frames: int, dtype=jnp.float32):
    """Empty KV cache for streaming up to `max_frames` latent frames."""
    n = self.grid_hw[0] * self.grid_hw[1]
    shape = (self.depth, batch, max_frames * (n + self.registers),
             self.width // self.head_dim, self.head_dim)
    return {'k': jnp.zeros(shape, dtype), 'v': jnp.zeros(shape, dtype)}
