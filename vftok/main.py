"""Entry point: `python -m vftok.main --config=configs/X.py --workdir=DIR`.

Config fields can be overridden on the command line (`--config.train.total_steps=10`);
unknown keys are rejected. The job is picked by `config.job`.
"""
import importlib
import logging as std_logging
import os
import re
import sys

# TensorFlow (imported by CLU's writers, which only use it to write event
# files) logs from C++ at import; keep its INFO lines (the oneDNN note) off
# the console unless --log_libraries.
if '--log_libraries' not in sys.argv:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics '
                               'and pictures are written.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Call jax.distributed.initialize() first (TPU pods, '
    'SLURM, multi-node GPU): one process per host. Without the three flags '
    'below JAX auto-detects the cluster (TPU metadata, SLURM, Open MPI).')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'With --distributed: host:port of process '
    "0's coordination service (e.g. 127.0.0.1:1234 for several processes on "
    'one machine); default: auto-detected.')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'With --distributed: how many processes in all; '
    'default: auto-detected.')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'With --distributed: this process\'s index in '
    '[0, num_processes); default: auto-detected.')
_LOG_LIBRARIES = flags.DEFINE_bool(
    'log_libraries', False, "Also show the INFO logs of libraries (Orbax's "
    "checkpoint internals, JAX's backend probing, CLU's metric lines); off: "
    'only vftok\'s own progress lines and every library warning.')
flags.mark_flags_as_required(['config', 'workdir'])


class _OwnInfoOnly(std_logging.Filter):
  """Drops library records below WARNING: the console then shows vftok's
  progress lines, not Orbax's per-save INFO lines or 'Unable to initialize
  backend tpu' on a CPU host. Files under vftok/ always pass."""

  _ROOT = os.path.dirname(os.path.abspath(__file__))

  def filter(self, record):
    return (record.levelno >= std_logging.WARNING or
            os.path.abspath(record.pathname).startswith(self._ROOT))


def quiet_libraries():
  std_logging.getLogger().addFilter(_OwnInfoOnly())
  for handler in std_logging.getLogger().handlers:
    handler.addFilter(_OwnInfoOnly())


# Experiments run several jobs in phases (vftok/experiments/): a layer above
# the jobs, which never import one another.
EXPERIMENTS = ('paper_mini',)
JOBS = ('train_tokenizer', 'encode_videos', 'tokenize_dataset',
        'eval_tokenizer', 'train_classifier', 'train_ar', 'sample_ar',
        'eval_ar', 'convert_official', 'reconstruct',
        'export_tokenizer', 'compress', 'eval_budgets') + EXPERIMENTS


def job_module(job: str) -> str:
  """The module whose run(config, workdir) runs `config.job`."""
  return (f'vftok.experiments.{job}' if job in EXPERIMENTS
          else f'vftok.jobs.{job}')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not _LOG_LIBRARIES.value:
    quiet_libraries()
  initialize_distributed(_DISTRIBUTED.value, _COORDINATOR.value,
                         _NUM_PROCESSES.value, _PROCESS_ID.value)
  config = _CONFIG.value
  if config.job not in JOBS:
    raise app.UsageError(f'unknown job {config.job!r}; choose from {JOBS}')
  # An unsupported storage URL fails here, not after the data is built.
  from vftok.data import paths  # pylint: disable=g-import-not-at-top
  try:
    paths.check_config_paths(config, _WORKDIR.value)
  except paths.UnsupportedPathError as e:
    sys.exit(f'FATAL {e}')
  logging.info('JAX %s: process %d of %d, devices %s', jax.__version__,
               jax.process_index(), jax.process_count(), jax.devices())
  run_job(importlib.import_module(job_module(config.job)), config,
          _WORKDIR.value)


def initialize_distributed(distributed: bool, coordinator_address=None,
                           num_processes=None, process_id=None):
  """jax.distributed.initialize() for --distributed; explicit values win
  over JAX's cluster auto-detection (needed where there is no cluster
  environment, e.g. several processes on one machine). On CPU the processes'
  collectives go through gloo (JAX's default CPU collectives)."""
  given = {k: v for k, v in (('coordinator_address', coordinator_address),
                             ('num_processes', num_processes),
                             ('process_id', process_id)) if v is not None}
  if not distributed:
    if given:
      raise app.UsageError(f'--{next(iter(given))} needs --distributed')
    return
  jax.distributed.initialize(**given)


def run_job(job, config, workdir: str):
  """job.run(config, workdir); a user's mistake in the config or its inputs
  (errors.InputError) or a fault of the disk or the data (not a bug) exits
  with one FATAL line instead of a traceback."""
  from vftok import checkpoint  # pylint: disable=g-import-not-at-top
  from vftok import errors  # pylint: disable=g-import-not-at-top
  from vftok.data import records  # pylint: disable=g-import-not-at-top
  try:
    return job.run(config, workdir)
  except (errors.InputError, checkpoint.CheckpointError,
          records.BadRecordError) as e:
    sys.exit(f'FATAL {e}')


def parse_flags(argv):
  """absl's flag parsing, with a mistyped `--config.a.b=...` reported as one
  line naming the key (ml_collections raises a bare AttributeError that
  absl would print as a three-exception traceback)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f'FATAL Flags parsing error: {e}\n'
             'Pass --helpshort or --helpfull to see help on flags.')
  except (AttributeError, KeyError) as e:
    missing = re.search(r"'(\w+)", str(e))
    missing = missing.group(1) if missing else str(e)
    hint = re.search(r'Did you mean "(\w+)"', str(e))
    keys = [a[len('--config.'):].split('=')[0] for a in argv[1:]
            if a.startswith('--config.')]
    bad = [k for k in keys if missing in k.split('.')] or [missing]
    sys.exit(f'FATAL unknown config key {bad[0]!r}: not a field of the config '
             'file (overrides can only change existing fields)'
             + (f'; did you mean {hint.group(1)!r}?' if hint else ''))


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
