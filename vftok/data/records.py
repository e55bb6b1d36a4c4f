"""The record schema: one ArrayRecord record = one clip.

A record holds a clip already encoded by a 3D causal VAE (VidTok
kl_causal_488_16chn contract: F = 4n + 1 RGB frames of H x W pixels become
T = (F - 1) / 4 + 1 latent frames of H/8 x W/8 x C, C = 16):

  latents        float16 | float32 [T, h, w, C]   finite; a clip longer
                                                  than 17 frames: its
                                                  17-frame chunks' latents
                                                  one after the other
                                                  (data/chunks.py; manifest
                                                  `chunks`)
  label          int                              class id, -1 if none
  caption        str                              '' if none
  source         str                              '<video id>:<start frame>'
  frames         uint8 [F, H, W, 3] (optional)    RGB pixels of the clip
                                                  (evaluation, REPA teachers)
  repa_features  float16 | float32 [T, h', w', D] (optional)

A token record (written by jobs/tokenize_dataset.py, read by the AR trainer)
holds the same scalars and, instead of latents, the tokenizer's ids:

  tokens         uint16 [T, K]                    FSQ ids, K tokens per frame
  text_emb       float16 | float32 [L, D] (optional)  the caption's text-encoder
                                                  outputs (precomputed T5 etc.)
  text_mask      uint8 [L] (optional, with text_emb)  1 = a real caption token

Byte layout (no pickle, readable without this code):

  b'VFTK1' | uint32 little-endian header length | JSON header | array bytes

The JSON header holds the scalar fields and, per array field,
{"dtype": "<f2", "shape": [...], "offset": o, "nbytes": n} into the
little-endian C-order array bytes that follow it.

A directory of records carries `manifest.json` (`write_manifest`): counts,
shapes, dtypes, the codec name, source fps, and the per-channel latent mean
and std that the input pipeline normalises with.
"""
import contextlib
import glob
import json
import os
import shutil
import struct
import tempfile
from typing import Any, Callable, Dict, Iterable, List, Optional

from array_record.python import array_record_module
from etils import epath
import numpy as np

from vftok import errors
from vftok.data import chunks

MAGIC = b'VFTK1'
MANIFEST = 'manifest.json'
SCALARS = {'label': int, 'caption': str, 'source': str}
ARRAYS = ('latents', 'frames', 'repa_features', 'tokens', 'text_emb',
          'text_mask')
TOKEN_ARRAYS = ('tokens', 'text_emb', 'text_mask')
REQUIRED = ('latents', 'label', 'caption', 'source')
TOKEN_REQUIRED = ('tokens', 'label', 'caption', 'source')
# Only plain numeric dtypes: a record can never smuggle in an object array.
_DTYPES = {'latents': ('float16', 'float32'), 'frames': ('uint8',),
           'repa_features': ('float16', 'float32'), 'tokens': ('uint16',),
           'text_emb': ('float16', 'float32'), 'text_mask': ('uint8',)}
# group_size:1 makes every record its own chunk: O(1) random access (Grain).
WRITER_OPTIONS = 'group_size:1'


class BadRecordError(ValueError):
  """A record that cannot be read or fails validation, said in one line
  naming its file and index (vftok/main.py prints it without a traceback)."""


def serialize(example: Dict[str, Any]) -> bytes:
  """Example dict (see module docstring) -> record bytes."""
  unknown = set(example) - set(SCALARS) - set(ARRAYS)
  if unknown:
    raise ValueError(f'unknown record fields {sorted(unknown)}; the schema has '
                     f'{sorted(set(SCALARS) | set(ARRAYS))}')
  header = {k: SCALARS[k](example[k]) for k in SCALARS if k in example}
  chunks, offset = [], 0
  for k in ARRAYS:
    if example.get(k) is None:
      continue
    a = np.asarray(example[k])
    if a.dtype.name not in _DTYPES[k]:
      raise ValueError(f'{k} dtype {a.dtype} not in {_DTYPES[k]}')
    a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder('<'))
    header[k] = {'dtype': a.dtype.str, 'shape': list(a.shape),
                 'offset': offset, 'nbytes': a.nbytes}
    chunks.append(a.tobytes())
    offset += a.nbytes
  head = json.dumps(header, separators=(',', ':')).encode()
  return b''.join([MAGIC, struct.pack('<I', len(head)), head] + chunks)


def deserialize(b: bytes) -> Dict[str, Any]:
  """Record bytes -> example dict (arrays are writable numpy copies)."""
  if b[:len(MAGIC)] != MAGIC:
    raise ValueError(f'not a vftok latent record (magic {b[:len(MAGIC)]!r})')
  start = len(MAGIC) + 4
  (n,) = struct.unpack('<I', b[len(MAGIC):start])
  header = json.loads(b[start:start + n])
  body = memoryview(b)[start + n:]
  out = {}
  for k, v in header.items():
    if k in ARRAYS:
      dtype = np.dtype(v['dtype'])
      if dtype.name not in _DTYPES[k]:
        raise ValueError(f'{k} dtype {dtype} not in {_DTYPES[k]}')
      raw = body[v['offset']:v['offset'] + v['nbytes']]
      out[k] = np.frombuffer(raw, dtype).reshape(v['shape']).astype(
          dtype.newbyteorder('='))
    else:
      out[k] = v
  return out


