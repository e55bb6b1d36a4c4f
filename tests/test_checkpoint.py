"""Orbax checkpoints: values, resharding, retention, tmp dirs, SIGTERM, Grain."""
import os
import signal
import time

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vftok import checkpoint
from vftok import sharding


def mesh(data, fsdp):
  return sharding.make_mesh(ml_collections.ConfigDict(
      {'data': data, 'fsdp': fsdp}))


class MLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    dense = lambda f, axes, name: nn.Dense(
        f, name=name, kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.normal(0.1),
                                               axes[-1:]))
    h = dense(64, ('embed', 'mlp'), 'fc1')(x)
    return dense(6, ('mlp', 'codes'), 'fc2')(h)


def init_fn(rng):
  params = MLP().init(rng, jnp.zeros((1, 16)))
  return {'params': params, 'opt': optax.adam(1e-3).init(params),
          'step': jnp.zeros((), jnp.int32)}


def make_state(m, seed=0):
  return sharding.create_sharded_state(init_fn, jax.random.key(seed), m)


def assert_tree_equal(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(
      np.asarray(x), np.asarray(y)), a, b)


def data_iterator():
  return iter(grain.MapDataset.range(100).shuffle(seed=0).batch(4)
              .to_iter_dataset())


def test_save_restore_reshard(tmp_path):
  state, _ = make_state(mesh(8, 1))
  state = dict(state, step=jnp.asarray(7, jnp.int32))
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3, save_every=10)
  assert ckpt.restore_latest(checkpoint.abstract_like(state)) == (None, 0)
  assert not ckpt.maybe_save(7, state)          # not due
  assert ckpt.maybe_save(10, state)
  assert not ckpt.maybe_save(10, state, force=True)  # already saved
  ckpt.wait()
  assert ckpt.latest_step() == 10
  # Same shardings.
  restored, step = ckpt.restore_latest(checkpoint.abstract_like(state))
  assert step == 10
  assert_tree_equal(restored, state)
  # A different mesh: arrays land directly in the new shardings.
  other = mesh(2, 4)
  abstract = jax.eval_shape(init_fn, jax.random.key(0))
  shardings = sharding.state_shardings(abstract, other)
  target = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      sharding.unbox(abstract), shardings)
  restored, _ = ckpt.restore(target)
  assert_tree_equal(restored, state)
  for x, s in zip(jax.tree.leaves(restored), jax.tree.leaves(shardings)):
    assert x.sharding == s
  kernel = restored['params']['params']['fc1']['kernel']
  assert kernel.sharding.mesh.shape['fsdp'] == 4
  assert kernel.addressable_shards[0].data.shape == (16 // 4, 64)
  ckpt.close()


def test_retention_and_tmp_dirs(tmp_path):
  state, _ = make_state(mesh(4, 2))
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2, save_every=1,
                                 async_save=False)
  for step in (1, 2, 3):
    assert ckpt.maybe_save(step, dict(state, step=jnp.asarray(step)))
  ckpt.wait()
  assert ckpt.all_steps() == [2, 3]
  ckpt.close()
  # A save that died mid-write: only a tmp directory, with a higher step.
  tmp = tmp_path / '9.orbax-checkpoint-tmp-1700000000000000'
  (tmp / 'state').mkdir(parents=True)
  (tmp / 'state' / 'garbage').write_text('partial')
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2, save_every=1)
  assert ckpt.latest_step() == 3
  restored, step = ckpt.restore_latest(checkpoint.abstract_like(state))
  assert step == 3 and int(restored['step']) == 3
  ckpt.close()


def test_sigterm_stops_and_forces_save(tmp_path):
  state, _ = make_state(mesh(8, 1))
  ckpt = checkpoint.Checkpointer(str(tmp_path), save_every=1000)
  with checkpoint.PreemptionGuard() as guard:
    assert not guard.should_stop(3)
    assert not ckpt.maybe_save(3, state)
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(100):  # the handler runs between bytecodes
      if guard.signalled:
        break
      time.sleep(0.01)
    assert guard.should_stop(4)
    assert checkpoint.preemption_signalled()
    assert ckpt.maybe_save(4, state)  # preemption forces the save
  assert not checkpoint.preemption_signalled()  # guard closed
  assert signal.getsignal(signal.SIGTERM) is not guard._on_signal
  ckpt.close()
  assert checkpoint.Checkpointer(str(tmp_path)).latest_step() == 4


def test_grain_iterator_resumes(tmp_path):
  state, _ = make_state(mesh(2, 4))
  it = data_iterator()
  for _ in range(3):
    next(it)
  ckpt = checkpoint.Checkpointer(str(tmp_path), save_every=3)
  assert ckpt.maybe_save(3, state, data_iter=it)
  expected = [next(it) for _ in range(2)]  # advancing must not change the save
  for _ in range(5):
    next(it)
  ckpt.close()

  ckpt = checkpoint.Checkpointer(str(tmp_path), save_every=3)
  fresh = data_iterator()
  restored, step = ckpt.restore_latest(checkpoint.abstract_like(state),
                                       data_iter=fresh)
  assert step == 3
  assert_tree_equal(restored, state)
  np.testing.assert_array_equal(next(fresh), expected[0])
  np.testing.assert_array_equal(next(fresh), expected[1])
  # A checkpoint without data state restores the arrays, leaves the iterator.
  ckpt.maybe_save(6, state)
  ckpt.wait()
  other = data_iterator()
  first = next(data_iterator())
  _, step = ckpt.restore_latest(checkpoint.abstract_like(state),
                                data_iter=other)
  assert step == 6
  np.testing.assert_array_equal(next(other), first)
  ckpt.close()
