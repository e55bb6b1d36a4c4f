"""Training, for the tokenizer (stage 1 and 2) and the AR generator alike:
the train state, the pure step, restore, and the one training loop.

A `Task` holds what differs between the two (model, optimizer, init, loss);
everything else is shared:

  * the step is a pure function (state, batch, rng, *extra) -> (state,
    metrics); jobs jit it with explicit shardings and donate the state. Its
    RNG is fold_in(rng, step), so a resumed run draws the same noise, time,
    dropout and condition-dropout samples as an uninterrupted one;
  * `run_loop`: restore (or a fresh start), then step / log / checkpoint /
    evaluate until config.train.total_steps, with the preemption guard and
    the checkpointer released however it ends; steps/s counts training only;
  * a run's length from a time budget (`choose_length`): the step timed
    before training, as many steps as fit (the demo sizes itself so).
"""
import dataclasses
import json
import os
import time
from typing import Any, Callable, Dict, Optional

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from vftok import checkpoint
from vftok import defaults
from vftok import optim
from vftok import sharding
from vftok.data import pipeline
from vftok.models import ar
from vftok.models import distill
from vftok.models import layers
from vftok.models import tokenizer
from vftok.models.pretrained import features

CHECKPOINT_DIR = checkpoint.CHECKPOINT_DIR

# Parameters a fine-tuning stage adds to its source run, which start from
# their fresh init: a stage-2 decoder's learned prefix token of given
# conditioning frames, a distilled student's step-count table (zeros).
ADDED_BY_FINETUNING = ('prefix_token', 'step_embed')


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


@dataclasses.dataclass
class Task:
  """What the tokenizer and AR trainers do differently."""
  model: Any
  tx: optax.GradientTransformation
  schedule: Callable
  init_fn: Callable    # rng -> TrainState whose leaves keep logical-axis boxes
  loss_fn: Callable    # (params, batch, rng, *extra) -> (loss, metrics)
  extra: tuple = ()    # the step's extra arguments (the REPA teacher's weights)


def _init_fn(model, tx, args, kwargs=None) -> Callable:
  def init(rng):
    params = model.init(rng, *args, **(kwargs or {}))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params))
  return init


def tokenizer_task(config, with_teacher: bool = True) -> Task:
  """Stage 1, or stage 2 when config.optim.freeze holds 'encoder' (no
  backward pass through the encoder; the optimizer freezes it too).
  with_teacher=False: no REPA teacher is loaded (restoring params needs only
  the state's layout; the task then has no loss)."""
  m = config.model
  model = tokenizer.build(m, layers.optional_dtype(m.dtype))
  dummies = tokenizer.dummy_inputs(m)
  abstract = jax.eval_shape(model.init, jax.random.key(0), *dummies)
  base = None
  if config.optim.mup_base_width:
    base_model = tokenizer.build(m, width_override=config.optim.mup_base_width)
    base = jax.eval_shape(base_model.init, jax.random.key(0), *dummies)
  tx, schedule = optim.make_optimizer(config.optim, config.train.total_steps,
                                      abstract, base)
  init_fn = _init_fn(model, tx, dummies)
  if not with_teacher:
    return Task(model, tx, schedule, init_fn, None)
  if tokenizer.is_distilled(m):
    return _distill_task(config, model, tx, schedule, init_fn)
  freeze_encoder = 'encoder' in tuple(config.optim.get('freeze', ()))
  # The frozen REPA teacher's weights (if any) enter every step as an
  # argument rather than as constants baked into the executable.
  teacher = features.get(m)

  def loss_fn(params, batch, rng, teacher_params=None):
    return tokenizer.loss_fn(model, params, batch, rng, m,
                             lambda b: teacher.apply(teacher_params, b),
                             freeze_encoder)

  return Task(model, tx, schedule, init_fn, loss_fn, (teacher.params,))


def _distill_task(config, student, tx, schedule, init_fn) -> Task:
  """Few-step distillation (models/distill.py): the teacher is the run in
  config.train.init_from (the student starts from it); its decoder's params
  enter every step as an argument, like the REPA teacher's."""
  source = config.train.get('init_from')
  if not source:
    raise ValueError('a distillation stage (config.model.step_conditioning) '
                     'needs its teacher: config.train.init_from names the '
                     'workdir of a trained tokenizer')
  teacher_config = checkpoint.load_workdir_config(source)
  params, _ = restore_params(teacher_config, source)
  teacher = tokenizer.build(teacher_config.model,
                            layers.optional_dtype(teacher_config.model.dtype))

  def loss_fn(params, batch, rng, teacher_params):
    return distill.loss_fn(student, teacher, params, teacher_params, batch,
                           rng, config)

  return Task(student, tx, schedule, init_fn, loss_fn,
              (distill.teacher_decoder_params(params),))


