"""LLaMA-like causal decoder over VideoFlexTok tokens (Sec. 3.3, App. F.2).

Pre-norm blocks with RMSNorm, SwiGLU and no biases; width 64 * depth and
depth heads (head_dim 64); untied input embedding and output head; vocab
64000 (the FSQ codebook); max sequence 1280 = 5 latent frames * 256 tokens.

Conditioning:
  * class: a learned class embedding (num_classes + 1 rows, the last is the
    null class used by classifier-free guidance) is added to the [SOS] slot.
  * text: cross-attention (every `cross_attn_every` blocks) over text
    embeddings [B, Lt, text_dim] with a bool mask [B, Lt]. The text is
    projected to the model width once, then a learned `text_null` token is
    prepended and is always visible. The null text (CFG) is an all-False
    mask: only `text_null` is attended, so the unconditional branch is learned
    and softmax never sees a row with no visible key (which would silently
    average padding instead).

Parameter count (what "non-embedding" means here): the blocks (cross-
attention included) and the final norm; not the token embedding, output
head, position tables, class table, SOS / text-null vectors or the text
input projection (EMBEDDING_PARAMS). For the class-conditional models this is
the blocks plus the final norm, 12 * width^2 * depth + norms when the SwiGLU
hidden width is exactly 8/3 * width: Table 6's 49M ... 2.29B. Table 7's
total counts (2.02B for d30, 5.20B for d42) come out with an untied head and
cross-attention in every block (4 * width^2 each), which fixes both choices.

Decoding: `decode` processes a chunk of positions starting at `start` against
a fixed-length KV cache in the flax 'cache' collection (created by the first
call, which also caches the cross-attention keys / values of the text), so a
`lax.fori_loop` over positions compiles once. See vftok/ar_sampling.py.
"""
import dataclasses
import math
from typing import Dict, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vftok.models import layers
from vftok.models.layers import dense

# Top-level parameters outside the "non-embedding" count: lookup tables, the
# vocab projection, and the text input projection (like the class table it
# maps the condition in once per text token, not per predicted token; with
# it excluded D = 20 N reproduces Table 7's token counts to 3 digits).
EMBEDDING_PARAMS = ('token_embed', 'frame_embed', 'level_embed', 'class_embed',
                    'sos', 'text_null', 'text_proj', 'text_norm', 'head')
PAPER_C2V_DEPTHS = (10, 12, 16, 20, 24, 30, 36)   # Table 6
PAPER_T2V_DEPTHS = (12, 20, 30, 42)               # Table 7


@dataclasses.dataclass(frozen=True)
class ARConfig:
  depth: int = 16
  width: int = 0              # 0: 64 * depth
  heads: int = 0              # 0: depth (head_dim 64)
  vocab_size: int = 64000
  seq_len: int = 1280         # max sequence = default KV-cache length
  num_frames: int = 5         # rows of the latent-frame position table
  tokens_per_frame: int = 256  # rows of the coarse-to-fine position table (K)
  num_classes: int = 0        # 0: no class conditioning
  text_dim: int = 0           # 0: no text cross-attention
  cross_attn_every: int = 1   # cross-attention in blocks i % every == 0
  dropout: float = 0.0        # FFN, attention-probability and projection
  dtype: str = 'float32'      # compute dtype; params stay float32
  mlp_multiple_of: int = 64   # SwiGLU hidden width rounding (see mlp_hidden)
  remat: str = 'none'         # training only: layers.REMAT_POLICIES

  def __post_init__(self):
    if not self.width:
      object.__setattr__(self, 'width', 64 * self.depth)
    if not self.heads:
      object.__setattr__(self, 'heads', self.depth)
    if self.width % self.heads:
      raise ValueError(f'width {self.width} not divisible by heads '
                       f'{self.heads}')
    if self.dtype not in ('float32', 'bfloat16'):
      raise ValueError(f'dtype must be float32 or bfloat16, got {self.dtype}')

  @property
  def head_dim(self) -> int:
    return self.width // self.heads

  @property
  def mlp_hidden(self) -> int:
    # LLaMA's 2/3 * 4 * width keeps SwiGLU (3 matrices) at the 8 * width^2 of
    # a ratio-4 MLP. LLaMA rounds up to 256, which is +5% for d10 (1707 ->
    # 1792) and breaks Table 6; 64 keeps every paper size within 1% (exact
    # when depth % 3 == 0) and still tiles on accelerators.
    m = self.mlp_multiple_of
    return m * math.ceil(int(8 * self.width / 3) / m)

  @property
  def compute_dtype(self):
    return layers.optional_dtype(self.dtype)

  def has_cross_attn(self, block: int) -> bool:
    every = self.cross_attn_every
    return bool(self.text_dim) and every > 0 and block % every == 0

  @classmethod
  def from_config_dict(cls, cd) -> 'ARConfig':
    """From an ml_collections ConfigDict (or dict); None means default."""
    items = dict(cd.items()) if hasattr(cd, 'items') else dict(cd)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(items) - names
    if unknown:
      raise ValueError(f'unknown AR config fields: {sorted(unknown)}')
    return cls(**{k: v for k, v in items.items() if v is not None})


