"""Analytic FLOPs of the tokenizer (stage 1, stage 2, tokenize, detokenize) and
the AR model, from their configs: the numerator of MFU.

Counted: every matmul, 2 FLOPs per multiply-add (projections, SwiGLU, adaLN,
embeddings and heads, and attention's QK^T and PV). Not counted: elementwise
work (norms, softmax, activations, the optimizer), which XLA's cost analysis
does count; a benchmark prints both. Attention is counted at the density the
kernel computes: 1.0 for XLA and cuDNN's dense path (every score is computed,
masked ones included), the mask's block density for the block-sparse kernels
(attention_kernels.block_density at their tiles).

Train step = forward + backward, the backward twice the forward's matmuls
(dX and dW), except that inputs which are data (the patches) need no dX.
Rematerialisation and the fused kernels' recomputation of QK^T in their
backward are hardware work, not model work, and are left out (MFU's usual
convention); XLA's count includes the rematerialised forward.
"""
from typing import Dict, Optional

import numpy as np

from vftok.models import ar_config
from vftok.models import attention_kernels
from vftok.models import layers
from vftok.models import masks
from vftok.models import tokenizer as tokenizer_lib


# Dense peak TFLOP/s per device (vendor datasheets): (bf16, float32). The
# float32 figure is what XLA's default precision runs at (TF32 on NVIDIA).
PEAK_TFLOPS = {
    'H100': (989.0, 494.0), 'H200': (989.0, 494.0), 'H800': (989.0, 494.0),
    'A100': (312.0, 156.0), 'L4': (121.0, 60.0), 'B200': (2250.0, 1100.0),
    'TPU v4': (275.0, 275.0), 'TPU v5 lite': (197.0, 197.0),
    'TPU v5e': (197.0, 197.0), 'TPU v5p': (459.0, 459.0),
    'TPU v6 lite': (918.0, 918.0), 'TPU v6e': (918.0, 918.0),
}


def peak_tflops(device_kind: str, dtype: str) -> float:
  """Peak dense TFLOP/s of a device kind in a compute dtype; 0 if unknown."""
  for name, (bf16, f32) in PEAK_TFLOPS.items():
    if name.lower() in device_kind.lower():
      return bf16 if dtype == 'bfloat16' else f32
  return 0.0


def matmul(tokens: int, d_in: int, d_out: int) -> float:
  return 2.0 * tokens * d_in * d_out


def attention_density(mask: Optional[np.ndarray], impl: Optional[str],
                      block: Optional[int] = None,
                      length: Optional[int] = None) -> float:
  """Share of the L x L scores `impl` computes for `mask` (None: causal of
  `length` tokens)."""
  impl = attention_kernels.resolve(impl, mask)
  if impl in ('xla', 'cudnn') and mask is not None:
    return 1.0
  if mask is None:  # causal: XLA masks a dense product; kernels skip tiles
    if impl == 'xla':
      return 1.0
    mask = np.tril(np.ones((length, length), bool))
  if impl == 'xla_sparse':
    return attention_kernels.sparse_density(mask)
  block = block or attention_kernels.DEFAULT_BLOCKS.get(impl, 128)
  return attention_kernels.block_density(mask, block)


def attention_flops(lq: int, lk: int, width: int, density: float) -> float:
  """QK^T and PV over all heads (heads x head_dim = width)."""
  return 2 * matmul(lq, width, lk) * density


def block_flops(tokens: int, width: int, mlp_ratio: float, density: float,
                hidden: Optional[int] = None) -> Dict[str, float]:
  """One pre-norm block (q, k, v, out projections; SwiGLU; self-attention)."""
  hidden = hidden or layers.swiglu_hidden(width, mlp_ratio)
  return {'proj': 4 * matmul(tokens, width, width),
          'mlp': 3 * matmul(tokens, width, hidden),
          'attention': attention_flops(tokens, tokens, width, density)}


def _sum(parts):
  return float(sum(parts.values()))


