"""Tokenizer API: shapes, any token budget, and clear errors on bad input."""
import os
import subprocess
import sys

import numpy as np
import pytest

import vftok
import testing_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def tok():
  return vftok.Tokenizer.from_config(testing_utils.tiny_tokenizer_config(), seed=0)


def latents(b=2, t=3, seed=0):
  return np.random.default_rng(seed).normal(size=(b, t, 4, 4, 4)).astype(np.float32)


def test_shapes_and_any_budget(tok):
  assert tok.latent_shape == (3, 4, 4, 4) and tok.tokens_per_frame == 4
  tokens = tok.tokenize(latents())
  assert tokens.shape == (2, 3, 4) and tokens.dtype == np.int32
  assert np.all((np.asarray(tokens) >= 0) & (np.asarray(tokens) < 64000))
  for k in (1, 2, 3, 4):
    out = tok.detokenize(tokens[:, :, :k], steps=2)
    assert out.shape == (2, 3, 4, 4, 4) and np.all(np.isfinite(out))
  # Deterministic for a seed, different across seeds.
  a = tok.detokenize(tokens, steps=2, seed=1)
  np.testing.assert_array_equal(a, tok.detokenize(tokens, steps=2, seed=1))
  assert not np.allclose(a, tok.detokenize(tokens, steps=2, seed=2))
  # Guidance runs the unconditional branch too and stays finite.
  assert np.all(np.isfinite(tok.detokenize(tokens, steps=2, guidance_scale=2.0)))


def test_tokenize_is_deterministic_and_prefix_causal(tok):
  x = latents()
  full = np.asarray(tok.tokenize(x))
  np.testing.assert_array_equal(full, np.asarray(tok.tokenize(x)))
  np.testing.assert_array_equal(full[:, :2], np.asarray(tok.tokenize(x[:, :2])))


def test_any_latent_size_equals_a_tokenizer_built_for_it(tok):
  """Latents of another (here non-square) size go through the same params
  as through a tokenizer configured for that size."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  c = ml_collections.ConfigDict(tok.config.to_dict())
  c.model.latent_size = (6, 2)
  native = vftok.Tokenizer(c, tok.params)
  x = np.random.default_rng(3).normal(size=(2, 3, 6, 2, 4)).astype(np.float32)
  tokens = np.asarray(tok.tokenize(x))
  np.testing.assert_array_equal(tokens, np.asarray(native.tokenize(x)))
  out = tok.detokenize(tokens, steps=2, seed=4, latent_size=(6, 2))
  assert out.shape == x.shape
  np.testing.assert_array_equal(out, native.detokenize(tokens, steps=2, seed=4))


def test_budgets_per_clip_and_per_latent_frame(tok):
  """detokenize(budgets=): k per clip equals decoding each clip at its k;
  k per frame with all K up to frame s gives the full decode's frames <= s
  (the time-causal decoder; fixed noise, no guidance), and ids past a
  frame's budget (-1 padding) are ignored."""
  assert tok.config.model.decoder_attention == 'time_causal'
  # Off the adaLN-Zero init (whose decoder ignores its registers).
  tok = testing_utils.perturbed(vftok.Tokenizer(tok.config, tok.params))
  x = latents()
  tokens = np.asarray(tok.tokenize(x))            # [2, 3, 4]
  noise = np.random.default_rng(5).normal(size=x.shape).astype(np.float32)
  kw = dict(steps=2, noise=noise, guidance_scale=1.0)
  per_clip = np.asarray(tok.detokenize(tokens, budgets=np.array([1, 4]), **kw))
  for i, k in enumerate((1, 4)):
    alone = tok.detokenize(tokens[i:i + 1, :, :k], steps=2,
                           noise=noise[i:i + 1], guidance_scale=1.0)
    np.testing.assert_allclose(per_clip[i:i + 1], alone, atol=1e-5)
  full = np.asarray(tok.detokenize(tokens, **kw))
  ks = np.array([[4, 4, 1], [4, 2, 2]])
  padded = tokens.copy()
  padded[0, 2, 1:] = -1                           # past frame 2's budget of 1
  mixed = np.asarray(tok.detokenize(padded, budgets=ks, **kw))
  np.testing.assert_array_equal(mixed[0, :2], full[0, :2])
  np.testing.assert_array_equal(mixed[1, :1], full[1, :1])
  assert not np.allclose(mixed[0, 2], full[0, 2])   # the mask token there
  for budgets, match in ((np.array([1, 2, 3]), r'\[B\] = \(2,\)'),
                         (np.array([1, 5]), r'outside \[1, 4\]'),
                         (np.array([1.0, 2.0]), 'integers')):
    with pytest.raises(ValueError, match=match):
      tok.detokenize(tokens, budgets=budgets, **kw)


