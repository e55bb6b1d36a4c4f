"""Evaluates a trained tokenizer over token budgets, guidance scales and steps.

    python -m vftok.main --config=configs/eval_tokenizer.py \
        --config.checkpoint=/tmp/vftok_demo --workdir=/tmp/vftok_eval

For every held-out clip: tokenize once, then for each (guidance, steps,
budget k) decode from the first k tokens of every latent frame, map latents
to pixels with the data's codec (rounded to uint8, as a saved video would be)
and compare with the original pixels:

  rFVD   Fréchet distance of I3D features, reconstructions vs originals
         (config.fvd: standard 400-d logits of 16 frames at 224 x 224)
  PSNR   over each whole clip, averaged over clips (dB)
  SSIM   per frame (Gaussian 11 x 11, sigma 1.5), averaged
  MAE, MSE  over each whole clip in pixel levels (0-255), averaged (Table 8)
  LPIPS  optional: per frame, averaged (config.lpips_weights: a local
         lpips-package state_dict; vftok/evals/lpips.py)
  rFID   optional: Fréchet distance of per-frame image features of every
         reconstructed vs original frame (config.rfid: a pluggable feature
         factory and its local weights; evals/frame_scores.py)
  class  optional: mean p(label | reconstruction) (config.classifier)

The codec's own reconstruction (no tokenizer) is reported as the ceiling.
Writes to the workdir: sweep.csv, sweep.md (table + throughput), sweep.json,
sweep.png (rFVD / PSNR / SSIM vs budget, one line per guidance/steps),
recon_g<guidance>_s<steps>.png (originals, codec, every budget) and the same
numbers as TensorBoard scalars (step = budget).

Determinism: the same config and seed give identical numbers (tested across
processes). Clip i is decoded from the noise fold_in(key(seed), i), so its
reconstruction does not depend on the batch size or the device count (up to
float round-off of differently shaped programs), and every setting sees the
same noise per clip (paired comparisons across budgets).
Tokenize, detokenize, pixel metrics and I3D run with the batch sharded over
all devices (data-parallel mesh; the tokenizer is replicated).
Throughput is steady state: functions are compiled ahead of time and the
compile time is reported separately.
"""
import os
import time
from typing import Dict

from absl import logging
from clu import metric_writers
import jax
import numpy as np
from PIL import Image

from vftok.evals import media
from vftok import errors
from vftok import sharding
from vftok.models import latent_codecs
from vftok.data import pipeline
from vftok.data import records
from vftok.evals import budget_plot
from vftok.evals import class_score
from vftok.evals import eval_data
from vftok.evals import frame_scores
from vftok.evals import frechet
from vftok.evals import lpips
from vftok.evals import pixels
from vftok.evals import reconstruction
from vftok import api
from vftok.evals import timing as timing_lib
from vftok.evals import video_features
from vftok.models import flops
from vftok.models import tokenizer as tokenizer_lib

COLUMNS = ('sampler', 'budget', 'guidance', 'steps', 'rfvd', 'rfid', 'psnr',
           'ssim', 'mae', 'mse', 'lpips', 'class_score',
           'sec_per_clip_detokenize', 'gflops_per_clip_detokenize')
# Per clip, averaged over clips (Table 8 of the paper also has MAE and MSE:
# pixel levels 0-255, over every pixel and channel of the clip).
PIXEL_METRICS = ('psnr', 'ssim', 'mae', 'mse')


# ------------------------------------------------------------------- run ---

