"""Restricted unpickling: weights pickles read without running pickled code.

Each reader admits a few globals, each (collections.OrderedDict aside) one of
our own checking functions that a pickle can call but not modify, and refuses
any other global with UnsafePickleError naming it, before anything is
imported or called:

* `safe_load_numpy_pickle`: a pickle of (nested dicts/lists of) NumPy arrays
  (the I3D weights). Admitted is exactly what NumPy's own pickling of a plain
  numeric array emits: `_reconstruct(ndarray, (0,), b'b')` + BUILD (shape,
  dtype, data) for protocols 0-4 (0-2 add `_codecs.encode(str, 'latin1')`
  and `bytes()` for the data), and in-band protocol 5's `_frombuffer(data,
  dtype, shape, order)`. An array is made only from data bytes inside the
  pickle of exactly its size, and the arrays of one file together may not
  exceed the file's size, so nothing is allocated that the file does not
  hold. `numpy.ndarray(...)` cannot be called, dtypes come only from a type
  string, and out-of-band buffers are refused.
* `load_torch_checkpoint`: a PyTorch zip checkpoint (`torch.save`, the
  default format since torch 1.6; Lightning `.ckpt` files are such zips).
  Tensors are rebuilt as NumPy copies by our `_rebuild_tensor_v2` from the
  raw storage records of the zip, bounds-checked in bytes; torch is never
  imported. No NumPy global is admitted, so the only storages are the 1-D
  arrays this reader made from the records itself, and a tensor whose storage
  is anything else is refused. A Lightning file also pickles objects we do
  not need (hyper-parameters, callback and optimizer state); with
  `opaque_unknown=True` every global outside the allow-list becomes an inert
  placeholder class (`Opaque`) that is never imported and whose construction
  only records its arguments, so such files load and the caller picks the
  plain tensors it wants (and must reject placeholders where it expects
  arrays). With `opaque_unknown=False` they are refused.

Both readers return only bool / integer / float / complex arrays (and
bfloat16 tensors): object, structured, string and datetime arrays are refused.
"""
import collections
import io
import math
import os
import pickle
import zipfile
from typing import Any, Dict, Optional

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
  """A weights pickle asked for something the restricted readers refuse."""


_NUMERIC_KINDS = 'biufc'  # bool, signed / unsigned integer, float, complex
_MAX_NDIM = 64            # NumPy 2's limit
_MAX_DEPTH = 100          # nesting of containers in a loaded tree


def _describe(obj, limit: int = 80) -> str:
  text = repr(obj)
  return text if len(text) <= limit else text[:limit] + '...'


def _exactly(obj, *types) -> bool:
  """`obj` is of one of `types` itself (so bool is no int here)."""
  return type(obj) in types


def _numeric_dtype(spec: Any) -> np.dtype:
  """The dtype of type string `spec` if it is plain numeric, else refused."""
  if not _exactly(spec, str):
    raise UnsafePickleError(f'refused dtype given as {_describe(spec)}: only '
                            'a type string such as "f4" is admitted')
  try:
    dt = np.dtype(spec)
  except (TypeError, ValueError, SyntaxError) as e:
    raise UnsafePickleError(f'refused dtype {spec!r}: {e}') from None
  if (dt.kind not in _NUMERIC_KINDS or dt.hasobject or dt.fields is not None
      or dt.subdtype is not None):
    raise UnsafePickleError(
        f'refused array of dtype {dt}: only bool, integer, float and complex '
        'arrays may be read')
  return dt


def _shape(shape: Any, what: str = 'array shape') -> tuple:
  if (not _exactly(shape, tuple, list) or len(shape) > _MAX_NDIM or
      not all(_exactly(n, int) and n >= 0 for n in shape)):
    raise UnsafePickleError(f'refused {what} {_describe(shape)}: expected '
                            'a tuple of non-negative ints')
  return tuple(shape)


