"""Batched sampling of VideoFlexTok tokens from the AR model, under one jit.

`sample` draws T * n tokens in the given order and returns them as [B, T, n]
(n tokens per latent frame: in the time-first order any budget n <= K is a
prefix of the full sequence, which is what makes VideoFlexTok's token count
flexible at inference).

  * use_kv_cache=True: one cached `decode` call per position inside a
    `lax.fori_loop`, so the loop compiles once whatever the length.
  * use_kv_cache=False: every step reruns the full causal forward over the
    whole (partly filled) sequence and reads the logits of the current slot.
    Quadratically slower; kept as the reference the cache must reproduce.

Given tokens (`given`, `given_mask`) fix any set of positions: at a given
position the given token is written instead of a drawn one, and every later
position is fed it, so the free tokens are drawn from the model's conditional
p(x_i | x_<i) with the given ones in the context (image-to-video, continuation,
keep-the-coarse-tokens edits). A given token after a free one in the order is
seen only by the positions after it: the AR model cannot condition on its
future, so image-to-video in time-first order conditions level j of every
frame on levels <= j of the given frame.

Classifier-free guidance runs the conditional and the null-conditioned rows
as one doubled batch and combines l_u + s * (l_c - l_u); both rows are then
fed the same sampled token. Per-step randomness is fold_in(rng, position), so
both paths draw the same tokens from the same logits.
"""
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from vftok.models import ar as ar_lib
from vftok.models import token_order


def kth_largest(x, k: int):
  """[..., V] -> [..., 1]: the k-th largest value along the last axis.

  Radix select on the order-preserving uint32 image of float32: 32 counting
  passes over V instead of a sort. XLA's CPU sort / top_k takes ~165 ms for
  8 x 64000 logits, which made top-k sampling 8x slower than the model step;
  this is exact (ties included) and cheap on every backend.
  """
  bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
  sign = jnp.uint32(0x80000000)
  keys = jnp.where(bits & sign, ~bits, bits | sign)  # monotone in x

  def body(i, ans):
    cand = ans | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
    enough = jnp.sum(keys >= cand, axis=-1, keepdims=True) >= k
    return jnp.where(enough, cand, ans)

  ans = jax.lax.fori_loop(0, 32, body, jnp.zeros(x.shape[:-1] + (1,),
                                                 jnp.uint32))
  bits = jnp.where(ans & sign, ans ^ sign, ~ans)
  return jax.lax.bitcast_convert_type(bits, jnp.float32)


