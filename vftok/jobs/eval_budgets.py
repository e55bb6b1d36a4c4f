"""Budgets chosen by the content against one fixed budget for every clip:
mean tokens per latent frame against mean PSNR (pixels), on held-out clips.

    python -m vftok.main --config=configs/eval_budgets.py \
        --config.checkpoint=/tmp/vftok_demo --workdir=/tmp/vftok_budgets

Every clip is tokenized once. Policies, each decoded twice from the same
per-clip noise (sampled at the model's sampler settings, and the one-step
mean), codec to pixels, PSNR per clip:
  fixed k         every clip and frame keeps k tokens (k = 1, 2, 4, ..., K);
  clip / frame    api/budgets.py picks k per clip from the one-step mean's
                  latent error at each budget, or per latent frame by its
                  joint search with the decoder in the loop, for each
                  target in config.fractions (of the full budget's gain) and
                  config.db_per_token (the rate-distortion trade-off); each
                  searched with its own noise draw ('own': blind to the
                  decode) and/or with the noise the clip is decoded from
                  here ('decode'), per config.choose_noise.
  oracle          per clip, the budget that maximises the clip's measured
                  PSNR minus a slope x k, from the fixed rows' own decodes:
                  it knows every clip's outcome at every budget, so it bounds
                  what any per-clip choice can save on these clips.
A policy's point is (mean tokens per latent frame over clips and frames,
mean PSNR over clips). Compared at equal mean PSNR: for every fixed budget
k, the tokens a content-chosen curve needs to reach fixed k's PSNR, read off
the curve between its measured points (mixing two policies over the clips
reaches any point of the segment between them), and the saving 1 - tokens/k
(for each k that is the fewest fixed tokens reaching its own PSNR).

Writes budgets.md / .csv / .json and budgets.png (both curves, both
measures) to the workdir.
"""
import os
import time
from typing import Dict, List, Sequence, Tuple

from absl import logging
import numpy as np

from vftok.api import budgets as budgets_lib
from vftok.api import pretrained
from vftok.data import records
from vftok.evals import budget_plot
from vftok.evals import eval_data
from vftok.evals import media
from vftok.evals import pixels
from vftok.models import tokenizer as tokenizer_lib

COLUMNS = ('policy', 'mode', 'noise', 'criterion', 'target', 'budget', 'psnr',
           'psnr_mean')
MEASURES = (('psnr', 'sampled'), ('psnr_mean', 'one-step mean'))
# The oracle's slopes, pixel dB per token (a dense sweep: it costs no decode).
ORACLE_SLOPES = (0.0,) + tuple(np.geomspace(1e-3, 1.0, 19))


NOISES = {'own': '', 'decode': ' for the decode noise'}


def family_name(mode: str, noise: str, criterion: str) -> str:
  return f'per {mode}{NOISES[noise]}, {criterion}'


def policies(config, budgets) -> List[Tuple[str, str, str, float, str]]:
  """(name, mode, criterion, target, noise) for every policy the config asks
  for; noise: what the choice searched with ('own' draw or the 'decode'
  noise, api/budgets.py), '' for fixed budgets."""
  out = [(f'fixed {k}', 'fixed', 'budget', float(k), '') for k in budgets]
  for noise in config.choose_noise:
    if noise not in NOISES:
      raise ValueError(f"config.choose_noise: {noise!r} is not 'own' or "
                       "'decode'")
  for mode in config.modes:
    if mode not in ('clip', 'frame'):
      raise ValueError(f"config.modes: {mode!r} is not 'clip' or 'frame'")
  for noise in config.choose_noise:
    for mode in config.modes:
      for criterion, targets in (('fraction', config.fractions),
                                 ('db_per_token', config.db_per_token)):
        for v in targets:
          budgets_lib.check_target({criterion: float(v)})
          out.append((f'{family_name(mode, noise, criterion)}={float(v):g}',
                      mode, criterion, float(v), noise))
  return out


def tokens_at_psnr(points: Sequence[Tuple[float, float]], psnr: float) -> float:
  """The fewest mean tokens at which the piecewise-linear curve through
  (tokens, psnr) `points` (any order) first reaches `psnr`; NaN if it never
  does. Linear between points: mixing the two policies over the clips."""
  pts = sorted(points)
  for (t0, p0), (t1, p1) in zip([(np.nan, -np.inf)] + pts[:-1], pts):
    if p1 >= psnr:
      if not np.isfinite(p0) or p1 == p0:
        return t1
      return t0 + (t1 - t0) * (psnr - p0) / (p1 - p0)
  return float('nan')


