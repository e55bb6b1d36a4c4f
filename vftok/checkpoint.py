"""Orbax checkpoints of the train state + Grain iterator, and preemption.

    <workdir>/<step>/state/   arrays (OCDBT), each host writes its own shards
    <workdir>/<step>/data/    Grain iterator state, one JSON per process

Orbax writes a step into `<step>.orbax-checkpoint-tmp-*` and renames it to
`<step>` only once every item (and, async, every host) has finished, so a
partial checkpoint is never visible under a step name: a crash mid-save leaves
only a tmp directory, which `latest_step` / `restore` never consider (and the
next start deletes). Restore writes each array straight into the shardings of
the abstract state it is given, so the mesh may differ from the one saved on.

Faults (docs/fault_tolerance.md): a latest step whose own files show damage
(a file truncated by a dying host or a partial copy: read, decode or size
errors) is moved to `<workdir>/damaged/<step>` (never deleted; Orbax ignores
the name) and the next older step is tried. Anything else that stops a
restore moves nothing and stops with one line: a step whose tree or shapes
differ from the state the config builds (a changed model), an out-of-memory,
a permission or transient I/O error. A save that fails (disk full,
permissions) raises `CheckpointError` at the next step boundary, leaving the
older steps as they were. `CheckpointError` is one line; vftok/main.py prints
it without a traceback.
"""
import json
import logging as std_logging
import os
import re
import signal
import threading
from typing import Any, List, Optional, Sequence, Tuple

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
DAMAGED = 'damaged'  # <workdir>/damaged/<step>: steps that did not restore


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be written or read, said in one line."""


def _strip_specs(text: str) -> str:
  # TensorStore appends its whole JSON spec, [tensorstore_spec='{...}'].
  return re.sub(r"\s*\[tensorstore_spec(\[\d+\])?='.*?'\]", '', text)


def one_line(e: BaseException, limit: int = 400) -> str:
  """An exception as one short line: TensorStore errors carry their whole
  JSON spec ([tensorstore_spec=...]) and nested driver prefixes."""
  text = ' '.join(str(e).split('\n')[0].split()) or type(e).__name__
  text = _strip_specs(text)
  text = re.sub(r'\s*\[tensorstore_spec.*$', '', text)  # a cut-off spec
  text = re.sub(r'(Error opening "\w+" driver: )+', '', text)
  if isinstance(e, OSError) and not text.startswith('['):
    text = f'{type(e).__name__}: {text}'
  if len(text) <= limit:
    return text
  # The cause (e.g. 'No space left on device') ends the message.
  return text[:limit // 2 - 3] + ' ... ' + text[-(limit // 2 - 2):]


class _OrbaxOneLine(std_logging.Filter):
  """Orbax logs a failed background save with a traceback per thread (one
  disk-full save: ~100 lines); keep each record, with the exception in one
  line, since CheckpointError reports the failure itself."""

  def filter(self, record):
    if 'orbax' not in (record.pathname or ''):
      return True
    if record.exc_info or 'tensorstore_spec' in str(record.msg):
      msg = _strip_specs(record.getMessage())
      if record.exc_info and record.exc_info[1] is not None:
        exc = one_line(record.exc_info[1])
        if exc[:80] not in msg:
          msg = f'{msg}: {exc}'
      record.msg, record.args, record.exc_info, record.exc_text = (
          msg, (), None, None)
    return True


_ORBAX_FILTER = _OrbaxOneLine()


def abstract_like(tree):
  """Arrays -> ShapeDtypeStructs carrying the same shardings (restore target)."""
  def leaf(x):
    if isinstance(x, jax.Array):
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return x
  return jax.tree.map(leaf, tree)


class _Damaged(Exception):
  """A step whose own files cannot be read or decoded (`cause`)."""

  def __init__(self, cause: BaseException):
    super().__init__(str(cause))
    self.cause = cause


# What a step's damaged files raise (TensorStore status codes and decoder
# messages, seen on truncated, deleted and overwritten files) ...
_DAMAGE = re.compile(r'OUT_OF_RANGE|NOT_FOUND|DATA_LOSS|Error decoding|'
                     r'[Cc]orrupt|[Cc]hecksum|Invalid JSON|[Uu]nexpected end|'
                     r'[Tt]runcated')
# ... and what says the files may be fine: memory, access, a passing fault.
_NOT_DAMAGE = re.compile(r'RESOURCE_EXHAUSTED|[Oo]ut of memory|OOM|'
                         r'UNAVAILABLE|DEADLINE_EXCEEDED|PERMISSION_DENIED|'
                         r'[Pp]ermission denied|UNAUTHENTICATED|ABORTED|'
                         r'CANCELLED|[Cc]onnection|[Tt]imed out|[Tt]imeout')


def is_damage(e: BaseException) -> bool:
  """Whether a restore failure shows the step's files are damaged (moving the
  step aside is then right); unknown failures count as not damage, so a
  checkpoint is never moved for a fault of the machine."""
  if isinstance(e, (MemoryError, PermissionError, ConnectionError,
                    TimeoutError, InterruptedError)):
    return False
  text = str(e)
  if _NOT_DAMAGE.search(text):
    return False
  if isinstance(e, (FileNotFoundError, UnicodeDecodeError,
                    json.JSONDecodeError, EOFError)):
    return True
  return bool(_DAMAGE.search(text))


def leaf_shapes(tree) -> dict:
  """'a/b/0/c' -> shape, for every array leaf (saved metadata or abstract
  state: dict keys, attributes and indices all become path names)."""
  def name(k):
    for attr in ('key', 'name', 'idx'):
      if hasattr(k, attr):
        return str(getattr(k, attr))
    return str(k)
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return {'/'.join(name(k) for k in path): tuple(getattr(x, 'shape', ()))
          for path, x in leaves}


def tree_mismatch(saved, abstract) -> str:
  """'' if `saved` (a step's tree metadata) has the leaves and shapes of
  `abstract`; else what differs, in a few words."""
  a, b = leaf_shapes(saved), leaf_shapes(abstract)
  missing, extra = sorted(set(b) - set(a)), sorted(set(a) - set(b))
  shapes = [f'{k}: saved {a[k]}, now {b[k]}' for k in sorted(set(a) & set(b))
            if a[k] != b[k]]
  parts = []
  if shapes:
    parts.append(f'{len(shapes)} arrays of another shape, e.g. {shapes[0]}')
  if missing:
    parts.append(f'{len(missing)} arrays not in the checkpoint, e.g. '
                 f'{missing[0]}')
  if extra:
    parts.append(f'{len(extra)} saved arrays this config has no place for, '
                 f'e.g. {extra[0]}')
  return '; '.join(parts)


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
    self._pending = None   # the step an async save is still writing
    self._failed = None    # the CheckpointError of a failed save, once raised
    if _ORBAX_FILTER not in logging.get_absl_logger().filters:
      logging.get_absl_logger().addFilter(_ORBAX_FILTER)

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
    self.wait()  # a failure of the previous save names that step
    items = {STATE: ocp.args.StandardSave(state)}
    if data_iter is not None:
      items[DATA] = GrainSave(data_iter)
    try:
      # force=True: the cadence is decided above, not by Orbax's interval.
      self._mgr.save(step, args=ocp.args.Composite(**items), force=True)
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_failed(step, e) from None
    self._pending = step
    return True

  def check(self):
    """Raises CheckpointError if a background save has failed; does not
    wait for one still being written (call it every step)."""
    if self._pending is not None and not self._mgr.is_saving_in_progress():
      self.wait()

  def _save_failed(self, step: int, e: BaseException) -> CheckpointError:
    # Orbax wrote into <step>.orbax-checkpoint-tmp*: no step directory
    # appears, and the next start removes the leftover.
    self._pending = None
    try:
      if step is not None and (self.directory / str(step)).exists():
        self._move_aside(step)  # renamed, then failed: not a valid step
      self._mgr.reload()
    except Exception:  # pylint: disable=broad-except
      pass  # the filesystem may refuse more; the error below says enough
    kept = [s for s in self.all_steps() if s != step]
    resume = (f'steps {kept} are intact; a restart resumes from step '
              f'{kept[-1]}' if kept else 'no earlier checkpoint exists')
    self._failed = CheckpointError(
        f'saving checkpoint step {step} to {self.directory} failed: '
        f'{one_line(e)}; training stopped ({resume})')
    return self._failed

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

    step=None (resuming): a step whose files are damaged is logged in one
    line, moved to <workdir>/damaged/<step>, and the next older one is
    tried; CheckpointError if none restores. Any other failure (a state of
    another tree or shapes, out of memory, a transient I/O error) raises
    CheckpointError and moves nothing. An explicit `step` that does not
    restore raises CheckpointError naming it and the other steps.
    """
    if step is not None:
      try:
        return self._restore_checked(abstract_state, data_iter, int(step))
      except _Damaged as e:
        others = [s for s in self.all_steps() if s != int(step)]
        raise CheckpointError(
            f'checkpoint step {step} in {self.directory} does not restore: '
            f'{one_line(e.cause)} (other steps: {others or "none"})') from None
    initial = data_iter.get_state() if data_iter is not None else None
    tried = []
    for s in reversed(self.all_steps()):
      try:
        return self._restore_checked(abstract_state, data_iter, s)
      except _Damaged as e:
        if data_iter is not None:  # the data item may have been read
          data_iter.set_state(initial)
        moved = self._move_aside(s)
        tried.append(s)
        logging.error('checkpoint step %d in %s does not restore (%s); moved '
                      'it to %s, trying the next older step', s,
                      self.directory, one_line(e.cause), moved)
    if tried:
      raise CheckpointError(
          f'no checkpoint in {self.directory} restores: tried steps {tried} '
          f'(moved to {self.directory / DAMAGED}); remove the workdir\'s '
          'checkpoints to start over')
    return None, 0

  def _restore_checked(self, abstract_state, data_iter, step: int):
    """_restore_step, with its failures sorted: _Damaged when the step's own
    files are unreadable; CheckpointError (nothing to move) otherwise."""
    if step not in self.all_steps():
      raise CheckpointError(f'no checkpoint step {step} in {self.directory} '
                            f'(steps: {list(self.all_steps())})')
    state_dir = self.directory / str(step) / STATE
    try:  # tree and shapes from the step's metadata, before any array is read
      saved = ocp.StandardCheckpointHandler().metadata(state_dir).tree
    except Exception as e:  # pylint: disable=broad-except
      raise self._sorted(step, e) from None
    mismatch = tree_mismatch(saved, abstract_state)
    if mismatch:
      raise CheckpointError(
          f'checkpoint step {step} in {self.directory} holds a train state '
          f'that differs from the one this config builds ({mismatch}); '
          'nothing was moved: resume with the config that wrote it, or train '
          'this one in a new --workdir')
    try:
      return self._restore_step(abstract_state, data_iter, step)
    except Exception as e:  # pylint: disable=broad-except
      raise self._sorted(step, e) from None

  def _sorted(self, step: int, e: BaseException) -> Exception:
    if is_damage(e):
      return _Damaged(e)
    return CheckpointError(
        f'restoring checkpoint step {step} from {self.directory} failed: '
        f'{one_line(e)}; not a sign of damaged files (out of memory, '
        'permissions, an I/O error that may pass?), so nothing was moved: '
        're-run once the cause is fixed')

  def _restore_step(self, abstract_state, data_iter, step: int):
    items = {STATE: ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      if (self.directory / str(step) / DATA).exists():
        items[DATA] = GrainRestore(data_iter)
      else:
        logging.warning('checkpoint %d has no data iterator state; the data '
                        'pipeline restarts from its beginning', step)
    restored = self._mgr.restore(step, args=ocp.args.Composite(**items))
    return restored[STATE], int(step)

  def _move_aside(self, step: int) -> str:
    """<dir>/<step> -> <dir>/damaged/<step> (-1, -2, ... if taken): kept for
    inspection, invisible to Orbax (not a step name). Through etils.epath, so
    a gs:// workdir's step is moved in the bucket."""
    src = self.directory / str(step)
    dest = self.directory / DAMAGED / str(step)
    if jax.process_index() == 0:
      dest.parent.mkdir(parents=True, exist_ok=True)
      n = 0
      while (dest.parent / f'{step}-{n}' if n else dest).exists():
        n += 1
      dest = dest.parent / f'{step}-{n}' if n else dest
      src.rename(dest)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f'vftok_damaged_{step}')
    self._mgr.reload()  # forget the step: a later save may write it anew
    return str(dest)

  def restore_latest(self, abstract_state, data_iter=None) -> Tuple[Any, int]:
    return self.restore(abstract_state, data_iter=data_iter)

  def wait(self):
    """Blocks until pending async saves are committed; CheckpointError if
    one failed."""
    if self._failed is not None:
      raise self._failed
    try:
      self._mgr.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_failed(self._pending, e) from None
    self._pending = None

  def close(self):
    if self._failed is not None:
      # Already reported; Orbax re-raises the same failure on close.
      try:
        self._mgr.close()
      except Exception:  # pylint: disable=broad-except
        pass
      return
    self.wait()
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
    steps = ckpt.all_steps()
    if not steps:
      raise ValueError(f'no checkpoint found in {directory}')
    # A reader (Tokenizer.from_checkpoint, sampling, stage 2) never moves a
    # checkpoint: the damaged step is named and the others offered.
    want = steps[-1] if step is None else int(step)
    if want not in steps:
      raise CheckpointError(f'no checkpoint step {want} in {directory} '
                            f'(steps: {steps})')
    try:
      state, got = ckpt._restore_checked(abstract, None, want)  # pylint: disable=protected-access
    except _Damaged as e:
      others = [s for s in steps if s != want]
      raise CheckpointError(
          f'checkpoint step {want} in {directory} does not restore: '
          f'{one_line(e.cause)}; other steps: {others or "none"}'
          + (' (pass step=, e.g. Tokenizer.from_checkpoint(path, step='
             f'{others[-1]}))' if others else '')) from None
  finally:
    ckpt.close()
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


# ---- workdir I/O: the one place config.json is written, read and checked ----

CONFIG_FILE = 'config.json'    # <workdir>/config.json: the resolved config
CHECKPOINT_DIR = 'checkpoints'  # <workdir>/checkpoints/<step>/


def write_workdir_config(config, workdir: str) -> None:
  """Writes the resolved config into the workdir (process 0, atomically)."""
  from vftok.data import records  # pylint: disable=g-import-not-at-top
  records.makedirs(workdir)
  if jax.process_index() == 0:
    with records.atomic_path(os.path.join(workdir, CONFIG_FILE)) as tmp:
      with open(tmp, 'w') as f:
        f.write(config.to_json(indent=2))


def has_workdir_config(workdir: str) -> bool:
  return (epath.Path(workdir) / CONFIG_FILE).exists()


def load_workdir_config(workdir: str):
  """The resolved config a run (tokenizer or AR) wrote into its workdir."""
  import json  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from vftok import errors  # pylint: disable=g-import-not-at-top
  config_path = epath.Path(workdir) / CONFIG_FILE   # local or gs://
  if not config_path.exists():
    raise errors.InputError(f'{workdir} is not a vftok workdir: no '
                            f'{CONFIG_FILE}')
  try:
    fields = json.loads(config_path.read_text())
  except ValueError as e:
    raise errors.InputError(f'{config_path} is not a readable JSON config: '
                            f'{e}') from None
  return ml_collections.ConfigDict(upgrade_config(fields))


def upgrade_config(fields: dict) -> dict:
  """A config.json written by an older vftok -> today's fields, meaning the
  same run (so its optimizer state still restores)."""
  o = fields.get('optim', {})
  # optim.encoder_lr_scale became optim.lr_scales=(('encoder', x),); the
  # never-used encoder delay / ramp knobs are gone.
  scale = o.pop('encoder_lr_scale', 1.0)
  if scale != 1.0 and not o.get('lr_scales'):
    o['lr_scales'] = [['encoder', scale]]
  for key in ('encoder_delay_steps', 'encoder_ramp_steps'):
    o.pop(key, None)
  m = fields.get('model', {})
  m.pop('register_init_std', None)
  # One name per concept across tokenizer and AR: K is tokens_per_frame, the
  # compute dtype model.dtype.
  if 'registers' in m:
    m['tokens_per_frame'] = m.pop('registers')
  dtype = fields.get('train', {}).pop('compute_dtype', None)
  if dtype is not None and fields.get('job', 'train_tokenizer') != 'train_ar':
    m['dtype'] = dtype
  return fields


def finished_steps(workdir: str) -> List[int]:
  """Steps with a finished checkpoint in the workdir, ascending."""
  d = epath.Path(workdir) / CHECKPOINT_DIR
  return sorted(int(s.name) for s in (d.iterdir() if d.is_dir() else [])
                if s.name.isdigit())


# How to make the workdir a job reads, by the job that writes it.
MAKE_WORKDIR = {
    'train_tokenizer': 'make one with configs/tokenizer_k600.py '
                       '(configs/demo.py on a CPU), or from a released '
                       'checkpoint with configs/convert_official.py',
    'train_ar': 'make one with configs/ar_c2v_k600.py (configs/ar_demo.py '
                'on a CPU)',
}


def check_workdir(path: str, job: str, step: int = -1,
                  field: str = 'checkpoint') -> Tuple[str, int, Any]:
  """A training workdir given as `config.<field>` -> (absolute path, step to
  load: `step`, or the latest when < 0, its config); one errors.InputError
  saying what is wrong with the path otherwise (missing, not a workdir,
  another job's, no finished checkpoint, no such step) and how to make one."""
  from vftok import errors  # pylint: disable=g-import-not-at-top
  from vftok.data import records  # pylint: disable=g-import-not-at-top
  make = MAKE_WORKDIR.get(job, f'run {job}')
  if not path:
    raise errors.InputError(
        f'config.{field} is not set: pass --config.{field}=DIR, the --workdir '
        f'of a {job} run (it holds {CONFIG_FILE} and {CHECKPOINT_DIR}/); '
        f'{make}')
  if not records.is_url(path):  # gs:// workdirs are read through etils.epath
    path = os.path.abspath(os.path.expanduser(path))
  if not epath.Path(path).is_dir():
    raise errors.InputError(
        f'config.{field}={path!r} does not exist or is not a directory: pass '
        f'the --workdir of a {job} run; {make}')
  if not (epath.Path(path) / CONFIG_FILE).exists():
    hint = f'; pass the --workdir of a {job} run; {make}'
    for up in (os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
      if (epath.Path(up) / CONFIG_FILE).exists():
        hint = f'; did you mean the workdir {up!r}?'
        break
    raise errors.InputError(f'config.{field}={path!r} is not a {job} '
                            f'workdir: it has no {CONFIG_FILE}{hint}')
  config = load_workdir_config(path)
  got = config.get('job')
  if got != job:
    raise errors.InputError(f'config.{field}={path!r} holds a {got!r} run, '
                            f'not a {job} run')
  steps = finished_steps(path)
  if not steps:
    raise errors.InputError(
        f'config.{field}={path!r} has no finished checkpoint in '
        f'{os.path.join(path, CHECKPOINT_DIR)} (training not started or no '
        'save yet?)')
  if step >= 0 and step not in steps:
    raise errors.InputError(f'config.{field}={path!r} has no checkpoint at '
                            f'step {step}; available steps: {steps}')
  return path, (steps[-1] if step < 0 else int(step)), config