def _check(config, tok, devices: int):
  """-> (budgets, settings: (sampler, guidance, steps) per decoder setting).
  A plain tokenizer: its flow sampler ('flow') over guidance_scales x
  sample_steps. A distilled student: 'student' at each of its step counts
  (config.student_steps, default all it was trained for; guidance is
  distilled in) beside 'teacher': the sampler it was distilled from
  (its config.sample) at config.teacher_steps, default that sampler's
  steps and the student's (the undistilled few-step baseline)."""
  if config.batch_size < 1 or config.batch_size % devices:
    raise ValueError(f'config.batch_size={config.batch_size} must be a '
                     f'positive multiple of the {devices} devices (the batch '
                     'is split over them)')
  budgets = tokenizer_lib.check_budgets(tok.config.model, config.budgets)
  if tok.is_distilled:
    student = sorted({int(s) for s in config.get('student_steps', ())}
                     ) or list(tok.student_steps)
    for s in student:
      if s not in tok.student_steps:
        raise errors.InputError(
            f'config.student_steps={tuple(config.student_steps)}: the student '
            f'was trained for {tok.student_steps} steps')
    teacher = tok.sample_defaults('teacher')
    g = float(teacher['guidance_scale'])
    teacher_steps = sorted({int(s) for s in config.get('teacher_steps', ())}
                           ) or sorted({int(teacher['steps']), *student})
    return budgets, ([('student', 1.0, s) for s in student]
                     + [('teacher', g, s) for s in teacher_steps])
  steps = [int(s) for s in config.sample_steps]
  guidance = [float(g) for g in config.guidance_scales]
  if not steps or min(steps) < 1 or not guidance:
    raise ValueError('config.sample_steps must be >= 1 and '
                     'config.guidance_scales non-empty')
  return budgets, [('flow', g, s) for g in guidance for s in steps]


def _detokenize_args(config, tok, sampler: str, g: float, s: int) -> dict:
  """detokenize's arguments for one setting of the sweep."""
  if sampler == 'student':
    return dict(steps=s)
  if sampler == 'teacher':  # the sampler the student was distilled from
    return dict(sampler='teacher', steps=s, guidance_scale=g)
  return dict(steps=s, guidance_scale=g, guidance=config.guidance,
              **{f'apg_{k}': v for k, v in config.apg.items()})


def setting_name(sampler: str, g: float, s: int) -> str:
  """'g3.0_s25' for the flow sampler, else '<sampler>_g<g>_s<s>'."""
  name = f'g{g}_s{s}'
  return name if sampler == 'flow' else f'{sampler}_{name}'