def savings(rows, measure: str) -> List[Dict]:
  """Per content-chosen family (mode, noise, criterion) and fixed budget
  k > 1 that is the best single budget for its PSNR (no smaller one reaches
  it): the family's tokens at fixed k's mean PSNR and the saving
  1 - tokens / k (NaN where the family's curve stays below that PSNR)."""
  fixed = sorted((r['budget'], r[measure]) for r in rows
                 if r['mode'] == 'fixed')
  out = []
  family = lambda r: (r['mode'], r.get('noise', ''), r['criterion'])
  families = dict.fromkeys(family(r) for r in rows if r['mode'] != 'fixed')
  for mode, noise, criterion in families:
    if mode == 'oracle' and criterion != measure:
      continue      # an oracle is scored on the measure it chose by
    # Every family shares the two ends: one token everywhere (its limit at
    # fraction 0 or a steep db_per_token) and all K.
    curve = [fixed[0], fixed[-1]] + [
        (r['budget'], r[measure]) for r in rows
        if family(r) == (mode, noise, criterion)]
    for k, p in fixed[1:]:
      if any(p0 >= p for k0, p0 in fixed if k0 < k):
        continue    # a smaller fixed budget does as well: k is no one's best
      t = tokens_at_psnr(curve, p)
      out.append(dict(measure=measure, mode=mode, noise=noise,
                      criterion=criterion,
                      fixed_budget=k, psnr=p, tokens=t, saving=1 - t / k))
  return out


def oracle_rows(acc, budgets) -> List[Dict]:
  """Per measure and slope: per clip the fixed budget with the best measured
  PSNR - slope x k (acc: per policy, per-clip arrays over batches)."""
  ks = np.asarray(budgets)
  per_clip = {m: np.stack([np.concatenate(acc[f'fixed {k}'][m])
                           for k in budgets]) for m, _ in MEASURES}
  clips = np.arange(per_clip['psnr'].shape[1])
  rows = []
  for measure, _ in MEASURES:
    for slope in ORACLE_SLOPES:
      pick = np.argmax(per_clip[measure] - slope * ks[:, None], axis=0)
      rows.append(dict(policy=f'oracle by {measure}, slope={slope:.3g}',
                       mode='oracle', noise='', criterion=measure,
                       target=slope,
                       budget=float(ks[pick].mean()),
                       **{m: float(per_clip[m][pick, clips].mean())
                          for m, _ in MEASURES}))
  return rows


def run(config, workdir: str) -> Dict:
  t_start = time.perf_counter()
  # A train_tokenizer workdir or an exported bundle (e.g. the shipped small64).
  model = pretrained.load(config.checkpoint, config.step, field='checkpoint')
  tok = model.tokenizer
  m = tok.config.model
  if tokenizer_lib.is_grid(m):
    raise ValueError('a grid tokenizer has one budget (all its tokens): '
                     'nothing to choose')
  budgets = tokenizer_lib.budgets(m)
  todo = policies(config, budgets)
  sample = tok.sample_defaults()
  steps = config.sample_steps or sample['steps']
  scale = config.guidance_scale or sample['guidance_scale']
  _, n, batches = eval_data.eval_batches(config, tok.config)
  records.makedirs(workdir)

  acc: Dict[str, Dict[str, List[np.ndarray]]] = {p[0]: {} for p in todo}
  start, passes = 0, []
  for batch in batches:
    latents, frames = np.asarray(batch['latents']), batch['frames']
    nb = latents.shape[0]
    noise = np.asarray(tok.clip_noise(np.arange(start, start + nb),
                                      config.seed))
    tokens = np.asarray(tok.tokenize(latents))
    # 'own': the search's own noise draw, not the one scored here; 'decode':
    # searched with the noise these clips are decoded from below.
    estimates = {by: budgets_lib.BudgetEstimates(
        tok, latents, tokens=tokens, seed=config.seed + 1000 + start,
        noise=noise if by == 'decode' else None)
                 for by in config.choose_noise}
    start += nb
    for name, mode, criterion, target, by in todo:
      chosen = (np.full(nb, int(target)) if mode == 'fixed'
                else estimates[by].pick(mode == 'frame', **{criterion: target}))
      chosen = np.broadcast_to(
          chosen.reshape(nb, -1), tokens.shape[:2]).astype(np.int32)
      a = acc[name]
      a.setdefault('per_frame', []).append(chosen)
      for key, kw in (('psnr', dict(steps=steps, guidance_scale=scale)),
                      ('psnr_mean', dict(steps=1, guidance_scale=1.0))):
        lat = tok.detokenize(tokens, budgets=chosen, noise=noise, **kw)
        px = media.to_uint8(model.to_pixels(lat))
        a.setdefault(key, []).append(np.asarray(pixels.psnr(px, frames)))
    passes += [e.decoder_passes for e in estimates.values()]
    logging.info('eval_budgets: %d / %d clips (%.0f s)', start, n,
                 time.perf_counter() - t_start)

  rows = []
  for name, mode, criterion, target, by in todo:
    a = acc[name]
    per_frame = np.concatenate(a['per_frame'])          # [clips, T]
    rows.append(dict(policy=name, mode=mode, noise=by, criterion=criterion,
                     target=target, budget=float(per_frame.mean()),
                     **{key: float(np.mean(np.concatenate(a[key])))
                        for key in ('psnr', 'psnr_mean')},
                     # where the tokens went: the mean budget of each frame
                     frame_budgets=per_frame.mean(axis=0).tolist()))
  rows += oracle_rows(acc, budgets)
  saved = [s for measure, _ in MEASURES for s in savings(rows, measure)]
  info = dict(checkpoint=model.source, step=tok.step,
              num_clips=n, seed=config.seed, steps=steps,
              guidance=f"{sample['guidance']} {scale:g}",
              # one-step passes to choose: len(budgets) per clip, the rest
              # the per-frame search; a sampled decode costs steps x 2
              # (guided) passes
              choose_passes=dict(clip=len(budgets),
                                 frame=float(np.mean(passes))),
              wall_seconds=time.perf_counter() - t_start)
  result = dict(info=info, rows=rows, savings=saved)
  text = markdown(result)
  budget_plot.write_tables(workdir, 'budgets', result, COLUMNS, text)
  with records.atomic_path(os.path.join(workdir, 'budgets.png')) as tmp:
    plot(tmp, result, budgets)
  print('\n' + text, flush=True)
  return result


