"""`vftok.VidTok`: the VidTok causal VAE (kl_causal_488_16chn) in JAX.

    vae = vftok.VidTok.load('model.safetensors')   # or VidTok's .ckpt
    z = vae.encode(video)               # [B, F, H, W, 3] in [-1, 1]
                                        # -> [B, T, H/8, W/8, 16], the mean
    z = vae.encode(video, rng=key)      # a posterior sample, as the release
    mean, logvar = vae.moments(video)
    frames = vae.decode(z)              # -> [B, F', H, W, 3], about [-1, 1]

Frame counts follow the release (EncoderCausal3DPadding /
DecoderCausal3DPadding): F = 4n + 1 frames give n + 1 latent frames and
decode back to 4n + 1. Any other F not divisible by 4 is padded the same way
(3 copies of frame 0 in front); F divisible by 4 is NOT padded, so 8 frames
give 2 latent frames that decode to 5 (`latent_frames` / `decoded_frames`).
Everything is causal in time: the latents of a 4k+1-frame prefix equal the
first k+1 latents of the whole clip.

Latents are the raw VidTok latents (no scale or shift), channels-last. The
release tokenizes a posterior SAMPLE, mean + exp(logvar / 2) * noise (its
noise comes from torch's global generator, so it cannot be reproduced
here); `encode` returns the mean unless `sample=True` or a `noise` / `rng`
is given. Decoded video is the raw decoder output (not clamped).

encode / moments / decode are jitted: one compiled program per input shape.
"""
import dataclasses
import functools
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from vftok.models.pretrained import vidtok_net
from vftok.models.pretrained import vidtok_weights

VidTokConfig = vidtok_net.VidTokConfig
CheckpointError = vidtok_weights.CheckpointError
LOGVAR_RANGE = (-30.0, 20.0)  # DiagonalGaussianDistribution's clamp
# Inputs may overshoot [-1, 1] a little (resampling ringing); beyond this
# they are almost certainly unnormalised pixels (e.g. [0, 255]).
RANGE_TOLERANCE = 0.05


@functools.partial(jax.jit, static_argnums=0)
def _moments(cfg, params, video):
  moments = vidtok_net.VidTokNet(cfg).apply(
      {'params': params}, video, method=vidtok_net.VidTokNet.encode)
  moments = moments.astype(jnp.float32)
  mean, logvar = jnp.split(moments, 2, axis=-1)
  return mean, jnp.clip(logvar, *LOGVAR_RANGE)


@functools.partial(jax.jit, static_argnums=0)
def _decode(cfg, params, latents):
  video = vidtok_net.VidTokNet(cfg).apply(
      {'params': params}, latents, method=vidtok_net.VidTokNet.decode)
  return video.astype(jnp.float32)


def _tracer_type():
  tracer = getattr(getattr(jax, 'core', None), 'Tracer', None)
  if tracer is None:  # pragma: no cover - if jax.core stops exporting it
    from jax._src import core  # pylint: disable=g-import-not-at-top
    tracer = core.Tracer
  return tracer


def _is_concrete(x) -> bool:
  """False inside a caller's jit / vmap: then values cannot be checked."""
  return not isinstance(x, _tracer_type())


