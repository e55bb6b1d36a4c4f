"""The paper's comparisons in miniature (configs/paper_mini.py): one command
that runs the jobs of Figs. 6, 7 and 11 on the demo set, phase by phase.

    tokenizer_videoflextok, tokenizer_grid   equal size and steps (reused: a
                                             finished configs/demo.py run)
    classifier                               the class score's I3D classifier
    sweep_{videoflextok,grid}                rFVD, PSNR vs tokens per frame
    ar_{tokenizer}_{small,large}             class-conditional AR, 2 sizes,
    eval_ar_{tokenizer}_{small,large}        each followed by its evaluation:
                                             gFVD, class score vs budget, CFG
    report                                   paper_mini.md / .json, 3 figures

Each phase runs the ordinary job (`vftok.jobs.*.run`) in <workdir>/<phase>
with a config derived here, and is recorded in <workdir>/phases.json when it
finishes: a re-run skips finished phases, and a training phase cut off
midway resumes from its own checkpoint. With `seeds` (e.g. (0, 1, 2)) each
seed is one such run in <workdir>/seed_<s>, and the report in <workdir>
gives every number as its median and range over the seeds
(experiments/seed_ranges.py). This module sits above the jobs
(main -> experiments -> jobs): jobs never import one another.
"""
import json
import os
import time
from typing import Dict, List

from absl import logging
import ml_collections
import numpy as np

from vftok import checkpoint
from vftok import defaults
from vftok import errors
from vftok.data import records
from vftok.data import tokens as token_records
from vftok.evals import budget_plot
from vftok.experiments import seed_ranges
from vftok.jobs import eval_ar
from vftok.jobs import eval_tokenizer
from vftok.jobs import train_ar
from vftok.jobs import train_classifier
from vftok.jobs import train_tokenizer
from vftok.models import ar
from vftok.models import layers

TOKENIZERS = ('videoflextok', 'grid')
SIZES = ('small', 'large')
NAMES = {'videoflextok': 'VideoFlexTok', 'grid': '3D grid'}
CHANCE_MULTIPLE = 2.0   # the AR must score >= 2x chance at its top budget


