"""Video inputs -> fixed-size RGB clips (PyAV), for the encoding job.

    inputs, problems = list_inputs('/data/videos')          # folder, glob,
    clips = iter_clips(inputs, ClipParams(), problems)      # .csv/.jsonl or
                                                            # tfds:NAME[:SPLIT]
Inputs:
  folder        every file below it (recursive, sorted); files whose extension
                is not a video's are reported, not tried
  glob          '/data/*/*.mp4' (sorted)
  .csv / .jsonl a manifest: one row per video (or segment) with `path`
                (relative paths are relative to the manifest) and optional
                `label` (int), `caption`, `start` / `end` (seconds), `id`
  tfds:N[:S]    a tensorflow-datasets video dataset (builder N, split S,
                default 'train'), read by index with `tfds.data_source`; needs
                `pip install tensorflow-datasets` and the prepared data

Each video is decoded once, resized so its short side is `resolution` (at
decode time, by FFmpeg's swscale), resampled to `fps` (nearest source frame
in time; 0 keeps the source rate), cut into clips of `num_frames` frames
every `stride` frames, and cropped to resolution x resolution (center, or at
a random offset drawn from (seed, video index, clip index): the same clips
whatever the order or process that reads them).

Bad inputs never raise: unreadable, non-video and too-short files are
appended to `problems` as (path, reason) and skipped. A video that fails
part-way keeps the complete clips decoded before the failure (reported too).
"""
import collections
import csv
import dataclasses
import functools
import glob
import json
import os
from typing import Iterator, List, Optional, Sequence, Tuple

import av
import numpy as np

from vftok import errors

VIDEO_EXTENSIONS = frozenset((
    '.mp4', '.m4v', '.mov', '.avi', '.mkv', '.webm', '.mpg', '.mpeg', '.flv',
    '.wmv', '.ts', '.3gp', '.ogv', '.gif'))
TFDS_PREFIX = 'tfds:'
Problem = Tuple[str, str]  # (path, reason)


@dataclasses.dataclass(frozen=True)
class VideoInput:
  """One video (or segment of one) to cut clips from."""
  path: str                      # file path, or tfds:NAME:SPLIT:INDEX
  uid: str                       # stable id; record source = '<uid>:<frame>'
  label: int = -1
  caption: str = ''
  start: Optional[float] = None  # seconds
  end: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class ClipParams:
  num_frames: int = 17           # 4n + 1 (causal VAE contract)
  resolution: int = 128          # output H = W, a multiple of 8
  fps: float = 0.0               # 0: keep the source frame rate
  stride: int = 0                # frames between clip starts; 0: num_frames
  max_clips_per_video: int = 0   # 0: all
  crop: str = 'center'           # 'center' | 'random'
  seed: int = 0                  # random crops
  tfds_fps: float = 25.0         # frame rate of tfds videos (not stored there)

  def __post_init__(self):
    if self.num_frames < 1 or (self.num_frames - 1) % 4:
      raise ValueError(f'num_frames={self.num_frames}: must be 4n+1 (e.g. 9, '
                       '17, 33, 81) for the causal VAE contract')
    if self.resolution <= 0 or self.resolution % 8:
      raise ValueError(f'resolution={self.resolution}: must be a positive '
                       'multiple of 8')
    if self.crop not in ('center', 'random'):
      raise ValueError(f"crop={self.crop!r}: must be 'center' or 'random'")
    if self.fps < 0 or self.stride < 0 or self.max_clips_per_video < 0:
      raise ValueError('fps, stride and max_clips_per_video must be >= 0')


@dataclasses.dataclass
class Clip:
  frames: np.ndarray             # uint8 [F, R, R, 3]
  video: VideoInput
  video_index: int               # position in the input list
  start: int                     # first frame, counted at the target fps
  source_fps: float
  label: int = -1                # the video's (tfds: the example's 'label')


# ---- listing -----------------------------------------------------------------

