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
`lax.fori_loop` over positions compiles once. See vftok/models/ar_sampling.py.
"""
import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vftok.models import layers
from vftok.models import token_order
from vftok.models.ar_config import analytic_param_counts as analytic_param_counts
from vftok.models.ar_config import ARConfig as ARConfig
from vftok.models.ar_config import config_dict as config_dict
from vftok.models.ar_config import PAPER_C2V_DEPTHS as PAPER_C2V_DEPTHS
from vftok.models.ar_config import PAPER_T2V_DEPTHS as PAPER_T2V_DEPTHS
from vftok.models.layers import dense

# Top-level parameters outside the "non-embedding" count: lookup tables, the
# vocab projection, and the text input projection (like the class table it
# maps the condition in once per text token, not per predicted token; with
# it excluded D = 20 N reproduces Table 7's token counts to 3 digits).
EMBEDDING_PARAMS = ('token_embed', 'frame_embed', 'level_embed', 'class_embed',
                    'sos', 'text_null', 'text_proj', 'text_norm', 'head')


def build(config) -> 'ARTransformer':
  if not isinstance(config, ARConfig):
    config = ARConfig.from_config_dict(config)
  return ARTransformer(config)


def _rms_norm(name, dtype):
  return nn.RMSNorm(epsilon=1e-6, dtype=dtype, name=name,
                    scale_init=nn.with_logical_partitioning(
                        nn.initializers.ones_init(), ('norm',)))


class SwiGLU(nn.Module):
  """down(silu(gate x) * up x), with dropout on the hidden units:
  layers.swiglu, whose hand-written backward is the faster one on CPU."""
  config: ARConfig

  @nn.compact
  def __call__(self, x, deterministic):
    c, dt = self.config, self.config.compute_dtype
    hidden = (x.shape[-1], c.mlp_hidden)
    wg = layers.Kernel(hidden, ('embed', 'mlp'), name='gate')()
    wu = layers.Kernel(hidden, ('embed', 'mlp'), name='up')()
    wd = layers.Kernel(hidden[::-1], ('mlp', 'embed'), name='down')()
    x, wg, wu, wd = nn.dtypes.promote_dtype(x, wg, wu, wd, dtype=dt)
    keep = None
    if c.dropout > 0 and not deterministic:
      # nn.Dropout's own mask (its rng stream and bits), read off a ones array.
      keep = nn.Dropout(c.dropout)(
          jnp.ones(x.shape[:-1] + (c.mlp_hidden,), jnp.float32),
          deterministic=False) > 0
    return layers.swiglu(x, wg, wu, wd, keep, 1.0 - c.dropout)


class Block(nn.Module):
  config: ARConfig
  cross: bool = False

  @nn.compact
  def __call__(self, x, ctx, ctx_mask, start, decode, cache_len, deterministic):
    c, dt = self.config, self.config.compute_dtype
    # Projection dropout: on each residual branch's output projection.
    drop = lambda y: nn.Dropout(c.dropout)(y, deterministic=deterministic)
    attn = lambda cls, name: cls(
        c.width, c.head_dim, dt, layers.attention_implementation(
            c.attention_impl), qk_norm=False,
        scale=1.0 / math.sqrt(c.head_dim), dropout_rate=c.dropout, name=name)
    h = _rms_norm('norm1', dt)(x)
    h = (attn(layers.Attention, 'attn')(h, cache=(start, cache_len))
         if decode else
         attn(layers.Attention, 'attn')(h, is_causal=True,
                                         deterministic=deterministic))
    x = x + drop(h)
    if self.cross:
      x = x + drop(attn(layers.CrossAttention, 'cross_attn')(
          _rms_norm('norm_cross', dt)(x), ctx, ctx_mask, decode=decode,
          deterministic=deterministic))
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


def abstract_params(config: ARConfig):
  """Parameter ShapeDtypeStructs via jax.eval_shape (nothing allocated),
  boxed with their logical axis names (sharding.unbox strips them)."""
  args, kwargs = dummy_inputs(config)
  init = lambda r: ARTransformer(config).init(r, *args, **kwargs)
  return jax.eval_shape(init, jax.random.key(0))['params']


# ---- training loss -------------------------------------------------------------

def dummy_inputs(config: ARConfig):
  """(args, kwargs) of a minimal forward that creates every parameter."""
  t = min(config.num_frames, 2)
  args = (jnp.zeros((1, t), jnp.int32), np.arange(t, dtype=np.int32),
          np.zeros(t, np.int32))
  kwargs = {}
  if config.num_classes:
    kwargs['class_labels'] = jnp.zeros((1,), jnp.int32)
  if config.text_dim:
    kwargs['text_emb'] = jnp.zeros((1, 2, config.text_dim))
    kwargs['text_mask'] = jnp.ones((1, 2), bool)
  return args, kwargs


def sequence_loss(logits, seq, num_frames: int, order: str):
  """-> (mean cross-entropy, accuracy, mean cross-entropy per level [n])."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, seq)
  correct = (jnp.argmax(logits, -1) == seq).astype(jnp.float32)
  n = seq.shape[1] // num_frames
  per_level = token_order.from_sequence(ce, num_frames, n, order).mean((0, 1))
  return ce.mean(), correct.mean(), per_level


def loss_fn(model: 'ARTransformer', params, batch, rng, *,
            order: str = 'time_first', cond_dropout: float = 0.1):
  """Next-token cross-entropy over the [T, n] token grid laid out in `order`
  (time-first by default) -> (loss, metrics). The condition (class label or
  caption mask) is replaced by the null one w.p. `cond_dropout`, so the same
  model learns the unconditional branch classifier-free guidance needs.

  batch: tokens int32 [B, T, n]; label int32 [B] (class models; < 0 is the
  null class); text_emb float [B, Lt, D] + text_mask bool [B, Lt] (text).
  """
  mc = model.config
  tokens = batch['tokens']
  _, t, n = tokens.shape
  seq = token_order.to_sequence(tokens, order)
  frame_index, token_index = token_order.positions(t, n, order)
  cond_rng, dropout_rng = jax.random.split(rng)
  labels = mask = None
  if mc.num_classes:
    labels = batch['label']
    labels = jnp.where(labels < 0, mc.num_classes, labels)
  if mc.text_dim:
    mask = batch['text_mask']
  if cond_dropout > 0 and (labels is not None or mask is not None):
    labels, mask = drop_condition(cond_rng, cond_dropout, mc,
                                  class_labels=labels, text_mask=mask)
  logits = model.apply(params, seq, frame_index, token_index,
                       class_labels=labels, text_emb=batch.get('text_emb'),
                       text_mask=mask, train=True,
                       rngs={'dropout': dropout_rng})
  loss, accuracy, per_level = sequence_loss(logits, seq, t, order)
  return loss, dict(loss=loss, accuracy=accuracy,
                    loss_first_token=per_level[0],
                    loss_last_token=per_level[-1])
