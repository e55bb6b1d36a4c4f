"""Tokenize / detokenize speed of a tokenizer (random weights: speed does not
depend on them).

  PYTHONPATH=. python benchmarks/bench_inference.py --config=configs/tokenizer_k600.py
      [--official=tests/fixtures/official/model.safetensors --latent_shape=3,4,6]
      [--batch 1] [--steps 2] [--repeats 3] [--dtype float32]
      [--attention_impl xla,pallas_gpu] [--guidance_passes one,two]
      [--peak_tflops 989] [--markdown F] [--skip_unavailable]

Per `model.attention_impl` (vftok/models/attention_kernels.py; default: the
config's) and `sample.guidance_passes` (vftok/flow.py: the conditional and
null-condition forwards of a guided step as one batched forward of 2B rows,
or two of B; default: the config's, 'auto'), one row each
(benchmarks/outcomes.py): the compile
time, then seconds for `tokenize` and for one Euler step of `detokenize`
(with guidance: a conditional and a null-condition forward), medians of
--repeats after a warm-up; tokenize clips/s, detokenize clips/s for a whole
40-step APG decode at that rate, and the achieved TFLOP/s (and MFU with a
known peak) of the analytic count (vftok/models/flops.py, attention at the
kernel's density).

A row that fails (out of memory, a kernel failing, any error) is printed as
'[impl]: failed: ...' and the next still runs; so is a kernel the model cannot
build (yet) ('failed: unavailable'), unless --skip_unavailable makes it
'skipped: unavailable'. The last line is 'N of M rows failed: <impls>' and
the exit status 1 if any row failed (or none ran), else 0.
"""
import argparse
import importlib.util
import sys
import time

import jax
import ml_collections
import numpy as np

import vftok
from vftok.models import flops

from outcomes import Outcomes   # benchmarks/outcomes.py (the script's dir)