class Experiment:
  """The derived configs and the phase bookkeeping of one workdir."""

  def __init__(self, config, workdir: str):
    self.config, self.workdir = config, workdir
    self.state_path = os.path.join(workdir, 'phases.json')
    self.finished: Dict[str, float] = {}
    if os.path.exists(self.state_path):
      with open(self.state_path) as f:
        self.finished = json.load(f)

  def path(self, *parts) -> str:
    return os.path.join(self.workdir, *parts)

  # ---- bookkeeping ---------------------------------------------------------
  def run_phase(self, name: str, fn) -> None:
    if name in self.finished:
      logging.info('paper_mini: %s finished before (%.0f s); skipped', name,
                   self.finished[name])
      return
    logging.info('paper_mini: %s ...', name)
    t0 = time.perf_counter()
    fn()
    self.finished[name] = time.perf_counter() - t0
    with records.atomic_path(self.state_path) as tmp:
      with open(tmp, 'w') as f:
        json.dump(self.finished, f, indent=2)
    logging.info('paper_mini: %s done in %.0f s', name, self.finished[name])

  # ---- derived configs -----------------------------------------------------
  @property
  def data_root(self) -> str:
    return self.config.tokenizer.data.root

  def tokenizer_dir(self, kind: str) -> str:
    if kind == 'videoflextok' and self.config.tokenizer_workdir:
      return self.config.tokenizer_workdir
    return self.path(f'tokenizer_{kind}')

  def tokenizer_config(self, kind: str):
    """The VideoFlexTok config (a reused workdir's own), or its grid copy."""
    if self.config.tokenizer_workdir:
      _, step, config = checkpoint.check_workdir(
          self.config.tokenizer_workdir, 'train_tokenizer',
          field='tokenizer_workdir')
      config = ml_collections.ConfigDict(config.to_dict())
      # Equal steps: the grid trains exactly as long as the reused run did
      # (not for a time budget of its own).
      config.train.time_budget_s, config.train.total_steps = 0.0, step
    else:
      config = ml_collections.ConfigDict(self.config.tokenizer.to_dict())
    # The experiment's seed: each seed's tokenizers (and so its classifier
    # data, token sets and ARs) are trained afresh, not seed 0's again.
    config.seed = self.config.seed
    return defaults.grid_counterpart(config) if kind == 'grid' else config

  def ar_config(self, kind: str, size: str):
    c = self.config[f'ar_{size}'].copy_and_resolve_references()
    c.seed = self.config.seed
    c.tokenizer.checkpoint = self.tokenizer_dir(kind)
    c.data.root = self.data_root
    tok = self.tokenizer_config(kind).model
    c.model.tokens_per_frame = tok.tokens_per_frame
    c.model.num_frames = tok.latent_frames // tok.patch_size[0]
    c.model.seq_len = c.model.num_frames * tok.tokens_per_frame
    if kind == 'grid':
      defaults.ar_grid(c)
    return c

  def eval_ar_config(self, kind: str, size: str):
    c = self.config.eval_ar.copy_and_resolve_references()
    c.seed = self.config.seed
    c.ar_workdir = self.path(f'ar_{kind}_{size}')
    c.data_root = self.data_root
    c.budgets = ()   # every budget of the tokenizer (the grid's one)
    c.classifier.path = self.path('classifier', 'classifier.npz')
    return c

  # ---- phases --------------------------------------------------------------
  def phases(self) -> List:
    c, out = self.config, []
    if c.tokenizer_workdir:
      checkpoint.check_workdir(c.tokenizer_workdir, 'train_tokenizer',
                               field='tokenizer_workdir')
    else:
      out.append(('tokenizer_videoflextok', lambda: train_tokenizer.run(
          self.tokenizer_config('videoflextok'),
          self.tokenizer_dir('videoflextok'))))
    out.append(('tokenizer_grid', lambda: train_tokenizer.run(
        self.tokenizer_config('grid'), self.tokenizer_dir('grid'))))

    def classifier():
      cc = c.classifier.copy_and_resolve_references()
      cc.data.root = self.data_root
      cc.reconstructions.tokenizers = tuple(self.tokenizer_dir(k)
                                            for k in TOKENIZERS)
      train_classifier.run(cc, self.path('classifier'))
    out.append(('classifier', classifier))

    for kind in TOKENIZERS:
      def sweep(kind=kind):
        sc = c.sweep.copy_and_resolve_references()
        sc.checkpoint, sc.data_root = self.tokenizer_dir(kind), self.data_root
        sc.seed = c.seed
        # The class score of the reconstructions: what samples can reach.
        sc.classifier.path = self.path('classifier', 'classifier.npz')
        eval_tokenizer.run(sc, self.path(f'sweep_{kind}'))
      out.append((f'sweep_{kind}', sweep))
    # Each AR is evaluated as soon as it is trained: a run cut off later
    # keeps the scores of the models it finished.
    for kind in TOKENIZERS:
      for size in SIZES:
        out.append((f'ar_{kind}_{size}', lambda kind=kind, size=size:
                    train_ar.run(self.ar_config(kind, size),
                                 self.path(f'ar_{kind}_{size}'))))
        out.append((f'eval_ar_{kind}_{size}', lambda kind=kind, size=size:
                    eval_ar.run(self.eval_ar_config(kind, size),
                                self.path(f'eval_ar_{kind}_{size}'))))
    out.append(('report', lambda: write_report(self)))
    return out


def run(config, workdir: str):
  """Runs (or continues) every phase, of every seed when config.seeds is
  set; -> the report's summary dict."""
  if config.seeds:
    return run_seeds(config, workdir)
  exp = Experiment(config, workdir)
  phases = exp.phases()   # checks the reused tokenizer workdir first
  records.makedirs(workdir)
  for name, fn in phases:
    exp.run_phase(name, fn)
  with open(exp.path('paper_mini.json')) as f:
    return json.load(f)


