"""Model behaviour: FSQ codes, mask causality, nested dropout, paper sizes."""
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import testing_utils
from vftok.models import fsq
from vftok.models import layers
from vftok.models import masks
from vftok.models import tokenizer

from testing_utils import load_config


def tiny_config(**model_overrides) -> ml_collections.ConfigDict:
  c = testing_utils.tiny_tokenizer_config()
  c.model.update(model_overrides)
  return c


def init(config, seed=0):
  model = tokenizer.build(config.model)
  params = nn.meta.unbox(model.init(jax.random.key(seed),
                                    *tokenizer.dummy_inputs(config.model)))
  return model, params


def randomize(params, seed=1):
  """Zero-initialised adaLN/output layers would hide dependencies: perturb."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [l + 0.3 * jax.random.normal(k, l.shape)
                                   for l, k in zip(leaves, keys)])


# ---- FSQ --------------------------------------------------------------------
def test_fsq_index_code_round_trip_covers_codebook():
  idx = np.arange(fsq.codebook_size())
  codes = fsq.indices_to_codes(idx)
  assert codes.shape == (64000, 6)
  np.testing.assert_array_equal(np.asarray(fsq.codes_to_indices(codes)), idx)
  # All codes distinct and on the grid {-L/2..L/2-1} / (L//2).
  assert len(np.unique(np.asarray(codes), axis=0)) == 64000
  for d, level in enumerate(fsq.DEFAULT_LEVELS):
    vals = np.unique(np.asarray(codes[:, d]))
    np.testing.assert_allclose(vals * (level // 2),
                               np.arange(-(level // 2), level - level // 2))


def test_fsq_first_level_least_significant():
  codes = np.asarray(fsq.indices_to_codes(np.array([0, 1, 8, 64000 - 1])))
  # index 0 is the minimum of every channel; +1 moves channel 0 one level.
  np.testing.assert_allclose(codes[0], [-1, -1, -1, -1, -1, -1])
  np.testing.assert_allclose(codes[1], [-0.75, -1, -1, -1, -1, -1])
  np.testing.assert_allclose(codes[2], [-1, -0.75, -1, -1, -1, -1])
  np.testing.assert_allclose(codes[3], [0.75, 0.75, 0.75, 1.0, 1.0, 1.0])


def test_fsq_quantize_fixed_points_and_all_levels_reachable():
  # Codes are fixed points of quantize(bound^-1(...)); a sweep hits every level.
  z = jnp.linspace(-10, 10, 20001)[:, None] * jnp.ones((1, 6))
  q = np.asarray(fsq.quantize(z))
  for d, level in enumerate(fsq.DEFAULT_LEVELS):
    assert len(np.unique(q[:, d])) == level
  assert np.all(np.diff(q, axis=0) >= 0)  # monotone
  z0 = jnp.zeros((1, 6))
  np.testing.assert_allclose(fsq.quantize(z0), [[0, 0, 0, 0, 0, 0]])
  # Straight-through: gradient of sum(quantize) is the bound's derivative > 0.
  g = jax.grad(lambda x: fsq.quantize(x).sum())(jnp.full((6,), 0.3))
  assert np.all(np.asarray(g) > 0)


def test_fsq_accepts_numpy_and_rejects_bad_ids():
  np.testing.assert_array_equal(fsq.codes_to_indices(np.zeros((2, 6))),
                                fsq.codes_to_indices(jnp.zeros((2, 6))))
  with pytest.raises(ValueError, match='outside'):
    fsq.indices_to_codes(np.array([64000]))
  with pytest.raises(ValueError, match='outside'):
    fsq.indices_to_codes(np.array([-1]))


# ---- masks ------------------------------------------------------------------
def test_encoder_mask_rules():
  layout = masks.interleaved(2, 3, 2, registers_first=False)
  m = masks.encoder_mask(layout, layout)
  for q, k in itertools.product(range(len(layout)), repeat=2):
    fq, fk = layout.frame[q], layout.frame[k]
    rq, rk = layout.is_register[q], layout.is_register[k]
    if fk < fq:
      want = True
    elif fk > fq:
      want = False
    elif not rk:
      want = True                  # everyone in the frame sees its patches
    elif not rq:
      want = False                 # patches do not see registers
    else:
      want = layout.register[k] <= layout.register[q]
    assert m[q, k] == want, (q, k)


# ---- encoder / decoder causality ---------------------------------------------
def test_encoder_is_time_causal_and_register_causal():
  c = tiny_config()
  model, params = init(c)
  params = randomize(params)
  x = jax.random.normal(jax.random.key(0), (2, 3, 4, 4, 4))
  enc = lambda lat: model.apply(params, lat, method=tokenizer.VideoFlexTok.encode)[1]
  z = enc(x)
  z2 = enc(x.at[:, 2].add(1.0))              # change latent frame 3
  np.testing.assert_allclose(z[:, :2], z2[:, :2], atol=1e-5)
  assert not np.allclose(z[:, 2], z2[:, 2], atol=1e-3)
  # Prefix clip gives the same pre-quantisation outputs (streaming-ready).
  np.testing.assert_allclose(enc(x[:, :2]), z[:, :2], atol=1e-5)


def test_decoder_time_causal_and_nested_dropout_ignores_dropped_tokens():
  c = tiny_config()
  model, params = init(c)
  params = randomize(params)
  r = jax.random.split(jax.random.key(3), 3)
  codes = fsq.indices_to_codes(jax.random.randint(r[0], (2, 3, 4), 0, 64000))
  x_t = jax.random.normal(r[1], (2, 3, 4, 4, 4))
  t = jnp.array([0.3, 0.8])
  dec = lambda cd, keep, xt: model.apply(
      params, cd, xt, t, keep, method=tokenizer.VideoFlexTok.decode)[0]
  keep2 = tokenizer.keep_first(2, 2, 4)
  v = dec(codes, keep2, x_t)
  # Changing tokens after k = 2 changes nothing.
  codes_b = codes.at[:, :, 2:].set(-codes[:, :, 2:])
  np.testing.assert_array_equal(v, dec(codes_b, keep2, x_t))
  # ...but changing a kept token does.
  assert not np.allclose(v, dec(codes.at[:, :, 1].set(-codes[:, :, 1]), keep2, x_t))
  # Time-causal: frame 3 inputs do not affect frames 1-2 outputs.
  v3 = dec(codes.at[:, 2].set(0.0), keep2, x_t.at[:, 2].add(1.0))
  np.testing.assert_allclose(v[:, :2], v3[:, :2], atol=1e-5)
  assert not np.allclose(v[:, 2], v3[:, 2], atol=1e-3)


def test_full_attention_decoder_sees_the_future():
  c = tiny_config(decoder_attention='full')
  model, params = init(c)
  params = randomize(params)
  codes = jnp.zeros((1, 3, 4, 6))
  x_t = jax.random.normal(jax.random.key(0), (1, 3, 4, 4, 4))
  keep = tokenizer.keep_first(4, 1, 4)
  dec = lambda xt: model.apply(params, codes, xt, jnp.array([0.5]), keep,
                               method=tokenizer.VideoFlexTok.decode)[0]
  assert not np.allclose(dec(x_t)[:, 0], dec(x_t.at[:, 2].add(1.0))[:, 0],
                         atol=1e-3)


def test_nested_dropout_samples_powers_of_two_shared_by_frames():
  keep = tokenizer.sample_keep(jax.random.key(0), 4096, 16, 'pow2')
  k = np.asarray(keep).sum(-1)
  assert set(np.unique(k)) == {1, 2, 4, 8, 16}
  # Kept registers are always a prefix.
  np.testing.assert_array_equal(keep, np.arange(16)[None] < k[:, None])
  keep_u = tokenizer.sample_keep(jax.random.key(0), 4096, 16, 'uniform')
  ku = np.asarray(keep_u).sum(-1)
  assert set(np.unique(ku)) == set(range(1, 17))
  # Per latent frame: a prefix per frame, and frames of a clip differ.
  keep_f = np.asarray(tokenizer.sample_keep(jax.random.key(0), 512, 16,
                                            'pow2', frames=5))
  kf = keep_f.sum(-1)
  assert keep_f.shape == (512, 5, 16) and set(np.unique(kf)) == {1, 2, 4, 8, 16}
  np.testing.assert_array_equal(keep_f, np.arange(16) < kf[..., None])
  assert np.mean(kf.min(axis=1) != kf.max(axis=1)) > 0.9


def test_null_condition_truncation_and_prefix_token():
  c = tiny_config(first_frame_prob=0.5)
  model, params = init(c)
  params = randomize(params)
  r = jax.random.split(jax.random.key(5), 3)
  codes = fsq.indices_to_codes(jax.random.randint(r[0], (2, 3, 4), 0, 64000))
  x_t = jax.random.normal(r[1], (2, 3, 4, 4, 4))
  t = jnp.array([0.4, 0.9])
  dec = lambda cd, *a: model.apply(params, cd, x_t, t, *a,
                                   method=tokenizer.VideoFlexTok.decode)[0]
  # The null condition replaces every register: the codes no longer matter,
  # and it differs from masking them all with the nested-dropout token.
  null = jnp.ones((2,), bool)
  np.testing.assert_array_equal(dec(codes, None, null), dec(-codes, None, null))
  assert not np.allclose(dec(codes, None, null),
                         dec(codes, jnp.zeros((2, 4), bool)), atol=1e-4)
  # Truncated tokens (k < K, shorter sequence) are not the padded form...
  assert not np.allclose(dec(codes[:, :, :2]),
                         dec(codes, tokenizer.keep_first(2, 2, 4)), atol=1e-4)
  # ...except at k = K.
  np.testing.assert_allclose(dec(codes), dec(codes, tokenizer.keep_first(4, 2, 4)),
                             atol=1e-6)
  # Prefix frames: their registers become the prefix token (codes ignored).
  first = jnp.ones((2,), jnp.int32)
  np.testing.assert_array_equal(
      dec(codes, None, None, first), dec(codes.at[:, 0].set(-codes[:, 0]),
                                         None, None, first))


def test_registers_per_frame_and_position_kinds():
  c = tiny_config()
  _, params = init(c)
  m = c.model
  assert params['params']['encoder']['registers'].shape == (
      m.max_frames, m.tokens_per_frame, m.enc_width)
  assert params['params']['decoder']['pos_patch'].shape == (
      3, m.pos_max_size, m.dec_width)
  table = jax.random.normal(jax.random.key(0), (3, 5, 2))
  s = layers.axis_posemb(table, (2, 3, 4), kind='sum')
  p = layers.axis_posemb(table, (2, 3, 4), kind='prod')
  np.testing.assert_allclose(s[1, 2, 3], table[0, 1] + table[1, 2] + table[2, 3])
  np.testing.assert_allclose(p[1, 2, 3], table[0, 1] * table[1, 2] * table[2, 3],
                             rtol=1e-6)
  with pytest.raises(ValueError, match='beyond the learned table'):
    layers.axis_posemb(table, (6, 1, 1))


@pytest.mark.e2e  # a whole train step / pipeline
# ---- paper sizes --------------------------------------------------------------
@pytest.mark.parametrize('name,arg,enc,dec', [
    ('tokenizer_k600', 'd12', 84.9e6, 84.9e6),
    ('tokenizer_k600', None, 286.7e6, 286.7e6),
    ('tokenizer_panda', None, 286.7e6, 1.1e9),
])
def test_paper_config_parameter_counts(name, arg, enc, dec):
  c = load_config(name, arg)
  model = tokenizer.build(c.model)
  shapes = nn.meta.unbox(jax.eval_shape(
      model.init, jax.random.key(0), *tokenizer.dummy_inputs(c.model)))['params']
  # Table 5 rounds to 0.1M (1.1B for d28): allow that rounding.
  tol = 0.05e9 if dec > 1e9 else 0.1e6
  assert abs(layers.transformer_param_count(shapes['encoder']) - enc) < 0.1e6
  assert abs(layers.transformer_param_count(shapes['decoder']) - dec) < tol
  assert abs(layers.adaln_param_count(shapes['decoder']) - dec) < tol


def test_distill_configs():
  """:distill of the demo and K600 configs: a student with the step table,
  the encoder and REPA head frozen, the teacher's guided sampler as target."""
  for name in ('demo', 'tokenizer_k600'):
    c = load_config(name, 'distill')
    assert c.model.step_conditioning and c.model.repa_weight == 0
    assert tuple(c.optim.freeze) == ('encoder', 'repa_head')
    assert tuple(c.distill.student_steps) == (1, 2, 4) and c.distill.steps == 4
    assert c.sample.guidance_scale > 1  # the target sampler is guided
    shapes = jax.eval_shape(tokenizer.build(c.model).init,
                            jax.random.key(0),
                            *tokenizer.dummy_inputs(c.model))
    assert shapes['params']['decoder']['step_embed'].value.shape == (
        8, c.model.dec_width)


