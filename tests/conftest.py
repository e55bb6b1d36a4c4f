"""Runs every test on 8 simulated CPU devices (set before jax is imported)."""
import os
import shutil
import tempfile

_FLAG = '--xla_force_host_platform_device_count=8'
if _FLAG not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' +
                             _FLAG).strip()
os.environ['JAX_PLATFORMS'] = 'cpu'

# One persistent XLA compilation cache for the whole run, shared by the
# xdist workers and the jobs the e2e tests start as subprocesses (they
# inherit the environment): the tests build the same tiny models in many
# jobs, each of which jits afresh, so most compiles repeat one before them.
# Compiles are most of a tiny test's time (README, "Tests", has the numbers).
# A size cap turns on the cache's file lock, which the concurrent writers
# need. A cache the caller names is used as it is, and kept.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(
      prefix='vftok-tests-xla-cache-')
  os.environ['VFTOK_TESTS_XLA_CACHE_OWNER'] = str(os.getpid())
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  os.environ.setdefault('JAX_COMPILATION_CACHE_MAX_SIZE', str(8 << 30))


def pytest_configure(config):
  # Registered (not deselected): `pytest -q tests` runs them; `-m "not e2e"`
  # leaves out the slow end-to-end runs (notebooks, multi-process jobs).
  config.addinivalue_line(
      'markers', 'e2e: end-to-end runs of whole jobs or notebooks in '
      'subprocesses (minutes)')
  config.addinivalue_line(
      'markers', 'learning: trains small models on procedural video and checks '
      'that they learn (tests/test_learning.py; minutes)')
  if hasattr(config.option, 'loadscopereorder'):   # pytest-xdist
    config.option.loadscopereorder = False   # pytest_collection_modifyitems


def pytest_collection_modifyitems(session, config, items):
  """Files with whole-job tests (marked e2e or learning) first, each file's
  tests in their own order. xdist's --dist loadfile hands out files in
  collection order once its count-based reordering is off (pytest_configure,
  in the process that schedules): the long files then start while the many
  short ones fill the other process, instead of a 4-minute file (a job run
  once, so few tests) starting last, alone."""
  del session, config
  heavy = {item.nodeid.split('::')[0] for item in items
           if item.get_closest_marker('e2e') or
           item.get_closest_marker('learning')}
  items.sort(key=lambda item: item.nodeid.split('::')[0] not in heavy)


def pytest_unconfigure(config):
  del config
  # Only the process that made the cache removes it (not an xdist worker).
  if os.environ.get('VFTOK_TESTS_XLA_CACHE_OWNER') == str(os.getpid()):
    shutil.rmtree(os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)
