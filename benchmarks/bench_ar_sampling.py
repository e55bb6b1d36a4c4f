"""AR sampling throughput with and without the KV cache.

  PYTHONPATH=. python benchmarks/bench_ar_sampling.py [--depth 4] \
    [--width 256] [--batch 8] [--frames 5] [--budget 16] [--cfg 1.0] \
    [--dtype float32] [--repeats 3]

Random (untrained) weights, vocab 64000, class-conditional. The first call
of each mode is reported as compile + run; then the best of `--repeats` runs
gives tokens/s (batch * frames * budget sampled tokens per call). Without
the cache every position reruns the full forward over the whole sequence,
so the gap grows with frames * budget.
"""
import argparse
import time

import jax
import jax.numpy as jnp

from vftok.models import ar_sampling
from vftok.models import ar
from vftok.models import token_order
from vftok.sharding import unbox


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--depth', type=int, default=4)
  parser.add_argument('--width', type=int, default=256)
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--frames', type=int, default=5)
  parser.add_argument('--budget', type=int, default=16)
  parser.add_argument('--cfg', type=float, default=1.0)
  parser.add_argument('--dtype', default='float32')
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()

  config = ar.ARConfig(depth=args.depth, width=args.width, num_classes=600,
                       num_frames=args.frames, dtype=args.dtype)
  model = ar.ARTransformer(config)
  fi, ti = token_order.positions(args.frames, 1, 'time_first')
  params = jax.jit(lambda r: unbox(model.init(
      r, jnp.zeros((1, args.frames), jnp.int32), fi, ti))['params'])(
          jax.random.key(0))
  labels = jnp.arange(args.batch, dtype=jnp.int32) % 600
  tokens = args.batch * args.frames * args.budget
  print(f'{jax.devices()[0].platform}: depth {args.depth} width {args.width} '
        f'({ar.count_params(params) / 1e6:.1f}M non-embedding), batch '
        f'{args.batch}, {args.frames} frames x {args.budget} tokens, cfg '
        f'{args.cfg}, {args.dtype}')
  for use_cache in (True, False):
    run = lambda seed: jax.block_until_ready(ar_sampling.sample(
        model, params, jax.random.key(seed), num_frames=args.frames,
        tokens_per_frame_budget=args.budget, class_labels=labels,
        cfg_scale=args.cfg, temperature=1.0, top_k=100,
        use_kv_cache=use_cache))
    start = time.perf_counter()
    run(0)
    first = time.perf_counter() - start
    times = []
    for seed in range(1, args.repeats + 1):
      start = time.perf_counter()
      run(seed)
      times.append(time.perf_counter() - start)
    best = min(times)
    print(f'kv_cache={str(use_cache):5}  compile+run {first:7.2f} s  '
          f'run {best:7.3f} s  {tokens / best:9.1f} tokens/s')


if __name__ == '__main__':
  main()