def seed_config(config, seed: int):
  """One seed's config: `{seed}` in tokenizer_workdir becomes the seed."""
  c = config.copy_and_resolve_references()
  c.seeds, c.seed = (), int(seed)
  c.tokenizer_workdir = config.tokenizer_workdir.replace('{seed}', str(seed))
  return c


def run_seeds(config, workdir: str):
  """Each seed's whole experiment in <workdir>/seed_<s>, then the report
  over the seeds in <workdir>."""
  seeds = tuple(int(s) for s in config.seeds)
  if len(set(seeds)) != len(seeds):
    raise errors.InputError(f'seeds {seeds} names a seed twice')
  if (len(seeds) > 1 and config.tokenizer_workdir
      and '{seed}' not in config.tokenizer_workdir):
    raise errors.InputError(
        f'tokenizer_workdir {config.tokenizer_workdir!r} is one run for '
        f'{len(seeds)} seeds: the VideoFlexTok rows would not vary with the '
        'seed while the grid rows do; name one finished configs/demo.py run '
        'per seed with {seed} in the path (e.g. /tmp/vftok_demo_s{seed})')
  exps = [Experiment(seed_config(config, s), os.path.join(workdir, f'seed_{s}'))
          for s in seeds]
  phases = [exp.phases() for exp in exps]   # every seed's inputs checked first
  records.makedirs(workdir)
  for exp, seed_phases in zip(exps, phases):
    logging.info('paper_mini: seed %d in %s', exp.config.seed, exp.workdir)
    records.makedirs(exp.workdir)
    for name, fn in seed_phases:
      exp.run_phase(name, fn)
  summaries = [_load_json(exp.path('paper_mini.json')) for exp in exps]
  return write_seed_report(workdir, seeds, summaries)


# ------------------------------------------------------------------ report ---

def _load_json(path):
  with open(path) as f:
    return json.load(f)


def ar_params(config) -> Dict[str, int]:
  mc = ar.ARConfig.from_config_dict(config.model)
  p = ar.abstract_params(mc)
  return {'non_embedding': int(ar.count_params(p)),
          'total': int(layers.count_params(p))}


def collect(exp: Experiment) -> Dict:
  """Every number of the report, from the phases' own outputs."""
  rows, sweeps = [], {}
  for kind in TOKENIZERS:
    sweep = _load_json(exp.path(f'sweep_{kind}', 'sweep.json'))
    sweeps[kind] = {int(r['budget']): r for r in sweep['rows']}
    for size in SIZES:
      result = _load_json(exp.path(f'eval_ar_{kind}_{size}', 'eval_ar.json'))
      params = ar_params(exp.ar_config(kind, size))
      for r in result['rows']:
        n = int(r['budget'])
        rec = sweeps[kind].get(n, {})
        rows.append(dict(
            tokenizer=kind, ar_size=size,
            ar_params=params['non_embedding'],
            ar_params_total=params['total'], tokens_per_frame=n,
            cfg_scale=float(r['cfg_scale']), gfvd=float(r['gfvd']),
            class_score=float(r['class_score']),
            rfvd=float(rec.get('rfvd', np.nan)),
            psnr=float(rec.get('psnr', np.nan)),
            recon_class_score=float(rec.get('class_score', np.nan)),
            gflops_per_video=float(r['gflops_per_video'])))
  # Chance: a sampler that ignores the class (whatever it draws) scores the
  # mean over the classes of p(class | sample) = 1 / classes.
  return dict(rows=rows, token_stats=token_stats(exp),
              real_class_score=float(result['real']['class_score']),
              chance=1.0 / len(result['info']['conditions']),
              phase_seconds=dict(exp.finished))


def token_stats(exp: Experiment) -> Dict[str, Dict]:
  """Per tokenizer, how hard its tokens are for the AR (data/tokens.py
  statistics of the records both AR sizes trained on)."""
  return {kind: token_records.statistics(train_ar.token_records(
      exp.ar_config(kind, 'small'), exp.path(f'ar_{kind}_small')))
          for kind in TOKENIZERS}