def list_inputs(spec: str, tfds_data_dir: str = ''
                ) -> Tuple[List[VideoInput], List[Problem]]:
  """Input spec (see module docstring) -> (inputs in a stable order,
  problems). Raises ValueError only if the spec itself names nothing."""
  spec = os.path.expanduser(spec or '')
  if not spec:
    raise errors.InputError('no input: set config.input to a folder, a glob, '
                            'a .csv/.jsonl manifest or tfds:NAME[:SPLIT]')
  if spec.startswith(TFDS_PREFIX):
    return _list_tfds(spec[len(TFDS_PREFIX):], tfds_data_dir), []
  if os.path.isdir(spec):
    paths = sorted(os.path.join(d, f) for d, dirs, files in os.walk(spec)
                   for f in files if not f.startswith('.'))
    return _files(paths, spec)
  if os.path.isfile(spec) and spec.lower().endswith(('.csv', '.jsonl')):
    return _list_manifest(spec)
  paths = sorted(p for p in glob.glob(spec, recursive=True)
                 if os.path.isfile(p))
  if not paths:
    raise errors.InputError(
        f'config.input={spec!r} is not a folder, a .csv/.jsonl manifest, '
        'tfds:NAME[:SPLIT], or a glob matching any file')
  root = os.path.commonpath([os.path.dirname(p) for p in paths])
  return _files(paths, root)


def _files(paths, root) -> Tuple[List[VideoInput], List[Problem]]:
  inputs, problems = [], []
  for p in paths:
    ext = os.path.splitext(p)[1].lower()
    if ext not in VIDEO_EXTENSIONS:
      problems.append((p, f'not a video file (extension {ext or "none"!r})'))
      continue
    uid = os.path.splitext(os.path.relpath(p, root))[0]
    inputs.append(VideoInput(p, uid))
  return inputs, problems


def _rows(path):
  """Manifest rows as (line number, dict or the error parsing it)."""
  with open(path, newline='') as f:
    if path.lower().endswith('.csv'):
      for i, row in enumerate(csv.DictReader(f), start=2):
        yield i, {k.strip(): v for k, v in row.items() if k}
    else:
      for i, line in enumerate(f, start=1):
        if line.strip():
          try:
            row = json.loads(line)
          except ValueError as e:
            row = e
          yield i, row if isinstance(row, (dict, ValueError)) else ValueError(
              f'a JSON object per line, got {type(row).__name__}')


def _optional_float(row, key):
  v = row.get(key)
  return None if v in (None, '') else float(v)


def _list_manifest(path) -> Tuple[List[VideoInput], List[Problem]]:
  base = os.path.dirname(os.path.abspath(path))
  inputs, problems = [], []
  try:
    rows = list(_rows(path))
  except (ValueError, UnicodeDecodeError, csv.Error) as e:
    raise errors.InputError(f'cannot parse manifest {path}: {e}') from e
  for line, row in rows:
    where = f'{path}:{line}'
    try:
      if isinstance(row, ValueError):
        raise row
      rel = str(row.get('path') or '').strip()
      if not rel:
        raise ValueError('no path')
      label = row.get('label')
      label = -1 if label in (None, '') else int(label)
      start, end = _optional_float(row, 'start'), _optional_float(row, 'end')
      if start is not None and end is not None and end <= start:
        raise ValueError(f'end {end} <= start {start}')
    except (ValueError, TypeError) as e:
      problems.append((where, f'bad manifest row: {e}'))
      continue
    uid = str(row.get('id') or os.path.splitext(rel)[0])
    if start is not None or end is not None:
      uid += f'@{start or 0:g}-{"" if end is None else f"{end:g}"}'
    inputs.append(VideoInput(os.path.join(base, rel), uid, label,
                             str(row.get('caption') or ''), start, end))
  return inputs, problems


def _tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('tfds: inputs need tensorflow-datasets: pip install '
                      'tensorflow-datasets (and prepare the dataset)') from e
  return tfds


@functools.lru_cache(maxsize=8)
def _tfds_source(name, split, data_dir):
  return _tfds().data_source(name, split=split, data_dir=data_dir or None)


def _list_tfds(spec, data_dir) -> List[VideoInput]:
  name, _, split = spec.partition(':')
  split = split or 'train'
  n = len(_tfds_source(name, split, data_dir))
  return [VideoInput(f'{TFDS_PREFIX}{name}:{split}:{i}', f'{name}/{split}/{i}')
          for i in range(n)]


def labels_from_dirs(inputs: Sequence[VideoInput]
                     ) -> Tuple[List[VideoInput], List[str]]:
  """Label = index of the parent folder's name among all of them (sorted),
  e.g. Kinetics' <class>/<video>.mp4 layout -> (inputs, class names)."""
  names = sorted({os.path.basename(os.path.dirname(v.path)) for v in inputs})
  ids = {n: i for i, n in enumerate(names)}
  return [dataclasses.replace(
      v, label=ids[os.path.basename(os.path.dirname(v.path))])
          for v in inputs], names


# ---- decoding ----------------------------------------------------------------

