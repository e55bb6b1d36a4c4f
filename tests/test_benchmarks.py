"""The train-step benchmark runs on both jobs and its memory numbers respond
to rematerialisation (XLA's own buffer assignment, not a timing). A failed or
unavailable row makes a benchmark exit non-zero after the other rows, and a
failed step makes benchmarks/device_check.sh exit non-zero (fast: no compile,
a fake interpreter)."""
import os
import re
import shutil
import stat
import subprocess
import sys

import pytest

# The whole-script runs are e2e (tests/conftest.py); the exit-status tests
# are not.
e2e = pytest.mark.e2e

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_bench(*args):
  proc = subprocess.run(
      [sys.executable, 'benchmarks/bench_train_step.py', *args],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def import_benchmark(name):
  sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
  try:
    return __import__(name)
  finally:
    sys.path.pop(0)


def temp_gib(out):
  return {m.group(1): float(m.group(2)) for m in re.finditer(
      r'remat=(\w+)\s+compile .* temp\s+([0-9.]+) GiB', out)}


@e2e
def test_tokenizer_step_memory_falls_with_remat():
  out = run_bench('--config=configs/demo.py', '--per_device_batch=16',
                  '--compile_only', '--remat=none,full')
  temp = temp_gib(out)
  assert set(temp) == {'none', 'full'}, out
  assert temp['full'] < 0.8 * temp['none'], temp


@e2e
def test_ar_step_runs_and_reports_throughput():
  out = run_bench('--config=configs/ar_demo.py', '--per_device_batch=2',
                  '--steps=1', '--peak_tflops=1',
                  '--remat=dots')
  assert re.search(r'remat=dots .* ms/step \| .* tokens/s .* loss [0-9.]+',
                   out), out
  # MFU against the analytic and XLA's FLOPs, and the markdown summary row.
  assert re.search(r'MFU [0-9.]+% \(analytic\), [0-9.]+% \(XLA\)', out), out
  assert re.search(r'\| AR d4 default \| dots \| 2 \|', out), out


@e2e
def test_inference_bench_reports_clips_per_second():
  proc = subprocess.run(
      [sys.executable, 'benchmarks/bench_inference.py',
       '--config=configs/demo.py', '--steps=1', '--repeats=1',
       '--attention_impl=xla', '--guidance_passes=one,two'],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for passes in ('one', 'two'):
    label = rf'\[xla, {passes} pass\]'
    assert re.search(label + r' tokenize: .* clips/s', proc.stdout), proc.stdout
    assert re.search(label + r' detokenize: .* clips/s', proc.stdout), (
        proc.stdout)
    assert re.search(rf'\| configs/demo.py \| xla \| {passes} \| 1 \|',
                     proc.stdout), proc.stdout


def test_distill_bench_times_student_and_teacher():
  """bench_distill.py on a random-weight :distill config: a row per sampler,
  the teacher's guided FLOPs 2 x its steps / S of the S-step student's."""
  proc = subprocess.run(
      [sys.executable, 'benchmarks/bench_distill.py',
       '--config=configs/tokenizer_k600.py:distill,runlocal', '--batch=2',
       '--repeats=1', '--student_steps=1,4'],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, PYTHONPATH=ROOT))
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = dict(re.findall(r'\| (teacher|student_\d) \| .*\| ([\d.]+)x \|\n',
                         proc.stdout))
  # The runlocal teacher samples 4 APG steps (2 passes each).
  assert rows == {'teacher': '1.0', 'student_1': '8.0', 'student_4': '2.0'}, (
      proc.stdout)


def run_faked(script, fakes, *args):
  """Runs benchmarks/<script> in a subprocess with some of its functions
  replaced by `fakes` (Python source defining them on the loaded `mod`)."""
  code = (
      'import importlib.util, sys\n'
      "sys.path.insert(0, 'benchmarks')\n"
      f"spec = importlib.util.spec_from_file_location('bench', "
      f"'benchmarks/{script}')\n"
      'mod = importlib.util.module_from_spec(spec)\n'
      'spec.loader.exec_module(mod)\n'
      f'{fakes}\n'
      f'sys.argv[0] = {script!r}\n'
      "if hasattr(mod, 'app'):\n"    # absl flags (bench_train_step.py)
      '  mod.app.run(mod.main)\n'
      'else:\n'
      '  mod.main()\n')
  return subprocess.run([sys.executable, '-c', code, *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


def check_exit(proc, rc, lines):
  """Exit status `rc`; every one of `lines` printed, the last one last."""
  out = proc.stdout
  assert proc.returncode == rc, (out, proc.stderr[-3000:])
  for line in lines:
    assert line in out, out
  assert out.rstrip().splitlines()[-1] == lines[-1], out


# bench_train_step.py with its per-row work replaced: kernel 'bogus' is
# unavailable (ValueError, as check_supported raises), remat=none runs out of
# memory (XLA's RuntimeError), the batch search (--per_device_batch=0) fails.
FAKE_TRAIN_ROWS = """
def bench(config, mesh, policy, impl, label, rows):
  if impl == 'bogus':
    raise ValueError('cannot build bogus')
  if policy == 'none':
    raise RuntimeError('RESOURCE_EXHAUSTED: fake out of memory')
  print(f'{label} remat={policy} measured')

def largest_batch(config, mesh):
  raise RuntimeError('fake batch search failure')

mod.bench, mod.largest_batch = bench, largest_batch
"""

XLA, BOGUS = 'd4-d4 stage 1 xla', 'd4-d4 stage 1 bogus'


@pytest.mark.parametrize('args, rc, lines', [
    # An OOM row and an unavailable kernel are failures; the rows after them
    # still run; the last line names the failed rows.
    (['--attention_impl=xla,bogus', '--remat=none,dots'], 1,
     [f'{XLA} remat=none: failed: RuntimeError: RESOURCE_EXHAUSTED',
      f'{XLA} remat=dots measured',
      f'{BOGUS} remat=none: failed: unavailable: ValueError: cannot build',
      f'3 of 4 rows failed: {XLA} remat=none, {BOGUS} remat=none, '
      f'{BOGUS} remat=dots']),
    # --skip_unavailable: the kernel is skipped (and listed), the OOM still
    # fails the run.
    (['--attention_impl=xla,bogus', '--remat=none,dots', '--skip_unavailable'],
     1, [f'{BOGUS} remat=dots: skipped: unavailable: ValueError',
         f'2 of 4 rows skipped (unavailable, --skip_unavailable): '
         f'{BOGUS} remat=none, {BOGUS} remat=dots',
         f'1 of 4 rows failed: {XLA} remat=none']),
    (['--attention_impl=xla,bogus', '--remat=dots', '--skip_unavailable'], 0,
     [f'{XLA} remat=dots measured', '1 of 2 rows ran']),
    # Only skipped rows: nothing was measured, a failure.
    (['--attention_impl=bogus', '--remat=dots', '--skip_unavailable'], 1,
     ['0 of 1 rows ran']),
    # A failed batch search fails every row of its kernel.
    (['--attention_impl=xla', '--remat=none,dots', '--per_device_batch=0'], 1,
     [f'{XLA} remat=dots: failed: RuntimeError: fake batch search failure',
      f'2 of 2 rows failed: {XLA} remat=none, {XLA} remat=dots']),
])
def test_train_step_bench_exit_status_counts_failed_rows(args, rc, lines):
  check_exit(run_faked('bench_train_step.py', FAKE_TRAIN_ROWS, *args),
             rc, lines)


def test_train_step_bench_with_an_unknown_kernel_exits_nonzero():
  """The real script: a requested kernel that does not exist is a failed
  row, not a success (the config check raises before any compile)."""
  proc = subprocess.run(
      [sys.executable, 'benchmarks/bench_train_step.py',
       '--config=configs/demo.py', '--attention_impl=bogus', '--compile_only',
       '--remat=dots'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  row = f'{BOGUS} remat=dots'
  check_exit(proc, 1, [
      f"{row}: failed: unavailable: ValueError: "
      "config.model.attention_impl='bogus'", f'1 of 1 rows failed: {row}'])


# bench_inference.py with a stand-in tokenizer: 'bogus' cannot be built,
# 'pallas_gpu' fails in its run (XLA's RuntimeError), 'xla' gives a row.
FAKE_INFERENCE_ROWS = """
class Tok:
  latent_shape = (1, 2, 2, 1)

  def __init__(self, config):
    self.config = config

  @classmethod
  def from_config(cls, config, seed=0):
    if config.model.get('attention_impl') == 'bogus':
      raise ValueError('cannot build bogus')
    return cls(config)

def bench_impl(tok, impl, args, x, name, passes=''):
  if impl == 'pallas_gpu':
    raise RuntimeError('fake Triton failure')
  return f'| {name} | {impl} | measured |'

mod.vftok.Tokenizer, mod.bench_impl = Tok, bench_impl
"""


def test_inference_bench_exit_status_counts_failed_rows():
  proc = run_faked('bench_inference.py', FAKE_INFERENCE_ROWS,
                   '--config=configs/demo.py',
                   '--attention_impl=pallas_gpu,xla,bogus')
  check_exit(proc, 1, [
      '[pallas_gpu]: failed: RuntimeError: fake Triton failure',
      '| configs/demo.py | xla | measured |',
      '[bogus]: failed: unavailable: ValueError: cannot build bogus',
      '2 of 3 rows failed: [pallas_gpu], [bogus]'])


# A stand-in interpreter for device_check.sh: every step "succeeds" at once,
# except the one whose command line contains FAIL (exit status 3).
FAKE_PYTHON = """#!/bin/sh
case "$*" in
  *"pip freeze"*) echo "jax==0.4.30" ;;
  *FAIL*) echo "[xla]: failed: RuntimeError: boom"; exit 3 ;;
esac
exit 0
"""


@pytest.mark.parametrize('fail, budget, rc, lines', [
    ('bench_inference.py', '570', 1,
     ['| inference-d18 | 3 |', 'Failed runs: inference-d18 (rc=3)',
      '[xla]: failed: RuntimeError: boom',
      'device check FAILED: 1 of 6 steps failed: inference-d18 (rc=3)']),
    ('test_attention_kernels.py', '570', 1,
     ['Failed runs: kernel-tests (rc=3)']),
    ('NO_STEP', '570', 0,
     ['Failed runs: none', 'device check passed: all 6 steps exited 0']),
    # A spent budget: steps not started fail the check too.
    ('NO_STEP', '0', 1,
     ['| install | not run (budget spent) | |',
      'Not run (budget spent): install, kernel-tests, train-d18, '
      'inference-d18, train-d12, train-ar-d12']),
])
def test_device_check_exits_nonzero_when_a_step_fails(tmp_path, fail, budget,
                                                      rc, lines):
  py = tmp_path / 'python'
  py.write_text(FAKE_PYTHON.replace('FAIL', fail))
  py.chmod(py.stat().st_mode | stat.S_IEXEC)
  out_dir = tmp_path / 'out'
  env = dict(os.environ, PYTHON=str(py), BUDGET_S=budget)
  proc = subprocess.run(['bash', 'benchmarks/device_check.sh', str(out_dir)],
                        cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == rc, (proc.stdout, proc.stderr)
  report = (out_dir / 'device_check.md').read_text()
  log = (out_dir / 'device_check.log').read_text()
  for line in lines:
    assert line in report or line in log, (report, log)


def test_release_bench_builds_the_release_config_at_its_sizes():
  """benchmarks/bench_vs_release.py has the release build its model from its
  own config resized (release_worker.sized_config; the release itself is not
  in CI): vftok reads that config as the benchmark's sizes."""
  release_worker = import_benchmark('release_worker')
  from vftok.models.pretrained import official  # pylint: disable=g-import-not-at-top
  config = release_worker.sized_config(384, 64, 6, 32, (5, 16, 16), (1, 1, 1))
  m = official.model_config(config)['model']
  assert (m['enc_width'], m['dec_width'], m['head_dim']) == (384, 384, 64)
  assert (m['enc_depth'], m['dec_depth']) == (6, 6)
  assert m['tokens_per_frame'] == 32 and m['patch_size'] == (1, 1, 1)
  assert m['max_frames'] == 5 and m['pos_max_size'] == 16
  # The dev fixture's config is untouched (a copy is resized).
  assert release_worker.dev_config()['encoder']['module_dict'][
      'enc_transformer']['dim'] == 64


def test_as_avx2_environment_caps_every_library(monkeypatch):
  """benchmarks/as_avx2.py: on an AVX2-only host only the framework caps are
  set; on an AVX-512 host the CPUID library is preloaded too, and a host that
  cannot fault on CPUID gets one error naming why."""
  as_avx2 = import_benchmark('as_avx2')
  if sys.platform == 'linux' and os.uname().machine == 'x86_64':
    # The real reader (the skip condition below relies on it).
    assert as_avx2.cpuinfo()['model name'] and 'fpu' in as_avx2.cpu_flags()
  monkeypatch.setattr(as_avx2, 'cpu_flags', lambda: {'avx2', 'fma'})
  env = as_avx2.avx2_env({'XLA_FLAGS': '--xla_foo=1'})
  assert env['XLA_FLAGS'] == '--xla_foo=1 --xla_cpu_max_isa=AVX2'
  assert env['ATEN_CPU_CAPABILITY'] == 'avx2'
  assert env['ONEDNN_MAX_CPU_ISA'] == 'AVX2'
  assert 'LD_PRELOAD' not in env
  assert as_avx2.avx2_env(env) == env  # once only: no doubled flags
  monkeypatch.setattr(as_avx2, 'cpu_flags', lambda: {'avx2', 'avx512f'})
  with pytest.raises(SystemExit, match='cpuid_fault'):
    as_avx2.avx2_env({})
  monkeypatch.setattr(as_avx2, 'cpu_flags', lambda: {'sse4_2'})
  with pytest.raises(SystemExit, match='no AVX2'):
    as_avx2.avx2_env({})


def _can_hide_avx512():
  as_avx2 = import_benchmark('as_avx2')
  return ({'avx512f', 'cpuid_fault'} <= as_avx2.cpu_flags()
          and bool(shutil.which('cc') or shutil.which('gcc')))


@pytest.mark.skipif(not _can_hide_avx512(),
                    reason='needs an AVX-512 CPU with CPUID faulting and cc')
def test_as_avx2_hides_avx512_from_cpuid_and_passes_real_faults_on(tmp_path):
  """Under benchmarks/as_avx2.py CPUID reports no AVX-512 (numpy reads it at
  import) and AVX2 still; a real segfault still reaches Python's
  faulthandler, which replaced the CPUID handler's place in the process."""
  env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))  # built afresh
  env.pop('VFTOK_AS_AVX2', None)

  def run(code):
    return subprocess.run(
        [sys.executable, 'benchmarks/as_avx2.py', sys.executable, '-c', code],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)

  features = ('import numpy as np; '
              'f = np._core._multiarray_umath.__cpu_features__; '
              'print(f["AVX512F"], f["AVX2"])')
  proc = subprocess.run([sys.executable, '-c', features], capture_output=True,
                        text=True, timeout=60)
  assert proc.stdout.split() == ['True', 'True'], proc.stderr
  proc = run('import faulthandler; faulthandler.enable(); ' + features)
  assert proc.stdout.split() == ['False', 'True'], proc.stderr
  assert list(tmp_path.glob('vftok/hide_avx512-*.so'))
  proc = run('import faulthandler; faulthandler.enable(); '
             'import ctypes; ctypes.string_at(0)')
  assert proc.returncode == -11, (proc.returncode, proc.stderr)
  assert 'Fatal Python error: Segmentation fault' in proc.stderr, proc.stderr
