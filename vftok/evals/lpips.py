"""LPIPS (Zhang et al. 2018, the `lpips` package's v0.1) in JAX, from a local
weights file: the perceptual distance of the paper's Table 8.

    d(x0, x1) = sum_l mean_hw( w_l . (f_l(x0) / |f_l(x0)| - f_l(x1) / |f_l(x1)|)^2 )

f_l: the backbone's ReLU outputs at five depths (AlexNet or VGG-16, the
torchvision `features` layers the package slices), inputs in [-1, 1] scaled
per channel by the package's ScalingLayer; |.|: the L2 norm over channels
(+1e-10); w_l >= 0: the package's linear 1 x 1 layers ('lin<l>').

Weights: one file holding the `lpips.LPIPS` module's state_dict (backbone
and linear layers; nothing is downloaded at run time), written once where
the `lpips` package and torchvision's ImageNet weights are at hand:

    python -c "import lpips, torch; torch.save(
        lpips.LPIPS(net='alex').state_dict(), 'lpips_alex.pt')"

read here without torch (safe_pickle's zip reader) or as .safetensors /
.npz with the same keys. The net (alex / vgg) is read off the keys.
tests/test_lpips.py checks the distance against the package's own code.
"""
import functools
import os
from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from vftok import errors

# The package's ScalingLayer (v0.1): (x - shift) / scale on [-1, 1] inputs.
SHIFT = np.asarray([-.030, -.088, -.188], np.float32)
SCALE = np.asarray([.458, .448, .450], np.float32)

# torchvision `features` layer indices per LPIPS slice: ('conv', index,
# stride, padding) or ('pool', kernel, stride); a ReLU follows every conv.
NETS = {
    'alex': ((('conv', 0, 4, 2),),
             (('pool', 3, 2), ('conv', 3, 1, 2)),
             (('pool', 3, 2), ('conv', 6, 1, 1)),
             (('conv', 8, 1, 1),),
             (('conv', 10, 1, 1),)),
    'vgg': ((('conv', 0, 1, 1), ('conv', 2, 1, 1)),
            (('pool', 2, 2), ('conv', 5, 1, 1), ('conv', 7, 1, 1)),
            (('pool', 2, 2), ('conv', 10, 1, 1), ('conv', 12, 1, 1),
             ('conv', 14, 1, 1)),
            (('pool', 2, 2), ('conv', 17, 1, 1), ('conv', 19, 1, 1),
             ('conv', 21, 1, 1)),
            (('pool', 2, 2), ('conv', 24, 1, 1), ('conv', 26, 1, 1),
             ('conv', 28, 1, 1))),
}
HOW_TO = ("write it where the lpips package is installed: python -c \"import "
          "lpips, torch; torch.save(lpips.LPIPS(net='alex').state_dict(), "
          "'lpips_alex.pt')\" (vftok/evals/lpips.py)")


def _conv_keys(net: str):
  return [(s, spec[1]) for s, layers in enumerate(NETS[net], 1)
          for spec in layers if spec[0] == 'conv']


def _read(path: str) -> Dict[str, np.ndarray]:
  if path.endswith('.safetensors'):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    return load_file(path)
  if path.endswith('.npz'):
    with np.load(path, allow_pickle=False) as f:
      return dict(f)
  from vftok.models.pretrained import safe_pickle  # pylint: disable=g-import-not-at-top
  state = safe_pickle.load_torch_checkpoint(path, opaque_unknown=False)
  return {k: np.asarray(v) for k, v in state.items()}


