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


def make_train_step(model, tx, schedule, model_config,
                    freeze_encoder: bool = False) -> Callable:
  """freeze_encoder (stage 2): no backward pass through the encoder; pair it
  with an optimizer that freezes the encoder (optim.freeze)."""
  teacher = features.get(model_config)

  def train_step(state: TrainState, batch, rng, teacher_params=None
                 ) -> Tuple[TrainState, Dict]:
    """teacher_params: `teacher.params` (the REPA teacher's weights, as an
    argument rather than constants baked into the executable); None for
    parameter-free sources."""
    rng = jax.random.fold_in(rng, state.step)
    teacher_fn = lambda b: teacher.apply(teacher_params, b)
    grad_fn = jax.value_and_grad(tokenizer.loss_fn, argnums=1, has_aux=True)
    (_, metrics), grads = grad_fn(model, state.params, batch, rng, model_config,
                                  teacher_fn, freeze_encoder)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads),
                   lr=schedule(state.step))
    return TrainState(step=state.step + 1, params=params,
                      opt_state=opt_state), metrics

  train_step.teacher = teacher
  return train_step


def restore_params(config, workdir: str, step=None, mesh=None):
  """Restores the params of a training workdir (trained with `config`).

  mesh: restore sharded over it by the params' logical axes (a stage-2 run
  starting from stage 1 on a pod); default: the first device.
  """
  from vftok import checkpoint
  from vftok import sharding
  model, tx, _ = build(config)
  if mesh is None:
    mesh = sharding.make_mesh(config.mesh, devices=jax.devices()[:1])
  params, _ = checkpoint.restore_params(
      os.path.join(workdir, CHECKPOINT_DIR),
      make_init_fn(model, tx, config.model), mesh, step)
  return params


# Parameters a stage-2 decoder adds to its stage-1 source: the learned prefix
# token of given conditioning frames starts from its fresh init.
ADDED_IN_STAGE2 = ('prefix_token',)


def init_params_from(workdir: str, params, mesh):
  """Params of the run in `workdir`, checked against and laid out like
  `params` (the new run's; same architecture, e.g. stage 1 -> stage 2, which
  may add only the ADDED_IN_STAGE2 parameters: those keep `params`' values)."""
  from vftok import api  # pylint: disable=g-import-not-at-top
  src_config = api.load_workdir_config(workdir)
  src = restore_params(src_config, workdir, mesh=mesh)
  flat_src = {jax.tree_util.keystr(p): a
              for p, a in jax.tree_util.tree_leaves_with_path(src)}
  flat_new = jax.tree_util.tree_leaves_with_path(params)
  added = [jax.tree_util.keystr(p) for p, _ in flat_new
           if jax.tree_util.keystr(p) not in flat_src]
  dropped = set(flat_src) - {jax.tree_util.keystr(p) for p, _ in flat_new}
  if dropped or any(not k.endswith(tuple(f"['{n}']" for n in ADDED_IN_STAGE2))
                    for k in added):
    raise ValueError(f'train.init_from={workdir!r}: its model has different '
                     'parameters than this config (different architecture: '
                     f'{sorted(dropped)[:1] or added[:1]})')
  out = []
  for path, b in flat_new:
    a = flat_src.get(jax.tree_util.keystr(path), b)
    if a.shape != b.shape:
      raise ValueError(f'train.init_from={workdir!r}: parameter '
                       f'{jax.tree_util.keystr(path)} has shape {a.shape}, '
                       f'this config expects {b.shape}')
    out.append(jax.device_put(a, b.sharding))
  return jax.tree.unflatten(jax.tree.structure(params), out)