def select_tokens(logits, rng, *, temperature=1.0, top_k: int = 0,
                  top_p=1.0, greedy: bool = False, use_top_p: bool = True):
  """logits [B, V] -> int32 [B]; greedy means argmax (temperature 0).

  top_k (static) keeps the k largest logits; top_p keeps the smallest set of
  most likely tokens whose probability reaches top_p (always >= 1 token).
  """
  if greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  if top_k:
    kth = kth_largest(logits, top_k)
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if use_top_p:
    desc = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(desc, axis=-1)
    # Drop a token when the more likely ones already reach top_p.
    before = jnp.cumsum(probs, axis=-1) - probs
    kept = jnp.where(before < top_p, desc, jnp.inf)
    threshold = jnp.min(kept, axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def _batch_size(batch_size, class_labels, text_emb) -> int:
  for x in (class_labels, text_emb):
    if x is not None:
      return int(np.shape(x)[0])
  if batch_size is None:
    raise ValueError('unconditional sampling needs batch_size')
  return int(batch_size)


def _conditions(config, batch, class_labels, text_emb, text_mask, use_cfg):
  """Model condition kwargs, with the null rows appended when use_cfg."""
  cond = {}
  if config.num_classes:
    labels = (jnp.full((batch,), config.num_classes, jnp.int32)
              if class_labels is None else jnp.asarray(class_labels, jnp.int32))
    if use_cfg:
      labels = jnp.concatenate([labels, jnp.full_like(labels,
                                                      config.num_classes)])
    cond['class_labels'] = labels
  if config.text_dim and text_emb is not None:
    mask = (jnp.ones(text_emb.shape[:2], bool) if text_mask is None
            else jnp.asarray(text_mask, bool))
    if use_cfg:  # null text: same embeddings, nothing visible
      text_emb = jnp.concatenate([text_emb, text_emb])
      mask = jnp.concatenate([mask, jnp.zeros_like(mask)])
    cond['text_emb'], cond['text_mask'] = text_emb, mask
  return cond


def check_given(given, given_mask, shape, vocab_size: int):
  """-> (int32 tokens, bool mask), both `shape` [B, T, n]; the mask defaults
  to given >= 0 (-1 marks a position to sample). One ValueError for a shape
  or a given token outside the vocabulary."""
  given = np.asarray(given)
  if given_mask is None:
    given_mask = given >= 0
  given_mask = np.asarray(given_mask)
  for name, x in (('given', given), ('given_mask', given_mask)):
    if x.shape != tuple(shape):
      raise ValueError(f'{name} has shape {x.shape}; sampling {shape} '
                       '[batch, frames, tokens per frame]')
  if not np.issubdtype(given.dtype, np.integer):
    raise ValueError(f'given must be integer token ids, got {given.dtype}')
  if given_mask.dtype != bool:
    raise ValueError(f'given_mask must be boolean, got {given_mask.dtype}')
  bad = given[given_mask]
  bad = bad[(bad < 0) | (bad >= vocab_size)]
  if bad.size:
    raise ValueError(f'given tokens {sorted(set(bad.tolist()))[:5]} are '
                     f'outside the vocabulary [0, {vocab_size})')
  return (np.where(given_mask, given, 0).astype(np.int32),
          given_mask.astype(bool))


@functools.partial(jax.jit, static_argnames=(
    'model', 'batch', 'num_frames', 'n', 'order', 'use_cfg', 'greedy',
    'top_k', 'use_top_p', 'use_kv_cache'))
def _sample(model, params, rng, class_labels, text_emb, text_mask, cfg_scale,
            temperature, top_p, given, given_mask, *, batch, num_frames, n,
            order, use_cfg, greedy, top_k, use_top_p, use_kv_cache):
  config = model.config
  frame_index, token_index = (jnp.asarray(a) for a in
                              token_order.positions(num_frames, n, order))
  length = num_frames * n
  cond = _conditions(config, batch, class_labels, text_emb, text_mask,
                     use_cfg)
  rows = 2 * batch if use_cfg else batch
  double = (lambda x: jnp.concatenate([x, x])) if use_cfg else (lambda x: x)

  if given is not None:   # [B, T, n] -> [B, L] in the sampling order
    given = token_order.to_sequence(given, order)
    given_mask = token_order.to_sequence(given_mask, order)

  def pick(logits, i):  # logits [rows, V] of slot i -> tokens [batch]
    if use_cfg:
      cond_l, uncond_l = logits[:batch], logits[batch:]
      logits = uncond_l + cfg_scale * (cond_l - uncond_l)
    drawn = select_tokens(logits, jax.random.fold_in(rng, i),
                          temperature=temperature, top_k=top_k, top_p=top_p,
                          greedy=greedy, use_top_p=use_top_p)
    if given is None:
      return drawn
    at = lambda x: jax.lax.dynamic_index_in_dim(x, i, axis=1, keepdims=False)
    return jnp.where(at(given_mask), at(given), drawn)

  def put(seq, tok, i):
    return jax.lax.dynamic_update_slice_in_dim(seq, tok[:, None], i, axis=1)

  seq = jnp.zeros((batch, length), jnp.int32)
  variables = {'params': params}
  if not use_kv_cache:
    def full_step(i, seq):
      logits = model.apply(variables, double(seq), frame_index, token_index,
                           **cond)
      return put(seq, pick(jax.lax.dynamic_index_in_dim(
          logits, i, axis=1, keepdims=False), i), i)
    return token_order.from_sequence(
        jax.lax.fori_loop(0, length, full_step, seq), num_frames, n, order)

  decode = functools.partial(model.apply, method='decode', mutable=['cache'],
                             cache_len=length)
  # Slot 0 (SOS) outside the loop: this call creates the cache (and caches
  # the text keys), so the loop carry has a fixed structure.
  logits, state = decode(variables, jnp.zeros((rows, 1), jnp.int32), 0,
                         frame_index[:1], token_index[:1], **cond)
  seq = put(seq, pick(logits[:, 0], 0), 0)
  step_cond = {k: v for k, v in cond.items() if k == 'class_labels'}

  def cached_step(i, carry):
    seq, cache = carry
    prev = jax.lax.dynamic_slice_in_dim(seq, i - 1, 1, axis=1)
    logits, state = decode(
        {'params': params, 'cache': cache}, double(prev), i,
        jax.lax.dynamic_slice_in_dim(frame_index, i, 1),
        jax.lax.dynamic_slice_in_dim(token_index, i, 1), **step_cond)
    return put(seq, pick(logits[:, 0], i), i), state['cache']

  seq, _ = jax.lax.fori_loop(1, length, cached_step, (seq, state['cache']))
  return token_order.from_sequence(seq, num_frames, n, order)


def sample(model: 'ar_lib.ARTransformer', params, rng, *, num_frames: int,
           tokens_per_frame_budget: int, order: str = 'time_first',
           class_labels=None, text_emb=None, text_mask=None,
           cfg_scale: float = 1.0, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, use_kv_cache: bool = True,
           batch_size: Optional[int] = None, given=None, given_mask=None):
  """Samples tokens int32 [B, num_frames, tokens_per_frame_budget].

  given / given_mask [B, num_frames, n]: tokens to keep where the mask is
  True (default mask: given >= 0), returned exactly; the other positions
  are sampled with them in the context (see the module docstring). B is
  given's when nothing else sets it.

  params: the model's (unboxed) 'params' tree. B comes from class_labels
  [B] or text_emb [B, Lt, Dt] (text_mask [B, Lt], default all True), or
  batch_size for unconditional sampling. cfg_scale 1 runs no null branch; 0
  samples from the null condition alone. temperature 0 is greedy. Changing
  cfg_scale, temperature or top_p (within (0, 1)) does not recompile.
  """
  config = model.config
  if num_frames > config.num_frames:
    raise ValueError(f'{num_frames} frames > the model\'s {config.num_frames}')
  if tokens_per_frame_budget > config.tokens_per_frame:
    raise ValueError(f'budget {tokens_per_frame_budget} > the model\'s '
                     f'{config.tokens_per_frame} tokens per frame')
  if num_frames * tokens_per_frame_budget > config.seq_len:
    raise ValueError(f'{num_frames} * {tokens_per_frame_budget} tokens > '
                     f'seq_len {config.seq_len}')
  if text_emb is not None and not config.text_dim:
    raise ValueError('text_emb given to a model without cross-attention')
  if class_labels is not None and not config.num_classes:
    raise ValueError('class_labels given to a model without classes')
  if given is not None and batch_size is None:
    batch_size = np.shape(given)[0]
  batch = _batch_size(batch_size, class_labels, text_emb)
  if given is not None:
    given, given_mask = check_given(
        given, given_mask, (batch, num_frames, tokens_per_frame_budget),
        config.vocab_size)
  elif given_mask is not None:
    raise ValueError('given_mask without given tokens')
  greedy = float(temperature) == 0.0
  return _sample(
      model, params, rng, class_labels, text_emb, text_mask,
      jnp.float32(cfg_scale), jnp.float32(1.0 if greedy else temperature),
      jnp.float32(top_p), given, given_mask, batch=batch, num_frames=int(num_frames),
      n=int(tokens_per_frame_budget), order=order,
      use_cfg=float(cfg_scale) != 1.0, greedy=greedy, top_k=int(top_k),
      use_top_p=float(top_p) < 1.0, use_kv_cache=bool(use_kv_cache))


def sample_long(model: 'ar_lib.ARTransformer', params, rng, *,
                total_frames: int, window_frames: int, overlap_frames: int,
                tokens_per_frame_budget: int, given=None, **kwargs):
  """Tokens [B, total_frames, n] past one context window, by sliding it.

  The first window samples `window_frames` latent frames (or continues
  `given` [B, t0, n] when given); each next window starts from the last
  `overlap_frames` frames already made, given exactly (`sample`'s given
  tokens, at the window's first positions), and samples the rest, so every
  window adds window_frames - overlap_frames new frames. The model sees each
  window as a clip whose first frames are known, as in continuation;
  decoding the result chunk by chunk (Tokenizer.detokenize_long, a stage-2
  decoder) handles the seams. kwargs: `sample`'s conditions and sampler
  settings; window w draws with fold_in(rng, w).
  """
  n = int(tokens_per_frame_budget)
  if not 0 < overlap_frames < window_frames:
    raise ValueError(f'overlap_frames={overlap_frames} must be in [1, '
                     f'window_frames={window_frames})')
  if window_frames > model.config.num_frames:
    raise ValueError(f'window_frames={window_frames} > the model\'s '
                     f'{model.config.num_frames} frames')
  if total_frames < 1:
    raise ValueError(f'total_frames={total_frames} must be >= 1')
  made = None if given is None else np.asarray(given)
  if made is not None and (made.ndim != 3 or made.shape[2] != n
                           or made.shape[1] >= window_frames):
    raise ValueError(f'given must be [B, t0 < {window_frames}, {n}], got '
                     f'{made.shape}')
  w = 0
  while made is None or made.shape[1] < total_frames:
    keep, start = None, 0
    if made is not None:   # the window starts from frames already made
      start = min(overlap_frames if w else made.shape[1], made.shape[1])
      keep = np.full((made.shape[0], window_frames, n), -1, np.int64)
      keep[:, :start] = made[:, made.shape[1] - start:]
    out = np.asarray(sample(model, params, jax.random.fold_in(rng, w),
                            num_frames=window_frames,
                            tokens_per_frame_budget=n, given=keep, **kwargs))
    made = out if made is None else np.concatenate([made, out[:, start:]],
                                                   axis=1)
    w += 1
  return made[:, :total_frames]


def level_entropy(model: 'ar_lib.ARTransformer', params, tokens, *,
                  order: str = 'time_first', class_labels=None, text_emb=None,
                  text_mask=None, cfg_scale: float = 1.0):
  """The model's mean next-token entropy (nats) at each level of `tokens`
  [B, T, n] (level j: token j of every frame), teacher-forced in one
  forward pass: how much the model was still unsure of that level given
  everything before it. With cfg_scale != 1 the guided distribution's."""
  b, t, n = np.shape(tokens)
  seq = jnp.asarray(token_order.to_sequence(np.asarray(tokens), order))
  entropy = _entropy(model, params, seq, class_labels, text_emb, text_mask,
                     jnp.float32(cfg_scale), batch=b, num_frames=t, n=n,
                     order=order, use_cfg=float(cfg_scale) != 1.0)
  return np.asarray(token_order.from_sequence(np.asarray(entropy), t, n,
                                              order)).mean(1)


@functools.partial(jax.jit, static_argnames=(
    'model', 'batch', 'num_frames', 'n', 'order', 'use_cfg'))
def _entropy(model, params, seq, class_labels, text_emb, text_mask,
             cfg_scale, *, batch, num_frames, n, order, use_cfg):
  """Next-token entropy [B, L] of `seq` (level_entropy's compiled core)."""
  frame_index, token_index = (jnp.asarray(a) for a in
                              token_order.positions(num_frames, n, order))
  cond = _conditions(model.config, batch, class_labels, text_emb, text_mask,
                     use_cfg)
  rows = jnp.concatenate([seq, seq]) if use_cfg else seq
  logits = model.apply({'params': params}, rows, frame_index, token_index,
                       **cond).astype(jnp.float32)
  if use_cfg:
    logits = logits[batch:] + cfg_scale * (logits[:batch] - logits[batch:])
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def sample_auto(model: 'ar_lib.ARTransformer', params, rng, *,
                num_frames: int, max_budget: int, entropy_threshold: float,
                min_budget: int = 1, **kwargs):
  """AR that decides its own length: samples max_budget levels (time-first:
  level j is token j of every frame), then keeps, per sample, the levels up
  to the first one past min_budget whose mean next-token entropy (given all
  before it, `level_entropy`) is below entropy_threshold nats: a level the
  model was nearly sure of adds little. -> (tokens int32 [B, T, max_budget]
  with -1 past each sample's budget, budgets int [B]); decode with
  Tokenizer.detokenize(tokens, budgets=budgets)."""
  order = kwargs.get('order', 'time_first')
  if order != 'time_first':
    raise ValueError('budget choice needs the time-first order (a prefix of '
                     f'levels is a coarser video), got {order!r}')
  if not 1 <= min_budget <= max_budget:
    raise ValueError(f'min_budget={min_budget} must be in [1, max_budget='
                     f'{max_budget}]')
  tokens = np.asarray(sample(model, params, rng, num_frames=num_frames,
                             tokens_per_frame_budget=max_budget, **kwargs))
  cond = {k: kwargs[k] for k in ('class_labels', 'text_emb', 'text_mask',
                                 'cfg_scale') if k in kwargs}
  entropy = level_entropy(model, params, tokens, **cond)       # [B, n]
  low = entropy < entropy_threshold
  low[:, :min_budget] = False                 # always keep min_budget levels
  budgets = np.where(low.any(1), np.argmax(low, axis=1), max_budget)
  keep = np.arange(max_budget)[None, None, :] < budgets[:, None, None]
  return np.where(keep, tokens, -1).astype(np.int32), budgets.astype(np.int32)
