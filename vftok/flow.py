"""Rectified flow: time sampling, noising, velocity loss, Euler/CFG sampler.

Convention (as in the paper): x_t = t * eps + (1 - t) * x, so t = 1 is pure
noise and t = 0 is data; the model predicts the velocity v = eps - x and the
sampler integrates dx/dt = v from t = 1 to t = 0.
"""
import dataclasses
from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp


def shift_time(t, shift: float):
  """SD3-style resolution shift: shift > 1 spends more steps at high noise."""
  if shift == 1.0:
    return t
  return shift * t / (1 + (shift - 1) * t)


def sample_time(rng, batch: int, mean=0.0, std=1.0, shift=1.0,
                uniform_frac=0.0):
  """t ~ logit-normal(mean, std), then shifted; [batch] in (0, 1).

  uniform_frac: that fraction of the times is drawn uniformly instead, so a
  law centred at high noise (the demo's mean 2: 0.2 % of times below 0.3)
  still trains the low-noise end that every sampler step below it uses."""
  t = shift_time(jax.nn.sigmoid(mean + std * jax.random.normal(rng, (batch,))),
                 shift)
  if uniform_frac <= 0:
    return t
  r_u, r_mix = jax.random.split(jax.random.fold_in(rng, 1))
  uniform = jax.random.uniform(r_u, (batch,), minval=1e-5, maxval=1 - 1e-5)
  return jnp.where(jax.random.bernoulli(r_mix, uniform_frac, (batch,)),
                   uniform, t)


def add_noise(x, eps, t):
  """t: [B] (one time per clip) or [B, T] (one per latent frame)."""
  t = t.reshape(t.shape + (1,) * (x.ndim - t.ndim))
  return t * eps + (1 - t) * x


def velocity_target(x, eps):
  return eps - x


@dataclasses.dataclass(frozen=True)
class Guidance:
  """How the conditional and unconditional (null-condition) velocities are
  combined, as the official release does it.

  scale == 1: no guidance (one forward per step). Otherwise
    'cfg': v = v_u + scale * (v_c - v_u)  (classifier-free guidance);
    'apg': adaptive projected guidance (Sadat et al. 2024) on the velocity:
      d = v_c - v_u is accumulated with `momentum` (running = d + momentum *
      running, one buffer per clip), clipped to L2 norm `norm_threshold`
      (0: no clip) and split into parts parallel and orthogonal to v_c, both
      norms and projections per clip and channel over (T, H, W); the parallel
      part, which mostly over-saturates, is scaled by `eta`:
      v = v_c + (scale - 1) * (d_orth + eta * d_par).
  """
  scale: float = 1.0
  kind: str = 'cfg'
  momentum: float = 0.0
  eta: float = 0.0
  norm_threshold: float = 0.0

  @classmethod
  def from_settings(cls, s) -> 'Guidance':
    """From sampler settings (models/tokenizer.sample_settings' keys:
    guidance, guidance_scale, apg_momentum, apg_eta, apg_norm_threshold)."""
    return cls(float(s['guidance_scale']), s['guidance'],
               float(s['apg_momentum']), float(s['apg_eta']),
               float(s['apg_norm_threshold']))

  def __post_init__(self):
    if self.kind not in ('cfg', 'apg'):
      raise ValueError(f"guidance kind must be 'cfg' or 'apg', got {self.kind!r}")

  @property
  def active(self) -> bool:
    return self.scale != 1.0


def _per_channel_sum(x):
  """Sum over every axis but batch and channel (the last): the release's
  norm over (T, H, W) of a [1, C, T, H, W] video, per channel."""
  return jnp.sum(x, axis=tuple(range(1, x.ndim - 1)), keepdims=True)


def apg_combine(v_c, v_u, buffer, g: Guidance):
  """-> (guided velocity, new momentum buffer). All [B, T, H, W, C]."""
  d = v_c - v_u + g.momentum * buffer
  buffer = d
  if g.norm_threshold > 0:
    norm = jnp.sqrt(_per_channel_sum(jnp.square(d)))
    d = d * jnp.minimum(1.0, g.norm_threshold / norm)
  unit = v_c / jnp.maximum(jnp.sqrt(_per_channel_sum(jnp.square(v_c))), 1e-12)
  d_par = _per_channel_sum(d * unit) * unit
  d_orth = d - d_par
  return v_c + (g.scale - 1.0) * (d_orth + g.eta * d_par), buffer


def guide(v_c, v_u, buffer, g: Guidance):
  if g.kind == 'cfg':
    return v_u + g.scale * (v_c - v_u), buffer
  return apg_combine(v_c, v_u, buffer, g)


def time_grid(steps: int, shift: float = 1.0):
  """[steps + 1] flow times t_i = i / steps from 1 down to 0 (the release's
  sampler), optionally shifted."""
  return shift_time(jnp.arange(steps, -1, -1, dtype=jnp.float32) / steps, shift)


