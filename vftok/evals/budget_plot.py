"""Budget-sweep reports: metric-vs-token-budget curves (the paper's Fig. 6-7
layout) as a PNG, and the sweep's table files.

One panel per metric, the budget (tokens per latent frame) on a log2 x axis,
one line per setting (guidance, Euler steps, AR CFG scale, ...), and an
optional dashed reference line per metric (the codec's ceiling, the real
clips' class score).
"""
import csv
import json
import os
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np


def write_tables(workdir: str, stem: str, result: Dict, columns: Sequence[str],
                 text: str):
  """<stem>.csv (result['rows'] by `columns`), <stem>.md (`text`) and
  <stem>.json (all of `result`), each through records.atomic_path (temp +
  rename): a job killed mid-write (kill -9, preemption) leaves a file whole
  or absent (an older one untouched), never half a table."""
  from vftok.data import records  # pylint: disable=g-import-not-at-top
  with records.atomic_path(os.path.join(workdir, f'{stem}.csv')) as tmp:
    with open(tmp, 'w', newline='') as f:
      w = csv.DictWriter(f, fieldnames=list(columns))
      w.writeheader()
      for r in result['rows']:
        w.writerow({c: r[c] for c in columns})
  with records.atomic_path(os.path.join(workdir, f'{stem}.md')) as tmp:
    with open(tmp, 'w') as f:
      f.write(text)
  with records.atomic_path(os.path.join(workdir, f'{stem}.json')) as tmp:
    with open(tmp, 'w') as f:
      json.dump(records.jsonable(result), f, indent=2)


def plot_budget_curves(path: str, rows: Sequence[Dict],
                       series: Callable[[Dict], str],
                       metrics: Sequence[Tuple[str, str]], *,
                       reference: Optional[Dict[str, float]] = None,
                       reference_label: str = 'reference',
                       title: str = '', panel_width: float = 4.3,
                       xlabel: str = 'tokens per latent frame',
                       log_x: bool = True, ticks: Sequence[float] = (),
                       tick_format: Callable[[float], str] = lambda v: f'{v:g}'):
  """rows: dicts with 'budget' (the x value) and each metric key;
  series(row) -> the label of the line the row belongs to; metrics: (key,
  panel title) pairs. Metrics that are NaN in every row (e.g. no classifier)
  are left out. Another x axis (AR size, CFG scale): xlabel, log_x (log2)
  and tick_format; ticks: the x ticks (default: every row's x). Rows with
  `<metric>_min` / `_max` (combined over seeds) draw that range as a band
  around the line."""
  # pylint: disable=g-import-not-at-top
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  # pylint: enable=g-import-not-at-top
  metrics = [(k, t) for k, t in metrics
             if any(np.isfinite(r[k]) for r in rows)]
  if not metrics:
    raise ValueError('no metric has a finite value to plot')
  # Figure + Agg canvas, not pyplot: no global backend state to change.
  fig = Figure(figsize=(panel_width * len(metrics), 4), dpi=100)
  FigureCanvasAgg(fig)
  axes = np.atleast_1d(fig.subplots(1, len(metrics)))
  labels = list(dict.fromkeys(series(r) for r in rows))  # first-seen order
  budgets = sorted(ticks or {r['budget'] for r in rows})
  for ax, (key, name) in zip(axes, metrics):
    for label in labels:
      line = sorted((r for r in rows if series(r) == label),
                    key=lambda r: r['budget'])
      xs = [r['budget'] for r in line]
      drawn = ax.plot(xs, [r[key] for r in line], marker='o', label=label)
      if all(np.isfinite(r.get(f'{key}_min', np.nan)) for r in line):
        # Rows combined over seeds: the range around the median (a bar for
        # a one-point line, e.g. the grid's one budget).
        lo = [r[f'{key}_min'] for r in line]
        hi = [r[f'{key}_max'] for r in line]
        color = drawn[0].get_color()
        if len(line) == 1:
          ax.vlines(xs, lo, hi, color=color, alpha=0.5, linewidth=4)
        else:
          ax.fill_between(xs, lo, hi, alpha=0.2, color=color, linewidth=0)
    ref = (reference or {}).get(key)
    if ref is not None and np.isfinite(ref):
      ax.axhline(ref, color='gray', linestyle='--', label=reference_label)
    if log_x:
      ax.set_xscale('log', base=2)
    ax.set_xticks(budgets)
    ax.set_xticklabels([tick_format(k) for k in budgets])
    ax.set_xlabel(xlabel)
    ax.set_title(name)
    ax.grid(alpha=0.3)
  for ax in axes:
    ax.legend(fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, format='png')