def validate_example(ex: Dict[str, Any], channels: Optional[int] = 16):
  """Raises ValueError naming the first violation of the schema."""
  missing = [k for k in REQUIRED if k not in ex]
  if missing:
    raise ValueError(f'record is missing fields {missing}')
  lat = np.asarray(ex['latents'])
  if lat.ndim != 4:
    raise ValueError(f'latents must be [T, h, w, C], got shape {lat.shape}')
  if lat.dtype.name not in _DTYPES['latents']:
    raise ValueError(f'latents dtype {lat.dtype} not in {_DTYPES["latents"]}')
  if channels is not None and lat.shape[-1] != channels:
    raise ValueError(f'latents have {lat.shape[-1]} channels, expected '
                     f'{channels} (VidTok kl_causal_488_16chn)')
  if not np.all(np.isfinite(lat)):
    raise ValueError(f'latents of {ex.get("source")!r} contain NaN or Inf')
  _validate_scalars(ex)
  t, h, w, _ = lat.shape
  if ex.get('frames') is not None:
    fr = np.asarray(ex['frames'])
    if fr.ndim != 4 or fr.shape[-1] != 3 or fr.dtype != np.uint8:
      raise ValueError(f'frames must be uint8 [F, H, W, 3], got {fr.dtype} '
                       f'{fr.shape}')
    f = fr.shape[0]
    if (f - 1) % 4:
      raise ValueError(f'{f} frames: must be 4n+1 (causal VAE contract)')
    if chunks.stored_latent_frames(f) != t:
      raise ValueError(f'{t} latent frames but {f} pixel frames: expected '
                       f'{chunks.stored_latent_frames(f)} ((F-1)/4+1, or per '
                       '17-frame chunk for longer clips: data/chunks.py)')
    if fr.shape[1:3] != (8 * h, 8 * w):
      raise ValueError(f'frames {fr.shape[1:3]} are not 8x latents {(h, w)}')
  if ex.get('repa_features') is not None:
    rf = np.asarray(ex['repa_features'])
    if rf.ndim != 4 or rf.shape[0] != t:
      raise ValueError(f'repa_features must be [T={t}, h, w, D], got '
                       f'{rf.shape}')


def _validate_scalars(ex: Dict[str, Any]):
  for k, typ in SCALARS.items():
    if not isinstance(ex[k], typ) and not (
        typ is int and isinstance(ex[k], np.integer)):
      raise ValueError(f'{k} must be {typ.__name__}, got '
                       f'{type(ex[k]).__name__}')


def validate_token_example(ex: Dict[str, Any], channels=None):
  """Raises ValueError naming the first violation of the token schema.

  (`channels` is unused: the signature matches `validate_example`.)
  """
  del channels
  missing = [k for k in TOKEN_REQUIRED if k not in ex]
  if missing:
    raise ValueError(f'token record is missing fields {missing}')
  extra = [k for k in ARRAYS if k not in TOKEN_ARRAYS and ex.get(k) is not None]
  if extra:
    raise ValueError(f'token records hold no {extra} (only {TOKEN_ARRAYS})')
  tok = np.asarray(ex['tokens'])
  if tok.ndim != 2 or tok.dtype != np.uint16:
    raise ValueError(f'tokens must be uint16 [T, K], got {tok.dtype} '
                     f'{tok.shape}')
  if (ex.get('text_emb') is None) != (ex.get('text_mask') is None):
    raise ValueError('text_emb and text_mask come together')
  if ex.get('text_emb') is not None:
    emb, mask = np.asarray(ex['text_emb']), np.asarray(ex['text_mask'])
    if emb.ndim != 2 or mask.shape != emb.shape[:1]:
      raise ValueError(f'text_emb must be [L, D] and text_mask [L], got '
                       f'{emb.shape} and {mask.shape}')
    if not np.all(np.isfinite(emb)):
      raise ValueError('text_emb contains NaN or Inf values')
  _validate_scalars(ex)


def is_url(path) -> bool:
  """'gs://bucket/x' and the like (written through etils.epath)."""
  return '://' in str(path)


def makedirs(path: str) -> None:
  """A workdir, local or on an object store (gs://)."""
  if is_url(path):
    epath.Path(path).mkdir(parents=True, exist_ok=True)
  else:
    os.makedirs(path, exist_ok=True)