def _resize_args(w, h, resolution):
  s = resolution / min(w, h)
  size = (max(resolution, round(w * s)), max(resolution, round(h * s)))
  # AREA averages when shrinking; BICUBIC is the better filter to enlarge.
  return dict(width=size[0], height=size[1],
              interpolation='AREA' if s < 1 else 'BICUBIC')


def _decode_file(video: VideoInput, resolution: int):
  """-> (source fps, iterator of (time s, av.VideoFrame), frame -> uint8
  [H', W', 3] resized, label). Conversion is left to the caller, so frames dropped
  by resampling or between clips are never converted."""
  container = av.open(video.path)
  if not container.streams.video:
    container.close()
    raise ValueError('no video stream')
  stream = container.streams.video[0]
  stream.thread_type = 'AUTO'
  fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
  ctx = stream.codec_context
  if not ctx.width or not ctx.height:
    container.close()
    raise ValueError('the video stream has no frame size')
  size = _resize_args(ctx.width, ctx.height, resolution)

  def to_rgb(frame):
    return frame.to_ndarray(format='rgb24', **size)

  def frames():
    with container:
      if video.start:
        container.seek(int(video.start / stream.time_base), stream=stream)
      for i, frame in enumerate(container.decode(stream)):
        t = frame.time if frame.time is not None else i / fps
        if video.start is not None and t < video.start - 1e-6:
          continue
        if video.end is not None and t >= video.end:
          break
        yield t, frame

  return fps, frames(), to_rgb, video.label


def _decode_tfds(video: VideoInput, resolution: int, fps: float,
                 data_dir: str):
  name, split, index = video.path[len(TFDS_PREFIX):].rsplit(':', 2)
  example = _tfds_source(name, split, data_dir)[int(index)]
  frames = np.asarray(example['video'])
  label = int(example['label']) if 'label' in example else video.label

  def gen():
    for i, img in enumerate(frames):
      t = i / fps
      if video.start is not None and t < video.start:
        continue
      if video.end is not None and t >= video.end:
        break
      yield t, img

  def to_rgb(img):
    h, w = img.shape[:2]
    return av.VideoFrame.from_ndarray(
        np.ascontiguousarray(img), format='rgb24').to_ndarray(
            format='rgb24', **_resize_args(w, h, resolution))

  return fps, gen(), to_rgb, label


def resample(frames, fps: float):
  """(time, frame) stream -> frames at `fps`: for each target time
  t0 + k / fps, the source frame nearest in time. fps 0: unchanged."""
  if fps <= 0:
    for _, img in frames:
      yield img
    return
  prev = t0 = None
  k = 0
  for t, img in frames:
    if prev is None:
      t0 = t
    else:
      while t0 + k / fps < t:
        tau = t0 + k / fps
        yield prev[1] if tau - prev[0] <= t - tau else img
        k += 1
    prev = (t, img)
  while prev is not None and t0 + k / fps <= prev[0] + 1e-9:
    yield prev[1]
    k += 1


def _crop(clip: np.ndarray, r: int, rng) -> np.ndarray:
  h, w = clip.shape[1:3]
  if rng is None:
    y0, x0 = (h - r) // 2, (w - r) // 2
  else:
    y0, x0 = int(rng.integers(0, h - r + 1)), int(rng.integers(0, w - r + 1))
  return np.ascontiguousarray(clip[:, y0:y0 + r, x0:x0 + r])


def _cut(frames, params: ClipParams, seed_key, convert=lambda x: x
         ) -> Iterator[Tuple[int, np.ndarray]]:
  """Frame stream -> (start, clip) every `stride` frames (`convert`: frame
  -> uint8 [H', W', 3], applied to the frames a clip uses)."""
  f = params.num_frames
  stride = params.stride or f
  buf = collections.deque()
  start = n = 0
  for i, img in enumerate(frames):
    if i < start:
      continue
    buf.append(convert(img))
    if len(buf) < f:
      continue
    rng = None
    if params.crop == 'random':
      rng = np.random.default_rng([params.seed, *seed_key, n])
    yield start, _crop(np.stack(buf), params.resolution, rng)
    n += 1
    if params.max_clips_per_video and n >= params.max_clips_per_video:
      return
    start += stride
    for _ in range(min(stride, f)):
      buf.popleft()