def run(config, workdir: str, writer=None) -> Dict:
  """Runs the sweep; -> {'info', 'rows', 'codec', 'timing'} (sweep.json)."""
  t_start = time.perf_counter()
  mesh = sharding.data_mesh()
  tok = api.Tokenizer.from_checkpoint(config.checkpoint, config.step,
                                      mesh=mesh)
  step = tok.step
  budgets, settings = _check(config, tok, mesh.size)
  if tok.is_distilled:
    tok.teacher()  # loaded (or one clear error) before the workdir is made
  data, n, batches = eval_data.eval_batches(config, tok.config)
  codec = latent_codecs.load_codec(data)
  denormalize = pipeline.make_denormalizer(data)
  classifier = None
  if config.classifier.path:
    classifier = class_score.make_classifier(config.classifier.factory,
                                             config.classifier.path)
  perceptual = (lpips.LPIPS(config.lpips_weights)
                if config.get('lpips_weights') else None)
  rfid = config.get('rfid') or {}
  frame_features = (frame_scores.make_frame_features(rfid.get('factory', ''),
                                                     rfid.get('path', ''))
                    if rfid.get('path') or rfid.get('factory') else None)
  # Every input is loaded (a missing one: one errors.InputError); now the
  # workdir is made.
  records.makedirs(workdir)
  writer = writer or metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)

  timer = timing_lib.Timer()
  features = video_features.I3DFeatures(
      config.fvd.layer, config.fvd.resolution, config.fvd.num_frames,
      config.batch_size, mesh)
  bs = sharding.batch_sharding(mesh)
  metrics_fn = jax.jit(pixels.all_metrics, out_shardings=bs)

  # Per entry ('original' | 'codec' | (g, s, k)): lists over batches.
  acc: Dict = {}
  grid: Dict = {}
  codec_seconds = 0.0

  def add(key, name, value):
    acc.setdefault(key, {}).setdefault(name, []).append(np.asarray(value))

  def score(key, px, frames, labels):
    m = metrics_fn(sharding.put_global(
        video_features.pad_rows(px, config.batch_size), bs),
        sharding.put_global(
            video_features.pad_rows(frames, config.batch_size), bs))
    for name in PIXEL_METRICS:
      add(key, name, sharding.fetch(m[name])[:len(px)])
    if perceptual is not None:
      add(key, 'lpips', perceptual(px, frames))
    if frame_features is not None:
      add(key, 'frame_feats', frame_features(frame_scores.frames_of(px)))
    add(key, 'feats', features(px))
    if classifier is not None:
      add(key, 'class', class_score.true_class_probs(classifier(px), labels))

  start = 0
  for b, batch in enumerate(batches):
    frames, labels = batch['frames'], batch['label']
    nb = frames.shape[0]
    noise = tok.clip_noise(np.arange(start, start + config.batch_size),
                           config.seed)
    start += nb
    if classifier is not None:
      class_score.check_labels(labels, len(classifier.class_names))
    tokens = sharding.fetch(timer('tokenize', tok.tokenize, video_features.pad_rows(
        batch['latents'], config.batch_size)))
    add('original', 'feats', features(frames))
    if frame_features is not None:
      add('original', 'frame_feats',
          frame_features(frame_scores.frames_of(frames)))
    if classifier is not None:
      add('original', 'class',
          class_score.true_class_probs(classifier(frames), labels))
    t0 = time.perf_counter()
    codec_px = media.to_uint8(codec.decode(denormalize(batch['latents'])))
    codec_seconds += time.perf_counter() - t0
    score('codec', codec_px, frames, labels)
    if b == 0:
      grid['rows'] = [frames, codec_px]
    for sampler, g, s in settings:
      for k in budgets:
        # Budgets share one compilation: tokens are padded to K with the
        # mask token.
        lat = sharding.fetch(timer(
            f'detokenize/{setting_name(sampler, g, s)}/k{k}', tok.detokenize,
            tokens[:, :, :k], noise=noise,
            compile_key=('detokenize', sampler, g, s),
            **_detokenize_args(config, tok, sampler, g, s)))[:nb]
        t0 = time.perf_counter()
        px = media.to_uint8(codec.decode(denormalize(lat)))
        codec_seconds += time.perf_counter() - t0
        score((sampler, g, s, k), px, frames, labels)
        if b == 0:
          grid.setdefault((sampler, g, s), []).append(px)
      logging.info('eval batch %d, %s, guidance %g, %d steps: done (%.0f s)',
                   b, sampler, g, s, time.perf_counter() - t_start)
    logging.info('eval batch %d: %d / %d clips', b, start, n)

  real = np.concatenate(acc['original']['feats'])
  mu, sigma = frechet.gaussian_stats(real)
  real_frames = (frechet.gaussian_stats(np.concatenate(
      acc['original']['frame_feats'])) if frame_features is not None else None)

  def summarize(key):
    a = acc[key]
    out = {'rfvd': frechet.frechet_distance(
        mu, sigma, *frechet.gaussian_stats(np.concatenate(a['feats']))),
           **{m: float(np.mean(np.concatenate(a[m]))) for m in PIXEL_METRICS}}
    out['class_score'] = (float(np.mean(np.concatenate(a['class'])))
                          if 'class' in a else float('nan'))
    out['lpips'] = (float(np.mean(np.concatenate(a['lpips'])))
                    if 'lpips' in a else float('nan'))
    out['rfid'] = (frechet.frechet_distance(*real_frames, *frechet.gaussian_stats(
        np.concatenate(a['frame_feats']))) if real_frames else float('nan'))
    return out

  rows = []
  for sampler, g, s in settings:
    gflops = s * flops.detokenize_step(tok.config.model,
                                       guided=g != 1.0) / 1e9
    for k in budgets:
      name = setting_name(sampler, g, s)
      row = dict(sampler=sampler, budget=k, guidance=g, steps=s,
                 **summarize((sampler, g, s, k)))
      row['sec_per_clip_detokenize'] = timer.seconds[
          f'detokenize/{name}/k{k}'] / n
      row['gflops_per_clip_detokenize'] = gflops
      rows.append(row)
  ceiling = summarize('codec')
  if classifier is not None:
    ceiling['class_score_original'] = float(
        np.mean(np.concatenate(acc['original']['class'])))
  timing = {
      'tokenize': timer.seconds['tokenize'] / n,
      **{f'detokenize_{setting_name(*st)}': sum(
          timer.seconds[f'detokenize/{setting_name(*st)}/k{k}']
          for k in budgets) / (n * len(budgets)) for st in settings},
      'i3d_features': features.seconds_per_clip,
      'codec_decode': codec_seconds / (n * (len(settings) * len(budgets) + 1)),
      'compile_seconds': timer.compile_seconds + features.compile_seconds,
      'wall_seconds': time.perf_counter() - t_start,
  }
  guidance, apg = config.guidance, dict(config.apg)
  if tok.is_distilled:  # the teacher rows guide as the distilled sampler did
    t = tok.sample_defaults('teacher')
    guidance = t['guidance']
    apg = {k: t[f'apg_{k}'] for k in ('momentum', 'eta', 'norm_threshold')}
  if guidance == 'apg':
    guidance += ' ' + ', '.join(f'{k}={v:g}' for k, v in apg.items())
  info = dict(checkpoint=os.path.abspath(config.checkpoint), step=step,
              num_clips=n, seed=config.seed, devices=mesh.size,
              guidance=guidance,
              platform=jax.devices()[0].platform,
              clip_shape=list(grid['rows'][0].shape[1:]),
              features=features.description,
              classifier=(config.classifier.path if classifier else ''),
              lpips=perceptual.path if perceptual else '',
              rfid=(f"{rfid.get('factory') or frame_scores.DINOV2_FACTORY} "
                    f"({rfid.get('path')})" if frame_features else ''))
  result = dict(info=info, rows=rows, codec=ceiling, timing=timing)
  if jax.process_index() == 0:
    _write(workdir, result, settings, budgets, grid, config.grid_clips,
           writer)
  writer.flush()
  return result


