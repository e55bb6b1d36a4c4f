"""AR model over VideoFlexTok tokens: orders, causality, KV cache, CFG, size."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vftok.models import ar_sampling
from vftok.models import compute_plan
from vftok.models import ar
from vftok.models import token_order
from vftok.sharding import unbox

T, N_BUDGET, VOCAB, CLASSES, TEXT_DIM = 5, 3, 64, 4, 12


def tiny(**overrides) -> ar.ARConfig:
  kw = dict(depth=2, width=32, heads=2, vocab_size=VOCAB, seq_len=40,
            num_frames=T, tokens_per_frame=8)
  kw.update(overrides)
  return ar.ARConfig(**kw)


class Jitted:
  """The model with a jitted `apply` (eager op-by-op dispatch is slow)."""

  def __init__(self, model):
    self.module, self.config = model, model.config
    self.apply = jax.jit(model.apply, static_argnames=(
        'method', 'mutable', 'train', 'cache_len'))


def init(config, seed=0):
  """Random params from NumPy: flax's jitted init (threefry per leaf) takes
  seconds to compile on CPU; std 0.2 also gives sharper logits than the 0.02
  init, so greedy argmax has no near-ties."""
  rng = np.random.default_rng(seed)

  def leaf(path, x):
    base = 1.0 if getattr(path[-1], 'key', '') == 'scale' else 0.0  # norms
    return jnp.asarray(base + 0.2 * rng.standard_normal(x.shape), jnp.float32)
  params = jax.tree_util.tree_map_with_path(leaf,
                                          unbox(ar.abstract_params(config)))
  return Jitted(ar.ARTransformer(config)), params


@pytest.fixture(scope='module')
def class_model():
  return init(tiny(num_classes=CLASSES))


@pytest.fixture(scope='module')
def text_model():
  return init(tiny(text_dim=TEXT_DIM, cross_attn_every=1))


def text_inputs(batch=3, length=4, seed=2):
  emb = jax.random.normal(jax.random.key(seed), (batch, length, TEXT_DIM))
  mask = jnp.arange(length)[None, :] < jnp.array([4, 2, 1])[:batch, None]
  return emb, mask


# ---- (b) orders -------------------------------------------------------------
@pytest.mark.parametrize('xp', [np, jnp])
def test_orders_round_trip_and_time_first_prefix(xp):
  k = 6
  grid = xp.asarray(np.arange(2 * T * k).reshape(2, T, k))
  for order in token_order.ORDERS:
    seq = token_order.to_sequence(grid, order)
    assert seq.shape == (2, T * k)
    np.testing.assert_array_equal(
        token_order.from_sequence(seq, T, k, order), grid)
  tf = token_order.to_sequence(grid, 'time_first')
  df = token_order.to_sequence(grid, 'depth_first')
  # Time-first <-> depth-first through the grid.
  np.testing.assert_array_equal(token_order.to_sequence(
      token_order.from_sequence(tf, T, k, 'time_first'), 'depth_first'), df)
  # s = k * T + t and s = t * K + k.
  np.testing.assert_array_equal(tf[:, 2 * T + 3], grid[:, 3, 2])
  np.testing.assert_array_equal(df[:, 3 * k + 2], grid[:, 3, 2])
  for n in range(1, k + 1):
    np.testing.assert_array_equal(
        token_order.prefix_to_frames(tf[:, :n * T], T, n), grid[:, :, :n])
  frame, token = token_order.positions(T, k, 'time_first')
  np.testing.assert_array_equal(frame[:2 * T], np.tile(np.arange(T), 2))
  np.testing.assert_array_equal(token[:2 * T], np.repeat([0, 1], T))
  for order in token_order.ORDERS:
    frame, token = token_order.positions(T, k, order)
    np.testing.assert_array_equal(token_order.to_sequence(
        np.asarray(grid[0]), order), (frame * k + token))


# ---- (c) causality and the KV cache -----------------------------------------
def test_model_is_causal(class_model):
  model, params = class_model
  fi, ti = token_order.positions(T, N_BUDGET, 'time_first')
  tokens = jax.random.randint(jax.random.key(3), (2, T * N_BUDGET), 0, VOCAB)
  labels = jnp.array([0, 3])
  base = model.apply({'params': params}, tokens, fi, ti, class_labels=labels)
  assert base.shape == (2, T * N_BUDGET, VOCAB) and base.dtype == jnp.float32
  for j in (0, 6, T * N_BUDGET - 2):
    changed = model.apply({'params': params}, tokens.at[:, j].add(1) % VOCAB,
                          fi, ti, class_labels=labels)
    np.testing.assert_array_equal(changed[:, :j + 1], base[:, :j + 1])
    assert not np.allclose(changed[:, j + 1], base[:, j + 1])


def test_chunked_decode_matches_full_forward(text_model):
  model, params = text_model
  fi, ti = token_order.positions(T, N_BUDGET, 'depth_first')
  length = T * N_BUDGET
  tokens = jax.random.randint(jax.random.key(4), (3, length), 0, VOCAB)
  emb, mask = text_inputs()
  full = model.apply({'params': params}, tokens, fi, ti, text_emb=emb,
                     text_mask=mask)
  inputs = jnp.pad(tokens[:, :-1], ((0, 0), (1, 0)))
  first, state = model.apply({'params': params}, inputs[:, :7], 0, fi[:7],
                             ti[:7], text_emb=emb, text_mask=mask,
                             cache_len=length, method='decode',
                             mutable=('cache',))
  rest, _ = model.apply({'params': params, 'cache': state['cache']},
                        inputs[:, 7:], 7, fi[7:], ti[7:], cache_len=length,
                        method='decode', mutable=('cache',))
  np.testing.assert_allclose(jnp.concatenate([first, rest], 1), full,
                             atol=1e-5, rtol=1e-5)


# ---- (a) KV-cache sampling == full-recompute sampling -----------------------
def test_kv_cache_greedy_equals_recompute_class(class_model):
  model, params = class_model
  kw = dict(num_frames=T, tokens_per_frame_budget=N_BUDGET, temperature=0.0,
            class_labels=jnp.array([0, 1, 3]))
  cached = ar_sampling.sample(model.module, params, jax.random.key(0), **kw)
  full = ar_sampling.sample(model.module, params, jax.random.key(0),
                            use_kv_cache=False, **kw)
  assert cached.shape == (3, T, N_BUDGET) and cached.dtype == jnp.int32
  np.testing.assert_array_equal(cached, full)
  assert len(np.unique(np.asarray(cached))) > 3  # not a degenerate model


def test_kv_cache_equals_recompute_text_cfg_depth_first(text_model):
  model, params = text_model
  emb, mask = text_inputs()
  kw = dict(num_frames=T, tokens_per_frame_budget=N_BUDGET,
            order='depth_first', text_emb=emb, text_mask=mask, cfg_scale=2.5,
            temperature=0.0)
  cached = ar_sampling.sample(model.module, params, jax.random.key(0), **kw)
  full = ar_sampling.sample(model.module, params, jax.random.key(0),
                            use_kv_cache=False, **kw)
  np.testing.assert_array_equal(cached, full)


def test_stochastic_kv_cache_equals_recompute_with_top_k_top_p(class_model):
  model, params = class_model
  kw = dict(num_frames=T, tokens_per_frame_budget=2, temperature=1.0,
            top_k=8, top_p=0.9, class_labels=jnp.array([2, 2]))
  rng = jax.random.key(7, impl='rbg')  # compiles faster than threefry
  cached = ar_sampling.sample(model.module, params, rng, **kw)
  full = ar_sampling.sample(model.module, params, rng,
                            use_kv_cache=False, **kw)
  np.testing.assert_array_equal(cached, full)


# ---- given tokens: image-to-video, continuation, edits ----------------------
def _guided_logits(model, params, seq, order, labels, cfg_scale, n=N_BUDGET):
  """Teacher-forced logits [B, L, V] of `seq` (sequence order), guided."""
  fi, ti = token_order.positions(T, n, order)
  cond = model.apply({'params': params}, seq, fi, ti, class_labels=labels)
  if cfg_scale == 1.0:
    return cond
  null = model.apply({'params': params}, seq, fi, ti,
                     class_labels=jnp.full_like(labels, CLASSES))
  return null + cfg_scale * (cond - null)


@pytest.mark.parametrize('order,cfg_scale', [('time_first', 1.0),
                                             ('depth_first', 2.0)])
def test_given_tokens_come_back_and_the_rest_is_the_conditional(
    class_model, order, cfg_scale):
  """Greedy: every free token is the argmax of the model's (guided)
  conditional given everything before it, given tokens included; the given
  ones come back exactly, whatever the pattern."""
  model, params = class_model
  rng = np.random.default_rng(0)
  labels = jnp.array([0, 1, 3])
  given = rng.integers(0, VOCAB, (3, T, N_BUDGET))
  mask = rng.random((3, T, N_BUDGET)) < 0.4
  mask[0, 0, :] = True          # image-to-video: all of frame 0
  mask[1, :, 0] = True          # an edit: the first token of every frame
  out = np.asarray(ar_sampling.sample(
      model.module, params, jax.random.key(0), num_frames=T,
      tokens_per_frame_budget=N_BUDGET, order=order, class_labels=labels,
      cfg_scale=cfg_scale, temperature=0.0, given=given, given_mask=mask))
  np.testing.assert_array_equal(out[mask], given[mask])
  seq = token_order.to_sequence(out, order)
  best = np.asarray(jnp.argmax(_guided_logits(
      model, params, jnp.asarray(seq), order, labels, cfg_scale), -1))
  free = ~token_order.to_sequence(mask, order)
  np.testing.assert_array_equal(seq[free], best[free])
  # The given tokens are in the context: the unconstrained sample differs.
  plain = np.asarray(ar_sampling.sample(
      model.module, params, jax.random.key(0), num_frames=T,
      tokens_per_frame_budget=N_BUDGET, order=order, class_labels=labels,
      cfg_scale=cfg_scale, temperature=0.0))
  assert not np.array_equal(plain[~mask], out[~mask])


def test_given_tokens_kv_cache_equals_recompute(class_model):
  model, params = class_model
  given = np.full((2, T, 2), -1)
  given[:, :2] = np.random.default_rng(1).integers(0, VOCAB, (2, 2, 2))
  kw = dict(num_frames=T, tokens_per_frame_budget=2, temperature=1.0,
            class_labels=jnp.array([1, 2]), cfg_scale=1.5, given=given)
  rng = jax.random.key(3, impl='rbg')
  cached = ar_sampling.sample(model.module, params, rng, **kw)
  full = ar_sampling.sample(model.module, params, rng, use_kv_cache=False,
                            **kw)
  np.testing.assert_array_equal(cached, full)
  np.testing.assert_array_equal(np.asarray(cached)[:, :2], given[:, :2])


def test_first_free_token_follows_the_conditional_distribution(class_model):
  """Temperature 1: with level 0 of every frame given (time-first), the
  first free token's empirical distribution over 4096 draws is the model's
  softmax given that prefix (total variation < 0.06), and far from the one
  given another prefix (what a sampler that ignored the given tokens would
  draw from)."""
  model, params = class_model
  draws, n = 4096, 2
  prefix = np.random.default_rng(5).integers(0, VOCAB, T)
  given = np.full((draws, T, n), -1)
  given[:, :, 0] = prefix
  labels = jnp.full((draws,), 2)
  out = np.asarray(ar_sampling.sample(
      model.module, params, jax.random.key(11, impl='rbg'), num_frames=T,
      tokens_per_frame_budget=n, class_labels=labels, given=given))
  first = out[:, 0, 1]                 # position T: frame 0, token 1
  empirical = np.bincount(first, minlength=VOCAB) / draws

  def probs(level0):
    seq = np.zeros((1, T * n), np.int32)
    seq[0, :T] = level0
    logits = _guided_logits(model, params, jnp.asarray(seq), 'time_first',
                            labels[:1], 1.0, n=n)
    return np.asarray(jax.nn.softmax(logits[0, T]))
  tv = 0.5 * np.abs(empirical - probs(prefix)).sum()
  other = 0.5 * np.abs(empirical - probs((prefix + 1) % VOCAB)).sum()
  assert tv < 0.06, tv
  assert other > 3 * tv, (other, tv)


def test_sample_long_slides_the_window_over_the_frames_made(class_model):
  """11 latent frames from a 5-frame model, windows overlapping by 2: each
  window starts from the last 2 frames made, and (greedy) every new token
  is the model's argmax given its window so far (time-first: a window's
  frame 2 token 1 follows its last frame's token 0, so the windows here end
  exactly at the 11th frame; sample_long cuts a last window's extra frames)."""
  model, params = class_model
  labels = jnp.array([1, 3])
  out = ar_sampling.sample_long(
      model.module, params, jax.random.key(0), total_frames=11,
      window_frames=T, overlap_frames=2, tokens_per_frame_budget=N_BUDGET,
      class_labels=labels, temperature=0.0)
  assert out.shape == (2, 11, N_BUDGET)
  first = ar_sampling.sample(model.module, params, jax.random.key(0),
                             num_frames=T, tokens_per_frame_budget=N_BUDGET,
                             class_labels=labels, temperature=0.0)
  np.testing.assert_array_equal(out[:, :T], first)
  for start in (3, 6):             # windows [3, 8), [6, 11)
    seq = token_order.to_sequence(out[:, start:start + T], 'time_first')
    best = np.asarray(jnp.argmax(_guided_logits(
        model, params, jnp.asarray(seq), 'time_first', labels, 1.0), -1))
    new = np.zeros((T, N_BUDGET), bool)
    new[2:] = True                   # the frames this window sampled
    new_seq = token_order.to_sequence(new, 'time_first')
    np.testing.assert_array_equal(seq[:, new_seq], best[:, new_seq])
  # A length between windows: one more window, cut to the frames asked for.
  longer = ar_sampling.sample_long(
      model.module, params, jax.random.key(0), total_frames=12,
      window_frames=T, overlap_frames=2, tokens_per_frame_budget=N_BUDGET,
      class_labels=labels, temperature=0.0)
  assert longer.shape == (2, 12, N_BUDGET)
  np.testing.assert_array_equal(longer[:, :11], out)
  with pytest.raises(ValueError, match='overlap_frames=5'):
    ar_sampling.sample_long(model.module, params, jax.random.key(0),
                            total_frames=12, window_frames=T,
                            overlap_frames=T, tokens_per_frame_budget=2,
                            class_labels=labels)