def test_choose_budget_is_the_smallest_that_meets_the_target(tok):
  """Per clip: the chosen budget's one-step mean (same noise) reaches the
  latent PSNR target and the next smaller candidate's does not; extreme
  targets give 1 and K; per frame gives [B, T] budgets that decode."""
  from vftok.api import budgets  # pylint: disable=g-import-not-at-top
  tok = testing_utils.perturbed(vftok.Tokenizer(tok.config, tok.params))
  x = latents()
  noise = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
  tokens = np.asarray(tok.tokenize(x))
  psnr = {k: budgets.latent_psnr(x, tok.detokenize(
      tokens[:, :, :k], steps=1, guidance_scale=1.0, noise=noise), (1, 2, 3, 4))
          for k in (1, 2, 4)}
  target = float(np.median(list(psnr.values())))
  got_tokens, chosen = tok.choose_budget(x, target_psnr=target)
  np.testing.assert_array_equal(got_tokens, tokens)
  for i, k in enumerate(chosen):
    assert psnr[k][i] >= target or k == 4
    smaller = [c for c in (1, 2, 4) if c < k]
    if smaller:
      assert psnr[smaller[-1]][i] < target
  assert set(tok.choose_budget(x, fraction=0.0)[1]) == {1}
  assert set(tok.choose_budget(x, target_psnr=1e3)[1]) == {4}
  _, per_frame = tok.choose_budget(x, target_psnr=target, per_frame=True)
  assert per_frame.shape == tokens.shape[:2]
  out = tok.detokenize(tokens, budgets=per_frame, steps=1)
  assert out.shape == x.shape
  # Rate-distortion: argmax of PSNR - db_per_token * k (0: the best PSNR).
  best = np.argmax(np.stack([psnr[k] for k in (1, 2, 4)]), axis=0)
  np.testing.assert_array_equal(tok.choose_budget(x, db_per_token=0.0)[1],
                                np.array([1, 2, 4])[best])
  assert set(tok.choose_budget(x, db_per_token=1e6)[1]) == {1}
  for bad in (dict(target_psnr=1.0, fraction=0.5), dict(psnr=3.0), {}):
    with pytest.raises(ValueError, match='exactly one of'):
      tok.choose_budget(x, **bad)
  with pytest.raises(ValueError, match='db_per_token=-1'):
    tok.choose_budget(x, db_per_token=-1.0)


