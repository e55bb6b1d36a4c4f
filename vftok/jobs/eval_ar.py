"""Evaluates AR generation over token budgets: gFVD and class score (Fig. 7).

    python -m vftok.main --config=configs/eval_ar.py --workdir=OUT \
        --config.ar_workdir=/tmp/ar_demo \
        --config.classifier.path=/tmp/vftok_classifier/classifier.npz

For every AR CFG scale and every budget n (tokens per latent frame; in the
time-first order a budget-n sequence is a prefix of the full one, so one
model serves all budgets):

  1. sample `samples_per_condition` token sequences per condition (every
     class of a class-conditioned model, or the captions of a text model)
     with the KV cache, the batch sharded over all devices;
  2. decode them with the tokenizer's flow decoder (sharded, noise per sample
     from (seed, sample index)) and the data's codec to uint8 pixels;
  3. gFVD: Fréchet distance of I3D features of the samples vs the real
     held-out clips of the tokenizer's data (config.fvd: the standard 400-d
     logits of 16 frames at 224 x 224);
  4. class score: mean p(conditioning class | sample) under a pluggable video
     classifier (config.classifier; the paper uses UMT-L on Kinetics-600, the
     demo the I3D softmax regression of configs/train_classifier.py).

Writes eval_ar.csv / .md / .json, eval_ar.png (gFVD and class score vs
budget, one line per CFG scale; dashed: the real clips' class score),
samples_cfg<s>.png (one row per condition x budget) and TensorBoard scalars
(step = budget). Throughput (seconds per video for AR sampling at each
budget, decoding, I3D and the classifier; steady state, compile excluded)
is printed with the table.

Determinism: the same config and seed give identical numbers. Sample i of a
budget draws its tokens from fold_in(fold_in(key(seed), n), batch) and its
decoder noise from (seed, i); every CFG scale sees the same keys (paired).
"""
import os
import time
from typing import Dict, Sequence

from absl import logging
from clu import metric_writers
import jax
import ml_collections
import numpy as np

from vftok.api import generator
from vftok.models import ar_sampling
from vftok import api
from vftok import checkpoint
from vftok import training
from vftok.models.pretrained import text_encoders
from vftok.evals import media
from vftok import sharding
from vftok.models import latent_codecs
from vftok.data import pipeline
from vftok.data import records
from vftok.evals import budget_plot
from vftok.evals import class_score
from vftok.evals import eval_data
from vftok.evals import frechet
from vftok.evals import timing as timing_lib
from vftok.evals import video_features
from vftok.models import ar

COLUMNS = ('budget', 'cfg_scale', 'tokens_per_video', 'gfvd', 'class_score',
           'sec_per_video_ar', 'sec_per_video_decode')


# ---------------------------------------------------------------- sampling ---

class ShardedSampler:
  """AR tokens for many conditions, in batches split over `mesh`."""

  def __init__(self, model, params, mesh, batch_size: int, timer, *,
               num_frames: int, order: str, embed_captions=None, **sampling):
    self.model, self.num_frames, self.order = model, num_frames, order
    self.batch_size = -(-batch_size // mesh.size) * mesh.size
    self.bs = sharding.batch_sharding(mesh)
    self.params = jax.device_put(params, sharding.replicated(mesh))
    self.embed_captions, self.sampling = embed_captions, sampling
    self.timer = timer

  def _inputs(self, rows: Sequence[generator.Condition]) -> Dict:
    rows = list(rows) + [rows[-1]] * (self.batch_size - len(rows))
    put = lambda x: sharding.put_global(np.asarray(x), self.bs)
    if rows[0].class_label is not None:
      return {'class_labels': put(np.asarray([c.class_label for c in rows],
                                             np.int32))}
    if rows[0].caption is not None:
      emb, mask = self.embed_captions([c.caption for c in rows])
      return {'text_emb': put(emb), 'text_mask': put(mask)}
    return {'batch_size': self.batch_size}

  def __call__(self, rows: Sequence[generator.Condition], n: int, seed: int,
               cfg_scale: float) -> np.ndarray:
    """-> int32 [len(rows), T, n]; timed as `ar/n<n>_cfg<scale>`."""
    out = []
    for b, start in enumerate(range(0, len(rows), self.batch_size)):
      chunk = rows[start:start + self.batch_size]
      key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), n), b)
      # One compilation per budget and guided-or-not.
      tokens = self.timer(
          f'ar/n{n}_cfg{cfg_scale:g}', ar_sampling.sample, self.model,
          self.params, key, num_frames=self.num_frames,
          tokens_per_frame_budget=n, order=self.order, cfg_scale=cfg_scale,
          compile_key=('ar', n, cfg_scale != 1.0), **self.sampling,
          **self._inputs(chunk))
      out.append(sharding.fetch(tokens)[:len(chunk)])
    return np.concatenate(out)


