"""Transformer building blocks of the tokenizer (encoder, decoder, REPA head),
as the official VideoFlexTok release builds them.

  * pre-LayerNorm blocks; every LayerNorm (pre-attention, pre-MLP, QK-norm,
    heads) has no affine parameters and runs in float32 with eps 1e-5;
  * attention: q/k/v/out projections without bias, QK-LayerNorm over head_dim,
    scale 8 / head_dim (the release's muP scale; = 1/sqrt(64) at head_dim 64);
  * SwiGLU MLP: fc2(silu(fc1 x) * fc3 x), hidden int(2 * 4D / 3), no biases;
  * adaLN-Zero (DiT) blocks whose modulation has one 6D slice per
    sub-sequence of a frame (decoder registers, noised patches) and the
    release's chunk order (gate_msa, gate_mlp, shift_msa, scale_msa,
    shift_mlp, scale_mlp).

Every parameter carries logical axis names (vftok/sharding.py maps them to the
mesh). Every attention (encoder, decoder, REPA head, AR) goes through
`attend`, which runs the kernel config.model.attention_impl names
(models/attention_kernels.py: XLA, cuDNN, TPU splash, block-sparse Pallas
GPU); a static mask reaches the kernel as NumPy (StaticMask through remat),
so the fused kernels skip its empty blocks.
"""
import functools
from typing import Any, Callable, Optional, Sequence

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vftok.models import attention_kernels

Dtype = Any
_kernel_init = nn.initializers.xavier_uniform()
LN_EPS = 1e-5


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


def layer_norm(x):
  """LayerNorm without affine parameters, computed in float32 (the release's
  Fp32LayerNorm(elementwise_affine=False)); returns x's dtype."""
  h = x.astype(jnp.float32)
  mean = jnp.mean(h, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(h - mean), axis=-1, keepdims=True)
  return ((h - mean) * jax.lax.rsqrt(var + LN_EPS)).astype(x.dtype)


def attention_scale(head_dim: int) -> float:
  """The release's muP attention scale (hard-coded there for every block)."""
  return 8.0 / head_dim


class StaticMask:
  """A static bool mask [Lq, Lk] that stays a NumPy constant through nn.remat
  (as a hashable static argument), so a fused kernel can read its block
  structure rather than a traced copy."""

  def __init__(self, array):
    self.array = np.asarray(array, bool)
    self._key = (self.array.shape, self.array.tobytes())

  def __hash__(self):
    return hash(self._key)

  def __eq__(self, other):
    return isinstance(other, StaticMask) and self._key == other._key


def attend(q, k, v, *, mask=None, is_causal: bool = False,
           scale: Optional[float] = None, implementation: Optional[str] = None,
           dropout: Optional[Callable] = None):
  """The one attention core of vftok (encoder, decoder, REPA head, AR):
  q [B, Lq, H, D], k / v [B, Lk, H, D] -> [B, Lq, H, D].

  mask: a static NumPy bool [Lq, Lk] (every kernel), or a traced bool
  broadcastable to [B, H, Lq, Lk] (XLA only); scale: None = 1/sqrt(D);
  implementation: config.model.attention_impl, a kernel of
  models/attention_kernels.py ('', 'xla', 'xla_sparse', 'cudnn', 'splash',
  'pallas_gpu'; on a CPU the Pallas kernels run in interpret mode, as the
  tests do).
  dropout: applied to the probabilities (training with attention dropout,
  AR only): no fused kernel has it, so that case spells the softmax out.
  """
  scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
  if isinstance(mask, StaticMask):
    mask = mask.array
  if dropout is None:
    return attention_kernels.attention(
        q, k, v, mask=mask, is_causal=is_causal, scale=scale,
        impl=implementation or '',
        interpret=jax.default_backend() == 'cpu')
  logits = jnp.einsum('bqhd,bkhd->bhqk', q, k).astype(jnp.float32) * scale
  if is_causal:
    causal = jnp.tril(jnp.ones((q.shape[1], k.shape[1]), bool))[None, None]
    mask = causal if mask is None else mask & causal
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  probs = dropout(jax.nn.softmax(logits, axis=-1))
  return jnp.einsum('bhqk,bkhd->bqhd', probs.astype(v.dtype), v)


