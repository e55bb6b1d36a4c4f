"""Orbax checkpoints: values, resharding, retention, tmp dirs, SIGTERM, Grain;
faults: a damaged latest step, a full disk, an unwritable directory."""
import os
import signal
import time

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from vftok import checkpoint
from vftok import sharding

from testing_utils import fill_disk
from testing_utils import tiny_tmpfs
from testing_utils import truncate_largest_file


def mesh(data, fsdp):
  return sharding.make_mesh(ml_collections.ConfigDict(
      {'data': data, 'fsdp': fsdp}))


class MLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    dense = lambda f, axes, name: nn.Dense(
        f, name=name, kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.normal(0.1),
                                               axes[-1:]))
    h = dense(64, ('embed', 'mlp'), 'fc1')(x)
    return dense(6, ('mlp', 'codes'), 'fc2')(h)


def init_fn(rng):
  params = MLP().init(rng, jnp.zeros((1, 16)))
  return {'params': params, 'opt': optax.adam(1e-3).init(params),
          'step': jnp.zeros((), jnp.int32)}


def make_state(m, seed=0):
  return sharding.create_sharded_state(init_fn, jax.random.key(seed), m)


def assert_tree_equal(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(
      np.asarray(x), np.asarray(y)), a, b)


def data_iterator():
  return iter(grain.MapDataset.range(100).shuffle(seed=0).batch(4)
              .to_iter_dataset())


def test_save_restore_reshard(tmp_path):
  state, _ = make_state(mesh(8, 1))
  state = dict(state, step=jnp.asarray(7, jnp.int32))
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3, save_every=10)
  assert ckpt.restore_latest(checkpoint.abstract_like(state)) == (None, 0)
  assert not ckpt.maybe_save(7, state)          # not due
  assert ckpt.maybe_save(10, state)
  assert not ckpt.maybe_save(10, state, force=True)  # already saved
  ckpt.wait()
  assert ckpt.latest_step() == 10
  # Same shardings.
  restored, step = ckpt.restore_latest(checkpoint.abstract_like(state))
  assert step == 10
  assert_tree_equal(restored, state)
  # A different mesh: arrays land directly in the new shardings.
  other = mesh(2, 4)
  abstract = jax.eval_shape(init_fn, jax.random.key(0))
  shardings = sharding.state_shardings(abstract, other)
  target = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      sharding.unbox(abstract), shardings)
  restored, _ = ckpt.restore(target)
  assert_tree_equal(restored, state)
  for x, s in zip(jax.tree.leaves(restored), jax.tree.leaves(shardings)):
    assert x.sharding == s
  kernel = restored['params']['params']['fc1']['kernel']
  assert kernel.sharding.mesh.shape['fsdp'] == 4
  assert kernel.addressable_shards[0].data.shape == (16 // 4, 64)
  ckpt.close()


def test_retention_and_tmp_dirs(tmp_path):
  state, _ = make_state(mesh(4, 2))
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2, save_every=1,
                                 async_save=False)
  for step in (1, 2, 3):
    assert ckpt.maybe_save(step, dict(state, step=jnp.asarray(step)))
  ckpt.wait()
  assert ckpt.all_steps() == [2, 3]
  ckpt.close()
  # A save that died mid-write: only a tmp directory, with a higher step.
  tmp = tmp_path / '9.orbax-checkpoint-tmp-1700000000000000'
  (tmp / 'state').mkdir(parents=True)
  (tmp / 'state' / 'garbage').write_text('partial')
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2, save_every=1)
  assert ckpt.latest_step() == 3
  restored, step = ckpt.restore_latest(checkpoint.abstract_like(state))
  assert step == 3 and int(restored['step']) == 3
  ckpt.close()


def test_sigterm_stops_and_forces_save(tmp_path):
  state, _ = make_state(mesh(8, 1))
  ckpt = checkpoint.Checkpointer(str(tmp_path), save_every=1000)
  with checkpoint.PreemptionGuard() as guard:
    assert not guard.should_stop(3)
    assert not ckpt.maybe_save(3, state)
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(100):  # the handler runs between bytecodes
      if guard.signalled:
        break
      time.sleep(0.01)
    assert guard.should_stop(4)
    assert checkpoint.preemption_signalled()
    assert ckpt.maybe_save(4, state)  # preemption forces the save
  assert not checkpoint.preemption_signalled()  # guard closed
  assert signal.getsignal(signal.SIGTERM) is not guard._on_signal
  ckpt.close()
  assert checkpoint.Checkpointer(str(tmp_path)).latest_step() == 4


