"""Steady-state timing of jitted calls in the evaluation jobs."""
import time
from typing import Callable, Dict, Hashable, Optional

import jax


class Timer:
  """Seconds per named call, compilation apart: the first call of each
  `compile_key` (default: the name) runs once untimed first and its time
  goes to `compile_seconds`, so `seconds` holds steady-state time only."""

  def __init__(self):
    self.seconds: Dict[str, float] = {}
    self.compile_seconds = 0.0
    self._compiled = set()

  def __call__(self, name: str, fn: Callable, *args,
              compile_key: Optional[Hashable] = None, **kwargs):
    key = name if compile_key is None else compile_key
    if key not in self._compiled:
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*args, **kwargs))
      self.compile_seconds += time.perf_counter() - t0
      self._compiled.add(key)
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args, **kwargs))
    self.seconds[name] = self.seconds.get(name, 0.0) + (time.perf_counter()
                                                        - t0)
    return out
