"""Trains the AR generator on VideoFlexTok token records, in phases.

    mesh -> data -> model -> shard -> step -> restore -> evals -> loop

    python -m vftok.main --config=configs/ar_c2v_k600.py --workdir=DIR \
      --config.data.train_pattern='/data/k600_tokens/train-*' \
      --config.tokenizer.checkpoint=/ckpt/tokenizer_k600

The same script runs the CPU demo (configs/ar_demo.py: data.kind =
'demo_tokens' tokenizes the embedded demo set with the tokenizer checkpoint
on first use) and the paper's 2.29B model. Everything written to the workdir:
  config.json            the resolved config (sample_ar reads it)
  checkpoints/<step>/    Orbax: train state + Grain iterator state
  events / logs          CLU metrics: loss, accuracy, lr, tokens/s, ...
  demo_tokens/           demo_tokens only: the token records (cache)
  samples_<step>.png     one row per condition x token budget
  samples_<step>_n<n>.gif / .mp4   the samples as video, per budget
  samples_<step>.npz     the sampled tokens

Text conditioning: captions (the records' `caption`) are encoded on the host
by the frozen, pluggable text encoder (config.text; models/text_encoders.py)
per batch, with a per-caption cache, and enter the jitted step as text_emb
[B, Lt, D] + text_mask [B, Lt]. (Token records have no embedding field: the
record schema, data/records.py, holds only tokens and scalars.)
"""
import os
import time

from absl import logging
from clu import periodic_actions
import jax
import ml_collections
import numpy as np

from vftok import api
from vftok import ar_render
from vftok import ar_train_state
from vftok import checkpoint
from vftok import sharding
from vftok.data import pipeline
from vftok.data import records
from vftok.models import ar
from vftok.models import layers


def run(config, workdir: str, writer=None):
  """Trains until config.train.total_steps (resuming if the workdir has a
  checkpoint); returns the final train state."""
  writer = api.start_workdir(config, workdir, writer)
  mc = ar_train_state.model_config(config)

  # ---- mesh ------------------------------------------------------------------
  mesh = sharding.make_mesh(config.mesh)
  logging.info('mesh: %s', dict(mesh.shape))
  gbs = config.data.global_batch_size
  if gbs % mesh.size:
    raise ValueError(f'config.data.global_batch_size={gbs} must be divisible '
                     f'by the {mesh.size} devices of the mesh')

  # ---- data ------------------------------------------------------------------
  pattern = token_records(config, workdir)
  num_frames, budget = _check_records(config, mc, pattern)
  from_records = mc.text_dim and config.text.get('source', 'encoder') == 'records'
  fields = ('tokens', 'label') + (
      (('caption', 'text_emb', 'text_mask') if from_records else ('caption',))
      if mc.text_dim else ())
  train_iter = pipeline.make_token_iterator(
      config.data, pattern, fields=fields, process_index=jax.process_index(),
      process_count=jax.process_count())
  bad_records = pipeline.bad_record_counter(config.data, pattern,
                                            jax.process_count())
  batch_sharding = sharding.batch_sharding(mesh)
  encoder = ar_train_state.load_text_encoder(config)
  embed = (ar_train_state.CaptionEmbedder(encoder, config.text.max_length,
                                          config.text.cache_size)
           if encoder is not None else None)

  # ---- model -----------------------------------------------------------------
  model, tx, schedule = ar_train_state.build(config)
  init_fn = ar_train_state.make_init_fn(model, tx)

  # ---- shard: state created sharded, never whole on one device -------------
  rng = jax.random.key(config.seed)
  init_rng, step_rng = jax.random.split(rng)
  state, state_shardings = sharding.create_sharded_state(init_fn, init_rng,
                                                         mesh)
  _log_param_counts(state.params, writer)

  # ---- step ------------------------------------------------------------------
  step_fn = ar_train_state.make_train_step(
      model, tx, schedule, order=config.order,
      cond_dropout=float(config.cond_dropout))
  train_step = jax.jit(
      step_fn,
      in_shardings=(state_shardings, batch_sharding, sharding.replicated(mesh)),
      out_shardings=(state_shardings, sharding.replicated(mesh)),
      donate_argnums=0)

  # ---- restore ---------------------------------------------------------------
  ckpt = checkpoint.Checkpointer(
      os.path.join(workdir, ar_train_state.CHECKPOINT_DIR),
      keep=config.train.keep_checkpoints,
      save_every=config.train.checkpoint_every)
  restored, start = ckpt.restore(checkpoint.abstract_like(state),
                                 data_iter=train_iter)
  if restored is not None:
    state = restored
    logging.info('resumed from step %d', start)
  guard = checkpoint.PreemptionGuard()

  # ---- evals -----------------------------------------------------------------
  sampler = Sampler(config, workdir, writer, model, embed, num_frames, budget)

  # ---- loop ------------------------------------------------------------------
  total = config.train.total_steps
  tokens_per_step = gbs * num_frames * budget
  report = periodic_actions.ReportProgress(num_train_steps=total,
                                           writer=writer)
  step = start
  t_last, step_last = time.time(), step
  try:
    while step < total:
      ckpt.check()  # a failed background save stops training here
      batch = host_batch(bad_records(next(train_iter)), mc, budget, embed)
      state, metrics = train_step(
          state, pipeline.global_batch(batch, batch_sharding), step_rng)
      step += 1
      report(step)
      if step % config.train.log_every == 0 or step == total:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        dt = time.time() - t_last
        metrics['steps_per_sec'] = (step - step_last) / dt
        metrics['tokens_per_sec'] = metrics['steps_per_sec'] * tokens_per_step
        metrics.update(bad_records.metrics())
        writer.write_scalars(step, metrics)
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
      every = config.train.eval_every
      if every > 0 and (step % every == 0 or step == total):
        with report.timed('eval'):
          sampler.run(step, state.params)
        t_last = time.time()  # sampling time is not training throughput
    ckpt.wait()
  finally:
    guard.close()
    ckpt.close()  # quiet after a failed save (already raised)
    writer.flush()
  return state


