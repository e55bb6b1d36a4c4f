"""training.steps_for_budget / steps_per_second: the length a measured speed
buys (the job's use of it: tests/test_train_job.py)."""
import jax
import jax.numpy as jnp
import pytest

from vftok import training


@pytest.mark.parametrize('rate, expected', [
    (3.98, 1600),   # this project's 2-core machine: 1671 steps fit
    (2.2, 900),     # a slower 2-core machine
    (1.0, 500),     # slower still: the floor
    (10.0, 1800),   # a fast machine: the cap
])
def test_steps_for_budget_rounds_down_within_floor_and_cap(rate, expected):
  assert training.steps_for_budget(rate, 420.0, 500, 1800) == expected


def test_steps_per_second_leaves_the_state_intact():
  state = {'w': jnp.ones(3)}
  # Donated, as the jobs' train step is: the timing runs on a copy.
  step = jax.jit(lambda s, b: ({'w': s['w'] + b}, {'loss': s['w'].sum()}),
                 donate_argnums=0)
  rate = training.steps_per_second(step, state, jnp.float32(1.0),
                                   timed_steps=3)
  assert rate > 0
  assert (state['w'] == 1).all()
