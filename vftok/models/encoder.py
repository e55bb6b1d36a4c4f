"""VideoFlexTok encoder: latent patches + K registers per frame -> FSQ codes.

Sequence: [p_1, r_1, ..., p_T, r_T]. Time-causal mask; within a frame patches
see patches and register i sees the frame's patches and registers <= i
(vftok/models/masks.py). Register outputs -> LayerNorm -> Linear -> FSQ ->
codes [B, T, K, D].

As in the official release: patches get a learned (t, h, w) position
embedding (per-axis tables, summed or multiplied), registers are one learned
table per latent frame ([t_max, K, width], the paper's r in R^{T x K x D})
and carry no other position.

Because frame t never sees frames > t, tokens of a prefix of frames do not
depend on later frames: tokenization can stream (see `tests/test_streaming.py`).

Two controlled variants for the paper's comparisons (config.model):
  * token_structure='grid', the 3D-grid counterpart (Figs. 6, 7, 11): no
    registers; the sequence is [p_1, ..., p_T] under the same mask and every
    latent patch's output is read out to one FSQ token, so tokens are
    [T, h * w] in raster order (K = h * w).
  * attention='full', the flat-1D ablation (Table 2): registers and patches
    see every frame (masks.encoder_mask); tokens of frame t then depend on
    later frames, so nothing that streams or chunks may use it.
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
  max_frames: int = 8               # t_max: latent frames with own registers
  pos_max_size: int = 32            # M: length of every per-axis position table
  pos_kind: str = 'sum'             # layers.POSEMB_KINDS
  fsq_levels: Sequence[int] = fsq.DEFAULT_LEVELS
  # z = readout_scale * Linear(LN(h)). Under Adam the 6-wide readout moves z by
  # about lr * width per step whatever its gradient, so at a small width and
  # a high lr z runs into tanh saturation and every clip gets one token
  # within tens of steps; a scale < 1 keeps z in FSQ's working range (demo).
  readout_scale: float = 1.0
  pos_init_std: float = 0.02        # learned patch position embedding
  mlp_ratio: float = 4.0
  token_structure: str = 'registers'  # 'registers' | 'grid' (module doc)
  attention: str = 'time_causal'    # masks.ENCODER_ATTENTION
  remat: str = 'none'               # layers.REMAT_POLICIES
  attention_impl: Optional[str] = None  # config.model.attention_impl: layers.attend
  dtype: Any = jnp.float32

  @property
  def registers_in_sequence(self) -> int:
    """Registers per frame in the encoder sequence (0 for grid tokens)."""
    return 0 if self.token_structure == 'grid' else self.registers

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
    k = self.registers_in_sequence
    if self.token_structure == 'grid' and n != self.registers:
      raise ValueError(f'grid tokens: {n} latent patches per frame but '
                       f'{self.registers} tokens per frame')
    if cache is None and t > self.max_frames:
      raise ValueError(f'{t} latent frames (after time patching) but this '
                       f'encoder has registers for at most {self.max_frames}')
    x = layers.dense(self.width, ('patch', 'embed'), 'patch_embed', self.dtype,
                     use_bias=True)(patches)
    pos = layers.learned('pos_patch', (3, self.pos_max_size, self.width),
                         (None, 'length', 'embed'), self, self.pos_init_std)
    pos = layers.axis_posemb(pos, (t, *self.grid_hw), (frame_offset, 0, 0),
                             self.pos_kind)
    x = x + pos.reshape(t, n, self.width).astype(self.dtype)
    self.sow('intermediates', 'patches_in', x)
    if k:
      regs = layers.learned('registers', (self.max_frames, k, self.width),
                            (None, 'registers', 'embed'), self, 0.02)
      regs = jax.lax.dynamic_slice_in_dim(regs, frame_offset, t, axis=0)
      regs = jnp.broadcast_to(regs.astype(self.dtype), (b, t, k, self.width))
      self.sow('intermediates', 'registers_in', regs)
      x = jnp.concatenate([x, regs], axis=2)
    x = x.reshape(b, t * (n + k), self.width)

    layout = masks.interleaved(t, n, k, registers_first=False)
    mask = masks.encoder_mask(layout, layout, self.attention)
    if cache is not None:
      # Cached positions before frame_offset are earlier frames: visible to
      # every token of the new frames (time-causal); later slots are empty.
      cached = cache['k'].shape[2]
      visible = jnp.arange(cached) < frame_offset * (n + k)
      mask = jnp.concatenate(
          [jnp.broadcast_to(visible, (len(layout), cached)), mask], axis=1)
      new_k, new_v = [], []
    # Streaming (a cache) is inference with a traced mask: no remat there.
    block_cls = (layers.remat_block(layers.Block, self.remat, static_argnums=(2,))
                 if cache is None else layers.Block)
    for i in range(self.depth):
      block = block_cls(self.width, self.head_dim, self.mlp_ratio, self.dtype,
                        self.attention_impl, name=f'blocks_{i}')
      if cache is None:
        x = block(x, layers.StaticMask(mask))
      else:
        x, (k_i, v_i) = block(x, mask, (cache['k'][i], cache['v'][i]))
        new_k.append(k_i)
        new_v.append(v_i)
    # The token readout: the registers' outputs, or every patch's (grid).
    x = x.reshape(b, t, n + k, self.width)
    x = x[:, :, n:] if k else x
    self.sow('intermediates', 'registers_out', x)
    z = layers.dense(len(self.fsq_levels), ('embed', 'codes'), 'to_codes',
                     jnp.float32, use_bias=True)(layers.layer_norm(x))
    z = z * self.readout_scale
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
    shape = (self.depth, batch, max_frames * (n + self.registers_in_sequence),
             self.width // self.head_dim, self.head_dim)
    return {'k': jnp.zeros(shape, dtype), 'v': jnp.zeros(shape, dtype)}
