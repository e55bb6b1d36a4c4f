"""Latent codecs (pixels <-> VAE latents) behind one interface.

Every codec honours the VidTok kl_causal_488_16chn contract: a clip of
F = 4n + 1 RGB frames of H x W (multiples of 8) maps to latents
[(F - 1) / 4 + 1, H / 8, W / 8, 16], and latent frame i depends only on pixel
frames <= 4i (time-causal: frame 0 alone, then groups of 4).

  'pca_offline'  PatchPCACodec: embedded, fitted on the data, no weights to
                 download; what the demo uses.
  'vidtok'       VidTokCodec (models/latent_codecs.py): the real VidTok VAE
                 (the JAX port, vftok.VidTok) from a local weights file.

A codec by name: models/latent_codecs.get_codec (data/ imports no model).
"""
import abc
from typing import Iterable, Union

import numpy as np

from vftok.data import records

CHANNELS = 16


def check_clip_shape(f: int, h: int, w: int):
  """Raises ValueError unless (F, H, W) fits the causal VAE contract."""
  if f < 1 or (f - 1) % 4:
    raise ValueError(f'got {f} frames: frames must be 4n+1 for the causal VAE '
                     f'contract (e.g. 9, 17, 33)')
  if h % 8 or w % 8 or h <= 0 or w <= 0:
    raise ValueError(f'got {h}x{w} pixels: H and W must be multiples of 8 '
                     f'(the VAE downsamples space by 8)')


class LatentCodec(abc.ABC):
  """frames [B, F, H, W, 3] in [0, 255] <-> latents [B, T, H/8, W/8, 16]."""

  name: str = ''
  check_clip_shape = staticmethod(check_clip_shape)

  @abc.abstractmethod
  def encode(self, frames) -> np.ndarray:
    """uint8 or float frames in [0, 255] -> float32 latents."""

  @abc.abstractmethod
  def decode(self, latents) -> np.ndarray:
    """Latents -> float32 frames in [0, 255]."""


def frames5d(frames) -> np.ndarray:
  frames = np.asarray(frames)
  if frames.ndim != 5 or frames.shape[-1] != 3:
    raise ValueError(f'frames must be [B, F, H, W, 3], got {frames.shape}')
  check_clip_shape(*frames.shape[1:4])
  return frames.astype(np.float32)


def patches(frames):
  """[B, F, H, W, 3] -> (first [B, 1, h, w, 192], rest [B, T-1, h, w, 768]).

  Frame 0 is patched alone, then every group of 4 frames is one space-time
  patch: the causal 1 + 4n grouping, so latent i sees pixel frames <= 4i.
  """
  b, f, hh, ww, _ = frames.shape
  h, w, t = hh // 8, ww // 8, (f - 1) // 4
  first = frames[:, :1].reshape(b, 1, h, 8, w, 8, 3)
  first = first.transpose(0, 1, 2, 4, 3, 5, 6).reshape(b, 1, h, w, 192)
  rest = frames[:, 1:].reshape(b, t, 4, h, 8, w, 8, 3)
  rest = rest.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, t, h, w, 768)
  return first, rest


def unpatch(first, rest):
  """Inverse of `patches`."""
  b, _, h, w, _ = first.shape
  t = rest.shape[1]
  f0 = first.reshape(b, 1, h, w, 8, 8, 3).transpose(0, 1, 2, 4, 3, 5, 6)
  fr = rest.reshape(b, t, h, w, 4, 8, 8, 3).transpose(0, 1, 4, 2, 5, 3, 6, 7)
  return np.concatenate([f0.reshape(b, 1, h * 8, w * 8, 3),
                         fr.reshape(b, 4 * t, h * 8, w * 8, 3)], axis=1)