def load_config(path):
  spec = importlib.util.spec_from_file_location('bench_cfg', path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def timed(fn, repeats):
  jax.block_until_ready(fn())                 # compile + warm up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def peak_tflops(args) -> float:
  return args.peak_tflops or flops.peak_tflops(jax.devices()[0].device_kind,
                                               args.dtype)


def bench_impl(tok, impl, args, x, name, passes=''):
  """Tokenize and detokenize speed of one attention implementation (and
  guidance pass setting)."""
  m = tok.config.model
  t0 = time.perf_counter()
  tokens = jax.block_until_ready(tok.tokenize(x))
  compile_tok = time.perf_counter() - t0
  s_tok = timed(lambda: tok.tokenize(x), args.repeats)
  detok = lambda: tok.detokenize(tokens, steps=args.steps, guidance='apg',
                                 guidance_scale=25.0)
  t0 = time.perf_counter()
  jax.block_until_ready(detok())
  compile_detok = time.perf_counter() - t0
  s_detok = timed(detok, args.repeats) / args.steps
  tok_clips, detok_clips = args.batch / s_tok, args.batch / (40 * s_detok)
  f_tok = flops.tokenize(m, impl) * args.batch / s_tok / 1e12
  f_detok = flops.detokenize_step(m, impl) * args.batch / s_detok / 1e12
  peak = peak_tflops(args)
  mfu = lambda f: f' = {f / peak:.1%} MFU' if peak else ''
  label = row_label(impl, passes)
  print(f'{label} compile: tokenize {compile_tok:.1f} s, detokenize '
        f'{compile_detok:.1f} s')
  print(f'{label} tokenize: {s_tok:.3f} s per call ({tok_clips:.2f} clips/s,'
        f' {f_tok:.3f} TFLOP/s analytic{mfu(f_tok)})')
  print(f'{label} detokenize: {s_detok:.3f} s per Euler step with guidance '
        f'(2 forwards); a 40-step APG decode: {40 * s_detok:.1f} s '
        f'({detok_clips:.3f} clips/s, {f_detok:.3f} TFLOP/s analytic'
        f'{mfu(f_detok)})', flush=True)
  return (f'| {name} | {impl or "default"} | {passes or "config"} | '
          f'{args.batch} | {tok_clips:.2f} | {s_detok:.3f} | {detok_clips:.3f}'
          f' | {f_tok:.2f} / {f_detok:.2f} |')


def row_label(impl: str, passes: str) -> str:
  return f'[{impl or "default"}' + (f', {passes} pass' if passes else '') + ']'


def variant(tok, impl: str, passes: str, args):
  """`tok` with another attention implementation or guidance pass setting
  (the same weights)."""
  same_impl = impl == (tok.config.model.get('attention_impl', '') or '')
  if same_impl and not passes:
    return tok
  if not same_impl and args.official:
    raise ValueError('--attention_impl applies to --config models only')
  c = tok.config.copy_and_resolve_references()
  c.model.attention_impl = impl
  if passes:
    if 'sample' not in c:
      c.sample = ml_collections.ConfigDict()
    c.sample.guidance_passes = passes
  if args.official:
    return vftok.Tokenizer(c, tok.params)
  return vftok.Tokenizer.from_config(c, seed=0)   # seed 0: the same weights


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--config', default='configs/tokenizer_k600.py')
  p.add_argument('--official', default='', help='a release model.safetensors '
                 '(then --config is ignored)')
  p.add_argument('--latent_shape', default='', help='T,h,w for --official')
  p.add_argument('--batch', type=int, default=1)
  p.add_argument('--steps', type=int, default=2,
                 help='Euler steps timed (per-step time is reported)')
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  p.add_argument('--attention_impl', default=None,
                 help="comma-separated model.attention_impl values")
  p.add_argument('--guidance_passes', default='',
                 help="comma-separated sample.guidance_passes values "
                 "('one', 'two', 'auto'; default: the config's)")
  p.add_argument('--peak_tflops', type=float, default=0.0)
  p.add_argument('--markdown', default='', help='append result rows here')
  p.add_argument('--skip_unavailable', action='store_true',
                 help='report a kernel the model cannot build as skipped, '
                 'not failed')
  args = p.parse_args()
  if args.official:
    shape = (tuple(int(v) for v in args.latent_shape.split(','))
             if args.latent_shape else None)
    tok = vftok.Tokenizer.from_official(args.official, shape)
    name = args.official
  else:
    c = load_config(args.config)
    c.model.dtype = args.dtype
    tok = vftok.Tokenizer.from_config(c, seed=0)
    name = args.config
  m = tok.config.model
  x = np.random.default_rng(0).normal(
      size=(args.batch, *tok.latent_shape)).astype(np.float32)
  print(f'backend: {jax.default_backend()} ({jax.device_count()} devices); '
        f'{name}: d{m.enc_depth}-d{m.dec_depth}, widths {m.enc_width}/'
        f'{m.dec_width}, K={m.tokens_per_frame}, latents {tok.latent_shape}, batch '
        f'{args.batch}, {args.dtype}')
  impls = (args.attention_impl.split(',') if args.attention_impl is not None
           else [m.get('attention_impl', '') or ''])
  passes_list = args.guidance_passes.split(',') if args.guidance_passes else ['']
  rows = ['| model | attention | guidance passes | batch | tokenize clips/s | '
          's per guided Euler step | detokenize clips/s (40 APG steps) | '
          'TFLOP/s tok / detok |', '|---|---|---|---|---|---|---|---|']
  outcomes = Outcomes(skip_unavailable=args.skip_unavailable)
  for impl in impls:
    for passes in passes_list:
      with outcomes.row(row_label(impl, passes)):
        rows.append(bench_impl(variant(tok, impl, passes, args), impl, args,
                               x, name, passes))
  print('\n'.join(rows))
  if args.markdown:
    with open(args.markdown, 'a') as f:
      f.write(f'\n{jax.devices()[0].device_kind}, inference\n\n'
              + '\n'.join(rows) + '\n')
  sys.exit(outcomes.finish())


if __name__ == '__main__':
  main()
