"""Grain input pipeline over latent records (records.py schema).

    ArrayRecord files -> MapDataset.source -> shuffle(seed) -> repeat
      -> map(deserialize, normalise) -> batch(global / processes)
      -> [process_index::process_count] -> to_iter_dataset -> [mp_prefetch]

Every step before `to_iter_dataset` is index-based, so the iterator's state is
a position: `get_state()` / `set_state()` (and the Orbax args from
`checkpoint_args_save` / `checkpoint_args_restore`) resume at exactly the next
batch. Each epoch is shuffled differently; each process reads a disjoint
slice and together they read every record of an epoch.

Latents are normalised per channel with the manifest's mean / std (the flow
decoder wants unit-scale targets); `make_denormalizer` inverts it before the
codec decodes latents to pixels.

Token records (jobs/tokenize_dataset.py, for the AR model) are read the same
way by `make_token_iterator`: `tokens` int32 [b, T, K], `label`, and on
request `caption` (numpy str array).

Bad records (`CheckedSource`): a training record that cannot be read (a
corrupt ArrayRecord chunk) or fails the schema check raises
records.BadRecordError naming its file and index. With
`data.skip_bad_records=True` it is replaced by the next readable record in
file order, so batches keep their size and the iterator state its meaning
(a resumed run lands on the same batch either way); every batch then
carries `bad_records` int32 [b] (1 = replaced), which `BadRecordCounter`
takes out, counts, and stops on above `data.max_bad_record_fraction`.
"""
import bisect
import dataclasses
import os
from typing import Any, Dict, List, Optional, Sequence

from absl import flags
from absl import logging
import grain
import jax
import numpy as np

from vftok.data import demo
from vftok.data import footage
from vftok.data import records

TRAIN_FIELDS = ('latents', 'label', 'repa_features')
EVAL_FIELDS = ('latents', 'label', 'frames')
TOKEN_FIELDS = ('tokens', 'label')


@dataclasses.dataclass(frozen=True)
class Data:
  """A resolved data set: where its records are and how to read them."""
  train_pattern: str
  eval_pattern: str
  manifest: Dict[str, Any]  # {} when the records come without one
  codec_name: str = ''
  codec_path: str = ''
  normalize: str = 'global'  # config.data.normalize

  def _stat(self, key):
    v = self.manifest.get(key)
    return None if v is None else np.asarray(v, np.float32)

  @property
  def latent_mean(self) -> Optional[np.ndarray]:
    return None if self.normalize == 'none' else self._stat('latent_mean')

  @property
  def latent_std(self) -> Optional[np.ndarray]:
    """Per-channel divisor. 'global': one scale (the RMS of the channel
    stds) for every channel, as SD3/FLUX scale VAE latents, so channels that
    carry more energy keep more weight in the flow loss; 'per_channel':
    every channel to unit variance; 'none': the codec's raw latents (as the
    official release feeds VidTok latents)."""
    if self.normalize not in ('global', 'per_channel', 'none'):
      raise ValueError(f"config.data.normalize={self.normalize!r}: must be "
                       "'global', 'per_channel' or 'none'")
    std = self._stat('latent_std')
    if std is None or self.normalize != 'global':
      return None if self.normalize == 'none' else std
    return np.full_like(std, np.sqrt(np.mean(np.square(std))))


def resolve_patterns(data_config, teacher_factory=None) -> Data:
  """config.data -> Data; builds the embedded set first if kind is 'demo'
  (data/demo.py) or 'footage' (data/footage.py; `teacher_factory`: see
  demo.ensure_demo_dataset)."""
  kind = data_config.kind
  if kind in ('demo', 'footage'):
    ensure = (demo.ensure_demo_dataset if kind == 'demo'
              else footage.ensure_footage_dataset)
    p = ensure(
        data_config.root, data_config.num_frames, data_config.resolution,
        # Workdirs older than the field: the current demo set.
        repa_teacher=data_config.get('demo_repa_teacher', 'i3d:Mixed_3c'),
        teacher_factory=teacher_factory)
    return Data(p.train_pattern, p.eval_pattern, p.manifest,
                p.manifest['codec'], p.codec_path, data_config.normalize)
  if kind != 'records':
    raise ValueError(f"config.data.kind={kind!r}: must be 'records', 'demo' "
                     "or 'footage'")
  train = data_config.train_pattern
  shape = dict(num_frames=data_config.get('num_frames', 17),
               resolution=data_config.get('resolution', 128))
  files = records.require_files(
      'data.train_pattern', train, 'latent record',
      records.make_latents_hint('data.train_pattern', **shape))
  if data_config.eval_pattern:
    records.require_files(
        'data.eval_pattern', data_config.eval_pattern, 'latent record',
        records.make_latents_hint('data.eval_pattern', 'eval', **shape))
  directory = os.path.dirname(files[0])
  manifest = {}
  if os.path.exists(os.path.join(directory, records.MANIFEST)):
    manifest = records.read_manifest(directory)
  codec_path = manifest.get('codec_path', '')
  return Data(train, data_config.eval_pattern, manifest,
              manifest.get('codec', ''),
              os.path.join(directory, codec_path) if codec_path else '',
              data_config.normalize)