def read_weights(path: str, field: str = 'lpips_weights'
                 ) -> Tuple[str, Dict[str, np.ndarray]]:
  """-> (net, {name: float32 array}) of an LPIPS state_dict file; one
  errors.InputError naming config.<field> for a missing or unusable file."""
  if not path:
    raise errors.InputError(f'LPIPS needs weights: set config.{field} to a '
                            f'local file; {HOW_TO}')
  if not os.path.isfile(path):
    raise errors.InputError(f'config.{field}={path!r}: no such file; {HOW_TO}')
  try:
    state = _read(path)
  except Exception as e:  # a file that is not a weights file of any kind
    raise errors.InputError(f'config.{field}={path!r}: not an LPIPS weights '
                            f'file ({type(e).__name__}: {e}); {HOW_TO}') from e
  for net in NETS:
    want = [f'net.slice{s}.{i}.{p}' for s, i in _conv_keys(net)
            for p in ('weight', 'bias')]
    if all(k in state for k in want):
      break
  else:
    raise errors.InputError(
        f'config.{field}={path!r}: holds no AlexNet or VGG-16 LPIPS backbone '
        f"(keys like 'net.slice1.0.weight'); {HOW_TO}")
  params = {k: np.asarray(state[k], np.float32) for k in want}
  for l in range(len(NETS[net])):
    # NetLinLayer: [Dropout, Conv] ('model.1') or [Conv] ('model.0').
    key = next((f'lin{l}.model.{i}.weight' for i in (1, 0)
                if f'lin{l}.model.{i}.weight' in state), None)
    if key is None:
      raise errors.InputError(f'config.{field}={path!r}: no linear layer '
                              f"'lin{l}.model.1.weight' (the LPIPS state_dict "
                              f'of lpips.LPIPS(net={net!r})); {HOW_TO}')
    params[f'lin{l}'] = np.asarray(state[key], np.float32)
  return net, params


def _conv(x, w, b, stride: int, pad: int):
  """NHWC x, torch OIHW w."""
  y = jax.lax.conv_general_dilated(
      x, jnp.transpose(w, (2, 3, 1, 0)), (stride, stride),
      ((pad, pad), (pad, pad)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      precision=jax.lax.Precision.HIGHEST)
  return y + b


def _pool(x, kernel: int, stride: int):
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, kernel, kernel, 1),
                               (1, stride, stride, 1), 'VALID')


def features(net: str, params, x):
  """[N, H, W, 3] in [-1, 1] -> the five ReLU outputs (NHWC)."""
  h = (x - SHIFT) / SCALE
  outs = []
  for s, layers in enumerate(NETS[net], 1):
    for spec in layers:
      if spec[0] == 'pool':
        h = _pool(h, spec[1], spec[2])
      else:
        _, i, stride, pad = spec
        h = jax.nn.relu(_conv(h, params[f'net.slice{s}.{i}.weight'],
                              params[f'net.slice{s}.{i}.bias'], stride, pad))
    outs.append(h)
  return outs


def distance(net: str, params, x0, x1):
  """LPIPS per image: [N, H, W, 3] in [-1, 1] (both) -> [N]."""
  unit = lambda f: f / (jnp.sqrt(jnp.sum(f * f, -1, keepdims=True)) + 1e-10)
  total = 0.0
  for l, (f0, f1) in enumerate(zip(features(net, params, x0),
                                   features(net, params, x1))):
    w = params[f'lin{l}'].reshape(-1)  # [1, C, 1, 1] -> [C]
    total = total + jnp.mean(jnp.square(unit(f0) - unit(f1)) @ w, (1, 2))
  return total


class LPIPS:
  """LPIPS of clips: `lp(a, b)` with uint8-range [B, ..., H, W, 3] (0-255)
  -> [B], the mean over each clip's frames (Table 8's video LPIPS)."""

  def __init__(self, path: str, field: str = 'lpips_weights'):
    self.path = path
    self.net, params = read_weights(path, field)
    self.params = jax.tree.map(jnp.asarray, params)
    self._fn = jax.jit(functools.partial(distance, self.net))

  def __call__(self, a, b):
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    if a.shape != b.shape or a.shape[-1] != 3 or a.ndim < 4:
      raise ValueError(f'LPIPS takes two [B, ..., H, W, 3] arrays of one '
                       f'shape, got {a.shape} and {b.shape}')
    frames = a.shape[-3:]
    d = self._fn(self.params, a.reshape((-1,) + frames) / 127.5 - 1.0,
                 b.reshape((-1,) + frames) / 127.5 - 1.0)
    return d.reshape(a.shape[0], -1).mean(axis=1)