class _Admitted:
  """An admitted global as the pickle sees it: calls our checking function.

  Immutable: BUILD (`__setstate__`) and attribute assignment are refused, so
  a pickle cannot alter what the next call does.
  """
  __slots__ = ('_name', '_fn')

  def __init__(self, name, fn):
    object.__setattr__(self, '_name', name)
    object.__setattr__(self, '_fn', fn)

  def __call__(self, *args):
    return self._fn(*args)

  def __setattr__(self, key, value):
    raise UnsafePickleError(f'refused setting {key} on {self._name}')

  def __setstate__(self, state):
    raise UnsafePickleError(f'refused BUILD on global {self._name}')

  def __repr__(self):
    return f'<admitted {self._name}>'


class _NoBuffers:
  """`buffers=` of our unpicklers: an out-of-band buffer is refused."""

  def __iter__(self):
    return self

  def __next__(self):
    raise UnsafePickleError(
        'refused out-of-band buffer (a protocol 5 pickle written with '
        'buffer_callback): the array data must be inside the pickle')


class _Budget:
  """Bytes that one file's arrays may take together: the file's own size."""

  def __init__(self, limit: int, what: str):
    self.limit, self.used, self.what = int(limit), 0, what

  def charge(self, nbytes: int, desc: str):
    if nbytes > self.limit - self.used:
      raise UnsafePickleError(
          f'refused {desc}: {nbytes} bytes, more than the {self.limit}-byte '
          f'file can hold ({self.used} bytes of {self.what} already made)')
    self.used += nbytes


def _file_size(file) -> int:
  try:
    return os.fstat(file.fileno()).st_size
  except (AttributeError, OSError, ValueError):  # no real file descriptor
    pass
  try:
    pos = file.tell()
    end = file.seek(0, io.SEEK_END)
    file.seek(pos)
    return end - pos
  except (AttributeError, OSError, ValueError):
    raise ValueError('cannot tell the size of this file object (not '
                     'seekable): pass max_bytes') from None


class _RestrictedUnpickler(pickle.Unpickler):
  """find_class from a fixed table; no persistent ids, no out-of-band data."""

  def __init__(self, file):
    super().__init__(file, buffers=_NoBuffers())

  def allowed_globals(self) -> Dict[tuple, Any]:
    raise NotImplementedError

  def refuse(self, module, name):
    raise UnsafePickleError(f'refused global {module}.{name}')

  def find_class(self, module, name):
    obj = self.allowed_globals().get((module, name))
    if obj is None:
      return self.refuse(module, name)
    return obj

  def persistent_load(self, pid):
    raise UnsafePickleError(f'refused persistent id {_describe(pid)}')


# -------------------------------------------------------- NumPy pickles ---

class _PendingDtype:
  """What `numpy.dtype(spec, align, copy)` gives a pickle here: the checked
  type string; BUILD may only set the byte order (NumPy's own dtype
  `__setstate__` never sees the pickle's state)."""
  __slots__ = ('_spec', '_order', '_built')

  def __init__(self, spec):
    _numeric_dtype(spec)
    self._spec, self._order, self._built = spec, '=', False

  def __setstate__(self, state):
    # NumPy writes (3, byteorder, subarray, names, fields, elsize, alignment,
    # flags) (+ metadata in version 4); plain numeric dtypes have no
    # subarray, names, fields or metadata.
    if (self._built or not _exactly(state, tuple) or len(state) not in (8, 9)
        or state[1] not in ('<', '>', '|', '=')
        or any(s is not None for s in state[2:5] + state[8:])):
      raise UnsafePickleError(f'refused dtype state {_describe(state)} for '
                              f'{self._spec!r}: only a byte order is admitted')
    self._order, self._built = state[1], True

  def get(self) -> np.dtype:
    dt = _numeric_dtype(self._spec)
    return dt.newbyteorder(self._order) if self._order in '<>' else dt


class _PendingArray:
  """What `_reconstruct(ndarray, (0,), b'b')` gives a pickle here: empty
  until BUILD brings (shape, dtype, data), checked before anything is
  allocated. Replaced by the array once the pickle is read."""
  __slots__ = ('_fill', '_array')

  def __init__(self, fill, array=None):
    self._fill, self._array = fill, array

  def __setstate__(self, state):
    if self._array is not None:
      raise UnsafePickleError('refused a second state for one array')
    self._array = self._fill(state)

  def get(self) -> np.ndarray:
    if self._array is None:
      raise UnsafePickleError('refused an array the pickle never filled '
                              '(no shape, dtype and data)')
    return self._array


