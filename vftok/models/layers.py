"""Transformer building blocks shared by the encoder, decoder and REPA head.

Every parameter carries logical axis names (see vftok/sharding.py for the
logical -> mesh rules). Attention goes through `jax.nn.dot_product_attention`
in [batch, length, heads, head_dim] with a boolean mask, so the XLA or cuDNN
implementation can be chosen without touching the model.

Linear layers have no biases and norms no learned shift: with them the block
parameter count is 12 * width^2 per layer, the count in Table 5 of the paper.
"""
from typing import Any, Callable, Optional

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
_kernel_init = nn.initializers.xavier_uniform()


def dense(features, axes, name, dtype, use_bias=False, zero_init=False,
          in_axis=-1):
  # DenseGeneral flattens its kernel to 2-D (inputs, outputs) before calling
  # the initializer, so xavier sees the true fan-in / fan-out.
  init = nn.initializers.zeros_init() if zero_init else _kernel_init
  return nn.DenseGeneral(
      features, axis=in_axis, use_bias=use_bias, dtype=dtype, name=name,
      kernel_init=nn.with_logical_partitioning(init, axes),
      bias_init=nn.with_logical_partitioning(
          nn.initializers.zeros_init(), axes[-len(np.atleast_1d(features)):]))


def layer_norm(name, dtype, use_scale=True):
  return nn.LayerNorm(
      epsilon=1e-6, use_bias=False, use_scale=use_scale, dtype=dtype,
      name=name, scale_init=nn.with_logical_partitioning(
          nn.initializers.ones_init(), ('norm',)))


class Attention(nn.Module):
  width: int
  head_dim: int
  dtype: Dtype = jnp.float32
  implementation: Optional[str] = None   # jax.nn.dot_product_attention's

  @nn.compact
  def __call__(self, x, mask, kv_prefix=None):
    """mask: bool [Lq, Lk] (static, or traced when streaming).

    kv_prefix: (keys, values) [B, Lp, heads, head_dim] of earlier tokens
    (streaming with a KV cache); they precede x's own keys, `mask` covers
    [Lq, Lp + Lq], and the call then also returns x's (keys, values).
    """
    heads = self.width // self.head_dim
    proj = lambda n: dense((heads, self.head_dim), ('embed', 'heads', 'head_dim'),
                           n, self.dtype)(x)
    q, k, v = proj('query'), proj('key'), proj('value')
    k_all, v_all = k, v
    if kv_prefix is not None:
      k_all = jnp.concatenate([kv_prefix[0].astype(k.dtype), k], axis=1)
      v_all = jnp.concatenate([kv_prefix[1].astype(v.dtype), v], axis=1)
    # Mask broadcast over batch and heads.
    out = jax.nn.dot_product_attention(q, k_all, v_all,
                                       mask=jnp.asarray(mask)[None, None],
                                       implementation=self.implementation)
    out = dense(self.width, ('heads', 'head_dim', 'embed'), 'out', self.dtype,
                in_axis=(-2, -1))(out)
    return out if kv_prefix is None else (out, (k, v))


class Mlp(nn.Module):
  width: int
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    hidden = int(self.width * self.mlp_ratio)
    x = dense(hidden, ('embed', 'mlp'), 'fc1', self.dtype)(x)
    x = nn.gelu(x, approximate=True)
    return dense(self.width, ('mlp', 'embed'), 'fc2', self.dtype)(x)


class Block(nn.Module):
  """Pre-norm Transformer block (encoder, REPA head)."""
  width: int
  head_dim: int
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32
  attention_impl: Optional[str] = None

  @nn.compact
  def __call__(self, x, mask, kv_prefix=None):
    """kv_prefix: see Attention; then also returns this block's (keys, values)."""
    h = Attention(self.width, self.head_dim, self.dtype, self.attention_impl,
                  name='attn')(layer_norm('norm1', self.dtype)(x), mask,
                               kv_prefix)
    h, kv = h if kv_prefix is not None else (h, None)
    x = x + h
    x = x + Mlp(self.width, self.mlp_ratio, self.dtype, name='mlp')(
        layer_norm('norm2', self.dtype)(x))
    return x if kv_prefix is None else (x, kv)


def _modulate(x, shift, scale):
  return x * (1 + scale) + shift


class AdaLNBlock(nn.Module):
  """DiT block with adaLN-Zero conditioning on the flow time.

  Register tokens and latent patches get separate modulation (shift, scale,
  gate for attention and MLP), as in the official release: the adaLN parameters
  then equal the Transformer parameters (Table 5).
  """
  width: int
  head_dim: int
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32
  attention_impl: Optional[str] = None

  @nn.compact
  def __call__(self, x, cond, is_register, mask):
    # cond: [B, width] or [B, T, width] (one time embedding per latent frame,
    # the sequence being T equal-length frame groups); is_register: bool [L]
    # (a constant, traced under remat).
    c = nn.silu(cond)
    # No bias: the time embedding's last layer has one, and without it the
    # adaLN parameter count is exactly 12 * width^2 per block (Table 5).
    mods = [dense(6 * self.width, ('embed', 'cond'), f'adaln_{n}', self.dtype,
                  zero_init=True)(c)
            for n in ('patch', 'register')]
    is_register = jnp.asarray(is_register)
    b, length = x.shape[:2]
    if c.ndim == 2:
      mod = jnp.where(is_register[None, :, None], mods[1][:, None], mods[0][:, None])
    else:
      frames = c.shape[1]
      per = is_register.reshape(frames, length // frames)
      mod = jnp.where(per[None, :, :, None], mods[1][:, :, None], mods[0][:, :, None])
      mod = mod.reshape(b, length, 6 * self.width)
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod, 6, axis=-1)
    h = _modulate(layer_norm('norm1', self.dtype, use_scale=False)(x),
                  shift1, scale1)
    x = x + gate1 * Attention(self.width, self.head_dim, self.dtype,
                              self.attention_impl, name='attn')(h, mask)
    h = _modulate(layer_norm('norm2', self.dtype, use_scale=False)(x),
                  shift2, scale2)
    return x + gate2 * Mlp(self.width, self.mlp_ratio, self.dtype,
                           name='mlp')(h)