# --------------------------------------------------------------------- run ---

def _step(value):
  return None if value is None or int(value) < 0 else int(value)


def _check(config, tok, mc, devices: int):
  if config.batch_size < 1 or config.batch_size % devices:
    raise ValueError(f'config.batch_size={config.batch_size} must be a '
                     f'positive multiple of the {devices} devices')
  if config.samples_per_condition < 1:
    raise ValueError('config.samples_per_condition must be >= 1')
  limit = min(tok.tokens_per_frame, mc.tokens_per_frame)
  budgets = sorted({int(n) for n in config.budgets}) or [
      2 ** i for i in range(limit.bit_length()) if 2 ** i <= limit]
  if budgets[0] < 1 or budgets[-1] > limit:
    raise ValueError(f'config.budgets={tuple(config.budgets)} must be in [1, '
                     f'{limit}] (tokens per latent frame of the tokenizer and '
                     'the AR model)')
  if int(np.prod(tok.levels)) > mc.vocab_size:
    raise ValueError(f'the tokenizer has {int(np.prod(tok.levels))} codes, '
                     f'the AR vocabulary only {mc.vocab_size}')
  scales = [float(s) for s in config.cfg_scales]
  if not scales:
    raise ValueError('config.cfg_scales must not be empty')
  return budgets, scales


def real_clips(config, tok_config):
  """The reference set: real held-out clips (uint8 frames, labels, captions)."""
  ref = ml_collections.ConfigDict(dict(
      data_root=config.data_root, eval_pattern=config.eval_pattern,
      num_clips=config.num_real_clips, batch_size=config.batch_size))
  data, n, batches = eval_data.eval_batches(
      ref, tok_config, pipeline.EVAL_FIELDS + ('caption',))
  frames, labels, captions = [], [], []
  for batch in batches:
    frames.append(media.to_uint8(batch['frames']))
    labels.append(np.asarray(batch['label']))
    if 'caption' in batch:
      captions += [str(c) for c in batch['caption']]
  return data, np.concatenate(frames)[:n], np.concatenate(labels)[:n], captions