class Attention(nn.Module):
  """Self-attention for every model: the tokenizer's (QK-LayerNorm, scale
  8 / head_dim, a static [Lq, Lk] mask, an optional streaming KV prefix) and
  the AR model's (qk_norm=False, scale 1/sqrt(D), causal, attention dropout,
  a fixed-size KV cache for decoding)."""
  width: int
  head_dim: int
  dtype: Dtype = jnp.float32
  implementation: Optional[str] = None   # see attend
  qk_norm: bool = True
  scale: Optional[float] = None          # None: attention_scale(head_dim)
  dropout_rate: float = 0.0

  def _project(self, x, name):
    heads = self.width // self.head_dim
    return dense((heads, self.head_dim), ('embed', 'heads', 'head_dim'), name,
                 self.dtype)(x)

  def _output(self, out):
    return dense(self.width, ('heads', 'head_dim', 'embed'), 'out', self.dtype,
                 in_axis=(-2, -1))(out)

  def _scale(self):
    return attention_scale(self.head_dim) if self.scale is None else self.scale

  @nn.compact
  def __call__(self, x, mask=None, kv_prefix=None, *, is_causal=False,
               deterministic=True, cache=None):
    """mask: bool [Lq, Lk] (static, or traced when streaming).

    kv_prefix: (keys, values) [B, Lp, heads, head_dim] of earlier tokens
    (streaming with a KV cache); they precede x's own keys, `mask` covers
    [Lq, Lp + Lq], and the call then also returns x's (keys, values).
    cache: (start, cache_len) for decoding with a fixed-size cache in the
    'cache' collection (x holds slots start .. start + Lq - 1; causal).
    """
    q, k, v = (self._project(x, n) for n in ('query', 'key', 'value'))
    if self.qk_norm:
      q, k = layer_norm(q), layer_norm(k)   # QK-norm per head
    if cache is not None:
      start, cache_len = cache
      shape = (x.shape[0], cache_len) + k.shape[2:]
      ck = self.variable('cache', 'cached_key', jnp.zeros, shape, k.dtype)
      cv = self.variable('cache', 'cached_value', jnp.zeros, shape, v.dtype)
      ck.value = jax.lax.dynamic_update_slice(ck.value, k, (0, start, 0, 0))
      cv.value = jax.lax.dynamic_update_slice(cv.value, v, (0, start, 0, 0))
      # Slots past the query position hold zeros or stale keys: masked out.
      q_pos = start + jnp.arange(x.shape[1])
      mask = jnp.arange(cache_len)[None, :] <= q_pos[:, None]
      # The mask depends on the traced position: XLA (a decode step is
      # memory-bound; the fused kernels are for training and whole clips).
      return self._output(attend(q, ck.value, cv.value, mask=mask[None, None],
                                 scale=self._scale(), implementation='xla'))
    k_all, v_all = k, v
    if kv_prefix is not None:
      k_all = jnp.concatenate([kv_prefix[0].astype(k.dtype), k], axis=1)
      v_all = jnp.concatenate([kv_prefix[1].astype(v.dtype), v], axis=1)
    dropout = None
    if self.dropout_rate > 0 and not deterministic:
      dropout = lambda p: nn.Dropout(self.dropout_rate)(p, deterministic=False)
    # Streaming (kv_prefix): the mask depends on the traced frame offset: XLA.
    out = attend(q, k_all, v_all, mask=mask, is_causal=is_causal,
                 scale=self._scale(), dropout=dropout,
                 implementation=(self.implementation if kv_prefix is None
                                 else 'xla'))
    out = self._output(out)
    return out if kv_prefix is None else (out, (k, v))