def ar_task(config) -> Task:
  mc = ar.ARConfig.from_config_dict(config.model)
  model = ar.ARTransformer(mc)
  tx, schedule = optim.make_optimizer(config.optim, config.train.total_steps,
                                      {'params': ar.abstract_params(mc)})
  args, kwargs = ar.dummy_inputs(mc)
  order = config.get('order', 'time_first')
  cond_dropout = float(config.get('cond_dropout', 0.1))
  loss_fn = lambda params, batch, rng: ar.loss_fn(
      model, params, batch, rng, order=order, cond_dropout=cond_dropout)
  return Task(model, tx, schedule, _init_fn(model, tx, args, kwargs), loss_fn)


def task_for(config, with_teacher: bool = True) -> Task:
  """The task of a training config (or of a training workdir's config)."""
  job = config.get('job', 'train_tokenizer')
  if job == 'train_ar':
    return ar_task(config)
  if job == 'train_tokenizer':
    return tokenizer_task(config, with_teacher)
  raise ValueError(f'config.job={job!r} is not a training job')


def make_step(task: Task) -> Callable:
  """-> step(state, batch, rng, *task.extra) -> (state, metrics)."""
  def train_step(state: TrainState, batch, rng, *extra):
    rng = jax.random.fold_in(rng, state.step)
    grad_fn = jax.value_and_grad(task.loss_fn, has_aux=True)
    (_, metrics), grads = grad_fn(state.params, batch, rng, *extra)
    updates, opt_state = task.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads),
                   lr=task.schedule(state.step))
    return TrainState(step=state.step + 1, params=params,
                      opt_state=opt_state), metrics
  return train_step


def create_state(task: Task, seed: int, mesh):
  """-> (the train state, created already sharded over `mesh`; its
  shardings; the rng of the steps)."""
  init_rng, step_rng = jax.random.split(jax.random.key(seed))
  state, shardings = sharding.create_sharded_state(task.init_fn, init_rng, mesh)
  return state, shardings, step_rng


def jit_step(task: Task, state_shardings, mesh, rng) -> Callable:
  """make_step jitted with explicit shardings (batch split over every
  device, the rest replicated) and the state donated -> step(state, batch),
  closed over the rng and the task's extra arguments (put on every device
  once rather than baked into the executable)."""
  rep = sharding.replicated(mesh)
  extra = jax.device_put(task.extra, rep)
  jitted = jax.jit(
      make_step(task),
      in_shardings=(state_shardings, sharding.batch_sharding(mesh), rep)
      + (rep,) * len(extra),
      out_shardings=(state_shardings, rep), donate_argnums=0)
  return lambda state, batch: jitted(state, batch, rng, *extra)


# ---- the run's length from a time budget -----------------------------------------
# With config.train.time_budget_s > 0, train.total_steps is the *most* steps:
# before training the compiled step is timed on a copy of the fresh state (the
# run's first batch; the data iterator is put back) and the run trains
#   min(max(floor(steps/s x time_budget_s, to a multiple of 100), min_steps),
#       total_steps)
# steps, its learning-rate schedule built for that length. The choice is
# printed and saved (train.total_steps; train.budget_max_steps keeps the most),
# and a re-run keeps it: the speed of the machine that resumes does not change
# a run's length. A machine's speed then changes the result;
# time_budget_s = 0 trains exactly total_steps on every machine.

BUDGET_ROUND_TO = 100   # chosen lengths are multiples of this
BUDGET_TIMED_STEPS = 15  # steps timed after two warm-up steps (compile excluded)


def steps_per_second(train_step: Callable, state, batch,
                     timed_steps: int = BUDGET_TIMED_STEPS) -> float:
  """Steps per second of train_step(state, batch) -> (state, metrics), timed
  on a copy of `state` (the step donates its state; `state` stays intact):
  the median step time, so that a moment's contention does not decide."""
  probe = jax.tree.map(jnp.copy, state)
  for _ in range(2):  # the first compiles
    probe, metrics = train_step(probe, batch)
  jax.block_until_ready((probe, metrics))
  times = []
  for _ in range(timed_steps):
    start = time.perf_counter()
    probe, metrics = train_step(probe, batch)
    jax.block_until_ready((probe, metrics))
    times.append(time.perf_counter() - start)
  del probe
  return 1.0 / float(np.median(times))