def run(config, workdir: str, writer=None) -> Dict:
  """Runs the evaluation; -> {'info', 'rows', 'real', 'timing'}."""
  t_start = time.perf_counter()
  # Inputs (AR and tokenizer workdirs, real clips, classifier, caption
  # encoder) are loaded before the workdir is made: a missing one is one
  # errors.InputError.
  ar_dir, ar_step, ar_config = checkpoint.check_workdir(
      config.ar_workdir, 'train_ar', config.ar_step, field='ar_workdir')
  mc = ar.ARConfig.from_config_dict(ar_config.model)
  params, ar_step = training.restore_params(ar_config, ar_dir, ar_step)
  tok_dir = config.tokenizer_workdir or ar_config.tokenizer.checkpoint
  mesh = sharding.data_mesh()
  tok = api.Tokenizer.from_checkpoint(tok_dir, config.tokenizer_step,
                                      field='tokenizer_workdir', mesh=mesh)
  tok_step = tok.step
  budgets, scales = _check(config, tok, mc, mesh.size)

  data, real, labels, captions = real_clips(config, tok.config)
  # Class models: config.classes or every class; text models:
  # config.captions or the captions of the real evaluation clips.
  conditions = generator.conditions(
      mc, classes=config.classes, captions=config.captions,
      class_names=ar_config.eval.get('class_names', ()),
      default_captions=lambda: captions)
  rows = [c for c in conditions for _ in range(config.samples_per_condition)]
  classifier = None
  if config.classifier.path and mc.num_classes:
    classifier = class_score.make_classifier(config.classifier.factory,
                                             config.classifier.path)
    if len(classifier.class_names) != mc.num_classes:
      raise ValueError(f'the classifier knows {len(classifier.class_names)} '
                       f'classes, the AR model {mc.num_classes}')
  encoder = text_encoders.from_config(ar_config)
  records.makedirs(workdir)
  writer = writer or metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)

  timer = timing_lib.Timer()
  sampler = ShardedSampler(
      ar.ARTransformer(mc), params['params'], mesh, config.batch_size, timer,
      num_frames=int(tok.latent_shape[0]) // int(tok.config.model.patch_size[0]),
      order=ar_config.order,
      embed_captions=(text_encoders.CaptionEmbedder(
          encoder, ar_config.text.max_length) if encoder else None),
      temperature=config.temperature, top_k=config.top_k, top_p=config.top_p)
  d = config.decode
  decode_args = dict(steps=d.steps, guidance=d.guidance,
                     guidance_scale=d.guidance_scale,
                     **{f'apg_{k}': v for k, v in d.apg.items()})
  codec = latent_codecs.load_codec(data)
  denormalize = pipeline.make_denormalizer(data)
  features = video_features.I3DFeatures(
      config.fvd.layer, config.fvd.resolution, config.fvd.num_frames,
      config.batch_size, mesh)

  mu, sigma = frechet.gaussian_stats(features(real))
  real_score = float('nan')
  if classifier is not None:
    real_score = float(np.mean(class_score.true_class_probs(
        classifier(real), labels))) if labels.min() >= 0 else float('nan')
  want = np.asarray([c.class_label if c.class_label is not None else -1
                     for c in rows])
  ids = np.arange(len(rows))
  results, grids, classifier_seconds = [], {}, 0.0
  for s in scales:
    for n in budgets:
      tokens = sampler(rows, n, config.seed, s)
      pixels, decoded = [], timer.seconds.get(f'detokenize/n{n}', 0.0)
      for start in range(0, len(rows), config.batch_size):
        chunk = video_features.pad_rows(tokens[start:start + config.batch_size],
                                        config.batch_size)
        noise = tok.clip_noise(video_features.pad_rows(
            ids[start:start + config.batch_size], config.batch_size),
                               config.seed)
        # Budgets share one compilation: tokens are padded with the mask token.
        lat = sharding.fetch(timer(f'detokenize/n{n}', tok.detokenize,
                                   chunk, noise=noise,
                                   compile_key='detokenize', **decode_args))
        m = min(config.batch_size, len(rows) - start)
        pixels.append(media.to_uint8(codec.decode(denormalize(lat[:m]))))
      pixels = np.concatenate(pixels)
      gfvd = frechet.frechet_distance(
          mu, sigma, *frechet.gaussian_stats(features(pixels)))
      score = float('nan')
      if classifier is not None:
        t0 = time.perf_counter()
        score = float(np.mean(class_score.true_class_probs(classifier(pixels),
                                                           want)))
        classifier_seconds += time.perf_counter() - t0
      decoded = timer.seconds[f'detokenize/n{n}'] - decoded
      results.append(dict(
          budget=n, cfg_scale=s, tokens_per_video=int(tokens[0].size),
          gfvd=gfvd, class_score=score,
          sec_per_video_ar=timer.seconds[f'ar/n{n}_cfg{s:g}'] / len(rows),
          sec_per_video_decode=decoded / len(rows)))
      if s == scales[0]:
        per = config.grid_samples
        grids[n] = np.stack([pixels[i * config.samples_per_condition:
                                    i * config.samples_per_condition + per]
                             for i in range(len(conditions))])
      logging.info('cfg %g, %d tokens/frame: gFVD %.2f, class score %.3f '
                   '(%.0f s)', s, n, gfvd, score, time.perf_counter() - t_start)

  timing = dict(
      i3d_features=features.seconds_per_clip,
      classifier=(classifier_seconds / (len(rows) * len(results))
                  if classifier is not None else float('nan')),
      compile_seconds=timer.compile_seconds + features.compile_seconds,
      wall_seconds=time.perf_counter() - t_start)
  info = dict(
      ar_workdir=os.path.abspath(config.ar_workdir), ar_step=ar_step,
      tokenizer_workdir=os.path.abspath(tok_dir), tokenizer_step=tok_step,
      conditions=[c.name for c in conditions],
      samples_per_condition=config.samples_per_condition,
      num_real_clips=int(real.shape[0]), seed=config.seed,
      temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
      decode=config.decode.to_dict(), devices=mesh.size,
      platform=jax.devices()[0].platform, features=features.description,
      classifier=config.classifier.path if classifier is not None else '')
  result = dict(info=info, rows=results,
                real=dict(class_score=real_score), timing=timing)
  if jax.process_index() == 0:
    _write(workdir, result, conditions, grids, writer)
  writer.flush()
  return result