STATS_ABOUT = ('Token statistics of the AR training set (nats per token): '
               'the entropy a lookup table of code frequencies reaches on it, '
               'one table for all slots, one per slot, one per slot and '
               'class. An AR whose training loss is above the last has not '
               'yet learned what a table of counts knows.')


def stats_lines(per_seed: List[Dict[str, Dict]]) -> List[str]:
  """The token statistics table, a row per tokenizer (and seed)."""
  lines = ['| tokenizer | seed | distinct codes | unigram | per slot | '
           'per slot and class |', '|---|---|---|---|---|---|']
  for kind in TOKENIZERS:
    for seed, stats in per_seed:
      st = stats[kind]
      lines.append(f"| {NAMES[kind]} | {seed} | {st['distinct_codes']} | "
                   f"{st['unigram']:.2f} | {st['per_slot']:.2f} | "
                   f"{st['per_slot_class']:.2f} |")
  return lines


def findings(summary) -> List[Dict]:
  """The paper's claims, checked on the miniature's numbers (True / False)."""
  rows, chance = summary['rows'], summary['chance']

  def pick(kind, size, cfg, n=None):
    sel = [r for r in rows if r['tokenizer'] == kind and r['ar_size'] == size
           and r['cfg_scale'] == cfg and (n is None or
                                          r['tokens_per_frame'] == n)]
    return sel
  cfgs = sorted({r['cfg_scale'] for r in rows})
  guided, unguided = cfgs[-1], cfgs[0]
  top = lambda kind, size, cfg: max(pick(kind, size, cfg),
                                    key=lambda r: r['tokens_per_frame'])
  out = []
  for kind in TOKENIZERS:
    for size in SIZES:
      r = top(kind, size, guided)
      out.append(dict(
          claim=f'the {size} AR on {NAMES[kind]} tokens carries its class '
                f'(>= {CHANCE_MULTIPLE:g}x chance at {r["tokens_per_frame"]} '
                f'tokens/frame, CFG {guided:g})',
          holds=r['class_score'] >= CHANCE_MULTIPLE * chance,
          numbers=f'{r["class_score"]:.3f} vs chance {chance:.3f}'))
  grid_k = top('grid', 'large', guided)
  fewer = [r for r in pick('videoflextok', 'large', guided)
           if r['tokens_per_frame'] < grid_k['tokens_per_frame']]
  best = max(fewer, key=lambda r: r['class_score'], default=None)
  if best is not None:
    out.append(dict(
        claim='Fig. 7: VideoFlexTok reaches the grid\'s class score with '
              'fewer tokens per frame (large AR, CFG)',
        holds=best['class_score'] >= grid_k['class_score'],
        numbers=f'{best["class_score"]:.3f} at {best["tokens_per_frame"]} vs '
                f'{grid_k["class_score"]:.3f} at '
                f'{grid_k["tokens_per_frame"]}'))
  small = top('videoflextok', 'small', guided)
  out.append(dict(
      claim='Fig. 6: the small AR on VideoFlexTok tokens matches the large AR '
            'on grid tokens in class score',
      holds=small['class_score'] >= grid_k['class_score'],
      numbers=f'{small["class_score"]:.3f} vs {grid_k["class_score"]:.3f}'))
  for size in SIZES:
    f, g = top('videoflextok', size, unguided), top('grid', size, unguided)
    if f['tokens_per_frame'] == g['tokens_per_frame']:
      out.append(dict(
          claim=f'Fig. 11: without CFG, VideoFlexTok has the lower gFVD at '
                f'the same {f["tokens_per_frame"]} tokens per frame ({size} AR)',
          holds=f['gfvd'] < g['gfvd'],
          numbers=f'{f["gfvd"]:.1f} vs {g["gfvd"]:.1f}'))
  return out