class CrossAttention(Attention):
  """Attention from x to a context (the AR model's text); when decoding, the
  context's keys / values are computed once and cached."""

  @nn.compact
  def __call__(self, x, context, context_mask, *, decode=False,
               deterministic=True):
    q = self._project(x, 'query')
    if decode:
      if context is None and not self.has_variable('cache', 'cached_key'):
        raise ValueError('the first decode call must build the text cache')
      # The initialisers run on the first call only; later steps reuse K/V.
      cached = lambda name, fn: self.variable('cache', name, fn).value
      k = cached('cached_key', lambda: self._project(context, 'key'))
      v = cached('cached_value', lambda: self._project(context, 'value'))
      context_mask = cached('cached_mask', lambda: context_mask)
    else:
      k, v = self._project(context, 'key'), self._project(context, 'value')
    dropout = None
    if self.dropout_rate > 0 and not (deterministic or decode):
      dropout = lambda p: nn.Dropout(self.dropout_rate)(p, deterministic=False)
    # A per-caption padding mask (traced): XLA.
    out = attend(q, k, v, mask=context_mask[:, None, None, :],
                 scale=self._scale(), implementation='xla', dropout=dropout)
    return self._output(out)


def swiglu_hidden(width: int, mlp_ratio: float) -> int:
  # The gate adds a third matrix; 2/3 keeps the MLP at ~8 width^2 parameters.
  return int(2 * int(width * mlp_ratio) / 3)


def _sum_leading(a, b):
  """a [..., M], b [..., N] -> [M, N]: the sum over every token of a^T b (a
  weight's gradient)."""
  lead = tuple(range(a.ndim - 1))
  return jax.lax.dot_general(a, b, ((lead, lead), ((), ())))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def swiglu(x, w1, w3, w2, keep=None, keep_prob=1.0):
  """silu(x w1) * (x w3) @ w2 for x [..., D], with a hand-written backward
  pass: the autodiff one made XLA:CPU write the [tokens, hidden] gate
  gradients out transposed for the weight gradients and keep the sigmoid's
  intermediates (measured: 4 encoder blocks of the demo, fwd + bwd, 43 ->
  34 ms on 2 cores). Equal to autodiff within float rounding (tests).

  keep: None, or dropout's bool mask [..., hidden] on the hidden units, kept
  ones scaled by 1 / keep_prob in the hidden units' dtype (nn.Dropout's
  formula)."""
  return _swiglu_fwd(x, w1, w3, w2, keep, keep_prob)[0]


def _dropout(h, keep, keep_prob):
  return h if keep is None else jnp.where(keep, h / keep_prob, 0)


def _swiglu_fwd(x, w1, w3, w2, keep, keep_prob):
  gate, up = x @ w1, x @ w3
  h = _dropout(nn.silu(gate) * up, keep, keep_prob)
  return h @ w2, (x, gate, up, w1, w3, w2, keep)


def _swiglu_bwd(keep_prob, saved, dy):
  x, gate, up, w1, w3, w2, keep = saved
  sig = jax.nn.sigmoid(gate)
  act = gate * sig                                   # silu(gate)
  h = _dropout(act * up, keep, keep_prob)
  dh = _dropout(dy @ w2.T, keep, keep_prob)
  dup = dh * act
  dgate = dh * up * sig * (1 + gate * (1 - sig))     # silu'(gate)
  dx = dgate @ w1.T + dup @ w3.T
  return (dx, _sum_leading(x, dgate), _sum_leading(x, dup),
          _sum_leading(h, dy), None)


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


class Kernel(nn.Module):
  """The kernel of `dense(features, axes, ...)` alone (same name, shape,
  initialiser and logical axes, so checkpoints and inits are unchanged), for
  code that multiplies by it itself."""
  shape: Sequence[int]
  axes: Sequence[str]

  @nn.compact
  def __call__(self):
    return self.param('kernel', nn.with_logical_partitioning(
        _kernel_init, tuple(self.axes)), tuple(self.shape))


class Mlp(nn.Module):
  """SwiGLU: fc2(silu(fc1 x) * fc3 x)."""
  width: int
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    hidden = swiglu_hidden(self.width, self.mlp_ratio)
    w1 = Kernel((x.shape[-1], hidden), ('embed', 'mlp'), name='fc1')()
    w3 = Kernel((x.shape[-1], hidden), ('embed', 'mlp'), name='fc3')()
    w2 = Kernel((hidden, self.width), ('mlp', 'embed'), name='fc2')()
    x, w1, w3, w2 = nn.dtypes.promote_dtype(x, w1, w3, w2, dtype=self.dtype)
    return swiglu(x, w1, w3, w2)


