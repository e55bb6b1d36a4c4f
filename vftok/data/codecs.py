"""Latent codecs (pixels <-> VAE latents) behind one interface.

Every codec honours the VidTok kl_causal_488_16chn contract: a clip of
F = 4n + 1 RGB frames of H x W (multiples of 8) maps to latents
[(F - 1) / 4 + 1, H / 8, W / 8, 16], and latent frame i depends only on pixel
frames <= 4i (time-causal: frame 0 alone, then groups of 4).

  'pca_offline'  PatchPCACodec: embedded, fitted on the data, no weights to
                 download; what the demo uses.
  'vidtok'       VidTokCodec: the real VidTok VAE (PyTorch), an optional
                 extra loaded lazily from a local checkpoint.
"""
import abc
import os
from typing import Iterable, Union

import numpy as np

from vftok.data import records

CHANNELS = 16
VIDTOK_CHECKPOINT = 'vidtok_kl_causal_488_16chn.ckpt'
_VIDTOK_INSTALL = (
    "the 'vidtok' codec needs PyTorch and the VidTok code ({missing}). "
    'Install them: pip install torch omegaconf einops lightning safetensors; '
    'git clone https://github.com/microsoft/VidTok and put the clone on '
    'PYTHONPATH; download checkpoints/' + VIDTOK_CHECKPOINT + ' from '
    'https://huggingface.co/microsoft/VidTok and pass its path '
    "(config.codec_path). Without them, use the offline codec 'pca_offline'.")


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


def _frames5d(frames) -> np.ndarray:
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
      batch = _frames5d(batch)
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
    first, rest = patches(_frames5d(frames))
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


class CodecUnavailableError(ImportError):
  """An optional codec's dependencies are not installed."""


def _import_vidtok():
  """-> (torch, OmegaConf, instantiate_from_config), imported on first use."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
    from omegaconf import OmegaConf  # pylint: disable=g-import-not-at-top
    from vidtok.modules import util  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise CodecUnavailableError(_VIDTOK_INSTALL.format(
        missing=f'missing module {e.name!r}')) from e
  return torch, OmegaConf, util.instantiate_from_config


class VidTokCodec(LatentCodec):
  """VidTok kl_causal_488_16chn (PyTorch) behind the LatentCodec interface.

  `checkpoint`: a local .ckpt; `config`: its VidTok yaml (default: the file of
  the same name in the VidTok clone's configs/). Latents are what VidTok's
  `model.encode` returns (for the KL models, a posterior sample, as VidTok's
  own pipelines use them). Untested here: it needs the weights and torch.
  """

  name = 'vidtok'

  def __init__(self, checkpoint: str, config: str = '', device: str = ''):
    torch, omega, instantiate = _import_vidtok()
    if not checkpoint or not os.path.exists(checkpoint):
      raise ValueError(f'VidTok checkpoint {checkpoint!r} not found: download '
                       f'checkpoints/{VIDTOK_CHECKPOINT} from '
                       'https://huggingface.co/microsoft/VidTok and pass its '
                       'path (config.codec_path)')
    if not config:
      import vidtok  # pylint: disable=g-import-not-at-top
      repo = os.path.dirname(os.path.dirname(os.path.abspath(vidtok.__file__)))
      name = os.path.splitext(os.path.basename(checkpoint))[0] + '.yaml'
      config = os.path.join(repo, 'configs', name)
    cfg = omega.load(config)
    cfg.model.params.ckpt_path = checkpoint
    cfg.model.params.ignore_keys = []
    cfg.model.params.verbose = False
    self.torch = torch
    self.device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    self.model = instantiate(cfg.model).to(self.device).eval()

  def encode(self, frames) -> np.ndarray:
    torch = self.torch
    x = torch.from_numpy(_frames5d(frames)).to(self.device)
    x = x.permute(0, 4, 1, 2, 3) / 127.5 - 1.0  # [B, 3, F, H, W], -1..1
    with torch.no_grad():
      z = self.model.encode(x)
    z = z.float().permute(0, 2, 3, 4, 1).cpu().numpy()  # [B, T, h, w, C]
    if z.shape[-1] != CHANNELS:
      raise ValueError(f'the VidTok model gives {z.shape[-1]} channels, not '
                       f'{CHANNELS}: use {VIDTOK_CHECKPOINT}')
    return z

  def decode(self, latents) -> np.ndarray:
    torch = self.torch
    z = torch.from_numpy(np.asarray(latents, np.float32)).to(self.device)
    with torch.no_grad():
      x = self.model.decode(z.permute(0, 4, 1, 2, 3))
    x = (x.float().clamp(-1, 1) + 1) * 127.5
    return x.permute(0, 2, 3, 4, 1).cpu().numpy()


def get_codec(name: str, path: str = '', **options) -> LatentCodec:
  """Codec by name; `path`: its saved parameters (pca_offline: .npz; vidtok:
  the .ckpt, `options`: VidTokCodec's config / device)."""
  if name == PatchPCACodec.name:
    return PatchPCACodec.load(path) if path else PatchPCACodec()
  if name == VidTokCodec.name:
    return VidTokCodec(path, **options)
  raise ValueError(f"unknown codec {name!r}; choose 'pca_offline' or 'vidtok'")


def load_codec(data) -> LatentCodec:
  """The codec of a resolved data set (`pipeline.resolve(...)`)."""
  if not data.codec_name:
    raise ValueError('the data set names no codec (manifest.json "codec"); '
                     'pixels cannot be reconstructed from its latents')
  return get_codec(data.codec_name, data.codec_path)