class CheckedSource:
  """ArrayRecord files -> validated example dicts (a Grain data source).

  `validate(example)` raises ValueError on a schema violation. skip=True:
  a bad record is logged and replaced by the next readable one in file
  order, and every example carries `bad_records` (1 if replaced, else 0).
  """

  # Replacement search stops after this many consecutive bad records: a
  # longer run means a damaged file, which is an error in any mode.
  MAX_SCAN = 1000

  def __init__(self, paths: Sequence[str], validate, skip: bool = False):
    self.paths, self.validate, self.skip = list(paths), validate, skip
    try:
      self._source = grain.sources.ArrayRecordDataSource(self.paths)
    except Exception:  # pylint: disable=broad-except
      # A damaged footer or block header: the whole file is unreadable, and
      # ArrayRecord's message does not say which file.
      for p in self.paths:
        try:
          grain.sources.ArrayRecordDataSource([p])
        except Exception as ef:  # pylint: disable=broad-except
          raise records.BadRecordError(
              f'{p}: the record file cannot be opened ({_one_line(ef)})'
          ) from None
      raise
    self._starts = None  # first global index of each file (on error only)

  def __len__(self) -> int:
    return len(self._source)

  def where(self, index: int) -> str:
    """'<file>: record <i>' of a global index."""
    if self._starts is None:
      starts, n = [], 0
      for p in self.paths:
        starts.append(n)
        n += len(grain.sources.ArrayRecordDataSource([p]))
      self._starts = starts
    f = bisect.bisect_right(self._starts, index) - 1
    return f'{self.paths[f]}: record {index - self._starts[f]}'

  def _read(self, index: int) -> Dict[str, Any]:
    ex = records.deserialize(self._source[index])
    self.validate(ex)
    return ex

  def __getitem__(self, index: int) -> Dict[str, Any]:
    try:
      ex = self._read(index)
    except Exception as e:  # pylint: disable=broad-except
      problem = f'{self.where(index)} is bad: {_one_line(e)}'
      if not self.skip:
        raise records.BadRecordError(
            problem + ' (data.skip_bad_records=True skips such records)'
        ) from None
      logging.warning('skipping %s', problem)
      ex = self._replacement(index)
      ex['bad_records'] = np.int32(1)
      return ex
    if self.skip:
      ex['bad_records'] = np.int32(0)
    return ex

  def _replacement(self, index: int) -> Dict[str, Any]:
    n = len(self)
    for k in range(1, min(n, self.MAX_SCAN)):
      try:
        return self._read((index + k) % n)
      except Exception:  # pylint: disable=broad-except
        continue
    raise records.BadRecordError(
        f'{self.where(index)} and the {min(n, self.MAX_SCAN) - 1} records '
        'after it are all bad: the file is damaged beyond skipping')


def _one_line(e: BaseException, limit: int = 300) -> str:
  text = ' '.join(str(e).split()) or type(e).__name__
  text = f'{type(e).__name__}: {text}'
  return text if len(text) <= limit else text[:limit - 3] + '...'