def config_dict(depth: int = 16, **overrides) -> ml_collections.ConfigDict:
  """The ConfigDict form of ARConfig (width / heads 0 = derived from depth)."""
  fields = dataclasses.asdict(ARConfig(depth=depth))
  fields.update(width=0, heads=0)
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def build(config) -> 'ARTransformer':
  if not isinstance(config, ARConfig):
    config = ARConfig.from_config_dict(config)
  return ARTransformer(config)


def _rms_norm(name, dtype):
  return nn.RMSNorm(epsilon=1e-6, dtype=dtype, name=name,
                    scale_init=nn.with_logical_partitioning(
                        nn.initializers.ones_init(), ('norm',)))


def _attend(q, k, v, *, mask=None, is_causal=False, rate=0.0,
            deterministic=True):
  """[B, Lq, H, D] attention; dropout on the probabilities when training.

  jax.nn.dot_product_attention has no dropout, so the (rare) training-with-
  attention-dropout case spells softmax out; both paths mask identically.
  Call only inside a compact method: the Dropout binds to that module.
  """
  if deterministic or rate == 0.0:
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal)
  logits = jnp.einsum('bqhd,bkhd->bhqk', q, k).astype(jnp.float32)
  logits = logits / np.sqrt(q.shape[-1])
  if is_causal:
    causal = jnp.tril(jnp.ones((q.shape[1], k.shape[1]), bool))[None, None]
    mask = causal if mask is None else mask & causal
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1)
  probs = nn.Dropout(rate)(probs, deterministic=False)
  return jnp.einsum('bhqk,bkhd->bqhd', probs.astype(v.dtype), v)


class SelfAttention(nn.Module):
  config: ARConfig

  @nn.compact
  def __call__(self, x, start, decode: bool, cache_len: int, deterministic):
    c, dt = self.config, self.config.compute_dtype
    proj = lambda n: dense((c.heads, c.head_dim),
                           ('embed', 'heads', 'head_dim'), n, dt)(x)
    q, k, v = proj('query'), proj('key'), proj('value')
    if decode:
      b, chunk = x.shape[:2]
      shape = (b, cache_len, c.heads, c.head_dim)
      ck = self.variable('cache', 'cached_key', jnp.zeros, shape, k.dtype)
      cv = self.variable('cache', 'cached_value', jnp.zeros, shape, v.dtype)
      ck.value = jax.lax.dynamic_update_slice(ck.value, k, (0, start, 0, 0))
      cv.value = jax.lax.dynamic_update_slice(cv.value, v, (0, start, 0, 0))
      # Slots past the query position hold zeros or stale keys: masked out.
      q_pos = start + jnp.arange(chunk)
      mask = jnp.arange(cache_len)[None, :] <= q_pos[:, None]
      out = _attend(q, ck.value, cv.value, mask=mask[None, None])
    else:
      out = _attend(q, k, v, is_causal=True, rate=c.dropout,
                    deterministic=deterministic)
    return dense(c.width, ('heads', 'head_dim', 'embed'), 'out', dt,
                 in_axis=(-2, -1))(out)


