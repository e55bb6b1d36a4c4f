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
                (1.0: the full budget's quality; 0.0: one token);
  db_per_token  rate-distortion: the budget maximising estimated PSNR minus
                db_per_token x k. Over many clips this spends tokens where
                they buy the most dB, so it gives the highest mean PSNR for
                its mean token count (a fixed PSNR target instead spends the
                most on clips that cannot reach it).
"""
from typing import Sequence

import numpy as np

from vftok.models import tokenizer as tokenizer_lib


def latent_mse(latents, estimate, axes) -> np.ndarray:
  x, y = np.asarray(latents, np.float64), np.asarray(estimate, np.float64)
  return np.mean(np.square(x - y), axis=axes)


def latent_power(latents, axes) -> np.ndarray:
  return np.mean(np.square(np.asarray(latents, np.float64)), axis=axes)


def psnr_of(power, mse) -> np.ndarray:
  """10 log10(power / mse): the latents' mean square over the error's."""
  return 10 * np.log10(power / np.maximum(mse, 1e-20))


def latent_psnr(latents, estimate, axes) -> np.ndarray:
  """10 log10(mean(x^2) / mean((x - y)^2)) over `axes`."""
  return psnr_of(latent_power(latents, axes),
                 latent_mse(latents, estimate, axes))


TARGETS = ('target_psnr', 'target_mse', 'fraction', 'db_per_token')


def check_target(target) -> None:
  """One clear error unless `target` is exactly one of TARGETS, in range."""
  unknown = sorted(set(target) - set(TARGETS))
  given = [name for name in TARGETS if target.get(name) is not None]
  if unknown or len(given) != 1:
    raise ValueError(f'choose_budget takes exactly one of {", ".join(TARGETS)}'
                     f'; got {sorted(target)}')
  fraction = target.get('fraction')
  if fraction is not None and not 0.0 <= fraction <= 1.0:
    raise ValueError(f'fraction={fraction} must be in [0, 1]')
  if (target.get('db_per_token') or 0.0) < 0:
    raise ValueError(f'db_per_token={target["db_per_token"]} must be >= 0')


class BudgetEstimates:
  """The one-step mean's latent error at every candidate budget, for clips
  tokenized once (per latent frame; a clip's error is its frames' mean).
  pick(**target) then chooses per clip or per frame, for any number of
  targets, at no further cost."""

  def __init__(self, tok, latents, *, candidates: Sequence[int] = (),
               seed: int = 0, tokens=None):
    m = tok.config.model
    self.candidates = (sorted({int(k) for k in candidates})
                       or tokenizer_lib.budgets(m))
    for k in self.candidates:
      err = tokenizer_lib.budget_error(m, k)
      if err:
        raise ValueError(f'candidates: {err}')
    latents = np.asarray(latents, np.float32)
    self.tokens = np.asarray(tok.tokenize(latents) if tokens is None
                             else tokens)
    # One noise draw for every candidate: the budgets differ, not the noise.
    noise = np.random.default_rng(seed).standard_normal(
        latents.shape).astype(np.float32)
    mse = []
    for k in self.candidates:
      mean = np.asarray(tok.detokenize(self.tokens[:, :, :k], steps=1,
                                       guidance_scale=1.0, noise=noise,
                                       latent_size=latents.shape[2:4]))
      mse.append(latent_mse(latents, mean, (2, 3, 4)))
    self.frame_mse = np.stack(mse)                    # [candidates, B, T]
    self.frame_power = latent_power(latents, (2, 3, 4))   # [B, T]

  def errors(self, per_frame: bool):
    """-> (psnr, mse), each [candidates, B] (per_frame: [candidates, B, T])."""
    mse, power = self.frame_mse, self.frame_power
    if not per_frame:       # frames are equal in size: a clip's mean is theirs
      mse, power = mse.mean(axis=-1), power.mean(axis=-1)
    return psnr_of(power, mse), mse

  def pick(self, per_frame: bool = False, **target) -> np.ndarray:
    """-> budgets int [B] (per_frame: [B, T]) for one target (module
    docstring)."""
    check_target(target)
    (psnr, mse), ks = self.errors(per_frame), np.asarray(self.candidates)
    if target.get('db_per_token') is not None:
      gain = psnr - target['db_per_token'] * ks.reshape(
          (-1,) + (1,) * (psnr.ndim - 1))
      return ks[np.argmax(gain, axis=0)]   # ties: the smaller budget
    if target.get('target_psnr') is not None:
      ok = psnr >= target['target_psnr']
    elif target.get('target_mse') is not None:
      ok = mse <= target['target_mse']
    else:
      ok = psnr >= psnr[0] + target['fraction'] * (psnr[-1] - psnr[0]) - 1e-9
    ok[-1] = True                                     # else: all K
    return ks[np.argmax(ok, axis=0)]                  # the smallest that meets


def choose_budget(tok, latents, *, per_frame: bool = False,
                  candidates: Sequence[int] = (), seed: int = 0, **target):
  """-> (tokens int32 [B, T, K], budgets int [B] or [B, T]) for exactly one
  of target_psnr / target_mse / fraction / db_per_token: for the first three
  the smallest candidate budget (default: the tokenizer's 1, 2, 4, ..., K)
  whose one-step mean meets the target, else K. Decode with
  tok.detokenize(tokens, budgets=budgets)."""
  check_target(target)
  est = BudgetEstimates(tok, latents, candidates=candidates, seed=seed)
  return est.tokens, est.pick(per_frame, **target)