def _is(obj, value) -> bool:
  return _exactly(obj, type(value)) and obj == value


class NumpyOnlyUnpickler(_RestrictedUnpickler):
  """Unpickler that can only rebuild plain numeric NumPy arrays inside
  dicts / lists / tuples (see the module docstring).

  Args:
    file: the pickle, a binary file object.
    max_bytes: how many bytes the arrays may take together; by default the
      size of `file` (the data of a real pickle's arrays are inside it).

  `load()` returns the tree with its arrays; `safe_load_numpy_pickle` wraps
  it.
  """

  def __init__(self, file, max_bytes: Optional[int] = None):
    super().__init__(file)
    limit = _file_size(file) if max_bytes is None else max_bytes
    self._arrays = _Budget(limit, 'arrays')
    self._strings = _Budget(limit, 'latin-1 strings')
    self._ndarray = _Admitted('numpy.ndarray', self._ndarray_call)
    reconstruct = _Admitted('_reconstruct', self._reconstruct)
    frombuffer = _Admitted('_frombuffer', self._frombuffer)
    dtype = _Admitted('numpy.dtype', self._dtype)
    encode = _Admitted('_codecs.encode', self._encode)
    empty = _Admitted('bytes', self._empty_bytes)
    self._globals = {
        ('numpy.core.multiarray', '_reconstruct'): reconstruct,
        ('numpy._core.multiarray', '_reconstruct'): reconstruct,
        ('numpy.core.numeric', '_frombuffer'): frombuffer,
        ('numpy._core.numeric', '_frombuffer'): frombuffer,
        ('numpy', 'ndarray'): self._ndarray,
        ('numpy', 'dtype'): dtype,
        ('_codecs', 'encode'): encode,
        ('builtins', 'bytes'): empty,
        ('__builtin__', 'bytes'): empty,
        ('collections', 'OrderedDict'): collections.OrderedDict,
    }

  def allowed_globals(self) -> Dict[tuple, Any]:
    return self._globals

  def refuse(self, module, name):
    raise UnsafePickleError(
        f'refused global {module}.{name}: this weights file may only '
        'contain NumPy arrays (allowed: numpy.core.multiarray._reconstruct, '
        'numpy._core.multiarray._reconstruct, numpy._core.numeric._frombuffer'
        ', numpy.ndarray, numpy.dtype, _codecs.encode, bytes, '
        'collections.OrderedDict)')

  # The admitted globals.

  def _ndarray_call(self, *args):
    raise UnsafePickleError(
        f'refused numpy.ndarray{_describe(args)}: arrays are only made from '
        'data inside the pickle, as NumPy pickles them')

  def _reconstruct(self, cls=None, shape=None, typecode=None, *rest):
    if (cls is not self._ndarray or rest or not _exactly(shape, tuple)
        or len(shape) != 1 or not _is(shape[0], 0)
        or not (_is(typecode, b'b') or _is(typecode, 'b'))):
      raise UnsafePickleError(
          f'refused _reconstruct{_describe((cls, shape, typecode) + rest)}: '
          'only NumPy\'s own _reconstruct(ndarray, (0,), b"b") is admitted')
    return _PendingArray(self._from_state)

  def _frombuffer(self, data=None, dtype=None, shape=None, order=None, *rest):
    if rest or order not in ('C', 'F'):
      raise UnsafePickleError(f'refused _frombuffer(..., order={order!r}'
                              f'{", ..." if rest else ""})')
    return _PendingArray(None, self._build(data, dtype, shape, order))

  def _dtype(self, spec=None, align=False, copy=False, *rest):
    del align, copy  # always a fresh dtype; alignment is moot for scalars
    if rest:
      raise UnsafePickleError(f'refused numpy.dtype{_describe(rest)}')
    return _PendingDtype(spec)

  def _encode(self, text=None, encoding=None, *rest):
    # Protocol 2 writes bytes as _codecs.encode(str, 'latin1').
    if rest or not _exactly(text, str) or encoding != 'latin1':
      raise UnsafePickleError(f'refused _codecs.encode'
                              f'{_describe((text, encoding) + rest)}')
    self._strings.charge(len(text), 'latin-1 string')
    try:
      return text.encode('latin1')
    except UnicodeEncodeError as e:
      raise UnsafePickleError(f'refused _codecs.encode: {e}') from None

  def _empty_bytes(self, *args):
    if args:  # protocol 2 writes b'' as bytes()
      raise UnsafePickleError(f'refused bytes{_describe(args)}')
    return b''

  # Arrays.

  def _from_state(self, state):
    # ndarray.__reduce__'s state: ([version,] shape, dtype, is_fortran, data).
    if (not _exactly(state, tuple) or len(state) not in (4, 5) or
        (len(state) == 5 and not _exactly(state[0], int))
        or not _exactly(state[-2], bool, int)):
      raise UnsafePickleError(
          f'refused array state {_describe(state)}: expected (version, '
          'shape, dtype, is_fortran, data)')
    shape, dtype, fortran, data = state[-4:]
    return self._build(data, dtype, shape, 'F' if fortran else 'C')

  def _build(self, data, dtype, shape, order) -> np.ndarray:
    if not isinstance(dtype, _PendingDtype):
      raise UnsafePickleError(f'refused array dtype {_describe(dtype)}: '
                              'not a numpy.dtype of this pickle')
    dt, shape = dtype.get(), _shape(shape)
    count = math.prod(shape)
    nbytes = count * dt.itemsize
    desc = f'array of shape {shape} and dtype {dt}'
    self._arrays.charge(nbytes, desc)  # before anything is allocated
    if not _exactly(data, bytes, bytearray):
      raise UnsafePickleError(f'refused {desc}: its data is a '
                              f'{type(data).__name__}, not bytes')
    if len(data) != nbytes:
      raise UnsafePickleError(f'refused {desc}: it needs {nbytes} bytes of '
                              f'data, the pickle gives {len(data)}')
    try:
      flat = np.frombuffer(data, dt, count) if count else np.empty(0, dt)
      return flat.reshape(shape, order=order).copy(order='K')
    except ValueError as e:
      raise UnsafePickleError(f'refused {desc}: {e}') from None

  def load(self):
    """The unpickled tree, every array placeholder replaced by its array
    (and dtype placeholders by their dtype)."""
    return _resolve(super().load(), {}, 0)


