"""Runs every test on 8 simulated CPU devices (set before jax is imported)."""
import os

_FLAG = '--xla_force_host_platform_device_count=8'
if _FLAG not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' +
                             _FLAG).strip()
os.environ['JAX_PLATFORMS'] = 'cpu'


def pytest_configure(config):
  # Registered (not deselected): `pytest -q tests` runs them; `-m "not e2e"`
  # leaves out the slow end-to-end runs (notebooks, multi-process jobs).
  config.addinivalue_line(
      'markers', 'e2e: end-to-end runs of whole jobs or notebooks in '
      'subprocesses (minutes)')
  config.addinivalue_line(
      'markers', 'learning: trains small models on procedural video and checks '
      'that they learn (tests/test_learning.py; minutes)')