def test_auto_budget_stops_at_the_first_confident_level(class_model):
  """sample_auto: the kept levels are the fixed-budget sample's prefix, -1
  past each sample's budget; the budget is the first level (past
  min_budget) whose mean entropy, recomputed here from the guided logits,
  is below the threshold; thresholds at the extremes give min and max."""
  model, params = class_model
  labels = jnp.array([0, 1, 2, 3])
  kw = dict(num_frames=T, class_labels=labels, cfg_scale=2.0)
  rng = jax.random.key(4, impl='rbg')
  full = np.asarray(ar_sampling.sample(model.module, params, rng,
                                       tokens_per_frame_budget=4, **kw))
  logits = _guided_logits(model, params, jnp.asarray(token_order.to_sequence(
      full, 'time_first')), 'time_first', labels, 2.0, n=4)
  p = jax.nn.softmax(logits, -1)
  ent = -np.asarray(jnp.sum(p * jnp.log(p), -1))              # [B, L]
  per_level = token_order.from_sequence(ent, T, 4, 'time_first').mean(1)
  np.testing.assert_allclose(ar_sampling.level_entropy(
      model.module, params, full, class_labels=labels, cfg_scale=2.0),
      per_level, rtol=1e-4)
  threshold = float(np.median(per_level[:, 1:]))
  tokens, budgets = ar_sampling.sample_auto(
      model.module, params, rng, max_budget=4, entropy_threshold=threshold,
      **kw)
  for b in range(4):
    k = budgets[b]
    np.testing.assert_array_equal(tokens[b, :, :k], full[b, :, :k])
    assert (tokens[b, :, k:] == -1).all()
    low = [j for j in range(1, 4) if per_level[b, j] < threshold]
    assert k == (low[0] if low else 4)
  assert len(set(budgets.tolist())) > 1     # the samples differ in length
  _, none = ar_sampling.sample_auto(model.module, params, rng, max_budget=4,
                                    entropy_threshold=-1.0, **kw)
  _, all_low = ar_sampling.sample_auto(model.module, params, rng,
                                       max_budget=4, entropy_threshold=1e9,
                                       min_budget=2, **kw)
  assert set(none.tolist()) == {4} and set(all_low.tolist()) == {2}


