"""JAX DINOv2 against the transformers reference on tiny random checkpoints.

Inputs are 42x56 pixels while the checkpoints' position tables are 2x2
(image_size 28) and 4x4 (56), so interpolation is exercised both upward
(plain Dinov2, bicubic) and downward in height (registers, antialiased).
Tolerance: 1e-4 absolute in float32 (measured differences are ~1e-6).
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vftok.models.pretrained import dinov2
from vftok.models.pretrained import hf_checkpoint
from vftok.models.pretrained import resample

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
from safetensors.numpy import load_file, save_file  # noqa: E402  (after the skips)

ATOL = 1e-4
_SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
              patch_size=14, layerscale_value=0.5)


def _save(model, path):
  # Random init leaves norms at 1/0 and LayerScale constant; perturb every
  # tensor so a swapped or transposed weight cannot go unnoticed.
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(path, safe_serialization=True)
  return model


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
  torch.manual_seed(0)
  root = tmp_path_factory.mktemp('dinov2')
  plain = _save(transformers.Dinov2Model(transformers.Dinov2Config(
      image_size=28, **_SMALL)).eval(), str(root / 'plain'))
  regs = _save(transformers.Dinov2WithRegistersModel(
      transformers.Dinov2WithRegistersConfig(
          image_size=56, num_register_tokens=2, use_swiglu_ffn=True,
          **_SMALL)).eval(), str(root / 'regs'))
  return {'plain': (plain, str(root / 'plain')),
          'regs': (regs, str(root / 'regs')), 'root': root}


@pytest.mark.parametrize('kind', ['plain', 'regs'])
def test_matches_transformers(checkpoints, kind):
  model, path = checkpoints[kind]
  pixels = np.random.default_rng(1).standard_normal((2, 3, 42, 56)).astype(np.float32)
  with torch.no_grad():
    ref = model(torch.from_numpy(pixels), output_hidden_states=True)
  module, params = dinov2.load_dinov2(path)
  out = jax.jit(lambda p, x: module.apply({'params': p}, x, output_hidden_states=True))(
      params, jnp.asarray(pixels.transpose(0, 2, 3, 1)))
  n_tok = 1 + module.num_register_tokens + 3 * 4
  assert out.last_hidden_state.shape == (2, n_tok, 32)
  assert len(out.hidden_states) == len(ref.hidden_states) == 3
  diffs = [np.abs(np.asarray(out.last_hidden_state) - ref.last_hidden_state.numpy()).max()]
  diffs += [np.abs(np.asarray(a) - b.numpy()).max()
            for a, b in zip(out.hidden_states, ref.hidden_states)]
  print(f'{kind}: max abs diff per output {diffs}')
  assert max(diffs) < ATOL, diffs


def test_prefixed_checkpoint(checkpoints, tmp_path):
  # Task-head checkpoints (e.g. Dinov2ForImageClassification) keep 'dinov2.'.
  _, path = checkpoints['plain']
  weights = load_file(os.path.join(path, 'model.safetensors'))
  save_file({'dinov2.' + k: v for k, v in weights.items()},
            str(tmp_path / 'model.safetensors'))
  with open(os.path.join(path, 'config.json')) as f, \
      open(tmp_path / 'config.json', 'w') as g:
    g.write(f.read())
  _, want = dinov2.load_dinov2(path)
  _, got = dinov2.load_dinov2(str(tmp_path))
  jax.tree.map(np.testing.assert_array_equal, got, want)


def test_errors(checkpoints, tmp_path):
  _, path = checkpoints['plain']
  with pytest.raises(hf_checkpoint.CheckpointError, match='config.json'):
    dinov2.load_dinov2(str(tmp_path))
  (tmp_path / 'config.json').write_text(json.dumps(
      {'model_type': 'bert', 'hidden_size': 32}))
  save_file({'w': np.zeros(2, np.float32)}, str(tmp_path / 'model.safetensors'))
  with pytest.raises(hf_checkpoint.CheckpointError, match='not a DINOv2'):
    dinov2.load_dinov2(str(tmp_path))
  weights = load_file(os.path.join(path, 'model.safetensors'))
  del weights['encoder.layer.1.norm2.bias']
  save_file(weights, str(tmp_path / 'model.safetensors'))
  with open(os.path.join(path, 'config.json')) as f:
    (tmp_path / 'config.json').write_text(f.read())
  with pytest.raises(hf_checkpoint.CheckpointError, match='layer.1.norm2.bias'):
    dinov2.load_dinov2(str(tmp_path))


def test_resample_matrices():
  # Area rows average whole covered patches; every row is a partition of 1.
  np.testing.assert_allclose(resample.area_or_linear_matrix(4, 2),
                             [[.5, .5, 0, 0], [0, 0, .5, .5]])
  for n_in, n_out in ((16, 5), (3, 7), (1, 4)):
    np.testing.assert_allclose(
        resample.area_or_linear_matrix(n_in, n_out).sum(1), 1, rtol=1e-6)
  # At the checkpoint's own grid HF skips interpolation; both kernels are
  # then the identity, so no special case is needed.
  for aa in (False, True):
    np.testing.assert_allclose(resample.bicubic_matrix(5, 5, aa), np.eye(5),
                               atol=1e-7)


@pytest.mark.parametrize('kind,layer', [('plain', None), ('regs', 1)])
def test_patch_feature_fn(checkpoints, kind, layer):
  _, path = checkpoints[kind]
  fn = dinov2.make_patch_feature_fn(path, layer=layer, grid_hw=(2, 3),
                                    image_size=(28, 42))
  frames = np.random.default_rng(2).integers(0, 256, (2, 3, 40, 50, 3), np.uint8)
  # Closed-over params, and explicit ones (the path for big models).
  args = (fn.params,) if layer is None else ()
  feats = jax.jit(fn)(jnp.asarray(frames), *args)
  assert feats.shape == (2, 3, 6, 32) and feats.dtype == jnp.float32
  assert np.isfinite(np.asarray(feats)).all()
  assert float(jnp.std(feats)) > 0
  with pytest.raises(ValueError, match='multiples'):
    dinov2.make_patch_feature_fn(path, image_size=30)


def test_rfid_frame_features_are_dinov2_cls_tokens(checkpoints):
  """The built-in rFID features (evals/frame_scores.py): each uint8 frame
  ImageNet-normalised, the reference model's final CLS token."""
  from vftok.evals import frame_scores  # pylint: disable=g-import-not-at-top
  model, path = checkpoints['plain']
  frames = np.random.default_rng(2).integers(0, 256, (3, 28, 28, 3),
                                             dtype=np.uint8)
  assert callable(frame_scores.make_frame_features('', path))  # the default
  ours = frame_scores.dinov2_frame_features(path, image_size=28, batch_size=2)(
      frames)
  x = (frames / 255.0 - np.asarray(dinov2.IMAGENET_MEAN)) / np.asarray(
      dinov2.IMAGENET_STD)
  with torch.no_grad():
    ref = model(torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32)))
  np.testing.assert_allclose(ours, ref.last_hidden_state[:, 0].numpy(),
                             atol=ATOL)
