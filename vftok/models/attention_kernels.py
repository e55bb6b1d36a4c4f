"""Attention kernels behind one entry point, chosen by `model.attention_impl`.

  out = attention(q, k, v, mask=..., is_causal=..., scale=..., impl=...)

q, k, v [B, L, heads, head_dim] (jax.nn.dot_product_attention's layout);
`mask` a static NumPy bool [Lq, Lk] shared by batch and heads (the tokenizer's
masks, vftok/models/masks.py), or None; `scale` multiplies q.k (8 / head_dim
in the tokenizer; the caller applies QK-norm before). Implementations:

  'xla':      jax.nn.dot_product_attention with the dense mask (the
              reference; traced masks always take it).
  '':         the backend's fastest measured XLA path (`resolve`):
              'xla_sparse' on CPU (faster than dense at every size measured,
              docs/attention_kernels.md), 'xla' elsewhere.
  'cudnn':     cuDNN flash attention (NVIDIA, bf16/fp16) through
              jax.nn.dot_product_attention; it can express no mask or the
              causal one only, so the tokenizer's masks are refused.
  'splash':    TPU Pallas splash attention; its MultiHeadMask of NumpyMasks
              turns the static mask into a block table, fully masked blocks
              are skipped, partial ones apply the element mask in-kernel.
  'pallas_gpu': the block-sparse flash attention below (Pallas on Triton).
  'xla_sparse': block-sparse attention in plain XLA (any backend, CPU
              first): the static mask's query rows are cut into groups that
              see one contiguous key span (`query_groups`), and each group
              attends densely to its span only, with the element mask where
              the span is not wholly visible. The empty blocks of the
              time-causal masks are never computed. Gradients are XLA's own
              (slices and concatenation).

What 'pallas_gpu' fuses: the forward kernel computes, per (q block, batch,
head), QK^T, the mask, the online softmax and PV in one pass over the key
blocks listed as non-empty for that q block, writing the output and the
row log-sum-exp (f32 [B, H, L]); nothing of size L x L reaches memory.
Fully visible blocks are visited without loading the mask; partial blocks
load an int8 [bq, bk] tile of the static mask. Backward (custom_vjp): two
kernels, dQ (per q block, over its key blocks) and dK/dV (per key block, over
the q blocks that see it), which recompute P from q, k and the log-sum-exp
(FlashAttention-2); only delta = rowsum(dO * O) is a separate XLA reduction.
Every kernel runs in Pallas interpret mode on CPU (the tests do).

Masks the fused kernels cannot express (traced masks of streaming encode and
KV-cache decode, rows that see no key) are refused by `check_supported` with
one ValueError, so a config fails at startup, not with wrong numbers.
"""
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

IMPLS = ('', 'xla', 'xla_sparse', 'cudnn', 'splash', 'pallas_gpu')
FUSED = ('cudnn', 'splash', 'pallas_gpu')
# Default tiles: splash's TPU tiles are multiples of 128 lanes; 64 x 64 keeps a
# Triton program's q, k, v, scores and accumulators in registers / shared mem.
DEFAULT_BLOCKS = {'splash': 128, 'pallas_gpu': 64}
# Finite "minus infinity": exp(NEG - NEG) stays finite (masked lanes are then
# zeroed explicitly), where -inf would give NaN.
NEG = -0.7 * float(np.finfo(np.float32).max)
# A squeezed block dimension: pl.squeezed in current jax (None is its older
# spelling, deprecated there).
_SQ = getattr(pl, 'squeezed', None)


# --------------------------------------------------------------------------
# Masks: kinds, support checks, block tables and densities.

def mask_kind(mask, is_causal: bool = False) -> str:
  """'none' | 'causal' | 'static' (NumPy) | 'traced' (a jax value)."""
  if mask is None:
    return 'causal' if is_causal else 'none'
  if not isinstance(mask, np.ndarray):
    return 'traced'
  m = mask.astype(bool)
  if is_causal:
    m = m & np.tril(np.ones(m.shape, bool))
  if m.all():
    return 'none'
  if m.shape[0] == m.shape[1] and np.array_equal(m, np.tril(np.ones(m.shape, bool))):
    return 'causal'
  return 'static'