# Activation rematerialisation of whole blocks (config.model.remat): what the
# backward pass may keep from the forward pass of a block.
REMAT_POLICIES = {
    'none': None,      # keep everything (fastest, most memory)
    # keep the projections' outputs (matmuls without batch dims), recompute
    # attention scores/probabilities [B, heads, L, L] and elementwise ops: the
    # scores dominate activation memory at the paper's 2560-token sequences
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    'full': jax.checkpoint_policies.nothing_saveable,  # keep block inputs only
}


def remat_block(block_cls, policy: str, static_argnums=()):
  """block_cls, or a rematerialised version of it. Parameter names and values
  are unchanged (blocks are named explicitly), so checkpoints load either way.
  static_argnums: Python-valued __call__ arguments (self is argument 0)."""
  if policy not in REMAT_POLICIES:
    raise ValueError(f'config.model.remat={policy!r}: must be one of '
                     f'{sorted(REMAT_POLICIES)}')
  if policy == 'none':
    return block_cls
  return nn.remat(block_cls, policy=REMAT_POLICIES[policy], prevent_cse=True,
                  static_argnums=static_argnums)


def attention_implementation(name: Optional[str]) -> Optional[str]:
  """config.model.attention_impl -> jax.nn.dot_product_attention's
  `implementation`: '' (XLA picks: the XLA path everywhere today), 'xla', or
  'cudnn' (fused flash attention on NVIDIA GPUs; bf16/fp16 compute only)."""
  if name not in ('', None, 'xla', 'cudnn'):
    raise ValueError(f"config.model.attention_impl={name!r}: must be '', "
                     "'xla' or 'cudnn'")
  return name or None


def sincos(positions: np.ndarray, dim: int, max_period: float = 10_000.):
  """Sinusoidal embedding of (possibly fractional) positions -> [..., dim].

  Used for the latent-frame index so that clips longer than those seen in
  training (long video, streaming) still get meaningful positions.
  """
  half = dim // 2
  freqs = jnp.exp(-np.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(positions, jnp.float32)[..., None] * freqs
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, [(0, 0)] * (emb.ndim - 1) + [(0, 1)])
  return emb


class TimeEmbedding(nn.Module):
  """Flow time t in [0, 1] -> [B, width] (DiT's timestep embedder)."""
  width: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, t):
    h = sincos(t * 1000.0, 256).astype(self.dtype)
    h = dense(self.width, (None, 'embed'), 'fc1', self.dtype, use_bias=True)(h)
    return dense(self.width, ('embed', None), 'fc2', self.dtype,
                 use_bias=True)(nn.silu(h))


def learned(name, shape, axes, module: nn.Module, std: float = 0.02):
  return module.param(name, nn.with_logical_partitioning(
      nn.initializers.normal(std), axes), shape)


def patchify(latents, patch_size):
  """[B, T, H, W, C] -> [B, T / pt, (H / ph) * (W / pw), pt * ph * pw * C]."""
  pt, ph, pw = patch_size
  return einops.rearrange(latents, 'b (t pt) (h ph) (w pw) c -> b t (h w) (pt ph pw c)',
                          pt=pt, ph=ph, pw=pw)


def unpatchify(tokens, patch_size, grid_hw):
  pt, ph, pw = patch_size
  return einops.rearrange(tokens, 'b t (h w) (pt ph pw c) -> b (t pt) (h ph) (w pw) c',
                          h=grid_hw[0], w=grid_hw[1], pt=pt, ph=ph, pw=pw)


def count_params(tree, predicate: Optional[Callable[[str, Any], bool]] = None
                 ) -> int:
  """Number of scalars in `tree` (boxed or not, arrays or ShapeDtypeStructs).

  `predicate(path, leaf)` selects leaves; path is '/'-joined keys, e.g.
  'params/encoder/blocks_0/mlp/fc1/kernel'.
  """
  is_box = lambda x: isinstance(x, nn.Partitioned)
  tree = jax.tree.map(lambda x: x.value if is_box(x) else x, tree,
                      is_leaf=is_box)
  total = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    name = '/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path)
    if predicate is None or predicate(name, leaf):
      total += int(np.prod(np.shape(leaf)))
  return total


def transformer_param_count(params) -> int:
  """Parameters of Transformer blocks, excluding adaLN modulation (Table 5)."""
  return count_params(params, lambda p, _: 'blocks_' in p and 'adaln' not in p)


def adaln_param_count(params) -> int:
  return count_params(params, lambda p, _: 'blocks_' in p and 'adaln' in p)


def optional_dtype(name: Optional[str]):
  return {'bfloat16': jnp.bfloat16, 'float32': jnp.float32,
          None: jnp.float32}[name]
