"""Embedded clip sets built offline from packaged footage: the shared writer.

A set is defined by small specs (tuples) and a `render(spec)` that makes the
clip's RGB frames; `write_clip_set` fits the offline codec on the training
clips, encodes every clip (in chunks: the clips are never all in memory),
adds standardised REPA teacher features to the training records, and writes
ArrayRecord shards (records.py schema) with codec.npz and manifest.json.
`ensure_built` builds into `<root>.tmp-<pid>` and renames it to `<root>` when
complete, so a crash never leaves a half-built set that looks finished.

Sets: data/demo.py (four packaged videos), data/footage.py (the pretrained
tokenizer's videos, stills and procedural motion).
"""
import dataclasses
import os
import shutil
import time
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple

from absl import logging
import numpy as np

from vftok.data import chunks as chunks_lib
from vftok.data import codecs
from vftok.data import records

TRAIN_PATTERN = 'train-*-of-*.array_record'
EVAL_PATTERN = 'eval-*-of-*.array_record'
CODEC_FILE = 'codec.npz'
_CHUNK = 32  # clips rendered and encoded at once (bounds memory)

# spec -> uint8 [F, R, R, 3]; spec -> (label, caption, source name).
Render = Callable[[Any], np.ndarray]
Meta = Callable[[Any], Tuple[int, str, str]]


@dataclasses.dataclass(frozen=True)
class SetPaths:
  root: str
  train_pattern: str
  eval_pattern: str
  codec_path: str
  manifest: Dict[str, Any]


def default_root(name: str, version: int, num_frames: int,
                 resolution: int) -> str:
  """$VFTOK_DATA (or ~/.cache/vftok)/<name>-v<version>-<frames>x<res>."""
  base = os.environ.get('VFTOK_DATA') or os.path.join('~', '.cache', 'vftok')
  return os.path.join(os.path.expanduser(base),
                      f'{name}-v{version}-{num_frames}x{resolution}')


def ensure_built(root: str, build: Dict[str, Any], make: Callable[[str], None],
                 shape_keys: Sequence[str], what: str) -> SetPaths:
  """The set under `root`, built first by `make(tmp_dir)` if absent.

  A set built with other `shape_keys` values (clips, frames, resolution)
  would not fit the model: ValueError naming both."""
  if not os.path.exists(os.path.join(root, records.MANIFEST)):
    tmp = f'{root}.tmp-{os.getpid()}'
    shutil.rmtree(tmp, ignore_errors=True)
    try:
      t0 = time.time()
      logging.info('building the %s (first use): %s', what, root)
      make(tmp)
      logging.info('%s built in %.1fs: %s', what, time.time() - t0, root)
      try:
        os.rename(tmp, root)  # atomic; also fine onto an empty directory
      except OSError:
        # Another process finished the same build first: use theirs.
        if not os.path.exists(os.path.join(root, records.MANIFEST)):
          raise
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  manifest = records.read_manifest(root)
  got = {k: manifest.get('build', {}).get(k) for k in build}
  if any(got[k] != build[k] for k in shape_keys):
    raise ValueError(f'{what} at {root} was built with {got}, not {build}; '
                     'pass another root (config.data.root)')
  if got != build:
    logging.warning('using the %s at %s as built (%s), not %s', what, root,
                    got, build)
  return SetPaths(root, os.path.join(root, TRAIN_PATTERN),
                  os.path.join(root, EVAL_PATTERN),
                  os.path.join(root, CODEC_FILE), manifest)