def _resolve(node, done, depth):
  """`node` with placeholders replaced: dicts and lists in place, tuples
  rebuilt (`done`: id -> (original, result), shared structure kept)."""
  if isinstance(node, (_PendingArray, _PendingDtype)):
    return node.get()
  if not isinstance(node, (dict, list, tuple, set, frozenset)):
    return node
  if id(node) in done:
    return done[id(node)][1]
  if depth > _MAX_DEPTH:
    raise UnsafePickleError(f'refused containers nested deeper than '
                            f'{_MAX_DEPTH} levels')
  done[id(node)] = (node, node)
  if isinstance(node, dict):
    for key in list(node):
      if _resolve(key, done, depth + 1) is not key:
        raise UnsafePickleError('refused an array or dtype as a dict key')
      node[key] = _resolve(node[key], done, depth + 1)
  elif isinstance(node, list):
    for i, value in enumerate(node):
      node[i] = _resolve(value, done, depth + 1)
  else:
    items = list(node)
    new = [_resolve(v, done, depth + 1) for v in items]
    if any(a is not b for a, b in zip(new, items)):
      if not isinstance(node, tuple):
        raise UnsafePickleError('refused an array or dtype in a set')
      done[id(node)] = (node, tuple(new))
      return done[id(node)][1]
  return node


def _check_arrays(tree, allowed=None):
  """Refuses any array in `tree` (containers and Opaque placeholders walked)
  whose dtype is not plain numeric or, if given, not in `allowed`."""
  stack, seen = [tree], set()
  while stack:
    node = stack.pop()
    if isinstance(node, (_PendingArray, _PendingDtype)):
      raise UnsafePickleError('refused an array inside a reference cycle')
    if isinstance(node, np.ndarray):
      dt = node.dtype
      ok = (dt in allowed) if allowed is not None else (
          dt.kind in _NUMERIC_KINDS and dt.fields is None and
          dt.subdtype is None and not dt.hasobject)
      if not ok:
        raise UnsafePickleError(f'refused array of dtype {dt}')
      continue
    if id(node) in seen:
      continue
    if isinstance(node, dict):
      seen.add(id(node))
      stack.extend(node.keys())
      stack.extend(node.values())
    elif isinstance(node, (list, tuple, set, frozenset)):
      seen.add(id(node))
      stack.extend(node)
    elif isinstance(node, Opaque):
      seen.add(id(node))
      stack.extend((node.args, node.state, node.items))