def test_stage2_configs():
  for name in ('tokenizer_k600', 'demo'):
    c = load_config(name, 'stage2')
    assert c.model.decoder_attention == 'full'
    assert c.model.first_frame_prob == 0.5 and tuple(c.optim.freeze) == ('encoder',)
    assert load_config(name).model.decoder_attention == 'time_causal'
  assert load_config('tokenizer_k600', 'stage2').model.repa_source == 'dinov2'
  assert load_config('tokenizer_k600', 'stage2,runlocal').data.kind == 'demo'
  with pytest.raises(ValueError, match='stage3'):
    load_config('tokenizer_k600', 'stage3')


def test_fsq_skip_rounding_passes_bounded_values_per_sample():
  z = jnp.array([[[0.3, -0.2, 0.1, 0.05, 0.4, -0.6]]] * 2)  # [2, 1, 6]
  q = fsq.quantize(z, skip_rounding=jnp.array([[True], [False]]))
  lv = np.array(fsq.DEFAULT_LEVELS)
  np.testing.assert_allclose(q[0], fsq.bound(z[0]) / (lv // 2), rtol=1e-6)
  np.testing.assert_allclose(q[1], fsq.quantize(z[1]))
  assert not np.allclose(q[0], q[1])


@pytest.mark.e2e  # a whole train step / pipeline
def test_remat_leaves_params_loss_and_grads_unchanged():
  base = tiny_config()
  model, params = init(base)
  params = randomize(params)
  lat = jax.random.normal(jax.random.key(2), tokenizer.dummy_inputs(base.model, 2)[0].shape)
  keep = jnp.ones((2, base.model.tokens_per_frame), bool)

  def loss_and_grads(config):
    m = tokenizer.build(config.model)

    def loss(p):
      v, f = m.apply(p, lat, 0.5 * lat, jnp.full((2,), 0.3), keep)
      return jnp.mean(v ** 2) + jnp.mean(f ** 2)
    return jax.jit(jax.value_and_grad(loss))(params)

  # Jitted, as training runs it (and faster to test than op by op); the
  # policies' barriers change XLA's fusions, so gradients of size ~10 agree
  # to float32 rounding (2.7e-6 measured), not bit for bit.
  ref_loss, ref_grads = loss_and_grads(base)
  # Attention implementations: tests/test_attention.py (the whole loss).
  for overrides in (dict(remat='dots'), dict(remat='full')):
    config = tiny_config(**overrides)
    # Same parameter tree: checkpoints load whatever the policy.
    _, p = init(config)
    assert jax.tree.structure(p) == jax.tree.structure(params)
    loss, grads = loss_and_grads(config)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='config.model.remat'):
    init(tiny_config(remat='everything'))
  with pytest.raises(ValueError, match='config.model.attention_impl'):
    init(tiny_config(attention_impl='flash'))


def test_residual_checkpoint_is_the_identity_in_value_and_gradient():
  """layers.residual_checkpoint (materialises the residual cotangent on
  XLA:CPU) changes neither values nor gradients, also with inf / NaN."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 5, 8)).astype(np.float32))
  w = jnp.asarray(rng.normal(size=(8, 8)).astype(np.float32))

  def f(x, barrier):
    for _ in range(3):   # a residual stack, as in the blocks
      x = barrier(x)
      x = x + jnp.tanh(x @ w)
    return jnp.sum(x ** 2)

  np.testing.assert_array_equal(layers.residual_checkpoint(x), x)
  ref = jax.jit(jax.grad(lambda x: f(x, lambda y: y)))(x)
  got = jax.jit(jax.grad(lambda x: f(x, layers.residual_checkpoint)))(x)
  np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
  # The backward pass holds the loop that keeps XLA:CPU from re-fusing.
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda x: f(x, layers.residual_checkpoint)))(x))
  assert jaxpr.count('while') == (3 if jax.default_backend() == 'cpu' else 0)
  special = x.at[0, 0, 0].set(jnp.nan).at[1, 0, 0].set(jnp.inf)
  g = jax.grad(lambda x: jnp.sum(layers.residual_checkpoint(x) * 2.0))(special)
  np.testing.assert_array_equal(g, jnp.full_like(x, 2.0))


@pytest.mark.parametrize('dropout', [False, True])
def test_swiglu_backward_equals_autodiff(dropout):
  """layers.swiglu's hand-written backward pass (faster on XLA:CPU) gives
  autodiff's gradients for x and all three weights, with and without a
  dropout mask on the hidden units (the AR model's MLP): float32 to
  rounding, bfloat16 as close to the float32 gradients as autodiff's own."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 5, 16)).astype(np.float32))
  w1, w3 = (jnp.asarray(rng.normal(size=(16, 42)).astype(np.float32) * 0.3)
            for _ in range(2))
  w2 = jnp.asarray(rng.normal(size=(42, 16)).astype(np.float32) * 0.3)
  keep = None
  if dropout:  # nn.Dropout at rate 0.25: kept units scaled by 1 / 0.75
    keep = jnp.asarray(rng.random((2, 5, 42)) > 0.25)
  dropped = lambda h: h if keep is None else jnp.where(keep, h / 0.75, 0)
  plain = lambda x, w1, w3, w2: dropped(nn.silu(x @ w1) * (x @ w3)) @ w2
  fused = lambda x, w1, w3, w2: layers.swiglu(x, w1, w3, w2, keep, 0.75)

  def grads(fn, dtype):
    loss = lambda *a: jnp.sum(jnp.sin(
        fn(*(t.astype(dtype) for t in a)).astype(jnp.float32)))
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))(
        x, w1, w3, w2)

  ref_loss, ref = grads(plain, jnp.float32)
  loss, got = grads(fused, jnp.float32)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  for a, b in zip(got, ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # bfloat16 compute: the error against float32 is autodiff's, not more.
  _, auto16 = grads(plain, jnp.bfloat16)
  _, got16 = grads(fused, jnp.bfloat16)
  for a, b, r in zip(got16, auto16, ref):
    scale = float(jnp.max(jnp.abs(r)))
    assert float(jnp.max(jnp.abs(a - r))) <= max(
        1.5 * float(jnp.max(jnp.abs(b - r))), 1e-2 * scale)