def test_given_tokens_are_checked(class_model):
  model, params = class_model
  kw = dict(num_frames=T, tokens_per_frame_budget=2,
            class_labels=jnp.array([0, 1]))
  for given, mask, match in (
      (np.zeros((2, T, 3), int), None, r'given has shape \(2, 5, 3\)'),
      (np.full((2, T, 2), VOCAB), None, 'outside the vocabulary'),
      (np.zeros((2, T, 2)), None, 'integer token ids'),
      (np.zeros((2, T, 2), int), np.ones((2, T, 2), int), 'boolean')):
    with pytest.raises(ValueError, match=match):
      ar_sampling.sample(model.module, params, jax.random.key(0),
                         given=given, given_mask=mask, **kw)


def test_select_tokens_filters():
  logits = jax.random.normal(jax.random.key(0), (4, 300)).at[0, :9].set(
      -jnp.inf).at[1, 3:6].set(5.0)  # -inf entries and ties
  for k in (1, 3, 50):
    np.testing.assert_array_equal(ar_sampling.kth_largest(logits, k),
                                  jax.lax.top_k(logits, k)[0][:, -1:])
  rng = jax.random.key(1, impl='rbg')
  greedy = np.asarray(ar_sampling.select_tokens(logits, rng, greedy=True))
  for kw in (dict(top_k=1, use_top_p=False), dict(top_p=1e-6)):
    picked = np.asarray(ar_sampling.select_tokens(logits, rng, **kw))
    np.testing.assert_array_equal(picked[[0, 2, 3]], greedy[[0, 2, 3]])
    assert picked[1] in (3, 4, 5)  # ties at the top are all kept
  top3 = np.asarray(jax.lax.top_k(logits, 3)[1])
  for seed in range(3):
    picked = ar_sampling.select_tokens(
        logits, jax.random.key(seed, impl='rbg'), top_k=3, use_top_p=False)
    assert all(p in row for p, row in zip(np.asarray(picked), top3))