class TokenizerShapes:
  """Token counts and masks of one clip of a tokenizer config."""

  def __init__(self, m):
    self.m = m
    pt, ph, pw = m.patch_size
    self.t = m.latent_frames // pt
    self.n = (m.latent_size[0] // ph) * (m.latent_size[1] // pw)
    self.k = m.tokens_per_frame
    self.patch_dim = pt * ph * pw * m.latent_channels
    self.codes = len(m.fsq_levels)
    # A grid tokenizer's encoder holds no registers (its tokens are the
    # patches' outputs); its decoder sequence is VideoFlexTok's.
    k_enc = 0 if tokenizer_lib.is_grid(m) else self.k
    enc = masks.interleaved(self.t, self.n, k_enc, registers_first=False)
    dec = masks.interleaved(self.t, self.n, self.k, m.decoder_registers_first)
    repa = masks.patches_only(self.t, self.n)
    self.encoder_mask = masks.encoder_mask(
        enc, enc, tokenizer_lib.encoder_attention(m))
    self.decoder_mask = masks.decoder_mask(m.decoder_attention)(dec, dec)
    self.repa_mask = masks.time_causal_mask(repa, repa)
    self.encoder_length = self.t * (self.n + k_enc)
    self.length = self.t * (self.n + self.k)


def tokenizer_forward(m, impl: Optional[str] = None,
                      block: Optional[int] = None) -> Dict[str, float]:
  """Forward FLOPs per clip: {'encoder', 'decoder', 'repa'} (model config m;
  impl: attention_impl; 'xla' = dense, '' = the backend's default)."""
  s = TokenizerShapes(m)
  l, we, wd = s.length, m.enc_width, m.dec_width
  dens = lambda mask: attention_density(mask, impl, block)
  enc = block_flops(s.encoder_length, we, m.mlp_ratio, dens(s.encoder_mask))
  encoder = (m.enc_depth * _sum(enc) + matmul(s.t * s.n, s.patch_dim, we)
             + matmul(s.t * s.k, we, s.codes))
  dec = block_flops(l, wd, m.mlp_ratio, dens(s.decoder_mask))
  # Per clip, not per token: the time embedding and the adaLN modulations.
  cond = (matmul(1, 256, wd) + matmul(1, wd, wd)
          + m.dec_depth * matmul(1, wd, m.adaln_subsequences * 6 * wd)
          + matmul(1, wd, 2 * wd))
  decoder = (m.dec_depth * _sum(dec) + cond
             + matmul(s.t * s.k, s.codes, wd)          # codes_embed
             + matmul(s.t * s.n, s.patch_dim, wd)      # patch_embed
             + matmul(s.t * s.n, wd, s.patch_dim))     # to_patches
  repa = 0.0
  if m.repa_weight > 0:
    rb = block_flops(s.t * s.n, wd, m.mlp_ratio, dens(s.repa_mask))
    repa = m.repa_depth * _sum(rb) + matmul(s.t * s.n, wd, m.repa_dim)
  return {'encoder': encoder, 'decoder': decoder, 'repa': repa}


def tokenizer_train_step(config, impl: Optional[str] = None,
                         block: Optional[int] = None) -> float:
  """Model FLOPs of one train step (the global batch). Stage 2 (encoder in
  config.optim.freeze) runs the encoder forward only."""
  m = config.model
  s = TokenizerShapes(m)
  f = tokenizer_forward(m, impl, block)
  data_inputs = (matmul(s.t * s.n, s.patch_dim, m.enc_width)
                 + matmul(s.t * s.n, s.patch_dim, m.dec_width))
  if 'encoder' in tuple(config.optim.freeze):
    # The codes are then constants: codes_embed needs no dX either.
    per_clip = f['encoder'] + 3 * (f['decoder'] + f['repa']) - matmul(
        s.t * s.n, s.patch_dim, m.dec_width) - matmul(
            s.t * s.k, s.codes, m.dec_width)
  else:
    per_clip = 3 * _sum(f) - data_inputs
  return per_clip * config.data.global_batch_size


def tokenize(m, impl=None, block=None) -> float:
  """Per clip: the encoder forward."""
  return tokenizer_forward(m, impl, block)['encoder']


def detokenize_step(m, impl=None, block=None, guided: bool = True) -> float:
  """Per clip and Euler step: one decoder forward, two with guidance."""
  return (2 if guided else 1) * tokenizer_forward(m, impl, block)['decoder']


def ar_forward(c, length: int, text_length: int = 0,
               impl: Optional[str] = None, block: Optional[int] = None
               ) -> float:
  """Forward FLOPs of one sequence of `length` tokens (ARConfig c);
  text_length: text tokens (cross-attention keys: + 1 learned null)."""
  w = c.width
  dens = attention_density(None, impl, block, length)
  per_block = _sum(block_flops(length, w, 4.0, dens, hidden=c.mlp_hidden))
  total = c.depth * per_block + matmul(length, w, c.vocab_size)
  if c.text_dim:
    lt = text_length + 1
    cross_blocks = sum(c.has_cross_attn(i) for i in range(c.depth))
    cross = (2 * matmul(length, w, w) + 2 * matmul(lt, w, w)
             + attention_flops(length, lt, w, 1.0))
    total += cross_blocks * cross + matmul(text_length, c.text_dim, w)
  return total


def ar_sample(c, length: int, text_length: int = 0, cfg: bool = False
              ) -> float:
  """Forward FLOPs of sampling one sequence of `length` tokens with the KV
  cache: each token's projections, MLP and output head once, and attention
  of token i over its i + 1 keys (the causal triangle, not the dense L x L
  of training); twice with CFG (a conditional and a null row per sample)."""
  dense = ar_forward(c, length, text_length, 'xla')
  triangle = (length + 1) / (2 * length)
  unused = c.depth * attention_flops(length, length, c.width, 1.0) * (
      1 - triangle)
  return (dense - unused) * (2 if cfg else 1)


def ar_inference(tokenizer_model, c, tokens_per_frame: int, decode_steps: int,
                 guided_decoder: bool, cfg: bool, text_length: int = 0
                 ) -> Dict[str, float]:
  """Inference FLOPs of one generated video (Fig. 12's axis): {'ar': the AR
  model sampling T x n tokens, 'decoder': the flow decoder's Euler steps}.
  The decoder's cost does not fall with n: budgets pad with the mask token
  (as eval_ar decodes them), so it is `decode_steps` full passes, two with
  decoder guidance."""
  length = c.num_frames * tokens_per_frame
  return {'ar': ar_sample(c, length, text_length, cfg),
          'decoder': decode_steps * detokenize_step(
              tokenizer_model, guided=guided_decoder)}


def ar_train_step(config, impl: Optional[str] = None,
                  block: Optional[int] = None) -> float:
  """Model FLOPs of one AR train step (the global batch); the token
  embedding is a lookup and the text embeddings are data."""
  c = ar_config.ARConfig.from_config_dict(config.model)
  n = config.data.tokens_per_frame or c.tokens_per_frame
  lt = config.text.max_length if c.text_dim else 0
  fwd = ar_forward(c, c.num_frames * n, lt, impl, block)
  text_in = matmul(lt, c.text_dim, c.width) if c.text_dim else 0.0
  return (3 * fwd - text_in) * config.data.global_batch_size


def train_step(config, impl: Optional[str] = None,
               block: Optional[int] = None) -> float:
  """Model FLOPs of one train step of the config's job."""
  if config.job == 'train_ar':
    return ar_train_step(config, impl, block)
  return tokenizer_train_step(config, impl, block)


def mask_densities(m, block: int) -> Dict[str, float]:
  """Block densities of a tokenizer config's masks at `block` tiles."""
  s = TokenizerShapes(m)
  return {name: attention_kernels.block_density(mask, block)
          for name, mask in (('encoder', s.encoder_mask),
                             ('decoder', s.decoder_mask),
                             ('repa', s.repa_mask))}
