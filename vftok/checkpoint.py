"""Orbax checkpoints of the train state + Grain iterator, and preemption.

    <workdir>/<step>/state/   arrays (OCDBT), each host writes its own shards
    <workdir>/<step>/data/    Grain iterator state, one JSON per process

Orbax writes a step into `<step>.orbax-checkpoint-tmp-*` and renames it to
`<step>` only once every item (and, async, every host) has finished, so a
partial checkpoint is never visible under a step name: a crash mid-save leaves
only a tmp directory, which `latest_step` / `restore` never consider (and the
next start deletes). Restore writes each array straight into the shardings of
the abstract state it is given, so the mesh may differ from the one saved on.
"""
import signal
import threading
from typing import Any, Optional, Sequence, Tuple

from absl import logging
from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

# Grain registers its Orbax handler on import; the public names moved in
# grain 0.2.x (grain.checkpoint), older releases only have grain.python.
try:
  from grain.checkpoint import CheckpointRestore as GrainRestore
  from grain.checkpoint import CheckpointSave as GrainSave
except ImportError:  # pragma: no cover
  from grain.python import PyGrainCheckpointRestore as GrainRestore
  from grain.python import PyGrainCheckpointSave as GrainSave

STATE, DATA = 'state', 'data'


def abstract_like(tree):
  """Arrays -> ShapeDtypeStructs carrying the same shardings (restore target)."""
  def leaf(x):
    if isinstance(x, jax.Array):
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return x
  return jax.tree.map(leaf, tree)


class Checkpointer:
  """Saves every `save_every` steps (or on force / preemption), keeps `keep`."""

  def __init__(self, workdir: str, keep: Optional[int] = 3,
               save_every: int = 1000, async_save: bool = True):
    self.save_every = save_every
    self.directory = epath.Path(workdir)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=True,
        cleanup_tmp_directories=True,  # leftovers of a crash mid-save
        enable_async_checkpointing=async_save,
    )
    self._mgr = ocp.CheckpointManager(self.directory, options=options,
                                      item_names=(STATE, DATA))

  def maybe_save(self, step: int, state, data_iter=None,
                 force: bool = False) -> bool:
    """Saves `state` (and `data_iter`'s position) if due; True if it did.

    Async: returns once arrays are copied to host, so the caller may donate
    `state` to the next step; the Grain state is captured before returning.
    """
    step = int(step)
    due = force or preemption_signalled() or (
        self.save_every > 0 and step % self.save_every == 0)
    if not due or step in self._mgr.all_steps():
      return False
    items = {STATE: ocp.args.StandardSave(state)}
    if data_iter is not None:
      items[DATA] = GrainSave(data_iter)
    # force=True: the cadence is decided above, not by Orbax's interval.
    self._mgr.save(step, args=ocp.args.Composite(**items), force=True)
    return True

  def latest_step(self) -> Optional[int]:
    return self._mgr.latest_step()

  def all_steps(self) -> Sequence[int]:
    return sorted(self._mgr.all_steps())

  def restore(self, abstract_state, data_iter=None, step: Optional[int] = None
              ) -> Tuple[Any, int]:
    """-> (state, step) of `step` (default: latest), or (None, 0) if none.

    `abstract_state` is a tree of jax.ShapeDtypeStruct with `.sharding` set
    (see `abstract_like`); arrays are read directly into those shardings.
    `data_iter` (a Grain iterator) is set in place to the saved position if
    the checkpoint has one.
    """
    if step is None:
      step = self.latest_step()
    if step is None:
      return None, 0
    items = {STATE: ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      if (self.directory / str(step) / DATA).exists():
        items[DATA] = GrainRestore(data_iter)
      else:
        logging.warning('checkpoint %d has no data iterator state; the data '
                        'pipeline restarts from its beginning', step)
    restored = self._mgr.restore(step, args=ocp.args.Composite(**items))
    return restored[STATE], int(step)

  def restore_latest(self, abstract_state, data_iter=None) -> Tuple[Any, int]:
    return self.restore(abstract_state, data_iter=data_iter)

  def wait(self):
    """Blocks until pending async saves are committed."""
    self._mgr.wait_until_finished()

  def close(self):
    self._mgr.wait_until_finished()
    self._mgr.close()


def restore_params(directory: str, init_fn, mesh, step: Optional[int] = None
                   ) -> Tuple[Any, int]:
  """-> (params, step) of the train state saved in `directory`, read straight
  into the shardings of `mesh` (by the params' logical axes).

  init_fn: rng -> the (boxed) train state, as the trainer builds it; only its
  shapes are used (jax.eval_shape). The optimizer state is read too, as
  Orbax restores whole items, then dropped.
  """
  from vftok import sharding  # pylint: disable=g-import-not-at-top
  abstract, _ = sharding.abstract_state(init_fn, jax.random.key(0), mesh)
  ckpt = Checkpointer(directory, async_save=False)
  try:
    state, got = ckpt.restore(abstract, step=step)
  finally:
    ckpt.close()
  if state is None:
    raise ValueError(f'no checkpoint found in {directory}')
  return state.params, got


# Guards that are installed; `Checkpointer.maybe_save` saves when any of them
# has seen a signal.
_ACTIVE_GUARDS = []


def preemption_signalled() -> bool:
  return any(g.signalled for g in _ACTIVE_GUARDS)


class PreemptionGuard:
  """Turns SIGTERM (preemption notice) into a clean stop at a step boundary.

  The loop calls `should_stop(step)` each step; when True it forces a
  checkpoint and exits. With several processes all must stop at the same step
  (the save is collective): the decision then comes from JAX's preemption
  sync point (the coordination service relays the notice to every host), or,
  if that service is not running, from an all-gather of the local flags.
  """

  def __init__(self, signals: Sequence[int] = (signal.SIGTERM,)):
    self._event = threading.Event()
    self._previous = {}
    try:
      for sig in signals:
        self._previous[sig] = signal.signal(sig, self._on_signal)
    except ValueError:  # not the main thread: signals cannot be caught here
      logging.warning('PreemptionGuard: not in the main thread, no handler')
    _ACTIVE_GUARDS.append(self)

  def _on_signal(self, signum, frame):
    logging.warning('signal %d received: checkpointing at the next step', signum)
    self._event.set()
    prev = self._previous.get(signum)
    if callable(prev):  # chain another library's handler, never SIG_DFL
      prev(signum, frame)

  @property
  def signalled(self) -> bool:
    return self._event.is_set()

  def should_stop(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self.signalled
    from jax.experimental import multihost_utils
    sync = getattr(multihost_utils, 'reached_preemption_sync_point', None)
    if sync is not None:
      try:
        # Only the shared answer: a local flag alone would desynchronise hosts.
        stop = bool(sync(int(step)))
      except RuntimeError:  # preemption service not initialised
        stop = None
      if stop is not None:
        if stop:
          self._event.set()
        return stop
    flags = multihost_utils.process_allgather(np.int32(self.signalled))
    if np.any(flags):
      self._event.set()
    return self.signalled

  def close(self):
    """Restores the previous handlers."""
    for sig, prev in self._previous.items():
      try:
        signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
      except ValueError:
        pass
    self._previous = {}
    if self in _ACTIVE_GUARDS:
      _ACTIVE_GUARDS.remove(self)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