# ---- (d) class conditioning and CFG -----------------------------------------
def test_class_changes_logits_and_cfg_zero_is_null_class(class_model):
  model, params = class_model
  fi, ti = token_order.positions(T, N_BUDGET, 'time_first')
  tokens = jnp.zeros((1, T * N_BUDGET), jnp.int32)
  logits = [model.apply({'params': params}, tokens, fi, ti,
                        class_labels=jnp.array([c])) for c in (0, 1, CLASSES)]
  assert not np.allclose(logits[0], logits[1])
  # No labels = the null class (last row of the class table).
  np.testing.assert_array_equal(
      model.apply({'params': params}, tokens, fi, ti), logits[2])
  kw = dict(num_frames=T, tokens_per_frame_budget=N_BUDGET, temperature=0.0)
  uncond_branch = ar_sampling.sample(
      model.module, params, jax.random.key(0),
      class_labels=jnp.array([0, 1, 3]), cfg_scale=0.0, **kw)
  null = ar_sampling.sample(model.module, params, jax.random.key(0),
                            class_labels=jnp.full((3,), CLASSES), **kw)
  np.testing.assert_array_equal(uncond_branch, null)
  cond = ar_sampling.sample(model.module, params, jax.random.key(0),
                            class_labels=jnp.array([0, 1, 3]), **kw)
  assert not np.array_equal(cond, null)


