"""The one training loop (vftok/training.run_loop) that the tokenizer and AR
trainers share: resume, evaluation timing, release of the preemption guard.
A scalar 'model' keeps these tests fast; the jobs' own tests run it for real."""
import signal
import time

import grain
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vftok import checkpoint
from vftok import training
from testing_utils import Recorder


def _config(total=4, eval_every=2):
  return ml_collections.ConfigDict(dict(train=dict(
      total_steps=total, log_every=1, eval_every=eval_every,
      checkpoint_every=2, keep_checkpoints=3)))


def _run(workdir, config, evaluate=None, rec=None, fresh_start=None):
  it = iter(grain.MapDataset.range(1000).to_iter_dataset())
  state = training.TrainState(step=jnp.zeros((), jnp.int32),
                              params={'w': jnp.zeros(())}, opt_state=())

  def step(state, batch):
    w = state.params['w'] + batch
    return (training.TrainState(step=state.step + 1, params={'w': w},
                                opt_state=()),
            {'loss': w})
  rec = rec or Recorder()
  out = training.run_loop(config, str(workdir), rec, state=state,
                          train_step=step, train_iter=it,
                          next_batch=lambda: float(next(it)),
                          evaluate=evaluate, fresh_start=fresh_start,
                          per_step={'items_per_sec': 8})
  return out, rec


def test_trains_and_resumes_with_the_data_position(tmp_path):
  full, rec = _run(tmp_path / 'a', _config(total=4))
  assert float(full.params['w']) == 0 + 1 + 2 + 3
  assert rec.scalars[4]['items_per_sec'] == pytest.approx(
      8 * rec.scalars[4]['steps_per_sec'])
  _run(tmp_path / 'b', _config(total=2))
  resumed, _ = _run(tmp_path / 'b', _config(total=4))  # from step 2
  assert float(resumed.params['w']) == float(full.params['w'])
  assert int(resumed.step) == 4


def test_fresh_start_only_without_a_checkpoint(tmp_path):
  calls = []

  def fresh(state):
    calls.append(1)
    return state.replace(params={'w': jnp.full((), 100.0)})
  out, _ = _run(tmp_path, _config(total=2), fresh_start=fresh)
  assert float(out.params['w']) == 101.0 and calls == [1]
  out, _ = _run(tmp_path, _config(total=4), fresh_start=fresh)
  assert calls == [1] and float(out.params['w']) == 101.0 + 2 + 3


def test_guard_released_and_steps_per_sec_excludes_eval(tmp_path):
  before = signal.getsignal(signal.SIGTERM)

  def slow_eval(step, params):
    del params
    time.sleep(1.0)
    if step == 4:
      raise RuntimeError('evaluation failed')
  rec = Recorder()
  with pytest.raises(RuntimeError, match='evaluation failed'):
    _run(tmp_path, _config(total=4, eval_every=1), slow_eval, rec)
  # The run raised: its SIGTERM handler and guard are gone all the same.
  assert not checkpoint._ACTIVE_GUARDS  # pylint: disable=protected-access
  assert signal.getsignal(signal.SIGTERM) == before
  # Step 2 follows a 1 s evaluation; steps/s measures the training step only.
  assert rec.scalars[2]['steps_per_sec'] > 5.0, rec.scalars[2]
  _run(tmp_path / 'ok', _config(total=2))
  assert not checkpoint._ACTIVE_GUARDS  # pylint: disable=protected-access
  assert signal.getsignal(signal.SIGTERM) == before


def test_non_finite_loss_stops_the_run(tmp_path):
  it = iter(grain.MapDataset.range(10).to_iter_dataset())
  state = training.TrainState(step=jnp.zeros((), jnp.int32),
                              params={'w': jnp.zeros(())}, opt_state=())
  step = lambda s, b: (s.replace(step=s.step + 1), {'loss': np.nan})
  with pytest.raises(FloatingPointError, match='nan'):
    training.run_loop(_config(), str(tmp_path), Recorder(), state=state,
                      train_step=step, train_iter=it,
                      next_batch=lambda: next(it))
  assert not checkpoint._ACTIVE_GUARDS  # pylint: disable=protected-access