@jax.custom_vjp
def _materialized_cotangent(x):
  return x


def _materialized_cotangent_fwd(x):
  # 1 unless x holds a NaN: a trip count XLA cannot fold at compile time.
  first = x.reshape(-1)[0]
  return x, 1 + (first != first).astype(jnp.int32)


def _materialized_cotangent_bwd(trips, g):
  # A loop XLA must run: adding i * 0.0 keeps the carry from being forwarded
  # around it (identity for every finite or infinite g; NaN stays NaN).
  return (jax.lax.fori_loop(
      0, trips, lambda i, c: c + i.astype(c.dtype) * 0.0, g),)


_materialized_cotangent.defvjp(_materialized_cotangent_fwd,
                               _materialized_cotangent_bwd)


def residual_checkpoint(x):
  """The identity, except that on XLA:CPU the backward pass materialises the
  residual stream's cotangent here (at each block's input and after its
  attention).

  Why: that cotangent is a sum of every later block's contributions, and
  XLA:CPU fuses the whole sum into each of its consumers (the transposes
  for weight gradients, layer-norm backward reductions) and recomputes it
  there: work quadratic in depth. XLA:CPU drops optimization barriers, so
  the cotangent goes through a one-trip loop whose trip count it cannot
  fold. The demo's d4 train step on 2 cores: 0.36 -> 0.26 s
  (docs/demo_ablations.md, "Step speed"). Other backends: a plain identity.
  """
  if jax.default_backend() != 'cpu':
    return x
  return _materialized_cotangent(x)


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
    x = residual_checkpoint(x)
    h = Attention(self.width, self.head_dim, self.dtype, self.attention_impl,
                  name='attn')(layer_norm(x), mask, kv_prefix)
    h, kv = h if kv_prefix is not None else (h, None)
    x = residual_checkpoint(x + h)
    x = x + Mlp(self.width, self.mlp_ratio, self.dtype, name='mlp')(
        layer_norm(x))
    return x if kv_prefix is None else (x, kv)


def modulate(x, shift, scale):
  return x * (1 + scale) + shift


def per_token(mod, subseq):
  """mod [B, S, F] (one row per sub-sequence), subseq int [L] (static) ->
  [B, L, F]: each token's row. A select of broadcast rows, which XLA fuses
  into the consumer, rather than a gather, which it writes out whole
  (B x L x 6 width per block: 10 % of a CPU decoder pass)."""
  if mod.shape[1] == 1:
    return mod
  subseq = jnp.asarray(subseq)[None, :, None]
  out = mod[:, :1]
  for s in range(1, mod.shape[1]):
    out = jnp.where(subseq == s, mod[:, s:s + 1], out)
  return out


class AdaLNBlock(nn.Module):
  """DiT block with adaLN-Zero conditioning on the flow time (FlexBlockAdaLN).

  `subsequences` > 1 (the release's adaLN_expansion with per-sub-sequence
  embeddings): the modulation Linear outputs one 6D slice per sub-sequence of
  a frame, and token i uses slice subseq[i]. Its parameters then equal the
  block's (Table 5).
  """
  width: int
  head_dim: int
  mlp_ratio: float = 4.0
  subsequences: int = 2
  dtype: Dtype = jnp.float32
  attention_impl: Optional[str] = None

  @nn.compact
  def __call__(self, x, cond, subseq, mask):
    """x [B, L, D]; cond [B, D] (time embedding of each clip); subseq int [L]
    (a constant, traced under remat): each token's sub-sequence index."""
    b = x.shape[0]
    x = residual_checkpoint(x)
    mod = dense(self.subsequences * 6 * self.width, ('embed', 'cond'), 'adaln',
                self.dtype, use_bias=True, zero_init=True)(nn.silu(cond))
    mod = mod.reshape(b, self.subsequences, 6 * self.width)
    gate1, gate2, shift1, scale1, shift2, scale2 = (
        per_token(m, subseq) for m in jnp.split(mod, 6, axis=-1))
    h = modulate(layer_norm(x), shift1, scale1)
    x = x + gate1 * Attention(self.width, self.head_dim, self.dtype,
                              self.attention_impl, name='attn')(h, mask)
    x = residual_checkpoint(x)
    h = modulate(layer_norm(x), shift2, scale2)
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


