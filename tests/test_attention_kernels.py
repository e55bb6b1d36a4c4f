"""Every fused attention path equals the XLA reference, outputs and gradients
(w.r.t. q, k, v), for each of vftok's masks; the Pallas kernels run in
interpret mode on CPU. VFTOK_KERNELS_ON_DEVICE=1 runs them compiled on the
accelerator instead (Pallas GPU on a GPU, splash on a TPU, plus cuDNN in
bf16 on a GPU); pytest must then skip tests/conftest.py, which forces the
CPU: `pytest --noconftest` (benchmarks/device_check.sh).

Tolerances: float32 inputs, |fused - xla| <= 2e-5 + 1e-4 |xla| on CPU (seen:
~2e-6; the kernels' online softmax sums in a different order); compiled on a
GPU the kernels' dots may use TF32 (1e-2 relative).
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vftok.models import attention_kernels as ak
from vftok.models import masks

ON_DEVICE = os.environ.get('VFTOK_KERNELS_ON_DEVICE') == '1'
INTERPRET = not ON_DEVICE
PLATFORM = {'pallas_gpu': 'gpu', 'splash': 'tpu', 'cudnn': 'gpu'}


def _skip_unless_runnable(impl):
  if ON_DEVICE and jax.default_backend() != PLATFORM[impl]:
    pytest.skip(f'{impl} runs on {PLATFORM[impl]}, not {jax.default_backend()}')


TOL = dict(atol=2e-3, rtol=1e-2) if ON_DEVICE else dict(atol=2e-5, rtol=1e-4)


def mask_cases(frames, patches, registers):
  """name -> (static mask or None, is_causal), built by vftok's own masks."""
  enc = masks.interleaved(frames, patches, registers, registers_first=False)
  dec = masks.interleaved(frames, patches, registers, registers_first=True)
  repa = masks.patches_only(frames, patches)
  return {
      'encoder': (masks.encoder_mask(enc, enc), False),
      'decoder_stage1': (masks.time_causal_mask(dec, dec), False),
      'decoder_stage2_full': (masks.full_mask(dec, dec), False),
      'repa_head': (masks.time_causal_mask(repa, repa), False),
      'ar_causal': (None, True),
  }


# Pallas GPU: 16 x 16 tiles over 3 frames x (8 patches + 4 registers) = 36
# tokens (3 x 3 tiles, padded); splash needs 128-lane tiles: 3 frames x (32
# patches + 32 registers) = 192 tokens (2 x 2 tiles, padded).
PATHS = {
    'pallas_gpu': dict(block=16, layout=(3, 8, 4), head_dim=16),
    'splash': dict(block=128, layout=(3, 32, 32), head_dim=32),
}
CASES = [(impl, name) for impl in PATHS for name in mask_cases(2, 2, 2)]


