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


# ---- a resume under a changed config (training.check_resume) ----------------

def _workdir_of(tmp_path, config):
  """A workdir as a run leaves it: config.json and a finished step."""
  work = tmp_path / 'work'
  checkpoint.write_workdir_config(config, str(work))
  (work / checkpoint.CHECKPOINT_DIR / '6').mkdir(parents=True)
  return work


def _configs():
  from testing_utils import load_config, tiny_tokenizer_config  # pylint: disable=g-import-not-at-top
  ar = load_config('ar_demo')
  ar.model.depth, ar.model.width = 1, 32
  return {'tokenizer': tiny_tokenizer_config(), 'ar': ar}


@pytest.mark.parametrize('job', ['tokenizer', 'ar'])
def test_a_change_of_the_train_state_stops_before_anything_is_written(
    tmp_path, job):
  c = _configs()[job]
  work = _workdir_of(tmp_path, c)
  before = (work / checkpoint.CONFIG_FILE).read_text()
  changed = c.copy_and_resolve_references()
  field = 'dec_depth' if job == 'tokenizer' else 'depth'
  changed.model[field] += 1
  changed.train.total_steps += 5  # not a state change: not named
  with pytest.raises(checkpoint.CheckpointError) as e:
    training.start_workdir(changed, str(work), writer=Recorder())
  msg = str(e.value)
  assert '\n' not in msg and 'steps [6]' in msg
  old = c.model[field]
  assert f'fields that change the train state: model.{field} ({old} -> ' \
         f'{old + 1}). Nothing was changed' in msg, msg
  assert 'total_steps' not in msg and 'new --workdir' in msg
  assert (work / checkpoint.CONFIG_FILE).read_text() == before
  assert sorted(p.name for p in work.iterdir()) == ['checkpoints',
                                                    'config.json']


def test_a_change_that_keeps_the_state_resumes_and_fields_added_since_count_as_same(
    tmp_path, caplog):
  import json  # pylint: disable=g-import-not-at-top
  c = _configs()['tokenizer']
  work = _workdir_of(tmp_path, c)
  changed = c.copy_and_resolve_references()
  changed.train.total_steps = 99
  changed.eval.num_clips = 3
  changed.model.dtype = 'bfloat16'  # the compute dtype: same params
  training.check_resume(changed, str(work))
  said = [r.getMessage() for r in caplog.records if 'config changed' in
          r.getMessage()]
  assert len(said) == 1 and 'train.total_steps (10 -> 99)' in said[0]
  # A config.json from an older vftok (K was model.registers) lacking
  # today's newer fields: upgraded, then equal.
  old = json.loads((work / checkpoint.CONFIG_FILE).read_text())
  old['model']['registers'] = old['model'].pop('tokens_per_frame')
  del old['model']['attention_impl']
  (work / checkpoint.CONFIG_FILE).write_text(json.dumps(old))
  training.check_resume(c, str(work))
  # An optimizer whose state has another tree (the frozen encoder of stage
  # 2): named, with init_from offered for a warm start.
  frozen = c.copy_and_resolve_references()
  frozen.optim.freeze = ('encoder',)
  with pytest.raises(checkpoint.CheckpointError,
                     match=r"optim.freeze \(\[\] -> \['encoder'\]\).*"
                     r'train.init_from='):
    training.check_resume(frozen, str(work))


def test_config_json_is_written_after_the_restore(tmp_path, monkeypatch):
  c = _config(total=2)
  _run(tmp_path, c)
  before = (tmp_path / checkpoint.CONFIG_FILE).read_text()

  def refuse(*args, **kwargs):
    raise checkpoint.CheckpointError('restoring checkpoint step 2 failed')
  monkeypatch.setattr(checkpoint.Checkpointer, 'restore', refuse)
  c.train.total_steps = 4
  with pytest.raises(checkpoint.CheckpointError):
    _run(tmp_path, c)
  assert (tmp_path / checkpoint.CONFIG_FILE).read_text() == before
  monkeypatch.undo()
  _run(tmp_path, c)
  assert '"total_steps": 4' in (tmp_path / checkpoint.CONFIG_FILE).read_text()