@contextlib.contextmanager
def atomic_path(path: str):
  """Yields a temp path beside `path`, renamed to `path` if the block
  succeeds and removed if it fails: readers never see a half-written file.
  For a URL (gs://) the temp file is local and copied to `path` once the
  block succeeds (an object store writes an object whole or not at all)."""
  if is_url(path):
    local = tempfile.mkdtemp(prefix='vftok-')
    try:
      tmp = os.path.join(local, os.path.basename(str(path)))
      yield tmp
      epath.Path(tmp).copy(epath.Path(path), overwrite=True)
    finally:
      shutil.rmtree(local, ignore_errors=True)
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp-{os.getpid()}'
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_records(path: str, examples: Iterable[Dict[str, Any]],
                  channels: Optional[int] = 16,
                  validate: Callable[..., None] = validate_example) -> int:
  """Validates and writes examples to one ArrayRecord file; -> count.

  Atomic (`atomic_path`): `path` either holds every example or does not exist.
  `validate(example, channels)` checks each example (token records:
  `validate_token_example`, see `write_token_records`).
  """
  n = 0
  with atomic_path(path) as tmp:
    writer = array_record_module.ArrayRecordWriter(tmp, WRITER_OPTIONS)
    try:
      for ex in examples:
        validate(ex, channels)
        writer.write(serialize(ex))
        n += 1
    finally:
      if writer.is_open():
        writer.close()
  return n


def write_token_records(path: str, examples: Iterable[Dict[str, Any]]) -> int:
  """`write_records` for token records (`validate_token_example`)."""
  return write_records(path, examples, None, validate_token_example)


def expand(path_or_pattern) -> List[str]:
  """Glob (or list of globs) -> sorted existing file paths."""
  pats = [path_or_pattern] if isinstance(path_or_pattern, str) else list(
      path_or_pattern)
  return sorted({p for pat in pats for p in glob.glob(os.path.expanduser(pat))})


def make_latents_hint(field: str, split: str = 'train', num_frames: int = 17,
                      resolution: int = 128) -> str:
  """How to make latent records for `config.<field>`: the encode_videos
  command (the paper's VidTok latents; README "Preparing data")."""
  out = '/data/k600-latents' + ('' if split == 'train' else f'-{split}')
  extra = (f' --config.split={split} --config.store_frames=True'
           if split != 'train' else '')
  return (f'make them with: python -m vftok.main '
          f'--config=configs/encode_videos.py --workdir={out} '
          f'--config.input=/videos/k600/{split} --config.label_from_dir=True '
          f'--config.num_frames={num_frames} --config.resolution={resolution} '
          '--config.codec=vidtok --config.codec_path=/weights/'
          f'videoflextok_d18_d18_k600/model.safetensors{extra} '
          '(configs/encode_videos.py), then pass '
          f"--config.{field}='{out}/{split}-*.array_record'")


def make_tokens_hint(field: str) -> str:
  """How to make token records for `config.<field>`: the tokenize_dataset
  command over latent records with a trained tokenizer."""
  return ('make them with: python -m vftok.main '
          '--config=configs/tokenize_dataset.py --workdir=/data/k600-tokens '
          "--config.input='/data/k600-latents/train-*.array_record' "
          '--config.tokenizer_workdir=/ckpt/tokenizer_k600 '
          '(configs/tokenize_dataset.py), then pass '
          f"--config.{field}='/data/k600-tokens/train-*.array_record'")


def require_files(field: str, pattern, what: str = 'record',
                  make: str = '') -> List[str]:
  """`expand(pattern)` of the input `config.<field>`; an errors.InputError
  naming the field and saying how to make the files (`make`) when it matches
  none."""
  paths = expand(pattern) if pattern else []
  if not paths:
    raise errors.InputError(f'config.{field}={pattern!r} matches no {what} '
                            f'files' + (f'; {make}' if make else ''))
  return paths


def read_records(path_or_pattern) -> List[Dict[str, Any]]:
  """Reads every record of the matching files (small sets: all in memory)."""
  paths = expand(path_or_pattern)
  if not paths:
    raise errors.InputError(f'no record files match {path_or_pattern!r}')
  out = []
  for p in paths:
    reader = array_record_module.ArrayRecordReader(p)
    try:
      out.extend(deserialize(b) for b in reader.read_all())
    finally:
      reader.close()
  return out


def _jsonable(x):
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, np.generic):
    return x.item()
  return x


jsonable = _jsonable  # numpy values -> JSON-able (manifests, job reports)


def write_manifest(directory: str, manifest: Dict[str, Any]) -> str:
  """Writes `directory/manifest.json` atomically; -> its path."""
  path = os.path.join(directory, MANIFEST)
  with atomic_path(path) as tmp, open(tmp, 'w') as f:
    json.dump(_jsonable(manifest), f, indent=2)
  return path


def read_manifest(directory: str) -> Dict[str, Any]:
  path = os.path.join(directory, MANIFEST)
  if not os.path.exists(path):
    raise errors.InputError(
        f'no {MANIFEST} in {directory}: encode_videos writes it once every '
        'shard is done (rerun it there with --config.finalize=True)')
  with open(path) as f:
    return json.load(f)
