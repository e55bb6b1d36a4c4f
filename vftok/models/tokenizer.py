"""The VideoFlexTok model: encoder + FSQ + DiT flow decoder + REPA head.

`build(model_config, dtype)` makes the module; `loss_fn` is the stage-1
training objective L = L_flow + lambda * L_REPA with nested dropout:

  codes = FSQ(encoder(x))                       [B, T, K, D]
  keep  = first k of K registers, k ~ {1,2,4,..,K} per sample (shared by frames)
          (all replaced by the learned null condition with probability
          uncond_prob: the CFG null condition)
  x_t   = t * eps + (1 - t) * x,  t ~ logit-normal
  L_flow = || decoder(codes, keep, x_t, t) - (eps - x) ||^2 on latent patches
  L_REPA = -cos(REPA_head(decoder layer `repa_layer`), teacher features)
"""
from typing import Any, Callable, Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vftok import errors
from vftok import flow
from vftok.models import decoder as decoder_lib
from vftok.models import encoder as encoder_lib
from vftok.models import layers
from vftok.models import masks
from vftok.models import repa as repa_lib


class VideoFlexTok(nn.Module):
  encoder: encoder_lib.Encoder
  decoder: decoder_lib.Decoder
  repa_head: repa_lib.RepaHead

  def encode(self, latents, skip_rounding=None):
    return self.encoder(latents, skip_rounding)

  def encode_streaming(self, latents, cache, frame_offset):
    return self.encoder(latents, None, cache, frame_offset)

  def decode(self, codes, x_t, t, keep=None, uncond=None, prefix=None,
             steps=None):
    return self.decoder(codes, x_t, t, keep, uncond, prefix, steps)

  def repa(self, hidden):
    return self.repa_head(hidden)

  def __call__(self, latents, x_t, t, keep=None):
    codes, _ = self.encode(latents)
    velocity, hidden = self.decode(codes, x_t, t, keep, jnp.zeros(t.shape, bool))
    return velocity, self.repa(hidden)


def grid_hw(model_config):
  h, w = model_config.latent_size
  _, ph, pw = model_config.patch_size
  if h % ph or w % pw:
    raise ValueError(f'latent size {(h, w)} is not divisible by patch size '
                     f'{tuple(model_config.patch_size)}')
  return h // ph, w // pw


TOKEN_STRUCTURES = ('registers', 'grid')


def token_structure(model_config) -> str:
  """'registers' (VideoFlexTok) or 'grid' (the 3D-grid counterpart: one
  token per latent patch; encoder.py). Configs written before the field
  existed are VideoFlexTok's."""
  return model_config.get('token_structure', 'registers')


def encoder_attention(model_config) -> str:
  """'time_causal' (the paper's 2D tokens) or 'full' (Table 2's flat 1D)."""
  return model_config.get('encoder_attention', 'time_causal')


def is_grid(model_config) -> bool:
  return token_structure(model_config) == 'grid'


def check_structure(model_config) -> None:
  """One errors.InputError naming the field for a token structure the rest
  of the config contradicts (checked by `build`, so at every job's start)."""
  m = model_config
  kind, attention = token_structure(m), encoder_attention(m)
  if kind not in TOKEN_STRUCTURES:
    raise errors.InputError(f'config.model.token_structure={kind!r}: choose '
                            f'from {TOKEN_STRUCTURES}')
  if attention not in masks.ENCODER_ATTENTION:
    raise errors.InputError(f'config.model.encoder_attention={attention!r}: '
                            f'choose from {masks.ENCODER_ATTENTION}')
  if kind == 'grid':
    h, w = grid_hw(m)
    if m.tokens_per_frame != h * w:
      raise errors.InputError(
          f'config.model.tokens_per_frame={m.tokens_per_frame}: a grid '
          f'tokenizer has one token per latent patch, {h} x {w} = {h * w} '
          'per frame (set it to that)')
    if m.nested_dropout != 'none':
      raise errors.InputError(
          f"config.model.nested_dropout={m.nested_dropout!r}: a grid "
          "tokenizer has no coarse-to-fine order to train (set 'none')")
  if attention == 'full' and m.first_frame_prob > 0:
    raise errors.InputError(
        "config.model.encoder_attention='full' (flat-1D tokens) with "
        f'first_frame_prob={m.first_frame_prob}: first-frame conditioning '
        '(stage 2, long videos) needs time-causal tokens')