def steps_for_budget(rate: float, budget_s: float, min_steps: int,
                     max_steps: int) -> int:
  """The run's length for `rate` steps/s within `budget_s` seconds."""
  fit = int(rate * budget_s) // BUDGET_ROUND_TO * BUDGET_ROUND_TO
  return int(min(max(fit, min_steps), max_steps))


def _budget(config) -> float:
  return float(config.train.get('time_budget_s', 0) or 0)


def keep_budgeted_length(config, workdir: str) -> None:
  """A resumed run whose length the time budget chose keeps that length
  when re-run with the same budget and the same most steps (call before
  check_resume compares configs); any other total_steps is taken as given."""
  t = config.train
  if _budget(config) <= 0 or not (checkpoint.finished_steps(workdir) and
                                   checkpoint.has_workdir_config(workdir)):
    return
  saved = checkpoint.load_workdir_config(workdir).train
  if saved.get('budget_max_steps', 0) != t.total_steps:
    return
  if saved.total_steps != t.total_steps:
    logging.info('time budget: the run in %s keeps the length chosen when it '
                 'started, %d steps', workdir, saved.total_steps)
  t.budget_max_steps, t.total_steps = saved.budget_max_steps, saved.total_steps


def choose_length(config, workdir: str, measure: Callable[[], float]) -> bool:
  """A fresh budgeted run: sets config.train.total_steps from measure() ->
  steps/s; True if it changed (the caller rebuilds its train step, whose
  learning-rate schedule depends on the length)."""
  t = config.train
  budget = _budget(config)
  if budget <= 0 or checkpoint.finished_steps(workdir):
    return False
  min_steps = int(t.get('min_steps', 0))
  if min_steps >= t.total_steps or t.get('budget_max_steps', 0):
    return False  # the length is total_steps whatever the speed, or chosen
  rate = measure()
  # Every process trains the same length: process 0's measurement decides.
  rate = float(multihost_utils.broadcast_one_to_all(jnp.float32(rate)))
  chosen = steps_for_budget(rate, budget, min_steps, int(t.total_steps))
  message = (f'time budget: the train step runs at {rate:.2f} steps/s here; '
             f'{budget:g} s of training -> {chosen} steps '
             f'(config.train.min_steps={min_steps}, at most '
             f'config.train.total_steps={t.total_steps}; '
             '--config.train.time_budget_s=0 trains exactly total_steps)')
  logging.info('%s', message)
  if jax.process_index() == 0:
    print(message, flush=True)
  changed = chosen != t.total_steps
  t.budget_max_steps, t.total_steps = int(t.total_steps), chosen
  return changed


def measure_with(train_step: Callable, state, train_iter: Any,
                 next_batch: Callable[[], Any]) -> Callable[[], float]:
  """measure() for choose_length: times `train_step` on the run's first
  batch, then puts the data iterator back where it was."""
  def measure():
    position = train_iter.get_state()
    batch = next_batch()
    train_iter.set_state(position)
    return steps_per_second(train_step, state, batch)
  return measure


# ---- restore -------------------------------------------------------------------

def restore_params(config, workdir: str, step: Optional[int] = None,
                   mesh=None):
  """-> ({'params': ...}, step) of a training workdir (tokenizer or AR,
  trained with `config`); step None: the latest. mesh: restore sharded over
  it by the params' logical axes (a stage-2 run starting from stage 1 on a
  pod); default: the first device."""
  task = task_for(config, with_teacher=False)
  if mesh is None:
    mesh = sharding.data_mesh(jax.devices()[:1])
  return checkpoint.restore_params(os.path.join(workdir, CHECKPOINT_DIR),
                                   task.init_fn, mesh, step)


def init_params_from(workdir: str, params, mesh):
  """Params of the run in `workdir`, checked against and laid out like
  `params` (the new run's; same architecture, e.g. stage 1 -> stage 2, which
  may add only the ADDED_BY_FINETUNING parameters: those keep `params`' values)."""
  src, _ = restore_params(checkpoint.load_workdir_config(workdir), workdir,
                          mesh=mesh)
  key = jax.tree_util.keystr
  flat_src = {key(p): a for p, a in jax.tree_util.tree_leaves_with_path(src)}
  flat_new = jax.tree_util.tree_leaves_with_path(params)
  added = [key(p) for p, _ in flat_new if key(p) not in flat_src]
  dropped = set(flat_src) - {key(p) for p, _ in flat_new}
  if dropped or any(not k.endswith(tuple(f"['{n}']" for n in ADDED_BY_FINETUNING))
                    for k in added):
    raise ValueError(f'train.init_from={workdir!r}: its model has different '
                     'parameters than this config (different architecture: '
                     f'{sorted(dropped)[:1] or added[:1]})')
  out = []
  for path, b in flat_new:
    a = flat_src.get(key(path), b)
    if a.shape != b.shape:
      raise ValueError(f'train.init_from={workdir!r}: parameter {key(path)} '
                       f'has shape {a.shape}, this config expects {b.shape}')
    out.append(jax.device_put(a, b.sharding))
  return jax.tree.unflatten(jax.tree.structure(params), out)