def test_grain_iterator_resumes(tmp_path):
  state, _ = make_state(mesh(2, 4))
  it = data_iterator()
  for _ in range(3):
    next(it)
  ckpt = checkpoint.Checkpointer(str(tmp_path), save_every=3)
  assert ckpt.maybe_save(3, state, data_iter=it)
  expected = [next(it) for _ in range(2)]  # advancing must not change the save
  for _ in range(5):
    next(it)
  ckpt.close()

  ckpt = checkpoint.Checkpointer(str(tmp_path), save_every=3)
  fresh = data_iterator()
  restored, step = ckpt.restore_latest(checkpoint.abstract_like(state),
                                       data_iter=fresh)
  assert step == 3
  assert_tree_equal(restored, state)
  np.testing.assert_array_equal(next(fresh), expected[0])
  np.testing.assert_array_equal(next(fresh), expected[1])
  # A checkpoint without data state restores the arrays, leaves the iterator.
  ckpt.maybe_save(6, state)
  ckpt.wait()
  other = data_iterator()
  first = next(data_iterator())
  _, step = ckpt.restore_latest(checkpoint.abstract_like(state),
                                data_iter=other)
  assert step == 6
  np.testing.assert_array_equal(next(other), first)
  ckpt.close()


# ---- faults: a damaged latest step, a save that cannot be written ----------

def save_steps(directory, state, steps, **kwargs):
  ckpt = checkpoint.Checkpointer(str(directory), save_every=1, **kwargs)
  for s in steps:
    assert ckpt.maybe_save(s, dict(state, step=jnp.asarray(s, jnp.int32)))
  ckpt.close()


def test_damaged_latest_step_is_moved_aside_and_the_previous_restores(
    tmp_path, caplog):
  state, _ = make_state(mesh(8, 1))
  save_steps(tmp_path, state, (1, 2, 3))
  truncate_largest_file(tmp_path / '3')
  ckpt = checkpoint.Checkpointer(str(tmp_path), save_every=1)
  restored, step = ckpt.restore(checkpoint.abstract_like(state))
  assert step == 2 and int(restored['step']) == 2
  assert_tree_equal(restored['params'], state['params'])
  # Moved, never deleted; Orbax no longer lists it; the log says so in a line.
  assert (tmp_path / 'damaged' / '3' / 'state').is_dir()
  assert not (tmp_path / '3').exists() and ckpt.all_steps() == [1, 2]
  lines = [r.getMessage() for r in caplog.records
           if 'does not restore' in r.getMessage()]
  assert len(lines) == 1 and '\n' not in lines[0]
  assert 'step 3' in lines[0] and 'OUT_OF_RANGE' in lines[0]
  assert 'tensorstore_spec' not in lines[0]
  # Step 3 can be written again (the manager forgot it).
  assert ckpt.maybe_save(3, dict(state, step=jnp.asarray(3, jnp.int32)))
  ckpt.close()
  # An explicit step that does not restore: named, with the other steps.
  truncate_largest_file(tmp_path / '2')
  ckpt = checkpoint.Checkpointer(str(tmp_path), save_every=1)
  with pytest.raises(checkpoint.CheckpointError,
                     match=r'step 2 .* does not restore.*other steps: \[1, 3\]'):
    ckpt.restore(checkpoint.abstract_like(state), step=2)
  assert (tmp_path / '2').exists()  # an explicit request moves nothing
  ckpt.close()


def test_no_step_restores_names_the_workdir(tmp_path):
  state, _ = make_state(mesh(8, 1))
  save_steps(tmp_path, state, (1, 2))
  for s in ('1', '2'):
    truncate_largest_file(tmp_path / s)
  ckpt = checkpoint.Checkpointer(str(tmp_path), save_every=1)
  with pytest.raises(checkpoint.CheckpointError) as e:
    ckpt.restore(checkpoint.abstract_like(state))
  msg = str(e.value)
  assert '\n' not in msg and str(tmp_path) in msg and '[2, 1]' in msg
  ckpt.close()
  assert sorted(os.listdir(tmp_path / 'damaged')) == ['1', '2']


@pytest.fixture
def tiny_fs(tmp_path):
  """A 2 MB tmpfs (a real ENOSPC) where this process may mount (root, CI
  containers with CAP_SYS_ADMIN); skipped otherwise (the injected fault
  below covers the same code path)."""
  with tiny_tmpfs(tmp_path / 'tiny_fs') as mnt:
    yield mnt


