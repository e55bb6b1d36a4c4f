"""The restricted unpicklers (vftok/models/pretrained/safe_pickle.py).

Crafted files for each way in: torch zip checkpoints whose data.pkl builds
its own storage, strides backwards or reaches past its record; NumPy pickles
that ask for huge or object arrays or reuse one buffer for many arrays; and
legitimate torch.save / pickle.dumps files, which must load unchanged.
"""
import collections
import io
import pickle
import time
import zipfile

import numpy as np
import pytest

from vftok.models.pretrained import safe_pickle
from vftok.models.pretrained.safe_pickle import UnsafePickleError

Storage = safe_pickle._Storage  # pylint: disable=protected-access
tensor_from_storage = safe_pickle._tensor_from_storage  # pylint: disable=protected-access

# ------------------------------------------------- pickle opcodes by hand ---


def _int(n):
  if -2**31 <= n < 2**31:
    return b'J' + n.to_bytes(4, 'little', signed=True)
  raw = n.to_bytes((n.bit_length() + 8) // 8, 'little', signed=True)
  return b'\x8a' + bytes([len(raw)]) + raw  # LONG1


def _str(text):
  raw = text.encode()
  return b'X' + len(raw).to_bytes(4, 'little') + raw


def _bytes(raw):
  return b'B' + len(raw).to_bytes(4, 'little') + raw  # protocol 3


def _global(module, name):
  return b'c' + module.encode() + b'\n' + name.encode() + b'\n'


def _tuple(*items):
  return b'(' + b''.join(items) + b't'


def _call(fn, *args):
  return fn + _tuple(*args) + b'R'


def _dict(**items):
  return b'}(' + b''.join(_str(k) + v for k, v in items.items()) + b'u'


def _pickle(body, protocol=3):
  return b'\x80' + bytes([protocol]) + body + b'.'


FALSE, TRUE, NONE = b'\x89', b'\x88', b'N'
RECONSTRUCT = _global('numpy.core.multiarray', '_reconstruct')
NDARRAY = _global('numpy', 'ndarray')


def _dtype(code, order='<'):
  state = _tuple(_int(3), _str(order), NONE, NONE, NONE, _int(-1), _int(-1),
                 _int(0))
  new = _call(_global('numpy', 'dtype'), _str(code), FALSE, TRUE)
  return new + state + b'b'


def _array(shape, code, data_ops, fortran=False):
  """NumPy's own pickling of an array: _reconstruct + BUILD(state)."""
  empty = _call(RECONSTRUCT, NDARRAY, _tuple(_int(0)), b'C\x01b')
  state = _tuple(_int(1), _tuple(*map(_int, shape)), _dtype(code),
                 TRUE if fortran else FALSE, data_ops)
  return empty + state + b'b'


def _np_load(payload, **kwargs):
  if kwargs:
    return safe_pickle.NumpyOnlyUnpickler(io.BytesIO(payload),
                                          **kwargs).load()
  return safe_pickle.safe_load_numpy_pickle(io.BytesIO(payload))


# ------------------------------------------------- torch zips by hand ---


def _pid(storage_type, key, numel):
  return _tuple(_str('storage'), _global('torch', storage_type), _str(key),
                _str('cpu'), _int(numel)) + b'Q'


def _tensor(storage_ops, offset, size, stride):
  return _call(_global('torch._utils', '_rebuild_tensor_v2'), storage_ops,
               _int(offset), _tuple(*map(_int, size)),
               _tuple(*map(_int, stride)), FALSE,
               _call(_global('collections', 'OrderedDict')))


def _torch_zip(tmp_path, body, records, name='crafted.ckpt'):
  path = tmp_path / name
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('archive/data.pkl', _pickle(body, protocol=2))
    z.writestr('archive/byteorder', 'little')
    for key, raw in records.items():
      z.writestr(f'archive/data/{key}', raw)
  return str(path)


FOUR_FLOATS = {'0': np.arange(4, dtype=np.float32).tobytes()}  # 16 bytes


def test_crafted_torch_zip_with_valid_geometry_loads(tmp_path):
  # The hand-made files below differ from this one only where they attack.
  body = _dict(w=_tensor(_pid('FloatStorage', '0', 4), 1, (3,), (1,)),
               m=_tensor(_pid('FloatStorage', '0', 4), 0, (2, 2), (1, 2)))
  got = safe_pickle.load_torch_checkpoint(_torch_zip(tmp_path, body,
                                                     FOUR_FLOATS))
  np.testing.assert_array_equal(got['w'], [1, 2, 3])
  np.testing.assert_array_equal(got['m'], [[0, 2], [1, 3]])


# (a) A storage the pickle builds itself from NumPy globals.

def test_torch_storage_built_by_the_pickle_is_refused(tmp_path):
  forged = {
      # numpy.ndarray(shape, dtype) called directly.
      'ndarray': _call(NDARRAY, _tuple(_int(4)), _str('f4')),
      # NumPy's own pickling of an array (the old reader admitted it).
      'reconstruct': pickle.dumps(np.arange(4, dtype=np.float32), 2)[2:-1],
      # A 2-D "storage": an offset that skips rows read past its elements.
      'two_d': pickle.dumps(np.zeros((2, 2), np.float32), 2)[2:-1],
  }
  for what, storage in forged.items():
    body = _dict(w=_tensor(storage, 0, (2,), (1,)))
    path = _torch_zip(tmp_path, body, FOUR_FLOATS, f'{what}.ckpt')
    # NumPy globals become inert placeholders, never a storage...
    with pytest.raises(UnsafePickleError, match='must be a record of this '
                       'checkpoint'):
      safe_pickle.load_torch_checkpoint(path)
    # ... or are refused outright.
    with pytest.raises(UnsafePickleError, match='refused global numpy'):
      safe_pickle.load_torch_checkpoint(path, opaque_unknown=False)


# (b) Negative strides.

def test_torch_negative_stride_is_refused(tmp_path):
  body = _dict(w=_tensor(_pid('FloatStorage', '0', 4), 3, (4,), (-1,)))
  with pytest.raises(UnsafePickleError, match='negative strides'):
    safe_pickle.load_torch_checkpoint(_torch_zip(tmp_path, body, FOUR_FLOATS))


# (c) Tensors reaching past their storage, counted in bytes.

@pytest.mark.parametrize('storage_type,numel,offset,size,stride,error', [
    ('FloatStorage', 4, 0, (5,), (1,), 'reaches byte 20 of'),
    ('FloatStorage', 4, 4, (1,), (1,), 'reaches byte 20 of'),
    ('FloatStorage', 4, 0, (2, 2), (3, 1), 'reaches byte 20 of'),
    # 2 doubles in the 16-byte record, read as 4.
    ('DoubleStorage', 2, 0, (4,), (1,), 'reaches byte 32 of'),
    ('DoubleStorage', 4, 0, (2,), (1,), r'holds 2 x float64, the pickle '
     'expects 4'),
    ('FloatStorage', 4, 5, (0,), (1,), 'offset is past'),
    ('FloatStorage', 4, 0, (2, 10**30), (1, 1), 'reaches byte'),
    ('FloatStorage', 4, 0, (0, 10**30), (1, 1), r'refused tensor \(size'),
])
def test_torch_tensor_past_its_storage_is_refused(tmp_path, storage_type,
                                                  numel, offset, size, stride,
                                                  error):
  body = _dict(w=_tensor(_pid(storage_type, '0', numel), offset, size,
                         stride))
  with pytest.raises(UnsafePickleError, match=error):
    safe_pickle.load_torch_checkpoint(_torch_zip(tmp_path, body, FOUR_FLOATS))


def test_torch_record_of_partial_elements_or_missing_is_refused(tmp_path):
  body = _dict(w=_tensor(_pid('FloatStorage', '0', 1), 0, (1,), (1,)))
  with pytest.raises(UnsafePickleError, match='not a whole number'):
    safe_pickle.load_torch_checkpoint(
        _torch_zip(tmp_path, body, {'0': b'\0' * 6}, 'six.ckpt'))
  with pytest.raises(UnsafePickleError, match='missing storage record'):
    safe_pickle.load_torch_checkpoint(_torch_zip(tmp_path, body, {}))


# (d) Only the storages the reader made count; geometry is checked in bytes.

def test_unregistered_storage_is_refused():
  with zipfile.ZipFile(io.BytesIO(), 'w') as archive:
    reader = safe_pickle.TorchZipUnpickler(io.BytesIO(), archive, '')
  rebuild = reader.allowed_globals()[('torch._utils', '_rebuild_tensor_v2')]
  forged = Storage('forged', np.arange(6, dtype=np.float32))
  for storage in (np.arange(6, dtype=np.float32), forged, None):
    with pytest.raises(UnsafePickleError, match='must be a record'):
      rebuild(storage, 0, (2,), (1,))
  # Even one of ours must be 1-D and contiguous.
  for data in (np.zeros((2, 3), np.float32), np.arange(6.)[::2]):
    with pytest.raises(UnsafePickleError, match='not a 1-D contiguous'):
      tensor_from_storage(Storage('r', data), 0, (1,), (1,))


def test_tensor_geometry_is_bounds_checked():
  # (Was test_vidtok.py's.) A crafted checkpoint must not make the NumPy
  # view read past its storage.
  storage = Storage('r', np.arange(6, dtype=np.float32))
  view = tensor_from_storage(storage, 1, (2, 2), (2, 1))
  np.testing.assert_array_equal(view, [[1, 2], [3, 4]])
  assert view.flags.writeable and view.base is None  # a copy
  np.testing.assert_array_equal(  # the last element exactly
      tensor_from_storage(storage, 5, (1,), (99,)), [5])
  for offset, size, stride in ((0, (7,), (1,)), (5, (2,), (1,)),
                               (0, (2, 2), (5, 1)), (0, (2,), (-1,)),
                               (-1, (1,), (1,)), (0, (2,), (1, 1))):
    with pytest.raises(UnsafePickleError):
      tensor_from_storage(storage, offset, size, stride)


def test_admitted_globals_cannot_be_modified_by_build(tmp_path):
  # BUILD on a global would change what its next call does.
  build = _dict() + b'b'
  for module, name in (('torch', 'FloatStorage'),
                       ('torch._utils', '_rebuild_tensor_v2')):
    body = _tuple(_global(module, name) + build)
    with pytest.raises(UnsafePickleError, match=f'refused BUILD on .*{name}'):
      safe_pickle.load_torch_checkpoint(
          _torch_zip(tmp_path, body, {}, f'{name}.ckpt'))
  for module, name in (('numpy', 'dtype'), ('numpy', 'ndarray'),
                       ('numpy.core.multiarray', '_reconstruct')):
    with pytest.raises(UnsafePickleError, match=f'refused BUILD on .*{name}'):
      _np_load(_pickle(_global(module, name) + build))


# (e) NumPy pickles asking for more than they hold.

def test_numpy_huge_array_is_refused_without_allocating():
  huge = (10**12,)
  attempts = {
      'reconstruct': _array(huge, 'f4', _bytes(b'')),
      'reconstruct_2d': _array((10**6, 10**6), 'f8', _bytes(b'\0' * 8)),
      'frombuffer': _call(_global('numpy._core.numeric', '_frombuffer'),
                          _bytes(b''), _dtype('f4'), _tuple(_int(huge[0])),
                          _str('C')),
  }
  for what, body in attempts.items():
    start = time.perf_counter()
    with pytest.raises(UnsafePickleError, match='more than the .*-byte file'):
      _np_load(_pickle(body))
    assert time.perf_counter() - start < 1, what
  with pytest.raises(UnsafePickleError, match=r'refused numpy.ndarray\('):
    _np_load(_pickle(_call(NDARRAY, _tuple(_int(huge[0])), _str('f4'))))


def test_numpy_shape_without_matching_data_is_refused():
  for data, error in ((_bytes(b'\0' * 4), 'needs 8 bytes of data, the '
                       'pickle gives 4'),
                      (_str('abcdefgh'), 'its data is a str'),
                      (b'](' + _int(1) + _int(2) + b'e', 'data is a list')):
    with pytest.raises(UnsafePickleError, match=error):
      _np_load(_pickle(_array((2,), 'f4', data)))
  # An array the pickle never fills.
  with pytest.raises(UnsafePickleError, match='never filled'):
    _np_load(_pickle(_call(RECONSTRUCT, NDARRAY, _tuple(_int(0)),
                           b'C\x01b')))
  # _reconstruct other than NumPy's own call.
  for args in ((NDARRAY, _tuple(_int(5)), b'C\x01b'),
               (_global('collections', 'OrderedDict'), _tuple(_int(0)),
                b'C\x01b')):
    with pytest.raises(UnsafePickleError, match='refused _reconstruct'):
      _np_load(_pickle(_call(RECONSTRUCT, *args)))


def test_numpy_one_buffer_for_many_arrays_is_refused():
  # One 4000-byte buffer (memoized) behind 3 arrays: 12000 bytes of arrays
  # from a ~4100-byte file.
  data = _bytes(b'\0' * 4000) + b'q\x00'  # BINPUT 0
  arrays = [_array((1000,), 'f4', data)] + [
      _array((1000,), 'f4', b'h\x00') for _ in range(2)]  # BINGET 0
  payload = _pickle(b']' + b'(' + b''.join(arrays) + b'e')
  with pytest.raises(UnsafePickleError, match='already made'):
    _np_load(payload)
  # Within a caller's limit it loads.
  got = _np_load(payload, max_bytes=12000)
  assert [a.shape for a in got] == [(1000,)] * 3


# (f) Object (and other non-numeric) arrays, in both readers.

@pytest.mark.parametrize('protocol', [2, 4, 5])
def test_numpy_object_arrays_are_refused(protocol):
  for array in (np.array([1, 'a'], dtype=object),
                np.zeros(2, dtype=[('a', 'O'), ('b', 'f4')]),
                np.zeros(2, dtype=[('a', 'f4'), ('b', 'i2')]),
                np.array(['ab']), np.array(['2020-01-01'], 'datetime64[D]')):
    with pytest.raises(UnsafePickleError, match=r'refused .*dtype'):
      _np_load(pickle.dumps({'w': array}, protocol))


def test_numpy_dtype_state_may_only_set_the_byte_order():
  fields = _dict(a=_tuple(_dtype('O'), _int(0)))
  state = _tuple(_int(3), _str('|'), NONE, _tuple(_str('a')), fields,
                 _int(8), _int(1), _int(63))
  forged = _call(_global('numpy', 'dtype'), _str('f8'), FALSE, TRUE)
  with pytest.raises(UnsafePickleError, match='refused array of dtype object'):
    _np_load(_pickle(forged + state + b'b'))
  plain = _tuple(_int(3), _str('|'), NONE, _tuple(_str('a')), _dict(),
                 _int(8), _int(1), _int(0))
  with pytest.raises(UnsafePickleError, match='only a byte order'):
    _np_load(_pickle(forged + plain + b'b'))


def test_torch_reader_refuses_object_arrays(tmp_path, monkeypatch):
  # A pickled object array (NumPy's globals) never becomes an array there.
  obj = pickle.dumps(np.array([1, 'a'], dtype=object), 2)[2:-1]
  path = _torch_zip(tmp_path, _dict(w=obj), {})
  got = safe_pickle.load_torch_checkpoint(path)
  assert isinstance(got['w'], safe_pickle.Opaque)
  with pytest.raises(UnsafePickleError, match='refused global numpy'):
    safe_pickle.load_torch_checkpoint(path, opaque_unknown=False)
  # And load_torch_checkpoint walks its result (placeholders' arguments
  # too) for arrays of any dtype a storage cannot have.
  body = _dict(h=_call(_global('lightning', 'Hparams'),
                       _tensor(_pid('FloatStorage', '0', 4), 0, (2,), (1,))))
  path = _torch_zip(tmp_path, body, FOUR_FLOATS, 'nested.ckpt')
  assert safe_pickle.load_torch_checkpoint(path)['h'].args[0].shape == (2,)
  monkeypatch.setattr(safe_pickle, '_tensor_from_storage',
                      lambda *a: np.array([None, 'x'], dtype=object))
  with pytest.raises(UnsafePickleError, match='dtype object'):
    safe_pickle.load_torch_checkpoint(path)


# (g) A legitimate torch.save file.

def test_torch_save_loads_identically(tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
  linear = torch.nn.Linear(3, 2)
  tensors = {
      'base': base,
      'view': base.t()[1:, ::2],      # strided, same storage as base
      'shared': base[2],              # shared storage, with an offset
      'expanded': torch.arange(3.).expand(2, 3),  # stride 0
      'bf16': torch.linspace(-3, 3, 7).to(torch.bfloat16),
      'half': torch.tensor([0.5, -2.0], dtype=torch.float16),
      'long': torch.tensor([-(2**40), 7]), 'bool': torch.tensor([True, False]),
      'empty': torch.zeros(0, 5), 'scalar': torch.tensor(3.5),
      'param': torch.nn.Parameter(torch.ones(2, 2)),
  }
  path = str(tmp_path / 'legit.ckpt')
  torch.save({'state_dict': {**tensors, **linear.state_dict()},
              'epoch': 3, 'hyper_parameters': {'lr': np.float64(0.1),
                                               'grid': np.arange(3)}}, path)
  got = safe_pickle.load_torch_checkpoint(path)
  assert got['epoch'] == 3
  sd = got['state_dict']
  assert isinstance(sd, dict)
  for name, t in {**tensors, **linear.state_dict()}.items():
    want = t.detach()
    if want.dtype == torch.bfloat16:
      assert str(sd[name].dtype) == 'bfloat16'
      want, value = want.float().numpy(), sd[name].astype(np.float32)
    else:
      want, value = want.numpy(), sd[name]
      assert value.dtype == want.dtype, name
    assert type(value) is np.ndarray and value.shape == want.shape, name
    np.testing.assert_array_equal(value, want, err_msg=name)
  # NumPy objects outside the tensors became inert placeholders.
  assert isinstance(got['hyper_parameters']['grid'], safe_pickle.Opaque)


# (h) Legitimate NumPy pickles.

@pytest.mark.parametrize('protocol', [2, 3, 4, 5])
def test_numpy_pickle_loads_identically(protocol):
  tree = collections.OrderedDict(
      kernel=np.arange(6, dtype=np.float32).reshape(2, 3),
      fortran=np.asfortranarray(np.arange(6.).reshape(2, 3)),
      strided=np.arange(12, dtype=np.int16)[::3],
      empty=np.zeros((0, 4), np.uint8), flags=np.array([True, False]),
      complex=np.array([1 + 2j], np.complex64),
      big_endian=np.array([1, 258], '>i4'), scalar_shape=np.array(2.5))
  tree['nested'] = {'list': [np.ones(3)], 'tuple': (np.zeros(2),)}
  got = _np_load(pickle.dumps(tree, protocol))
  assert isinstance(got, collections.OrderedDict)
  flat = dict(tree, list=tree['nested']['list'][0],
              tuple=tree['nested']['tuple'][0])
  flat.pop('nested')
  for name, want in flat.items():
    value = (got['nested']['list'][0] if name == 'list' else
             got['nested']['tuple'][0] if name == 'tuple' else got[name])
    assert type(value) is np.ndarray and value.flags.writeable, name
    assert value.dtype == want.dtype and value.shape == want.shape, name
    np.testing.assert_array_equal(value, want, err_msg=name)
  assert got['fortran'].flags.f_contiguous
  # One array referenced twice stays one array.
  shared = np.ones(2)
  again = _np_load(pickle.dumps([shared, shared], protocol))
  assert again[0] is again[1]


def test_numpy_protocol5_out_of_band_is_refused():
  buffers = []
  payload = pickle.dumps({'w': np.ones(4)}, 5, buffer_callback=buffers.append)
  assert buffers
  with pytest.raises(UnsafePickleError, match='out-of-band buffer'):
    _np_load(payload)


def test_numpy_reader_reads_files_and_streams(tmp_path):
  tree = {'w': np.arange(5, dtype=np.float32)}
  path = tmp_path / 'weights.pkl'
  path.write_bytes(pickle.dumps(tree, 4))
  np.testing.assert_array_equal(
      safe_pickle.safe_load_numpy_pickle(str(path))['w'], tree['w'])

  class Stream(io.RawIOBase):  # not seekable: read into memory first
    def __init__(self, data):
      self._data = io.BytesIO(data)

    def readable(self):
      return True

    def readinto(self, b):
      return self._data.readinto(b)

  got = safe_pickle.safe_load_numpy_pickle(
      io.BufferedReader(Stream(pickle.dumps(tree, 4))))
  np.testing.assert_array_equal(got['w'], tree['w'])


def test_numpy_arrays_only_in_plain_containers():
  one = _array((1,), 'f4', _bytes(b'\0' * 4))
  for body, error in ((b'}' + one + _int(1) + b's', 'as a dict key'),
                      (b'\x8f(' + one + b'\x90', 'in a set'),  # protocol 4
                      (b']' * 200 + one + b'a' * 200, 'nested deeper')):
    with pytest.raises(UnsafePickleError, match=error):
      _np_load(_pickle(body, protocol=4))