def test_null_text_is_all_false_mask_and_drop_condition(text_model):
  model, params = text_model
  config = model.config
  fi, ti = token_order.positions(T, 2, 'time_first')
  tokens = jnp.zeros((3, 2 * T), jnp.int32)
  emb, mask = text_inputs()
  run = lambda **kw: model.apply({'params': params}, tokens, fi, ti, **kw)
  with_text = run(text_emb=emb, text_mask=mask)
  hidden = run(text_emb=emb, text_mask=jnp.zeros_like(mask))
  assert not np.allclose(with_text, hidden)
  np.testing.assert_allclose(hidden, run(), atol=1e-5)  # None = null text
  labels, dropped = ar.drop_condition(jax.random.key(0), 1.0, config,
                                      text_mask=mask)
  assert labels is None and not np.asarray(dropped).any()


def test_dropout_and_bfloat16():
  config = tiny(num_classes=CLASSES, dropout=0.1, dtype='bfloat16')
  model, params = init(config)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  fi, ti = token_order.positions(T, 2, 'time_first')
  tokens = jnp.ones((2, 2 * T), jnp.int32)
  run = lambda **kw: model.apply({'params': params}, tokens, fi, ti, **kw)
  eval_a, eval_b = run(), run()
  assert eval_a.dtype == jnp.float32
  np.testing.assert_array_equal(eval_a, eval_b)
  train = run(train=True, rngs={'dropout': jax.random.key(1, impl='rbg')})
  assert np.isfinite(train).all() and not np.allclose(train, eval_a)


