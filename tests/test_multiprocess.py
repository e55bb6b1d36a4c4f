"""Two real JAX processes on this machine (jax.distributed with a 127.0.0.1
coordinator, gloo CPU collectives), each with one CPU device, run the
trainers through `python -m vftok.main --distributed` (tests/mp_worker.py):
the Grain pipeline splits every global batch of 8 between them, both write
the Orbax checkpoint of step N, both are SIGKILLed, both restart and resume.
The loss curve equals the single-process run's (one process, two devices:
the same mesh, so each device runs the same program) bit for bit (a sum of
two devices' parts is the same float in either order, over gloo or within
XLA), and both processes resume from step N.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import testing_utils

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
TIMEOUT = 300

pytestmark = pytest.mark.e2e


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class Run:
  """One process of a job: `python tests/mp_worker.py` (vftok.main) with its
  scalars in <name>.jsonl and its console in <name>.log."""

  def __init__(self, tmp, name, config, workdir, *, devices=1, port=None,
               process_id=0, hang_after=0, cache=''):
    self.scalars, self.log = f'{tmp}/{name}.jsonl', f'{tmp}/{name}.log'
    args = [sys.executable, os.path.join(TESTS, 'mp_worker.py'),
            f'--config={config}', f'--workdir={workdir}']
    if port:
      args += ['--distributed', f'--coordinator_address=127.0.0.1:{port}',
               '--num_processes=2', f'--process_id={process_id}']
    env = dict(os.environ)
    flags = re.sub(r'--xla_force_host_platform_device_count=\d+', '',
                   env.get('XLA_FLAGS', ''))
    env.update(
        XLA_FLAGS=f'{flags} --xla_force_host_platform_device_count={devices}',
        JAX_PLATFORMS='cpu', PYTHONPATH=ROOT, VFTOK_TEST_SCALARS=self.scalars,
        VFTOK_TEST_HANG_AFTER=str(hang_after))
    if cache:  # the restarted processes compile the same programs
      env.update(JAX_COMPILATION_CACHE_DIR=cache,
                 JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0.5')
    with open(self.log, 'w') as log:
      self.proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=log,
                                   stderr=subprocess.STDOUT)

  def text(self) -> str:
    with open(self.log) as f:
      return f.read()

  def fail(self, why):
    pytest.fail(f'{why}; {self.log} ends:\n{self.text()[-3000:]}')

  def wait(self):
    try:
      rc = self.proc.wait(TIMEOUT)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.fail('timed out')
    if rc:
      self.fail(f'exit status {rc}')

  def wait_hung(self):
    """Until the worker has committed its hang_after checkpoint."""
    deadline = time.time() + TIMEOUT
    while not os.path.exists(f'{self.scalars}.hung'):
      if self.proc.poll() is not None:
        self.fail(f'exited ({self.proc.returncode}) before the checkpoint')
      if time.time() > deadline:
        self.proc.kill()
        self.fail('no checkpoint in time')
      time.sleep(0.2)

  def kill(self):
    self.proc.send_signal(signal.SIGKILL)  # no handler, no cleanup
    self.proc.wait()

  def losses(self):
    with open(self.scalars) as f:
      rows = [json.loads(line) for line in f]
    return {r['step']: r['loss'] for r in rows if 'loss' in r}

  def resumed_from(self):
    steps = re.findall(r'resumed from step (\d+)', self.text())
    return int(steps[0]) if steps else None


def pair(tmp, name, config, workdir, **kwargs):
  port = _free_port()
  return [Run(tmp, f'{name}_p{i}', config, workdir, port=port, process_id=i,
              **kwargs) for i in range(2)]


def train_kill_resume(tmp, config, cut, total):
  """-> (reference losses, [per process: losses by step], [resumed steps],
  seconds of the two-process runs)."""
  cache = str(tmp / 'xla_cache')
  t0 = time.time()
  ref = Run(tmp, 'ref', config, tmp / 'ref', devices=2)
  first = pair(tmp, 'first', config, tmp / 'mp', hang_after=cut, cache=cache)
  for r in first:
    r.wait_hung()
  for r in first:
    r.kill()
  assert not (tmp / 'mp' / 'checkpoints' / str(total)).exists()
  second = pair(tmp, 'second', config, tmp / 'mp', cache=cache)
  for r in second:
    r.wait()
  seconds = time.time() - t0
  ref.wait()
  curves = []
  for a, b in zip(first, second):
    before, after = a.losses(), b.losses()
    assert sorted(before) == list(range(1, cut + 1))
    assert sorted(after) == list(range(cut + 1, total + 1))
    curves.append({**before, **after})
  ref_losses = ref.losses()
  assert sorted(ref_losses) == list(range(1, total + 1))
  return ([ref_losses[s] for s in sorted(ref_losses)],
          [[c[s] for s in sorted(c)] for c in curves],
          [r.resumed_from() for r in second], seconds)


def check_kill_resume(name, tmp_path, config, cut: int, total: int):
  """Both processes resume from `cut`; their curve equals one process's and
  each other's (one replicated loss) bit for bit."""
  ref, curves, resumed, seconds = train_kill_resume(tmp_path, config, cut,
                                                    total)
  worst = max(np.max(np.abs(np.subtract(c, ref)) / np.abs(ref)) for c in curves)
  print(f'{name}: 2 processes, run + kill + resume in {seconds:.1f}s; max '
        f'rel. loss difference to 1 process {worst:.2e}')
  assert resumed == [cut, cut]
  for curve in curves:
    np.testing.assert_array_equal(curve, ref)
  np.testing.assert_array_equal(curves[0], curves[1])


@pytest.fixture(scope='module')
def demo_root(tmp_path_factory):
  # Built before the processes start: two processes building the demo set
  # into one directory would race (pod runs read prepared records).
  return testing_utils.small_demo_set(tmp_path_factory.mktemp('demo_data'))


def test_two_processes_tokenizer_train_kill_resume(demo_root, tmp_path):
  config = f'{TESTS}/mp_configs/tiny_tokenizer.py:{demo_root}'
  check_kill_resume('tokenizer', tmp_path, config, cut=3, total=6)


def test_two_processes_ar_train_kill_resume(tmp_path):
  sys.path.insert(0, TESTS)
  from test_ar_job import write_synthetic_records  # pylint: disable=g-import-not-at-top
  pattern = write_synthetic_records(str(tmp_path / 'tokens'))
  config = f'{TESTS}/mp_configs/tiny_ar.py:{pattern}'
  check_kill_resume('AR', tmp_path, config, cut=4, total=8)


def test_process_blocks_make_the_single_process_batch(tmp_path):
  """The Grain split behind the equal curves: the processes' batches, in
  process order, are the single-process global batch, record for record."""
  sys.path.insert(0, TESTS)
  from test_ar_job import write_synthetic_records  # pylint: disable=g-import-not-at-top
  from vftok import defaults  # pylint: disable=g-import-not-at-top
  from vftok.data import pipeline  # pylint: disable=g-import-not-at-top
  c = defaults.ar_config(1).data
  c.train_pattern = write_synthetic_records(str(tmp_path), n=40)
  c.global_batch_size = 8
  one = pipeline.make_token_iterator(c)
  parts = [pipeline.make_token_iterator(c, process_index=p, process_count=2)
           for p in range(2)]
  for _ in range(7):  # past an epoch (40 records): reshuffled epochs too
    want = next(one)['tokens']
    got = np.concatenate([next(p)['tokens'] for p in parts])
    np.testing.assert_array_equal(got, want)