def resolve(impl: Optional[str], mask=None) -> str:
  """The kernel `impl` runs: '' becomes 'xla_sparse' on a CPU for a static
  mask or none (the causal one included), else 'xla'."""
  impl = impl or ''
  if impl:
    return impl
  static = mask is None or isinstance(mask, np.ndarray)
  return 'xla_sparse' if static and jax.default_backend() == 'cpu' else 'xla'


def check_supported(impl: Optional[str], mask=None, *, is_causal: bool = False,
                    dtype=None, head_dim: Optional[int] = None,
                    where: str = 'attention'):
  """Raises one ValueError naming what `impl` cannot do with this mask."""
  impl = impl or ''
  if impl not in IMPLS:
    raise ValueError(f"attention_impl={impl!r}: must be one of {IMPLS}")
  if impl in ('', 'xla'):
    return
  kind = mask_kind(mask, is_causal)
  if impl == 'xla_sparse':
    if kind == 'traced':
      raise ValueError(
          f"attention_impl='xla_sparse' needs a static mask; {where} builds "
          "it from a traced position (streaming / KV-cache decode): use "
          "attention_impl='xla' for that path")
    return
  if kind == 'traced':
    raise ValueError(
        f"attention_impl={impl!r} cannot express the traced mask of {where} "
        "(streaming / KV-cache decode builds it from a traced position); use "
        "attention_impl='xla' for that path")
  if impl == 'cudnn':
    if kind == 'static':
      raise ValueError(
          f"attention_impl='cudnn' expresses no mask or the causal mask only; "
          f"{where} needs a block-structured mask (use 'pallas_gpu' on GPU, "
          "'splash' on TPU, or 'xla')")
    if dtype is not None and jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
      raise ValueError("attention_impl='cudnn' computes in bf16/fp16 only "
                       f"({where} runs in {jnp.dtype(dtype).name})")
  if kind == 'static' and not np.asarray(mask).any(axis=-1).all():
    raise ValueError(f'{where}: a mask row sees no key; the fused kernels '
                     'define no output for it (XLA averages all values)')
  if impl == 'pallas_gpu' and head_dim is not None and (
      head_dim < 16 or head_dim & (head_dim - 1)):
    raise ValueError(f"attention_impl='pallas_gpu' needs a power-of-two "
                     f"head_dim >= 16 (Triton tiles), got {head_dim}")


def dense_mask(mask, lq: int, lk: int, is_causal: bool = False) -> np.ndarray:
  """The static bool [lq, lk] mask that `attention` applies."""
  m = np.ones((lq, lk), bool) if mask is None else np.asarray(mask, bool)
  return m & np.tril(np.ones((lq, lk), bool)) if is_causal else m