@pytest.mark.e2e  # a whole train step / pipeline
def test_remat_keeps_training_loss_and_grads_with_dropout_and_text():
  """Remat recomputes each block in the backward pass with the same dropout
  masks; the KV-cached decode path (never rematerialised) is unchanged."""
  base = tiny(text_dim=TEXT_DIM, dropout=0.1)
  _, params = init(base)
  fi, ti = token_order.positions(T, 2, 'time_first')
  tokens = jnp.arange(2 * 2 * T).reshape(2, 2 * T) % VOCAB
  emb, mask = text_inputs(batch=2)

  def loss_and_grads(config):
    model = ar.ARTransformer(config)

    def loss(p):
      logits = model.apply({'params': p}, tokens, fi, ti, text_emb=emb,
                           text_mask=mask, train=True,
                           rngs={'dropout': jax.random.key(3)})
      return jnp.mean(jax.nn.log_softmax(logits)[..., 0])
    return jax.jit(jax.value_and_grad(loss))(params)

  ref_loss, ref_grads = loss_and_grads(base)
  for policy in ('dots', 'full'):
    loss, grads = loss_and_grads(tiny(text_dim=TEXT_DIM, dropout=0.1,
                                      remat=policy))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert (jax.tree.structure(unbox(ar.abstract_params(tiny(remat='full'))))
          == jax.tree.structure(unbox(ar.abstract_params(tiny()))))


# ---- (e) paper sizes --------------------------------------------------------
TABLE6 = {10: 49e6, 12: 85e6, 16: 201e6, 20: 393e6, 24: 679e6, 30: 1.33e9,
          36: 2.29e9}


def test_table6_non_embedding_params():
  assert tuple(TABLE6) == ar.PAPER_C2V_DEPTHS
  for depth, paper in TABLE6.items():
    config = ar.ARConfig(depth=depth, num_classes=600, dropout=0.1)
    assert (config.width, config.heads) == (64 * depth, depth)
    n = ar.count_params(ar.abstract_params(config))
    assert abs(n / paper - 1) < 0.02, (depth, n, paper)
    assert n == ar.analytic_param_counts(config)['non_embedding']


