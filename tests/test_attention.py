"""One attention (models/layers.py) for encoder, decoder, REPA head and AR:
the kernel choice (`model.attention_impl`) leaves params, loss and gradients
unchanged, and no other module computes attention itself."""
import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vftok import training
from vftok.models import ar
from vftok.models import layers
import testing_utils

# The kernels a CPU runs: XLA's dense and block-sparse paths ('' is the
# latter on CPU), and the fused Pallas kernels in interpret
# mode (their own tests: tests/test_attention_kernels.py). cuDNN needs a GPU.
IMPLS = ('xla', '', 'xla_sparse', 'pallas_gpu', 'splash')


def _loss_and_grads(task, params, batch, rng, *extra):
  (loss, _), grads = jax.jit(jax.value_and_grad(task.loss_fn, has_aux=True))(
      params, batch, rng, *extra)
  return loss, grads


def _assert_trees_close(a, b, atol):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(
      np.asarray(x), np.asarray(y), atol=atol, rtol=1e-5), a, b)


@pytest.mark.e2e  # a whole train step / pipeline
def test_tokenizer_attention_impl_keeps_params_loss_and_grads():
  results = []
  for impl in IMPLS:
    c = testing_utils.tiny_tokenizer_config()
    c.model.attention_impl = impl
    task = training.tokenizer_task(c)
    state = jax.jit(task.init_fn)(jax.random.key(0))
    params = jax.tree.map(lambda x: getattr(x, 'value', x), state.params,
                          is_leaf=lambda x: hasattr(x, 'value'))
    m = c.model
    lat = jax.random.normal(jax.random.key(1), (2, m.latent_frames,
                                                *m.latent_size,
                                                m.latent_channels))
    batch = dict(latents=lat, label=jnp.zeros((2,), jnp.int32))
    loss, grads = _loss_and_grads(task, params, batch, jax.random.key(2),
                                  *task.extra)
    results.append((params, loss, grads))
  for params, loss, grads in results[1:]:
    _assert_trees_close(params, results[0][0], 0)
    np.testing.assert_allclose(loss, results[0][1], rtol=1e-5)
    _assert_trees_close(grads, results[0][2], 1e-5)


@pytest.mark.e2e  # a whole train step / pipeline
@pytest.mark.parametrize('dropout', [0.0, 0.1])
def test_ar_attention_impl_keeps_params_loss_and_grads(dropout):
  results = []
  for impl in (IMPLS if dropout == 0 else ('', 'xla')):
    cfg = testing_utils.load_config('ar_demo')
    cfg.model.update(depth=2, width=32, heads=2, dropout=dropout,
                     attention_impl=impl)
    task = training.ar_task(cfg)
    state = jax.jit(task.init_fn)(jax.random.key(0))
    params = jax.tree.map(lambda x: getattr(x, 'value', x), state.params,
                          is_leaf=lambda x: hasattr(x, 'value'))
    mc = task.model.config
    tokens = jax.random.randint(jax.random.key(1), (2, mc.num_frames, 4), 0,
                                mc.vocab_size)
    batch = dict(tokens=tokens, label=jnp.array([0, 1], jnp.int32))
    results.append((params,) + _loss_and_grads(task, params, batch,
                                               jax.random.key(2)))
  for params, loss, grads in results[1:]:
    _assert_trees_close(params, results[0][0], 0)
    np.testing.assert_allclose(loss, results[0][1], rtol=1e-5)
    _assert_trees_close(grads, results[0][2], 1e-5)


def test_unknown_attention_impl_is_one_clear_error():
  with pytest.raises(ValueError, match="attention_impl='flash9'"):
    layers.attention_implementation('flash9')
  cfg = testing_utils.load_config('ar_demo')
  cfg.model.attention_impl = 'flash9'
  with pytest.raises(ValueError, match="attention_impl='flash9'"):
    training.ar_task(cfg)
  cfg.model.attention_impl, cfg.model.dropout = 'pallas_gpu', 0.1
  with pytest.raises(ValueError, match='has no attention dropout'):
    training.ar_task(cfg)


def test_only_layers_computes_attention():
  """The AR model, encoder, decoder and REPA head all go through
  layers.attend: no other module calls an attention primitive."""
  root = os.path.join(testing_utils.ROOT, 'vftok')
  allowed = {os.path.join('models', 'layers.py'),
             os.path.join('models', 'attention_kernels.py')}
  found = []
  for path in glob.glob(os.path.join(root, '**', '*.py'), recursive=True):
    rel = os.path.relpath(path, root)
    with open(path) as f:
      text = f.read()
    if rel not in allowed and ('dot_product_attention' in text
                               or "'bqhd,bkhd->bhqk'" in text):
      found.append(rel)
  # The pretrained ports (DINOv2, T5, BERT, I3D) reproduce other models'
  # attention exactly; they are not vftok's models.
  assert not [f for f in found if not f.startswith(os.path.join(
      'models', 'pretrained'))], found
  assert ar.ARTransformer  # the AR model is built from layers.Attention
