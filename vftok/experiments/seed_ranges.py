"""One experiment's report over several seeds: every number as its median and
range (min-max) over the seeds, and each of the paper's findings as the
number of seeds on which it holds.

A trained result is published as a range over >= 3 seeds (README, "What a
number means"); a single seed's table says nothing about which differences
are noise. The per-seed summaries are paper_mini.collect()'s dicts (rows
keyed by the row's identity fields, findings keyed by their claim), so the
combination knows nothing of how they were made.
"""
from typing import Dict, List, Sequence

import numpy as np


def _key(row: Dict, keys: Sequence[str]):
  return tuple(row[k] for k in keys)


def combine_rows(per_seed: Sequence[List[Dict]], keys: Sequence[str],
                 metrics: Sequence[str]) -> List[Dict]:
  """per_seed: each seed's rows. -> one row per identity (the `keys`
  fields), in the first seed's order, with each metric's median over the
  seeds and `<metric>_min` / `<metric>_max`, and `seeds` (how many seeds
  have the row). NaN values (a metric a seed did not compute) are left out
  of that metric's statistics; a metric no seed has is NaN."""
  order, values = [], {}
  for rows in per_seed:
    for r in rows:
      k = _key(r, keys)
      if k not in values:
        order.append(k)
        values[k] = dict(first=r, by_metric={m: [] for m in metrics},
                         seeds=0)
      values[k]['seeds'] += 1
      for m in metrics:
        v = float(r.get(m, np.nan))
        if np.isfinite(v):
          values[k]['by_metric'][m].append(v)
  out = []
  for k in order:
    entry = values[k]
    row = {f: entry['first'][f] for f in entry['first'] if f not in metrics}
    row['seeds'] = entry['seeds']
    for m in metrics:
      v = entry['by_metric'][m]
      row[m] = float(np.median(v)) if v else np.nan
      row[f'{m}_min'] = float(min(v)) if v else np.nan
      row[f'{m}_max'] = float(max(v)) if v else np.nan
    out.append(row)
  return out


def combine_findings(per_seed: Sequence[List[Dict]]) -> List[Dict]:
  """per_seed: each seed's findings (dicts with claim, holds, numbers). ->
  one per claim, in first-seen order: held (on how many seeds), seeds (how
  many seeds checked it) and each seed's numbers."""
  order, out = [], {}
  for findings in per_seed:
    for f in findings:
      if f['claim'] not in out:
        order.append(f['claim'])
        out[f['claim']] = dict(claim=f['claim'], held=0, seeds=0, numbers=[])
      c = out[f['claim']]
      c['held'] += int(bool(f['holds']))
      c['seeds'] += 1
      c['numbers'].append(f['numbers'])
  return [out[c] for c in order]


def cell(row: Dict, metric: str, fmt: str) -> str:
  """'median (min-max)', or the one value when the range is a point or the
  row is one seed's (no `<metric>_min`)."""
  med = row[metric]
  lo, hi = row.get(f'{metric}_min', med), row.get(f'{metric}_max', med)
  if not np.isfinite(med):
    return 'n/a'
  if lo == hi:
    return format(med, fmt)
  return f'{format(med, fmt)} ({format(lo, fmt)}–{format(hi, fmt)})'


def verdict(finding: Dict) -> str:
  """'yes' on every seed, 'no' on none, 'mixed (n/N)' between."""
  held, seeds = finding['held'], finding['seeds']
  if held == seeds:
    return f'yes ({held}/{seeds} seeds)'
  if held == 0:
    return f'no (0/{seeds} seeds)'
  return f'mixed ({held}/{seeds} seeds)'
