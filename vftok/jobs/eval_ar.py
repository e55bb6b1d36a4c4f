"""Evaluates AR generation over token budgets: gFVD and class score (Fig. 7).

    python -m vftok.main --config=configs/eval_ar.py --workdir=OUT \
        --config.ar_workdir=/tmp/ar_demo \
        --config.classifier.path=/tmp/vftok_classifier/classifier.npz

For every AR CFG scale and every budget n (tokens per latent frame; in the
time-first order a budget-n sequence is a prefix of the full one, so one
model serves all budgets; a grid tokenizer's raster-order model has one
budget, all its tokens, on the same tokens-per-frame axis: Fig. 7; pass
cfg_scales (1.0, s) for the with / without CFG comparison of Fig. 11):

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
     demo the I3D softmax regression of configs/train_classifier.py);
     text models: the ViCLIP score, mean cosine(video, caption) under a
     pluggable scorer with the user's weights (config.viclip;
     evals/frame_scores.py).

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
from vftok import errors
from vftok import training
from vftok.models.pretrained import text_encoders
from vftok.evals import media
from vftok import sharding
from vftok.models import latent_codecs
from vftok.data import pipeline
from vftok.data import records
from vftok.evals import budget_plot
from vftok.evals import class_score
from vftok.evals import frame_scores
from vftok.evals import eval_data
from vftok.evals import frechet
from vftok.evals import timing as timing_lib
from vftok.evals import video_features
from vftok.models import ar
from vftok.models import flops as flops_lib
from vftok.models import tokenizer as tokenizer_lib

COLUMNS = ('budget', 'cfg_scale', 'decode_steps', 'tokens_per_video', 'gfvd',
           'class_score', 'viclip_score', 'gflops_per_video', 'gflops_ar', 'gflops_decode',
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

  def auto(self, rows: Sequence[generator.Condition], max_budget: int,
           seed: int, cfg_scale: float, **choice):
    """AR-chosen budgets (ar_sampling.sample_auto) -> (int32 [len(rows), T,
    max_budget], -1 past each budget; budgets int [len(rows)])."""
    tokens, budgets = [], []
    for b, start in enumerate(range(0, len(rows), self.batch_size)):
      chunk = rows[start:start + self.batch_size]
      # Apart from every fixed budget's keys (fold_in(seed, n)).
      key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed),
                                                  0x7FFFFFFF), b)
      t, k = self.timer(
          f'ar/auto_cfg{cfg_scale:g}', ar_sampling.sample_auto, self.model,
          self.params, key, num_frames=self.num_frames, max_budget=max_budget,
          order=self.order, cfg_scale=cfg_scale,
          compile_key=('ar_auto', cfg_scale != 1.0), **choice,
          **self.sampling, **self._inputs(chunk))
      tokens.append(np.asarray(t)[:len(chunk)])
      budgets.append(np.asarray(k)[:len(chunk)])
    return np.concatenate(tokens), np.concatenate(budgets)


# --------------------------------------------------------------------- run ---

def _step(value):
  return None if value is None or int(value) < 0 else int(value)


def decode_step_counts(decode_config):
  """config.decode.steps: one Euler step count or several (Fig. 12's
  decoder-steps axis: every budget is decoded at each)."""
  steps = decode_config.steps
  steps = [int(v) for v in (steps if isinstance(steps, (tuple, list))
                            else (steps,))]
  if not steps or min(steps) < 1:
    raise ValueError(f'config.decode.steps={decode_config.steps}: Euler step '
                     'counts must be >= 1')
  return steps


def _check(config, tok, mc, devices: int):
  if config.batch_size < 1 or config.batch_size % devices:
    raise ValueError(f'config.batch_size={config.batch_size} must be a '
                     f'positive multiple of the {devices} devices')
  if config.samples_per_condition < 1:
    raise ValueError('config.samples_per_condition must be >= 1')
  # Budgets up to the shorter of the tokenizer's and the AR model's frames.
  budgets = tokenizer_lib.check_budgets(tok.config.model, config.budgets,
                                        limit=mc.tokens_per_frame)
  if int(np.prod(tok.levels)) > mc.vocab_size:
    raise ValueError(f'the tokenizer has {int(np.prod(tok.levels))} codes, '
                     f'the AR vocabulary only {mc.vocab_size}')
  scales = [float(s) for s in config.cfg_scales]
  if not scales:
    raise ValueError('config.cfg_scales must not be empty')
  decode_step_counts(config.decode)
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
  if (config.get('auto_budget') or {}).get('entropy_threshold', 0) > 0 and (
      ar_config.order != 'time_first'):
    raise errors.InputError(
        'config.auto_budget: AR-chosen lengths need the time-first order '
        f'(a prefix of levels is a coarser video), not {ar_config.order!r}')

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
  viclip = None
  v = config.get('viclip') or {}
  if v.get('factory') or v.get('path'):
    if not mc.text_dim:
      raise errors.InputError('config.viclip: the ViCLIP score is for text-'
                              'conditioned AR models; this one is class-'
                              'conditioned (use config.classifier)')
    viclip = frame_scores.make_text_video_score(v.get('factory', ''),
                                                v.get('path', ''))
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
  decode_args = dict(guidance=d.guidance, guidance_scale=d.guidance_scale,
                     **{f'apg_{k}': v for k, v in d.apg.items()})
  step_counts = decode_step_counts(d)
  text_length = ar_config.text.max_length if mc.text_dim else 0
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
  auto = config.get('auto_budget') or {}
  auto_rows = []
  for s in scales:
    runs = [(n, sampler(rows, n, config.seed, s), None) for n in budgets]
    if auto.get('entropy_threshold', 0) > 0:
      # The AR's own lengths (ar_sampling.sample_auto) up to the top budget.
      tokens, chosen = sampler.auto(
          rows, budgets[-1], config.seed, s,
          entropy_threshold=auto['entropy_threshold'],
          min_budget=auto.get('min_budget', 1))
      runs.append(('auto', tokens, chosen))
    for n, tokens, chosen in runs:
      for steps in step_counts:
        name = f'detokenize/n{n}_s{steps}'
        pixels, decoded = [], timer.seconds.get(name, 0.0)
        for start in range(0, len(rows), config.batch_size):
          chunk = video_features.pad_rows(
              tokens[start:start + config.batch_size], config.batch_size)
          noise = tok.clip_noise(video_features.pad_rows(
              ids[start:start + config.batch_size], config.batch_size),
                                 config.seed)
          extra = {}
          if chosen is not None:   # AR-chosen: k per clip, -1 past it
            extra['budgets'] = video_features.pad_rows(
                chosen[start:start + config.batch_size], config.batch_size)
          # Budgets share one compilation (tokens padded with the mask token).
          lat = sharding.fetch(timer(name, tok.detokenize, chunk, noise=noise,
                                     steps=steps,
                                     compile_key=('detokenize', steps,
                                                  chosen is not None),
                                     **decode_args, **extra))
          m = min(config.batch_size, len(rows) - start)
          pixels.append(media.to_uint8(codec.decode(denormalize(lat[:m]))))
        pixels = np.concatenate(pixels)
        gfvd = frechet.frechet_distance(
            mu, sigma, *frechet.gaussian_stats(features(pixels)))
        score = float('nan')
        if classifier is not None:
          t0 = time.perf_counter()
          score = float(np.mean(class_score.true_class_probs(
              classifier(pixels), want)))
          classifier_seconds += time.perf_counter() - t0
        text_score = float('nan')
        if viclip is not None:
          text_score = float(np.mean(np.asarray(
              viclip(pixels, [c.caption for c in rows]))))
        decoded = timer.seconds[name] - decoded
        top = budgets[-1] if chosen is not None else n
        cost = flops_lib.ar_inference(
            tok.config.model, mc, top, steps, d.guidance_scale != 1.0,
            s != 1.0, text_length)
        row = dict(
            budget=n, cfg_scale=s, decode_steps=steps,
            tokens_per_video=(int(tokens[0].size) if chosen is None else
                              float(np.mean(chosen)) * tokens.shape[1]),
            gfvd=gfvd, class_score=score, viclip_score=text_score,
            gflops_per_video=(cost['ar'] + cost['decoder']) / 1e9,
            gflops_ar=cost['ar'] / 1e9, gflops_decode=cost['decoder'] / 1e9,
            sec_per_video_ar=timer.seconds[
                f'ar/auto_cfg{s:g}' if chosen is not None
                else f'ar/n{n}_cfg{s:g}'] / len(rows),
            sec_per_video_decode=decoded / len(rows))
        if chosen is not None:
          # Mean tokens per frame used, beside the fixed budgets' rows
          # (AR cost: all max-budget levels are sampled, then cut).
          auto_rows.append(dict(row, budget=float(np.mean(chosen)),
                                entropy_threshold=auto['entropy_threshold'],
                                budgets_chosen=np.bincount(
                                    chosen, minlength=top + 1).tolist()))
          continue
        results.append(row)
        if s == scales[0] and steps == step_counts[0]:
          per = min(config.grid_samples, config.samples_per_condition)
          grids[n] = np.stack([pixels[i * config.samples_per_condition:
                                      i * config.samples_per_condition + per]
                               for i in range(len(conditions))])
        logging.info('cfg %g, %s tokens/frame, %d decoder steps: gFVD %.2f, '
                     'class score %.3f (%.0f s)', s, n, steps, gfvd, score,
                     time.perf_counter() - t_start)

  timing = dict(
      i3d_features=features.seconds_per_clip,
      classifier=(classifier_seconds / (len(rows) * len(results))
                  if classifier is not None else float('nan')),
      compile_seconds=timer.compile_seconds + features.compile_seconds,
      wall_seconds=time.perf_counter() - t_start)
  info = dict(
      token_structure=tokenizer_lib.token_structure(tok.config.model),
      order=ar_config.order,
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
  if auto_rows:
    result['auto_rows'] = auto_rows
  if jax.process_index() == 0:
    _write(workdir, result, conditions, grids, writer)
  writer.flush()
  return result


# ------------------------------------------------------------------ output ---

_STRUCTURE_NAMES = {'registers': 'VideoFlexTok', 'grid': '3D-grid'}


def _fmt(x, digits):
  return 'n/a' if x is None or not np.isfinite(x) else f'{x:.{digits}f}'


def markdown(result) -> str:
  info, rows, t = result['info'], result['rows'], result['timing']
  has_class = any(np.isfinite(r['class_score']) for r in rows)
  has_viclip = any(np.isfinite(r.get('viclip_score', np.nan)) for r in rows)
  head = ['tokens/frame', 'AR CFG', 'decoder steps', 'tokens/video', 'gFVD']
  head += ['class score'] if has_class else []
  head += ['ViCLIP score'] if has_viclip else []
  head += ['GFLOPs/video (AR + decoder)', 's/video AR', 's/video decode']
  d = info['decode']
  lines = [
      f"# AR evaluation: {info['ar_workdir']} (step {info['ar_step']})", '',
      f"{_STRUCTURE_NAMES[info['token_structure']]} tokens in "
      f"{info['order'].replace('_', '-')} order; "
      f"{len(info['conditions'])} conditions x {info['samples_per_condition']}"
      f" samples per budget vs {info['num_real_clips']} real held-out clips; "
      f"tokenizer {info['tokenizer_workdir']} (step {info['tokenizer_step']}),"
      f" decoded by the flow decoder with {d['guidance']} "
      f"{d['guidance_scale']:g}; sampling temperature {info['temperature']:g}, "
      f"top-k {info['top_k']}, top-p {info['top_p']:g}; seed {info['seed']}; "
      f"{info['devices']} {info['platform']} device(s). gFVD: "
      f"{info['features']} (FVD from few clips is biased upward: compare "
      'numbers at equal clip counts).', '',
      '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for r in rows:
    cells = [str(r['budget']), f"{r['cfg_scale']:g}", str(r['decode_steps']),
             str(r['tokens_per_video']), _fmt(r['gfvd'], 2)]
    cells += [_fmt(r['class_score'], 3)] if has_class else []
    cells += [_fmt(r['viclip_score'], 4)] if has_viclip else []
    cells += [f"{r['gflops_per_video']:.3g} ({r['gflops_ar']:.3g} + "
              f"{r['gflops_decode']:.3g})",
              _fmt(r['sec_per_video_ar'], 4),
              _fmt(r['sec_per_video_decode'], 4)]
    lines.append('| ' + ' | '.join(cells) + ' |')
  if result.get('auto_rows'):
    lines += ['', 'AR-chosen budgets (ar_sampling.sample_auto: levels up to '
              'the first whose mean next-token entropy is below the '
              'threshold, up to the top budget):', '',
              '| entropy threshold (nats) | mean tokens/frame | AR CFG | '
              'decoder steps | gFVD | class score | samples per budget |',
              '|---|---|---|---|---|---|---|']
    for r in result['auto_rows']:
      counts = ', '.join(f'{k}: {c}' for k, c in enumerate(
          r['budgets_chosen']) if c)
      lines.append(f"| {r['entropy_threshold']:g} | {r['budget']:.2f} | "
                   f"{r['cfg_scale']:g} | {r['decode_steps']} | "
                   f"{_fmt(r['gfvd'], 2)} | {_fmt(r['class_score'], 3)} | "
                   f'{counts} |')
  if has_class:
    lines += ['', f"Class score of the real clips: "
              f"{_fmt(result['real']['class_score'], 3)} "
              f"(classifier {info['classifier']})."]
  lines += ['', 'Throughput, seconds per video (steady state, compile '
            'excluded, batch sharded over all devices): AR sampling and '
            'decoding per row above;',
            f"I3D features {t['i3d_features']:.4f}; classifier "
            f"{_fmt(t['classifier'], 4)}.", '',
            'GFLOPs per video: analytic (vftok/models/flops.py '
            'ar_inference): AR sampling with the KV cache (x2 with AR CFG) '
            'plus the flow decoder at all K register slots per step (x2 with '
            'decoder guidance): the paper\'s Fig. 12 axis.', '',
            f"Compilation {t['compile_seconds']:.1f} s; wall time "
            f"{t['wall_seconds']:.1f} s."]
  return '\n'.join(lines) + '\n'


def _write(workdir, result, conditions, grids, writer):
  text = markdown(result)
  budget_plot.write_tables(workdir, 'eval_ar', result, COLUMNS, text)
  info = result['info']
  with records.atomic_path(os.path.join(workdir, 'eval_ar.png')) as tmp:
    several = len({r['decode_steps'] for r in result['rows']}) > 1
    budget_plot.plot_budget_curves(
        tmp, result['rows'], lambda r: f"AR CFG {r['cfg_scale']:g}" + (
            f", {r['decode_steps']} decoder steps" if several else ''),
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
    tag = f"cfg{r['cfg_scale']:g}_s{r['decode_steps']}"
    scalars = {f'gfvd/{tag}': r['gfvd'],
               f'sec_per_video_ar/{tag}': r['sec_per_video_ar']}
    for m in ('class_score', 'viclip_score'):
      if np.isfinite(r[m]):
        scalars[f'{m}/{tag}'] = r[m]
    writer.write_scalars(r['budget'], scalars)
  writer.write_texts(0, {'eval_ar': text})
