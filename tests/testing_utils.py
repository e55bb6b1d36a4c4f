"""Helpers shared by the test files: config files loaded by path (as users'
tools do), a metric writer that records what a job logs, and faults."""
import contextlib
import importlib.util
import os
import subprocess

from clu import metric_writers

from vftok import defaults

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg=None, **overrides):
  """configs/<name>.py's get_config(arg), with top-level fields overridden."""
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(ROOT, 'configs', f'{name}.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = mod.get_config(arg)
  config.update(overrides)
  return config


class Recorder(metric_writers.LoggingWriter):
  """Logs as usual and keeps every scalar: {step: {name: value}}."""

  def __init__(self):
    super().__init__()
    self.scalars = {}

  def write_scalars(self, step, scalars):
    self.scalars.setdefault(step, {}).update(scalars)


def truncate_largest_file(step_dir) -> str:
  """Halves the largest array file of an Orbax step directory (a host that
  died mid-write, a partial copy); -> its path. Restores read the merged
  OCDBT data under state/d/."""
  d = os.path.join(str(step_dir), 'state', 'd')
  files = [os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs]
  big = max(files, key=os.path.getsize)
  with open(big, 'r+b') as f:
    f.truncate(os.path.getsize(big) // 2)
  return big


def corrupt_middle(path: str, n: int = 16):
  """Overwrites `n` bytes inside the records of a record file (a bad disk
  sector, a partial copy); offsets that would hit the file's index (the
  whole file unreadable, not a record) are put back and the next tried.
  -> the indices of the records that no longer read."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  size = os.path.getsize(path)
  for frac in range(2, 256):
    offset = size // frac  # records may fill only the start of a padded file
    with open(path, 'r+b') as f:
      f.seek(offset)
      original = f.read(n)
      f.seek(offset)
      f.write(b'\xa5' * n)
    bad = []
    try:
      reader = array_record_module.ArrayRecordReader(path)
      for i in range(reader.num_records()):
        try:
          reader.read([i])
        except Exception:  # pylint: disable=broad-except
          bad.append(i)
      reader.close()
    except Exception:  # pylint: disable=broad-except
      bad = []
    if bad:
      return bad
    with open(path, 'r+b') as f:
      f.seek(offset)
      f.write(original)
  raise AssertionError(f'found no record bytes to corrupt in {path}')


@contextlib.contextmanager
def tiny_tmpfs(path, size='2m'):
  """Mounts a `size` tmpfs at `path` (a real ENOSPC once full); skips the
  test where this process may not mount (needs root / CAP_SYS_ADMIN)."""
  import pytest  # pylint: disable=g-import-not-at-top
  os.makedirs(path, exist_ok=True)
  r = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs',
                      str(path)], capture_output=True, check=False)
  if r.returncode:
    pytest.skip(f'cannot mount a tmpfs here: {r.stderr.decode().strip()}')
  try:
    yield path
  finally:
    subprocess.run(['umount', '-l', str(path)], check=False)


def fill_disk(path):
  """Writes zeros into the file `path` until its filesystem is full."""
  with open(path, 'wb', buffering=0) as f:
    try:
      while True:
        f.write(b'\0' * 4096)
    except OSError:
      pass


def tiny_tokenizer_config():
  """The smallest meaningful tokenizer (unit tests): 3 latent frames of 4x4x4,
  4 registers, depth 2, width 32."""
  c = defaults.tokenizer_config()
  m = c.model
  m.latent_frames, m.latent_size, m.latent_channels = 3, (4, 4), 4
  m.tokens_per_frame, m.enc_depth, m.dec_depth = 4, 2, 2
  m.enc_width = m.dec_width = 32
  m.head_dim, m.repa_dim = 16, 8
  m.repa_source = 'random_stand_in'  # tests of the REPA code path only
  c.optim.mup_base_width = 16
  c.optim.warmup_steps = 2
  c.train.total_steps = 10
  c.model.dtype = 'float32'
  c.data.global_batch_size = 8
  return c


def small_demo_set(root: str, repa_teacher: str = 'i3d:Mixed_3c') -> str:
  """The jobs' tests' demo set: 64 train clips of 17 x 32 x 32 (one eval
  clip per video), with the demo's I3D REPA features unless repa_teacher=''.
  Built once per module fixture; the jobs then find it built."""
  from vftok.data import demo  # pylint: disable=g-import-not-at-top
  from vftok.models.pretrained import features  # pylint: disable=g-import-not-at-top
  demo.ensure_demo_dataset(str(root), 17, 32, max_clips_per_video=16,
                           eval_clips_per_video=1, clips_per_shard=32,
                           repa_teacher=repa_teacher,
                           teacher_factory=features.demo_teacher)
  return root


def perturbed(tok, scale=0.05, seed=0):
  """`tok` with random offsets on every parameter (in place; -> tok). A
  freshly initialised decoder is adaLN-Zero: its output is exactly 0
  whatever the input, so it ignores its registers; offsets make every
  pathway live."""
  import jax  # pylint: disable=g-import-not-at-top
  leaves, treedef = jax.tree.flatten(tok.params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  tok.params = jax.tree.unflatten(treedef, [
      x + scale * jax.random.normal(k, x.shape, x.dtype)
      for x, k in zip(leaves, keys)])
  return tok