def _pad_mask(mask: np.ndarray, bq: int, bk: int) -> np.ndarray:
  """Pads to whole blocks: padded keys are hidden; padded query rows see key 0
  only (so no row is empty; their outputs are dropped, their dO is zero)."""
  lq, lk = mask.shape
  out = np.zeros((-(-lq // bq) * bq, -(-lk // bk) * bk), bool)
  out[:lq, :lk] = mask
  out[lq:, 0] = True
  return out


def block_kinds(mask: np.ndarray, block_q: int, block_k: int):
  """-> (full, partial) bool [nq, nk]: blocks wholly visible / partly visible
  (the rest are empty and skipped)."""
  m = _pad_mask(np.asarray(mask, bool), block_q, block_k)
  nq, nk = m.shape[0] // block_q, m.shape[1] // block_k
  tiles = m.reshape(nq, block_q, nk, block_k)
  any_, all_ = tiles.any(axis=(1, 3)), tiles.all(axis=(1, 3))
  return any_ & all_, any_ & ~all_


def block_density(mask, block_q: int, block_k: Optional[int] = None) -> float:
  """Fraction of (q block, k block) pairs with a visible element: the share
  of the dense work a block-sparse kernel does at these tiles."""
  full, part = block_kinds(np.asarray(mask, bool), block_q, block_k or block_q)
  return float((full | part).mean())


def _pack(full: np.ndarray, part: np.ndarray):
  """Per row: [n_full, n_partial, full block ids..., partial block ids...],
  padded to a power-of-two width (Triton block shapes)."""
  nf, npart = max(int(full.sum(1).max()), 1), max(int(part.sum(1).max()), 1)
  width = 1 << (1 + nf + npart).bit_length()   # next power of two >= 2+nf+np
  tab = np.zeros((full.shape[0], width), np.int32)
  for r in range(full.shape[0]):
    f, p = np.flatnonzero(full[r]), np.flatnonzero(part[r])
    tab[r, :2] = len(f), len(p)
    tab[r, 2:2 + len(f)] = f
    tab[r, 2 + nf:2 + nf + len(p)] = p
  return tab, nf


# --------------------------------------------------------------------------
# Block-sparse attention in XLA: query groups over contiguous key spans.

# Cost of one group, in units of (query row x key) products: its rows x its
# span, plus GROUP_OVERHEAD_ROWS x span for reading the span's keys and
# values and launching the group's ops. 32 rows keeps per-register groups of
# the encoder mask from splitting into K one-row groups.
GROUP_OVERHEAD_ROWS = 32


def _row_spans(mask: np.ndarray):
  """Per query row the first and one-past-last visible key; a row that sees
  no key spans every key (the dense path averages all values there)."""
  lq, lk = mask.shape
  seen = mask.any(axis=1)
  lo = np.where(seen, mask.argmax(axis=1), 0)
  hi = np.where(seen, lk - mask[:, ::-1].argmax(axis=1), lk)
  return lo, hi


@functools.lru_cache(maxsize=64)
def _groups_cached(mask_bytes: bytes, shape, overhead: int):
  mask = np.frombuffer(mask_bytes, bool).reshape(shape)
  lo, hi = _row_spans(mask)
  # Runs of rows with one span; the optimal cut into groups of whole runs by
  # dynamic programming (runs number ~2 per frame plus one per register).
  change = np.flatnonzero((np.diff(lo) != 0) | (np.diff(hi) != 0)) + 1
  starts = np.concatenate([[0], change])
  ends = np.concatenate([change, [shape[0]]])
  n = len(starts)
  best = np.full(n + 1, np.inf)
  best[0], cut = 0.0, np.zeros(n + 1, int)
  run_lo, run_hi = lo[starts], hi[starts]
  for j in range(1, n + 1):        # the last group = runs [i, j), every i
    g_lo = np.minimum.accumulate(run_lo[:j][::-1])[::-1]
    g_hi = np.maximum.accumulate(run_hi[:j][::-1])[::-1]
    cost = best[:j] + (ends[j - 1] - starts[:j] + overhead) * (g_hi - g_lo)
    cut[j] = int(np.argmin(cost))
    best[j] = cost[cut[j]]
  groups, j = [], n
  while j > 0:
    i = cut[j]
    r0, r1 = int(starts[i]), int(ends[j - 1])
    k0, k1 = int(lo[r0:r1].min()), int(hi[r0:r1].max())
    groups.append((r0, r1, k0, k1, bool(mask[r0:r1, k0:k1].all())))
    j = i
  return tuple(reversed(groups))


def query_groups(mask, overhead: int = GROUP_OVERHEAD_ROWS):
  """Static bool [Lq, Lk] -> ((r0, r1, k0, k1, full), ...): query rows
  [r0, r1) attend to keys [k0, k1) only (every visible key of those rows is
  inside), densely when `full` (the block is wholly visible), else with the
  mask's block. The groups cover every row once, in order, and minimise the
  computed area plus `overhead` rows x span per group."""
  m = np.ascontiguousarray(np.asarray(mask, bool))
  return _groups_cached(m.tobytes(), m.shape, int(overhead))


def sparse_density(mask, overhead: int = GROUP_OVERHEAD_ROWS) -> float:
  """Share of the dense [Lq, Lk] products that 'xla_sparse' computes."""
  m = np.asarray(mask, bool)
  area = sum((r1 - r0) * (k1 - k0) for r0, r1, k0, k1, _ in
             query_groups(m, overhead))
  return area / m.size


def _xla_sparse(q, k, v, mask, scale):
  """Dense attention per query group over its key span ([B, H, L, D]
  layout once, so each group's dots need no transposes)."""
  qh, kh, vh = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
  outs = []
  for r0, r1, k0, k1, full in query_groups(mask):
    logits = jnp.einsum('bhqd,bhkd->bhqk', qh[:, :, r0:r1], kh[:, :, k0:k1],
                        preferred_element_type=jnp.float32) * scale
    if not full:
      logits = jnp.where(jnp.asarray(mask[r0:r1, k0:k1]), logits,
                         jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    outs.append(jnp.einsum('bhqk,bhkd->bhqd', probs, vh[:, :, k0:k1]))
  out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=2)
  return out.transpose(0, 2, 1, 3)


# --------------------------------------------------------------------------
# Block-sparse flash attention in Pallas (Triton on GPU; interpret on CPU).

def _dot(a, b, trans_a=False, trans_b=False):
  dims = (((0,) if trans_a else (1,)), ((1,) if trans_b else (0,)))
  prec = (lax.Precision.HIGHEST if a.dtype == jnp.float32 else None)
  return lax.dot_general(a, b, (dims, ((), ())), precision=prec,
                         preferred_element_type=jnp.float32)


def _visit(tab_ref, nf, step, carry):
  """Runs step(block, carry, masked) over a row's full, then partial blocks."""
  carry = lax.fori_loop(0, tab_ref[0],
                        lambda j, c: step(tab_ref[2 + j], c, False), carry)
  return lax.fori_loop(0, tab_ref[1],
                       lambda j, c: step(tab_ref[2 + nf + j], c, True), carry)


def _fwd_kernel(tab_ref, q_ref, k_ref, v_ref, m_ref, o_ref, lse_ref, *,
                scale, bq, bk, nf):
  i = pl.program_id(0)
  q = q_ref[...]

  def step(kb, carry, masked):
    acc, m, l = carry
    ks = kb * bk
    s = _dot(q, k_ref[pl.ds(ks, bk), :], trans_b=True) * scale
    if masked:
      keep = m_ref[pl.ds(i * bq, bq), pl.ds(ks, bk)] != 0
      s = jnp.where(keep, s, NEG)
    m_new = jnp.maximum(m, jnp.max(s, axis=-1))
    corr = jnp.exp(m - m_new)
    p = jnp.exp(s - m_new[:, None])
    if masked:  # a row with no visible key here would otherwise add exp(0)
      p = jnp.where(keep, p, 0.)
    v = v_ref[pl.ds(ks, bk), :]
    acc = corr[:, None] * acc + _dot(p.astype(v.dtype), v)
    return acc, m_new, corr * l + jnp.sum(p, axis=-1)

  init = (jnp.zeros((bq, q.shape[-1]), jnp.float32),
          jnp.full((bq,), NEG, jnp.float32), jnp.zeros((bq,), jnp.float32))
  acc, m, l = _visit(tab_ref, nf, step, init)
  safe = jnp.where(l > 0, l, 1.)
  o_ref[...] = (acc / safe[:, None]).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(l > 0, m + jnp.log(safe), 0.)


def _dq_kernel(tab_ref, q_ref, k_ref, v_ref, m_ref, do_ref, lse_ref, dl_ref,
               dq_ref, *, scale, bq, bk, nf):
  i = pl.program_id(0)
  q, do = q_ref[...], do_ref[...]
  lse, delta = lse_ref[...], dl_ref[...]

  def step(kb, dq, masked):
    ks = kb * bk
    k, v = k_ref[pl.ds(ks, bk), :], v_ref[pl.ds(ks, bk), :]
    p = jnp.exp(_dot(q, k, trans_b=True) * scale - lse[:, None])
    if masked:
      p = jnp.where(m_ref[pl.ds(i * bq, bq), pl.ds(ks, bk)] != 0, p, 0.)
    ds = p * (_dot(do, v, trans_b=True) - delta[:, None])
    return dq + _dot(ds.astype(k.dtype), k)

  dq = _visit(tab_ref, nf, step, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _dkv_kernel(tab_ref, q_ref, k_ref, v_ref, m_ref, do_ref, lse_ref, dl_ref,
                dk_ref, dv_ref, *, scale, bq, bk, nf):
  j = pl.program_id(0)
  k, v = k_ref[...], v_ref[...]

  def step(qb, carry, masked):
    dk, dv = carry
    qs = qb * bq
    q, do = q_ref[pl.ds(qs, bq), :], do_ref[pl.ds(qs, bq), :]
    lse, delta = lse_ref[pl.ds(qs, bq)], dl_ref[pl.ds(qs, bq)]
    p = jnp.exp(_dot(q, k, trans_b=True) * scale - lse[:, None])
    if masked:
      p = jnp.where(m_ref[pl.ds(qs, bq), pl.ds(j * bk, bk)] != 0, p, 0.)
    dv = dv + _dot(p.astype(do.dtype), do, trans_a=True)
    ds = p * (_dot(do, v, trans_b=True) - delta[:, None])
    return dk + _dot(ds.astype(q.dtype), q, trans_a=True), dv

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = _visit(tab_ref, nf, step, (zeros, zeros))
  dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _compiler_params(num_warps: int, num_stages: int):
  try:  # the Triton params class was renamed across jax versions
    from jax.experimental.pallas import triton as plgpu
    cls = getattr(plgpu, 'CompilerParams', None) or plgpu.TritonCompilerParams
    return cls(num_warps=num_warps, num_stages=num_stages)
  except (ImportError, AttributeError):
    return None


def _pallas_gpu(q, k, v, mask, scale, bq, bk, interpret, num_warps=4,
                num_stages=2):
  b, lq, h, d = q.shape
  m = _pad_mask(mask, bq, bk)
  lq_p, lk_p = m.shape
  nq, nk = lq_p // bq, lk_p // bk
  full, part = block_kinds(mask, bq, bk)
  row_tab, nf_row = _pack(full, part)
  col_tab, nf_col = _pack(full.T, part.T)
  # NumPy constants, made jax arrays inside the traced functions: a
  # custom_vjp function may not close over values of an enclosing trace.
  mask_i8 = m.astype(np.int8)
  kw = dict(scale=scale, bq=bq, bk=bk)
  call = functools.partial(pl.pallas_call, interpret=interpret,
                           compiler_params=_compiler_params(num_warps,
                                                            num_stages))
  # Grid (tile i, batch bi, head hi); "whole" specs give the kernel the full
  # sequence of one (batch, head), which it slices by the block table.
  tile = lambda n: pl.BlockSpec((_SQ, n, _SQ, d),
                                lambda i, bi, hi: (bi, i, hi, 0))
  whole = lambda n: pl.BlockSpec((_SQ, n, _SQ, d),
                                 lambda i, bi, hi: (bi, 0, hi, 0))
  row = lambda n: pl.BlockSpec((_SQ, _SQ, n), lambda i, bi, hi: (bi, hi, i))
  whole_row = lambda n: pl.BlockSpec((_SQ, _SQ, n),
                                     lambda i, bi, hi: (bi, hi, 0))
  tab_spec = lambda t: pl.BlockSpec((_SQ, t.shape[1]),
                                    lambda i, bi, hi: (i, 0))
  mask_spec = pl.BlockSpec((lq_p, lk_p), lambda i, bi, hi: (0, 0))

  def forward(q, k, v):
    o, lse = call(
        functools.partial(_fwd_kernel, nf=nf_row, **kw), grid=(nq, b, h),
        in_specs=[tab_spec(row_tab), tile(bq), whole(lk_p), whole(lk_p),
                  mask_spec],
        out_specs=[tile(bq), row(bq)],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                   jax.ShapeDtypeStruct((b, h, lq_p), jnp.float32)],
        name='block_sparse_attention_fwd')(
            jnp.asarray(row_tab), q, k, v, jnp.asarray(mask_i8))
    return o, lse

  @jax.custom_vjp
  def fn(q, k, v):
    return forward(q, k, v)[0]

  def fn_fwd(q, k, v):
    o, lse = forward(q, k, v)
    return o, (q, k, v, o, lse)

  def fn_bwd(res, do):
    q, k, v, o, lse = res
    delta = jnp.einsum('blhd,blhd->bhl', o.astype(jnp.float32),
                       do.astype(jnp.float32))
    dq = call(
        functools.partial(_dq_kernel, nf=nf_row, **kw), grid=(nq, b, h),
        in_specs=[tab_spec(row_tab), tile(bq), whole(lk_p), whole(lk_p),
                  mask_spec, tile(bq), row(bq), row(bq)],
        out_specs=tile(bq), out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        name='block_sparse_attention_dq')(
            jnp.asarray(row_tab), q, k, v, jnp.asarray(mask_i8), do, lse, delta)
    dk, dv = call(
        functools.partial(_dkv_kernel, nf=nf_col, **kw), grid=(nk, b, h),
        in_specs=[tab_spec(col_tab), whole(lq_p), tile(bk), tile(bk),
                  mask_spec, whole(lq_p), whole_row(lq_p), whole_row(lq_p)],
        out_specs=[tile(bk), tile(bk)],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype),
                   jax.ShapeDtypeStruct(v.shape, v.dtype)],
        name='block_sparse_attention_dkv')(
            jnp.asarray(col_tab), q, k, v, jnp.asarray(mask_i8), do, lse, delta)
    return dq, dk, dv

  fn.defvjp(fn_fwd, fn_bwd)
  pad = lambda x, n: jnp.pad(x, ((0, 0), (0, n - x.shape[1]), (0, 0), (0, 0)))
  return fn(pad(q, lq_p), pad(k, lk_p), pad(v, lk_p))[:, :lq]


# --------------------------------------------------------------------------
# Splash attention (TPU).

@functools.lru_cache(maxsize=32)
def _splash_kernel(mask_bytes: bytes, shape, heads: int, block: int,
                   interpret: bool):
  # Building the block tables walks the mask in Python: once per mask.
  from jax.experimental.pallas.ops.tpu.splash_attention import (
      splash_attention_kernel as sk, splash_attention_mask as sm)
  m = np.frombuffer(mask_bytes, bool).reshape(shape)
  heads_mask = sm.MultiHeadMask([sm.NumpyMask(m) for _ in range(heads)])
  sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                        block_q_dkv=block, block_kv_dkv=block,
                        block_kv_dkv_compute=block, block_q_dq=block,
                        block_kv_dq=block)
  # Concrete even when first built inside a trace: the kernel (and its mask
  # tables) is cached across traces, so it must hold no tracer.
  with jax.ensure_compile_time_eval():
    return sk.make_splash_mha(heads_mask, block_sizes=sizes, head_shards=1,
                              q_seq_shards=1, interpret=interpret)