def video_clips(video: VideoInput, index: int, params: ClipParams,
                problems: List[Problem], tfds_data_dir: str = ''
                ) -> Iterator[Clip]:
  """The clips of one video; failures go to `problems`, never raised."""
  n = 0
  try:
    if video.path.startswith(TFDS_PREFIX):
      fps, frames, to_rgb, label = _decode_tfds(
          video, params.resolution, params.tfds_fps, tfds_data_dir)
    else:
      fps, frames, to_rgb, label = _decode_file(video, params.resolution)
    counted = _Counter(resample(frames, params.fps))
    for start, clip in _cut(counted, params, (index,), to_rgb):
      yield Clip(clip, video, index, start, fps, label)
      n += 1
  except Exception as e:  # pylint: disable=broad-except
    # Decoders fail in many ways (FFmpeg errors, OSError, ValueError on odd
    # streams, frames changing size mid-video): each is this video's problem.
    # Errors of the consumer (codec, writer) are not raised in here.
    reason = f'unreadable: {type(e).__name__}: {e}'
    if n:
      reason = f'decoding stopped after {n} clips: {type(e).__name__}: {e}'
    problems.append((video.path, reason))
    return
  if not n:
    rate = f'{params.fps:g} fps' if params.fps else 'the source rate'
    problems.append((video.path, f'too short: {counted.n} frames at {rate}, '
                                 f'a clip needs {params.num_frames}'))


class _Counter:
  """Counts the items an iterator yields (for the too-short report)."""

  def __init__(self, it):
    self.it, self.n = it, 0

  def __iter__(self):
    for x in self.it:
      self.n += 1
      yield x


def iter_clips(inputs: Sequence[VideoInput], params: ClipParams,
               problems: List[Problem], *, indices: Optional[Sequence[int]] =
               None, tfds_data_dir: str = '') -> Iterator[Clip]:
  """Clips of `inputs` (or of inputs[i] for i in `indices`), in order."""
  for i in range(len(inputs)) if indices is None else indices:
    yield from video_clips(inputs[i], i, params, problems, tfds_data_dir)


def read_clips(inputs: Sequence[VideoInput], params: ClipParams, **kwargs
               ) -> Tuple[List[Clip], List[Problem]]:
  """All clips in memory (small sets and tests) -> (clips, problems)."""
  problems = []
  return list(iter_clips(inputs, params, problems, **kwargs)), problems


def check_video_job(config, workdir: str, what: str) -> None:
  """The inputs of a job on one video file (config.video, num_clips), and
  a workdir that can be a directory: one errors.InputError, before anything
  is written (jobs/reconstruct.py, jobs/compress.py)."""
  if not config.video:
    raise errors.InputError(f'config.video is empty: pass the video file to '
                            f'{what} (--config.video=PATH)')
  if not os.path.isfile(os.path.expanduser(config.video)):
    raise errors.InputError(f'config.video={config.video!r}: no such file')
  if config.num_clips < 1:
    raise errors.InputError(f'config.num_clips={config.num_clips}: must be '
                            '>= 1')
  if os.path.isfile(workdir):
    raise errors.InputError(f'--workdir={workdir!r} is a file')


def spread_clips(path: str, num_clips: int, params: ClipParams
                 ) -> Tuple[np.ndarray, List[float]]:
  """`num_clips` clips spread evenly over one video file, the first at its
  start and the last ending near its end, each read by seeking to its start
  (a long video costs no more than a short one) -> (uint8 [N, F, R, R, 3],
  start of each clip in seconds). A video too short for one clip gives one
  clip per `num_frames` frames it holds. Errors are one errors.InputError
  naming the file and the problem."""
  if not os.path.isfile(path):
    raise errors.InputError(f'config.video={path!r}: no such file')
  try:
    with av.open(path) as container:
      if not container.streams.video:
        raise ValueError('no video stream')
      stream = container.streams.video[0]
      fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
      seconds = (float(stream.duration * stream.time_base) if stream.duration
                 else (container.duration or 0) / av.time_base)
  except (av.FFmpegError, ValueError, OSError) as e:
    raise errors.InputError(f'config.video={path!r} is not a readable video: '
                            f'{type(e).__name__}: {e}') from None
  clip_s = (params.num_frames + 1) / fps  # a frame of slack for rounding
  starts = (np.linspace(0.0, seconds - clip_s, num_clips).tolist()
            if seconds > clip_s * 2 and num_clips > 1 else [0.0])
  problems: List[Problem] = []
  frames, times = [], []
  for s in starts:
    video = VideoInput(path, os.path.basename(path), start=s or None)
    one = dataclasses.replace(
        params, max_clips_per_video=1 if len(starts) > 1 else num_clips)
    for clip in video_clips(video, 0, one, problems):
      frames.append(clip.frames)
      times.append(s + clip.start / (params.fps or clip.source_fps))
  if not frames:
    why = problems[0][1] if problems else 'no frames decoded'
    raise errors.InputError(f'config.video={path!r}: {why}')
  return np.stack(frames), times
