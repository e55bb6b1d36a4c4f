"""Detokenize speed of a distilled student against its teacher's sampler.

  PYTHONPATH=. python benchmarks/bench_distill.py --workdir=/tmp/vftok_demo_distill
  PYTHONPATH=. python benchmarks/bench_distill.py --config=configs/tokenizer_k600.py:distill
      [--batch 8] [--repeats 7] [--student_steps 1,2,4] [--budget 0]

--workdir: a trained student (configs/demo.py:distill) and its teacher (the
workdir in its train.init_from). --config: a `:distill` config with random
weights (speed does not depend on them; the teacher is the same decoder
without the step table). Per clip, at --batch clips, the codec excluded: the
median of --repeats whole `detokenize` calls after a warm-up, student and
teacher interleaved (a moment's load hits both), and the analytic FLOPs
(vftok/models/flops.py). --budget: tokens per frame (0: all K).
"""
import argparse
import importlib.util
import sys
import time

import jax
import numpy as np

import vftok
from vftok.models import flops


def load_config(spec):
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('bench_cfg', path)
  mod = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(mod)
  return mod.get_config(arg or None)


def random_pair(config):
  """A random-weight student of `config` and its teacher (same params, no
  step table)."""
  student = vftok.Tokenizer.from_config(config)
  teacher_config = config.copy_and_resolve_references()
  teacher_config.model.step_conditioning = False
  params = jax.tree.map(lambda x: x, student.params)
  del params['params']['decoder']['step_embed']
  return student, vftok.Tokenizer(teacher_config, params)


def main(argv):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--workdir', default='')
  p.add_argument('--config', default='')
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--repeats', type=int, default=7)
  p.add_argument('--student_steps', default='')
  p.add_argument('--budget', type=int, default=0)
  args = p.parse_args(argv)
  if bool(args.workdir) == bool(args.config):
    p.error('give one of --workdir (a trained student) or --config')
  if args.workdir:
    student = vftok.Tokenizer.from_checkpoint(args.workdir)
    if not student.is_distilled:
      p.error(f'--workdir={args.workdir} is not a distilled student')
    teacher = student.teacher()
  else:
    student, teacher = random_pair(load_config(args.config))
  steps = ([int(v) for v in args.student_steps.split(',')]
           if args.student_steps else list(student.student_steps))
  m = student.config.model
  k = args.budget or m.tokens_per_frame
  rng = np.random.default_rng(0)
  latents = rng.normal(size=(args.batch,) + student.latent_shape).astype(
      np.float32)
  tokens = np.asarray(student.tokenize(latents))[:, :, :k]
  noise = student.clip_noise(np.arange(args.batch))
  teacher_args = student.sample_defaults('teacher')
  runs = {'teacher': lambda: teacher.detokenize(tokens, noise=noise,
                                                **teacher_args)}
  for n in steps:
    runs[f'student_{n}'] = (lambda n=n: student.detokenize(tokens, steps=n,
                                                            noise=noise))
  times = {name: [] for name in runs}
  for fn in runs.values():
    jax.block_until_ready(fn())   # compile + warm up
  for _ in range(args.repeats):
    for name, fn in runs.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - t0)
  per_clip = {name: float(np.median(t)) / args.batch for name, t in times.items()}
  guided = float(teacher_args['guidance_scale']) != 1.0
  gflop = {'teacher': int(teacher_args['steps'])
           * flops.detokenize_step(m, guided=guided) / 1e9}
  for n in steps:
    gflop[f'student_{n}'] = n * flops.detokenize_step(m, guided=False) / 1e9
  d = jax.devices()[0]
  print(f'# {args.workdir or args.config}: {d.platform} ({d.device_kind}), '
        f'batch {args.batch}, {k} tokens per frame, median of {args.repeats}, '
        f'jax {jax.__version__}')
  print(f"teacher: {teacher_args['steps']} steps, {teacher_args['guidance']} "
        f"at scale {teacher_args['guidance_scale']:g}"
        f' ({"2 passes" if guided else "1 pass"} per step)\n')
  print('| sampler | s/clip detokenize | speed-up | GFLOP/clip | fewer FLOPs |')
  print('|---|---|---|---|---|')
  for name in runs:
    print(f'| {name} | {per_clip[name]:.4f} | '
          f'{per_clip["teacher"] / per_clip[name]:.1f}x | {gflop[name]:.2f} | '
          f'{gflop["teacher"] / gflop[name]:.1f}x |')


if __name__ == '__main__':
  main(sys.argv[1:])
