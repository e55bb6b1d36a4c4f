"""LPIPS in JAX (vftok/evals/lpips.py) against the reference `lpips`
package's own computation, given the same weights.

The package builds its backbone with torchvision, which does not load beside
the CPU torch wheel (and its PyPI dependency would replace that torch), so
`lpips` is installed without dependencies (.ci/run, README) and
`torchvision.models` is stubbed here: `alexnet` / `vgg16` return torch
modules whose `features` have torchvision's layer layout (transcribed from
torchvision/models/alexnet.py and vgg.py), randomly initialised, as the
package's `pnet_rand=True`. Everything else — the scaling layer, slicing,
channel normalisation, the linear layers (the real calibrated ones shipped in
the lpips wheel) and the averaging — is the package's own code.
"""
import sys
import types

import numpy as np
import pytest
import torch

from vftok import errors
from vftok.evals import lpips as lpips_jax


def _alexnet_features():
  nn = torch.nn
  return nn.Sequential(
      nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(True),
      nn.MaxPool2d(kernel_size=3, stride=2),
      nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(True),
      nn.MaxPool2d(kernel_size=3, stride=2),
      nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(True),
      nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(True),
      nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(True),
      nn.MaxPool2d(kernel_size=3, stride=2))


def _vgg16_features():
  layers, c = [], 3
  for v in (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512,
            'M', 512, 512, 512, 'M'):
    if v == 'M':
      layers.append(torch.nn.MaxPool2d(kernel_size=2, stride=2))
    else:
      layers += [torch.nn.Conv2d(c, v, kernel_size=3, padding=1),
                 torch.nn.ReLU(True)]
      c = v
  return torch.nn.Sequential(*layers)


@pytest.fixture(scope='module')
def reference_lpips():
  """The lpips package, imported with torchvision.models stubbed."""
  def model(make):
    def build(pretrained=False, **unused):
      assert not pretrained, 'the test builds random backbones only'
      return types.SimpleNamespace(features=make())
    return build
  models = types.ModuleType('torchvision.models')
  models.alexnet, models.vgg16 = model(_alexnet_features), model(
      _vgg16_features)
  tv = types.ModuleType('torchvision')
  tv.models = models
  saved = {k: sys.modules.get(k) for k in ('torchvision', 'torchvision.models')}
  sys.modules.update({'torchvision': tv, 'torchvision.models': models})
  try:
    import lpips  # pylint: disable=g-import-not-at-top
    yield lpips
  finally:
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k, None)
      else:
        sys.modules[k] = v


@pytest.mark.parametrize('net', ['alex', 'vgg'])
def test_lpips_matches_the_reference_package(reference_lpips, net, tmp_path):
  torch.manual_seed(0)
  ref = reference_lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
  path = tmp_path / f'lpips_{net}.pt'
  torch.save(ref.state_dict(), path)
  rng = np.random.default_rng(0)
  # Clips: smooth random images and (clip 0) a noisy copy, (clip 1) others.
  smooth = lambda: np.kron(rng.integers(0, 256, (3, 8, 8, 3)),
                           np.ones((1, 8, 8, 1)))
  a = np.stack([smooth(), smooth()]).astype(np.uint8)
  b = np.stack([np.clip(a[0] + rng.normal(0, 30, a[0].shape), 0, 255),
                smooth()]).astype(np.uint8)
  ours = np.asarray(lpips_jax.LPIPS(str(path))(a, b))
  to_torch = lambda x: torch.from_numpy(
      x.reshape(-1, 64, 64, 3).astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2)
  with torch.no_grad():
    want = ref(to_torch(a), to_torch(b)).reshape(2, 3).mean(1).numpy()
  assert want.min() > 0.01                 # a real distance, not ~0
  np.testing.assert_allclose(ours, want, atol=1e-4, rtol=0)
  same = np.asarray(lpips_jax.LPIPS(str(path))(a, a))
  np.testing.assert_allclose(same, 0.0, atol=1e-6)


def test_lpips_weights_errors_name_the_field_and_the_fix(tmp_path):
  with pytest.raises(errors.InputError, match='LPIPS needs weights'):
    lpips_jax.LPIPS('')
  with pytest.raises(errors.InputError, match='no such file'):
    lpips_jax.LPIPS(str(tmp_path / 'missing.pt'))
  bad = tmp_path / 'bad.npz'
  np.savez(bad, foo=np.zeros(3))
  with pytest.raises(errors.InputError, match='no AlexNet or VGG-16'):
    lpips_jax.LPIPS(str(bad))
  junk = tmp_path / 'junk.pt'
  junk.write_bytes(b'not a checkpoint')
  with pytest.raises(errors.InputError, match='not an LPIPS weights file'):
    lpips_jax.LPIPS(str(junk))