# ---- data --------------------------------------------------------------------

def token_records(config, workdir: str) -> str:
  """The glob of the token records to train on; demo_tokens builds them."""
  d = config.data
  if d.kind == 'records':
    if not d.train_pattern or not records.expand(d.train_pattern):
      raise ValueError(f'config.data.train_pattern={d.train_pattern!r} '
                       'matches no token record files')
    return d.train_pattern
  if d.kind != 'demo_tokens':
    raise ValueError(f"config.data.kind={d.kind!r}: 'records' or "
                     "'demo_tokens'")
  cache = d.token_cache or os.path.join(workdir, 'demo_tokens')
  if not os.path.exists(os.path.join(cache, records.MANIFEST)):
    if jax.process_index() == 0:
      tokenize_demo(config, cache)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices('demo_tokens')
  return os.path.join(cache, 'train-*.array_record')


def tokenize_demo(config, out_dir: str, tokenizer=None):
  """The embedded demo set's training clips -> token records in out_dir,
  through jobs/tokenize_dataset.py (its normalisation, sharding, manifest)."""
  from vftok.jobs import tokenize_dataset  # pylint: disable=g-import-not-at-top
  if not config.tokenizer.checkpoint:
    raise ValueError("data.kind='demo_tokens' needs config.tokenizer."
                     'checkpoint: a trained tokenizer workdir')
  t0 = time.time()
  tok = tokenizer or load_tokenizer(config)
  latents = ar_render.latent_data(config, tok)
  tcfg = ml_collections.ConfigDict(dict(
      job='tokenize_dataset', input=latents.train_pattern,
      tokenizer_workdir=config.tokenizer.checkpoint,
      tokenizer_step=int(config.tokenizer.step), stats_from='', normalize='',
      split='train', batch_size=32, worker_index=0, worker_count=1,
      finalize=False, log_every_s=30.0))
  manifest = tokenize_dataset.run(tcfg, out_dir, tokenizer=tok)
  logging.info('demo set tokenized in %.1fs: %d records in %s',
               time.time() - t0, manifest['counts']['train'], out_dir)
  return manifest


def load_tokenizer(config):
  step = None if config.tokenizer.step < 0 else int(config.tokenizer.step)
  return api.Tokenizer.from_checkpoint(config.tokenizer.checkpoint, step)


def _check_records(config, mc: ar.ARConfig, pattern: str):
  """-> (T, n): latent frames and tokens per frame trained on."""
  # Checked: a damaged first record is named (or skipped) like any other.
  source = pipeline.CheckedSource(
      records.expand(pattern), records.validate_token_example,
      skip=bool(config.data.get('skip_bad_records', False)))
  first = source[0]
  t, k = np.asarray(first['tokens']).shape
  n = int(config.data.tokens_per_frame) or k
  if not 1 <= n <= k:
    raise ValueError(f'config.data.tokens_per_frame={n}: the records hold '
                     f'{k} tokens per frame')
  problems = []
  if t > mc.num_frames:
    problems.append(f'{t} latent frames > model.num_frames={mc.num_frames}')
  if n > mc.tokens_per_frame:
    problems.append(f'{n} tokens per frame > model.tokens_per_frame='
                    f'{mc.tokens_per_frame}')
  if t * n > mc.seq_len:
    problems.append(f'{t} x {n} tokens > model.seq_len={mc.seq_len}')
  if mc.text_dim and 'caption' not in first:
    problems.append('the model is text-conditioned but records have no '
                    'caption')
  if mc.text_dim and config.text.get('source', 'encoder') == 'records':
    if 'text_emb' not in first:
      problems.append("config.text.source='records' but the records hold no "
                      'text_emb (tokenize_dataset with config.text_encoder)')
    elif first['text_emb'].shape[-1] != mc.text_dim:
      problems.append(f'records hold {first["text_emb"].shape[-1]}-d text '
                      f'embeddings, model.text_dim={mc.text_dim}')
  if problems:
    raise ValueError(f'token records {pattern!r} do not fit the model: ' +
                     '; '.join(problems))
  return t, n


