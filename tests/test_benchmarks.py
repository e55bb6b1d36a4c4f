"""The train-step benchmark runs on both jobs and its memory numbers respond
to rematerialisation (XLA's own buffer assignment, not a timing)."""
import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e  # whole jobs / scripts: see tests/conftest.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_bench(*args):
  proc = subprocess.run(
      [sys.executable, 'benchmarks/bench_train_step.py', *args],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def temp_gib(out):
  return {m.group(1): float(m.group(2)) for m in re.finditer(
      r'remat=(\w+)\s+compile .* temp\s+([0-9.]+) GiB', out)}


def test_tokenizer_step_memory_falls_with_remat():
  out = run_bench('--config=configs/demo.py', '--per_device_batch=16',
                  '--compile_only', '--remat=none,full')
  temp = temp_gib(out)
  assert set(temp) == {'none', 'full'}, out
  assert temp['full'] < 0.8 * temp['none'], temp


def test_ar_step_runs_and_reports_throughput():
  out = run_bench('--config=configs/ar_demo.py', '--per_device_batch=2',
                  '--steps=1', '--peak_tflops=1',
                  '--remat=dots')
  assert re.search(r'remat=dots .* ms/step \| .* tokens/s .* loss [0-9.]+',
                   out), out
  # MFU against the analytic and XLA's FLOPs, and the markdown summary row.
  assert re.search(r'MFU [0-9.]+% \(analytic\), [0-9.]+% \(XLA\)', out), out
  assert re.search(r'\| AR d4 default \| dots \| 2 \|', out), out


def test_inference_bench_reports_clips_per_second():
  proc = subprocess.run(
      [sys.executable, 'benchmarks/bench_inference.py',
       '--config=configs/demo.py', '--steps=1', '--repeats=1',
       '--attention_impl=xla'],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert re.search(r'\[xla\] tokenize: .* clips/s', proc.stdout), proc.stdout
  assert re.search(r'\[xla\] detokenize: .* clips/s', proc.stdout), proc.stdout
