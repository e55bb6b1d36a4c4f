"""Which storage URLs a job can use, checked once at startup (vftok/main.py).

What works (docs/scale_out.md, "Cloud storage"):
  * workdir: a local or mounted path, or `gs://bucket/dir`. On gs:// the
    Orbax checkpoints go straight to the bucket (etils.epath + TensorStore's
    GCS driver), the TensorBoard events through TensorFlow's gfile, and the
    side files (config.json, recon_*.png, psnr_*.md, sweep tables, AR
    samples) through data/records.atomic_path (a local temp file copied to
    the bucket once whole). Workdirs read back (init_from,
    tokenizer.checkpoint, ...) may be gs:// too: config.json and the
    checkpoint list are read through etils.epath.
  * data (ArrayRecord patterns, the demo set's root, and the output of the
    jobs that write records: encode_videos, tokenize_dataset): local or
    mounted paths only. The reader (array_record via Grain) and the writer
    open files by local path and records.expand globs the local filesystem,
    so `gs://` is rejected here rather than reported later as "matches no
    files"; mount the bucket (gcsfuse).
Any other scheme (s3://, hdfs://, http://, ...) is rejected for every field.
"""
import re
from typing import Iterable, List, Tuple

from vftok import errors

_SCHEME = re.compile(r'^([A-Za-z][A-Za-z0-9+.-]*)://')

WORKDIR_SCHEMES = ('gs',)
# Config fields (dotted) naming ArrayRecord files / videos, and workdirs read
# back (through etils.epath: gs:// allowed).
DATA_FIELDS = ('data.train_pattern', 'data.eval_pattern', 'data.root',
               'data.token_cache', 'input')
READ_FIELDS = ('train.init_from', 'tokenizer.checkpoint', 'checkpoint',
               'ar_workdir', 'tokenizer_workdir')
# Jobs whose workdir receives ArrayRecord files (a data output).
RECORD_JOBS = ('encode_videos', 'tokenize_dataset')


class UnsupportedPathError(errors.InputError):
  """A path whose URL scheme this field cannot use, said in one line."""


def scheme(path: str) -> str:
  """'gs://b/x' -> 'gs'; a local path (or a Windows drive) -> ''."""
  m = _SCHEME.match(str(path or ''))
  return m.group(1).lower() if m else ''


_GS_HINTS = {
    'data': 'ArrayRecord files are read and written by local path only: '
            'mount the bucket (e.g. gcsfuse) and pass the mounted path',
}


def check_path(field: str, path: str, allowed: Iterable[str] = (),
               kind: str = 'data') -> None:
  """Raises UnsupportedPathError if `path` has a scheme not in `allowed`;
  `kind` ('data', 'workdir', 'read') picks the advice for a gs:// path."""
  s = scheme(path)
  if not s or s in allowed:
    return
  if s == 'gs' and kind in _GS_HINTS:
    hint = _GS_HINTS[kind]
  else:
    ok = ', '.join(f'{a}://' for a in allowed)
    hint = f'supported: local or mounted paths{", " + ok if ok else ""}'
  raise UnsupportedPathError(
      f'{field}={path!r}: URL scheme {s}:// is not supported here ({hint})')


def _get(config, dotted: str):
  node = config
  for part in dotted.split('.'):
    try:
      node = node[part]
    except (KeyError, TypeError, AttributeError):
      return None
  return node


def config_paths(config, workdir: str) -> List[Tuple[str, str, str]]:
  """-> [(field, path, kind)] of every storage path the job reads or writes
  that is set; kind: 'workdir', 'data' or 'read' (a workdir read back)."""
  job = _get(config, 'job')
  out = [('workdir', workdir, 'data' if job in RECORD_JOBS else 'workdir')]
  if _get(config, 'data.kind') == 'demo_tokens' and not _get(
      config, 'data.token_cache'):
    # The AR demo writes its token records under the workdir by default.
    out.append(('workdir (data.token_cache)', workdir, 'data'))
  for fields, kind in ((DATA_FIELDS, 'data'), (READ_FIELDS, 'read')):
    for f in fields:
      v = _get(config, f)
      for p in (v if isinstance(v, (list, tuple)) else [v]):
        if isinstance(p, str) and p:
          out.append((f'config.{f}', p, kind))
  return out


def check_config_paths(config, workdir: str) -> None:
  """Fails fast (before any data is built or model compiled) on a workdir or
  data path with a URL scheme the job cannot use; see the module docstring."""
  for field, path, kind in config_paths(config, workdir):
    check_path(field, path,
               WORKDIR_SCHEMES if kind in ('workdir', 'read') else (), kind)