def has_frame_conditioning(model_config) -> bool:
  """A decoder fine-tuned to take a clean first latent frame (stage 2): what
  decoding a long video chunk by chunk needs."""
  m = model_config
  return m.first_frame_prob > 0 or bool(m.get('frame_conditioning', False))


def require_time_causal(model_config, what: str) -> None:
  """Streaming, long videos and frame conditioning read a frame's tokens as
  depending on that frame and earlier ones only: refuse flat-1D tokens."""
  if encoder_attention(model_config) != 'time_causal':
    raise ValueError(f"{what} needs time-causal tokens; this tokenizer's "
                     "encoder sees every frame (model.encoder_attention="
                     f"{encoder_attention(model_config)!r}, the flat-1D ablation)")


def is_distilled(model_config) -> bool:
  """A few-step student decoder (models/distill.py): conditioned on the
  sampler's step count, guidance distilled in."""
  return bool(model_config.get('step_conditioning', False))


# detokenize's settings where a config's `sample` block is silent: the
# release notebook's 40 Euler steps, APG at scale 25 on the velocity
# (per-channel norm threshold 0.6, no momentum, eta 0).
SAMPLE_DEFAULTS = dict(steps=40, guidance='apg', guidance_scale=25.0,
                       apg_momentum=0.0, apg_eta=0.0, apg_norm_threshold=0.6,
                       time_shift=0.0)


def sample_settings(config, sampler=None) -> dict:
  """The sampler of a tokenizer config: its `sample` block over
  SAMPLE_DEFAULTS, time shift 0 -> the model's training shift. A distilled
  student's own: config.distill.steps, unguided; sampler='teacher': the
  `sample` block, the sampler it was distilled from (the one rule behind
  Tokenizer.detokenize and the distillation targets)."""
  s = config.get('sample') or {}
  out = {k: s.get(k, v) for k, v in SAMPLE_DEFAULTS.items()}
  out['time_shift'] = out['time_shift'] or config.model.time_shift
  if is_distilled(config.model) and sampler != 'teacher':
    out.update(steps=int(config.distill.steps), guidance_scale=1.0)
  return out


def budgets(model_config):
  """Token budgets a tokenizer decodes at: 1, 2, 4, ..., K, or only all K
  for a grid tokenizer (no nested dropout: fewer tokens mean nothing)."""
  k = model_config.tokens_per_frame
  return [k] if is_grid(model_config) else keep_budgets(k)