class BadRecordCounter:
  """Takes the `bad_records` field out of host batches (skip mode), counts
  it, and raises BadRecordError when more than `data.max_bad_record_fraction`
  of the records read are bad (measured against at least one epoch of this
  process's records, so one bad record early on does not trip it).

  Counts start at zero on each (re)start.
  """

  def __init__(self, data_config, num_records: int, process_count: int = 1):
    self.skip = bool(data_config.get('skip_bad_records', False))
    self.max_fraction = float(data_config.get('max_bad_record_fraction', 0.01))
    self.epoch = max(1, num_records // max(1, process_count))
    self.bad = self.read = 0

  def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    bad = batch.pop('bad_records', None)
    if bad is None:
      return batch
    bad = np.asarray(bad)
    self.read += bad.size
    new = int(bad.sum())
    self.bad += new
    if new:
      logging.warning('%d bad record(s) skipped in this batch; %d of %d read '
                      'so far', new, self.bad, self.read)
    if self.bad > self.max_fraction * max(self.read, self.epoch):
      raise records.BadRecordError(
          f'{self.bad} of the {self.read} training records read are bad, '
          f'more than data.max_bad_record_fraction={self.max_fraction:g} '
          f'(of at least one epoch, {self.epoch} records): stopping; the log '
          'names each bad record')
    return batch

  def metrics(self) -> Dict[str, float]:
    return {'data/bad_records': float(self.bad)} if self.skip else {}


def bad_record_counter(data_config, pattern, process_count: int = 1
                       ) -> BadRecordCounter:
  """The trainers' BadRecordCounter for the records matching `pattern`."""
  n = 0
  if data_config.get('skip_bad_records', False):
    n = len(grain.sources.ArrayRecordDataSource(records.expand(pattern)))
  return BadRecordCounter(data_config, n, process_count)


class Prepare(grain.transforms.Map):
  """Record bytes (or a deserialized example) -> dict of the wanted fields,
  latents normalised."""

  def __init__(self, fields: Sequence[str], mean=None, std=None):
    self.fields = tuple(fields)
    self.mean = None if mean is None else np.asarray(mean, np.float32)
    self.std = None if std is None else np.asarray(std, np.float32)

  def map(self, element) -> Dict[str, np.ndarray]:
    ex = element if isinstance(element, dict) else records.deserialize(element)
    out = {}
    for k in self.fields:
      if k not in ex:
        continue
      v = ex[k]
      if k == 'latents':
        v = v.astype(np.float32)
        if self.mean is not None:
          v = (v - self.mean) / self.std
      elif k == 'label':
        v = np.int32(v)
      elif k == 'repa_features':
        v = v.astype(np.float32)
      elif k == 'tokens':
        v = v.astype(np.int32)
      elif k == 'text_emb':
        v = v.astype(np.float32)
      elif k == 'text_mask':
        v = v.astype(bool)
      out[k] = v
    if 'repa_frames' in self.fields:
      if 'frames' not in ex:
        raise ValueError('the REPA teacher runs on RGB key frames but these '
                         'records carry no frames')
      # Latent frame t of the causal VAE <-> pixel frame 4 t.
      out['repa_frames'] = np.ascontiguousarray(ex['frames'][::4])
    if 'bad_records' in ex:
      out['bad_records'] = ex['bad_records']
    return out


def _stats(data, mean, std):
  return (data.latent_mean if mean is None else mean,
          data.latent_std if std is None else std)


def make_train_iterator(data_config, data: Optional[Data] = None, *,
                        process_index: int = 0, process_count: int = 1,
                        latent_mean=None, latent_std=None,
                        key_frames: bool = False
                        ) -> grain.DatasetIterator:
  """Infinite, shuffled iterator of this process's share of global batches.

  Batches: `latents` float32 [b, T, h, w, C], `label` int32 [b] (and
  `repa_features` if the records have them, and with key_frames the RGB
  frames of the latent frames, `repa_frames` uint8 [b, T, H, W, 3], for an
  on-the-fly REPA teacher), b = global_batch_size / process_count.
  Normalisation stats default to the data's manifest.
  """
  data = data or resolve_patterns(data_config)
  mean, std = _stats(data, latent_mean, latent_std)
  fields = TRAIN_FIELDS + (('repa_frames',) if key_frames else ())
  return _shuffled_batches(records.expand(data.train_pattern), data_config,
                           Prepare(fields, mean, std), process_index,
                           process_count, _validate_latent_record)


def make_token_iterator(data_config, pattern: str = '', *,
                        fields: Sequence[str] = TOKEN_FIELDS,
                        process_index: int = 0, process_count: int = 1
                        ) -> grain.DatasetIterator:
  """`make_train_iterator` for token records (jobs/tokenize_dataset.py).

  Reads `pattern` (default data_config.train_pattern). Batches: `tokens`
  int32 [b, T, K], `label` int32 [b] (add 'caption' to `fields` for a numpy
  str array [b]), b = global_batch_size / process_count. Infinite, shuffled
  per epoch, checkpointable like the latent iterator.
  """
  pattern = pattern or data_config.train_pattern
  paths = records.require_files('data.train_pattern', pattern, 'token record',
                                records.make_tokens_hint('data.train_pattern'))
  return _shuffled_batches(paths, data_config, Prepare(fields), process_index,
                           process_count, records.validate_token_example)


def _validate_latent_record(ex):
  # Any channel count: the model config, not the record, decides it.
  records.validate_example(ex, channels=None)


def _shuffled_batches(paths, data_config, prepare, process_index,
                      process_count, validate) -> grain.DatasetIterator:
  """source -> shuffle -> repeat -> process slice -> prepare -> batch."""
  gbs = data_config.global_batch_size
  if gbs % process_count:
    raise ValueError(f'global_batch_size={gbs} is not divisible by '
                     f'{process_count} processes')
  source = CheckedSource(paths, validate,
                         skip=bool(data_config.get('skip_bad_records', False)))
  ds = grain.MapDataset.source(source)
  ds = ds.shuffle(seed=data_config.shuffle_seed).repeat()
  ds = ds.map(prepare)  # lazy: runs only on the records this process reads
  ds = ds.batch(gbs // process_count, drop_remainder=True)
  # Process p takes blocks p, p + P, ... of b = gbs / P consecutive records,
  # so global batch k (the processes' blocks in order) is records
  # [k gbs, (k + 1) gbs), the single-process batch: same data, same loss
  # curve, whatever the process count.
  ds = ds[process_index::process_count]
  # Threads overlap record reads with the step; order stays deterministic.
  ds = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=min(8, os.cpu_count() or 1),
      prefetch_buffer_size=max(1, data_config.prefetch_buffer)))
  if data_config.worker_count > 0:
    if not flags.FLAGS.is_parsed():
      # Grain's workers read absl flags; outside an absl app use defaults.
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=data_config.worker_count,
        per_worker_buffer_size=max(1, data_config.prefetch_buffer)))
  return iter(ds)