# ----------------------------------------------------------------- output ---

def _fmt(x, digits):
  return 'n/a' if x is None or not np.isfinite(x) else f'{x:.{digits}f}'


def markdown(result) -> str:
  info, rows, ceil, t = (result['info'], result['rows'], result['codec'],
                         result['timing'])
  has_class = np.isfinite(ceil['class_score'])
  has_lpips = np.isfinite(ceil.get('lpips', np.nan))
  has_rfid = np.isfinite(ceil.get('rfid', np.nan))
  samplers = [r.get('sampler', 'flow') for r in rows]
  has_sampler = any(x != 'flow' for x in samplers)
  head = (['sampler'] if has_sampler else []) + ['budget', 'guidance',
                                                 'steps', 'rFVD']
  head += ['rFID'] if has_rfid else []
  head += ['PSNR (dB)', 'SSIM', 'MAE', 'MSE']
  head += ['LPIPS'] if has_lpips else []
  head += ['class score'] if has_class else []
  head += ['s/clip detokenize', 'GFLOP/clip']
  lines = [
      f"# Tokenizer sweep: {info['checkpoint']} (step {info['step']})", '',
      f"{info['num_clips']} evaluation clips of {info['clip_shape']} pixels, "
      f"seed {info['seed']}, {info['devices']} {info['platform']} device(s), "
      f"guidance (scale != 1): {info['guidance']}. "
      f"rFVD: {info['features']}, reconstructions vs originals (FVD from few "
      'clips is biased upward: compare numbers at equal clip counts).', '',
      '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for r in rows:
    cells = ([r.get('sampler', 'flow')] if has_sampler else []) + [
        str(r['budget']), f"{r['guidance']:g}", str(r['steps']),
        _fmt(r['rfvd'], 2)]
    cells += [_fmt(r['rfid'], 2)] if has_rfid else []
    cells += [_fmt(r['psnr'], 2), _fmt(r['ssim'], 4),
             _fmt(r['mae'], 2), _fmt(r['mse'], 1)]
    cells += [_fmt(r['lpips'], 4)] if has_lpips else []
    cells += [_fmt(r['class_score'], 3)] if has_class else []
    cells += [_fmt(r['sec_per_clip_detokenize'], 4),
              _fmt(r.get('gflops_per_clip_detokenize', np.nan), 1)]
    lines.append('| ' + ' | '.join(cells) + ' |')
  cells = ([''] if has_sampler else []) + ['codec only (ceiling)', '', '',
                                            _fmt(ceil['rfvd'], 2)]
  cells += [_fmt(ceil['rfid'], 2)] if has_rfid else []
  cells += [_fmt(ceil['psnr'], 2), _fmt(ceil['ssim'], 4), _fmt(ceil['mae'], 2),
           _fmt(ceil['mse'], 1)]
  cells += [_fmt(ceil['lpips'], 4)] if has_lpips else []
  cells += [_fmt(ceil['class_score'], 3)] if has_class else []
  lines.append('| ' + ' | '.join(cells + ['', '']) + ' |')
  if has_sampler:
    lines += [''] + speedup_lines(rows)
  if has_class:
    lines += ['', f"Class score of the original clips: "
              f"{ceil['class_score_original']:.3f} ({info['classifier']})."]
  lines += ['', 'Throughput, seconds per clip (steady state, compile '
            'excluded, batch sharded over all devices):', '',
            f"- tokenize: {t['tokenize']:.4f}"]
  for name, v in t.items():
    if name.startswith('detokenize_'):
      rest = name[len('detokenize_'):]   # setting_name(...)
      sampler, g_s = ('', rest[1:]) if rest.startswith('g') else rest.split(
          '_g', 1)
      g, s = g_s.split('_s')
      kind = ('distilled in' if sampler == 'student'
              else info['guidance'].split()[0].upper())
      cfg = (f' ({kind}: 2 decoder passes per step)' if float(g) != 1.0
             else '')
      who = f'{sampler}, ' if sampler else ''
      lines.append(f'- detokenize, {who}{_steps(int(s))}, guidance {g}{cfg}: '
                   f'{v:.4f}')
  lines += [f"- I3D features ({info['features']}): {t['i3d_features']:.4f}",
            f"- codec latents -> pixels (host): {t['codec_decode']:.4f}",
            '', f"Compilation {t['compile_seconds']:.1f} s; wall time "
            f"{t['wall_seconds']:.1f} s."]
  return '\n'.join(lines) + '\n'


def _steps(n: int) -> str:
  return f'{n} Euler step' + ('' if n == 1 else 's')


def speedup_lines(rows):
  """A distilled student against its teacher's sampler (the teacher row with
  the most steps): mean seconds and FLOPs per clip over the budgets, and
  the PSNR / rFVD differences at the worst budget."""
  by = {}
  for r in rows:
    by.setdefault((r['sampler'], r['steps']), []).append(r)
  teacher = max((k for k in by if k[0] == 'teacher'), key=lambda k: k[1],
                default=None)
  if teacher is None:
    return []
  t_rows = {r['budget']: r for r in by[teacher]}
  mean = lambda rs, key: float(np.mean([r[key] for r in rs]))
  out = [f'Against the teacher at {teacher[1]} steps (mean over budgets; '
         'PSNR and rFVD at the worst budget):', '']
  for (sampler, steps), rs in sorted(by.items()):
    if sampler != 'student':
      continue
    speed = (mean(by[teacher], 'sec_per_clip_detokenize')
             / mean(rs, 'sec_per_clip_detokenize'))
    fl = (mean(by[teacher], 'gflops_per_clip_detokenize')
          / mean(rs, 'gflops_per_clip_detokenize'))
    d_psnr = min(r['psnr'] - t_rows[r['budget']]['psnr'] for r in rs)
    d_fvd = max(r['rfvd'] / t_rows[r['budget']]['rfvd'] - 1 for r in rs)
    out.append(f'- student, {_steps(steps)}: {speed:.1f}x faster, {fl:.1f}x '
               f'fewer FLOPs; PSNR {d_psnr:+.2f} dB, rFVD {100 * d_fvd:+.1f} %')
  return out


def plot(path: str, result):
  """rFVD, PSNR and SSIM vs budget (log2 axis), one line per setting."""
  info = result['info']
  budget_plot.plot_budget_curves(
      path, result['rows'],
      lambda r: (f"{r['sampler']}, " if r.get('sampler', 'flow') != 'flow'
                 else '') + f"guidance {r['guidance']:g}, {r['steps']} steps",
      (('rfvd', 'rFVD (lower is better)'),
       ('psnr', 'PSNR dB (higher is better)'),
       ('ssim', 'SSIM (higher is better)')),
      reference=result['codec'], reference_label='codec only (ceiling)',
      title=(f"{os.path.basename(info['checkpoint'])} step {info['step']}: "
             f"{info['num_clips']} clips"))


def _write(workdir, result, settings, budgets, grid, grid_clips, writer):
  # Every file atomic (temp + rename): a job killed mid-write leaves it whole
  # or absent, never half a table or plot.
  text = markdown(result)
  budget_plot.write_tables(workdir, 'sweep', result, COLUMNS, text)
  with records.atomic_path(os.path.join(workdir, 'sweep.png')) as tmp:
    plot(tmp, result)
  labels = ['original', 'codec'] + [f'{k} tok' for k in budgets]
  images = {}
  for sampler, g, s in settings:
    img = reconstruction.make_grid(grid['rows'] + grid[(sampler, g, s)],
                                   labels, clips=grid_clips)
    who = '' if sampler == 'flow' else f'{sampler}_'
    with records.atomic_path(
        os.path.join(workdir, f'recon_{who}g{g:g}_s{s}.png')) as tmp:
      Image.fromarray(img).save(tmp, format='PNG')
    images[f'recon/{who}guidance{g:g}_steps{s}'] = img[None]
  print('\n' + text, flush=True)

  for r in result['rows']:
    who = r.get('sampler', 'flow')
    tag = ('' if who == 'flow' else f'{who}_') + (
        f"guidance{r['guidance']:g}_steps{r['steps']}")
    scalars = {f'{m}/{tag}': r[m] for m in ('rfvd',) + PIXEL_METRICS}
    for m in ('class_score', 'lpips', 'rfid'):
      if np.isfinite(r[m]):
        scalars[f'{m}/{tag}'] = r[m]
    scalars[f'sec_per_clip_detokenize/{tag}'] = r['sec_per_clip_detokenize']
    writer.write_scalars(r['budget'], scalars)
  for k in budgets:  # the ceiling as a flat line next to the curves
    writer.write_scalars(k, {f'{m}/codec_only': result['codec'][m]
                             for m in ('rfvd',) + PIXEL_METRICS})
  writer.write_scalars(0, {f'sec_per_clip/{k}': v
                           for k, v in result['timing'].items()
                           if k not in ('compile_seconds', 'wall_seconds')})
  writer.write_images(0, images)
  writer.write_texts(0, {'sweep': text})
