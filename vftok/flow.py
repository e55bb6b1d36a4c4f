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


def sample_time(rng, batch: int, mean=0.0, std=1.0, shift=1.0):
  """t ~ logit-normal(mean, std), then shifted; [batch] in (0, 1)."""
  t = jax.nn.sigmoid(mean + std * jax.random.normal(rng, (batch,)))
  return shift_time(t, shift)


def add_noise(x, eps, t):
  """t: [B] (one time per clip) or [B, T] (one per latent frame)."""
  t = t.reshape(t.shape + (1,) * (x.ndim - t.ndim))
  return t * eps + (1 - t) * x


def velocity_target(x, eps):
  return eps - x


@dataclasses.dataclass(frozen=True)
class Guidance:
  """How the conditional and unconditional velocities are combined.

  scale == 1: no guidance (one forward per step). Otherwise
    'cfg': v = v_u + scale * (v_c - v_u)  (classifier-free guidance);
    'apg': adaptive projected guidance (Sadat et al. 2024), as in the FlexTok
      release: the guidance direction d = x0_c - x0_u on the denoised
      prediction x0 = x_t - t v is (optionally) accumulated with `momentum`
      (negative values, e.g. -0.5, push away from past directions), clipped to
      L2 norm `norm_threshold` per sample (0: no clip), and split into parts
      parallel and orthogonal to x0_c; the parallel part, which mostly
      over-saturates, is scaled by `eta`:
      x0 = x0_c + (scale - 1) * (d_orth + eta * d_par).
  """
  scale: float = 1.0
  kind: str = 'cfg'
  momentum: float = 0.0
  eta: float = 0.0
  norm_threshold: float = 0.0

  def __post_init__(self):
    if self.kind not in ('cfg', 'apg'):
      raise ValueError(f"guidance kind must be 'cfg' or 'apg', got {self.kind!r}")

  @property
  def active(self) -> bool:
    return self.scale != 1.0


def _per_sample_sum(x):
  return jnp.sum(x, axis=tuple(range(1, x.ndim)), keepdims=True)


def apg_combine(x0_c, x0_u, buffer, g: Guidance):
  """-> (guided x0, new momentum buffer). All [B, ...]."""
  d = x0_c - x0_u
  if g.momentum:
    d = d + g.momentum * buffer
    buffer = d
  if g.norm_threshold > 0:
    norm = jnp.sqrt(_per_sample_sum(jnp.square(d)))
    d = d * jnp.minimum(1.0, g.norm_threshold / jnp.maximum(norm, 1e-12))
  unit = x0_c / jnp.maximum(jnp.sqrt(_per_sample_sum(jnp.square(x0_c))), 1e-12)
  d_par = _per_sample_sum(d * unit) * unit
  d_orth = d - d_par
  return x0_c + (g.scale - 1.0) * (d_orth + g.eta * d_par), buffer


def euler_sample(velocity_fn: Callable, noise, steps: int,
                 guidance: Union[float, Guidance] = 1.0, shift: float = 1.0,
                 clean_first_frame: Optional[jax.Array] = None):
  """Integrates from t = 1 (noise) to t = 0 in `steps` Euler steps.

  velocity_fn(x, t, cond: bool) -> v, with t of shape [B, T] (one flow time
  per latent frame). With guidance the unconditional branch (all registers
  masked) is evaluated too (see `Guidance`).

  clean_first_frame [B, 1, ...]: frame conditioning (stage-2 decoders): latent
  frame 0 is held at this clean value with flow time 0 throughout, so the
  output's first frame is exactly it and later frames are generated around it.
  """
  if steps < 1:
    raise ValueError(f'need at least one Euler step, got {steps}')
  g = guidance if isinstance(guidance, Guidance) else Guidance(float(guidance))
  ts = shift_time(jnp.linspace(1.0, 0.0, steps + 1), shift)
  batch, frames = noise.shape[:2]
  first = None
  if clean_first_frame is not None:
    first = jnp.zeros((frames,), bool).at[0].set(True)
    noise = noise.at[:, :1].set(clean_first_frame.astype(noise.dtype))

  def frame_times(t):
    tb = jnp.full((batch, frames), t)
    return tb if first is None else jnp.where(first[None], 0.0, tb)

  def step(carry, i):
    x, buffer = carry
    t, t_next = ts[i], ts[i + 1]
    tf = frame_times(t)
    v = velocity_fn(x, tf, True)
    if g.active:
      v_u = velocity_fn(x, tf, False)
      if g.kind == 'cfg':
        v = v_u + g.scale * (v - v_u)
      else:
        # x0 = x_t - t v (x_t = t eps + (1 - t) x, v = eps - x).
        x0, buffer = apg_combine(x - t * v, x - t * v_u, buffer, g)
        v = (x - x0) / t
    x_next = x + (t_next - t) * v
    if first is not None:
      x_next = jnp.where(first[None, :, None, None, None], x, x_next)
    return (x_next, buffer), None

  (x, _), _ = jax.lax.scan(step, (noise, jnp.zeros_like(noise)),
                           jnp.arange(steps))
  return x
