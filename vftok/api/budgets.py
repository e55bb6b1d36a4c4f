"""Budgets chosen by the content: the fewest tokens per clip (or per latent
frame) that reach a reconstruction target, without sampling.

The quality estimate is the decoder's one-step mean prediction (one Euler
step from pure noise, no guidance: its estimate of E[latents | tokens], the
MSE-optimal output) at each candidate budget, compared with the latents that
were tokenized. Cost: one decoder pass per candidate budget (5 for K = 16),
against `steps` (x2 with guidance) passes for one sampled decode; the tokens
come from one encoder pass.

Per-frame budgets are searched jointly, with the decoder in the loop: with
the time-causal decoder a frame is decoded from its own tokens and every
earlier frame's, so a token spent on frame t also serves frames after it,
and reading each frame's error at a budget shared by all frames misses
that. From one token everywhere, each round raises, per clip, one frame's
budget to whichever higher candidate buys the most estimated dB per token
added; the path ends at K everywhere and every target reads its point off
it. Any higher candidate, not only the next: a frame's next step can lose
while the one after gains a lot (measured: 2 tokens worse than 1 and 4 far
better, docs/generation.md), and a search that only looks one step ahead
leaves such a frame at 1 token to the end. Cost: at most T x (candidates - 1)
rounds of one one-step pass per frame and higher candidate: 220-231 passes
per clip measured for T = 5, K = 16 (about 4.5 sampled decodes at the
demo's settings).

The decode noise: a decode is a function of the tokens, the budgets and the
decoder's initial noise, so budgets searched with the noise they will be
decoded from (`noise=`, e.g. tok.clip_noise(ids, seed), which a codec with a
fixed seed knows at both ends) are chosen for that decode; without it the
search draws its own noise (`seed`) and chooses for a decode it has not
seen. Near the full budget's quality the steps are hundredths of a dB, on the
order of what the noise changes, so this matters most at high budgets
(docs/generation.md measures both).

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


def _pick_on(ks, psnr, mse, target):
  """The index of the chosen point along axis 0 of psnr / mse [P, ...]
  (points in increasing cost ks [P, ...]) for one target."""
  if target.get('db_per_token') is not None:
    # ties: the cheaper point
    return np.argmax(psnr - target['db_per_token'] * ks, axis=0)
  if target.get('target_psnr') is not None:
    ok = psnr >= target['target_psnr']
  elif target.get('target_mse') is not None:
    ok = mse <= target['target_mse']
  else:
    ok = psnr >= psnr[0] + target['fraction'] * (psnr[-1] - psnr[0]) - 1e-9
  ok[-1] = True                                       # else: the most tokens
  return np.argmax(ok, axis=0)                        # the cheapest that meets


class BudgetEstimates:
  """The one-step mean's latent error at every candidate budget, for clips
  tokenized once. pick(**target) chooses per clip from them, and per frame
  from the joint search (module docstring; run on the first per-frame pick),
  for any number of targets at no further cost. noise [B, T, H, W, C]: the
  decode's initial noise the budgets are chosen for; None: a draw from seed."""

  def __init__(self, tok, latents, *, candidates: Sequence[int] = (),
               seed: int = 0, tokens=None, noise=None):
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
    # One noise for every candidate: the budgets differ, not the noise.
    if noise is None:
      noise = np.random.default_rng(seed).standard_normal(latents.shape)
    elif np.shape(noise) != latents.shape:
      raise ValueError(f'noise {np.shape(noise)} must have the latents\' '
                       f'shape {latents.shape}')
    noise = np.asarray(noise, np.float32)
    self._tok, self._latents, self._noise = tok, latents, noise
    self.decoder_passes = 0        # one-step decodes of the whole batch
    # frames are equal in size: a clip's mean square is its frames' mean
    self.power = latent_power(latents, (1, 2, 3, 4))              # [B]
    self.mse = np.stack([self._clip_mse(np.full(latents.shape[:2], k))
                         for k in self.candidates])   # [candidates, B]
    self._path = None

  def _clip_mse(self, budgets) -> np.ndarray:
    """The one-step mean's latent MSE per clip at budgets [B, T]."""
    k = int(np.max(budgets))
    self.decoder_passes += 1
    mean = self._tok.detokenize(
        self.tokens[:, :, :k], steps=1, guidance_scale=1.0, noise=self._noise,
        latent_size=self._latents.shape[2:4], budgets=budgets)
    return latent_mse(self._latents, np.asarray(mean), (1, 2, 3, 4))

  def errors(self):
    """-> (psnr, mse) per clip at every candidate, each [candidates, B]."""
    return psnr_of(self.power, self.mse), self.mse

  def frame_path(self):
    """The joint per-frame search (module docstring) -> (budgets int
    [P, B, T], psnr [P, B], mse [P, B]) at its P <= T (candidates - 1) + 1
    points, one token everywhere first, K everywhere last (a clip that gets
    there early repeats its last point)."""
    if self._path is None:
      ks = np.asarray(self.candidates)
      top = len(ks) - 1
      b, t = self.tokens.shape[:2]
      clips = np.arange(b)
      level = np.zeros((b, t), int)             # index into ks, per frame
      mse = self.mse[0]
      points = [(ks[level], mse)]
      while (level < top).any():
        now = psnr_of(self.power, mse)
        gain = np.full(b, -np.inf)
        frame, up, new_mse = np.zeros(b, int), np.zeros(b, int), mse.copy()
        for f in range(t):
          for step in range(1, top + 1):
            open_ = level[:, f] + step <= top
            if not open_.any():
              break
            trial = level.copy()
            trial[open_, f] += step
            trial_mse = self._clip_mse(ks[trial])
            added = (ks[trial[:, f]] - ks[level[:, f]]) / t   # mean tokens
            g = np.where(open_, (psnr_of(self.power, trial_mse) - now)
                         / np.maximum(added, 1e-9), -np.inf)
            better = g > gain                   # ties: the earlier frame
            gain = np.where(better, g, gain)
            frame = np.where(better, f, frame)
            up = np.where(better, step, up)
            new_mse = np.where(better, trial_mse, new_mse)
        level[clips, frame] += up               # 0 for a clip already at K
        mse = new_mse
        points.append((ks[level], mse))
      budgets = np.stack([p[0] for p in points])
      mse = np.stack([p[1] for p in points])
      self._path = budgets, psnr_of(self.power, mse), mse
    return self._path

  def pick(self, per_frame: bool = False, **target) -> np.ndarray:
    """-> budgets int [B] (per_frame: [B, T]) for one target (module
    docstring)."""
    check_target(target)
    if not per_frame:
      psnr, mse = self.errors()
      ks = np.asarray(self.candidates)
      return ks[_pick_on(ks[:, None], psnr, mse, target)]
    budgets, psnr, mse = self.frame_path()
    chosen = _pick_on(budgets.mean(axis=-1), psnr, mse, target)
    return budgets[chosen, np.arange(budgets.shape[1])]


def choose_budget(tok, latents, *, per_frame: bool = False,
                  candidates: Sequence[int] = (), seed: int = 0, noise=None,
                  **target):
  """-> (tokens int32 [B, T, K], budgets int [B] or [B, T]) for exactly one
  of target_psnr / target_mse / fraction / db_per_token, each a clip's
  latent quality: for the first three the smallest candidate budget
  (default: the tokenizer's 1, 2, 4, ..., K) whose one-step mean meets the
  target, else K; per_frame, the first point of the joint per-frame search
  that meets it (module docstring). Decode with
  tok.detokenize(tokens, budgets=budgets), and pass that decode's noise
  here where it is known (module docstring: the decode noise)."""
  check_target(target)
  est = BudgetEstimates(tok, latents, candidates=candidates, seed=seed,
                        noise=noise)
  return est.tokens, est.pick(per_frame, **target)
