"""Few-step decoding: distilling the guided flow decoder into a student that
samples in 1, 2 or 4 steps (the paper's future work, Sec. 4.3 / App. E).

Method: guided trajectory distillation, multistep (Luhman & Luhman 2021's
one-step distillation of an ODE sampler, extended to a grid of steps as in
multistep consistency / progressive distillation, done in one round).

  For a clip, its codes at a token budget (nested dropout as in training)
  and noise eps, the teacher's guided sampler (config.sample: its steps,
  CFG/APG and time grid) is run from eps, and its states are read at the
  student grid t_j = shift(j / S_max), j = S_max .. 0. A student of S steps
  (S in config.distill.student_steps, powers of 2 dividing S_max) takes
  Euler steps between every (S_max / S)-th grid point; for each of them it
  is trained to land where the teacher lands:

    v_student(x_a, t_a | codes, keep, S) ~ (x_b - x_a) / (t_b - t_a)

  with x_a, x_b the teacher's states at the step's ends. Every step of every
  S of every clip is one row of the student batch (1 + 2 + 4 = 7 per clip for
  (1, 2, 4)), so each costly teacher trajectory trains all of them.

Why this method here:
  * it reproduces *the* teacher sampler, guidance included: APG's momentum
    buffer and its per-clip norms over all frames are a function of the
    whole trajectory, which a pointwise target (shortcut / consistency
    models on the guided velocity) cannot express; the trajectory carries
    them. One pass per student step, guidance baked in.
  * rectified flow's near-straight paths make the few-step targets smooth
    functions of x_a, and the student starts as the teacher (the step
    embedding is zero at init), so training refines rather than relearns.
  * the per-budget conditioning is the teacher's own input (codes + keep):
    one student serves every nested-dropout budget and every trained S.
  * no second model to train (distribution matching needs a fake-score
    network and is unstable at this scale) and no dataset of teacher samples
    to store (reflow): the teacher runs inside the step, forward only.
Its cost per step: the teacher's steps x 2 guided forwards of the batch.
"""
from typing import Dict, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from vftok import flow
from vftok.models import decoder as decoder_lib
from vftok.models import tokenizer as tokenizer_lib


def check_student_steps(student_steps: Sequence[int]) -> Tuple[int, ...]:
  """Sorted, unique powers of 2 within the decoder's step table."""
  steps = tuple(sorted({int(s) for s in student_steps}))
  most = 2 ** (decoder_lib.STEP_LEVELS - 1)
  if not steps or any(s < 1 or s > most or s & (s - 1) for s in steps):
    raise ValueError(f'config.distill.student_steps={tuple(student_steps)}: '
                     f'need powers of 2 in [1, {most}]')
  return steps


def student_pairs(student_steps: Sequence[int]):
  """-> (S per row, start index, end index) on the grid of S_max steps: one
  entry per step of every student step count."""
  steps = check_student_steps(student_steps)
  most = steps[-1]
  rows = [(s, i * (most // s), (i + 1) * (most // s))
          for s in steps for i in range(s)]
  return tuple(np.asarray(c, np.int32) for c in zip(*rows))


def loss_fn(student, teacher, params, teacher_params, batch: Dict, rng,
            config) -> Tuple[jax.Array, Dict]:
  """The distillation objective (see the module docstring).

  student / teacher: tokenizer modules (the student's decoder has step
  conditioning); params: the student's (its encoder is frozen and is the
  teacher's); teacher_params: {'params': {'decoder': ...}} of the teacher.
  """
  m = config.model
  x = batch['latents'].astype(jnp.float32)
  b = x.shape[0]
  r_keep, r_eps = jax.random.split(rng)
  keep = tokenizer_lib.sample_keep(r_keep, b, m.tokens_per_frame,
                                   m.nested_dropout)
  eps = jax.random.normal(r_eps, x.shape)
  codes, _ = student.apply(params, x,
                           method=tokenizer_lib.VideoFlexTok.encode)
  codes = jax.lax.stop_gradient(codes)

  s_row, start, end = student_pairs(config.distill.student_steps)
  sampler = tokenizer_lib.sample_settings(config, 'teacher')
  shift = float(sampler['time_shift'])
  grid = flow.time_grid(int(s_row.max()), shift)
  passes = flow.one_pass(config.sample.get('guidance_passes', 'auto'),
                         jax.default_backend())

  def teacher_velocity(x_t, t, null):
    rows = x_t.shape[0] // b
    v, _ = teacher.apply(teacher_params, jnp.concatenate([codes] * rows),
                         x_t, t, jnp.concatenate([keep] * rows), null,
                         method=tokenizer_lib.VideoFlexTok.decode)
    return v

  states = jax.lax.stop_gradient(flow.euler_trajectory(
      teacher_velocity, eps, int(sampler['steps']),
      flow.Guidance.from_settings(sampler), shift, grid, passes))
  x_a, x_b = states[start], states[end]            # [P, B, T, H, W, C]
  t_a, t_b = grid[start], grid[end]                # [P]
  target = (x_b - x_a) / (t_b - t_a).reshape(-1, 1, 1, 1, 1, 1)

  p = len(s_row)
  flat = lambda a: a.reshape((p * b,) + a.shape[2:])
  tile = lambda a: jnp.concatenate([a] * p)
  v, _ = student.apply(params, tile(codes), flat(x_a),
                       jnp.repeat(t_a, b), tile(keep), None, None,
                       jnp.repeat(jnp.asarray(s_row), b),
                       method=tokenizer_lib.VideoFlexTok.decode)
  sq = jnp.mean(jnp.square(v - flat(target)), axis=tuple(range(1, x.ndim)))
  sq = sq.reshape(p, b).mean(axis=1)               # per (S, step)
  loss = jnp.mean(sq)
  metrics = {'loss': loss}
  for s in sorted(set(s_row.tolist())):
    metrics[f'loss_steps{s}'] = jnp.mean(sq[np.flatnonzero(s_row == s)])
  return loss, metrics


def teacher_decoder_params(params) -> Dict:
  """The part of a tokenizer's params the teacher's decode reads."""
  return {'params': {'decoder': params['params']['decoder']}}
