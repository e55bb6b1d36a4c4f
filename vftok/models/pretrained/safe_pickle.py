"""Restricted unpickling: weights pickles read without running pickled code.

Two readers share one allow-list mechanism:

* `safe_load_numpy_pickle`: a pickle of (nested dicts/lists of) NumPy arrays
  (the I3D weights). Any global outside NumPy's array reconstruction raises
  UnsafePickleError naming it, before anything is imported or called.
* `load_torch_checkpoint`: a PyTorch zip checkpoint (`torch.save`, the
  default format since torch 1.6; Lightning `.ckpt` files are such zips).
  Tensors are rebuilt as NumPy arrays by our own functions from the raw
  storage records of the zip; torch is never imported. A Lightning file also
  pickles objects we do not need (hyper-parameters, callback and optimizer
  state); with `opaque_unknown=True` every global outside the allow-list
  becomes an inert placeholder class (`Opaque`) that is never imported and
  whose construction only records its arguments, so such files load and the
  caller picks the plain tensors it wants (and must reject placeholders where
  it expects arrays). With `opaque_unknown=False` they are refused like the
  NumPy reader does.
"""
import collections
import pickle
import zipfile
from typing import Any, Dict

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
  """A weights pickle referenced a global outside the allow-list."""


def _numpy_reconstruct():
  try:  # NumPy >= 2; avoids the deprecated numpy.core alias.
    from numpy._core import multiarray  # pylint: disable=g-import-not-at-top
  except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core import multiarray  # pylint: disable=g-import-not-at-top
  return multiarray._reconstruct  # pylint: disable=protected-access


def _numpy_globals() -> Dict[tuple, Any]:
  rec = _numpy_reconstruct()
  return {
      ('numpy.core.multiarray', '_reconstruct'): rec,
      ('numpy._core.multiarray', '_reconstruct'): rec,
      ('numpy', 'ndarray'): np.ndarray,
      ('numpy', 'dtype'): np.dtype,
      ('collections', 'OrderedDict'): collections.OrderedDict,
  }


class NumpyOnlyUnpickler(pickle.Unpickler):
  """Unpickler that can only rebuild NumPy arrays inside dicts/lists/tuples.

  Any global other than NumPy's array reconstruction (`_reconstruct`,
  `ndarray`, `dtype`) or `collections.OrderedDict` raises UnsafePickleError
  naming it, before anything is imported or called.
  """

  def allowed_globals(self) -> Dict[tuple, Any]:
    return _numpy_globals()

  def refuse(self, module, name):
    raise UnsafePickleError(
        f'refused global {module}.{name}: this weights file may only '
        'contain NumPy arrays (allowed: numpy.core.multiarray._reconstruct, '
        'numpy._core.multiarray._reconstruct, numpy.ndarray, numpy.dtype, '
        'collections.OrderedDict)')

  def find_class(self, module, name):
    obj = self.allowed_globals().get((module, name))
    if obj is None:
      return self.refuse(module, name)
    return obj

  def persistent_load(self, pid):
    raise UnsafePickleError(f'refused persistent id {pid!r}')


def _check_no_objects(tree):
  stack = [tree]
  while stack:
    node = stack.pop()
    if isinstance(node, dict):
      stack.extend(node.values())
    elif isinstance(node, (list, tuple)):
      stack.extend(node)
    elif isinstance(node, np.ndarray) and node.dtype.kind not in 'biuf':
      raise UnsafePickleError(f'refused array of dtype {node.dtype}')


def safe_load_numpy_pickle(path_or_file) -> Any:
  """Loads a pickle of (nested dicts of) NumPy arrays with NumpyOnlyUnpickler;
  arrays of object dtype are refused too."""
  if hasattr(path_or_file, 'read'):
    tree = NumpyOnlyUnpickler(path_or_file).load()
  else:
    with open(path_or_file, 'rb') as f:
      tree = NumpyOnlyUnpickler(f).load()
  _check_no_objects(tree)
  return tree


# ------------------------------------------------------- torch checkpoints ---

def _bfloat16():
  import ml_dtypes  # pylint: disable=g-import-not-at-top  (a JAX dependency)
  return np.dtype(ml_dtypes.bfloat16)


# torch.<Name>Storage -> element dtype (what `torch.save` names per tensor).
_STORAGE_DTYPES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64,
    'HalfStorage': np.float16, 'BFloat16Storage': 'bfloat16',
    'LongStorage': np.int64, 'IntStorage': np.int32, 'ShortStorage': np.int16,
    'CharStorage': np.int8, 'ByteStorage': np.uint8, 'BoolStorage': np.bool_,
    'UntypedStorage': np.uint8,
}


class _StorageType:
  """Stands for torch.<Name>Storage in a persistent id: only its dtype."""

  def __init__(self, name):
    self.name = name
    dt = _STORAGE_DTYPES[name]
    self.dtype = _bfloat16() if dt == 'bfloat16' else np.dtype(dt)