# A table row's identity, and its numbers: (key, column, format).
ROW_KEYS = ('tokenizer', 'ar_size', 'tokens_per_frame', 'cfg_scale')
METRICS = (('gfvd', 'gFVD', '.1f'), ('class_score', 'class score', '.3f'),
           ('recon_class_score', 'recon. class score', '.3f'),
           ('rfvd', 'rFVD', '.1f'), ('psnr', 'PSNR (dB)', '.2f'),
           ('gflops_per_video', 'GFLOPs/video', '.3g'))
ABOUT = ('rFVD, PSNR and recon. class score: the tokenizer\'s reconstructions '
         'at that budget (sweep; their class score is what samples can '
         'reach); gFVD and class score: AR samples decoded by it.')


def table(rows) -> List[str]:
  """The markdown table; a cell is 'median (min-max)' for rows combined over
  seeds (seed_ranges.combine_rows), the value for one seed's."""
  head = (['tokenizer', 'AR', 'AR params', 'tokens/frame', 'AR CFG'] +
          [name for _, name, _ in METRICS])
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for r in rows:
    lines.append('| ' + ' | '.join([
        NAMES[r['tokenizer']], r['ar_size'], f"{r['ar_params'] / 1e6:.2f}M",
        str(r['tokens_per_frame']), f"{r['cfg_scale']:g}"] + [
            seed_ranges.cell(r, key, fmt) for key, _, fmt in METRICS]) + ' |')
  return lines


def markdown(exp: Experiment, summary, checks) -> str:
  lines = ['# The paper in miniature', '',
           f'Workdir {os.path.abspath(exp.workdir)}, seed {exp.config.seed}; '
           f'the demo set\'s 4 classes (chance {summary["chance"]:.2f}; real '
           f'held-out clips score {summary["real_class_score"]:.3f} with the '
           f'same classifier). {ABOUT}', ''] + table(summary['rows'])
  lines += ['', '## The paper\'s findings, checked', '']
  for c in checks:
    lines.append(f"- {'yes' if c['holds'] else 'no'}: {c['claim']} "
                 f"({c['numbers']})")
  lines += ['', STATS_ABOUT, ''] + stats_lines(
      [(exp.config.seed, summary['token_stats'])])
  total = sum(summary['phase_seconds'].values())
  lines += ['', 'Phases (seconds): ' + ', '.join(
      f'{k} {v:.0f}' for k, v in summary['phase_seconds'].items()) +
            f'; {total / 60:.1f} min in all.']
  return '\n'.join(lines) + '\n'


def write_report(exp: Experiment):
  summary = collect(exp)
  checks = findings(summary)
  summary['findings'] = checks
  rows = summary['rows']
  with records.atomic_path(exp.path('paper_mini.md')) as tmp:
    with open(tmp, 'w') as f:
      f.write(markdown(exp, summary, checks))
  _plots(exp.workdir, rows, summary)
  with records.atomic_path(exp.path('paper_mini.json')) as tmp:
    with open(tmp, 'w') as f:
      json.dump(summary, f, indent=2)
  print('\n' + markdown(exp, summary, checks), flush=True)


