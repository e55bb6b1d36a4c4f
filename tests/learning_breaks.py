"""Breaks one piece of the training recipe and runs the learning checks.

    python tests/learning_breaks.py                      # every break
    python tests/learning_breaks.py --breaks=fsq_ste,none --seed=1

For each break the tokenizer (and for `ar_shift` the AR model) is trained
exactly as tests/test_learning.py trains it, with the one piece broken, and
every learning check of tests/test_learning.py is run on the result; the
script prints which checks fail and their messages ('none' is the intact
recipe: every check passes). A break that no check notices exits 1.

The breaks (each is a bug someone could plausibly write):
  nested_dropout  the decoder always sees all K registers (no nested dropout)
  fsq_ste         FSQ rounding without the straight-through gradient (the
                  encoder learns nothing through the codes)
  repa_shuffle    REPA targets of another clip in the batch
  time_inverted   the flow's time law inverted in training:
                  x_t = t x + (1 - t) eps (the sampler still runs t: 1 -> 0)
  ar_shift        AR teacher forcing shifted by one: the target at each
                  position is the token the model was just given
"""
import argparse
import contextlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import conftest  # noqa: E402,F401  (the tests' XLA flags, before jax)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import procedural  # noqa: E402
import test_learning as tl  # noqa: E402
from vftok import flow  # noqa: E402
from vftok.models import ar  # noqa: E402
from vftok.models import fsq  # noqa: E402

BREAKS = ('nested_dropout', 'fsq_ste', 'repa_shuffle', 'time_inverted',
          'ar_shift')


@contextlib.contextmanager
def patched(module, name, value):
  old = getattr(module, name)
  setattr(module, name, value)
  try:
    yield
  finally:
    setattr(module, name, old)


def _no_ste(x):
  return jnp.round(x)


def _inverted_noise(add_noise):
  return lambda x, eps, t: add_noise(eps, x, t)


def _shifted_targets(sequence_loss):
  return lambda logits, seq, *a: sequence_loss(
      logits, jnp.pad(seq[:, :-1], ((0, 0), (1, 0))), *a)


def _shuffled_repa(batch):
  perm = np.roll(np.arange(len(batch['repa_features'])), 1)
  return dict(batch, repa_features=batch['repa_features'][perm])


def train_tokenizer(brk: str, seed: int):
  config = tl.tokenizer_config(seed)
  stack = contextlib.ExitStack()
  transform = None
  if brk == 'nested_dropout':
    config.model.nested_dropout = 'none'
  elif brk == 'fsq_ste':
    stack.enter_context(patched(fsq, '_round_ste', _no_ste))
  elif brk == 'repa_shuffle':
    transform = _shuffled_repa
  elif brk == 'time_inverted':
    stack.enter_context(patched(flow, 'add_noise',
                                _inverted_noise(flow.add_noise)))
  with stack:
    return tl.train_tokenizer(config, transform)[0]


def run_checks(checks, metrics):
  """-> {check name: failure message or None}; prints the metrics."""
  print('  metrics: ' + ', '.join(f'{k} {v:.3g}' for k, v in metrics.items()),
        flush=True)
  out = {}
  for check in checks:
    try:
      check(metrics)
      out[check.__name__] = None
    except AssertionError as e:
      out[check.__name__] = str(e).splitlines()[0]
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--breaks', default=','.join(('none',) + BREAKS))
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  heldout = procedural.heldout(tl.HELDOUT)
  unnoticed = []
  intact_tok = None
  for brk in args.breaks.split(','):
    if brk not in BREAKS + ('none',):
      parser.error(f'unknown break {brk!r}; choose from none, {BREAKS}')
    start = time.time()
    if brk == 'ar_shift':
      if intact_tok is None:
        intact_tok = train_tokenizer('none', args.seed)
      with patched(ar, 'sequence_loss', _shifted_targets(ar.sequence_loss)):
        run = tl.train_ar(intact_tok, args.seed)
      results = run_checks(tl.AR_CHECKS, tl.evaluate_ar(run, heldout))
    else:
      tok = train_tokenizer(brk, args.seed)
      if brk == 'none':
        intact_tok = tok
      results = run_checks(tl.TOKENIZER_CHECKS,
                           tl.evaluate_tokenizer(tok, heldout))
      if brk == 'none':
        results.update(run_checks(tl.AR_CHECKS, tl.evaluate_ar(
            tl.train_ar(tok, args.seed), heldout)))
    failed = {k: v for k, v in results.items() if v is not None}
    print(f'== break {brk} (seed {args.seed}, {time.time() - start:.0f} s): '
          f'{len(failed)} of {len(results)} checks fail', flush=True)
    for name, msg in results.items():
      print(f'  {"FAIL" if msg else "pass"} {name}' + (f': {msg}' if msg
                                                       else ''), flush=True)
    if (brk == 'none') == bool(failed):
      unnoticed.append(brk)
  if unnoticed:
    print('NOT AS EXPECTED:', ', '.join(unnoticed))
    sys.exit(1)


if __name__ == '__main__':
  main()