@pytest.mark.parametrize('async_save', [True, False])
def test_disk_full_stops_with_one_error_and_keeps_older_steps(
    tiny_fs, async_save):
  state, _ = make_state(mesh(8, 1))
  ckpt = checkpoint.Checkpointer(str(tiny_fs / 'ckpt'), save_every=1,
                                 async_save=async_save)
  assert ckpt.maybe_save(1, dict(state, step=jnp.asarray(1, jnp.int32)))
  ckpt.wait()
  fill_disk(tiny_fs / 'filler')
  with pytest.raises(checkpoint.CheckpointError) as e:
    ckpt.maybe_save(2, dict(state, step=jnp.asarray(2, jnp.int32)))
    for _ in range(500):  # the loop's per-step check, until the write fails
      ckpt.check()
      time.sleep(0.01)
  msg = str(e.value)
  assert '\n' not in msg and 'step 2' in msg and 'No space left' in msg
  assert 'steps [1] are intact' in msg
  ckpt.close()  # quiet: already reported
  os.remove(tiny_fs / 'filler')
  # No step 2 directory; the next start resumes from step 1.
  ckpt = checkpoint.Checkpointer(str(tiny_fs / 'ckpt'), save_every=1)
  assert ckpt.all_steps() == [1]
  restored, step = ckpt.restore(checkpoint.abstract_like(state))
  assert step == 1 and int(restored['step']) == 1
  ckpt.close()


def test_unwritable_directory_fault_injected(tmp_path, monkeypatch):
  """The same without a tmpfs: the array writer fails as on EACCES."""
  state, _ = make_state(mesh(8, 1))
  save_steps(tmp_path, state, (1,))
  from orbax.checkpoint._src.handlers import base_pytree_checkpoint_handler as h

  async def refuse(*args, **kwargs):
    raise PermissionError(13, 'Permission denied', str(tmp_path))
  monkeypatch.setattr(h.BasePyTreeCheckpointHandler, 'async_save', refuse)
  ckpt = checkpoint.Checkpointer(str(tmp_path), save_every=1)
  with pytest.raises(checkpoint.CheckpointError,
                     match=r'step 2 .*Permission denied.*steps \[1\] are '
                     'intact'):
    ckpt.maybe_save(2, dict(state, step=jnp.asarray(2, jnp.int32)))
    ckpt.wait()
  ckpt.close()
  monkeypatch.undo()
  ckpt = checkpoint.Checkpointer(str(tmp_path), save_every=1)
  assert ckpt.all_steps() == [1]
  assert ckpt.restore(checkpoint.abstract_like(state))[1] == 1
  ckpt.close()


def test_main_prints_faults_as_one_fatal_line():
  from vftok import main  # pylint: disable=g-import-not-at-top
  from vftok.data import records  # pylint: disable=g-import-not-at-top

  class Job:
    def __init__(self, error):
      self.error = error

    def run(self, config, workdir):
      raise self.error
  from vftok import errors  # pylint: disable=g-import-not-at-top
  for error in (checkpoint.CheckpointError('saving checkpoint step 6 failed'),
                records.BadRecordError('f.array_record: record 3 is bad'),
                errors.InputError("config.data.train_pattern='' matches no "
                                  'files; make them with: ...')):
    with pytest.raises(SystemExit) as e:
      main.run_job(Job(error), None, '/w')
    assert e.value.code == f'FATAL {error}'
  with pytest.raises(KeyError):  # a bug keeps its traceback
    main.run_job(Job(KeyError('x')), None, '/w')


def test_older_config_json_is_upgraded_to_todays_names(tmp_path):
  """A workdir written before the renames restores the same run: K as
  model.tokens_per_frame, the compute dtype as model.dtype, the encoder's
  lr scale as optim.lr_scales; the removed knobs are dropped."""
  import json  # pylint: disable=g-import-not-at-top
  old = {'job': 'train_tokenizer',
         'model': {'registers': 16, 'register_init_std': 0.02},
         'train': {'compute_dtype': 'float32', 'total_steps': 4},
         'optim': {'encoder_lr_scale': 0.1, 'lr_scales': [],
                   'encoder_delay_steps': 0, 'encoder_ramp_steps': 0}}
  (tmp_path / checkpoint.CONFIG_FILE).write_text(json.dumps(old))
  c = checkpoint.load_workdir_config(str(tmp_path))
  assert c.model.to_dict() == {'tokens_per_frame': 16, 'dtype': 'float32'}
  assert c.train.to_dict() == {'total_steps': 4}
  assert [tuple(p) for p in c.optim.lr_scales] == [('encoder', 0.1)]
  assert set(c.optim.keys()) == {'lr_scales'}
  # An AR run's train.compute_dtype never was the model's: dropped.
  ar = {'job': 'train_ar', 'model': {'dtype': 'bfloat16'},
        'train': {'compute_dtype': 'float32'}}
  assert checkpoint.upgrade_config(ar)['model'] == {'dtype': 'bfloat16'}


# ---- what a failed restore may move: only a step whose files are damaged ----

