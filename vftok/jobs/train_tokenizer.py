"""Trains a VideoFlexTok tokenizer (stage 1): the one script, in phases.

    mesh -> data -> model -> shard -> step -> restore -> evals -> loop

The same code runs the CPU demo and the paper's d18-d18 on a pod; only the
config differs. Everything written to the workdir:
  config.json            the resolved config (Tokenizer.from_checkpoint reads it)
  checkpoints/<step>/    Orbax: train state + Grain iterator state
  events / logs          CLU metric writers (TensorBoard + text)
  recon_<step>.png       reconstructions at token budgets 1, 2, 4, ..., K
  psnr_<step>.md         PSNR per token budget
"""
import os
import time

from absl import logging
from clu import periodic_actions
import jax
import numpy as np

from vftok import api
from vftok import checkpoint
from vftok import sharding
from vftok import train_state
from vftok.data import pipeline
from vftok.evals import reconstruction
from vftok.models import features
from vftok.models import layers


def run(config, workdir: str, writer=None):
  """Trains until config.train.total_steps (resuming if the workdir has a
  checkpoint); returns the final train state."""
  writer = api.start_workdir(config, workdir, writer)

  # ---- mesh ------------------------------------------------------------------
  mesh = sharding.make_mesh(config.mesh)
  logging.info('mesh: %s', dict(mesh.shape))
  if config.data.global_batch_size % mesh.size:
    raise ValueError(f'config.data.global_batch_size='
                     f'{config.data.global_batch_size} must be divisible by '
                     f'the {mesh.size} devices of the mesh')

  # ---- data ------------------------------------------------------------------
  data = pipeline.resolve(config.data)
  train_iter = pipeline.make_train_iterator(
      config.data, data, process_index=jax.process_index(),
      process_count=jax.process_count(),
      key_frames=features.needs_frames(config.model))
  bad_records = pipeline.bad_record_counter(config.data, data.train_pattern,
                                            jax.process_count())
  batch_sharding = sharding.batch_sharding(mesh)

  # ---- model -----------------------------------------------------------------
  model, tx, schedule = train_state.build(config)
  init_fn = train_state.make_init_fn(model, tx, config.model)

  # ---- shard: state created sharded, never whole on one device -----------------
  rng = jax.random.key(config.seed)
  init_rng, step_rng = jax.random.split(rng)
  state, state_shardings = sharding.create_sharded_state(init_fn, init_rng, mesh)
  _log_param_counts(state.params, writer)

  # ---- step ------------------------------------------------------------------
  step_fn = train_state.make_train_step(
      model, tx, schedule, config.model,
      freeze_encoder='encoder' in tuple(config.optim.get('freeze', ())))
  # The frozen REPA teacher's weights (if any) are replicated once and passed
  # to every step as an argument.
  teacher_params = jax.device_put(step_fn.teacher.params,
                                  sharding.replicated(mesh))
  train_step = jax.jit(
      step_fn,
      in_shardings=(state_shardings, batch_sharding, sharding.replicated(mesh),
                    sharding.replicated(mesh)),
      out_shardings=(state_shardings, sharding.replicated(mesh)),
      donate_argnums=0)

  # ---- restore ---------------------------------------------------------------
  ckpt = checkpoint.Checkpointer(
      os.path.join(workdir, train_state.CHECKPOINT_DIR), keep=config.train.keep_checkpoints,
      save_every=config.train.checkpoint_every)
  restored, start = ckpt.restore(
      checkpoint.abstract_like(state), data_iter=train_iter)
  if restored is not None:
    state = restored
    logging.info('resumed from step %d', start)
  elif 'encoder' in tuple(config.optim.get('freeze', ())) and not config.train.get('init_from'):
    raise ValueError('the encoder is frozen (stage 2) but config.train.init_from '
                     'names no stage-1 workdir to start from')
  elif config.train.get('init_from'):
    # Stage 2 starts from the stage-1 params (fresh optimizer, step 0); on
    # resume the stage-2 checkpoint above wins.
    state = state.replace(params=train_state.init_params_from(
        config.train.init_from, state.params, mesh))
    logging.info('params initialised from %s', config.train.init_from)

  # ---- evals -----------------------------------------------------------------
  evaluator = reconstruction.Evaluator(config, data, workdir, writer)
  guard = checkpoint.PreemptionGuard()

  # ---- loop ------------------------------------------------------------------
  total = config.train.total_steps
  latent_frames_per_step = config.data.global_batch_size * config.model.latent_frames
  report = periodic_actions.ReportProgress(num_train_steps=total, writer=writer)
  step = start
  if step >= total:
    _report_finished(workdir, step, total)
  t_last, step_last = time.time(), step
  try:
    while step < total:
      ckpt.check()  # a failed background save stops training here
      host = bad_records(next(train_iter))
      batch = pipeline.global_batch(host, batch_sharding)
      state, metrics = train_step(state, batch, step_rng, teacher_params)
      step += 1
      report(step)
      if step % config.train.log_every == 0 or step == total:
        metrics = jax.device_get(metrics)
        dt = time.time() - t_last
        metrics['steps_per_sec'] = (step - step_last) / dt
        metrics['latent_frames_per_sec'] = metrics['steps_per_sec'] * latent_frames_per_step
        metrics.update(bad_records.metrics())
        writer.write_scalars(step, {k: float(v) for k, v in metrics.items()})
        _log_progress(step, total, metrics)
        t_last, step_last = time.time(), step
        if not np.isfinite(metrics['loss']):
          raise FloatingPointError(f'loss is {metrics["loss"]} at step {step}')
      stop = guard.should_stop(step)
      ckpt.maybe_save(step, state, data_iter=train_iter,
                      force=stop or step == total)
      if stop:
        logging.warning('preempted: checkpoint written at step %d, exiting', step)
        break
      if step % config.train.eval_every == 0 or step == total:
        with report.timed('eval'):
          evaluator.run(step, state.params)
        # steps/s measures training: the evaluation's time is not in it.
        t_last = time.time()
    ckpt.wait()
    if step == total and step > start:
      logging.info('done: %d steps; workdir %s', step, workdir)
  finally:
    guard.close()
    ckpt.close()  # quiet after a failed save (already raised)
    writer.flush()
  return state