def test_table7_totals_and_config_dict():
  # Untied head + cross-attention in every block give Table 7's totals.
  for depth, paper in ((30, 2.02e9), (42, 5.20e9)):
    config = ar.ARConfig.from_config_dict(
        ar.config_dict(depth, text_dim=64 * depth))
    counts = ar.analytic_param_counts(config)
    assert abs(counts['total'] / paper - 1) < 0.02
  params = ar.abstract_params(config)  # the analytic counts are the real ones
  assert ar.count_params(params, non_embedding=False) == counts['total']
  assert ar.scaling_params(params) == counts['scaling']


# ---- (f) compute plan -------------------------------------------------------
def test_compute_plan_reproduces_table7():
  for depth, tokens, batch in ((12, 3.25e9, 128), (20, 12e9, 256),
                               (30, 38e9, 512), (42, 101e9, 512)):
    p = compute_plan.plan_for_depth(depth)
    assert abs(p.tokens / tokens - 1) < 0.02 and p.batch_size == batch
  over = compute_plan.plan_for_depth(42, overtrain=4)  # AR 5.2B (4C)
  assert abs(over.tokens / 402e9 - 1) < 0.02 and over.batch_size == 512


@pytest.mark.parametrize('flops', [1e19, 1e20, 4.3e20, 5e21])
def test_compute_plan_rules(flops):
  for any_depth in (False, True):
    p = compute_plan.plan(flops, tokens_per_video=1280, any_depth=any_depth)
    assert p.tokens == pytest.approx(20 * p.params)
    assert p.flops == pytest.approx(6 * p.params * p.tokens)
    assert p.batch_size == 2 ** math.floor(
        math.log2(math.sqrt(p.tokens / compute_plan.BATCH_TOKENS_SCALE)))
    assert p.steps * p.batch_size * 1280 == pytest.approx(p.tokens, rel=1e-3)
    # Depth rounding keeps the spend near the budget.
    tol = 0.6 if not any_depth else 0.25
    assert abs(math.log(p.flops / flops)) < tol, (p, flops)
  n_opt = compute_plan.optimal_params(flops)
  assert 6 * n_opt * 20 * n_opt == pytest.approx(flops)
  assert 'nearest paper depth' in compute_plan.format_table(flops)


def test_long_model_is_the_depth_nearest_the_papers_3_2b():
  """§4.4's "3.2B": d35 (3.11B total with a text input as wide as the
  model; d34 2.86B, d36 3.36B), what configs/ar_t2v_panda.py:long builds;
  the same counting gives Table 7's 2.0B (d30) and 5.2B (d42)."""
  import testing_utils  # pylint: disable=g-import-not-at-top
  from vftok.jobs import sample_ar  # pylint: disable=g-import-not-at-top
  shape = dict(num_frames=21, tokens_per_frame=32, seq_len=672)
  assert compute_plan.depth_nearest_total(
      3.2e9, text_dim='width', num_classes=0, **shape) == 35
  assert compute_plan.depth_nearest_total(2.0e9, text_dim='width',
                                          num_classes=0) == 30
  assert compute_plan.depth_nearest_total(5.2e9, text_dim='width',
                                          num_classes=0) == 42
  c = testing_utils.load_config('ar_t2v_panda', 'long')
  assert (c.model.depth, c.model.seq_len, c.data.tokens_per_frame) == (
      35, 672, 32)
  # sample_ar --config.seconds: 10 s at 8 fps = 81 frames = 21 latent ones.
  assert sample_ar.total_latent_frames(10.0, 8.0, 13) == 21
  assert sample_ar.total_latent_frames(0.0, 8.0, 13) == 13
  assert sample_ar.total_latent_frames(20.0, 8.0, 13) == 41
