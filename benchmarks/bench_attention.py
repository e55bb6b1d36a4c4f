"""One attention, dense XLA against the block-sparse XLA path (and any other
`attention_impl`), forward and forward + backward, on vftok's masks.

  PYTHONPATH=. python benchmarks/bench_attention.py [--impls xla,xla_sparse]
      [--repeats 5] [--markdown rows.md]

Rows (q, k, v [B, L, heads, head_dim], float32, random):
  encoder   the encoder mask of 5 latent frames x (256 patches + 32
            registers), [4, 1440, 6, 64] (the benchmark model of
            benchmarks/bench_vs_release.py);
  decoder   the time-causal decoder mask of the same layout;
  causal    AR causal attention at [8, 641, 4, 64] and [4, 1025, 8, 64].
Each cell is the median of --repeats runs after one compiling run, in ms,
and the row prints the computed share of the dense scores ('xla_sparse':
models/attention_kernels.sparse_density) and the largest difference from
the first impl (outputs and q/k/v gradients).
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from vftok.models import attention_kernels as ak
from vftok.models import masks


def cases():
  enc = masks.interleaved(5, 256, 32, registers_first=False)
  dec = masks.interleaved(5, 256, 32, registers_first=True)
  yield 'encoder 5 x (256 + 32)', masks.encoder_mask(enc, enc), False, (4, 6, 64)
  yield 'decoder 5 x (32 + 256)', masks.time_causal_mask(dec, dec), False, (4, 6, 64)
  yield 'causal 641', np.tril(np.ones((641, 641), bool)), True, (8, 4, 64)
  yield 'causal 1025', np.tril(np.ones((1025, 1025), bool)), True, (4, 8, 64)


def timed(fn, args, repeats):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return 1e3 * float(np.median(times))


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--impls', default='xla,xla_sparse')
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--markdown', default='')
  args = p.parse_args()
  impls = args.impls.split(',')
  rows = ['| mask | B, L, H, D | density | ' + ' | '.join(
      f'{i} fwd / fwd+bwd ms' for i in impls) + ' | max diff |',
          '|' + '---|' * (4 + len(impls))]
  for name, mask, causal, (b, h, d) in cases():
    length = mask.shape[0]
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v, dout = (jax.random.normal(kk, (b, length, h, d)) for kk in keys)
    cells, ref, diff = [], None, 0.0
    for impl in impls:
      attn = lambda q, k, v, impl=impl: ak.attention(
          q, k, v, mask=None if causal else mask, is_causal=causal,
          scale=8.0 / d, impl=impl)
      fwd = jax.jit(attn)
      grad = jax.jit(lambda q, k, v, attn=attn: jax.vjp(attn, q, k, v)[1](
          dout))
      out = (fwd(q, k, v), *grad(q, k, v))
      if ref is None:
        ref = out
      else:
        diff = max(diff, *(float(jnp.abs(a - r).max())
                           for a, r in zip(out, ref)))
      cells.append(f'{timed(fwd, (q, k, v), args.repeats):.1f} / '
                   f'{timed(grad, (q, k, v), args.repeats):.1f}')
      print(f'{name} [{impl}]: {cells[-1]} ms', flush=True)
    density = ak.sparse_density(mask)
    rows.append(f'| {name} | {b}, {length}, {h}, {d} | {density:.2f} | '
                + ' | '.join(cells) + f' | {diff:.1e} |')
  table = '\n'.join(rows)
  print(table)
  if args.markdown:
    with open(args.markdown, 'w') as f:
      f.write(table + '\n')


if __name__ == '__main__':
  main()