class CrossAttention(nn.Module):
  """Attention to the text context; in decode mode its keys are cached."""
  config: ARConfig

  @nn.compact
  def __call__(self, x, ctx, ctx_mask, decode: bool, deterministic):
    c, dt = self.config, self.config.compute_dtype
    proj = lambda n, y: dense((c.heads, c.head_dim),
                              ('embed', 'heads', 'head_dim'), n, dt)(y)
    q = proj('query', x)
    if decode:
      if ctx is None and not self.has_variable('cache', 'cached_key'):
        raise ValueError('the first decode call must build the text cache')
      # The initialisers run on the first call only; later steps reuse K/V.
      cached = lambda name, fn: self.variable('cache', name, fn).value
      k = cached('cached_key', lambda: proj('key', ctx))
      v = cached('cached_value', lambda: proj('value', ctx))
      mask = cached('cached_mask', lambda: ctx_mask)
    else:
      k, v, mask = proj('key', ctx), proj('value', ctx), ctx_mask
    out = _attend(q, k, v, mask=mask[:, None, None, :], rate=c.dropout,
                  deterministic=deterministic or decode)
    return dense(c.width, ('heads', 'head_dim', 'embed'), 'out', dt,
                 in_axis=(-2, -1))(out)


class SwiGLU(nn.Module):
  config: ARConfig

  @nn.compact
  def __call__(self, x, deterministic):
    c, dt = self.config, self.config.compute_dtype
    gate = dense(c.mlp_hidden, ('embed', 'mlp'), 'gate', dt)(x)
    up = dense(c.mlp_hidden, ('embed', 'mlp'), 'up', dt)(x)
    h = nn.Dropout(c.dropout)(nn.silu(gate) * up, deterministic=deterministic)
    return dense(c.width, ('mlp', 'embed'), 'down', dt)(h)


class Block(nn.Module):
  config: ARConfig
  cross: bool = False

  @nn.compact
  def __call__(self, x, ctx, ctx_mask, start, decode, cache_len, deterministic):
    c, dt = self.config, self.config.compute_dtype
    # Projection dropout: on each residual branch's output projection.
    drop = lambda y: nn.Dropout(c.dropout)(y, deterministic=deterministic)
    x = x + drop(SelfAttention(c, name='attn')(
        _rms_norm('norm1', dt)(x), start, decode, cache_len, deterministic))
    if self.cross:
      x = x + drop(CrossAttention(c, name='cross_attn')(
          _rms_norm('norm_cross', dt)(x), ctx, ctx_mask, decode, deterministic))
    return x + drop(SwiGLU(c, name='mlp')(_rms_norm('norm2', dt)(x),
                                          deterministic))


