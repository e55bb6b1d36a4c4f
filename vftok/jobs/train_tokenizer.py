"""Trains a VideoFlexTok tokenizer (stage 1; stage 2 with a frozen encoder
and config.train.init_from; or a few-step student of the decoder in
config.train.init_from, config.model.step_conditioning: models/distill.py):
the one script, in phases.

    mesh -> data -> model -> shard -> step -> restore -> evals -> loop

The same code runs the CPU demo and the paper's d18-d18 on a pod; only the
config differs. Everything written to the workdir:
  config.json            the resolved config (Tokenizer.from_checkpoint reads it)
  checkpoints/<step>/    Orbax: train state + Grain iterator state
  events / logs          CLU metric writers (TensorBoard + text)
  recon_<step>.png       reconstructions at token budgets 1, 2, 4, ..., K
  psnr_<step>.md         PSNR per token budget
"""
from absl import logging
import jax

from vftok import checkpoint
from vftok import defaults
from vftok import errors
from vftok import sharding
from vftok import training
from vftok.data import pipeline
from vftok.evals import reconstruction
from vftok.models import layers
from vftok.models import tokenizer as tokenizer_lib
from vftok.models.pretrained import features


def run(config, workdir: str, writer=None):
  """Trains until config.train.total_steps (resuming if the workdir has a
  checkpoint); returns the final train state."""
  # ---- inputs: found (or one errors.InputError) before the workdir is made --
  data = check_inputs(config, workdir)
  training.keep_budgeted_length(config, workdir)
  writer = training.start_workdir(config, workdir, writer)

  # ---- mesh ------------------------------------------------------------------
  mesh = sharding.make_mesh(config.mesh)
  logging.info('mesh: %s', dict(mesh.shape))
  if config.data.global_batch_size % mesh.size:
    raise ValueError(f'config.data.global_batch_size='
                     f'{config.data.global_batch_size} must be divisible by '
                     f'the {mesh.size} devices of the mesh')

  # ---- data ------------------------------------------------------------------
  train_iter = pipeline.make_train_iterator(
      config.data, data, process_index=jax.process_index(),
      process_count=jax.process_count(),
      key_frames=features.needs_frames(config.model))
  bad_records = pipeline.bad_record_counter(config.data, data.train_pattern,
                                            jax.process_count())
  batch_sharding = sharding.batch_sharding(mesh)

  # ---- model -----------------------------------------------------------------
  task = training.tokenizer_task(config)

  # ---- shard: state created sharded, never whole on one device -----------------
  state, state_shardings, step_rng = training.create_state(task, config.seed,
                                                          mesh)
  _log_param_counts(state.params, writer)

  # ---- step ------------------------------------------------------------------
  train_step = training.jit_step(task, state_shardings, mesh, step_rng)
  next_batch = lambda: pipeline.global_batch(bad_records(next(train_iter)),
                                             batch_sharding)

  # ---- length: config.train.time_budget_s sizes a fresh run from the measured
  # step speed (training.choose_length); the schedule follows the length --------
  # (The probe's batch bypasses bad_records: it is read again for step 1.)
  if training.choose_length(config, workdir, training.measure_with(
      train_step, state, train_iter,
      lambda: pipeline.global_batch(next(train_iter), batch_sharding))):
    task = training.tokenizer_task(config)
    train_step = training.jit_step(task, state_shardings, mesh, step_rng)

  # ---- restore: a fresh stage 2 starts from the stage-1 params (fresh
  # optimizer, step 0); on resume the stage-2 checkpoint wins ------------------
  def fresh_start(state):
    if not config.train.get('init_from'):
      return state
    logging.info('params initialised from %s', config.train.init_from)
    return state.replace(params=training.init_params_from(
        config.train.init_from, state.params, mesh))

  # ---- evals -----------------------------------------------------------------
  # (None when config.train.eval_every = 0: such a run needs no eval set.)
  evaluator = (reconstruction.Evaluator(config, data, workdir, writer)
               if config.train.eval_every > 0 else None)

  # ---- loop ------------------------------------------------------------------
  per_step = config.data.global_batch_size * config.model.latent_frames
  return training.run_loop(
      config, workdir, writer, state=state, train_step=train_step,
      train_iter=train_iter, next_batch=next_batch,
      evaluate=evaluator and evaluator.run,
      fresh_start=fresh_start, per_step={'latent_frames_per_sec': per_step},
      extra_metrics=bad_records.metrics, finished_table='psnr_{step}.md')


def check_inputs(config, workdir: str):
  """Every input of the run, checked before anything is written into the
  workdir: the data (-> pipeline.Data; the demo set is built under
  config.data.root on first use), the REPA teacher's weights and, on a fresh
  start, the stage-1 workdir of train.init_from."""
  distilled = tokenizer_lib.is_distilled(config.model)
  init_from = config.train.get('init_from')
  resume = bool(checkpoint.finished_steps(workdir))
  if distilled and not resume:
    if not init_from:
      raise errors.InputError(
          'a distillation stage (config.model.step_conditioning) needs its '
          'teacher, but config.train.init_from names none: pass '
          '--config.train.init_from=DIR, the --workdir of a trained tokenizer '
          '(or of configs/convert_official.py)')
    adopt_teacher_model(config, checkpoint.check_workdir(
        init_from, 'train_tokenizer', field='train.init_from')[2])
  # A token structure the config contradicts (a grid K that is not h * w,
  # flat-1D tokens with frame conditioning) before the data is even built.
  tokenizer_lib.check_structure(config.model)
  data = training.resolve_data(config.data)
  if data.manifest.get('chunks'):
    raise errors.InputError(
        f'config.data.train_pattern={data.train_pattern!r} holds '
        f'{data.manifest["chunks"]["num_frames"]}-frame clips stored chunk '
        'by chunk (for tokenize_dataset and long-video AR); the tokenizer '
        'trains on 17-frame clips: encode the videos with num_frames=17')
  features.check(config.model)
  stage2 = 'encoder' in tuple(config.optim.get('freeze', ()))
  if resume:
    return data  # a resume: the workdir's checkpoint wins over init_from
  if stage2 and not init_from:
    raise errors.InputError(
        'the encoder is frozen (stage 2) but config.train.init_from names no '
        'stage-1 workdir to start from: pass --config.train.init_from=DIR, '
        'the --workdir of a finished stage-1 run')
  if init_from:
    checkpoint.check_workdir(init_from, 'train_tokenizer',
                             field='train.init_from')
  return data


def adopt_teacher_model(config, teacher) -> None:
  """A distilled student's model is its teacher's (plus the step table):
  every model field but defaults.STUDENT_OWN_FIELDS is taken from the
  teacher's config (a stage-2, grid or converted release teacher alike)."""
  if tokenizer_lib.is_distilled(teacher.model):
    raise errors.InputError(
        f'config.train.init_from={config.train.init_from!r} is a distilled '
        'student; distil from the tokenizer it was distilled from')
  changed = []
  for key, value in teacher.model.items():
    if key in defaults.STUDENT_OWN_FIELDS or key not in config.model:
      continue
    value = tuple(value) if isinstance(value, list) else value
    if config.model[key] != value:
      changed.append(f'{key}={value!r}')
      config.model[key] = value
  if changed:
    logging.info('distillation: the student takes its teacher\'s model '
                 'fields %s', ', '.join(changed))


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