def _inputs(length, head_dim, batch=2, heads=2, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  q, k, v, dout = (jax.random.normal(kk, (batch, length, heads, head_dim))
                   for kk in keys)
  # QK-norm'd inputs at the release's 8 / head_dim scale have small logits;
  # scale q up so the softmax is far from uniform and the mask matters.
  return 3 * q, k, v, dout


@pytest.mark.parametrize('impl,name', CASES)
def test_kernel_matches_xla(impl, name):
  _skip_unless_runnable(impl)
  cfg = PATHS[impl]
  mask, causal = mask_cases(*cfg['layout'])[name]
  length = cfg['layout'][0] * sum(cfg['layout'][1:])
  if name == 'repa_head':
    length = cfg['layout'][0] * cfg['layout'][1]
  d = cfg['head_dim']
  # Batch 2 once (the grid's batch axis); 1 elsewhere keeps interpret cheap.
  q, k, v, dout = _inputs(length, d, batch=2 if name == 'encoder' else 1)
  scale = 8.0 / d

  def run(which, **kw):
    f = lambda q, k, v: ak.attention(q, k, v, mask=mask, is_causal=causal,
                                     scale=scale, impl=which, **kw)
    out, vjp = jax.vjp(jax.jit(f), q, k, v)
    return (out, *vjp(dout))

  want = run('xla')
  got = run(impl, block_q=cfg['block'], interpret=INTERPRET)
  for what, g, w in zip(('out', 'dq', 'dk', 'dv'), got, want):
    np.testing.assert_allclose(g, w, err_msg=f'{impl} {name} {what}', **TOL)


@pytest.mark.parametrize('name', ['ar_causal', 'decoder_stage2_full'])
def test_cudnn_matches_xla_on_gpu(name):
  """cuDNN (bf16 only) for the masks it expresses; 2e-2 is bf16's rounding
  of outputs and gradients."""
  if not ON_DEVICE:
    pytest.skip('cuDNN needs an NVIDIA GPU (VFTOK_KERNELS_ON_DEVICE=1)')
  _skip_unless_runnable('cudnn')
  mask, causal = mask_cases(2, 64, 64)[name]
  q, k, v, dout = (x.astype(jnp.bfloat16) for x in _inputs(256, 64))

  def run(which):
    f = lambda q, k, v: ak.attention(q, k, v, mask=mask, is_causal=causal,
                                     scale=8.0 / 64, impl=which)
    out, vjp = jax.vjp(jax.jit(f), q, k, v)
    return (out, *vjp(dout))

  for g, w in zip(run('cudnn'), run('xla')):
    np.testing.assert_allclose(np.asarray(g, np.float32),
                               np.asarray(w, np.float32), atol=2e-2, rtol=2e-2)


def test_tiles_are_skipped():
  """The tests' encoder masks have empty tiles (skipped) and partial ones
  (element mask in-kernel); Pallas GPU's also has fully visible tiles."""
  for impl, cfg in PATHS.items():
    mask, _ = mask_cases(*cfg['layout'])['encoder']
    full, part = ak.block_kinds(mask, cfg['block'], cfg['block'])
    assert (~(full | part)).any() and part.any(), impl
    assert full.any() or impl == 'splash', impl


def test_block_density():
  causal = np.tril(np.ones((64, 64), bool))
  # 4 x 4 tiles of 16: the 10 on or below the diagonal are non-empty.
  assert ak.block_density(causal, 16) == 10 / 16
  assert ak.block_density(np.ones((64, 64), bool), 16) == 1.0
  # Padding: 40 tokens in 16-tiles -> 3 x 3 tiles, all touched by a full mask.
  assert ak.block_density(np.ones((40, 40), bool), 16) == 1.0


def test_mask_kinds():
  lay = masks.interleaved(2, 3, 2, registers_first=False)
  assert ak.mask_kind(None) == 'none'
  assert ak.mask_kind(None, is_causal=True) == 'causal'
  assert ak.mask_kind(masks.full_mask(lay, lay)) == 'none'
  assert ak.mask_kind(np.tril(np.ones((5, 5), bool))) == 'causal'
  assert ak.mask_kind(masks.encoder_mask(lay, lay)) == 'static'
  assert ak.mask_kind(jnp.ones((5, 5), bool)) == 'traced'


def test_unsupported_masks_fail_at_startup():
  lay = masks.interleaved(2, 3, 2, registers_first=False)
  enc = masks.encoder_mask(lay, lay)
  with pytest.raises(ValueError, match="'cudnn' expresses no mask or the causal"):
    ak.check_supported('cudnn', enc, dtype=jnp.bfloat16, where='the encoder')
  with pytest.raises(ValueError, match='bf16/fp16 only'):
    ak.check_supported('cudnn', None, is_causal=True, dtype=jnp.float32)
  ak.check_supported('cudnn', None, is_causal=True, dtype=jnp.bfloat16)
  for impl in ('pallas_gpu', 'splash', 'cudnn'):
    with pytest.raises(ValueError, match='cannot express the traced mask'):
      ak.check_supported(impl, jnp.asarray(enc), where='KV-cache decode')
  empty_row = enc.copy()
  empty_row[0] = False
  with pytest.raises(ValueError, match='sees no key'):
    ak.check_supported('pallas_gpu', empty_row)
  with pytest.raises(ValueError, match='power-of-two head_dim'):
    ak.check_supported('pallas_gpu', enc, head_dim=48)
  with pytest.raises(ValueError, match='must be one of'):
    ak.check_supported('flash', enc)
  # The entry point runs the same check (no kernel is traced).
  x = jnp.zeros((1, len(lay), 1, 16))
  with pytest.raises(ValueError, match='cannot express the traced mask'):
    ak.attention(x, x, x, mask=jnp.asarray(enc), scale=0.5, impl='pallas_gpu')
  # XLA takes every mask, traced included.
  ak.check_supported('xla', jnp.asarray(enc))


# --------------------------------------------------------------------------
# 'xla_sparse': query groups over key spans, plain XLA (every backend).

SPARSE_LAYOUTS = [(3, 8, 4), (5, 16, 16), (2, 7, 3)]   # (frames, patches, K)


@pytest.mark.parametrize('layout', SPARSE_LAYOUTS)
@pytest.mark.parametrize('name', list(mask_cases(2, 2, 2)))
def test_xla_sparse_matches_xla(layout, name):
  """Outputs and gradients equal the dense path for every mask vftok builds,
  at sizes whose frames are not multiples of any tile."""
  mask, causal = mask_cases(*layout)[name]
  frames, patches, registers = layout
  length = frames * (patches if name == 'repa_head' else patches + registers)
  q, k, v, dout = _inputs(length, 16)

  def run(which):
    f = lambda q, k, v: ak.attention(q, k, v, mask=mask, is_causal=causal,
                                     scale=0.5, impl=which)
    out, vjp = jax.vjp(jax.jit(f), q, k, v)
    return (out, *vjp(dout))

  for what, g, w in zip(('out', 'dq', 'dk', 'dv'), run('xla_sparse'),
                        run('xla')):
    np.testing.assert_allclose(g, w, err_msg=f'{name} {layout} {what}',
                               atol=2e-5, rtol=1e-4)


def test_xla_sparse_rows_that_see_nothing_match_xla():
  """A row with no visible key averages every value, as the dense path does;
  cross-attention shapes (Lq != Lk) work too."""
  rng = np.random.default_rng(0)
  mask = rng.random((12, 20)) < 0.3
  mask[3] = False
  q, k, v = (jax.random.normal(kk, (1, n, 2, 8)) for kk, n in
             zip(jax.random.split(jax.random.key(3), 3), (12, 20, 20)))
  got = ak.attention(q, k, v, mask=mask, scale=0.3, impl='xla_sparse')
  want = ak.attention(q, k, v, mask=mask, scale=0.3, impl='xla')
  np.testing.assert_allclose(got, want, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize('name', ['encoder', 'decoder_stage1', 'repa_head'])
def test_query_groups_cover_the_mask_and_skip_empty_blocks(name):
  mask, _ = mask_cases(5, 64, 16)[name]   # frames of 80 tokens (64 for REPA)
  groups = ak.query_groups(mask)
  covered = np.zeros(mask.shape, bool)
  row = 0
  for r0, r1, k0, k1, full in groups:
    assert r0 == row and r1 > r0, 'groups cover the rows in order, once'
    row = r1
    assert not mask[r0:r1, :k0].any() and not mask[r0:r1, k1:].any()
    assert full == bool(mask[r0:r1, k0:k1].all())
    covered[r0:r1, k0:k1] = True
  assert row == mask.shape[0]
  # The time-causal masks are ~40 % empty: most of it is never computed.
  assert ak.sparse_density(mask) < 0.75
  assert ak.sparse_density(mask) == covered.mean()
  # Without a per-group cost every run of equal spans is its own group.
  assert len(ak.query_groups(mask, overhead=0)) >= len(groups)


def test_default_is_xla_sparse_on_cpu_for_static_masks():
  assert jax.default_backend() == 'cpu'
  enc, _ = mask_cases(2, 2, 2)['encoder']
  assert ak.resolve('', enc) == 'xla_sparse'
  assert ak.resolve('', None) == 'xla_sparse'
  assert ak.resolve('', jnp.asarray(enc)) == 'xla'   # traced: dense XLA
  assert ak.resolve('xla', enc) == 'xla'
  with pytest.raises(ValueError, match="'xla_sparse' needs a static mask"):
    ak.check_supported('xla_sparse', jnp.asarray(enc), where='KV decode')