class ARTransformer(nn.Module):
  """Causal decoder; logits[:, s] predict the token at sequence slot s.

  Positions: the slot s gets frame_embed[frame_index[s]] +
  level_embed[token_index[s]] (from token_order.positions) of the token it
  predicts. Factorised rather than one table over 1280 slots because (1) the
  same (frame, level) pair then has the same embedding in every order and
  token budget (a depth-first [T, n] sequence would shift a flat table's
  rows with n), and (2) coarse-to-fine level k means the same in every frame
  (nested dropout trains it so), so its row is shared and trained T times as
  often. The table sizes (num_frames, tokens_per_frame) bound T and K.
  """
  config: ARConfig

  def __call__(self, tokens, frame_index, token_index, *, class_labels=None,
               text_emb=None, text_mask=None, train: bool = False):
    """Teacher forcing: tokens [B, L] in AR order -> float32 logits [B, L, V].

    The input is [SOS] + tokens[:, :-1]; frame_index / token_index ([L] or
    [B, L]) are the positions of `tokens`. class_labels [B] (None: null
    class), text_emb [B, Lt, text_dim] with text_mask [B, Lt] (None: null
    text). train=True enables dropout (rngs={'dropout': key}).
    """
    inputs = jnp.pad(tokens[:, :-1], ((0, 0), (1, 0)))  # slot 0 becomes SOS
    return self._forward(inputs, 0, frame_index, token_index, class_labels,
                         text_emb, text_mask, decode=False, cache_len=0,
                         deterministic=not train)

  def decode(self, inputs, start, frame_index, token_index, *,
             class_labels=None, text_emb=None, text_mask=None,
             cache_len: Optional[int] = None):
    """KV-cached step over slots start .. start + C - 1 (apply with
    mutable=['cache']).

    inputs [B, C]: the tokens at slots start - 1 .. start + C - 2 (the value
    for slot -1 is ignored: slot 0 is SOS). frame_index / token_index [C]:
    positions of slots start .. start + C - 1. `start` may be traced. The
    first call (no 'cache' passed) creates a cache of cache_len slots
    (default seq_len) and caches the text; later calls ignore text_emb.
    """
    return self._forward(inputs, start, frame_index, token_index,
                         class_labels, text_emb, text_mask, decode=True,
                         cache_len=cache_len or self.config.seq_len,
                         deterministic=True)

  @nn.compact
  def _forward(self, inputs, start, frame_index, token_index, class_labels,
               text_emb, text_mask, *, decode, cache_len, deterministic):
    c, dt = self.config, self.config.compute_dtype
    b, length = inputs.shape
    init = lambda axes: nn.with_logical_partitioning(
        nn.initializers.normal(0.02), axes)
    x = nn.Embed(c.vocab_size, c.width, dtype=dt, name='token_embed',
                 embedding_init=init(('vocab', 'embed')))(inputs)

    sos = jnp.broadcast_to(layers.learned('sos', (c.width,), ('embed',), self),
                           (b, c.width))
    if c.num_classes:
      if class_labels is None:
        class_labels = jnp.full((b,), c.num_classes, jnp.int32)
      sos = sos + nn.Embed(c.num_classes + 1, c.width, name='class_embed',
                           embedding_init=init((None, 'embed')))(class_labels)
    is_sos = (start + jnp.arange(length) == 0)[None, :, None]
    x = jnp.where(is_sos, sos[:, None, :].astype(dt), x)

    frames = layers.learned('frame_embed', (c.num_frames, c.width),
                            (None, 'embed'), self)
    levels = layers.learned('level_embed', (c.tokens_per_frame, c.width),
                            (None, 'embed'), self)
    pos = (jnp.take(frames, jnp.asarray(frame_index), axis=0) +
           jnp.take(levels, jnp.asarray(token_index), axis=0))
    x = x + jnp.broadcast_to(pos, x.shape).astype(dt)

    ctx = ctx_mask = None
    if c.text_dim:
      primed = decode and self.has_variable('cache', 'text_ready')
      if decode:
        self.variable('cache', 'text_ready', lambda: jnp.ones((), bool))
      if not primed:  # decode steps after the first use the cached K/V
        ctx, ctx_mask = self._text_context(b, text_emb, text_mask)

    # Rematerialise blocks when training (decode steps keep nothing for a
    # backward pass); decode, cache_len, deterministic are Python values.
    block_cls = Block if decode else layers.remat_block(
        Block, c.remat, static_argnums=(5, 6, 7))
    for i in range(c.depth):
      x = block_cls(c, cross=c.has_cross_attn(i), name=f'blocks_{i}')(
          x, ctx, ctx_mask, start, decode, cache_len, deterministic)
    x = _rms_norm('final_norm', dt)(x)
    logits = dense(c.vocab_size, ('embed', 'vocab'), 'head', dt)(x)
    return logits.astype(jnp.float32)

  def _text_context(self, batch, text_emb, text_mask):
    c, dt = self.config, self.config.compute_dtype
    if text_emb is None:  # null text: only the learned null token is visible
      text_emb = jnp.zeros((batch, 1, c.text_dim), dt)
      text_mask = jnp.zeros((batch, 1), bool)
    elif text_mask is None:
      text_mask = jnp.ones(text_emb.shape[:2], bool)
    ctx = dense(c.width, ('cond', 'embed'), 'text_proj', dt)(text_emb)
    ctx = _rms_norm('text_norm', dt)(ctx)
    null = layers.learned('text_null', (1, c.width), (None, 'embed'), self)
    ctx = jnp.concatenate(
        [jnp.broadcast_to(null.astype(dt), (batch, 1, c.width)), ctx], axis=1)
    mask = jnp.concatenate([jnp.ones((batch, 1), bool),
                            jnp.asarray(text_mask, bool)], axis=1)
    return ctx, mask