GUIDANCE_PASSES = ('auto', 'one', 'two')


def one_pass(passes: str, backend: str) -> bool:
  """config.sample.guidance_passes -> run guidance as one batched forward?
  'auto': one off a CPU, two on it (as fast there, half the memory:
  docs/attention_kernels.md)."""
  if passes not in GUIDANCE_PASSES:
    raise ValueError(f'config.sample.guidance_passes={passes!r}: must be one '
                     f'of {GUIDANCE_PASSES}')
  return passes == 'one' or (passes == 'auto' and backend != 'cpu')


def euler_sample(velocity_fn: Callable, noise, steps: int,
                 guidance: Union[float, Guidance] = 1.0, shift: float = 1.0,
                 first_frame: Optional[jax.Array] = None,
                 one_pass: bool = True):
  """Integrates from t = 1 (noise) to t = 0 in `steps` Euler steps:
  x <- x + (t_next - t) v(x, t) (= x - v / steps unshifted).

  velocity_fn(x, t, null) -> v: x [N, ...], t [N], null None (every clip
  conditional) or bool [N] (True: that row gets the null condition), where N
  is the batch B, or 2B for guidance in one pass. With guidance the
  unconditional (null-condition) branch is evaluated too (see `Guidance`):
  one_pass runs both branches as one forward of [x; x] (2B rows: one larger
  batch instead of two launches per step; docs/attention_kernels.md has the
  measured gain), else two forwards of B.

  first_frame [B, 1, ...]: frame conditioning (stage-2 decoders, the
  release's 'clean' mode): latent frame 0 is set to this clean value before
  every model call and in the output; later frames are generated around it.
  """
  x, _ = _integrate(velocity_fn, noise, steps, guidance, shift, first_frame,
                    one_pass)
  return x


def euler_trajectory(velocity_fn: Callable, noise, steps: int,
                     guidance: Union[float, Guidance], shift: float,
                     times, one_pass: bool = True):
  """The same integration as euler_sample (no first frame) -> the states at
  `times` [M] (each in [0, 1]) on its piecewise-linear path: [M, B, ...].
  Between two Euler steps the sampler's x(t) is linear in t, so a state at
  any t is exact for this sampler, not an interpolation of a smoother one
  (the targets of few-step distillation, models/distill.py)."""
  times = jnp.asarray(times, jnp.float32)
  x, states = _integrate(velocity_fn, noise, steps, guidance, shift, None,
                         one_pass, times)
  at_end = (times <= 0).reshape((-1,) + (1,) * x.ndim)
  return jnp.where(at_end, x[None], states)


def _integrate(velocity_fn, noise, steps, guidance, shift, first_frame,
               one_pass, times=None):
  """-> (x at t = 0, the states at `times` (None: not recorded) for those
  above 0; those at 0 are left to the caller)."""
  if steps < 1:
    raise ValueError(f'need at least one Euler step, got {steps}')
  g = guidance if isinstance(guidance, Guidance) else Guidance(float(guidance))
  ts = time_grid(steps, shift)
  batch = noise.shape[0]
  # APG's momentum buffer is carried only when it is used (momentum != 0).
  keep_buffer = g.active and g.kind == 'apg' and g.momentum != 0

  def condition(x):
    if first_frame is None:
      return x
    return x.at[:, :1].set(first_frame.astype(x.dtype))

  def velocity(x, tb, buffer):
    if not g.active:
      return velocity_fn(x, tb, None), buffer
    if one_pass:
      both = velocity_fn(jnp.concatenate([x, x]), jnp.concatenate([tb, tb]),
                         jnp.arange(2 * batch) >= batch)
      v_c, v_u = both[:batch], both[batch:]
    else:
      v_c = velocity_fn(x, tb, None)
      v_u = velocity_fn(x, tb, jnp.ones((batch,), bool))
    v, buffer_new = guide(v_c, v_u, buffer, g)
    return v, buffer_new if keep_buffer else buffer

  def step(carry, i):
    x, buffer, states = carry
    x = condition(x)
    t, t_next = ts[i], ts[i + 1]
    v, buffer = velocity(x, jnp.full((batch,), t), buffer)
    if times is not None:  # states at t_next < tau <= t lie on this step
      inside = (times <= t) & (times > t_next)
      at = x[None] + (times - t).reshape((-1,) + (1,) * x.ndim) * v[None]
      states = jnp.where(inside.reshape((-1,) + (1,) * x.ndim), at, states)
    return (x + (t_next - t) * v, buffer, states), None

  buffer = jnp.zeros_like(noise) if keep_buffer else jnp.zeros((), noise.dtype)
  states = (jnp.zeros((0,)) if times is None
            else jnp.zeros((times.shape[0],) + noise.shape, noise.dtype))
  (x, _, states), _ = jax.lax.scan(step, (noise, buffer, states),
                                   jnp.arange(steps))
  return condition(x), (None if times is None else states)
