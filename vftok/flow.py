"""Rectified flow: time sampling, noising, velocity loss, Euler/CFG sampler.

Convention (as in the paper): x_t = t * eps + (1 - t) * x, so t = 1 is pure
noise and t = 0 is data; the model predicts the velocity v = eps - x and the
sampler integrates dx/dt = v from t = 1 to t = 0.
"""
from typing import Callable

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
  t = t.reshape(t.shape + (1,) * (x.ndim - t.ndim))
  return t * eps + (1 - t) * x


def velocity_target(x, eps):
  return eps - x


def euler_sample(velocity_fn: Callable, noise, steps: int,
                 guidance_scale: float = 1.0, shift: float = 1.0):
  """Integrates from t = 1 (noise) to t = 0 in `steps` Euler steps.

  velocity_fn(x, t, cond: bool) -> v. With guidance_scale != 1 the
  unconditional branch (all registers masked) is evaluated too and combined as
  v_u + s * (v_c - v_u) (classifier-free guidance).
  """
  if steps < 1:
    raise ValueError(f'need at least one Euler step, got {steps}')
  ts = shift_time(jnp.linspace(1.0, 0.0, steps + 1), shift)
  batch = noise.shape[0]

  def step(x, i):
    t, t_next = ts[i], ts[i + 1]
    tb = jnp.full((batch,), t)
    v = velocity_fn(x, tb, True)
    if guidance_scale != 1.0:
      v_u = velocity_fn(x, tb, False)
      v = v_u + guidance_scale * (v - v_u)
    return x + (t_next - t) * v, None

  x, _ = jax.lax.scan(step, noise, jnp.arange(steps))
  return x
