"""VideoFlexTok encoder: latent patches + K registers per frame -> FSQ codes.

Sequence: [p_1, r_1, ..., p_T, r_T]. Time-causal mask; within a frame patches
see patches and register i sees the frame's patches and registers <= i
(vftok/models/masks.py). Register outputs -> linear -> FSQ -> codes [B, T, K, D].

Because frame t never sees frames > t, tokens of a prefix of frames do not
depend on later frames: tokenization can stream (see `tests/test_models.py`).
"""
from typing import Any, Sequence

import flax.linen as nn
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
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, latents, skip_rounding=None):
    """latents [B, T, H, W, C] -> (codes [B, T', K, D] in [-1, 1], pre-quant z).

    skip_rounding: bool [B, 1, 1] or None (see fsq.quantize); training only.
    """
    patches = layers.patchify(latents.astype(self.dtype), self.patch_size)
    b, t, n, _ = patches.shape
    k = self.registers
    x = layers.dense(self.width, ('patch', 'embed'), 'patch_embed', self.dtype,
                     use_bias=True)(patches)
    x = x + layers.learned('pos_patch', (n, self.width), ('length', 'embed'),
                           self).astype(self.dtype)
    # Frame position on the patches only: a register's content should be what
    # it reads from its frame (the mask already ties it to that frame); a
    # large constant added to every register drowns that signal at init and
    # the codes collapse to one value.
    x = x + layers.sincos(jnp.arange(t), self.width)[None, :, None].astype(self.dtype)
    regs = layers.learned('registers', (k, self.width), ('registers', 'embed'),
                          self).astype(self.dtype)
    x = jnp.concatenate([x, jnp.broadcast_to(regs, (b, t, k, self.width))], axis=2)
    x = x.reshape(b, t * (n + k), self.width)

    layout = masks.interleaved(t, n, k, registers_first=False)
    mask = masks.encoder_mask(layout, layout)
    for i in range(self.depth):
      x = layers.Block(self.width, self.head_dim, self.mlp_ratio, self.dtype,
                       name=f'blocks_{i}')(x, mask)
    x = layers.layer_norm('norm_out', self.dtype)(x)
    x = x.reshape(b, t, n + k, self.width)[:, :, n:]
    z = layers.dense(len(self.fsq_levels), ('embed', 'codes'), 'to_codes',
                     jnp.float32, use_bias=True)(x) * self.readout_scale
    return (fsq.quantize(z.astype(jnp.float32), self.fsq_levels, skip_rounding),
            z)