def attention_implementation(name: Optional[str]) -> str:
  """config.model.attention_impl, checked: '' (the backend's fastest XLA
  path: 'xla_sparse' on CPU), 'xla', 'xla_sparse', 'cudnn', 'splash' (TPU)
  or 'pallas_gpu' (models/attention_kernels.py)."""
  if (name or '') not in attention_kernels.IMPLS:
    raise ValueError(f'config.model.attention_impl={name!r}: must be one of '
                     f'{attention_kernels.IMPLS}')
  return name or ''


def sincos(positions, dim: int, max_period: float = 10_000.,
           scale: float = 1.0):
  """[cos, sin] embedding of (possibly fractional) positions * scale ->
  [..., dim]; the scale multiplies the frequencies (as the release rounds)."""
  half = dim // 2
  freqs = jnp.exp(-np.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  freqs = freqs * scale
  args = jnp.asarray(positions, jnp.float32)[..., None] * freqs
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, [(0, 0)] * (emb.ndim - 1) + [(0, 1)])
  return emb


class TimeEmbedding(nn.Module):
  """Flow time t in [0, 1] -> [B, width] (the release's TimestepEmbedder:
  [cos, sin] of 1000 t at 128 frequencies with max period 256, then
  Linear -> SiLU -> Linear)."""
  width: int
  dtype: Dtype = jnp.float32
  frequency_size: int = 256
  max_period: float = 256.0

  @nn.compact
  def __call__(self, t):
    h = sincos(t, self.frequency_size, self.max_period, 1000.0).astype(self.dtype)
    h = dense(self.width, (None, 'embed'), 'fc1', self.dtype, use_bias=True)(h)
    return dense(self.width, ('embed', None), 'fc2', self.dtype,
                 use_bias=True)(nn.silu(h))


def learned(name, shape, axes, module: nn.Module, std: float = 0.02):
  return module.param(name, nn.with_logical_partitioning(
      nn.initializers.normal(std), axes), shape)


POSEMB_KINDS = ('sum', 'prod')


def axis_posemb(table, sizes: Sequence[int], offsets=None, kind: str = 'sum'):
  """The release's learnable_sum / learnable_prod positional embedding.

  table [n_axes, M, D] (one max size M for every axis); sizes: the grid
  (n_axes ints); offsets: optional start index per axis (a traced int for a
  streamed frame index). -> [*sizes, D] = P[0][i0] (+|*) P[1][i1] (+|*) ...
  """
  if kind not in POSEMB_KINDS:
    raise ValueError(f'positional embedding kind {kind!r}: must be one of '
                     f'{POSEMB_KINDS}')
  n_axes, max_size, _ = table.shape
  if len(sizes) != n_axes:
    raise ValueError(f'{n_axes}-axis position table for a {len(sizes)}-d grid')
  out = None
  for a, size in enumerate(sizes):
    start = 0 if offsets is None else offsets[a]
    if isinstance(start, int) and start + size > max_size:
      raise ValueError(f'position {start + size - 1} on axis {a} is beyond the '
                       f'learned table (max size {max_size})')
    emb = jax.lax.dynamic_slice_in_dim(table[a], start, size, axis=0)
    emb = emb.reshape((1,) * a + (size,) + (1,) * (n_axes - a - 1) + emb.shape[-1:])
    out = emb if out is None else (out + emb if kind == 'sum' else out * emb)
  return out


def patchify(latents, patch_size):
  """[B, T, H, W, C] -> [B, T / pt, (H / ph) * (W / pw), pt * ph * pw * C]
  (channel fastest, as the release's PatchEmbedder)."""
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
  """adaLN modulation matrices of the blocks: Table 5's count (it leaves out
  the release's modulation biases, 12 * width per block)."""
  return count_params(params, lambda p, _: 'blocks_' in p and 'adaln' in p
                      and p.endswith('kernel'))


def optional_dtype(name: Optional[str]):
  return {'bfloat16': jnp.bfloat16, 'float32': jnp.float32,
          None: jnp.float32}[name]