# ---- data and workdir ----------------------------------------------------------

def resolve_data(data_config) -> pipeline.Data:
  """config.data -> pipeline.Data, building the demo set (with its REPA
  teacher features) on first use."""
  return pipeline.resolve_patterns(data_config,
                                   teacher_factory=features.demo_teacher)


def resolve_saved_data(data_config, **overrides) -> pipeline.Data:
  """Resolves a data config saved by an earlier run (a workdir's config.json)
  or given in part by a job's config: fields it lacks take the current
  tokenizer defaults, so older workdirs still find their data and a job finds
  the demo set that training builds; non-empty `overrides` replace fields."""
  fields = defaults.tokenizer_config().data.to_dict()
  fields.update(data_config.to_dict())
  fields.update({k: v for k, v in overrides.items() if v})
  return resolve_data(ml_collections.ConfigDict(fields))


def start_workdir(config, workdir: str, writer=None):
  """A training job's first write: after `check_resume` -> the metric writer
  (CLU: TensorBoard + logs on process 0, logs only elsewhere) unless one is
  given. config.json is written by `run_loop`, once the state is restored
  or freshly made."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top  # TensorFlow: jobs only
  check_resume(config, workdir)
  return writer or metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)


def check_resume(config, workdir: str) -> None:
  """A workdir with checkpoints resumes only under a config that builds the
  same train state (tree and shapes). Compared field by field with the
  workdir's config.json (upgraded to today's names; fields added since count
  as unchanged) before anything is written: a change that alters the state
  raises CheckpointError naming each such field, touching nothing; other
  changes (length, schedule, logging, evaluation) are logged and resume."""
  steps = checkpoint.finished_steps(workdir)
  if not steps or not checkpoint.has_workdir_config(workdir):
    return
  old = _leaves(checkpoint.load_workdir_config(workdir).to_dict())
  new = _leaves(json.loads(config.to_json()))
  changed = {k: (old[k], v) for k, v in new.items() if k in old and old[k] != v}
  if not changed:
    return
  said = lambda keys: ', '.join(f'{k} ({changed[k][0]!r} -> {changed[k][1]!r})'
                                for k in keys)
  base = _state_shapes(new)
  was = {k: o for k, (o, _) in changed.items()}
  if base is not None and _state_shapes({**new, **was}) != base:
    structural = [k for k in sorted(changed)
                  if _state_shapes({**new, k: was[k]}) != base
                  ] or sorted(changed)  # only together, or not buildable
    hint = ('; or start a new --workdir from its weights with '
            f'--config.train.init_from={workdir}'
            if config.get('job', 'train_tokenizer') == 'train_tokenizer'
            and not any(k.startswith('model.') for k in structural) else '')
    raise checkpoint.CheckpointError(
        f'the config differs from the run in {workdir} (checkpoint steps '
        f'{steps}) in fields that change the train state: '
        f'{said(structural)}. Nothing was changed there: re-run with its '
        f'values to resume it, or train this config in a new --workdir{hint}')
  logging.warning('config changed since the run in %s was saved: %s; the '
                  'train state is the same, resuming with the new values',
                  workdir, said(sorted(changed)))


def _leaves(tree: dict, prefix: str = '') -> Dict[str, Any]:
  """A nested config dict -> {'a.b.c': leaf}."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict) and v:
      out.update(_leaves(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def _state_shapes(leaves: Dict[str, Any]):
  """{'a.b': leaf} of a training config -> its train state's leaf shapes
  (jax.eval_shape: nothing is allocated); None if no state can be built."""
  fields = {}
  for key, value in leaves.items():
    *parents, name = key.split('.')
    node = fields
    for p in parents:
      node = node.setdefault(p, {})
    node[name] = value
  try:
    task = task_for(ml_collections.ConfigDict(fields), with_teacher=False)
    abstract = jax.eval_shape(task.init_fn, jax.random.key(0))
  except Exception:  # pylint: disable=broad-except  # e.g. a field now invalid
    return None
  return checkpoint.leaf_shapes(abstract)


# ---- the loop ------------------------------------------------------------------

def run_loop(config, workdir: str, writer, *, state, train_step: Callable,
             train_iter, next_batch: Callable[[], Any],
             evaluate: Optional[Callable[[int, Any], Any]] = None,
             fresh_start: Optional[Callable[[Any], Any]] = None,
             per_step: Optional[Dict[str, float]] = None,
             extra_metrics: Callable[[], Dict[str, float]] = dict,
             finished_table: str = ''):
  """Restores the latest checkpoint (else `fresh_start(state)`) and trains to
  config.train.total_steps -> the final state.

  train_step(state, batch) -> (state, metrics); next_batch() -> the global
  batch (it reads `train_iter`, whose position is checkpointed with the
  state); evaluate(step, params) every config.train.eval_every steps (its
  time is not in steps/s); per_step: name -> count per step, logged per
  second (e.g. tokens); finished_table: a workdir file printed when a
  finished run is re-run ('{step}' is replaced).
  """
  t = config.train
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, CHECKPOINT_DIR),
                                 keep=t.keep_checkpoints,
                                 save_every=t.checkpoint_every)
  guard = None
  try:
    restored, start = ckpt.restore(checkpoint.abstract_like(state),
                                   data_iter=train_iter)
    if restored is not None:
      state = restored
      logging.info('resumed from step %d', start)
    elif fresh_start is not None:
      state = fresh_start(state)
    # Only now: a restore that stopped leaves the run's config.json as it was.
    checkpoint.write_workdir_config(config, workdir)
    guard = checkpoint.PreemptionGuard()
    total, step = t.total_steps, start
    if step >= total:
      _report_finished(workdir, step, total, finished_table)
    report = _progress_reporter(total, writer)
    t_last, step_last = time.time(), step
    while step < total:
      ckpt.check()  # a failed background save stops training here
      state, metrics = train_step(state, next_batch())
      step += 1
      report(step)
      if step % t.log_every == 0 or step == total:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        metrics['steps_per_sec'] = (step - step_last) / (time.time() - t_last)
        for name, count in (per_step or {}).items():
          metrics[name] = metrics['steps_per_sec'] * count
        metrics.update(extra_metrics())
        writer.write_scalars(step, metrics)
        _log_progress(step, total, metrics)
        t_last, step_last = time.time(), step
        if not np.isfinite(metrics['loss']):
          raise FloatingPointError(f'loss is {metrics["loss"]} at step {step}')
      stop = guard.should_stop(step)
      ckpt.maybe_save(step, state, data_iter=train_iter,
                      force=stop or step == total)
      if stop:
        logging.warning('preempted: checkpoint written at step %d, exiting',
                        step)
        break
      every = t.eval_every
      if evaluate is not None and every > 0 and (step % every == 0
                                                 or step == total):
        with report.timed('eval'):
          evaluate(step, state.params)
        t_last = time.time()  # steps/s measures training, not evaluation
    ckpt.wait()
    if step == total and step > start:
      logging.info('done: %d steps; workdir %s', step, workdir)
  finally:
    if guard is not None:
      guard.close()
    ckpt.close()  # quiet after a failed save (already raised)
    writer.flush()
  return state


def _progress_reporter(total: int, writer):
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top
  return periodic_actions.ReportProgress(num_train_steps=total, writer=writer)


def _log_progress(step, total, metrics):
  """One console line per log_every: step, losses, speed and ETA."""
  rate = float(metrics['steps_per_sec'])
  eta = (total - step) / rate if rate > 0 else 0.0
  losses = '  '.join(f'{k[len("loss_"):]} {float(v):.4f}'
                     for k, v in sorted(metrics.items()) if k.startswith('loss_'))
  logging.info('step %d/%d  loss %.4f (%s)  %.2f steps/s  ETA %dm%02ds', step,
               total, float(metrics['loss']), losses, rate, eta // 60, eta % 60)


def _report_finished(workdir, step, total, table_pattern: str):
  """A re-run of a finished run: say so and show its last table."""
  logging.info('already trained: the workdir is at step %d of '
               'config.train.total_steps=%d (raise it to train on)', step, total)
  table = os.path.join(workdir, table_pattern.format(step=step))
  if table_pattern and os.path.exists(table):
    with open(table) as f:
      print(f'\nResults at step {step} ({table}):\n{f.read()}', flush=True)