class Opaque:
  """Inert stand-in for a pickled object of a class we do not admit.

  Never imports or calls the real class: construction and unpickling hooks
  only record what they were given (`qualname`, `args`, `state`, `items`).
  """
  qualname = '?'

  def __new__(cls, *args, **kwargs):
    del kwargs
    obj = object.__new__(cls)
    obj.args, obj.state, obj.items = args, None, []
    return obj

  def __init__(self, *args, **kwargs):
    pass

  def __setstate__(self, state):
    self.state = state

  def __setitem__(self, key, value):
    self.items.append((key, value))

  def append(self, value):
    self.items.append(value)

  def extend(self, values):
    self.items.extend(values)

  def __repr__(self):
    return f'<opaque {self.qualname}>'


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  """torch._utils._rebuild_tensor_v2 -> a NumPy copy of the strided view.

  The view is bounds-checked against the storage first: a crafted file must
  not make as_strided read memory outside the record.
  """
  if not isinstance(storage, np.ndarray):
    raise UnsafePickleError(f'tensor without a storage record: {storage!r}')
  size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
  offset = int(storage_offset)
  if len(size) != len(stride) or min(size + stride + (offset,),
                                     default=0) < 0:
    raise UnsafePickleError(f'bad tensor geometry size={size} '
                            f'stride={stride} offset={offset}')
  if 0 not in size:
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
      raise UnsafePickleError(
          f'tensor of size {size} (stride {stride}, offset {offset}) '
          f'reaches past its storage of {storage.size} elements')
  elif offset > storage.size:
    raise UnsafePickleError(f'tensor offset {offset} past its storage')
  item = storage.itemsize
  view = np.lib.stride_tricks.as_strided(
      storage[offset:] if storage.size else storage, size,
      tuple(s * item for s in stride), writeable=False)
  return np.array(view)


def _rebuild_parameter(data, *unused):
  return data  # nn.Parameter(tensor, requires_grad, hooks[, state])


def _torch_globals() -> Dict[tuple, Any]:
  out = dict(_numpy_globals())
  out[('torch._utils', '_rebuild_tensor_v2')] = _rebuild_tensor
  out[('torch._utils', '_rebuild_parameter')] = _rebuild_parameter
  out[('torch._utils', '_rebuild_parameter_with_state')] = _rebuild_parameter
  for name in _STORAGE_DTYPES:
    out[('torch', name)] = name  # resolved to _StorageType lazily
  return out


class TorchZipUnpickler(NumpyOnlyUnpickler):
  """Reads `<archive>/data.pkl` of a torch zip checkpoint; tensors come from
  the `<archive>/data/<key>` records as NumPy arrays."""

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str,
               opaque_unknown: bool = True):
    super().__init__(file)
    self._zip, self._prefix = archive, prefix
    self._opaque_unknown = opaque_unknown
    self._storages = {}
    self._placeholders = {}

  def allowed_globals(self):
    return _torch_globals()

  def find_class(self, module, name):
    obj = self.allowed_globals().get((module, name))
    if isinstance(obj, str):
      return _StorageType(obj)
    if obj is not None:
      return obj
    if not self._opaque_unknown:
      raise UnsafePickleError(
          f'refused global {module}.{name}: only tensors, NumPy arrays and '
          'plain containers may be read from this checkpoint')
    key = f'{module}.{name}'
    if key not in self._placeholders:
      self._placeholders[key] = type(f'Opaque[{key}]', (Opaque,),
                                     {'qualname': key})
    return self._placeholders[key]

  def persistent_load(self, pid):
    if (not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != 'storage'
        or not isinstance(pid[1], _StorageType)):
      raise UnsafePickleError(f'refused persistent id {pid!r}')
    _, stype, key, _, numel = pid
    key = str(key)
    if key not in self._storages:
      record = f'{self._prefix}data/{key}'
      try:
        raw = self._zip.read(record)
      except KeyError:
        raise UnsafePickleError(f'missing storage record {record}') from None
      dtype = stype.dtype
      if len(raw) % dtype.itemsize:
        raise UnsafePickleError(f'storage record {record}: {len(raw)} bytes '
                                f'is not a whole number of {dtype}')
      arr = np.frombuffer(raw, dtype)
      if arr.size < int(numel):
        raise UnsafePickleError(f'storage record {record} holds {arr.size} '
                                f'elements, the pickle expects {numel}')
      self._storages[key] = arr
    return self._storages[key]


def load_torch_checkpoint(path: str, opaque_unknown: bool = True) -> Any:
  """The object `torch.save` wrote to `path`, with every tensor as a NumPy
  array (bfloat16 via ml_dtypes) and, if `opaque_unknown`, other objects as
  `Opaque` placeholders. Raises ValueError for a file that is not a complete
  torch zip checkpoint (legacy pre-1.6 pickles are not read)."""
  try:
    archive = zipfile.ZipFile(path)
  except zipfile.BadZipFile as e:
    raise ValueError(
        f'{path}: not a readable PyTorch zip checkpoint ({e}); truncated, or '
        'an old-style (torch < 1.6) pickle: re-save it with a current '
        'torch.save') from None
  with archive:
    pkls = [n for n in archive.namelist() if n.endswith('/data.pkl') or
            n == 'data.pkl']
    if len(pkls) != 1:
      raise ValueError(f'{path}: expected one data.pkl record in the torch '
                       f'zip, found {pkls}')
    prefix = pkls[0][:-len('data.pkl')]
    order = f'{prefix}byteorder'
    if order in archive.namelist():
      if archive.read(order).strip() not in (b'little', b''):
        raise ValueError(f'{path}: big-endian tensors are not supported')
    try:
      with archive.open(pkls[0]) as f:
        return TorchZipUnpickler(f, archive, prefix, opaque_unknown).load()
    except (zipfile.BadZipFile, EOFError, OSError) as e:
      raise ValueError(f'{path}: truncated or corrupt torch checkpoint '
                       f'({e})') from None
