"""A latent codec by name: 'pca_offline' (data/codecs.PatchPCACodec, fitted
on the data, no weights) or 'vidtok' (VidTokCodec below: the real VidTok VAE,
the JAX port vftok.VidTok, from a local weights file: the release's
VideoFlexTok model.safetensors or VidTok's .ckpt).
"""
import os

import numpy as np

from vftok import errors
from vftok.data.codecs import CHANNELS
from vftok.data.codecs import LatentCodec
from vftok.data.codecs import PatchPCACodec
from vftok.data.codecs import frames5d

VIDTOK_CHECKPOINT = 'vidtok_kl_causal_488_16chn.ckpt'
_VIDTOK_WEIGHTS = (
    "the 'vidtok' codec needs VidTok weights {problem}: pass a local file "
    '(config.codec_path): the release\'s VideoFlexTok model.safetensors '
    '(e.g. from huggingface.co/EPFL-VILAB/videoflextok_d18_d28; its '
    'vae.vidtok.* tensors are used) or checkpoints/' + VIDTOK_CHECKPOINT +
    ' from huggingface.co/microsoft/VidTok. Nothing is downloaded; without '
    "them, use the offline codec 'pca_offline'.")


class VidTokCodec(LatentCodec):
  """VidTok kl_causal_488_16chn (vftok.VidTok, JAX) behind LatentCodec.

  `checkpoint`: a local weights file (VidTok.load). Latents are the
  posterior MEAN (deterministic: any number of workers writes the same
  shards; the release's tokenizer draws a sample from it at encode time).
  Batches are split over the local devices (a 1-D data mesh) in steps of at
  most `clips_per_device` clips per device, padded to a whole step so that
  one compiled program serves every full batch (XLA puts one 17 x 256 x 256
  clip at ~3.2 GiB to encode and ~5.4 GiB to decode in float32, weights
  included; benchmarks/bench_vidtok.py). `dtype` / `precision`:
  VidTokConfig's.
  """

  name = 'vidtok'

  def __init__(self, checkpoint: str, clips_per_device: int = 2,
               dtype: str = 'float32', precision: str = 'highest'):
    # Imported here: the offline codec and the data pipeline need no JAX.
    import jax  # pylint: disable=g-import-not-at-top
    from vftok.models.pretrained import vidtok  # pylint: disable=g-import-not-at-top
    check_vidtok_weights(checkpoint)
    if clips_per_device < 1:
      raise ValueError(f'clips_per_device={clips_per_device} must be >= 1')
    self._jax = jax
    devices = np.array(jax.local_devices())
    self.mesh = jax.sharding.Mesh(devices, ('data',))
    sharding = jax.sharding.NamedSharding
    spec = jax.sharding.PartitionSpec
    self._batch = sharding(self.mesh, spec('data'))
    self.vae = vidtok.VidTok.load(
        os.path.expanduser(checkpoint), device=sharding(self.mesh, spec()),
        dtype=dtype, precision=precision)
    if self.vae.latent_channels != CHANNELS:
      raise ValueError(f'{checkpoint}: the VidTok has '
                       f'{self.vae.latent_channels} latent channels, not '
                       f'{CHANNELS}: use {VIDTOK_CHECKPOINT}')
    self.clips_per_device = clips_per_device

  def _map(self, fn, x: np.ndarray) -> np.ndarray:
    """fn over x's batch in sharded steps; the last step padded (with copies
    of its last clip) to a whole number of clips per device."""
    n, d = x.shape[0], self.mesh.size
    per = min(self.clips_per_device, -(-n // d))
    step = per * d
    outs = []
    for start in range(0, n, step):
      chunk = x[start:start + step]
      pad = step - chunk.shape[0]
      if pad:
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
      out = fn(self._jax.device_put(chunk, self._batch))
      outs.append(np.asarray(out)[:step - pad])
    return np.concatenate(outs)

  def encode(self, frames) -> np.ndarray:
    video = frames5d(frames) / np.float32(127.5) - np.float32(1)
    return self._map(self.vae.encode, video).astype(np.float32)

  def decode(self, latents) -> np.ndarray:
    z = np.asarray(latents, np.float32)
    if z.ndim != 5 or z.shape[-1] != CHANNELS:
      raise ValueError(f'latents must be [B, T, h, w, {CHANNELS}], got '
                       f'{z.shape}')
    video = self._map(self.vae.decode, z)
    return ((np.clip(video, -1, 1) + 1) * np.float32(127.5)).astype(
        np.float32)


def check_vidtok_weights(path: str):
  """errors.InputError unless `path` is a file (the 'vidtok' codec's
  weights; checked before anything is loaded or written)."""
  if not path:
    raise errors.InputError(_VIDTOK_WEIGHTS.format(problem='(no path given)'))
  if not os.path.isfile(os.path.expanduser(path)):
    raise errors.InputError(_VIDTOK_WEIGHTS.format(
        problem=f'({path!r} not found)'))


def get_codec(name: str, path: str = '', **options) -> LatentCodec:
  """Codec by name; `path`: its saved parameters (pca_offline: .npz; vidtok:
  the weights file, `options`: VidTokCodec's clips_per_device / dtype /
  precision)."""
  if name == PatchPCACodec.name:
    return PatchPCACodec.load(path) if path else PatchPCACodec()
  if name == VidTokCodec.name:
    return VidTokCodec(path, **options)
  raise errors.InputError(f"unknown codec {name!r}; choose 'pca_offline' or "
                          "'vidtok'")


def load_codec(data) -> LatentCodec:
  """The codec of a resolved data set (`training.resolve_data(...)`)."""
  if not data.codec_name:
    raise errors.InputError(
        'the data set names no codec (manifest.json "codec"); pixels cannot '
        'be reconstructed from its latents: use records written by '
        'encode_videos (their manifest.json names it)')
  return get_codec(data.codec_name, data.codec_path)