# ------------------------------------------------------------------ output ---

def _fmt(x, digits):
  return 'n/a' if x is None or not np.isfinite(x) else f'{x:.{digits}f}'


def markdown(result) -> str:
  info, rows, t = result['info'], result['rows'], result['timing']
  has_class = any(np.isfinite(r['class_score']) for r in rows)
  head = ['tokens/frame', 'AR CFG', 'tokens/video', 'gFVD']
  head += ['class score'] if has_class else []
  head += ['s/video AR', 's/video decode']
  d = info['decode']
  lines = [
      f"# AR evaluation: {info['ar_workdir']} (step {info['ar_step']})", '',
      f"{len(info['conditions'])} conditions x {info['samples_per_condition']}"
      f" samples per budget vs {info['num_real_clips']} real held-out clips; "
      f"tokenizer {info['tokenizer_workdir']} (step {info['tokenizer_step']}),"
      f" decoded with {d['steps']} Euler steps, {d['guidance']} "
      f"{d['guidance_scale']:g}; sampling temperature {info['temperature']:g}, "
      f"top-k {info['top_k']}, top-p {info['top_p']:g}; seed {info['seed']}; "
      f"{info['devices']} {info['platform']} device(s). gFVD: "
      f"{info['features']} (FVD from few clips is biased upward: compare "
      'numbers at equal clip counts).', '',
      '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for r in rows:
    cells = [str(r['budget']), f"{r['cfg_scale']:g}",
             str(r['tokens_per_video']), _fmt(r['gfvd'], 2)]
    cells += [_fmt(r['class_score'], 3)] if has_class else []
    cells += [_fmt(r['sec_per_video_ar'], 4),
              _fmt(r['sec_per_video_decode'], 4)]
    lines.append('| ' + ' | '.join(cells) + ' |')
  if has_class:
    lines += ['', f"Class score of the real clips: "
              f"{_fmt(result['real']['class_score'], 3)} "
              f"(classifier {info['classifier']})."]
  lines += ['', 'Throughput, seconds per video (steady state, compile '
            'excluded, batch sharded over all devices): AR sampling and '
            'decoding per row above;',
            f"I3D features {t['i3d_features']:.4f}; classifier "
            f"{_fmt(t['classifier'], 4)}.", '',
            f"Compilation {t['compile_seconds']:.1f} s; wall time "
            f"{t['wall_seconds']:.1f} s."]
  return '\n'.join(lines) + '\n'


def _write(workdir, result, conditions, grids, writer):
  text = markdown(result)
  budget_plot.write_tables(workdir, 'eval_ar', result, COLUMNS, text)
  info = result['info']
  with records.atomic_path(os.path.join(workdir, 'eval_ar.png')) as tmp:
    budget_plot.plot_budget_curves(
        tmp, result['rows'], lambda r: f"AR CFG {r['cfg_scale']:g}",
        (('gfvd', 'gFVD (lower is better)'),
         ('class_score', 'class score (higher is better)')),
        reference=result['real'], reference_label='real clips',
        title=(f"{os.path.basename(info['ar_workdir'])} step "
               f"{info['ar_step']}: {len(info['conditions'])} conditions x "
               f"{info['samples_per_condition']} samples"))
  scale = result['rows'][0]['cfg_scale']
  generator.write_outputs(workdir, f'samples_cfg{scale:g}', conditions,
                          grids, formats=())
  print('\n' + text, flush=True)
  for r in result['rows']:
    tag = f"cfg{r['cfg_scale']:g}"
    scalars = {f'gfvd/{tag}': r['gfvd'],
               f'sec_per_video_ar/{tag}': r['sec_per_video_ar']}
    if np.isfinite(r['class_score']):
      scalars[f'class_score/{tag}'] = r['class_score']
    writer.write_scalars(r['budget'], scalars)
  writer.write_texts(0, {'eval_ar': text})
