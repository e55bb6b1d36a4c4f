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
by the frozen, pluggable text encoder (config.text;
models/pretrained/text_encoders.py) per batch, with a per-caption cache, and
enter the jitted step as text_emb [B, Lt, D] + text_mask [B, Lt]. With
config.text.source='records' the embeddings come precomputed from the token
records instead (tokenize_dataset with config.text_encoder stores them).
"""
import os
import time

from absl import logging
import jax
import ml_collections
import numpy as np

from vftok import checkpoint
from vftok import errors
from vftok import sharding
from vftok import training
from vftok.api import generator
from vftok.api import tokenizer as tokenizer_api
from vftok.data import pipeline
from vftok.data import chunks
from vftok.data import demo
from vftok.data import records
from vftok.data import tokens as token_records_lib
from vftok.models import ar
from vftok.models import layers
from vftok.models import tokenizer as tokenizer_lib
from vftok.models.pretrained import text_encoders


def run(config, workdir: str, writer=None):
  """Trains until config.train.total_steps (resuming if the workdir has a
  checkpoint); returns the final train state."""
  mc = ar.ARConfig.from_config_dict(config.model)
  # ---- inputs: found (or one errors.InputError) before config.json is
  # written; the demo's token cache is built from the checked tokenizer ------
  check_inputs(config, workdir)
  encoder = text_encoders.from_config(config)
  pattern = token_records(config, workdir)
  num_frames, budget = _check_records(config, mc, pattern)
  writer = training.start_workdir(config, workdir, writer)

  # ---- mesh ------------------------------------------------------------------
  mesh = sharding.make_mesh(config.mesh)
  logging.info('mesh: %s', dict(mesh.shape))
  gbs = config.data.global_batch_size
  if gbs % mesh.size:
    raise ValueError(f'config.data.global_batch_size={gbs} must be divisible '
                     f'by the {mesh.size} devices of the mesh')

  # ---- data ------------------------------------------------------------------
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
  embed = (text_encoders.CaptionEmbedder(encoder, config.text.max_length,
                                         config.text.cache_size)
           if encoder is not None else None)

  # ---- model -----------------------------------------------------------------
  task = training.ar_task(config)

  # ---- shard: state created sharded, never whole on one device -------------
  state, state_shardings, step_rng = training.create_state(task, config.seed,
                                                          mesh)
  _log_param_counts(state.params, writer)

  # ---- step ------------------------------------------------------------------
  train_step = training.jit_step(task, state_shardings, mesh, step_rng)
  next_batch = lambda: pipeline.global_batch(
      host_batch(bad_records(next(train_iter)), mc, budget, embed),
      batch_sharding)

  # ---- evals -----------------------------------------------------------------
  sampler = Sampler(config, workdir, writer, task.model, embed, num_frames,
                    budget)

  # ---- restore + loop --------------------------------------------------------
  return training.run_loop(
      config, workdir, writer, state=state, train_step=train_step,
      train_iter=train_iter, next_batch=next_batch, evaluate=sampler.run,
      per_step={'tokens_per_sec': gbs * num_frames * budget},
      extra_metrics=bad_records.metrics)


# ---- data --------------------------------------------------------------------

def check_inputs(config, workdir: str):
  """The run's inputs, checked before anything is written or built: the
  token records (data.kind='records') and the tokenizer workdir (it
  tokenizes the demo set and decodes samples to video)."""
  d = config.data
  if d.kind not in ('records', 'demo_tokens'):
    raise errors.InputError(f"config.data.kind={d.kind!r}: 'records' or "
                            "'demo_tokens'")
  if d.kind == 'records':
    records.require_files('data.train_pattern', d.train_pattern,
                          'token record',
                          records.make_tokens_hint('data.train_pattern'))
  cached = d.kind == 'demo_tokens' and os.path.exists(os.path.join(
      _token_cache(config, workdir), records.MANIFEST))
  if d.kind == 'demo_tokens' and not (cached or config.tokenizer.checkpoint):
    raise errors.InputError(
        "data.kind='demo_tokens' needs config.tokenizer.checkpoint: pass "
        '--config.tokenizer.checkpoint=DIR, the --workdir of a '
        f'train_tokenizer run; {checkpoint.MAKE_WORKDIR["train_tokenizer"]}')
  if config.tokenizer.checkpoint:
    _, _, tok_config = checkpoint.check_workdir(
        config.tokenizer.checkpoint, 'train_tokenizer',
        int(config.tokenizer.step), field='tokenizer.checkpoint')
    frames = int(config.data.get('clip_frames', 0))
    if d.kind == 'demo_tokens' and frames > chunks.CHUNK_FRAMES:
      tokenizer_lib.require_time_causal(tok_config.model, 'a long video')
      if not tokenizer_lib.has_frame_conditioning(tok_config.model):
        raise errors.InputError(
            f'config.data.clip_frames={frames}: samples of long clips decode '
            'chunk by chunk, each conditioned on the one before; '
            f'tokenizer.checkpoint={config.tokenizer.checkpoint!r} has no '
            'frame-conditioned decoder (configs/demo.py:stage2 makes one)')
    grid = tokenizer_lib.is_grid(tok_config.model)
    if grid != (config.order == 'raster'):
      raise errors.InputError(
          f'config.order={config.order!r} with a '
          f"{'grid' if grid else 'VideoFlexTok'} tokenizer "
          f'(tokenizer.checkpoint): grid tokens are generated in raster '
          "order (configs' :grid variants), VideoFlexTok's in 'time_first' "
          "(or 'depth_first')")


def token_records(config, workdir: str) -> str:
  """The glob of the token records to train on; demo_tokens builds them."""
  d = config.data
  if d.kind == 'records':
    return d.train_pattern
  cache = _token_cache(config, workdir)
  if not os.path.exists(os.path.join(cache, records.MANIFEST)):
    if jax.process_index() == 0:
      tokenize_demo(config, cache)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices('demo_tokens')
  return os.path.join(cache, 'train-*.array_record')


def _token_cache(config, workdir: str) -> str:
  """demo_tokens: where the token records are (built on first use)."""
  return config.data.token_cache or os.path.join(workdir, 'demo_tokens')


def tokenize_demo(config, out_dir: str, tokenizer=None):
  """The embedded demo set's training clips -> token records in out_dir
  (data/tokens.py: the normalisation, sharding and manifest of
  tokenize_dataset)."""
  t0 = time.time()
  tok = tokenizer or load_tokenizer(config)
  latents = generator.latent_data(config, tok)
  pattern, stats_from = latents.train_pattern, ''
  frames = int(config.data.get('clip_frames', 0))
  if frames and frames != tok.config.data.num_frames:
    # Long clips of the same videos, encoded with the tokenizer's codec and
    # normalised with its set's stats: the latents it was trained on.
    base = os.path.dirname(latents.codec_path)
    b = records.read_manifest(base).get('build', {})
    long_set = demo.ensure_demo_dataset(
        f'{base.rstrip(os.sep)}-clips{frames}', frames,
        tok.config.data.resolution, seed=b.get('seed', 0),
        max_clips_per_video=b.get('max_clips_per_video', 256),
        eval_clips_per_video=b.get('eval_clips_per_video', 8),
        clips_per_shard=b.get('clips_per_shard', 256), repa_teacher='',
        codec_from=base)
    pattern, stats_from = long_set.train_pattern, base
  tcfg = ml_collections.ConfigDict(dict(
      job='tokenize_dataset', input=pattern,
      tokenizer_workdir=config.tokenizer.checkpoint,
      tokenizer_step=int(config.tokenizer.step), stats_from=stats_from,
      normalize='', split='train', batch_size=32, worker_index=0,
      worker_count=1, finalize=False, log_every_s=30.0))
  manifest = token_records_lib.tokenize_records(tcfg, out_dir, tok,
                                                tokenizer_step=tok.step)
  logging.info('demo set tokenized in %.1fs: %d records in %s',
               time.time() - t0, manifest['counts']['train'], out_dir)
  return manifest


def load_tokenizer(config):
  step = None if config.tokenizer.step < 0 else int(config.tokenizer.step)
  return tokenizer_api.Tokenizer.from_checkpoint(config.tokenizer.checkpoint,
                                                step)


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
    raise errors.InputError(f'token records {pattern!r} do not fit the '
                            'model: ' + '; '.join(problems))
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
    self.conditions = []
    if config.train.eval_every > 0:  # samples config.eval's prompts
      self.conditions = generator.conditions(
          mc, classes=e.classes, captions=e.captions,
          class_names=e.get('class_names', ()), field='config.eval',
          default_classes=range(min(mc.num_classes, e.max_classes)))
    self.decoder = None

  def _decoder(self):
    if self.decoder is None and self.config.tokenizer.checkpoint:
      e = self.config.eval
      tok = load_tokenizer(self.config)
      self.decoder = generator.Decoder(
          tok, generator.latent_data(self.config, tok), e.decode_steps,
          e.decode_guidance, self.config.seed)
    return self.decoder

  def run(self, step: int, params):
    e = self.config.eval
    tokens, seconds = generator.sample_tokens(
        self.model, sharding.single_device(params['params']),
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
      pixels = generator.decode_all(decoder, tokens)
      paths = generator.write_outputs(
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