def other_model_state(m):
  """The MLP with a wider hidden layer: a changed model, same tree."""
  def init(rng):
    params = jax.tree.map(lambda x: jnp.zeros(x.shape[:-1] + (2 * x.shape[-1],)
                                              if x.shape[-1] == 64 else x.shape),
                          init_fn(rng)['params'])
    return {'params': params, 'opt': optax.adam(1e-3).init(params),
            'step': jnp.zeros((), jnp.int32)}
  return sharding.create_sharded_state(init, jax.random.key(0), m)


def test_a_state_of_other_shapes_stops_and_moves_nothing(tmp_path):
  state, _ = make_state(mesh(8, 1))
  save_steps(tmp_path, state, (1, 2))
  other, _ = sharding.create_sharded_state(
      lambda rng: {'params': init_fn(rng)['params'],
                   'step': jnp.zeros((), jnp.int32)}, jax.random.key(0),
      mesh(8, 1))
  for target, why in ((other_model_state(mesh(8, 1))[0], 'another shape'),
                      (other, 'no place for')):
    ckpt = checkpoint.Checkpointer(str(tmp_path), save_every=1)
    with pytest.raises(checkpoint.CheckpointError) as e:
      ckpt.restore(checkpoint.abstract_like(target))
    msg = str(e.value)
    assert '\n' not in msg and 'step 2' in msg and why in msg, msg
    assert 'nothing was moved' in msg
    assert ckpt.all_steps() == [1, 2] and not (tmp_path / 'damaged').exists()
    ckpt.close()


@pytest.mark.parametrize('fault', [
    MemoryError('std::bad_alloc'),
    RuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to allocate '
                 '4.00GiB'),
    ValueError('UNAVAILABLE: Error reading "params.fc1.kernel/.zarray": '
               'Connection reset by peer'),
    PermissionError(13, 'Permission denied', '/ckpt/2/state/d/abc'),
    RuntimeError('something nobody has seen before'),
])
def test_a_restore_that_fails_for_the_machine_moves_nothing(tmp_path,
                                                            monkeypatch, fault):
  state, _ = make_state(mesh(8, 1))
  save_steps(tmp_path, state, (1, 2))

  def fail(*args, **kwargs):
    raise fault
  monkeypatch.setattr(checkpoint.Checkpointer, '_restore_step', fail)
  ckpt = checkpoint.Checkpointer(str(tmp_path), save_every=1)
  with pytest.raises(checkpoint.CheckpointError,
                     match=r'^restoring checkpoint step 2 .*nothing was moved'):
    ckpt.restore(checkpoint.abstract_like(state))
  assert ckpt.all_steps() == [1, 2] and not (tmp_path / 'damaged').exists()
  ckpt.close()
  monkeypatch.undo()  # the fault passed: the same steps restore
  ckpt = checkpoint.Checkpointer(str(tmp_path), save_every=1)
  assert ckpt.restore(checkpoint.abstract_like(state))[1] == 2
  ckpt.close()


def test_a_missing_metadata_file_is_damage(tmp_path):
  """Without its _METADATA a step reads as 'pytree structure error' in
  Orbax; the metadata is read first, so it is moved aside as damaged."""
  state, _ = make_state(mesh(8, 1))
  save_steps(tmp_path, state, (1, 2))
  os.remove(tmp_path / '2' / 'state' / '_METADATA')
  ckpt = checkpoint.Checkpointer(str(tmp_path), save_every=1)
  assert ckpt.restore(checkpoint.abstract_like(state))[1] == 1
  assert (tmp_path / 'damaged' / '2').is_dir()
  ckpt.close()


def test_gs_workdir_moves_damaged_steps_in_the_bucket(tmp_path, monkeypatch):
  """A local directory stands in for the bucket (etils.epath's local
  backend), as in tests/test_paths.py: the step moves inside it through
  etils.epath and no local 'gs:' folder appears. (Orbax itself needs a real
  gs:// backend, so the checkpoints are written to the stand-in directly.)"""
  from etils import epath  # pylint: disable=g-import-not-at-top
  bucket = tmp_path / 'bucket'
  state, _ = make_state(mesh(8, 1))
  save_steps(bucket / 'run' / 'checkpoints', state, (1, 2))
  ckpt = checkpoint.Checkpointer(str(bucket / 'run' / 'checkpoints'),
                                 save_every=1)
  path = epath.Path
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(epath, 'Path', lambda p: path(
      str(p).replace('gs://bucket', str(bucket))))
  ckpt.directory = epath.Path('gs://bucket/run/checkpoints')
  ckpt._move_aside(2)  # pylint: disable=protected-access
  monkeypatch.undo()
  assert (bucket / 'run' / 'checkpoints' / 'damaged' / '2' / 'state').is_dir()
  assert ckpt.all_steps() == [1]
  assert not (tmp_path / 'gs:').exists()
  ckpt.close()
