"""Tokenizer train state: creation (sharded), the pure train step, restore.

The train step is a pure function (state, batch, rng) -> (state, metrics);
the job jits it with explicit shardings and donates the state. The per-step
RNG is fold_in(rng, step), so a resumed run draws the same noise, time and
nested-dropout samples as an uninterrupted one.
"""
import os
from typing import Any, Callable, Dict, Tuple

import flax
import jax
import jax.numpy as jnp
import optax

from vftok import optim
from vftok.models import features
from vftok.models import layers
from vftok.models import tokenizer


CHECKPOINT_DIR = 'checkpoints'  # inside the workdir


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def build(config):
  """-> (model, optimizer, lr schedule) for a tokenizer config."""
  m = config.model
  model = tokenizer.build(m, layers.optional_dtype(config.train.compute_dtype))
  dummies = tokenizer.dummy_inputs(m)
  abstract = jax.eval_shape(model.init, jax.random.key(0), *dummies)
  base = None
  if config.optim.mup_base_width:
    base_model = tokenizer.build(m, width_override=config.optim.mup_base_width)
    base = jax.eval_shape(base_model.init, jax.random.key(0), *dummies)
  tx, schedule = optim.make_optimizer(config.optim, config.train.total_steps,
                                      abstract, base)
  return model, tx, schedule


def make_init_fn(model, tx, model_config) -> Callable:
  """rng -> TrainState whose leaves keep their logical-axis boxes."""
  def init(rng):
    params = model.init(rng, *tokenizer.dummy_inputs(model_config))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params))
  return init


def make_train_step(model, tx, schedule, model_config) -> Callable:
  teacher = features.get(model_config)

  def train_step(state: TrainState, batch, rng) -> Tuple[TrainState, Dict]:
    rng = jax.random.fold_in(rng, state.step)
    grad_fn = jax.value_and_grad(tokenizer.loss_fn, argnums=1, has_aux=True)
    (_, metrics), grads = grad_fn(model, state.params, batch, rng, model_config,
                                  teacher)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads),
                   lr=schedule(state.step))
    return TrainState(step=state.step + 1, params=params,
                      opt_state=opt_state), metrics

  return train_step


def restore_params(config, workdir: str, step=None):
  """Restores the params of a training workdir onto the default device(s)."""
  from vftok import checkpoint
  from vftok import sharding
  model, tx, _ = build(config)
  mesh = sharding.make_mesh(config.mesh, devices=jax.devices()[:1])
  init = make_init_fn(model, tx, config.model)
  abstract = jax.eval_shape(init, jax.random.key(0))
  shardings = sharding.state_shardings(abstract, mesh)
  abstract = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      sharding.unbox(abstract), shardings)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, CHECKPOINT_DIR),
                                 async_save=False)
  state, restored_step = ckpt.restore(abstract, step=step)
  ckpt.close()
  if state is None:
    raise ValueError(f'no checkpoint found in {workdir}')
  return state.params