def drop_condition(rng, prob: float, config: ARConfig, *, class_labels=None,
                   text_mask=None):
  """CFG training: replace each row's condition by the null one w.p. prob.

  Returns (class_labels, text_mask); the text embeddings stay as they are
  (an all-False mask hides them).
  """
  shape = (class_labels if class_labels is not None else text_mask).shape[:1]
  drop = jax.random.bernoulli(rng, prob, shape)
  if class_labels is not None:
    class_labels = jnp.where(drop, config.num_classes, class_labels)
  if text_mask is not None:
    text_mask = jnp.where(drop[:, None], False, text_mask)
  return class_labels, text_mask


def _top_name(path: str) -> str:
  parts = path.split('/')
  if parts[0] in ('params', 'cache') and len(parts) > 1:
    return parts[1]
  return parts[0]


def count_params(params, non_embedding: bool = True) -> int:
  """Scalars in `params` (boxed, unboxed or abstract; with or without the
  'params' key); non_embedding drops EMBEDDING_PARAMS (incl. the head)."""
  if not non_embedding:
    return layers.count_params(params)
  return layers.count_params(
      params, lambda p, _: _top_name(p) not in EMBEDDING_PARAMS)


def scaling_params(params) -> int:
  """N of C = 6 N D: non-embedding + output head (input tables are lookups).

  With this N, D = 20 N reproduces every training length of Table 7
  (3.25B, 12B, 38B, 101B tokens) to 3 digits.
  """
  return count_params(params) + layers.count_params(
      params, lambda p, _: _top_name(p) == 'head')


def analytic_param_counts(config: ARConfig) -> Dict[str, int]:
  """The counts of `count_params` / `scaling_params` without building."""
  c, w = config, config.width
  block = 4 * w * w + 3 * w * c.mlp_hidden + 2 * w
  cross = sum(c.has_cross_attn(i) for i in range(c.depth))
  non_emb = c.depth * block + cross * (4 * w * w + w) + w
  head = w * c.vocab_size
  emb = (c.vocab_size + c.num_frames + c.tokens_per_frame + 1) * w
  emb += (c.num_classes + 1) * w if c.num_classes else 0
  # text_null, text_proj, text_norm
  emb += (w + c.text_dim * w + w) if c.text_dim else 0
  return dict(non_embedding=non_emb, head=head, scaling=non_emb + head,
              total=non_emb + head + emb)


def abstract_params(config: ARConfig):
  """Parameter ShapeDtypeStructs via jax.eval_shape (nothing allocated),
  boxed with their logical axis names (sharding.unbox strips them)."""
  model = ARTransformer(config)
  t = min(config.num_frames, 2)
  fi, ti = np.arange(t, dtype=np.int32), np.zeros(t, np.int32)
  kwargs = {}
  if config.num_classes:
    kwargs['class_labels'] = jnp.zeros((1,), jnp.int32)
  if config.text_dim:
    kwargs['text_emb'] = jnp.zeros((1, 2, config.text_dim))
    kwargs['text_mask'] = jnp.ones((1, 2), bool)
  init = lambda r: model.init(r, jnp.zeros((1, t), jnp.int32), fi, ti, **kwargs)
  return jax.eval_shape(init, jax.random.key(0))['params']