def host_batch(batch, mc: ar.ARConfig, budget: int, embed=None):
  """A Grain batch -> the step's arrays (prefix of `budget` tokens per frame,
  captions encoded), checked where a bad value would fail silently on
  device (an out-of-range class or token id is clamped by the gather)."""
  tokens = np.asarray(batch['tokens'])[:, :, :budget]
  if tokens.min() < 0 or tokens.max() >= mc.vocab_size:
    raise ValueError(f'token ids in [{tokens.min()}, {tokens.max()}] are '
                     f'outside the vocabulary [0, {mc.vocab_size})')
  out = dict(tokens=tokens, label=np.asarray(batch['label'], np.int32))
  if mc.num_classes and out['label'].max() >= mc.num_classes:
    raise ValueError(f'class label {out["label"].max()} >= '
                     f'model.num_classes={mc.num_classes}')
  if mc.text_dim and 'text_emb' in batch:
    # Precomputed in the records (config.text.source='records').
    out['text_emb'] = np.asarray(batch['text_emb'], np.float32)
    out['text_mask'] = np.asarray(batch['text_mask'], bool)
  elif mc.text_dim:
    out['text_emb'], out['text_mask'] = embed(batch['caption'])
  return out


# ---- evals -------------------------------------------------------------------

class Sampler:
  """Samples each condition at every budget with the KV cache, decodes with
  the tokenizer and codec, writes samples_<step>.* and logs tokens/s."""

  def __init__(self, config, workdir, writer, model, embed, num_frames,
               budget):
    self.config, self.workdir, self.writer = config, workdir, writer
    self.model, self.embed, self.num_frames = model, embed, num_frames
    e, mc = config.eval, model.config
    self.budgets = [int(n) for n in e.budgets if int(n) <= budget]
    if len(self.budgets) < len(e.budgets):
      logging.warning('eval.budgets %s: only %s fit the %d trained tokens '
                      'per frame', tuple(e.budgets), self.budgets, budget)
    if mc.text_dim:
      self.conditions = ar_render.caption_conditions(e.captions)
    elif mc.num_classes:
      classes = list(e.classes) or list(range(min(mc.num_classes,
                                                  e.max_classes)))
      self.conditions = ar_render.class_conditions(
          classes, tuple(e.get('class_names', ())))
    else:
      self.conditions = [ar_render.Condition('uncond')]
    if not self.conditions and config.train.eval_every > 0:
      raise ValueError('a text-conditioned model samples config.eval.'
                       'captions during training: set them (or '
                       'train.eval_every=0)')
    self.decoder = None

  def _decoder(self):
    if self.decoder is None and self.config.tokenizer.checkpoint:
      e = self.config.eval
      tok = load_tokenizer(self.config)
      self.decoder = ar_render.Decoder(
          tok, ar_render.latent_data(self.config, tok), e.decode_steps,
          e.decode_guidance, self.config.seed)
    return self.decoder

  def run(self, step: int, params):
    e = self.config.eval
    tokens, seconds = ar_render.sample_tokens(
        self.model, ar_render.single_device(params['params']),
        self.conditions, self.budgets, e.samples_per_condition,
        seed=self.config.seed + step, num_frames=self.num_frames,
        order=self.config.order, embed_captions=self.embed,
        cfg_scale=e.cfg_scale, temperature=e.temperature, top_k=e.top_k,
        top_p=e.top_p)
    rows = len(self.conditions) * e.samples_per_condition
    scalars = {f'sample/tokens_per_sec_n{n}':
               rows * self.num_frames * n / seconds[n] for n in self.budgets}
    self.writer.write_scalars(step, scalars)
    logging.info('sampling at step %d (the first includes compilation): %s',
                 step, {k: round(v, 1) for k, v in scalars.items()})
    if jax.process_index() != 0:
      return scalars
    with records.atomic_path(
        os.path.join(self.workdir, f'samples_{step}.npz')) as tmp:
      with open(tmp, 'wb') as f:  # a file object: savez adds no suffix
        np.savez(f, **{f'n{n}': t for n, t in tokens.items()})
    decoder = self._decoder()
    if decoder is not None:
      pixels = ar_render.decode_all(decoder, tokens)
      paths = ar_render.write_outputs(
          self.workdir, f'samples_{step}', self.conditions, pixels,
          fps=e.fps, formats=tuple(e.formats))
      logging.info('wrote %s', paths)
    return scalars


def _log_param_counts(params, writer):
  p = params['params']
  counts = {'params/non_embedding': ar.count_params(p),
            'params/total': layers.count_params(p)}
  for k, v in counts.items():
    logging.info('%s: %.2fM', k, v / 1e6)
  writer.write_hparams(counts)