def test_per_frame_search_raises_the_frame_that_buys_the_most(tok):
  """The joint per-frame search: from 1 token everywhere to K everywhere,
  each point raises one frame of each clip to the higher candidate, of any
  frame and any higher candidate, whose decode (recomputed here from the
  noise it was given) gains the most latent dB per token; a target picks
  the first point that meets it."""
  from vftok.api import budgets  # pylint: disable=g-import-not-at-top
  tok = testing_utils.perturbed(vftok.Tokenizer(tok.config, tok.params))
  x = latents()
  noise = np.asarray(tok.clip_noise(np.arange(x.shape[0]), seed=3))
  est = budgets.BudgetEstimates(tok, x, seed=0, noise=noise)
  path, psnr, _ = est.frame_path()
  b, t = x.shape[:2]
  assert 1 + t <= path.shape[0] <= t * 2 + 1     # candidates 1, 2, 4
  assert path.shape[1:] == (b, t)
  assert (path[0] == 1).all() and (path[-1] == 4).all()
  clip_psnr = lambda bud: budgets.latent_psnr(x, tok.detokenize(
      tok.tokenize(x), steps=1, guidance_scale=1.0, noise=noise,
      budgets=bud), (1, 2, 3, 4))
  np.testing.assert_allclose(clip_psnr(path[2]), psnr[2], atol=1e-4)
  for p in range(len(path) - 1):
    raised = (path[p + 1] != path[p]).sum(axis=1)
    done = (path[p] == 4).all(axis=1)         # at K everywhere: stays
    assert (raised[~done] == 1).all() and (raised[done] == 0).all()
    assert (path[p + 1] >= path[p]).all()
  # At point 2, no other raise (any frame, to 2 or 4) gains more dB per
  # token than the chosen one.
  base, now = clip_psnr(path[1]), psnr[2]
  chosen_gain = (now - base) / ((path[2] - path[1]).sum(axis=1) / t)
  for f in range(t):
    for to in (2, 4):
      trial = path[1].copy()
      open_ = trial[:, f] < to
      trial[open_, f] = to
      gain = (clip_psnr(trial) - base) / np.maximum(
          (trial - path[1]).sum(axis=1) / t, 1e-9)
      assert np.all(gain[open_] <= chosen_gain[open_] + 1e-3)
  target = float(np.median(psnr))
  chosen = est.pick(per_frame=True, target_psnr=target)
  for i in range(b):
    first = int(np.argmax(psnr[:, i] >= target))
    if psnr[first, i] >= target:
      np.testing.assert_array_equal(chosen[i], path[first, i])
  best = est.pick(per_frame=True, db_per_token=0.0)
  for i in range(b):
    np.testing.assert_array_equal(best[i], path[np.argmax(psnr[:, i]), i])
  with pytest.raises(ValueError, match=r'noise \(1, 3, 4, 4, 4\) must have '
                     r"the latents' shape \(2, 3, 4, 4, 4\)"):
    budgets.BudgetEstimates(tok, x, noise=noise[:1])


@pytest.mark.parametrize('bad,match', [
    (np.zeros((2, 3, 4, 4)), r'\[B, T, H, W, C\]'),
    (np.zeros((2, 3, 4, 4, 5)), 'channels'),
    (np.zeros((2, 3, 17, 4, 4)), 'position tables cover 16 per axis'),
    (np.zeros((2, 6, 4, 4, 4)), 'registers and position tables cover 5'),
    (np.full((1, 3, 4, 4, 4), np.nan), 'NaN'),
])
def test_tokenize_rejects_bad_latents(tok, bad, match):
  with pytest.raises(ValueError, match=match):
    tok.tokenize(bad)


@pytest.mark.parametrize('bad,match', [
    (np.full((1, 3, 2), 64000), 'outside'),
    (np.full((1, 3, 2), -5), 'outside'),
    (np.zeros((1, 3, 5), np.int32), r'5 tokens per latent frame is outside \[1, 4\]'),
    (np.zeros((1, 3, 0), np.int32), 'tokens per latent frame'),
    (np.zeros((3, 2), np.int32), r'\[B, T, k\]'),
])
def test_detokenize_rejects_bad_tokens(tok, bad, match):
  with pytest.raises(ValueError, match=match):
    tok.detokenize(bad, steps=1)


def test_a_directory_without_config_is_not_a_workdir(tmp_path):
  with pytest.raises(ValueError, match='not a train_tokenizer workdir: it has no config.json'):
    vftok.Tokenizer.from_checkpoint(str(tmp_path))


@pytest.mark.e2e
def test_unknown_config_key_is_rejected(tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'vftok.main', '--config=configs/demo.py',
       f'--workdir={tmp_path}', '--config.model.no_such_key=1'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert "unknown config key 'model.no_such_key'" in proc.stderr
  assert 'Traceback' not in proc.stderr  # one line, not a stack
  assert not os.listdir(tmp_path)  # nothing written