def eval_dataset(data: Data, *, num_clips: int, batch_size: int,
                 fields: Sequence[str] = EVAL_FIELDS, min_clips: int = 1):
  """-> (clip count, grain.MapDataset of batches): the first `num_clips` (-1:
  all) eval records in file order.

  Each batch: `latents` (normalised like training), `label`, `frames` uint8
  [b, F, H, W, 3] (the reference of every pixel metric), as `fields` asks.
  The last batch may be smaller."""
  paths = records.require_files(
      'eval_pattern', data.eval_pattern, 'evaluation record',
      records.make_latents_hint('eval_pattern', 'eval'))
  source = grain.sources.ArrayRecordDataSource(paths)
  n = len(source) if num_clips < 0 else min(num_clips, len(source))
  if n < num_clips:
    logging.warning('only %d evaluation clips (asked for %d)', n, num_clips)
  if n < min_clips:
    raise ValueError(f'need at least {min_clips} evaluation clips, got {n}')
  ds = grain.MapDataset.source(source)[:n].map(
      Prepare(fields, data.latent_mean, data.latent_std)).batch(batch_size)
  if 'frames' not in ds[0]:
    raise ValueError(f'evaluation records {data.eval_pattern!r} have no RGB '
                     '`frames`: pixel metrics need them')
  return n, ds


def make_eval_batches(data_config, data: Optional[Data] = None, *,
                      num_clips: int, batch_size: int
                      ) -> List[Dict[str, np.ndarray]]:
  """The first `num_clips` eval records as a list of batches (eval_dataset)."""
  data = data or resolve_patterns(data_config)
  _, ds = eval_dataset(data, num_clips=num_clips, batch_size=batch_size)
  return list(ds)


def make_normalizer(data: Data):
  """-> fn(codec latents) -> the normalised latents the tokenizer sees."""
  mean, std = data.latent_mean, data.latent_std
  if mean is None:
    return lambda z: np.asarray(z, np.float32)
  return lambda z: (np.asarray(z, np.float32) - mean) / std


def make_denormalizer(data: Data):
  """-> fn(normalised latents) -> latents in the codec's own scale."""
  mean, std = data.latent_mean, data.latent_std
  if mean is None:
    return lambda z: np.asarray(z, np.float32)
  return lambda z: np.asarray(z, np.float32) * std + mean


def global_batch(batch: Dict[str, np.ndarray], sharding
                 ) -> Dict[str, jax.Array]:
  """This process's rows -> global jax.Arrays laid out by `sharding`."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def checkpoint_args_save(it):
  """Orbax args saving `it`'s position (one JSON file per process).

  grain.checkpoint.CheckpointSave / CheckpointRestore (grain >= 0.2; older
  releases: grain.python.PyGrainCheckpointSave) are registered with Orbax
  when grain is imported.
  """
  return grain.checkpoint.CheckpointSave(it)


def checkpoint_args_restore(it):
  """Orbax args restoring `it` in place to the saved position."""
  return grain.checkpoint.CheckpointRestore(it)
