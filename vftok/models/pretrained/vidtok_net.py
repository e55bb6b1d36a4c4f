"""The VidTok causal 3-D VAE (kl_causal_488_16chn) as Flax modules.

A port of `videoflextok/vidtok/modules/model_3dcausal.py`
(`EncoderCausal3DPadding` / `DecoderCausal3DPadding`, as vendored by the
VideoFlexTok release from microsoft/VidTok), channels-last: video
[B, T, H, W, 3] in [-1, 1] -> moments [B, t, H/8, W/8, 32] -> video.
Inference only (no dropout, no timestep embedding).

Parameter paths mirror the PyTorch state-dict names so that loading is a
mechanical rename (vidtok_weights.py): `down.0.block.1` is `down_0/block_1`,
wrapper modules keep their `conv` / `norm` level, and kernels keep PyTorch's
axes reversed ([O, I, *k] -> [*k, I, O]); 1x1 convs stay convolution-shaped
kernels used as matrices.

What the release does and this reproduces (README of the parity fixture):
  * causal convs pad ZEROS in front of time only, (k-1)/2 on both sides of
    H and W; the 2-D convs of ResnetBlock / Up- / Downsample run per frame;
  * LayerNorm(eps 1e-6) over channels at every position, never GroupNorm;
  * mid attention: one head of width C, separately per frame;
  * encoder: 3 replicated copies of frame 0 in front unless T % 4 == 0;
    spatial downsample pads right/bottom by 1 then a stride-2 conv; the
    temporal downsample mixes a causal 3-frame average (the zero frame
    counts) and a stride-2 causal conv with alpha = sigmoid(mix_factor);
  * decoder: nearest x2 in space then conv; nearest x2 in time mixed with a
    causal conv of it; the first 3 output frames are dropped.
"""
import dataclasses
from typing import Any, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


@dataclasses.dataclass(frozen=True)
class VidTokConfig:
  """Hyper-parameters; the defaults are the released 16-channel model.

  Level i has ch * ch_mult[i] channels. Which levels resample is fixed by the
  architecture (the release's defaults): space down after levels
  0..L-2 and up before levels 1..L-1, time down at levels L-2, L-3 and up at
  levels 1 and 2 (the decoder's hard-coded `tempo_us`).
  """
  ch: int = 128
  ch_mult: Tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  z_channels: int = 16
  in_channels: int = 3
  out_ch: int = 3
  # Runtime: compute dtype of activations (LayerNorm statistics and softmax
  # stay float32) and matmul/conv precision ('highest' keeps float32 parity
  # on TPU/GPU too; 'default' lets them use bf16/TF32 passes).
  dtype: str = 'float32'
  precision: str = 'highest'
  # How 3x3x3 convs run: 'native' | 'per_frame' | 'auto' (per_frame on CPU).
  conv3d: str = 'auto'

  @property
  def levels(self) -> int:
    return len(self.ch_mult)

  @property
  def spatial_ds(self):
    return tuple(range(self.levels - 1))

  @property
  def tempo_ds(self):
    return (self.levels - 2, self.levels - 3)

  @property
  def spatial_us(self):
    return tuple(range(1, self.levels))

  @property
  def tempo_us(self):
    return (1, 2)

  @property
  def time_factor(self) -> int:
    return 2 ** len(self.tempo_ds)

  @property
  def space_factor(self) -> int:
    return 2 ** len(self.spatial_ds)

  @property
  def jnp_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def per_frame_conv3d(self) -> bool:
    if self.conv3d not in ('auto', 'native', 'per_frame'):
      raise ValueError(f"conv3d={self.conv3d!r}: 'auto', 'native' or "
                       "'per_frame'")
    if self.conv3d == 'auto':
      return jax.default_backend() == 'cpu'
    return self.conv3d == 'per_frame'

  @property
  def lax_precision(self):
    return lax.Precision.HIGHEST if self.precision == 'highest' else None


# ----------------------------------------------------------------- ops ---

# PyTorch's default conv init, U(+-1/sqrt(fan_in)); used only by `init`
# (real weights are loaded, random ones come from VidTok.init_random).
_TORCH_UNIFORM = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')


def silu(x):
  return x * jax.nn.sigmoid(x)


def _bias(x, b):
  return x if b is None else x + b.astype(x.dtype)


