"""Logical -> mesh rules on 8 simulated CPU devices (see conftest.py)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from vftok import sharding


def mesh_config(data, fsdp):
  return ml_collections.ConfigDict({'data': data, 'fsdp': fsdp})


class ToyMLP(nn.Module):
  """Named like the real models: patch -> embed -> mlp -> embed -> codes."""
  width: int = 16

  @nn.compact
  def __call__(self, x):
    dense = lambda f, axes, name: nn.Dense(
        f, name=name, kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), axes),
        bias_init=nn.with_logical_partitioning(
            nn.initializers.normal(0.1), axes[-1:]))
    h = dense(self.width, ('patch', 'embed'), 'embed_in')(x)
    scale = self.param('norm', nn.with_logical_partitioning(
        nn.initializers.ones_init(), ('norm',)), (self.width,))
    h = h * scale
    h = dense(4 * self.width, ('embed', 'mlp'), 'fc1')(h)
    h = dense(self.width, ('mlp', 'embed'), 'fc2')(nn.gelu(h))
    return dense(6, ('embed', 'codes'), 'fsq_in')(h)


def init_fn(rng):
  return ToyMLP().init(rng, jnp.zeros((1, 4)))


def test_eight_devices():
  assert jax.device_count() == 8


@pytest.mark.parametrize('shape', [(8, 1), (4, 2), (2, 4)])
def test_make_mesh(shape):
  mesh = sharding.make_mesh(mesh_config(*shape))
  assert dict(mesh.shape) == {'data': shape[0], 'fsdp': shape[1]}
  assert mesh.devices.size == 8


def test_make_mesh_data_minus_one_and_errors():
  assert dict(sharding.make_mesh(mesh_config(-1, 2)).shape) == {
      'data': 4, 'fsdp': 2}
  with pytest.raises(ValueError, match='divide'):
    sharding.make_mesh(mesh_config(-1, 3))
  with pytest.raises(ValueError, match='equal'):
    sharding.make_mesh(mesh_config(3, 1))
  with pytest.raises(ValueError, match='equal'):
    sharding.make_mesh(mesh_config(2, 2))
  one = sharding.make_mesh(mesh_config(-1, 1), devices=jax.devices()[:1])
  assert dict(one.shape) == {'data': 1, 'fsdp': 1}


@pytest.mark.parametrize('shape', [(8, 1), (4, 2), (2, 4)])
def test_create_sharded_state(shape):
  mesh = sharding.make_mesh(mesh_config(*shape))
  state, shardings = sharding.create_sharded_state(
      init_fn, jax.random.key(0), mesh)
  p = state['params']
  # 'embed' -> fsdp (named even when the fsdp axis has size 1).
  assert p['fc1']['kernel'].sharding.spec == P('fsdp', None)
  assert p['fc2']['kernel'].sharding.spec == P(None, 'fsdp')
  assert p['fc2']['bias'].sharding.spec == P('fsdp')
  assert p['embed_in']['kernel'].sharding.spec == P(None, 'fsdp')
  assert p['norm'].sharding.spec == P(None)
  assert p['fc1']['bias'].sharding.spec == P(None)  # mlp -> replicated
  # Each device holds 1/fsdp of an embed-sharded weight.
  shard = p['fc1']['kernel'].addressable_shards[0].data
  assert shard.shape == (16 // shape[1], 64)
  # Shardings tree is the unboxed structure and matches the arrays.
  assert jax.tree.structure(shardings) == jax.tree.structure(state)
  for x, s in zip(jax.tree.leaves(state), jax.tree.leaves(shardings)):
    assert x.sharding == s
  # The abstract state (restore target, compile-only benchmarks) describes
  # exactly the state that is created: shapes, dtypes, shardings.
  abstract, abstract_sh = sharding.abstract_state(init_fn, jax.random.key(0),
                                                  mesh)
  assert jax.tree.structure(abstract) == jax.tree.structure(state)
  for a, x in zip(jax.tree.leaves(abstract), jax.tree.leaves(state)):
    assert (a.shape, a.dtype, a.sharding) == (x.shape, x.dtype, x.sharding)
  assert jax.tree.leaves(abstract_sh) == jax.tree.leaves(shardings)


def test_non_divisible_dim_is_replicated():
  mesh = sharding.make_mesh(mesh_config(1, 8))
  # 16-wide embed divides 8; the 6-wide codes bias never shards; a 12-wide
  # embed does not divide 8 and falls back to replication.

  class Odd(nn.Module):
    @nn.compact
    def __call__(self, x):
      w = self.param('w', nn.with_logical_partitioning(
          nn.initializers.ones_init(), ('embed', 'codes')), (12, 6))
      return x @ w
  state, _ = sharding.create_sharded_state(
      lambda r: Odd().init(r, jnp.zeros((1, 12))), jax.random.key(0), mesh)
  assert state['params']['w'].sharding.spec == P(None, None)
  state, _ = sharding.create_sharded_state(init_fn, jax.random.key(0), mesh)
  assert state['params']['fsq_in']['kernel'].sharding.spec == P('fsdp', None)


def test_logical_to_mesh_sharding():
  mesh = sharding.make_mesh(mesh_config(2, 4))
  tree = {'a': P('batch', 'length', 'embed'), 'b': P('embed', 'mlp')}
  out = sharding.logical_to_mesh_sharding(tree, mesh)
  # batch takes ('data', 'fsdp'), so embed of the activation stays unsharded.
  assert out['a'].spec == P(('data', 'fsdp'), None, None)
  assert out['b'].spec == P('fsdp', None)
  shapes = {'a': jax.ShapeDtypeStruct((8, 3, 5), jnp.float32),
            'b': jax.ShapeDtypeStruct((6, 8), jnp.float32)}
  out = sharding.logical_to_mesh_sharding(tree, mesh, shapes)
  assert out['a'].spec == P(('data', 'fsdp'), None, None)
  assert out['b'].spec == P(None, None)  # 6 % 4 != 0


def test_optimizer_state_mirrors_params():
  import optax
  mesh = sharding.make_mesh(mesh_config(2, 4))
  tx = optax.adam(1e-3)

  def init(rng):
    params = init_fn(rng)
    return {'params': params, 'opt': tx.init(params),
            'step': jnp.zeros((), jnp.int32)}
  state, shardings = sharding.create_sharded_state(init, jax.random.key(0),
                                                   mesh)
  adam = state['opt'][0]
  for moments in (adam.mu, adam.nu):
    jax.tree.map(lambda m, p: np.testing.assert_equal(
        m.sharding.spec, p.sharding.spec), moments, state['params'])
  assert adam.count.sharding.spec == P()
  assert shardings['step'].spec == P()
  # Moments built from already-unboxed params match by path and shape too.
  abstract = jax.eval_shape(
      lambda r: {'params': init_fn(r),
                 'opt': tx.init(sharding.unbox(init_fn(r)))},
      jax.random.key(0))
  sh = sharding.state_shardings(abstract, mesh)
  assert sh['opt'][0].mu['params']['fc1']['kernel'].spec == P('fsdp', None)


def test_sharded_forward_matches_unsharded():
  mesh = sharding.make_mesh(mesh_config(2, 4))
  state, shardings = sharding.create_sharded_state(init_fn, jax.random.key(0),
                                                   mesh)
  x = jax.random.normal(jax.random.key(1), (16, 4))
  model = ToyMLP()
  fwd = jax.jit(model.apply, in_shardings=(shardings,
                                           sharding.batch_sharding(mesh)),
                out_shardings=sharding.batch_sharding(mesh))
  y = fwd(state, jax.device_put(x, sharding.batch_sharding(mesh)))
  ref = model.apply(jax.device_get(state), x)
  np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-5,
                             atol=1e-5)
  assert y.sharding.spec == P(('data', 'fsdp'))
  assert sharding.replicated(mesh).spec == P()
