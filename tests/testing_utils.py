"""Helpers shared by the test files: config files loaded by path (as users'
tools do) and a metric writer that records what a job logs."""
import importlib.util
import os

from clu import metric_writers

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
