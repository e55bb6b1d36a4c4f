"""Streaming tokenization latency: one latent frame at a time with the KV
cache vs re-encoding the whole prefix each time a frame arrives.

  PYTHONPATH=. python benchmarks/bench_streaming.py [--config=configs/demo.py]
      [--frames 16] [--batch 1] [--repeats 3]

Prints, for every frame index t, the milliseconds to get frame t's tokens
(median of --repeats, after a warm-up that compiles every shape) both ways,
and checks that the two give identical tokens (exit status 1 if they do not:
tests/test_stage2_sampling.py asserts they are equal). Random weights: latency
does not depend on them.
"""
import argparse
import importlib.util
import sys
import time

import jax
import numpy as np

import vftok


def load_config(path):
  spec = importlib.util.spec_from_file_location('bench_cfg', path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--config', default='configs/demo.py')
  p.add_argument('--frames', type=int, default=16)
  p.add_argument('--batch', type=int, default=1)
  p.add_argument('--repeats', type=int, default=3)
  args = p.parse_args()
  c = load_config(args.config)
  c.model.dtype = 'float32'
  tok = vftok.Tokenizer.from_config(c, seed=0)
  _, h, w, ch = tok.latent_shape
  x = np.random.default_rng(0).normal(
      size=(args.batch, args.frames, h, w, ch)).astype(np.float32)
  print(f'backend: {jax.default_backend()}; {args.config}: encoder depth '
        f'{c.model.enc_depth} width {c.model.enc_width}, K={tok.tokens_per_frame}, '
        f'latent frame {h}x{w}x{ch}, batch {args.batch}')

  def stream_all():
    s = tok.stream(batch=args.batch, max_frames=args.frames)
    times, toks = [], []
    for t in range(args.frames):
      t0 = time.perf_counter()
      toks.append(np.asarray(s.push(x[:, t])))
      times.append(time.perf_counter() - t0)
    return np.array(times), np.stack(toks, 1)

  def prefix_all():
    times, toks = [], []
    for t in range(args.frames):
      t0 = time.perf_counter()
      toks.append(np.asarray(tok.tokenize(x[:, :t + 1]))[:, -1])
      times.append(time.perf_counter() - t0)
    return np.array(times), np.stack(toks, 1)

  stream_all(), prefix_all()  # compile every shape
  s_t = np.median([stream_all()[0] for _ in range(args.repeats)], axis=0)
  p_t = np.median([prefix_all()[0] for _ in range(args.repeats)], axis=0)
  same = np.array_equal(stream_all()[1], prefix_all()[1])
  print('| frame t | stream (ms) | re-encode prefix (ms) |')
  print('|---|---|---|')
  for t in range(args.frames):
    print(f'| {t} | {1e3 * s_t[t]:.1f} | {1e3 * p_t[t]:.1f} |')
  print(f'mean per frame: stream {1e3 * s_t.mean():.1f} ms, re-encode '
        f'{1e3 * p_t.mean():.1f} ms; identical tokens: {same}')
  if not same:
    sys.exit('FAILED: streamed tokens differ from re-encoding the prefix')


if __name__ == '__main__':
  main()
