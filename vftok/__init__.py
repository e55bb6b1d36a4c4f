"""vftok: VideoFlexTok (flexible-length coarse-to-fine video tokenization) in JAX."""
import ctypes
import os
import platform
import sys

__version__ = '0.1.0'

# Where glibc's malloc is tuned for XLA:CPU (see keep_host_memory); 'default'
# leaves it alone.
HOST_MALLOC_ENV = 'VFTOK_HOST_MALLOC'
_ACCELERATOR_NODES = ('/dev/nvidiactl', '/dev/accel0', '/dev/kfd')
# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def keep_host_memory() -> bool:
  """Makes glibc keep freed memory for reuse; True if it did.

  XLA:CPU takes each run's temporaries (tens to hundreds of MiB) from
  malloc. glibc serves blocks that large as fresh mmaps (always so in a
  worker thread's arena, whose heaps stop at 64 MiB) and unmaps them on
  free, so every train step or decode faults its whole working set back in
  as zeroed pages: the demo's step took ~55k page faults (~210 MiB) each
  time. One arena (the main heap has no size cap), no mmaps and no trimming
  make the second run reuse the first one's pages. The price: the process
  keeps its peak heap until it exits. Skipped off glibc Linux, where an
  accelerator's device node exists (its buffers are not malloc's), and when
  $VFTOK_HOST_MALLOC=default. Must run before XLA starts its threads (a
  thread keeps the arena it first used): vftok does it on import.
  """
  if os.environ.get(HOST_MALLOC_ENV, 'tuned') == 'default':
    return False
  if sys.platform != 'linux' or platform.libc_ver()[0] != 'glibc':
    return False
  if any(os.path.exists(node) for node in _ACCELERATOR_NODES):
    return False
  try:
    mallopt = ctypes.CDLL('libc.so.6').mallopt
  except (OSError, AttributeError):
    return False
  return all(mallopt(param, value) == 1 for param, value in (
      (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1)))


# Whether this process runs with the tuned allocator.
HOST_MEMORY_KEPT = keep_host_memory()


def __getattr__(name):
  # Lazy, so that config files importing vftok.defaults do not pull in JAX.
  if name == 'Tokenizer':
    from vftok.api import Tokenizer
    return Tokenizer
  if name == 'VidTok':
    from vftok.models.pretrained.vidtok import VidTok
    return VidTok
  raise AttributeError(f'module vftok has no attribute {name!r}')