def _log_progress(step, total, metrics):
  """One console line per log_every: step, losses, speed and ETA."""
  rate = float(metrics['steps_per_sec'])
  eta = (total - step) / rate if rate > 0 else 0.0
  losses = '  '.join(f'{k[len("loss_"):]} {float(v):.4f}'
                     for k, v in sorted(metrics.items()) if k.startswith('loss_'))
  logging.info('step %d/%d  loss %.4f (%s)  %.2f steps/s  ETA %dm%02ds', step,
               total, float(metrics['loss']), losses, rate, eta // 60, eta % 60)


def _report_finished(workdir, step, total):
  """A re-run of a finished run: say so and show its last table."""
  logging.info('already trained: the workdir is at step %d of '
               'config.train.total_steps=%d (raise it to train on)', step, total)
  table = os.path.join(workdir, f'psnr_{step}.md')
  if os.path.exists(table):
    with open(table) as f:
      print(f'\nReconstruction PSNR at step {step} ({table}):\n{f.read()}',
            flush=True)


def _log_param_counts(params, writer):
  p = params['params']
  counts = {
      'params/encoder_transformer': layers.transformer_param_count(p['encoder']),
      'params/decoder_transformer': layers.transformer_param_count(p['decoder']),
      'params/decoder_adaln': layers.adaln_param_count(p['decoder']),
      'params/total': layers.count_params(p),
  }
  for k, v in counts.items():
    logging.info('%s: %.1fM', k, v / 1e6)
  writer.write_hparams({k: v for k, v in counts.items()})
