"""Fréchet distance between Gaussian fits of two feature sets (FVD, FID, ...).

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))

Everything runs on the host in float64 NumPy (features are small: N x 400 for
I3D logits); JAX without x64 would compute the trace term in float32.

* Covariances are unbiased (ddof = 1), as in the reference FID/FVD code
  (np.cov's default).
* tr((S1 S2)^(1/2)) is computed from the symmetric form: with A = S1^(1/2)
  (eigen-decomposition of S1; eigenvalues below n * eps * max, i.e. round-off,
  and negative ones set to 0),
  S1 S2 is similar to A S2 A, which is symmetric PSD, so
  tr((S1 S2)^(1/2)) = sum_i sqrt(max(lambda_i(A S2 A), 0)). This is exact for
  singular covariances too (fewer samples than dimensions: rank <= N - 1) and
  needs no complex sqrtm. If an eigen-decomposition fails to converge or gives
  non-finite values, eps * I is added to both covariances and it is retried
  (the pytorch-fid fallback).
* FrechetAccumulator streams features batch by batch (count, sum and sum of
  outer products in float64, taken about a shift = the first batch's mean to
  avoid cancellation) and merges across shards/hosts.
"""
from typing import Optional, Tuple

import numpy as np

from vftok.models.pretrained import i3d


def gaussian_stats(feats) -> Tuple[np.ndarray, np.ndarray]:
  """[N, D] features -> (mean [D], unbiased covariance [D, D]) in float64."""
  x = np.asarray(feats, np.float64)
  if x.ndim != 2:
    raise ValueError(f'features must be [N, D], got shape {x.shape}')
  if x.shape[0] < 2:
    raise ValueError('need at least 2 samples for an unbiased covariance, '
                     f'got {x.shape[0]}')
  mu = x.mean(axis=0)
  xc = x - mu
  return mu, xc.T @ xc / (x.shape[0] - 1)


def _psd_eigvals(w: np.ndarray) -> np.ndarray:
  """Eigenvalues of a symmetric PSD matrix with round-off removed: those below
  n * eps * max|w| (numerically zero; negative ones included) become 0, so
  the square roots below do not turn 1e-16 noise into 1e-8 errors."""
  tol = w.shape[0] * np.finfo(np.float64).eps * max(np.max(np.abs(w)), 0.0)
  return np.where(w > tol, w, 0.0)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric PSD matrix."""
  w, v = np.linalg.eigh((s + s.T) / 2)
  return (v * np.sqrt(_psd_eigvals(w))) @ v.T


def trace_sqrt_product(sigma1, sigma2) -> float:
  """tr((sigma1 sigma2)^(1/2)) for symmetric PSD sigma1, sigma2."""
  a = _psd_sqrt(np.asarray(sigma1, np.float64))
  m = a @ np.asarray(sigma2, np.float64) @ a
  w = np.linalg.eigvalsh((m + m.T) / 2)
  return float(np.sum(np.sqrt(_psd_eigvals(w))))


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (
      mu1.shape[0], mu1.shape[0]):
    raise ValueError(f'shape mismatch: mu {mu1.shape} vs {mu2.shape}, '
                     f'sigma {s1.shape} vs {s2.shape}')
  if not all(np.all(np.isfinite(a)) for a in (mu1, mu2, s1, s2)):
    raise ValueError('non-finite mean or covariance (NaN/inf features?)')
  diff = mu1 - mu2
  try:
    tr_sqrt = trace_sqrt_product(s1, s2)
    ok = np.isfinite(tr_sqrt)
  except np.linalg.LinAlgError:
    ok = False
  if not ok:
    offset = eps * np.eye(s1.shape[0])
    tr_sqrt = trace_sqrt_product(s1 + offset, s2 + offset)
  d = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)
  # Round-off can leave a tiny negative number for identical distributions.
  return max(d, 0.0)


def frechet_distance_from_features(feats1, feats2) -> float:
  """Fréchet distance between Gaussian fits of two [N, D] feature sets."""
  return frechet_distance(*gaussian_stats(feats1), *gaussian_stats(feats2))


class FrechetAccumulator:
  """Streaming Gaussian fit: add [B, D] batches, read (mean, covariance).

  Keeps count, sum(x - c) and sum((x - c)(x - c)^T) in float64 with a fixed
  shift c (the first batch's mean), so the result equals the one-shot
  gaussian_stats up to float64 round-off while holding only O(D^2) memory.
  """

  def __init__(self, dim: Optional[int] = None):
    self.dim = dim
    self.count = 0
    self.shift: Optional[np.ndarray] = None
    self.sum: Optional[np.ndarray] = None
    self.sum_outer: Optional[np.ndarray] = None

  def update(self, feats) -> 'FrechetAccumulator':
    x = np.asarray(feats, np.float64)
    if x.ndim != 2:
      raise ValueError(f'features must be [B, D], got shape {x.shape}')
    if x.shape[0] == 0:
      return self
    if self.dim is not None and x.shape[1] != self.dim:
      raise ValueError(f'expected feature dim {self.dim}, got {x.shape[1]}')
    if self.shift is None:
      self.dim = x.shape[1]
      self.shift = x.mean(axis=0)
      self.sum = np.zeros(self.dim)
      self.sum_outer = np.zeros((self.dim, self.dim))
    xc = x - self.shift
    self.count += x.shape[0]
    self.sum += xc.sum(axis=0)
    self.sum_outer += xc.T @ xc
    return self

  def _shifted_to(self, c: np.ndarray):
    """(sum, sum_outer) of this accumulator about another shift c."""
    d = self.shift - c  # x - c = (x - shift) + d
    s = self.sum + self.count * d
    so = (self.sum_outer + np.outer(self.sum, d) + np.outer(d, self.sum)
          + self.count * np.outer(d, d))
    return s, so

  def merge(self, other: 'FrechetAccumulator') -> 'FrechetAccumulator':
    """Adds another accumulator's samples (e.g. from another shard/host)."""
    if other.count == 0:
      return self
    if self.count == 0:
      self.dim, self.count, self.shift = other.dim, other.count, other.shift.copy()
      self.sum, self.sum_outer = other.sum.copy(), other.sum_outer.copy()
      return self
    if other.dim != self.dim:
      raise ValueError(f'feature dims differ: {self.dim} vs {other.dim}')
    s, so = other._shifted_to(self.shift)
    self.count += other.count
    self.sum += s
    self.sum_outer += so
    return self

  def stats(self) -> Tuple[np.ndarray, np.ndarray]:
    """(mean [D], unbiased covariance [D, D]) of everything added."""
    if self.count < 2:
      raise ValueError('need at least 2 samples for an unbiased covariance, '
                       f'got {self.count}')
    m = self.sum / self.count  # mean of x - shift
    cov = (self.sum_outer - self.count * np.outer(m, m)) / (self.count - 1)
    return self.shift + m, (cov + cov.T) / 2

  def distance(self, other: 'FrechetAccumulator') -> float:
    return frechet_distance(*self.stats(), *other.stats())


def fvd(real_feats, fake_feats) -> float:
  """FVD from I3D features ([N, 400] logits of real and of generated /
  reconstructed clips): Fréchet distance of their Gaussian fits. rFVD and
  gFVD differ only in what the second set is."""
  return frechet_distance_from_features(real_feats, fake_feats)


def fvd_from_clips(real_clips, fake_clips, batch_size: int = 8) -> float:
  """FVD between two sets of [N, F, H, W, 3] clips in [0, 255]."""
  return fvd(i3d.i3d_features(real_clips, batch_size),
             i3d.i3d_features(fake_clips, batch_size))
