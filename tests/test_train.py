"""The train step: sharded over 8 devices == on 1 device (that it learns:
tests/test_learning.py)."""
import jax
import numpy as np
import pytest

import testing_utils
from vftok import sharding
from vftok import training


def run_steps(data, fsdp, n_devices, steps=2):
  c = testing_utils.tiny_tokenizer_config()
  c.mesh.data, c.mesh.fsdp = data, fsdp
  mesh = sharding.make_mesh(c.mesh, devices=jax.devices()[:n_devices])
  task = training.tokenizer_task(c)
  init_fn = task.init_fn
  state, shardings = sharding.create_sharded_state(init_fn, jax.random.key(0), mesh)
  step = jax.jit(training.make_step(task),
                 in_shardings=(shardings, sharding.batch_sharding(mesh),
                               sharding.replicated(mesh)),
                 out_shardings=(shardings, sharding.replicated(mesh)))
  x = np.random.default_rng(0).normal(size=(8, 3, 4, 4, 4)).astype(np.float32)
  batch = {'latents': jax.device_put(x, sharding.batch_sharding(mesh))}
  losses = []
  for _ in range(steps):
    state, metrics = step(state, batch, jax.random.key(1))
    losses.append(float(metrics['loss']))
  return losses, jax.device_get(state.params), state


@pytest.mark.e2e  # a whole train step / pipeline
def test_sharded_equals_unsharded():
  ref_losses, ref_params, _ = run_steps(1, 1, 1)
  for data, fsdp in [(8, 1), (4, 2), (2, 4)]:
    losses, params, state = run_steps(data, fsdp, 8)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5),
                 params, ref_params)
  # And the fsdp run really shards the width dimension of the weights.
  kernel = state.params['params']['encoder']['blocks_0']['mlp']['fc1']['kernel']
  assert kernel.sharding.spec[0] == 'fsdp'
  assert kernel.addressable_shards[0].data.shape[0] == kernel.shape[0] // 4
