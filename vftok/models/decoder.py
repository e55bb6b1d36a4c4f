"""VideoFlexTok decoder: a DiT (adaLN-Zero) rectified-flow model, as released.

Per latent frame the sequence holds [r^_t, x~_t] (or [x~_t, r^_t],
`registers_first`): r^_t are the register codes of frame t projected to the
width plus a learned (t, k) position, x~_t the noised latent patches plus a
learned (t, h, w) position. Then, in the release's order:

  1. nested dropout: registers k..K-1 of every frame become one learned mask
     token (`keep`; after the position was added, so masked slots carry none);
  2. prefix masking (stage 2): the registers of given conditioning frames
     become a learned prefix token (`prefix`);
  3. null condition (CFG): all registers become a learned null vector
     (`uncond`).

Tokens may also come truncated ([B, T, k] with k < K): then only k registers
per frame enter the sequence (the release README's form). The output is the
flow velocity on the latent patches. Stage 1 uses a time-causal mask; stage 2
(decoder fine-tuning) full attention.
"""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vftok.models import layers
from vftok.models import masks

# Step counts a distilled student's table covers: 1, 2, 4, ..., 128.
STEP_LEVELS = 8


class Decoder(nn.Module):
  width: int
  depth: int
  head_dim: int
  registers: int
  patch_size: Sequence[int]
  grid_hw: Sequence[int]
  latent_channels: int
  attention: str = 'time_causal'
  registers_first: bool = True      # per-frame order [registers, patches]
  adaln_subsequences: int = 2       # 2: own modulation for registers/patches
  pos_max_size: int = 32            # M of the (t, h, w) patch position table
  register_pos_max_size: int = 256  # M of the (t, k) register position table
  pos_kind: str = 'sum'             # layers.POSEMB_KINDS
  frame_conditioning: bool = False  # stage 2: a learned prefix mask token
  repa_layer: int = 1               # hidden states after this many blocks
  # A distilled student (models/distill.py): a learned table of one vector per
  # sampler step count 1, 2, 4, ..., added to the time condition. Zero at
  # init, so the student starts as its teacher's decoder exactly.
  step_conditioning: bool = False
  # Std of the learned register / patch position embeddings. Near t = 1 the
  # noisy patches carry no content, so position is all a patch token knows
  # of where it is; at 0.02 a tiny model learns slowly where to put what the
  # registers say (the demo uses 1.0).
  pos_init_std: float = 0.02
  mlp_ratio: float = 4.0
  remat: str = 'none'               # layers.REMAT_POLICIES
  attention_impl: Optional[str] = None  # config.model.attention_impl: layers.attend
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, codes, x_t, t, keep=None, uncond=None, prefix=None,
               steps=None):
    """codes [B, T, k, D] (k <= K; k < K: the truncated form); x_t
    [B, T*pt, H, W, C]; t: flow time [B] (1 = noise).

    keep: bool [B, K] or [B, T, K] (False: the mask token) or None (all kept);
    uncond: bool [B] (True: the null condition, for CFG) or None;
    prefix: int [B] or None: latent frames < prefix are given conditioning
    frames whose registers get the prefix mask token (stage 2).
    steps: int [B] or None: the Euler step count of the sampler calling a
    distilled student (a power of 2 up to 2 ** (STEP_LEVELS - 1)).

    Returns (velocity [B, T*pt, H, W, C] float32,
             patch hidden states after block `repa_layer` [B, T, N, width]).
    """
    b, t_frames, k, _ = codes.shape
    patches = layers.patchify(x_t.astype(self.dtype), self.patch_size)
    n = patches.shape[2]
    if patches.shape[1] != t_frames or k > self.registers:
      raise ValueError(f'decoder got codes for {t_frames} frames x {k} registers '
                       f'but latents for {patches.shape[1]} frames '
                       f'(at most {self.registers} registers)')

    regs = layers.dense(self.width, ('codes', 'embed'), 'codes_embed',
                        self.dtype, use_bias=True)(codes.astype(self.dtype))
    reg_pos = layers.learned('pos_register',
                             (2, self.register_pos_max_size, self.width),
                             (None, 'length', 'embed'), self, self.pos_init_std)
    regs = regs + layers.axis_posemb(reg_pos, (t_frames, k),
                                     kind=self.pos_kind).astype(self.dtype)
    mask_token = layers.learned('mask_token', (self.width,), ('embed',), self)
    if keep is not None:
      keep = keep if keep.ndim == 3 else keep[:, None, :]
      regs = jnp.where(keep[..., :k, None], regs, mask_token.astype(self.dtype))
    if self.frame_conditioning:
      prefix_token = layers.learned('prefix_token', (self.width,), ('embed',),
                                    self)
      if prefix is not None:
        given = jnp.arange(t_frames)[None, :] < jnp.asarray(prefix)[:, None]
        regs = jnp.where(given[..., None, None], prefix_token.astype(self.dtype),
                         regs)
    elif prefix is not None:
      raise ValueError('first-frame conditioning needs a decoder trained with '
                       'it (config.model.first_frame_prob > 0, stage 2)')
    null = layers.learned('null_token', (self.width,), ('embed',), self)
    if uncond is not None:
      regs = jnp.where(jnp.asarray(uncond)[:, None, None, None],
                       null.astype(self.dtype), regs)

    x = layers.dense(self.width, ('patch', 'embed'), 'patch_embed', self.dtype,
                     use_bias=True)(patches)
    pos = layers.learned('pos_patch', (3, self.pos_max_size, self.width),
                         (None, 'length', 'embed'), self, self.pos_init_std)
    pos = layers.axis_posemb(pos, (t_frames, *self.grid_hw), kind=self.pos_kind)
    x = x + pos.reshape(t_frames, n, self.width).astype(self.dtype)
    self.sow('intermediates', 'registers_in', regs)
    groups = [regs, x] if self.registers_first else [x, regs]
    x = jnp.concatenate(groups, axis=2).reshape(b, t_frames * (k + n), self.width)

    cond = layers.TimeEmbedding(self.width, self.dtype, name='time_embed')(
        jnp.broadcast_to(t, (b,)))
    if self.step_conditioning:
      table = self.param('step_embed', nn.with_logical_partitioning(
          nn.initializers.zeros, (None, 'embed')), (STEP_LEVELS, self.width))
      if steps is not None:
        level = jnp.round(jnp.log2(jnp.broadcast_to(steps, (b,)).astype(
            jnp.float32))).astype(jnp.int32)
        cond = cond + table.astype(self.dtype)[jnp.clip(level, 0,
                                                        STEP_LEVELS - 1)]
    elif steps is not None:
      raise ValueError('steps= conditions a distilled student; this decoder '
                       'has no step conditioning (config.model.'
                       'step_conditioning)')
    layout = masks.interleaved(t_frames, n, k, self.registers_first)
    mask = masks.decoder_mask(self.attention)(layout, layout)
    # Modulation slice per token: the frame's first sub-sequence uses slice 0.
    subseq = np.where(layout.is_register == self.registers_first, 0, 1)
    subseq = subseq if self.adaln_subsequences == 2 else np.zeros_like(subseq)
    patch_slot = slice(k, None) if self.registers_first else slice(0, n)
    repa_hidden = None
    block_cls = layers.remat_block(layers.AdaLNBlock, self.remat,
                                   static_argnums=(4,))
    mask = layers.StaticMask(mask)
    for i in range(self.depth):
      x = block_cls(self.width, self.head_dim, self.mlp_ratio,
                    self.adaln_subsequences, self.dtype, self.attention_impl,
                    name=f'blocks_{i}')(x, cond, subseq, mask)
      if i + 1 == self.repa_layer:
        repa_hidden = x.reshape(b, t_frames, k + n, self.width)[:, :, patch_slot]

    # Final adaLN (shift, scale; shift first) and projection, as released.
    mod = layers.dense(2 * self.width, ('embed', 'cond'), 'adaln_final',
                       self.dtype, use_bias=True, zero_init=True)(nn.silu(cond))
    shift, scale = jnp.split(mod[:, None, None, :], 2, axis=-1)
    x = x.reshape(b, t_frames, k + n, self.width)[:, :, patch_slot]
    x = layers.modulate(layers.layer_norm(x), shift, scale)
    out = layers.dense(patches.shape[-1], ('embed', 'patch'), 'to_patches',
                       jnp.float32, use_bias=True, zero_init=True)(x)
    velocity = layers.unpatchify(out, self.patch_size, self.grid_hw)
    return velocity.astype(jnp.float32), repa_hidden
