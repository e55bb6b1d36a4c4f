"""Tokenize / detokenize speed of a tokenizer (random weights: speed does not
depend on them).

  PYTHONPATH=. python benchmarks/bench_inference.py --config=configs/tokenizer_k600.py
      [--official=tests/fixtures/official/model.safetensors --latent_shape=3,4,6]
      [--batch 1] [--steps 2] [--repeats 3] [--dtype float32]

Prints the compile time, then seconds for `tokenize` and for one Euler step of
`detokenize` (with guidance: a conditional and a null-condition forward),
medians of --repeats after a warm-up, and clips/s for a whole 40-step APG
detokenize at that rate.
"""
import argparse
import importlib.util
import time

import jax
import numpy as np

import vftok


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
  print(f'compile: tokenize {compile_tok:.1f} s, detokenize {compile_detok:.1f} s')
  print(f'tokenize: {s_tok:.3f} s per call ({args.batch / s_tok:.2f} clips/s)')
  print(f'detokenize: {s_detok:.3f} s per Euler step with guidance '
        f'(2 forwards); a 40-step APG decode: {40 * s_detok:.1f} s '
        f'({args.batch / (40 * s_detok):.3f} clips/s)')


if __name__ == '__main__':
  main()
