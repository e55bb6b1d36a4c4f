"""configs/paper_mini.py at smoke size: every phase of the miniature (two
tokenizers, classifier, sweeps, four AR models, their evaluations, the
report) runs through vftok.main's job runner on the jobs' small demo set;
a re-run skips every finished phase; the report's table, figures and
findings are written; seeds finished elsewhere combine from their
records. (The miniature itself is not run in CI: its numbers
are in docs/paper_experiments.md.)"""
import json
import shutil

import numpy as np
import pytest

import testing_utils
import vftok
from vftok import main
from vftok.experiments import paper_mini

from testing_utils import load_config

pytestmark = pytest.mark.e2e


def test_paper_mini_smoke_runs_every_phase_and_resumes(tmp_path, capsys):
  root = testing_utils.small_demo_set(tmp_path / 'demo_data')
  c = load_config('paper_mini', 'smoke')
  c.tokenizer.data.root = str(root)
  work = tmp_path / 'mini'
  main.run_job(paper_mini, c, str(work))
  phases = json.loads((work / 'phases.json').read_text())
  assert list(phases) == [
      'tokenizer_videoflextok', 'tokenizer_grid', 'classifier',
      'sweep_videoflextok', 'sweep_grid',
      'ar_videoflextok_small', 'eval_ar_videoflextok_small',
      'ar_videoflextok_large', 'eval_ar_videoflextok_large',
      'ar_grid_small', 'eval_ar_grid_small',
      'ar_grid_large', 'eval_ar_grid_large', 'report']
  for name in ('paper_mini.md', 'fig6_model_size.png', 'fig7_budgets.png',
               'fig11_cfg.png'):
    assert (work / name).exists(), name
  summary = json.loads((work / 'paper_mini.json').read_text())
  rows = summary['rows']
  # VideoFlexTok at each of its budgets (1, 2, 4), the grid at its one
  # length (4 x 4 patches), both AR sizes, with and without CFG.
  flex = sorted({r['tokens_per_frame'] for r in rows
                 if r['tokenizer'] == 'videoflextok'})
  grid = sorted({r['tokens_per_frame'] for r in rows
                 if r['tokenizer'] == 'grid'})
  assert flex == [1, 2, 4] and grid == [16]
  assert len(rows) == (3 + 1) * 2 * 2
  small = {r['ar_params'] for r in rows if r['ar_size'] == 'small'}
  large = {r['ar_params'] for r in rows if r['ar_size'] == 'large'}
  assert len(small) == len(large) == 1 and small != large
  assert all(isinstance(f['holds'], bool) for f in summary['findings'])
  # The AR training sets' statistics: conditioning never raises entropy.
  stats = summary['token_stats']
  assert stats['videoflextok']['tokens_shape'] == [5, 4]
  assert stats['grid']['tokens_shape'] == [5, 16]
  for st in stats.values():
    assert st['unigram'] >= st['per_slot'] >= st['per_slot_class'] >= 0
  assert 'per slot and class' in (work / 'paper_mini.md').read_text()
  # The grid counterpart trained through the job runner loads as a
  # Tokenizer with one token per latent patch and refuses other budgets.
  tok = vftok.Tokenizer.from_checkpoint(str(work / 'tokenizer_grid'))
  x = np.random.default_rng(0).normal(size=(1, 5, 4, 4, 16)).astype(np.float32)
  tokens = np.asarray(tok.tokenize(x))
  assert tokens.shape == (1, 5, 16)
  with pytest.raises(ValueError, match='grid tokenizer'):
    tok.detokenize(tokens[:, :, :1], steps=1)
  capsys.readouterr()
  # A re-run: every phase is skipped, the report is what it was.
  main.run_job(paper_mini, c, str(work))
  assert json.loads((work / 'phases.json').read_text()) == phases

  # Seeds run at different times, on different machines, combine: a seed
  # workdir holding only its phases.json and paper_mini.json counts as
  # finished (docs/paper_mini_runs/ keeps those files of the reported runs).
  seeds_dir = tmp_path / 'seeds'
  for s in (0, 1):
    (seeds_dir / f'seed_{s}').mkdir(parents=True)
    for name in ('phases.json', 'paper_mini.json'):
      shutil.copy(work / name, seeds_dir / f'seed_{s}' / name)
  cs = c.copy_and_resolve_references()
  cs.seeds = (0, 1)
  combined = main.run_job(paper_mini, cs, str(seeds_dir))
  assert combined['seeds'] == [0, 1]
  assert len(combined['rows']) == len(rows)
  assert (seeds_dir / 'paper_mini.md').exists()
  assert sorted(p.name for p in (seeds_dir / 'seed_0').iterdir()) == [
      'paper_mini.json', 'phases.json']


@pytest.mark.parametrize('reuse', [False, True])
def test_every_trained_part_of_a_seed_takes_its_seed(tmp_path, monkeypatch,
                                                     reuse):
  """--config.seed=s trains seed s's tokenizers and ARs afresh (fresh, or
  reusing a finished demo run for VideoFlexTok: its grid counterpart still
  takes the experiment's seed), not seed 0's again."""
  c = load_config('paper_mini')
  if reuse:
    demo = load_config('demo')   # a finished seed-0 run, as check_workdir reads it
    monkeypatch.setattr(paper_mini.checkpoint, 'check_workdir',
                        lambda path, *a, **k: (path, 1600, demo))
    c.tokenizer_workdir = str(tmp_path / 'demo_run')
  exp = paper_mini.Experiment(paper_mini.seed_config(c, 1), str(tmp_path / 'w'))
  kinds = ('grid',) if reuse else paper_mini.TOKENIZERS
  for kind in kinds:
    assert exp.tokenizer_config(kind).seed == 1, kind
  for kind in paper_mini.TOKENIZERS:
    for size in paper_mini.SIZES:
      assert exp.ar_config(kind, size).seed == 1