def safe_load_numpy_pickle(path_or_file) -> Any:
  """Loads a pickle of (nested dicts of) plain numeric NumPy arrays with
  NumpyOnlyUnpickler; anything else raises UnsafePickleError."""
  if hasattr(path_or_file, 'read'):
    f = path_or_file
    if not (hasattr(f, 'seekable') and f.seekable()):
      f = io.BytesIO(f.read())
    tree = NumpyOnlyUnpickler(f).load()
  else:
    with open(path_or_file, 'rb') as f:
      tree = NumpyOnlyUnpickler(f).load()
  _check_arrays(tree)
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


def _storage_dtype(name: str) -> np.dtype:
  dt = _STORAGE_DTYPES[name]
  return _bfloat16() if dt == 'bfloat16' else np.dtype(dt)


class _StorageType:
  """Stands for torch.<Name>Storage in a persistent id: only its name."""
  __slots__ = ('name',)

  def __init__(self, name):
    object.__setattr__(self, 'name', name)

  def __setattr__(self, key, value):
    raise UnsafePickleError(f'refused setting {key} on torch.{self.name}')

  def __setstate__(self, state):
    raise UnsafePickleError(f'refused BUILD on torch.{self.name}')

  def __repr__(self):
    return f'torch.{self.name}'


class _Storage:
  """A storage record as this reader read it: a 1-D C-contiguous array it
  owns. Pickles cannot make one (the class is no admitted global)."""
  __slots__ = ('record', 'data')

  def __init__(self, record: str, data: np.ndarray):
    self.record, self.data = record, data

  def __setstate__(self, state):
    raise UnsafePickleError(f'refused BUILD on storage {self.record}')

  def __repr__(self):
    return (f'<storage {self.record}: {self.data.size} x {self.data.dtype}>')


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


def _tensor_from_storage(storage: _Storage, storage_offset, size,
                         stride) -> np.ndarray:
  """A NumPy copy of the strided view of `storage`, bounds-checked in bytes
  first: a crafted file must not make as_strided read outside the record."""
  data = storage.data
  if data.ndim != 1 or not data.flags.c_contiguous:
    raise UnsafePickleError(f'refused tensor on {storage!r}: not a 1-D '
                            'contiguous storage')
  size = _shape(size, 'tensor size')
  stride = _shape(stride, 'tensor stride (negative strides are refused)')
  offset = storage_offset
  if (not _exactly(offset, int) or offset < 0 or
      len(size) != len(stride)):
    raise UnsafePickleError(f'refused tensor geometry size={size} '
                            f'stride={stride} offset={offset!r}')
  item = data.itemsize
  geometry = f'size {size}, stride {stride}, offset {offset}'
  try:
    if 0 in size:
      if offset * item > data.nbytes:
        raise UnsafePickleError(f'refused empty tensor ({geometry}): its '
                                f'offset is past {storage!r}')
      return np.zeros(size, data.dtype)
    stride = tuple(0 if n == 1 else s for n, s in zip(size, stride))
    end = (offset + sum((n - 1) * s for n, s in zip(size, stride))) * item
    if end + item > data.nbytes:
      raise UnsafePickleError(
          f'refused tensor ({geometry}): it reaches byte {end + item} of '
          f'{storage!r}, which holds {data.nbytes} bytes')
    view = np.lib.stride_tricks.as_strided(
        data[offset:], size, tuple(s * item for s in stride), writeable=False)
    return np.array(view)
  except (ValueError, OverflowError) as e:
    raise UnsafePickleError(f'refused tensor ({geometry}): {e}') from None


def _rebuild_parameter(data, *unused):
  return data  # nn.Parameter(tensor, requires_grad, hooks[, state])


