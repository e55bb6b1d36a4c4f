"""A trained tokenizer for evaluation jobs: restored from its workdir with
clear errors, run with the batch sharded over a data-parallel mesh.

Used by the tokenizer sweep (jobs/eval_tokenizer.py: tokenize + decode every
held-out clip at every budget) and the AR evaluation (jobs/eval_ar.py: decode
AR samples at every budget).

  * `restore_tokenizer`: a train_tokenizer workdir -> (Tokenizer, step), one
    ValueError naming what is wrong with the path otherwise;
  * `clip_noise` / `decode_latents`: the decoder's initial noise depends on
    (seed, clip id) only, so a clip decodes alike in any batch or device
    count, and every setting sees the same noise per clip;
  * `ShardedTokenizer`: tokenize / detokenize AOT-compiled with the batch
    split over the mesh, steady-state seconds per function accumulated.
"""
import json
import os
import time
from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from vftok import api
from vftok import flow
from vftok import sharding
from vftok.evals import video_features
from vftok.models import fsq
from vftok.models import tokenizer as tokenizer_lib


# ------------------------------------------------------------- checkpoint ---

def restore_tokenizer(path: str, step: int = -1) -> Tuple[api.Tokenizer, int]:
  """A train_tokenizer workdir -> (Tokenizer, step); one ValueError that says
  what is wrong with the path otherwise."""
  if not path:
    raise ValueError('config.checkpoint is not set: pass --config.checkpoint='
                     'DIR, the --workdir of a train_tokenizer run (it holds '
                     'config.json and checkpoints/)')
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(path):
    raise ValueError(f'config.checkpoint={path!r} does not exist or is not a '
                     'directory')
  config_file = os.path.join(path, api.CONFIG_FILE)
  if not os.path.exists(config_file):
    hint = ''
    for up in (os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
      if os.path.exists(os.path.join(up, api.CONFIG_FILE)):
        hint = f'; did you mean the workdir {up!r}?'
        break
    raise ValueError(f'config.checkpoint={path!r} is not a tokenizer workdir: '
                     f'it has no {api.CONFIG_FILE}{hint}')
  try:
    with open(config_file) as f:
      job = json.load(f).get('job')
  except (ValueError, OSError) as e:
    raise ValueError(f'{config_file} is not a readable JSON config: {e}'
                     ) from None
  if job != 'train_tokenizer':
    raise ValueError(f'config.checkpoint={path!r} holds a {job!r} run, not a '
                     'train_tokenizer run')
  ckpt_dir = os.path.join(path, 'checkpoints')
  steps = sorted(int(d) for d in (os.listdir(ckpt_dir)
                                  if os.path.isdir(ckpt_dir) else [])
                 if d.isdigit())
  if not steps:
    raise ValueError(f'config.checkpoint={path!r} has no finished checkpoint '
                     f'in {ckpt_dir} (training not started or no save yet?)')
  if step >= 0 and step not in steps:
    raise ValueError(f'config.checkpoint={path!r} has no checkpoint at step '
                     f'{step}; available steps: {steps}')
  step = steps[-1] if step < 0 else step
  try:
    tok = api.Tokenizer.from_checkpoint(path, step)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'could not restore the tokenizer of {path!r} at step '
                     f'{step}: {type(e).__name__}: {e}') from e
  return tok, step


# --------------------------------------------------------- sharded model ---

def clip_noise(seed: int, ids, shape):
  """Initial noise per clip: clip i gets normal(fold_in(key(seed), i))."""
  key = jax.random.key(seed)
  return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i),
                                              shape))(ids)


def decode_latents(tok: api.Tokenizer, params, tokens, k, noise, steps: int,
                   guidance):
  """Tokenizer.detokenize(tokens[:, :, :k]) with given noise, traceable: the
  budget k is an array (every budget shares one compilation), masked codes
  are zeroed as the API's padding does. guidance: a CFG scale (float) or a
  flow.Guidance."""
  codes = fsq.indices_to_codes(tokens, tok.levels)
  b, _, kmax = tokens.shape
  keep = jnp.broadcast_to(jnp.arange(kmax) < k, (b, kmax))
  codes = jnp.where(keep[:, None, :, None], codes, 0.0)
  return tok.decode_latents(params, codes, keep, noise, steps, guidance,
                            tok.config.model.time_shift)


