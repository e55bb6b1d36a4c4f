"""VideoFlexTok decoder: a DiT (adaLN-Zero) rectified-flow model.

Sequence: [r^_1, x~_1, ..., r^_T, x~_T] where r^_t are the (nested-dropout
masked) register codes of frame t projected to the width and x~_t the noised
latent patches. Registers that are dropped, or all of them for the
unconditional branch of classifier-free guidance, are replaced by one learned
mask token. The output is the flow velocity on the latent patches.

Stage 1 uses a time-causal mask; stage 2 (decoder fine-tuning) full attention.
"""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from vftok.models import layers
from vftok.models import masks


class Decoder(nn.Module):
  width: int
  depth: int
  head_dim: int
  registers: int
  patch_size: Sequence[int]
  grid_hw: Sequence[int]
  latent_channels: int
  attention: str = 'time_causal'
  repa_layer: int = 1               # hidden states after this many blocks
  # Std of the learned register / patch position embeddings. Near t = 1 the
  # noisy patches carry no content, so position is all a patch token knows
  # of where it is; at 0.02 it is ~2% of the token after LayerNorm and the
  # decoder learns slowly where to put what the registers say.
  pos_init_std: float = 0.02
  mlp_ratio: float = 4.0
  remat: str = 'none'               # layers.REMAT_POLICIES
  attention_impl: Optional[str] = None  # None: XLA's choice; 'xla' | 'cudnn'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, codes, keep, x_t, t):
    """codes [B, T, K, D]; keep bool [B, K] or [B, T, K]; x_t [B, T*pt, H, W, C];
    t: flow time [B], or [B, T] per latent frame (a clean conditioning frame
    has t = 0: stage-2 frame conditioning).

    Returns (velocity [B, T*pt, H, W, C] float32,
             patch hidden states after block `repa_layer` [B, T, N, width]).
    """
    b, t_frames, k, _ = codes.shape
    patches = layers.patchify(x_t.astype(self.dtype), self.patch_size)
    n = patches.shape[2]
    if patches.shape[1] != t_frames or k != self.registers:
      raise ValueError(f'decoder got codes for {t_frames} frames x {k} registers '
                       f'but latents for {patches.shape[1]} frames '
                       f'(expects {self.registers} registers)')

    regs = layers.dense(self.width, ('codes', 'embed'), 'codes_embed',
                        self.dtype, use_bias=True)(codes.astype(self.dtype))
    mask_token = layers.learned('mask_token', (self.width,), ('embed',), self)
    keep = keep if keep.ndim == 3 else keep[:, None, :]
    regs = jnp.where(keep[..., None], regs, mask_token.astype(self.dtype))
    regs = regs + layers.learned('pos_register', (k, self.width),
                                 ('registers', 'embed'), self,
                                 self.pos_init_std).astype(self.dtype)
    x = layers.dense(self.width, ('patch', 'embed'), 'patch_embed', self.dtype,
                     use_bias=True)(patches)
    x = x + layers.learned('pos_patch', (n, self.width), ('length', 'embed'),
                           self, self.pos_init_std).astype(self.dtype)
    # As in the encoder, frame position goes on the patches only.
    x = x + layers.sincos(jnp.arange(t_frames), self.width)[None, :, None].astype(self.dtype)
    x = jnp.concatenate([regs, x], axis=2)
    x = x.reshape(b, t_frames * (k + n), self.width)

    t = jnp.broadcast_to(t[:, None] if t.ndim == 1 else t, (b, t_frames))
    # One time embedding per latent frame: [B, T, width].
    cond = layers.TimeEmbedding(self.width, self.dtype, name='time_embed')(t)
    layout = masks.interleaved(t_frames, n, k, registers_first=True)
    mask = masks.decoder_mask(self.attention)(layout, layout)
    repa_hidden = None
    block_cls = layers.remat_block(layers.AdaLNBlock, self.remat)
    for i in range(self.depth):
      x = block_cls(self.width, self.head_dim, self.mlp_ratio, self.dtype,
                    self.attention_impl, name=f'blocks_{i}')(
                        x, cond, layout.is_register, mask)
      if i + 1 == self.repa_layer:
        repa_hidden = x.reshape(b, t_frames, k + n, self.width)[:, :, k:]

    # Final adaLN (shift, scale) and zero-initialised projection, as in DiT.
    mod = layers.dense(2 * self.width, ('embed', 'cond'), 'adaln_final',
                       self.dtype, use_bias=True, zero_init=True)(nn.silu(cond))
    shift, scale = jnp.split(mod[:, :, None, :], 2, axis=-1)
    x = layers.layer_norm('norm_out', self.dtype, use_scale=False)(x)
    x = x.reshape(b, t_frames, k + n, self.width)[:, :, k:]
    x = x * (1 + scale) + shift
    out = layers.dense(patches.shape[-1], ('embed', 'patch'), 'to_patches',
                       jnp.float32, use_bias=True, zero_init=True)(x)
    velocity = layers.unpatchify(out, self.patch_size, self.grid_hw)
    return velocity.astype(jnp.float32), repa_hidden
