"""Reports over seeds (vftok/experiments/seed_ranges.py and paper_mini's
seeds): medians and ranges of every number, findings counted per seed, the
figures' bands, and a multi-seed config refused before anything is written
when it cannot give a range."""
import json

import numpy as np
import pytest

from vftok import errors
from vftok.experiments import paper_mini
from vftok.experiments import seed_ranges

from testing_utils import load_config

KEYS = ('tokenizer', 'ar_size', 'tokens_per_frame', 'cfg_scale')


def _row(kind, n, cfg, score, gfvd, recon=np.nan):
  return dict(tokenizer=kind, ar_size='small', ar_params=110_000,
              ar_params_total=120_000, tokens_per_frame=n, cfg_scale=cfg,
              gfvd=gfvd, class_score=score, recon_class_score=recon,
              rfvd=100.0, psnr=15.0, gflops_per_video=16.0)


def _summary(scores, gfvds, holds, recon=np.nan):
  rows = [_row('videoflextok', n, 3.0, s, g, recon)
          for n, s, g in zip((1, 16), scores, gfvds)]
  rows.append(_row('grid', 16, 3.0, 0.5, 110.0, recon))
  return dict(rows=rows, chance=0.25, real_class_score=0.85,
              phase_seconds={'a': 60.0, 'b': 120.0},
              findings=[dict(claim='AR carries its class', holds=holds,
                             numbers=f'{scores[-1]:.3f} vs 0.25')])


def test_combine_rows_median_and_range_per_row():
  per_seed = [_summary((0.3, 0.6), (120, 118), True)['rows'],
              _summary((0.5, 0.4), (119, 117), False)['rows'],
              _summary((0.4, 0.7), (121, 116), True)['rows']]
  rows = seed_ranges.combine_rows(per_seed, KEYS, ('class_score', 'gfvd',
                                                   'recon_class_score'))
  assert [(r['tokenizer'], r['tokens_per_frame']) for r in rows] == [
      ('videoflextok', 1), ('videoflextok', 16), ('grid', 16)]
  one = rows[0]
  assert one['seeds'] == 3 and one['ar_params'] == 110_000
  assert one['class_score'] == pytest.approx(0.4)
  assert (one['class_score_min'], one['class_score_max']) == (0.3, 0.5)
  assert rows[1]['gfvd'] == 117 and rows[1]['gfvd_max'] == 118
  # A metric no seed computed stays NaN (not a 0 that would plot).
  assert np.isnan(one['recon_class_score'])
  assert seed_ranges.cell(one, 'class_score', '.2f') == '0.40 (0.30–0.50)'
  assert seed_ranges.cell(rows[2], 'class_score', '.2f') == '0.50'
  assert seed_ranges.cell(one, 'recon_class_score', '.2f') == 'n/a'


def test_combine_rows_leaves_out_a_seed_missing_a_value():
  a = [dict(k=1, m=1.0)]
  b = [dict(k=1, m=np.nan), dict(k=2, m=5.0)]
  rows = seed_ranges.combine_rows([a, b], ('k',), ('m',))
  assert rows[0]['m'] == 1.0 and rows[0]['seeds'] == 2
  assert rows[1]['seeds'] == 1 and rows[1]['m_min'] == 5.0


def test_findings_counted_per_seed():
  per_seed = [[dict(claim='x', holds=True, numbers='1'),
               dict(claim='y', holds=False, numbers='2')],
              [dict(claim='x', holds=False, numbers='3'),
               dict(claim='y', holds=False, numbers='4')],
              [dict(claim='x', holds=True, numbers='5')]]
  x, y = seed_ranges.combine_findings(per_seed)
  assert (x['held'], x['seeds'], x['numbers']) == (2, 3, ['1', '3', '5'])
  assert seed_ranges.verdict(x) == 'mixed (2/3 seeds)'
  assert seed_ranges.verdict(y) == 'no (0/2 seeds)'
  assert seed_ranges.verdict(dict(held=3, seeds=3)) == 'yes (3/3 seeds)'


def test_seed_report_writes_table_findings_and_banded_figures(tmp_path):
  summaries = [_summary((0.3, 0.6), (120, 118), True, 0.55),
               _summary((0.5, 0.4), (119, 117), False, 0.6),
               _summary((0.4, 0.7), (121, 116), True, 0.5)]
  out = paper_mini.write_seed_report(str(tmp_path), (0, 1, 2), summaries)
  text = (tmp_path / 'paper_mini.md').read_text()
  assert 'over seeds 0, 1, 2' in text
  assert '0.600 (0.400–0.700)' in text          # VideoFlexTok at 16, CFG 3
  assert '0.550 (0.500–0.600)' in text          # reconstructions' score
  assert 'mixed (2/3 seeds): AR carries its class' in text
  assert 'seed 0 3.0, seed 1 3.0, seed 2 3.0' in text
  assert json.loads((tmp_path / 'paper_mini.json').read_text())['seeds'] == [
      0, 1, 2]
  assert out['real_class_score'] == pytest.approx(0.85)
  for name in ('fig6_model_size.png', 'fig7_budgets.png', 'fig11_cfg.png'):
    assert (tmp_path / name).stat().st_size > 0


@pytest.mark.parametrize('seeds,workdir,match', [
    ((0, 0), '/tmp/vftok_demo_s{seed}', 'names a seed twice'),
    ((0, 1), '/tmp/vftok_demo_s0', r'\{seed\}'),
])
def test_multi_seed_config_refused_before_writing(tmp_path, seeds, workdir,
                                                  match):
  c = load_config('paper_mini', 'smoke')
  c.seeds, c.tokenizer_workdir = seeds, workdir
  with pytest.raises(errors.InputError, match=match):
    paper_mini.run(c, str(tmp_path / 'work'))
  assert not (tmp_path / 'work').exists()


def test_a_missing_seed_tokenizer_is_refused_before_any_seed_runs(tmp_path):
  c = load_config('paper_mini', 'smoke')
  c.seeds = (0, 1)
  c.tokenizer_workdir = str(tmp_path / 'demo_s{seed}')
  with pytest.raises(errors.InputError, match='demo_s0'):
    paper_mini.run(c, str(tmp_path / 'work'))
  assert not (tmp_path / 'work').exists()


def test_seed_config_substitutes_the_seed():
  c = load_config('paper_mini')
  c.seeds, c.tokenizer_workdir = (0, 1, 2), '/ckpt/demo_s{seed}'
  one = paper_mini.seed_config(c, 2)
  assert (one.seed, tuple(one.seeds), one.tokenizer_workdir) == (
      2, (), '/ckpt/demo_s2')
  assert tuple(c.seeds) == (0, 1, 2)   # the caller's config is unchanged
