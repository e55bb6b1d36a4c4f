"""VidTok (JAX port) speed and memory at the real size, random weights.

  PYTHONPATH=. python benchmarks/bench_vidtok.py [--ch 128] [--frames 17] \
      [--resolution 128] [--batch 1] [--repeats 2] [--memory_resolutions 128,256]

1. XLA's memory estimate (`jit(...).lower(...).compile().memory_analysis()`:
   arguments, outputs and peak temporaries of the compiled program) for
   encode and decode of `batch` clips at each of `memory_resolutions`,
   from abstract parameters (nothing is run, no weights are made).
2. Wall time of `VidTok.encode` (posterior mean) and `VidTok.decode` on one
   batch at `resolution` after a warm-up call (compilation reported apart),
   with `VidTok.init_random(ch)` weights (158M parameters at ch=128).

The release's PyTorch (CPU, 2 threads, float32) takes 13 s to encode and
28 s to decode one 17 x 128 x 128 clip.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from vftok.models.pretrained import vidtok
from vftok.models.pretrained import vidtok_weights

GIB = 2 ** 30


def abstract_params(cfg):
  params = {}
  for path, shape in vidtok_weights.param_shapes(cfg).items():
    node = params
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = jax.ShapeDtypeStruct(shape, jnp.float32)
  return params


def memory(cfg, batch, frames, res):
  """{'encode': (args, out, temp) bytes, 'decode': ...} from XLA."""
  video = jax.ShapeDtypeStruct((batch, frames, res, res, 3), jnp.float32)
  t = (frames - 1) // 4 + 1
  lat = jax.ShapeDtypeStruct((batch, t, res // 8, res // 8, cfg.z_channels),
                             jnp.float32)
  params = abstract_params(cfg)
  out = {}
  for name, fn, x in (('encode', vidtok._moments, video),
                      ('decode', vidtok._decode, lat)):
    compiled = fn.lower(cfg, params, x).compile()
    m = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    out[name] = (m.argument_size_in_bytes, m.output_size_in_bytes,
                 m.temp_size_in_bytes, float((cost or {}).get('flops', 0)))
  return out


def timed(fn, repeats):
  """-> (first call s, best s, median s, CPU s of the best call). CPU time
  (all threads) shows the work when other processes share the cores."""
  t = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t
  times = []
  for _ in range(repeats):
    t, c = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    times.append((time.perf_counter() - t, time.process_time() - c))
  best = min(times)
  return first, best[0], float(np.median([w for w, _ in times])), best[1]


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--ch', type=int, default=128)
  p.add_argument('--frames', type=int, default=17)
  p.add_argument('--resolution', type=int, default=128)
  p.add_argument('--batch', type=int, default=1)
  p.add_argument('--repeats', type=int, default=2)
  p.add_argument('--memory_resolutions', default='128,256')
  p.add_argument('--dtype', default='float32')
  p.add_argument('--conv3d', default='auto',
                 help="timed run: 'auto' | 'native' | 'per_frame'")
  p.add_argument('--skip_timing', action='store_true')
  args = p.parse_args()
  print(f'backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), '
        f'{len(jax.devices())} device(s)', flush=True)
  for res in [int(r) for r in args.memory_resolutions.split(',') if r]:
    for conv3d in ('native', 'per_frame'):
      cfg = vidtok.VidTokConfig(ch=args.ch, dtype=args.dtype, conv3d=conv3d)
      for name, (arg, out, temp, flops) in memory(
          cfg, args.batch, args.frames, res).items():
        print(f'memory {name} {args.batch}x{args.frames}x{res}x{res} '
              f'(conv3d={conv3d}): peak {(arg + out + temp) / GIB:.2f} GiB '
              f'= arguments {arg / GIB:.2f} + outputs {out / GIB:.3f} + '
              f'temporaries {temp / GIB:.2f}; {flops / 1e12:.2f} TFLOP',
              flush=True)
  if args.skip_timing:
    return
  t = time.perf_counter()
  vae = vidtok.VidTok.init_random(ch=args.ch, dtype=args.dtype,
                                  conv3d=args.conv3d)
  print(f'{vae}, conv3d={vae.cfg.conv3d} (per_frame: '
        f'{vae.cfg.per_frame_conv3d}); random init {time.perf_counter() - t:.1f} s', flush=True)
  rng = np.random.default_rng(0)
  res = args.resolution
  video = rng.uniform(-1, 1, (args.batch, args.frames, res, res, 3)).astype(
      np.float32)
  video = jax.device_put(video)
  first, best, med, cpu = timed(lambda: vae.encode(video), args.repeats)
  print(f'encode {args.batch}x{args.frames}x{res}x{res}: {med:.2f} s median, '
        f'{best:.2f} s best (CPU time {cpu:.2f} s; {args.repeats} repeats); '
        f'first call incl. compile {first:.2f} s', flush=True)
  z = vae.encode(video)
  first, best, med, cpu = timed(lambda: vae.decode(z), args.repeats)
  print(f'decode {tuple(z.shape)}: {med:.2f} s median, {best:.2f} s best '
        f'(CPU time {cpu:.2f} s; {args.repeats} repeats); first call incl. '
        f'compile {first:.2f} s', flush=True)


if __name__ == '__main__':
  main()
