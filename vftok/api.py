"""`Tokenizer`: what notebooks, evaluation and the AR model import.

    tok = vftok.Tokenizer.from_checkpoint(workdir)
    tokens = tok.tokenize(latents)                 # int32 [B, T, K]
    recon = tok.detokenize(tokens[:, :, :4])       # any 1 <= k <= K per frame

Inputs are checked before anything runs on a device: a wrong shape, channel
count, non-finite latents or out-of-range token ids raise one ValueError that
names the problem.
"""
import functools
import json
import os
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vftok import flow
from vftok.models import fsq
from vftok.models import layers
from vftok.models import tokenizer as tokenizer_lib

CONFIG_FILE = 'config.json'


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a training run (tokenizer or AR) wrote into its
  workdir."""
  config_path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(config_path):
    raise ValueError(f'{workdir} is not a vftok workdir: no {CONFIG_FILE}')
  with open(config_path) as f:
    return ml_collections.ConfigDict(json.load(f))


def start_workdir(config, workdir: str, writer=None):
  """A training job's first step: the workdir with the resolved config in it
  (written once, by process 0, atomically) -> the metric writer (CLU:
  TensorBoard + logs on process 0, logs only elsewhere) unless one is given."""
  # pylint: disable=g-import-not-at-top
  from clu import metric_writers  # imports TensorFlow: only for jobs
  from vftok.data import records
  # pylint: enable=g-import-not-at-top
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with records.atomic_path(os.path.join(workdir, CONFIG_FILE)) as tmp:
      with open(tmp, 'w') as f:
        f.write(config.to_json(indent=2))
  return writer or metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)


class Tokenizer:
  """A VideoFlexTok tokenizer: float latents <-> int32 tokens [B, T, K]."""

  def __init__(self, config: ml_collections.ConfigDict, params):
    self.config = config
    self.params = params
    m = config.model
    self.model = tokenizer_lib.build(
        m, layers.optional_dtype(config.train.get('compute_dtype')))
    self.levels = tuple(m.fsq_levels)

  # ---- construction -------------------------------------------------------
  @classmethod
  def from_config(cls, config, seed: int = 0) -> 'Tokenizer':
    """Randomly initialised parameters (for tests and shape checks)."""
    model = tokenizer_lib.build(config.model)
    variables = jax.jit(model.init)(jax.random.key(seed),
                                    *tokenizer_lib.dummy_inputs(config.model))
    return cls(config, nn.meta.unbox(variables))

  @classmethod
  def from_checkpoint(cls, path: str, step: Optional[int] = None) -> 'Tokenizer':
    """path: a training workdir (holds config.json and checkpoints/)."""
    from vftok import train_state  # the trainer's state layout
    config = load_workdir_config(path)
    params = train_state.restore_params(config, path, step)
    return cls(config, params)

  # ---- shapes -------------------------------------------------------------
  @property
  def latent_shape(self):
    m = self.config.model
    return (m.latent_frames, *m.latent_size, m.latent_channels)

  @property
  def tokens_per_frame(self) -> int:
    return self.config.model.registers

  def _check_latents(self, latents):
    latents = np.asarray(latents)
    _, h, w, c = self.latent_shape
    if latents.ndim != 5:
      raise ValueError(f'latents must be [B, T, H, W, C], got shape {latents.shape}')
    if latents.shape[-1] != c:
      raise ValueError(f'latents have {latents.shape[-1]} channels; this '
                       f'tokenizer expects {c}')
    if latents.shape[2:4] != (h, w):
      raise ValueError(f'latent frames are {latents.shape[2:4]}; this tokenizer '
                       f'expects {(h, w)}')
    pt = self.config.model.patch_size[0]
    if latents.shape[1] < 1 or latents.shape[1] % pt:
      raise ValueError(f'latent frame count {latents.shape[1]} must be a '
                       f'positive multiple of the time patch size {pt}')
    if not np.all(np.isfinite(latents)):
      raise ValueError('latents contain NaN or Inf values')
    return latents.astype(np.float32)

  # ---- tokenize / detokenize ---------------------------------------------
  @functools.partial(jax.jit, static_argnums=0)
  def _encode(self, params, latents):
    codes, _ = self.model.apply(params, latents,
                                method=tokenizer_lib.VideoFlexTok.encode)
    return fsq.codes_to_indices(codes, self.levels)

  def tokenize(self, latents) -> jax.Array:
    """float latents [B, T, H, W, C] -> int32 tokens [B, T, K]."""
    return self._encode(self.params, self._check_latents(latents))

  def decode_latents(self, params, codes, keep, noise, steps: int, guidance,
                     time_shift: float, first_frame=None):
    """The traceable core of `detokenize` (jit it; the evaluation sweep
    shards it): Euler integration from the given noise [B, T, H, W, C].

    codes [B, T, K, D]; keep bool [B, K] or [B, T, K] (False: mask token);
    guidance: a CFG scale or a flow.Guidance; first_frame [B, 1, H, W, C]
    or None (see detokenize).
    """
    null_keep = jnp.zeros_like(keep)
    if first_frame is not None:
      # The given frame carries no tokens: its registers are masked.
      if keep.ndim == 2:
        keep = jnp.broadcast_to(keep[:, None], codes.shape[:3])
        null_keep = jnp.zeros_like(keep)
      keep = keep.at[:, 0].set(False)

    def velocity(x, tt, cond):
      v, _ = self.model.apply(params, codes, keep if cond else null_keep, x, tt,
                              method=tokenizer_lib.VideoFlexTok.decode)
      return v

    return flow.euler_sample(velocity, noise, steps, guidance, time_shift,
                             clean_first_frame=first_frame)

  @functools.partial(jax.jit, static_argnums=(0, 4, 5, 6))
  def _decode(self, params, codes, keep, steps, guidance, time_shift, rng,
              first_frame):
    b, t = codes.shape[:2]
    pt = self.config.model.patch_size[0]
    noise = jax.random.normal(rng, (b, t * pt, *self.latent_shape[1:]))
    return self.decode_latents(params, codes, keep, noise, steps, guidance,
                               time_shift, first_frame)

  # Defaults: the best PSNR measured on the demo's held-out clips (README,
  # "Guided sampling"): APG at scale 3 beat no guidance by 0.25-0.3 dB and
  # CFG at scale 3 (which lost ~1 dB), before and after stage 2.
  def detokenize(self, tokens, steps: int = 25, guidance_scale: float = 3.0,
                 seed: int = 0, *, guidance: str = 'apg',
                 apg_momentum: float = -0.5, apg_eta: float = 0.0,
                 apg_norm_threshold: float = 2.5,
                 time_shift: Optional[float] = None,
                 first_frame=None) -> jax.Array:
    """int tokens [B, T, k], 1 <= k <= K -> latents [B, T, H, W, C].

    Missing registers (k < K) are the learned mask token: fewer tokens give a
    coarser reconstruction. guidance_scale != 1 guides against all-masked
    registers: guidance='cfg' (classifier-free) or 'apg' (adaptive projected
    guidance with apg_momentum / apg_eta / apg_norm_threshold; see
    flow.Guidance); guidance_scale=1 turns guidance off. time_shift: Euler time-grid shift (default: the model's
    training shift). first_frame [B, H, W, C] or [B, 1, H, W, C]: decode
    conditioned on this clean first latent frame (decoders fine-tuned with
    frame conditioning, stage 2); the output's frame 0 is exactly it.
    """
    tokens = np.asarray(tokens)
    k_max = self.tokens_per_frame
    if tokens.ndim != 3:
      raise ValueError(f'tokens must be [B, T, k], got shape {tokens.shape}')
    k = tokens.shape[-1]
    if not 1 <= k <= k_max:
      raise ValueError(f'tokens per frame must be in [1, {k_max}], got {k}')
    if int(steps) < 1:
      raise ValueError(f'steps must be >= 1, got {steps}')
    codes = fsq.indices_to_codes(tokens, self.levels)  # validates the id range
    codes = jnp.pad(codes, ((0, 0), (0, 0), (0, k_max - k), (0, 0)))
    keep = jnp.broadcast_to(tokenizer_lib.keep_first(k, tokens.shape[0], k_max)[:, None],
                            (tokens.shape[0], tokens.shape[1], k_max))
    if first_frame is not None:
      first_frame = self._check_first_frame(first_frame, tokens.shape[0])
    g = flow.Guidance(float(guidance_scale), guidance, float(apg_momentum),
                      float(apg_eta), float(apg_norm_threshold))
    shift = float(self.config.model.time_shift if time_shift is None
                  else time_shift)
    return self._decode(self.params, codes, keep, int(steps), g, shift,
                        jax.random.key(seed), first_frame)

  def _check_first_frame(self, frame, batch: int):
    frame = np.asarray(frame, np.float32)
    _, h, w, c = self.latent_shape
    if frame.ndim == 4:
      frame = frame[:, None]
    if frame.shape != (batch, 1, h, w, c):
      raise ValueError(f'first_frame must be [B, H, W, C] = {(batch, h, w, c)} '
                       f'(one clean latent frame per clip), got {frame.shape}')
    if self.config.model.patch_size[0] != 1:
      raise ValueError('first-frame conditioning needs time patch size 1')
    if not np.all(np.isfinite(frame)):
      raise ValueError('first_frame contains NaN or Inf values')
    return frame

  # ---- streaming and long videos -------------------------------------------
  def stream(self, batch: int = 1, max_frames: int = 64) -> 'streaming.TokenStream':
    """A streaming tokenizer: push one latent frame at a time, get its K
    tokens (identical to `tokenize` on the whole clip; see streaming.py)."""
    from vftok import streaming
    return streaming.TokenStream(self, batch, max_frames)

  def tokenize_long(self, chunk_latents):
    """Latents of a long video's overlapping chunks -> tokens [B, F, K]; see
    long_video.py (F = latent frames of the whole video)."""
    from vftok import long_video
    return long_video.tokenize_long(self, chunk_latents)

  def detokenize_long(self, tokens, reencode_last_frame, **kwargs):
    """tokens [B, F, k] of `tokenize_long` -> per-chunk latents; chunk i > 0 is
    decoded conditioned on chunk i - 1's last decoded frame. See long_video.py."""
    from vftok import long_video
    return long_video.detokenize_long(self, tokens, reencode_last_frame, **kwargs)