def latent_grid_error(model_config, shape):
  """Why latents of (T, H, W) latent frames x height x width cannot go
  through this tokenizer, or None. The params fit any grid the learned
  position tables and the per-frame registers cover (patch-divisible); a
  grid tokenizer's token count is its patch grid, so it takes only its own."""
  m = model_config
  t, h, w = (int(v) for v in shape)
  pt, ph, pw = m.patch_size
  if t < 1 or t % pt:
    return (f'{t} latent frames: need a positive multiple of the time patch '
            f'size {pt}')
  if h < ph or w < pw or h % ph or w % pw:
    return (f'latent frames of {h} x {w}: need multiples of the patch size '
            f'{ph} x {pw}')
  if is_grid(m) and (h, w) != tuple(m.latent_size):
    return (f'latent frames of {h} x {w}: a grid tokenizer has one token per '
            f'latent patch, so it takes only its own {tuple(m.latent_size)}')
  most = m.pos_max_size
  if max(h // ph, w // pw) > most:
    return (f'latent frames of {h} x {w} are {h // ph} x {w // pw} patches; '
            f'the position tables cover {most} per axis (at most '
            f'{most * ph} x {most * pw} latents)')
  frames = min(m.max_frames, most, m.register_pos_max_size)
  if t // pt > frames:
    return (f'{t} latent frames: the registers and position tables cover '
            f'{frames * pt} (longer videos: tokenize_long)')
  return None


def budget_error(model_config, k: int, limit=None):
  """Why k tokens per latent frame cannot be decoded (k above `limit`, e.g.
  an AR model's length, or the tokenizer's K; a grid tokenizer's k other than
  all its tokens), or None. The one rule behind `detokenize` and every job's
  `budgets` (check_budgets)."""
  top = model_config.tokens_per_frame
  limit = top if limit is None else min(int(limit), top)
  if not 1 <= k <= limit:
    return f'{k} tokens per latent frame is outside [1, {limit}]'
  if is_grid(model_config) and k != top:
    return (f'a grid tokenizer decodes all its {top} tokens per frame (one per '
            f'latent patch), not {k}: it has no coarse-to-fine order to '
            'truncate')
  return None


def check_budgets(model_config, requested=(), limit=None,
                  field: str = 'config.budgets'):
  """The budgets a job evaluates: `requested` sorted and unique or, when
  empty, every budget the tokenizer decodes up to `limit`. One
  errors.InputError naming `field` for a budget budget_error refuses."""
  chosen = sorted({int(k) for k in requested})
  if not chosen:
    chosen = [k for k in budgets(model_config) if limit is None or k <= limit]
    if not chosen:
      raise errors.InputError(
          f'{field}=(): none of the tokenizer\'s budgets '
          f'{budgets(model_config)} is within [1, {limit}] tokens per latent '
          'frame')
  for k in chosen:
    err = budget_error(model_config, k, limit)
    if err:
      raise errors.InputError(f'{field}={tuple(requested)}: {err} (set () '
                              'for every budget the tokenizer decodes)')
  return chosen


def build(model_config, dtype=jnp.float32, width_override=None) -> VideoFlexTok:
  """width_override: build the same model at another width (muP base shapes)."""
  m = model_config
  check_structure(m)
  enc_w = width_override or m.enc_width
  dec_w = width_override or m.dec_width
  grid = grid_hw(m)
  speed = dict(remat=m.remat,
               attention_impl=layers.attention_implementation(m.attention_impl))
  common = dict(head_dim=m.head_dim, registers=m.tokens_per_frame,
                patch_size=tuple(m.patch_size), grid_hw=grid,
                pos_max_size=m.pos_max_size, pos_kind=m.pos_kind,
                mlp_ratio=m.mlp_ratio, dtype=dtype, **speed)
  return VideoFlexTok(
      encoder=encoder_lib.Encoder(width=enc_w, depth=m.enc_depth,
                                  max_frames=m.max_frames,
                                  fsq_levels=tuple(m.fsq_levels),
                                  readout_scale=m.fsq_readout_scale,
                                  pos_init_std=m.enc_pos_init_std,
                                  token_structure=token_structure(m),
                                  attention=encoder_attention(m),
                                  **common),
      decoder=decoder_lib.Decoder(
          width=dec_w, depth=m.dec_depth, latent_channels=m.latent_channels,
          attention=m.decoder_attention,
          registers_first=m.decoder_registers_first,
          adaln_subsequences=m.adaln_subsequences,
          register_pos_max_size=m.register_pos_max_size,
          frame_conditioning=has_frame_conditioning(m),
          step_conditioning=is_distilled(m),
          repa_layer=m.repa_layer, pos_init_std=m.dec_pos_init_std, **common),
      repa_head=repa_lib.RepaHead(width=dec_w, depth=m.repa_depth,
                                  head_dim=m.head_dim, feature_dim=m.repa_dim,
                                  mlp_ratio=m.mlp_ratio, dtype=dtype,
                                  **speed))


def param_count(model_config) -> int:
  """Parameters of the tokenizer a config builds (abstract: nothing is
  allocated, so the paper sizes count on any host)."""
  shapes = jax.eval_shape(build(model_config).init, jax.random.key(0),
                          *dummy_inputs(model_config))
  return layers.count_params(shapes['params'])


def dummy_inputs(model_config, batch=1):
  m = model_config
  lat = jnp.zeros((batch, m.latent_frames, *m.latent_size, m.latent_channels))
  return (lat, lat, jnp.zeros((batch,)), jnp.ones((batch, m.tokens_per_frame), bool))


def keep_budgets(registers: int):
  """The nested-dropout / evaluation budgets 1, 2, 4, ..., K (K included)."""
  ks = [2 ** i for i in range(int(np.log2(registers)) + 1)]
  return ks if ks[-1] == registers else ks + [registers]


def sample_keep(rng, batch: int, registers: int, mode: str, frames: int = 0):
  """bool [B, K] (frames > 0: [B, T, K], a budget per latent frame): True for
  the first k registers of each sample (frame)."""
  shape = (batch, frames) if frames else (batch,)
  if mode == 'pow2':
    ks = jnp.asarray(keep_budgets(registers))
    k = ks[jax.random.randint(rng, shape, 0, len(ks))]
  elif mode == 'uniform':
    k = jax.random.randint(rng, shape, 1, registers + 1)
  elif mode == 'none':
    k = jnp.full(shape, registers)
  else:
    raise ValueError(f'unknown nested dropout mode {mode!r} '
                     "(choose 'pow2', 'uniform' or 'none')")
  return jnp.arange(registers) < k[..., None]


def keep_first(k: int, batch: int, registers: int):
  return jnp.broadcast_to(jnp.arange(registers) < k, (batch, registers))


# Stage 2: a given conditioning frame is noised to sigma_c ~ U[0, 0.02] with
# this probability (else clean), as the release's PrefixMinRFNoiseModule.
COND_NOISE_PROB = 0.5
COND_SIGMA_MAX = 0.02


def loss_fn(model: VideoFlexTok, params, batch: Dict[str, Any], rng,
            model_config, teacher: Callable, freeze_encoder: bool = False
            ) -> Tuple[jax.Array, Dict]:
  """Stage-1/2 objective. batch['latents']: [B, T, H, W, C] float32.

  Stage 2 (decoder fine-tuning) sets freeze_encoder (the codes are constants:
  no backward pass through the encoder) and model_config.first_frame_prob:
  per sample, with that probability latent frame 0 is a given conditioning
  frame (the release's prefix semantics): it keeps the clip's flow time in
  the time embedding but enters nearly clean (sigma_c ~ U[0, 0.02] with
  probability 0.5, else exactly clean), its registers get the learned prefix
  token, and it is left out of the loss.
  """
  m = model_config
  x = batch['latents'].astype(jnp.float32)
  b, frames = x.shape[:2]
  r_keep, r_t, r_eps, r_q, r_first, r_u, r_c1, r_c2 = jax.random.split(rng, 8)
  # One budget per clip (the paper), or per latent frame (decoding per-frame
  # budgets, api/budgets.py, then sees mixes it was trained on).
  keep = sample_keep(r_keep, b, m.tokens_per_frame, m.nested_dropout,
                     frames if m.get('nested_dropout_per_frame') else 0)
  uncond = jax.random.bernoulli(r_u, m.uncond_prob, (b,))
  t = flow.sample_time(r_t, b, m.time_mean, m.time_std, m.time_shift,
                       m.get('time_uniform', 0.0))
  eps = jax.random.normal(r_eps, x.shape)
  x_t = flow.add_noise(x, eps, t)
  weight = jnp.ones((b, frames))
  prefix = None
  if m.first_frame_prob > 0:
    if tuple(m.patch_size)[0] != 1:
      raise ValueError('first-frame conditioning needs time patch size 1, got '
                       f'patch_size {tuple(m.patch_size)}')
    given = jax.random.bernoulli(r_first, m.first_frame_prob, (b,))
    sigma_c = jnp.where(jax.random.bernoulli(r_c1, COND_NOISE_PROB, (b,)),
                        jax.random.uniform(r_c2, (b,), maxval=COND_SIGMA_MAX),
                        0.0)
    first = flow.add_noise(x[:, :1], eps[:, :1], sigma_c)
    x_t = x_t.at[:, :1].set(jnp.where(given[:, None, None, None, None], first,
                                      x_t[:, :1]))
    prefix = given.astype(jnp.int32)
    weight = jnp.where((jnp.arange(frames) == 0)[None] & given[:, None], 0.0,
                       weight)

  skip = None
  if m.fsq_drop_quant_p > 0 and not freeze_encoder:
    skip = jax.random.bernoulli(r_q, m.fsq_drop_quant_p, (b, 1, 1))
  codes, _ = model.apply(params, x, skip, method=VideoFlexTok.encode)
  if freeze_encoder:
    codes = jax.lax.stop_gradient(codes)
  velocity, hidden = model.apply(params, codes, x_t, t, keep, uncond, prefix,
                                 method=VideoFlexTok.decode)
  sq = jnp.mean(jnp.square(velocity - flow.velocity_target(x, eps)),
                axis=tuple(range(2, x.ndim)))
  flow_loss = jnp.sum(sq * weight) / jnp.sum(weight)
  metrics = {'loss_flow': flow_loss}
  loss = flow_loss
  if m.repa_weight > 0:
    pred = model.apply(params, hidden, method=VideoFlexTok.repa)
    repa_loss = repa_lib.cosine_loss(pred, jax.lax.stop_gradient(teacher(batch)))
    loss = loss + m.repa_weight * repa_loss
    metrics['loss_repa'] = repa_loss
  metrics['loss'] = loss
  return loss, metrics