def conv2d(x, kernel, bias, cfg, stride=1, padding=((1, 1), (1, 1))):
  """Per-frame 2-D conv: x [B, T, H, W, I], kernel [kh, kw, I, O]."""
  b, t = x.shape[:2]
  y = lax.conv_general_dilated(
      x.reshape((b * t,) + x.shape[2:]), kernel.astype(x.dtype),
      (stride, stride), padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      precision=cfg.lax_precision)
  return _bias(y.reshape((b, t) + y.shape[1:]), bias)


def pointwise(x, kernel, bias, cfg):
  """1x1(x1) conv: kernel [1, ..., 1, I, O] used as a matrix."""
  k = kernel.reshape(kernel.shape[-2:]).astype(x.dtype)
  return _bias(jnp.einsum('...i,io->...o', x, k,
                          precision=cfg.lax_precision), bias)


def causal_conv3d(x, kernel, bias, cfg, time_stride=1):
  """CausalConv3d(k): kt - stride zero frames in front, (k-1)/2 pixels
  around; kernel [kt, kh, kw, I, O]. Two equivalent computations
  (`cfg.conv3d`): one 3-D conv ('native', the lean one on GPU/TPU), or
  one per-frame 2-D conv of the kt input frames each output frame sees,
  stacked on channels ('per_frame': XLA:CPU runs 2-D convs ~2.5x faster
  than 3-D ones, at the price of a kt-times copy of the input).
  """
  kt, kh, kw = kernel.shape[:3]
  pad_t = kt - time_stride
  k = kernel.astype(x.dtype)
  if not cfg.per_frame_conv3d:
    y = lax.conv_general_dilated(
        x, k, (time_stride, 1, 1),
        ((pad_t, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)),
        dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC'),
        precision=cfg.lax_precision)
    return _bias(y, bias)
  # Time im2col: output frame j sees padded frames j*stride + (0..kt-1),
  # stacked on channels -> one per-frame 2-D conv with kt*I inputs.
  n = (x.shape[1] + pad_t - kt) // time_stride + 1
  xp = jnp.pad(x, ((0, 0), (pad_t, 0), (0, 0), (0, 0), (0, 0)))
  frames = jnp.concatenate(
      [xp[:, i:i + time_stride * (n - 1) + 1:time_stride] for i in range(kt)],
      axis=-1)
  k = jnp.moveaxis(k, 0, 2).reshape(kh, kw, kt * k.shape[3], k.shape[4])
  return conv2d(frames, k, bias, cfg,
                padding=((kh // 2, kh // 2), (kw // 2, kw // 2)))


def causal_conv1d_time(x, kernel, bias, cfg):
  """CausalConv1d(k) along time at every pixel: kernel [k, I, O], k-1 zero
  frames in front. Run as a 2-D conv over (time, pixels) with a k x 1
  kernel: on XLA:CPU ~2.5x faster than a k x 1 x 1 3-D conv or a matmul of
  time-stacked channels (no k-times copy of the input either)."""
  b, t, h, w, c = x.shape
  y = lax.conv_general_dilated(
      x.reshape(b, t, h * w, c), kernel[:, None].astype(x.dtype), (1, 1),
      ((kernel.shape[0] - 1, 0), (0, 0)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      precision=cfg.lax_precision)
  return _bias(y.reshape(b, t, h, w, -1), bias)


# -------------------------------------------------------------- params ---

class ConvParams(nn.Module):
  """A conv's `kernel` [*k, I, O] and `bias` [O] (PyTorch `.weight/.bias`)."""
  features: int
  kernel_size: Tuple[int, ...]

  @nn.compact
  def __call__(self, in_features):
    kernel = self.param('kernel', _TORCH_UNIFORM,
                        (*self.kernel_size, in_features, self.features))
    bias = self.param('bias', nn.initializers.zeros,
                      (self.features,))
    return kernel, bias


class Wrapped(nn.Module):
  """A PyTorch wrapper module (CausalConv3d / CausalConv1d) around its
  `conv`: the params sit one level deeper, as in the state dict."""
  features: int
  kernel_size: Tuple[int, ...]

  @nn.compact
  def __call__(self, in_features):
    return ConvParams(self.features, self.kernel_size, name='conv')(
        in_features)


class _LayerNormParams(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x):
    scale = self.param('scale', nn.initializers.ones, (self.features,))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    # Two-pass statistics in float32 (torch.nn.LayerNorm, eps 1e-6).
    y = x.astype(jnp.float32)
    mean = y.mean(-1, keepdims=True)
    var = jnp.square(y - mean).mean(-1, keepdims=True)
    y = (y - mean) * lax.rsqrt(var + 1e-6) * scale + bias
    return y.astype(x.dtype)


class Norm(nn.Module):
  """vidtok `LayerNorm` wrapper: torch.nn.LayerNorm over channels, `.norm`."""
  features: int

  @nn.compact
  def __call__(self, x):
    return _LayerNormParams(self.features, name='norm')(x)


# -------------------------------------------------------------- blocks ---

class ResnetBlock2D(nn.Module):
  """`ResnetBlock`: per-frame 3x3 convs, 1x1 `nin_shortcut` if C changes."""
  cfg: VidTokConfig
  out: int

  @nn.compact
  def __call__(self, x):
    cin = x.shape[-1]
    h = silu(Norm(cin, name='norm1')(x))
    h = conv2d(h, *ConvParams(self.out, (3, 3), name='conv1')(cin), self.cfg)
    h = silu(Norm(self.out, name='norm2')(h))
    h = conv2d(h, *ConvParams(self.out, (3, 3), name='conv2')(self.out),
               self.cfg)
    if cin != self.out:
      x = pointwise(x, *ConvParams(self.out, (1, 1), name='nin_shortcut')(cin),
                    self.cfg)
    return x + h


class ResnetBlock1D(nn.Module):
  """`ResnetCausalBlock1D`: causal k=3 convs along time at every pixel."""
  cfg: VidTokConfig

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    h = silu(Norm(c, name='norm1')(x))
    h = causal_conv1d_time(h, *Wrapped(c, (3,), name='conv1')(c), self.cfg)
    h = silu(Norm(c, name='norm2')(h))
    h = causal_conv1d_time(h, *Wrapped(c, (3,), name='conv2')(c), self.cfg)
    return x + h


class ResnetBlock3D(nn.Module):
  """`ResnetCausalBlock` (mid): causal 3x3x3 convs, C unchanged."""
  cfg: VidTokConfig

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    h = silu(Norm(c, name='norm1')(x))
    h = causal_conv3d(h, *Wrapped(c, (3, 3, 3), name='conv1')(c), self.cfg)
    h = silu(Norm(c, name='norm2')(h))
    h = causal_conv3d(h, *Wrapped(c, (3, 3, 3), name='conv2')(c), self.cfg)
    return x + h


class FrameAttention(nn.Module):
  """`AttnBlockWrapper`: single-head self-attention within each frame."""
  cfg: VidTokConfig

  @nn.compact
  def __call__(self, x):
    b, t, hh, ww, c = x.shape
    h = Norm(c, name='norm')(x)
    proj = lambda name, y: pointwise(
        y, *Wrapped(c, (1, 1, 1), name=name)(c), self.cfg)
    q, k, v = (proj(n, h).reshape(b, t, hh * ww, c) for n in 'qkv')
    hi = self.cfg.lax_precision
    logits = jnp.einsum('btqc,btkc->btqk', q, k, precision=hi,
                        preferred_element_type=jnp.float32) * c ** -0.5
    attn = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    h = jnp.einsum('btqk,btkc->btqc', attn, v, precision=hi)
    return x + proj('proj_out', h.reshape(b, t, hh, ww, c))


class Downsample(nn.Module):
  """Per frame: zero-pad right/bottom by 1, 3x3 conv with stride 2."""
  cfg: VidTokConfig

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    return conv2d(x, *ConvParams(c, (3, 3), name='conv')(c), self.cfg,
                  stride=2, padding=((0, 1), (0, 1)))


class Upsample(nn.Module):
  """Per frame: nearest x2, then a 3x3 conv."""
  cfg: VidTokConfig

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
    return conv2d(x, *ConvParams(c, (3, 3), name='conv')(c), self.cfg)


class TimeDownsample(nn.Module):
  """`TimeDownsampleResCausal2x`: frames T -> floor((T - 2) / 2) + 1.

  Output frame j = alpha * mean(x[2j-1], x[2j], x[2j+1]) + (1 - alpha) *
  conv(x)[j], x[-1] = 0 (AvgPool3d on one front zero frame: it divides by 3
  even there), conv = causal 3x3x3 with time stride 2 (one front zero frame).
  """
  cfg: VidTokConfig

  @nn.compact
  def __call__(self, x):
    c, t = x.shape[-1], x.shape[1]
    mix = self.param('mix_factor', nn.initializers.constant(2.0), (1,))
    alpha = jax.nn.sigmoid(mix.astype(jnp.float32)).astype(x.dtype)
    n = (t - 2) // 2 + 1
    xp = jnp.pad(x, ((0, 0), (1, 0), (0, 0), (0, 0), (0, 0)))
    avg = (xp[:, 0:2 * n:2] + xp[:, 1:2 * n + 1:2] + xp[:, 2:2 * n + 2:2]) / 3
    conv = causal_conv3d(x, *Wrapped(c, (3, 3, 3), name='conv')(c), self.cfg,
                         time_stride=2)
    return alpha * avg + (1 - alpha) * conv


class TimeUpsample(nn.Module):
  """`TimeUpsampleResCausal2x`: every frame twice (u = x0 x0 x1 x1 ...),
  blended with a causal 3x3x3 conv of u: alpha * u + (1 - alpha) * conv(u).

  conv(u) is computed at the input rate: with a_i = (per-frame 2-D conv of x
  with kernel tap i) and a_i[-1] = 0, conv(u)[2j] = a0[j-1] + a1[j-1] + a2[j]
  and conv(u)[2j+1] = a0[j-1] + a1[j] + a2[j]: one 2-D conv of x to the
  three taps' outputs, half the multiply-adds of convolving u (which is
  never convolved or padded).
  """
  cfg: VidTokConfig

  @nn.compact
  def __call__(self, x):
    b, t, h, w, c = x.shape
    mix = self.param('mix_factor', nn.initializers.constant(2.0), (1,))
    alpha = jax.nn.sigmoid(mix.astype(jnp.float32)).astype(x.dtype)
    kernel, bias = Wrapped(c, (3, 3, 3), name='conv')(c)
    taps = jnp.concatenate(list(kernel.astype(x.dtype)), axis=-1)  # [3,3,C,3C]
    a0, a1, a2 = jnp.split(conv2d(x, taps, None, self.cfg), 3, axis=-1)
    before = lambda y: jnp.pad(y, ((0, 0), (1, 0), (0, 0), (0, 0),
                                   (0, 0)))[:, :t]   # y[j - 1], y[-1] = 0
    a0 = before(a0)
    even = a0 + before(a1) + a2
    odd = a0 + a1 + a2
    conv = jnp.stack([even, odd], axis=2).reshape(b, 2 * t, h, w, c)
    conv = _bias(conv, bias)
    return alpha * jnp.repeat(x, 2, axis=1) + (1 - alpha) * conv


# -------------------------------------------------------------- levels ---
# Containers that only hold a level's blocks: the 2-D block of pair j lives
# in `down_i` / `up_i` and its 1-D partner in `down_temporal_i` /
# `up_temporal_i`, so the forward pass interleaves the two containers.

class Level2D(nn.Module):
  cfg: VidTokConfig
  out: int
  blocks: int
  resample: Any = None  # Downsample | Upsample | None

  def setup(self):
    self.block = [ResnetBlock2D(self.cfg, self.out) for _ in range(self.blocks)]
    if self.resample is Downsample:
      self.downsample = Downsample(self.cfg)
    elif self.resample is Upsample:
      self.upsample = Upsample(self.cfg)

  def res(self, j, x):
    return self.block[j](x)

  def resize(self, x):
    return (self.downsample if self.resample is Downsample
            else self.upsample)(x)


class LevelTime(nn.Module):
  cfg: VidTokConfig
  blocks: int
  resample: Any = None  # TimeDownsample | TimeUpsample | None

  def setup(self):
    self.block = [ResnetBlock1D(self.cfg) for _ in range(self.blocks)]
    if self.resample is TimeDownsample:
      self.downsample = TimeDownsample(self.cfg)
    elif self.resample is TimeUpsample:
      self.upsample = TimeUpsample(self.cfg)

  def res(self, j, x):
    return self.block[j](x)

  def resize(self, x):
    return (self.downsample if self.resample is TimeDownsample
            else self.upsample)(x)


class Mid(nn.Module):
  cfg: VidTokConfig

  def setup(self):
    self.block_1 = ResnetBlock3D(self.cfg)
    self.attn_1 = FrameAttention(self.cfg)
    self.block_2 = ResnetBlock3D(self.cfg)

  def __call__(self, x):
    return self.block_2(self.attn_1(self.block_1(x)))


# ---------------------------------------------------- encoder / decoder ---

class Encoder(nn.Module):
  """`EncoderCausal3DPadding`: video [B, T, H, W, 3] -> moments
  [B, t, H/8, W/8, 2 z]; t = ceil(T / 4) after the front padding."""
  cfg: VidTokConfig

  def setup(self):
    cfg = self.cfg
    self.conv_in = Wrapped(cfg.ch, (3, 3, 3))
    self.down = [Level2D(cfg, cfg.ch * m, cfg.num_res_blocks,
                         Downsample if i in cfg.spatial_ds else None)
                 for i, m in enumerate(cfg.ch_mult)]
    self.down_temporal = [
        LevelTime(cfg, cfg.num_res_blocks,
                  TimeDownsample if i in cfg.tempo_ds and i in cfg.spatial_ds
                  else None) for i in range(cfg.levels)]
    self.mid = Mid(cfg)
    self.norm_out = Norm(cfg.ch * cfg.ch_mult[-1])
    self.conv_out = Wrapped(2 * cfg.z_channels, (3, 3, 3))

  def __call__(self, x):
    cfg = self.cfg
    x = x.astype(cfg.jnp_dtype)
    if x.shape[1] % cfg.time_factor:
      front = jnp.repeat(x[:, :1], cfg.time_factor - 1, axis=1)
      x = jnp.concatenate([front, x], axis=1)
    h = causal_conv3d(x, *self.conv_in(x.shape[-1]), cfg)
    for i in range(cfg.levels):
      for j in range(cfg.num_res_blocks):
        h = self.down[i].res(j, h)
        h = self.down_temporal[i].res(j, h)
      if i in cfg.spatial_ds:
        h = self.down[i].resize(h)
        if i in cfg.tempo_ds:
          h = self.down_temporal[i].resize(h)
    h = self.mid(h)
    h = silu(self.norm_out(h))
    return causal_conv3d(h, *self.conv_out(h.shape[-1]), cfg)


class Decoder(nn.Module):
  """`DecoderCausal3DPadding`: latents [B, t, h, w, z] -> video
  [B, 4 t - 3, 8 h, 8 w, 3] (raw: not clamped, no tanh)."""
  cfg: VidTokConfig

  def setup(self):
    cfg = self.cfg
    top = cfg.ch * cfg.ch_mult[-1]
    self.conv_in = Wrapped(top, (3, 3, 3))
    self.mid = Mid(cfg)
    self.up = [Level2D(cfg, cfg.ch * m, cfg.num_res_blocks + 1,
                       Upsample if i in cfg.spatial_us else None)
               for i, m in enumerate(cfg.ch_mult)]
    self.up_temporal = [
        LevelTime(cfg, cfg.num_res_blocks + 1,
                  TimeUpsample if i in cfg.tempo_us and i in cfg.spatial_us
                  else None) for i in range(cfg.levels)]
    self.norm_out = Norm(cfg.ch * cfg.ch_mult[0])
    self.conv_out = Wrapped(cfg.out_ch, (3, 3, 3))

  def __call__(self, z):
    cfg = self.cfg
    z = z.astype(cfg.jnp_dtype)
    h = causal_conv3d(z, *self.conv_in(z.shape[-1]), cfg)
    h = self.mid(h)
    for i in reversed(range(cfg.levels)):
      for j in range(cfg.num_res_blocks + 1):
        h = self.up[i].res(j, h)
        h = self.up_temporal[i].res(j, h)
      if i in cfg.spatial_us:
        h = self.up[i].resize(h)
        if i in cfg.tempo_us:
          h = self.up_temporal[i].resize(h)
    h = silu(self.norm_out(h))
    h = causal_conv3d(h, *self.conv_out(h.shape[-1]), cfg)
    return h[:, cfg.time_factor - 1:]


class VidTokNet(nn.Module):
  """Encoder + decoder under `encoder/` and `decoder/` (the state dict's
  `encoder.*` / `decoder.*`)."""
  cfg: VidTokConfig

  def setup(self):
    self.encoder = Encoder(self.cfg)
    self.decoder = Decoder(self.cfg)

  def encode(self, video):
    return self.encoder(video)

  def decode(self, latents):
    return self.decoder(latents)

  def __call__(self, video):
    """Both halves (used to create / describe the parameters)."""
    moments = self.encoder(video)
    return self.decoder(moments[..., :self.cfg.z_channels])
