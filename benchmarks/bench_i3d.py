"""I3D feature throughput: seconds per 16-frame 224 x 224 clip.

  PYTHONPATH=. python benchmarks/bench_i3d.py [--batch_sizes 1,4,8] [--repeats 3]

Times vftok.models.pretrained.i3d.i3d_features (uint8 clips -> [-1, 1] -> 400-d logits,
jitted) on the default JAX backend, after one warm-up call per batch size
(compilation is reported separately). Also reports the weight load time.
"""
import argparse
import time

import jax
import numpy as np

from vftok.models.pretrained import i3d


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--batch_sizes', default='1,4,8')
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--frames', type=int, default=16)
  args = p.parse_args()
  print(f'backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), '
        f'{len(jax.devices())} device(s)')
  t = time.perf_counter()
  i3d.load_variables()
  print(f'weight load (restricted unpickler + checks): '
        f'{time.perf_counter() - t:.2f} s')
  rng = np.random.default_rng(0)
  for bs in [int(b) for b in args.batch_sizes.split(',')]:
    clips = rng.integers(0, 256, (bs, args.frames, i3d.RESOLUTION,
                                  i3d.RESOLUTION, 3), dtype=np.uint8)
    t = time.perf_counter()
    i3d.i3d_features(clips, batch_size=bs)
    first = time.perf_counter() - t
    times = []
    for _ in range(args.repeats):
      t = time.perf_counter()
      i3d.i3d_features(clips, batch_size=bs)
      times.append(time.perf_counter() - t)
    best, med = min(times), float(np.median(times))
    print(f'batch {bs}: first call (incl. compile) {first:.2f} s; '
          f'{med / bs:.3f} s/clip median, {best / bs:.3f} s/clip best '
          f'({args.frames} frames, {i3d.RESOLUTION}x{i3d.RESOLUTION}, '
          f'{args.repeats} repeats)')


if __name__ == '__main__':
  main()