class TorchZipUnpickler(_RestrictedUnpickler):
  """Reads `<archive>/data.pkl` of a torch zip checkpoint; tensors come from
  the `<archive>/data/<key>` records as NumPy arrays."""

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str,
               opaque_unknown: bool = True):
    super().__init__(file)
    self._zip, self._prefix = archive, prefix
    self._opaque_unknown = opaque_unknown
    self._storages = {}  # (key, storage type) -> _Storage made here
    self._made = {}      # id -> every _Storage made here (kept alive)
    self._placeholders = {}
    parameter = _Admitted('torch._utils._rebuild_parameter',
                          _rebuild_parameter)
    self._globals = {
        ('torch._utils', '_rebuild_tensor_v2'): _Admitted(
            'torch._utils._rebuild_tensor_v2', self._rebuild_tensor),
        ('torch._utils', '_rebuild_parameter'): parameter,
        ('torch._utils', '_rebuild_parameter_with_state'): parameter,
        ('collections', 'OrderedDict'): collections.OrderedDict,
    }
    for name in _STORAGE_DTYPES:
      self._globals[('torch', name)] = _StorageType(name)

  def allowed_globals(self) -> Dict[tuple, Any]:
    return self._globals

  def refuse(self, module, name):
    if not self._opaque_unknown:
      raise UnsafePickleError(
          f'refused global {module}.{name}: only tensors and plain '
          'containers may be read from this checkpoint')
    key = f'{module}.{name}'
    if key not in self._placeholders:
      self._placeholders[key] = type(f'Opaque[{key}]', (Opaque,),
                                     {'qualname': key})
    return self._placeholders[key]

  def _rebuild_tensor(self, storage=None, storage_offset=0, size=(),
                      stride=(), *unused):
    """torch._utils._rebuild_tensor_v2 -> a NumPy copy of the strided view."""
    if id(storage) not in self._made or self._made[id(storage)] is not storage:
      raise UnsafePickleError(
          f'refused tensor on {_describe(storage)}: its storage must be a '
          'record of this checkpoint (a persistent id)')
    return _tensor_from_storage(storage, storage_offset, size, stride)

  def persistent_load(self, pid):
    if (not _exactly(pid, tuple) or len(pid) != 5 or pid[0] != 'storage'
        or not _exactly(pid[1], _StorageType) or not _exactly(pid[2], str)
        or not _exactly(pid[4], int) or pid[4] < 0):
      raise UnsafePickleError(f'refused persistent id {_describe(pid)}')
    _, stype, key, _, numel = pid
    if (key, stype.name) not in self._storages:
      record = f'{self._prefix}data/{key}'
      try:
        raw = self._zip.read(record)
      except KeyError:
        raise UnsafePickleError(f'missing storage record {record}') from None
      dtype = _storage_dtype(stype.name)
      if len(raw) % dtype.itemsize:
        raise UnsafePickleError(f'storage record {record}: {len(raw)} bytes '
                                f'is not a whole number of {dtype}')
      data = np.frombuffer(raw, dtype)
      if data.size < numel:
        raise UnsafePickleError(f'storage record {record} holds {data.size} '
                                f'x {dtype}, the pickle expects {numel}')
      storage = _Storage(record, data)
      self._storages[(key, stype.name)] = storage
      self._made[id(storage)] = storage
    return self._storages[(key, stype.name)]


def _torch_dtypes():
  return {_storage_dtype(name) for name in _STORAGE_DTYPES}


def load_torch_checkpoint(path: str, opaque_unknown: bool = True) -> Any:
  """The object `torch.save` wrote to `path`, with every tensor as a NumPy
  array (bfloat16 via ml_dtypes) and, if `opaque_unknown`, other objects as
  `Opaque` placeholders. Raises ValueError for a file that is not a complete
  torch zip checkpoint (legacy pre-1.6 pickles are not read), and
  UnsafePickleError for one that asks for anything else."""
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
        tree = TorchZipUnpickler(f, archive, prefix, opaque_unknown).load()
    except (zipfile.BadZipFile, EOFError, OSError) as e:
      raise ValueError(f'{path}: truncated or corrupt torch checkpoint '
                       f'({e})') from None
  _check_arrays(tree, _torch_dtypes())
  return tree