def markdown(result) -> str:
  info, rows = result['info'], result['rows']
  lines = [f"# Content-chosen budgets: {info['checkpoint']} "
           f"(step {info['step']})", '',
           f"{info['num_clips']} held-out clips, noise seed {info['seed']}; "
           f"sampled: {info['steps']} Euler steps, {info['guidance']}. "
           'Tokens: mean per latent frame.', '',
           '| policy | tokens | per latent frame | PSNR sampled | '
           'PSNR one-step mean |',
           '|---|---|---|---|---|']
  lines += [f"| {r['policy']} | {r['budget']:.2f} | "
            f"{' / '.join(f'{k:.1f}' for k in r['frame_budgets'])} | "
            f"{r['psnr']:.2f} | {r['psnr_mean']:.2f} |"
            for r in rows if r['mode'] != 'oracle']
  lines += ['', 'The oracle rows (per clip, from the measured PSNRs): '
            'budgets.csv and the plot.']
  lines += ['', 'At each fixed budget\'s mean PSNR, the tokens a '
            'content-chosen curve needs and the saving:', '',
            '| measure | policy | fixed k | its PSNR | tokens | saving |',
            '|---|---|---|---|---|---|']
  names = dict(MEASURES)
  for s in result['savings']:
    saving = ('not reached' if not np.isfinite(s['tokens'])
              else f"{100 * s['saving']:.0f} %")
    tokens = f"{s['tokens']:.2f}" if np.isfinite(s['tokens']) else '-'
    policy = ('oracle' if s['mode'] == 'oracle'
              else family_name(s['mode'], s['noise'], s['criterion']))
    lines.append(f"| {names[s['measure']]} | {policy} | {s['fixed_budget']:g} | "
                 f"{s['psnr']:.2f} | {tokens} | {saving} |")
  cost = info['choose_passes']
  lines += ['', f"Choosing cost, in one-step decoder passes per clip: "
            f"{cost['clip']} per clip, {cost['frame']:.1f} for the per-frame "
            f"search (a sampled decode: {info['steps']} steps, x2 guided).",
            '', f"Wall time {info['wall_seconds']:.0f} s."]
  return '\n'.join(lines) + '\n'


def plot(path: str, result, budgets):
  info = result['info']
  budget_plot.plot_budget_curves(
      path, result['rows'],
      lambda r: ('fixed budget' if r['mode'] == 'fixed' else
                 f"oracle by {dict(MEASURES)[r['criterion']]}"
                 if r['mode'] == 'oracle'
                 else family_name(r['mode'], r['noise'], r['criterion'])),
      (('psnr', f"PSNR dB, sampled ({info['steps']} steps, "
                f"{info['guidance']})"),
       ('psnr_mean', 'PSNR dB, one-step mean')),
      ticks=budgets, xlabel='mean tokens per latent frame',
      title=(f"{os.path.basename(info['checkpoint'])}: "
             f"{info['num_clips']} held-out clips"), panel_width=5.5)