def _splash(q, k, v, mask, scale, block, interpret):
  b, lq, h, d = q.shape
  m = _pad_mask(mask, block, block)
  kernel = _splash_kernel(np.ascontiguousarray(m).tobytes(), m.shape, h,
                          block, interpret)
  # Splash takes [heads, L, head_dim] per example and does not scale q.
  to_heads = lambda x, n: jnp.pad(
      x, ((0, 0), (0, n - x.shape[1]), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
  out = jax.vmap(kernel)(to_heads(q * jnp.asarray(scale, q.dtype), m.shape[0]),
                         to_heads(k, m.shape[1]), to_heads(v, m.shape[1]))
  return out.transpose(0, 2, 1, 3)[:, :lq]


# --------------------------------------------------------------------------
# The entry point.

def attention(q, k, v, *, mask=None, is_causal: bool = False, scale: float,
              impl: Optional[str] = 'xla', block_q: Optional[int] = None,
              block_k: Optional[int] = None, interpret: bool = False):
  """softmax(scale q k^T + mask) v.

  q [B, Lq, H, D], k and v [B, Lk, H, D]; mask: static NumPy bool [Lq, Lk]
  (any impl), a traced bool [Lq, Lk] or broadcastable to [B, H, Lq, Lk]
  ('xla' / '' only), or None; is_causal: also hide keys after the query (Lq == Lk).
  impl: see the module docstring; block_q / block_k: the fused kernels' tiles;
  interpret: run Pallas kernels in interpret mode (CPU tests).
  """
  impl = resolve(impl, mask)
  check_supported(impl, mask, is_causal=is_causal, dtype=q.dtype,
                  head_dim=q.shape[-1])
  lq, lk = q.shape[1], k.shape[1]
  if impl == 'xla':
    if mask is not None and jnp.ndim(mask) == 2:  # [Lq, Lk]: all b, h
      mask = jnp.asarray(mask, bool)[None, None]
    return jax.nn.dot_product_attention(
        q, k, v, mask=mask, is_causal=is_causal, scale=scale)
  if impl == 'cudnn':
    return jax.nn.dot_product_attention(
        q, k, v, is_causal=mask_kind(mask, is_causal) == 'causal',
        scale=scale, implementation='cudnn')
  m = dense_mask(mask, lq, lk, is_causal)
  if impl == 'xla_sparse':
    return _xla_sparse(q, k, v, m, scale)
  if impl == 'splash':
    return _splash(q, k, v, m, scale, block_q or DEFAULT_BLOCKS['splash'],
                   interpret)
  bq = block_q or DEFAULT_BLOCKS['pallas_gpu']
  return _pallas_gpu(q, k, v, m, scale, bq, block_k or bq, interpret)
