"""Run a command as on a CPU with AVX2 and without AVX-512.

  python benchmarks/as_avx2.py python benchmarks/bench_train_step.py \
      --config=configs/demo.py --per_device_batch=8 --remat=none

The project's CPU numbers are published for 2-core AVX2 machines without
AVX-512. Framework caps reach only part of the code on an AVX-512 host: XLA's
--xla_cpu_max_isa caps what XLA generates, torch's ATEN_CPU_CAPABILITY and
oneDNN's ONEDNN_MAX_CPU_ISA theirs, but the matmul libraries (XLA's YNNPACK,
torch's cpuinfo users) pick their kernels by CPUID: a 2048^3 f32 matmul runs
as fast capped as not (docs/attention_kernels.md). So the command also runs
with benchmarks/hide_avx512.c preloaded, which has the kernel fault on CPUID
and answers it with the AVX-512 bits cleared; every library in the process and
its children then takes its AVX2 kernels. It needs Linux on x86-64, a C
compiler and CPUID faulting (the "cpuid_fault" flag of /proc/cpuinfo); on a
host without AVX-512 there is nothing to hide and only the caps are set.
"""
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, 'hide_avx512.c')
ACTIVE = 'VFTOK_AS_AVX2'  # set in the environment it builds
CAPS = dict(ATEN_CPU_CAPABILITY='avx2', ONEDNN_MAX_CPU_ISA='AVX2')
XLA_CAP = '--xla_cpu_max_isa=AVX2'


def cpuinfo() -> dict[str, str]:
  """The first CPU's /proc/cpuinfo fields ({} where there is none)."""
  fields = {}
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if not line.strip():
          break
        key, _, value = line.partition(':')
        fields[key.strip()] = value.strip()
  except OSError:
    pass
  return fields


def cpu_flags() -> set[str]:
  return set(cpuinfo().get('flags', '').split())


def build_shim(cache_dir: str = '') -> str:
  """Compiles hide_avx512.c once per source text; -> the .so path."""
  with open(SOURCE, 'rb') as f:
    digest = hashlib.sha256(f.read()).hexdigest()[:16]
  cache_dir = cache_dir or os.path.join(
      os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')), 'vftok')
  path = os.path.join(cache_dir, f'hide_avx512-{digest}.so')
  if os.path.exists(path):
    return path
  cc = os.environ.get('CC') or shutil.which('cc') or shutil.which('gcc')
  if not cc:
    raise SystemExit('as_avx2: no C compiler (cc/gcc; or set CC) to build '
                     f'{SOURCE}')
  os.makedirs(cache_dir, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix='.so', dir=cache_dir)
  os.close(fd)
  try:  # built aside, then renamed: never a half-written library
    proc = subprocess.run([cc, '-O2', '-shared', '-fPIC', '-o', tmp, SOURCE,
                           '-ldl'], capture_output=True, text=True)
    if proc.returncode:
      raise SystemExit(f'as_avx2: {cc} failed on {SOURCE}:\n{proc.stderr}')
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def avx2_env(base=None) -> dict:
  """The environment (from `base`, default os.environ) to run a command as
  on an AVX2 CPU without AVX-512."""
  env = dict(os.environ if base is None else base)
  if env.get(ACTIVE):
    return env
  flags = cpu_flags()
  if 'avx2' not in flags:
    raise SystemExit('as_avx2: this CPU has no AVX2 (/proc/cpuinfo)')
  if 'avx512f' in flags:
    if 'cpuid_fault' not in flags:
      raise SystemExit(
          'as_avx2: this CPU has AVX-512 and cannot fault on CPUID (no '
          '"cpuid_fault" in /proc/cpuinfo), so its matmul libraries cannot be '
          'kept off AVX-512; time on an AVX2 machine instead')
    shim = build_shim()
    env['LD_PRELOAD'] = ' '.join(p for p in (shim, env.get('LD_PRELOAD'))
                                 if p)
  env.update(CAPS)
  env['XLA_FLAGS'] = f'{env.get("XLA_FLAGS", "")} {XLA_CAP}'.strip()
  env[ACTIVE] = '1'
  return env


def main(argv):
  if not argv:
    raise SystemExit(__doc__)
  os.execvpe(argv[0], argv, avx2_env())


if __name__ == '__main__':
  main(sys.argv[1:])