def write_seed_report(workdir: str, seeds, summaries) -> Dict:
  """paper_mini.md / .json and the figures over the seeds' summaries."""
  rows = seed_ranges.combine_rows([s['rows'] for s in summaries], ROW_KEYS,
                                  [key for key, _, _ in METRICS])
  checks = seed_ranges.combine_findings([s['findings'] for s in summaries])
  real = [s['real_class_score'] for s in summaries]
  minutes = [sum(s['phase_seconds'].values()) / 60 for s in summaries]
  summary = dict(seeds=list(seeds), rows=rows, findings=checks,
                 chance=summaries[0]['chance'],
                 real_class_score=float(np.median(real)),
                 real_class_score_min=float(min(real)),
                 real_class_score_max=float(max(real)),
                 minutes_per_seed=minutes)
  lines = ['# The paper in miniature, over seeds ' +
           ', '.join(map(str, seeds)), '',
           f'Workdir {os.path.abspath(workdir)} (one run per seed in '
           f'seed_<s>/). Each cell: the median over the {len(seeds)} seeds '
           '(min–max). The demo set\'s 4 classes (chance '
           f'{summary["chance"]:.2f}; real held-out clips score '
           f'{seed_ranges.cell(summary, "real_class_score", ".3f")} with each '
           f'seed\'s classifier). {ABOUT}', ''] + table(rows)
  lines += ['', '## The paper\'s findings, checked on each seed', '']
  for c in checks:
    lines.append(f"- {seed_ranges.verdict(c)}: {c['claim']} "
                 f"({'; '.join(c['numbers'])})")
  if all('token_stats' in s for s in summaries):
    summary['token_stats'] = [s['token_stats'] for s in summaries]
    lines += ['', STATS_ABOUT, ''] + stats_lines(
        list(zip(seeds, summary['token_stats'])))
  lines += ['', 'Minutes per seed: ' + ', '.join(
      f'seed {s} {m:.1f}' for s, m in zip(seeds, minutes)) + '.']
  text = '\n'.join(lines) + '\n'
  with records.atomic_path(os.path.join(workdir, 'paper_mini.md')) as tmp:
    with open(tmp, 'w') as f:
      f.write(text)
  _plots(workdir, rows, summary)
  with records.atomic_path(os.path.join(workdir, 'paper_mini.json')) as tmp:
    with open(tmp, 'w') as f:
      json.dump(summary, f, indent=2)
  print('\n' + text, flush=True)
  return summary


def _in(workdir: str, name: str) -> str:
  return os.path.join(workdir, name)


def _plots(workdir: str, rows, summary):
  """Figs. 7, 6 and 11; rows combined over seeds draw their range as a
  band around the median."""
  cfgs = sorted({r['cfg_scale'] for r in rows})
  guided = cfgs[-1]
  metrics = (('gfvd', 'gFVD (lower is better)'),
             ('class_score', 'class score (higher is better)'))
  ref = {'class_score': summary['real_class_score']}
  # Fig. 7: metrics vs tokens per frame, one line per tokenizer x AR size.
  sel = [dict(r, budget=r['tokens_per_frame']) for r in rows
         if r['cfg_scale'] == guided]
  with records.atomic_path(_in(workdir, 'fig7_budgets.png')) as tmp:
    budget_plot.plot_budget_curves(
        tmp, sel, lambda r: f"{NAMES[r['tokenizer']]}, {r['ar_size']} AR",
        metrics, reference=ref, reference_label='real clips',
        title=f'tokens per frame (AR CFG {guided:g})')
  # Fig. 6: metrics vs AR size at each budget.
  sel = [dict(r, budget=r['ar_params']) for r in rows
         if r['cfg_scale'] == guided]
  with records.atomic_path(_in(workdir, 'fig6_model_size.png')) as tmp:
    budget_plot.plot_budget_curves(
        tmp, sel, lambda r: f"{NAMES[r['tokenizer']]}, "
                            f"{r['tokens_per_frame']} tokens/frame",
        metrics, reference=ref, reference_label='real clips',
        title=f'AR size (CFG {guided:g})',
        xlabel='AR non-embedding parameters',
        tick_format=lambda v: f'{v / 1e6:.2f}M')
  # Fig. 11: with and without CFG at the grid's length (VideoFlexTok's K).
  k = max(r['tokens_per_frame'] for r in rows if r['tokenizer'] == 'grid')
  sel = [dict(r, budget=r['cfg_scale']) for r in rows
         if r['tokens_per_frame'] == k]
  with records.atomic_path(_in(workdir, 'fig11_cfg.png')) as tmp:
    budget_plot.plot_budget_curves(
        tmp, sel, lambda r: f"{NAMES[r['tokenizer']]}, {r['ar_size']} AR",
        metrics, title=f'AR CFG scale at {k} tokens per frame',
        xlabel='AR CFG scale', log_x=False)