class VidTok:
  """Frozen VidTok VAE: `params` (a plain pytree of arrays mirroring the
  PyTorch state dict) and its `cfg`; see the module docstring."""

  def __init__(self, params, cfg: VidTokConfig, device=None):
    """`device`: a Device or Sharding for the parameters (e.g. replicated
    over a mesh); default: the default device."""
    self.cfg = cfg
    self.params = jax.device_put(params, device)

  # ---- construction -------------------------------------------------------

  @classmethod
  def load(cls, path: str, device=None, **runtime) -> 'VidTok':
    """From a release VideoFlexTok / VidTok safetensors or VidTok .ckpt
    (vidtok_weights.py); sizes are read from the tensors. `runtime`:
    VidTokConfig's dtype ('bfloat16' activations halve memory; the release
    runs under bf16 autocast on GPU), precision ('highest': float32 parity;
    'default') and conv3d. Raises CheckpointError (a ValueError) naming the
    file and the tensor."""
    cfg, params = vidtok_weights.load_params(path, **runtime)
    return cls(params, cfg, device)

  def replace(self, device=None, **runtime) -> 'VidTok':
    """The same weights with other runtime settings / placement."""
    return VidTok(self.params, dataclasses.replace(self.cfg, **runtime),
                  device)

  @classmethod
  def from_state_dict(cls, state_dict, path: str = 'state dict',
                      **runtime) -> 'VidTok':
    """From {PyTorch key: array} (VidTok keys, no prefix)."""
    sd = {k: np.asarray(v, np.float32) for k, v in state_dict.items()}
    cfg = vidtok_weights.infer_config(sd, path, **runtime)
    return cls(vidtok_weights.to_flax_params(sd, cfg, path), cfg)

  @classmethod
  def init_random(cls, ch: int = 128, seed: int = 0, **config) -> 'VidTok':
    """Random weights of the real architecture (ch=128: 158M parameters) for
    benchmarks and smoke tests: PyTorch's default init (U(+-1/sqrt(fan_in))
    kernels and biases, LayerNorm 1 / 0, mix_factor 2), drawn in NumPy."""
    cfg = VidTokConfig(ch=ch, **config)
    rng = np.random.default_rng(seed)
    shapes = vidtok_weights.expected_state_dict_shapes(cfg)
    sd = {}
    for name, shape in shapes.items():
      if name.endswith('mix_factor'):
        sd[name] = np.full(shape, 2.0, np.float32)
      elif '.norm.' in name:
        sd[name] = np.full(shape, float(name.endswith('weight')), np.float32)
      else:  # a conv's weight [O, I, *k] or bias: bound from its fan-in
        weight = shapes[name[:-len('bias')] + 'weight'] if name.endswith(
            '.bias') else shape
        bound = 1 / np.sqrt(np.prod(weight[1:]))
        sd[name] = rng.uniform(-bound, bound, shape).astype(np.float32)
    return cls(vidtok_weights.to_flax_params(sd, cfg, 'init_random'), cfg)

  def state_dict(self):
    """{PyTorch key: float32 NumPy array}, the release's names and layouts
    (e.g. to write a safetensors file the release can load)."""
    out = {}
    flat = jax.tree_util.tree_flatten_with_path(self.params)[0]
    for kp, value in flat:
      value = np.asarray(value, np.float32)
      if value.ndim >= 2:  # [*k, I, O] -> [O, I, *k]
        value = np.transpose(value, (value.ndim - 1, value.ndim - 2) +
                             tuple(range(value.ndim - 2)))
      # Contiguous: safetensors' NumPy writer ignores strides.
      out[vidtok_weights.torch_name(tuple(k.key for k in kp))] = (
          np.ascontiguousarray(value))
    return out

  @property
  def num_params(self) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(
        self.params))

  # ---- shapes ---------------------------------------------------------------

  @property
  def latent_channels(self) -> int:
    return self.cfg.z_channels

  def latent_frames(self, frames: int) -> int:
    """Latent frames for `frames` input frames (the release's rule)."""
    f = self.cfg.time_factor
    padded = frames if frames % f == 0 else frames + f - 1
    for _ in self.cfg.tempo_ds:
      padded = (padded - 2) // 2 + 1
    return padded

  def decoded_frames(self, latent_frames: int) -> int:
    f = self.cfg.time_factor
    return f * latent_frames - (f - 1)

  # ---- checks -------------------------------------------------------------

  def _check_video(self, video):
    shape = tuple(np.shape(video))
    s, c = self.cfg.space_factor, self.cfg.in_channels
    if len(shape) != 5 or shape[-1] != c:
      raise ValueError(f'video must be [B, F, H, W, {c}] (channels last), '
                       f'got shape {shape}')
    b, f, h, w, _ = shape
    if min(b, f) < 1 or h < s or w < s or h % s or w % s:
      raise ValueError(f'video {shape}: needs B, F >= 1 and H, W positive '
                       f'multiples of {s} (the VAE downsamples space by {s})')
    dtype = jnp.result_type(video)
    if not jnp.issubdtype(dtype, jnp.floating):
      raise ValueError(f'video has dtype {dtype}: pass floats in [-1, 1] '
                       '(uint8 frames: frames / 127.5 - 1)')
    if _is_concrete(video):
      # NumPy for host arrays (no copy to the device just to check).
      xp = np if isinstance(video, np.ndarray) else jnp
      if not bool(xp.all(xp.isfinite(video))):
        raise ValueError('video has non-finite values')
      lo, hi = float(xp.min(video)), float(xp.max(video))
      if lo < -1 - RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise ValueError(f'video values span [{lo:.4g}, {hi:.4g}]; VidTok '
                         'expects [-1, 1] (frames / 127.5 - 1 for uint8)')

  def _check_latents(self, latents):
    shape = tuple(np.shape(latents))
    z = self.cfg.z_channels
    if len(shape) != 5 or shape[-1] != z or min(shape) < 1:
      raise ValueError(f'latents must be [B, T, h, w, {z}] (channels last), '
                       f'got shape {shape}')
    xp = np if isinstance(latents, np.ndarray) else jnp
    if _is_concrete(latents) and not bool(xp.all(xp.isfinite(latents))):
      raise ValueError('latents have non-finite values')

  # ---- the API ------------------------------------------------------------

  def moments(self, video) -> Tuple[jax.Array, jax.Array]:
    """video [B, F, H, W, 3] in [-1, 1] -> (mean, logvar clamped to
    [-30, 20]), each float32 [B, T, H/8, W/8, 16]."""
    self._check_video(video)
    return _moments(self.cfg, self.params, video)

  def encode(self, video, sample: bool = False,
             noise: Optional[jax.Array] = None, rng=None) -> jax.Array:
    """Latents [B, T, H/8, W/8, 16]: the posterior mean, or with
    `sample=True` (implied by `noise` or `rng`) mean + exp(logvar/2) * noise,
    noise given or drawn from `rng` (a PRNG key or an int seed)."""
    if noise is None and rng is None:
      if sample:
        raise ValueError('encode(sample=True) needs `noise` or `rng` (a key '
                         'or seed): the draw is explicit, for reproducibility')
      return self.moments(video)[0]
    self._check_video(video)
    b, f, h, w, _ = np.shape(video)
    s = self.cfg.space_factor
    shape = (b, self.latent_frames(f), h // s, w // s, self.cfg.z_channels)
    if noise is None:
      key = jax.random.key(rng) if isinstance(rng, (int, np.integer)) else rng
      noise = jax.random.normal(key, shape, jnp.float32)
    elif tuple(np.shape(noise)) != shape:
      raise ValueError(f'noise has shape {tuple(np.shape(noise))}, the '
                       f'latents {shape}')
    # The same compiled encoder as the mean path; the draw is elementwise.
    mean, logvar = _moments(self.cfg, self.params, video)
    return mean + jnp.exp(0.5 * logvar) * jnp.asarray(noise, mean.dtype)

  def decode(self, latents) -> jax.Array:
    """latents [B, T, h, w, 16] -> float32 video [B, 4T - 3, 8h, 8w, 3]."""
    self._check_latents(latents)
    return _decode(self.cfg, self.params, latents)

  def __repr__(self):
    c = self.cfg
    return (f'VidTok(ch={c.ch}, ch_mult={c.ch_mult}, num_res_blocks='
            f'{c.num_res_blocks}, z_channels={c.z_channels}, '
            f'{self.num_params / 1e6:.1f}M params, dtype={c.dtype})')