def resize_square(frames: np.ndarray, resolution: int) -> np.ndarray:
  """uint8 [F, S, S, 3] -> [F, R, R, 3]; PIL's bilinear widens its kernel
  when shrinking: an antialiased resize."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return np.stack([np.asarray(Image.fromarray(f).resize(
      (resolution, resolution), Image.Resampling.BILINEAR)) for f in frames])


def batches(render: Render, specs: Sequence[Any]) -> Iterator[np.ndarray]:
  for i in range(0, len(specs), _CHUNK):
    yield np.stack([render(s) for s in specs[i:i + _CHUNK]])


def standardized_teacher_features(teacher, render: Render, specs):
  """Teacher features of every clip, standardised per channel over the set.

  I3D features are ReLU outputs (all >= 0): their cosine similarity is
  dominated by the shared mean direction (a REPA loss of -0.99 at step 100,
  measured), so the centred, unit-variance features are stored instead.
  -> (float16 [N, T, h, w, D], mean [D], std [D]).
  """
  feats = np.concatenate([teacher(b) for b in batches(render, specs)])
  flat = feats.reshape(-1, feats.shape[-1]).astype(np.float64)
  mean, std = flat.mean(0), flat.std(0) + 1e-6
  return ((feats - mean) / std).astype(np.float16), mean, std


def _examples(render, meta, specs, codec, keep_frames, stats=None, feats=None):
  groups = [specs[i:i + _CHUNK] for i in range(0, len(specs), _CHUNK)]
  for i, (frames, chunk) in enumerate(zip(batches(render, specs), groups)):
    lat = chunks_lib.encode_clips(codec, frames)   # per 17-frame chunk
    feats_i = (feats[i * _CHUNK:i * _CHUNK + len(chunk)] if feats is not None
               else [None] * len(frames))
    if stats is not None:
      flat = lat.reshape(-1, lat.shape[-1]).astype(np.float64)
      stats[0] += len(flat)
      stats[1] += flat.sum(0)
      stats[2] += np.square(flat).sum(0)
    for spec, z, f, r in zip(chunk, lat, frames, feats_i):
      label, caption, source = meta(spec)
      ex = dict(latents=z.astype(np.float16), label=label, caption=caption,
                source=source)
      if r is not None:
        ex['repa_features'] = r
      if keep_frames:
        ex['frames'] = f
      yield ex


def write_clip_set(out: str, *, render: Render, meta: Meta,
                   train: List[Any], evals: List[Any], build: Dict[str, Any],
                   sources: List[Dict[str, Any]], teacher_factory=None,
                   what: str = 'clip set', codec_path: str = ''):
  """Writes the set into the (new) directory `out`: codec fitted on `train`
  (pass it shuffled: the fit reads the first clips), training shards with
  teacher features (build['repa_teacher'], '' for none), one eval shard
  with RGB frames, manifest.json (latent mean / std over the training set,
  `sources`, `build`). codec_path: another set's codec.npz to encode with
  instead of fitting one (its latents are then the ones a tokenizer trained
  on that set reads). Clips longer than 17 frames are encoded per 17-frame
  chunk (data/chunks.py; manifest `chunks`)."""
  f, r = build['num_frames'], build['resolution']
  os.makedirs(out)
  if codec_path:
    shutil.copyfile(codec_path, os.path.join(out, CODEC_FILE))
    codec = codecs.PatchPCACodec.load(os.path.join(out, CODEC_FILE))
  else:
    logging.info('%s: fitting the latent codec on %d clips', what, len(train))
    codec = codecs.PatchPCACodec().fit(batches(render, train))
    codec.save(os.path.join(out, CODEC_FILE))

  stats = [0, np.zeros(codecs.CHANNELS), np.zeros(codecs.CHANNELS)]
  spec = build['repa_teacher']
  if spec and teacher_factory is None:
    raise ValueError(f'building the {what} with REPA teacher {spec!r} needs '
                     'teacher_factory (models/pretrained/features.demo_teacher)')
  teacher = teacher_factory(spec) if spec else None
  feats, repa_stats = None, {}
  if teacher is not None:
    logging.info('%s: REPA teacher features (%s)', what, spec)
    feats, mean, std = standardized_teacher_features(teacher, render, train)
    repa_stats = dict(repa_feature_mean=mean, repa_feature_std=std)
  per = build['clips_per_shard']
  shards = -(-len(train) // per)
  for s in range(shards):
    logging.info('%s: encoding training shard %d/%d', what, s + 1, shards)
    records.write_records(
        os.path.join(out, f'train-{s:05d}-of-{shards:05d}.array_record'),
        _examples(render, meta, train[s * per:(s + 1) * per], codec,
                  keep_frames=False, stats=stats,
                  feats=None if feats is None else feats[s * per:(s + 1) * per]))
  records.write_records(
      os.path.join(out, 'eval-00000-of-00001.array_record'),
      _examples(render, meta, evals, codec, keep_frames=True))

  n, s1, s2 = stats
  mean = s1 / n
  std = np.sqrt(np.maximum(s2 / n - mean ** 2, 1e-12))
  t = chunks_lib.stored_latent_frames(f)
  extra = {'chunks': chunks_lib.manifest_entry(f)} if chunks_lib.is_long(f) else {}
  records.write_manifest(out, dict(
      format='vftok-latent-records/1',
      codec=codecs.PatchPCACodec.name,
      codec_path=CODEC_FILE,
      counts=dict(train=len(train), eval=len(evals)),
      train_shards=shards,
      frames_shape=[f, r, r, 3],
      latent_shape=[t, r // 8, r // 8, codecs.CHANNELS],
      latent_dtype='float16',
      fields=dict(train=['latents', 'label', 'caption', 'source'] +
                  (['repa_features'] if teacher else []),
                  eval=['latents', 'label', 'caption', 'source', 'frames']),
      source_fps={src['name']: src['fps'] for src in sources if 'fps' in src},
      sources=sources,
      latent_mean=mean, latent_std=std,
      build=build, **repa_stats, **extra))
