"""AdamW + warmup/cosine + clipping + muP multipliers."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vftok import defaults
from vftok import optim
from vftok import sharding
from vftok.models import layers


def optim_config(**overrides):
  c = defaults.tokenizer_config().optim
  c.update(overrides)
  return c


def _init(axes):
  return nn.with_logical_partitioning(nn.initializers.normal(0.02), axes)


class Toy(nn.Module):
  """A pre-norm transformer block with every kind of parameter."""
  width: int
  head_dim: int = 64

  @nn.compact
  def __call__(self, x):
    heads = self.width // self.head_dim
    h = nn.Dense(self.width, kernel_init=_init(('patch', 'embed')),
                 bias_init=_init(('embed',)), name='embed_in')(x)
    h = nn.LayerNorm(use_bias=False, name='norm',
                     scale_init=nn.with_logical_partitioning(
                         nn.initializers.ones_init(), ('norm',)))(h)
    q = nn.DenseGeneral((heads, self.head_dim),
                        kernel_init=_init(('embed', 'heads', 'head_dim')),
                        bias_init=_init(('heads', 'head_dim')), name='query')(h)
    h = h + nn.DenseGeneral(self.width, axis=(-2, -1), use_bias=False,
                            kernel_init=_init(('heads', 'head_dim', 'embed')),
                            name='out')(q)
    m = nn.Dense(4 * self.width, use_bias=False,
                 kernel_init=_init(('embed', 'mlp')), name='fc1')(h)
    h = h + nn.Dense(self.width, use_bias=False,
                     kernel_init=_init(('mlp', 'embed')), name='fc2')(m)
    regs = self.param('registers', _init(('registers', 'embed')),
                      (8, self.width))
    h = h + regs.mean(0)
    return nn.Dense(6, use_bias=False, kernel_init=_init(('embed', 'codes')),
                    name='fsq_in')(h)


def abstract(width):
  return jax.eval_shape(Toy(width).init, jax.random.key(0), jnp.zeros((1, 4)))


def test_schedule():
  c = optim_config(lr=1e-3, warmup_init_lr=1e-6, warmup_steps=100,
                   final_lr_ratio=0.1)
  s = optim.lr_schedule(c, total_steps=1100)
  np.testing.assert_allclose(s(0), 1e-6, rtol=1e-5)
  np.testing.assert_allclose(s(50), (1e-6 + 1e-3) / 2, rtol=1e-5)
  np.testing.assert_allclose(s(100), 1e-3, rtol=1e-5)
  np.testing.assert_allclose(s(600), 0.55e-3, rtol=1e-5)  # cosine midpoint
  np.testing.assert_allclose(s(1100), 1e-4, rtol=1e-5)
  np.testing.assert_allclose(s(5000), 1e-4, rtol=1e-5)
  _, s2 = optim.make_optimizer(c, 1100, abstract(64), abstract(64))
  np.testing.assert_allclose(s2(100), 1e-3, rtol=1e-5)


def test_mup_multipliers():
  mults = optim.mup_lr_multipliers(abstract(512), abstract(256))['params']
  # Hidden and output matrices (fan-in grows with width): base / width.
  for name in ('query', 'out', 'fc1', 'fc2', 'fsq_in'):
    assert mults[name]['kernel'] == 0.5, name
  # Input kernel (fan-in = patch dim), norms, biases, register embeddings.
  assert mults['embed_in']['kernel'] == 1.0
  assert mults['embed_in']['bias'] == 1.0
  assert mults['query']['bias'] == 1.0
  assert mults['norm']['scale'] == 1.0
  assert mults['registers'] == 1.0
  # Same width as the base: all 1.
  same = optim.mup_lr_multipliers(abstract(256), abstract(256))
  assert set(jax.tree.leaves(same)) == {1.0}


def test_mup_scales_updates():
  c = optim_config(lr=1e-2, warmup_steps=0, weight_decay=0.0, grad_clip=0.0,
                   mup_base_width=256)
  params = sharding.unbox(Toy(512).init(jax.random.key(0), jnp.zeros((1, 4))))
  tx, _ = optim.make_optimizer(c, 10, abstract(512), abstract(256))
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  u = updates['params']
  # Adam's first step is -lr * sign(g); muP halves it for hidden kernels.
  np.testing.assert_allclose(u['fc1']['kernel'], -0.5e-2, rtol=1e-4)
  np.testing.assert_allclose(u['embed_in']['kernel'], -1e-2, rtol=1e-4)
  np.testing.assert_allclose(u['norm']['scale'], -1e-2, rtol=1e-4)
  with pytest.raises(ValueError, match='base_params'):
    optim.make_optimizer(c, 10, abstract(512))


def test_boxed_init_unboxed_update():
  # The train-state pattern: tx.init on boxed params inside the init fn,
  # tx.update on the unboxed state afterwards.
  c = optim_config(warmup_steps=0)
  boxed = Toy(128).init(jax.random.key(0), jnp.zeros((1, 4)))
  tx, _ = optim.make_optimizer(c, 10, abstract(128), abstract(64))
  state = sharding.unbox(tx.init(boxed))
  params = sharding.unbox(boxed)
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
  assert jax.tree.structure(updates) == jax.tree.structure(params)
  # Fully boxed works too.
  grads = jax.tree.map(jnp.ones_like, boxed)
  updates, _ = tx.update(grads, tx.init(boxed), boxed)
  assert updates['params']['fc1']['kernel'].names == ('embed', 'mlp')


def test_weight_decay_skips_vectors():
  c = optim_config(lr=1.0, warmup_steps=0, weight_decay=0.1, grad_clip=0.0,
                   mup_base_width=0)
  params = sharding.unbox(Toy(128).init(jax.random.key(0), jnp.zeros((1, 4))))
  tx, _ = optim.make_optimizer(c, 10, params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  u, p = updates['params'], params['params']
  np.testing.assert_allclose(u['fc1']['kernel'], -0.1 * p['fc1']['kernel'],
                             rtol=1e-5)
  np.testing.assert_allclose(u['query']['kernel'], -0.1 * p['query']['kernel'],
                             rtol=1e-5)
  for vec in (u['norm']['scale'], u['embed_in']['bias'], u['query']['bias']):
    np.testing.assert_array_equal(vec, 0.0)
  mask = optim.decay_mask(p)
  assert mask['fc1']['kernel'] and not mask['norm']['scale']


def test_clipping_bounds_gradient():
  params = {'w': jnp.zeros((4, 4)), 'b': jnp.zeros((4,))}
  grads = jax.tree.map(lambda x: jnp.full(x.shape, 100.0), params)

  def first_moment(clip):
    c = optim_config(grad_clip=clip, weight_decay=0.0, mup_base_width=0)
    tx, _ = optim.make_optimizer(c, 10, params)
    _, state = tx.update(grads, tx.init(params), params)
    adam = [s for s in state if isinstance(s, optax.ScaleByAdamState)][0]
    return float(optax.tree.norm(adam.mu))
  b1 = defaults.tokenizer_config().optim.b1
  # Adam sees the clipped gradient: its first moment is (1 - b1) * |g|.
  np.testing.assert_allclose(first_moment(1.0), (1 - b1) * 1.0, rtol=1e-5)
  np.testing.assert_allclose(first_moment(0.0),
                             (1 - b1) * float(optax.tree.norm(grads)),
                             rtol=1e-5)


def test_count_params():
  boxed = Toy(128).init(jax.random.key(0), jnp.zeros((1, 4)))
  total = layers.count_params(boxed)
  assert total == sum(x.size for x in jax.tree.leaves(sharding.unbox(boxed)))
  assert layers.count_params(boxed) == layers.count_params(abstract(128))
  kernels = layers.count_params(boxed, lambda path, _: path.endswith('kernel'))
  p = sharding.unbox(boxed)['params']
  assert kernels == sum(p[n]['kernel'].size for n in
                        ('embed_in', 'query', 'out', 'fc1', 'fc2', 'fsq_in'))


def test_lr_scales_longest_prefix_wins_and_unknown_paths_fail():
  # Adam's first update is lr * sign(g): the ratios are the scales exactly.
  w = jnp.full((3, 4), 0.5)
  params = {'params': {'encoder': {'body': {'k': w}, 'to_codes': {'k': w}},
                       'decoder': {'k': w}}}
  grads = jax.tree.map(lambda x: 2.0 * x, params)
  cfg = optim_config(mup_base_width=0, weight_decay=0.0, warmup_steps=0,
                     lr_scales=(('encoder', 0.5), ('encoder/to_codes', 0.1)))
  tx, _ = optim.make_optimizer(cfg, 10, params)
  u, _ = tx.update(grads, tx.init(params), params)
  dec = np.asarray(u['params']['decoder']['k'])
  np.testing.assert_allclose(u['params']['encoder']['body']['k'], 0.5 * dec,
                             rtol=1e-6)
  np.testing.assert_allclose(u['params']['encoder']['to_codes']['k'],
                             0.1 * dec, rtol=1e-6)
  cfg.lr_scales = (('encoder/to_code', 0.1),)
  with pytest.raises(ValueError, match=r"\['encoder/to_code'\] match no"):
    optim.make_optimizer(cfg, 10, params)
