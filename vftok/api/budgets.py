"""Budgets chosen by the content: the fewest tokens per clip (or per latent
frame) that reach a reconstruction target, without sampling.

The quality estimate is the decoder's one-step mean prediction (one Euler
step from pure noise, no guidance: its estimate of E[latents | tokens], the
MSE-optimal output) at each candidate budget, compared with the latents that
were tokenized. Cost: one decoder pass per candidate budget (5 for K = 16),
against `steps` (x2 with guidance) passes for one sampled decode; the tokens
come from one encoder pass. Per-frame budgets read each frame's error at a
budget shared by all frames: with the time-causal decoder a frame depends on
earlier frames' tokens too, so a frame's own budget is an estimate, which
`detokenize(budgets=[B, T])` then decodes exactly.

Targets, in latent space (the pixels are the codec's business):
  target_psnr   dB of the latents' mean square over the error's;
  target_mse    the error's mean square;
  fraction      of the full budget's PSNR gain over the 1-token one
                (1.0: the full budget's quality; 0.0: one token).
"""
from typing import Optional, Sequence

import numpy as np

from vftok.models import tokenizer as tokenizer_lib


def latent_mse(latents, estimate, axes) -> np.ndarray:
  x, y = np.asarray(latents, np.float64), np.asarray(estimate, np.float64)
  return np.mean(np.square(x - y), axis=axes)


def latent_psnr(latents, estimate, axes, mse=None) -> np.ndarray:
  """10 log10(mean(x^2) / mean((x - y)^2)) over `axes` (mse: that error,
  when already computed)."""
  err = latent_mse(latents, estimate, axes) if mse is None else mse
  power = np.mean(np.square(np.asarray(latents, np.float64)), axis=axes)
  return 10 * np.log10(power / np.maximum(err, 1e-20))


def choose_budget(tok, latents, *, target_psnr: Optional[float] = None,
                  target_mse: Optional[float] = None,
                  fraction: Optional[float] = None, per_frame: bool = False,
                  candidates: Sequence[int] = (), seed: int = 0):
  """-> (tokens int32 [B, T, K], budgets int [B] or [B, T]): the smallest
  candidate budget (default: the tokenizer's 1, 2, 4, ..., K) whose one-step
  mean meets the target, else K. Decode with
  tok.detokenize(tokens, budgets=budgets)."""
  given = [v is not None for v in (target_psnr, target_mse, fraction)]
  if sum(given) != 1:
    raise ValueError('choose_budget takes exactly one of target_psnr, '
                     'target_mse and fraction')
  if fraction is not None and not 0.0 <= fraction <= 1.0:
    raise ValueError(f'fraction={fraction} must be in [0, 1]')
  m = tok.config.model
  candidates = sorted({int(k) for k in candidates}) or tokenizer_lib.budgets(m)
  for k in candidates:
    err = tokenizer_lib.budget_error(m, k)
    if err:
      raise ValueError(f'candidates: {err}')
  latents = np.asarray(latents, np.float32)
  tokens = np.asarray(tok.tokenize(latents))
  axes = (2, 3, 4) if per_frame else (1, 2, 3, 4)
  # One noise draw for every candidate: the budgets differ, not the noise.
  noise = np.random.default_rng(seed).standard_normal(
      latents.shape).astype(np.float32)
  psnr, mse = [], []
  for k in candidates:
    mean = np.asarray(tok.detokenize(tokens[:, :, :k], steps=1,
                                     guidance_scale=1.0, noise=noise,
                                     latent_size=latents.shape[2:4]))
    mse.append(latent_mse(latents, mean, axes))
    psnr.append(latent_psnr(latents, mean, axes, mse=mse[-1]))
  psnr, mse = np.stack(psnr), np.stack(mse)          # [candidates, B(, T)]
  if target_psnr is not None:
    ok = psnr >= target_psnr
  elif target_mse is not None:
    ok = mse <= target_mse
  else:
    ok = psnr >= psnr[0] + fraction * (psnr[-1] - psnr[0]) - 1e-9
  ok[-1] = True                                       # else: all K
  first = np.argmax(ok, axis=0)                       # the smallest that meets
  return tokens, np.asarray(candidates)[first]