class _Moments:
  """Streaming mean / covariance in float64 (data never held at once)."""

  def __init__(self, dim):
    self.n, self.s, self.ss = 0, np.zeros(dim), np.zeros((dim, dim))

  def add(self, x):
    x = x.reshape(-1, x.shape[-1]).astype(np.float64)
    self.n += len(x)
    self.s += x.sum(0)
    self.ss += x.T @ x

  def pca(self, k):
    if self.n < 2:
      raise ValueError('PatchPCACodec.fit: no patches to fit on')
    mean = self.s / self.n
    cov = self.ss / self.n - np.outer(mean, mean)
    var, vec = np.linalg.eigh(cov)            # ascending
    var, vec = var[::-1][:k], vec[:, ::-1][:, :k]
    # eigh's signs are arbitrary: fix them so a refit gives the same latents.
    sign = np.sign(vec[np.abs(vec).argmax(0), np.arange(k)])
    vec = vec * np.where(sign == 0, 1, sign)
    # One scale for all components (not whitening): the leading components
    # carry most of the pixel energy and must keep their weight in the flow
    # loss, as the channels of a real VAE do. Average variance is 1.
    std = np.full(k, np.sqrt(max(np.mean(var), 1e-12)))
    f32 = np.float32
    return mean.astype(f32), vec.astype(f32), std.astype(f32)


class PatchPCACodec(LatentCodec):
  """Offline causal codec: PCA of 8x8 (frame 0) and 4x8x8 patches.

  Two bases, each the top 16 principal components of its patch type on the
  fitting data. Coefficients are divided by one scale per basis so that the
  average channel variance is 1; they are not whitened, so channel 0 holds
  the most energy, like the leading channels of a VAE. Deterministic given
  the fitting data.
  """

  name = 'pca_offline'
  _KEYS = ('mean0', 'basis0', 'std0', 'mean1', 'basis1', 'std1')

  def __init__(self, **params):
    self.params = {k: np.asarray(v, np.float32) for k, v in params.items()}

  @property
  def fitted(self) -> bool:
    return all(k in self.params for k in self._KEYS)

  def fit(self, frames: Union[np.ndarray, Iterable[np.ndarray]],
          max_patches: int = 65536) -> 'PatchPCACodec':
    """Fits on an array [B, F, H, W, 3] or an iterable of such batches.

    Iterables are consumed until `max_patches` space-time patches are seen
    (pass clips in random order for an unbiased sample).
    """
    if isinstance(frames, np.ndarray):
      frames = [frames]
    m0, m1 = _Moments(192), _Moments(768)
    for batch in frames:
      batch = frames5d(batch)
      per_clip = max(1, np.prod(batch.shape[1:4]) // 256)  # 4x8x8 patches
      clips = -(-(max_patches - m1.n) // per_clip)
      first, rest = patches(batch[:clips])
      m0.add(first)
      m1.add(rest)
      if m1.n >= max_patches:
        break
    p = {}
    p['mean0'], p['basis0'], p['std0'] = m0.pca(CHANNELS)
    p['mean1'], p['basis1'], p['std1'] = m1.pca(CHANNELS)
    self.params = p
    return self

  def _check(self):
    if not self.fitted:
      raise ValueError('PatchPCACodec is not fitted: call fit() or load()')

  def encode(self, frames) -> np.ndarray:
    self._check()
    p = self.params
    first, rest = patches(frames5d(frames))
    z0 = (first - p['mean0']) @ p['basis0'] / p['std0']
    z1 = (rest - p['mean1']) @ p['basis1'] / p['std1']
    return np.concatenate([z0, z1], axis=1).astype(np.float32)

  def decode(self, latents) -> np.ndarray:
    self._check()
    p = self.params
    z = np.asarray(latents, np.float32)
    if z.ndim != 5 or z.shape[-1] != CHANNELS:
      raise ValueError(f'latents must be [B, T, h, w, {CHANNELS}], got '
                       f'{z.shape}')
    first = (z[:, :1] * p['std0']) @ p['basis0'].T + p['mean0']
    rest = (z[:, 1:] * p['std1']) @ p['basis1'].T + p['mean1']
    return np.clip(unpatch(first, rest), 0, 255).astype(np.float32)

  def save(self, path: str) -> str:
    """Writes the parameters to `path` (.npz) atomically."""
    self._check()
    with records.atomic_path(path) as tmp, open(tmp, 'wb') as f:
      np.savez(f, name=np.array(self.name), **self.params)
    return path

  @classmethod
  def load(cls, path: str) -> 'PatchPCACodec':
    with np.load(path, allow_pickle=False) as z:
      if str(z['name']) != cls.name:
        raise ValueError(f'{path} holds codec {str(z["name"])!r}, not '
                         f'{cls.name!r}')
      return cls(**{k: z[k] for k in cls._KEYS})
