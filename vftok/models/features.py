"""REPA target feature sources, picked by name (`config.model.repa_source`).

A source maps a batch to per-latent-frame patch features on the decoder's
token grid: [B, T, N, repa_dim]. The paper uses DINOv2-L on the RGB frames
that correspond to each latent frame; DINOv2 weights cannot be fetched here,
so the default is a clearly named stand-in until the real teacher lands:

  'random_stand_in': a frozen, randomly initialised 2-layer MLP over the latent
      patches (fixed seed, never trained). It is NOT a pretrained network; it
      only exercises the REPA code path with targets of the right shape.
  'records': features precomputed into the records (`batch['repa_features']`,
      already on the decoder grid).
"""
import jax
import jax.numpy as jnp
import numpy as np

from vftok.models import layers

_STAND_IN_SEED = 20260412


def random_stand_in(model_config):
  patch_dim = int(np.prod(model_config.patch_size)) * model_config.latent_channels
  hidden, out = 4 * model_config.repa_dim, model_config.repa_dim
  k1, k2 = jax.random.split(jax.random.key(_STAND_IN_SEED))
  # NumPy constants: identical on every host, folded into the compiled step.
  w1 = np.asarray(jax.random.normal(k1, (patch_dim, hidden)) / np.sqrt(patch_dim))
  w2 = np.asarray(jax.random.normal(k2, (hidden, out)) / np.sqrt(hidden))

  def features(batch):
    p = layers.patchify(batch['latents'].astype(jnp.float32),
                        tuple(model_config.patch_size))
    return jax.nn.gelu(p @ w1) @ w2

  return features


def from_records(model_config):
  del model_config
  return lambda batch: batch['repa_features'].astype(jnp.float32)


SOURCES = {'random_stand_in': random_stand_in, 'records': from_records}


def get(model_config):
  name = model_config.repa_source
  if name not in SOURCES:
    raise ValueError(f'unknown REPA feature source {name!r}; '
                     f'choose from {sorted(SOURCES)}')
  return SOURCES[name](model_config)