class ShardedTokenizer:
  """tokenize / detokenize with the batch split over `mesh`, AOT-compiled,
  with steady-state seconds accumulated per function."""

  def __init__(self, tok: api.Tokenizer, mesh, batch_size: int, seed: int,
               guidance_kind: str = 'cfg', apg=None):
    self.tok, self.batch_size, self.seed = tok, batch_size, seed
    if guidance_kind not in ('cfg', 'apg'):
      raise ValueError(f"guidance must be 'cfg' or 'apg', got "
                       f'{guidance_kind!r}')
    self.guidance_kind, self.apg = guidance_kind, dict(apg or {})
    self.rep = sharding.replicated(mesh)
    self.bs = sharding.batch_sharding(mesh)
    self.params = jax.device_put(tok.params, self.rep)
    self.seconds: Dict[str, float] = {}
    self.compile_seconds = 0.0
    t, h, w, c = tok.latent_shape
    self.noise_shape = (t, h, w, c)
    self._lat = jax.ShapeDtypeStruct((batch_size, t, h, w, c), jnp.float32,
                                     sharding=self.bs)
    self._tokens_shape = (batch_size, t // tok.config.model.patch_size[0],
                          tok.tokens_per_frame)
    self._encode = None  # compiled on first use
    self._decoders = {}

  def _compile(self, fn, *abstract, in_shardings=None):
    t0 = time.perf_counter()
    in_shardings = in_shardings or (self.rep,) + (self.bs,) * len(abstract)
    out = jax.jit(fn, in_shardings=in_shardings, out_shardings=self.bs).lower(
        self.params, *abstract).compile()
    self.compile_seconds += time.perf_counter() - t0
    return out

  def _encode_fn(self, params, latents):
    codes, _ = self.tok.model.apply(params, latents,
                                    method=tokenizer_lib.VideoFlexTok.encode)
    return fsq.codes_to_indices(codes, self.tok.levels)

  def guidance(self, scale: float):
    """A CFG scale stays a float (the sampler's plain form); APG needs
    flow.Guidance with its momentum / eta / norm threshold."""
    if self.guidance_kind == 'cfg':
      return float(scale)
    return flow.Guidance(float(scale), 'apg', **self.apg)

  def _time(self, name, fn, *args):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
    return out

  def tokenize(self, latents) -> jax.Array:
    """float latents [B, T, h, w, C] (normalised) -> sharded int32 tokens."""
    if self._encode is None:
      self._encode = self._compile(self._encode_fn, self._lat)
    lat = video_features.put_global(np.asarray(latents, np.float32), self.bs)
    return self._time('tokenize', self._encode, self.params, lat)

  def detokenize(self, tokens, k: int, ids, steps: int, guidance: float
                 ) -> np.ndarray:
    key = (steps, guidance)
    if key not in self._decoders:
      g = self.guidance(guidance)

      def fn(params, tokens, k, ids):
        noise = clip_noise(self.seed, ids, self.noise_shape)
        return decode_latents(self.tok, params, tokens, k, noise, steps, g)

      abstract = (
          jax.ShapeDtypeStruct(self._tokens_shape, jnp.int32,
                               sharding=self.bs),
          jax.ShapeDtypeStruct((), jnp.int32, sharding=self.rep),
          jax.ShapeDtypeStruct((self.batch_size,), jnp.int32,
                               sharding=self.bs))
      self._decoders[key] = self._compile(
          fn, *abstract, in_shardings=(self.rep, self.bs, self.rep, self.bs))
    name = f'detokenize/g{guidance}_s{steps}/k{k}'
    ids = video_features.put_global(np.asarray(ids, np.int32), self.bs)
    k = jax.device_put(jnp.int32(k), self.rep)
    out = self._time(name, self._decoders[key], self.params, tokens, k, ids)
    return video_features.fetch(out)
