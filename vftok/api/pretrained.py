"""Pretrained tokenizer bundles: a tokenizer with its codec and latent scale.

A bundle is one small directory that reconstructs pixels with nothing else:

  config.json          the training run's config (model, data, sampler)
  params.safetensors   the tokenizer's parameters (flattened names)
  codec.npz            the latent codec it was trained on (PatchPCACodec)
  latents.json         how codec latents are scaled for the tokenizer
                       (latent_mean / latent_std as the training data's
                       manifest has them, config.data.normalize) and the
                       clip shape (frames, resolution)

`export(workdir, out)` writes one from a train_tokenizer workdir (the
export_tokenizer job; everything lands in a temp directory renamed into
place, so a failed export leaves nothing); `load(path)` reads a bundle or a
train_tokenizer workdir (then its data set supplies the codec). The project
ships one: SMALL64 (vftok/assets/small64, trained by configs/demo.py:footage).
"""
import dataclasses
import json
import os
import shutil
from typing import Callable, Optional

from flax import traverse_util
import jax
import numpy as np

from vftok import checkpoint
from vftok import errors
from vftok import training
from vftok.api import tokenizer as tokenizer_api
from vftok.data import codecs
from vftok.data import pipeline
from vftok.models import latent_codecs

SMALL64 = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'assets', 'small64')
PARAMS_FILE = 'params.safetensors'
LATENTS_FILE = 'latents.json'
CODEC_FILE = 'codec.npz'
_SEP = '/'


@dataclasses.dataclass
class Pretrained:
  """A tokenizer that goes from pixels to pixels."""
  tokenizer: tokenizer_api.Tokenizer
  codec: codecs.LatentCodec
  normalize: Callable[[np.ndarray], np.ndarray]    # codec latents -> tokenizer's
  denormalize: Callable[[np.ndarray], np.ndarray]  # and back
  num_frames: int
  resolution: int
  source: str

  def encode(self, frames) -> np.ndarray:
    """uint8 / float [B, F, R, R, 3] in [0, 255] -> the tokenizer's latents."""
    return self.normalize(self.codec.encode(frames))

  def to_pixels(self, latents) -> np.ndarray:
    """The tokenizer's latents -> float32 frames in [0, 255]."""
    return np.clip(self.codec.decode(self.denormalize(np.asarray(latents))),
                   0, 255)


def is_bundle(path: str) -> bool:
  return os.path.isfile(os.path.join(path, PARAMS_FILE))


def export(workdir: str, out: str, step: Optional[int] = None,
           readme: str = '') -> str:
  """Writes the bundle of a train_tokenizer `workdir` (its latest step, or
  `step`) to the new directory `out`; -> out."""
  from safetensors import numpy as st  # pylint: disable=g-import-not-at-top
  if os.path.exists(os.path.join(out, PARAMS_FILE)):
    raise errors.InputError(f'{out} already holds a bundle: remove it first '
                            'or export to another directory')
  tok = tokenizer_api.Tokenizer.from_checkpoint(workdir, step)
  config = tok.config
  data = training.resolve_saved_data(config.data)
  if data.codec_name != codecs.PatchPCACodec.name:
    raise errors.InputError(
        f'{workdir} was trained on {data.codec_name or "unnamed"} latents; a '
        f'bundle carries a {codecs.PatchPCACodec.name} codec (a VidTok '
        'tokenizer needs its VAE weights: use Tokenizer.from_checkpoint)')
  params = jax.tree.map(lambda a: np.asarray(a, np.float32),
                        jax.device_get(tok.params))
  # The data manifest's statistics as they are: load() scales with them
  # through pipeline.Data, the training pipeline's own mechanism.
  latents = dict(
      normalize=config.data.normalize,
      latent_mean=data.manifest.get('latent_mean'),
      latent_std=data.manifest.get('latent_std'),
      num_frames=config.data.num_frames, resolution=config.data.resolution,
      trained_steps=tok.step, trained_in=os.path.abspath(workdir))
  tmp = f'{out.rstrip(os.sep)}.tmp-{os.getpid()}'
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    st.save_file(traverse_util.flatten_dict(params, sep=_SEP),
                 os.path.join(tmp, PARAMS_FILE))
    shutil.copyfile(data.codec_path, os.path.join(tmp, CODEC_FILE))
    with open(os.path.join(tmp, LATENTS_FILE), 'w') as f:
      json.dump(latents, f, indent=2)
    with open(os.path.join(tmp, checkpoint.CONFIG_FILE), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
    if readme:
      with open(os.path.join(tmp, 'README.md'), 'w') as f:
        f.write(readme)
    if os.path.isdir(out) and not os.listdir(out):
      os.rmdir(out)
    os.rename(tmp, out)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return out


def load(path: str = SMALL64, step: Optional[int] = None,
         field: str = 'tokenizer') -> Pretrained:
  """A bundle directory, or a train_tokenizer workdir (latest step or
  `step`; its data set must be at hand for the codec) -> Pretrained.
  A bad path is one errors.InputError naming `config.<field>`."""
  path = os.path.expanduser(path)
  if not is_bundle(path):
    if not os.path.isfile(os.path.join(path, checkpoint.CONFIG_FILE)):
      raise errors.InputError(
          f'config.{field}={path!r} is neither a tokenizer bundle (no '
          f'{PARAMS_FILE}) nor a train_tokenizer workdir (no config.json)')
    tok = tokenizer_api.Tokenizer.from_checkpoint(path, step, field=field)
    data = training.resolve_saved_data(tok.config.data)
    norm, denorm = (pipeline.make_normalizer(data),
                    pipeline.make_denormalizer(data))
    return Pretrained(tok, latent_codecs.load_codec(data), norm, denorm,
                      tok.config.data.num_frames, tok.config.data.resolution,
                      path)
  from safetensors import numpy as st  # pylint: disable=g-import-not-at-top
  config = checkpoint.load_workdir_config(path)
  with open(os.path.join(path, LATENTS_FILE)) as f:
    latents = json.load(f)
  params = traverse_util.unflatten_dict(
      st.load_file(os.path.join(path, PARAMS_FILE)), sep=_SEP)
  tok = tokenizer_api.Tokenizer(config, jax.device_put(params))
  tok.step = latents.get('trained_steps')
  stats = {k: latents[k] for k in ('latent_mean', 'latent_std')
           if latents.get(k) is not None}
  data = pipeline.Data('', '', stats, normalize=latents['normalize'])
  codec = codecs.PatchPCACodec.load(os.path.join(path, CODEC_FILE))
  return Pretrained(tok, codec, pipeline.make_normalizer(data),
                    pipeline.make_denormalizer(data), latents['num_frames'],
                    latents['resolution'], path)
