"""Pluggable per-frame and text-video scores whose weights the user supplies.

* rFID (Table 8): the Fréchet distance between per-frame image features of
  reconstructions and of the original frames. `config.rfid.factory(path)`
  returns `features(frames uint8 [N, H, W, 3]) -> [N, D]`. The paper's FID
  uses Inception-v3 pool features (plug a factory that loads them); the
  built-in factory is DINOv2's CLS token from a local Hugging Face DINOv2
  directory (FD-DINOv2, Stein et al. 2023): no weights ship or download.
* ViCLIP score (Figs. 6, 7, 11, text-to-video): the cosine similarity of a
  video and its caption under ViCLIP. `config.viclip.factory(path)` returns
  `score(videos uint8 [B, F, H, W, 3], captions [B]) -> [B]`; there is no
  built-in (no ViCLIP port ships): name your own factory and weights.

A factory is 'package.module:function' (as the classifier's,
evals/class_score.py). Asking for a score without its weights, or with a
path that does not exist, is one errors.InputError naming the field.
"""
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vftok import errors
from vftok.evals import class_score

DINOV2_FACTORY = 'vftok.evals.frame_scores:dinov2_frame_features'


def _check_path(field: str, path: str, what: str):
  if not path:
    raise errors.InputError(f'config.{field}.path is empty: {what} needs '
                            'weights on a local path (nothing is downloaded)')
  if not os.path.exists(os.path.expanduser(path)):
    raise errors.InputError(f'config.{field}.path={path!r} does not exist '
                            f'({what} weights)')


def make_frame_features(factory: str, path: str) -> Callable:
  """rFID's per-frame feature function from config.rfid (factory, path)."""
  _check_path('rfid', path, 'rFID')
  fn = class_score.load_factory(factory or DINOV2_FACTORY, 'rFID')(
      os.path.expanduser(path))
  if not callable(fn):
    raise ValueError(f'rFID factory {factory!r} must return a callable '
                     'frames [N, H, W, 3] -> features [N, D]')
  return fn


def make_text_video_score(factory: str, path: str) -> Callable:
  """The ViCLIP score function from config.viclip (factory, path)."""
  if not factory:
    raise errors.InputError(
        'config.viclip.factory is empty: the ViCLIP score needs your '
        "factory ('package.module:function', path -> score(videos, captions)"
        ' -> [B]) and config.viclip.path its weights; vftok ships no ViCLIP')
  _check_path('viclip', path, 'the ViCLIP score')
  fn = class_score.load_factory(factory, 'ViCLIP')(os.path.expanduser(path))
  if not callable(fn):
    raise ValueError(f'ViCLIP factory {factory!r} must return a callable '
                     '(videos, captions) -> scores [B]')
  return fn


def frames_of(clips) -> np.ndarray:
  """[B, F, H, W, 3] -> [B * F, H, W, 3] (every frame scored)."""
  clips = np.asarray(clips)
  return clips.reshape((-1,) + clips.shape[-3:])


def dinov2_frame_features(path: str, image_size: int = 224,
                          batch_size: int = 64) -> Callable:
  """The built-in rFID features: DINOv2's final CLS token per frame (each
  frame resized whole to image_size, ImageNet-normalised, as the REPA
  targets' preprocessing in models/pretrained/dinov2.py)."""
  from vftok.models.pretrained import dinov2  # pylint: disable=g-import-not-at-top
  module, params = dinov2.load_dinov2(path)
  mean = np.asarray(dinov2.IMAGENET_MEAN, np.float32) * 255
  std = np.asarray(dinov2.IMAGENET_STD, np.float32) * 255

  @jax.jit
  def cls(params, frames):
    x = frames.astype(jnp.float32)
    n, h, w, c = x.shape
    if (h, w) != (image_size, image_size):
      x = jnp.clip(jax.image.resize(x, (n, image_size, image_size, c), 'cubic',
                                    antialias=True), 0, 255)
    out = module.apply({'params': params}, (x - mean) / std)
    return out.last_hidden_state[:, 0]

  def features(frames):
    frames = np.asarray(frames)
    return np.concatenate([np.asarray(cls(params, frames[i:i + batch_size]))
                           for i in range(0, len(frames), batch_size)])
  return features
