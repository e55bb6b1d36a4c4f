"""Train step (tokenizer stage 1 / 2 or AR): memory, FLOPs, MFU and speed per
device, per attention kernel and remat policy.

  PYTHONPATH=. python benchmarks/bench_train_step.py \
      --config=configs/tokenizer_k600.py --per_device_batch=4 \
      --remat=none,dots,full [--compile_only] [--steps=10] \
      [--stages=1,2] [--attention_impl=xla,pallas_gpu] \
      [--peak_tflops=989] [--markdown=rows.md] [--skip_unavailable]

--stages (tokenizer configs): 1 = the config as given; 2 = the decoder
fine-tuning of defaults.decoder_finetune (encoder frozen and forward only,
full decoder attention). --attention_impl: the `model.attention_impl` values
to compare (vftok/models/attention_kernels.py; default: the config's).
--per_device_batch=0 searches the largest power of two whose compiled memory
(two compiles, linear in the batch) fits 85% of the device's memory, with the
first --attention_impl, and keeps it for the others (same batch: a fair
comparison).

For each `model.remat` policy the jitted train step that `vftok.main` runs
for the config's job (train_tokenizer, or train_ar for configs/ar_*.py;
state sharded over a mesh of all devices by the logical-axis rules, donated)
is compiled for a global batch of per_device_batch x devices, and XLA's
numbers for one device are printed: argument / output / temporary bytes
(temporaries = activations kept for the backward pass + workspace) and FLOPs
per step. Unless --compile_only, the state is then created and --steps steps
on random batches are timed after a warm-up: s/step, latent frames/s and
tokens/s (tokenizer: latent patches, the paper's unit; AR: sequence tokens),
achieved TFLOP/s and MFU against both FLOP counts: the analytic model FLOPs
(vftok/models/flops.py; attention at the kernel's density) and XLA's count
(the compiled step's cost analysis, rematerialisation included). The peak
FLOP/s comes from a table per device kind and compute dtype, or
--peak_tflops. Peak memory: the device's peak bytes in use where it reports
them (GPU/TPU; the process-wide peak so far), else XLA's compiled
arguments + outputs + temporaries.

--compile_only needs no device memory for the state (everything abstract), so
the paper configs' memory can be read off on a CPU host: XLA's CPU buffer
assignment and its memory-minded schedule, a guide to the GPU/TPU ones, not
an exact match. Timed CPU rows compile with XLA:CPU's default schedule, as
training does, so their memory column is larger. CPU times as on a 2-core
AVX2 machine without AVX-512, on any AVX-512 host that can fault on CPUID:
`python benchmarks/as_avx2.py python benchmarks/bench_train_step.py ...`.

A row is one stage x attention_impl x remat policy. A row that fails (out of
memory, a kernel failing: XLA's RuntimeError; any other error) is printed as
'<row>: failed: ...' and the others still run; so is a kernel the model
cannot build (yet) or a mask it cannot express ('failed: unavailable'), unless
--skip_unavailable makes that 'skipped: unavailable' (benchmarks/outcomes.py).
A failed batch search fails its impl's rows. The last line is 'N of M rows
failed: <rows>' and the exit status 1 if any row failed (or none ran), else
'M of M rows ran' (after any 'K of M rows skipped ...' line) and 0.

REPA teachers that need weights on disk ('dinov2', 'i3d_keyframes') are
replaced by 'records' with random features of the teacher's width: the frozen
teacher's forward is not in these numbers.
"""
import os
import sys
import time

# XLA:CPU's default scheduler orders for concurrency and keeps buffers alive
# far longer than a GPU/TPU schedule would (a d4 demo step: 432 MiB of
# temporaries whatever the remat policy); the memory-minded order makes the
# CPU's --compile_only numbers meaningful. Timed rows keep the default, which
# is what `vftok.main` trains with (the demo's step: ~7 % faster). No effect
# on other backends.
if any(arg in ('--compile_only', '--compile_only=true', '--compile_only=True',
               '--compile_only=1') for arg in sys.argv):
  os.environ['XLA_FLAGS'] = (
      os.environ.get('XLA_FLAGS', '') + ' '
      '--xla_cpu_enable_concurrency_optimized_scheduler=false')

from absl import app
from absl import flags
import jax
import numpy as np
from ml_collections import config_flags

from vftok import defaults
from vftok import sharding
from vftok import training
from vftok.models import ar
from vftok.models.pretrained import features
from vftok.models import flops as flops_lib
from vftok.models import tokenizer

from outcomes import Outcomes   # benchmarks/outcomes.py (the script's dir)

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/demo.py', 'A train_tokenizer or train_ar config.',
    lock_config=False)
_BATCH = flags.DEFINE_integer('per_device_batch', 2,
                              'Clips per device; 0: the largest that fits.')
_REMAT = flags.DEFINE_list('remat', ['none', 'dots', 'full'],
                           'model.remat policies to compare.')
_STAGES = flags.DEFINE_list('stages', ['1'], 'Tokenizer stages: 1 and/or 2.')
_IMPLS = flags.DEFINE_list('attention_impl', None,
                           'model.attention_impl values (default: the '
                           "config's); e.g. xla,cudnn,splash,pallas_gpu.")
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps (after a warm-up).')
_COMPILE_ONLY = flags.DEFINE_bool('compile_only', False,
                                  'Memory and FLOPs from XLA only; run nothing.')
_PEAK = flags.DEFINE_float('peak_tflops', 0.0,
                           'Per-device peak TFLOP/s of the compute dtype, for '
                           'MFU (0: flops.PEAK_TFLOPS by device kind).')
_MARKDOWN = flags.DEFINE_string('markdown', '', 'Append result rows to this '
                                'markdown file (benchmarks/device_check.sh).')
_SKIP = flags.DEFINE_bool('skip_unavailable', False,
                         'Report a kernel the model cannot build as skipped, '
                         'not failed (benchmarks/outcomes.py).')

GiB = 2 ** 30


def peak_tflops(device, dtype: str) -> float:
  """--peak_tflops, else the table's figure for this device (0: unknown)."""
  return _PEAK.value or flops_lib.peak_tflops(device.device_kind, dtype)


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else {}
  return float((cost or {}).get('flops', float('nan')))


class Workload:
  """What a job's step needs: the model, its init and step functions, batch
  shapes, extra step arguments and the unit of throughput."""

  def __init__(self, config):
    self.config = config
    # The trainers' own tasks and step (training.py).
    task = training.task_for(config)
    self.model, self.tx, self.init_fn = task.model, task.tx, task.init_fn
    self.step_fn, self.extra = training.make_step(task), task.extra
    if config.job == 'train_ar':
      mc = self.model.config
      n = config.data.tokens_per_frame or mc.tokens_per_frame
      b = config.data.global_batch_size
      self.shapes = {'tokens': ((b, mc.num_frames, n), np.int32)}
      if mc.num_classes:
        self.shapes['label'] = ((b,), np.int32)
      if mc.text_dim:
        lt = config.text.max_length
        self.shapes['text_emb'] = ((b, lt, mc.text_dim), np.float32)
        self.shapes['text_mask'] = ((b, lt), np.bool_)
      self.unit, self.per_step = 'tokens', b * mc.num_frames * n
      self.tokens = self.per_step
    else:
      m = config.model
      b = config.data.global_batch_size
      self.shapes = {
          'latents': ((b, m.latent_frames, *m.latent_size, m.latent_channels),
                      np.float32),
          'label': ((b,), np.int32)}
      gh, gw = tokenizer.grid_hw(m)
      if m.repa_weight > 0 and m.repa_source == 'records':
        self.shapes['repa_features'] = (
            (b, m.latent_frames // m.patch_size[0], gh, gw, m.repa_dim),
            np.float32)
      self.unit, self.per_step = 'latent frames', b * m.latent_frames
      self.tokens = b * (m.latent_frames // m.patch_size[0]) * gh * gw

  def batch(self, mesh, abstract: bool):
    sh = sharding.batch_sharding(mesh)
    if abstract:
      return {k: jax.ShapeDtypeStruct(s, d, sharding=sh)
              for k, (s, d) in self.shapes.items()}
    rng = np.random.default_rng(0)

    def value(shape, dtype):
      if dtype == np.float32:
        return rng.normal(size=shape).astype(dtype)
      if dtype == np.bool_:
        return np.ones(shape, dtype)
      return rng.integers(0, 4, shape).astype(dtype)  # ids valid everywhere
    return {k: jax.device_put(value(s, d), sh)
            for k, (s, d) in self.shapes.items()}


def compile_step(config, mesh):
  w = Workload(config)
  rng = jax.random.key(0)
  abstract_state, state_sh = sharding.abstract_state(w.init_fn, rng, mesh)
  repl = sharding.replicated(mesh)
  jitted = jax.jit(
      w.step_fn,
      in_shardings=(state_sh, sharding.batch_sharding(mesh), repl) +
      (repl,) * len(w.extra),
      out_shardings=(state_sh, repl), donate_argnums=0)
  compiled = jitted.lower(abstract_state, w.batch(mesh, True), rng,
                          *w.extra).compile()
  return w, compiled


def compiled_bytes(compiled) -> float:
  mem = compiled.memory_analysis()
  if mem is None:
    return float('nan')
  return float(mem.argument_size_in_bytes + mem.output_size_in_bytes
               + mem.temp_size_in_bytes)


def largest_batch(config, mesh, cap: int = 256) -> int:
  """Largest power-of-two clips per device whose compiled memory fits 85% of
  the device's (linear fit through batches 1 and 2)."""
  limit = (jax.devices()[0].memory_stats() or {}).get('bytes_limit')
  if not limit:
    return 1
  used = []
  for b in (1, 2):
    config.data.global_batch_size = b * jax.device_count()
    used.append(compiled_bytes(compile_step(config, mesh)[1]))
  slope, fixed = used[1] - used[0], 2 * used[0] - used[1]
  b = 1
  while 2 * b <= cap and fixed + 2 * b * slope <= 0.85 * limit:
    b *= 2
  return b


def bench(config, mesh, policy: str, impl: str, label: str, rows: list):
  config.model.remat = policy
  t0 = time.perf_counter()
  w, compiled = compile_step(config, mesh)
  compile_s = time.perf_counter() - t0
  rng = jax.random.key(0)
  n = jax.device_count()
  xla_flops = _flops(compiled)
  model_flops = flops_lib.train_step(config, impl) / n
  mem = compiled.memory_analysis()
  line = f'{label} remat={policy:5s} compile {compile_s:6.1f} s'
  if mem is not None:
    line += (f' | per device: args {mem.argument_size_in_bytes / GiB:6.2f} GiB,'
             f' out {mem.output_size_in_bytes / GiB:6.2f} GiB,'
             f' temp {mem.temp_size_in_bytes / GiB:7.2f} GiB')
  line += (f' | {xla_flops / 1e12:8.3f} TFLOP/step/device (XLA),'
           f' {model_flops / 1e12:8.3f} (analytic)')
  print(line, flush=True)
  row = dict(what=label, remat=policy, batch=config.data.global_batch_size // n,
             xla_tflop=xla_flops / 1e12, model_tflop=model_flops / 1e12,
             mem_gib=compiled_bytes(compiled) / GiB)
  if _COMPILE_ONLY.value:
    emit(row, rows)
    return

  state, _ = sharding.create_sharded_state(w.init_fn, rng, mesh)
  batch = w.batch(mesh, False)
  state, metrics = compiled(state, batch, rng, *w.extra)  # warm-up
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(_STEPS.value):
    state, metrics = compiled(state, batch, rng, *w.extra)
  jax.block_until_ready((state, metrics))
  dt = (time.perf_counter() - t0) / _STEPS.value
  dtype = config.model.dtype
  peak = peak_tflops(jax.devices()[0], dtype)
  stats = jax.devices()[0].memory_stats() or {}
  mem_gib = stats.get('peak_bytes_in_use', compiled_bytes(compiled)) / GiB
  row.update(ms=dt * 1e3, tokens_s=w.tokens / dt / n, mem_gib=mem_gib,
             mfu_model=model_flops / dt / 1e12 / peak if peak else None,
             mfu_xla=xla_flops / dt / 1e12 / peak if peak else None)
  line = (f'{label} remat={policy:5s} {dt * 1e3:9.1f} ms/step | '
          f'{w.per_step / dt:9.1f} {w.unit}/s | '
          f'{w.tokens / dt / n:10.1f} tokens/s/device | '
          f'{xla_flops / dt / 1e12:7.2f} TFLOP/s/device (XLA)')
  if peak:
    line += (f' | MFU {row["mfu_model"]:.1%} (analytic), '
             f'{row["mfu_xla"]:.1%} (XLA) of {peak:.0f} TFLOP/s')
  line += (f' | peak {mem_gib:.2f} GiB'
           f' ({"device" if "peak_bytes_in_use" in stats else "compiled"})'
           f' | loss {float(metrics["loss"]):.4f}')
  print(line, flush=True)
  emit(row, rows)


MD_HEADER = ('| run | remat | batch/dev | ms/step | tokens/s/dev | TFLOP/step '
             '(analytic / XLA) | MFU analytic | MFU XLA | peak GiB |\n'
             '|---|---|---|---|---|---|---|---|---|\n')


def markdown_row(r) -> str:
  pct = lambda v: '' if v is None else f'{v:.1%}'
  num = lambda k, fmt: format(r[k], fmt) if k in r else ''  # compile-only: ''
  return (f"| {r['what']} | {r['remat']} | {r['batch']} | "
          f"{num('ms', '.1f')} | "
          f"{num('tokens_s', '.0f')} | {r['model_tflop']:.3f} / "
          f"{r['xla_tflop']:.3f} | {pct(r.get('mfu_model'))} | "
          f"{pct(r.get('mfu_xla'))} | {r['mem_gib']:.2f} |\n")


def emit(row, rows):
  """Keeps a result; with --markdown also appends it at once (a run cut off
  by a time limit keeps the rows it finished)."""
  rows.append(row)
  if _MARKDOWN.value:
    new = not os.path.exists(_MARKDOWN.value) or not os.path.getsize(
        _MARKDOWN.value)
    with open(_MARKDOWN.value, 'a') as f:
      f.write((MD_HEADER if new else '') + markdown_row(row))


def describe(config) -> str:
  m = config.model
  if config.job == 'train_ar':
    mc = ar.ARConfig.from_config_dict(config.model)
    return (f'AR d{mc.depth} w{mc.width}, {mc.num_frames} frames x '
            f'{config.data.tokens_per_frame or mc.tokens_per_frame} tokens, '
            f'{"text" if mc.text_dim else "class"}-conditioned, {mc.dtype}')
  structure = tokenizer.token_structure(m)
  params = f'{tokenizer.param_count(m) / 1e6:.1f}M params'
  if structure == 'grid':  # the paper's comparisons: beside VideoFlexTok's
    flex = m.copy_and_resolve_references()
    flex.token_structure, flex.nested_dropout = 'registers', 'pow2'
    params += (f' (VideoFlexTok at these sizes and K: '
               f'{tokenizer.param_count(flex) / 1e6:.1f}M)')
  return (f'{structure} tokenizer, encoder d{m.enc_depth} w{m.enc_width} '
          f'({tokenizer.encoder_attention(m)}), decoder d{m.dec_depth} '
          f'w{m.dec_width}, {m.latent_frames} x {tuple(m.latent_size)} '
          f'latents, patch {tuple(m.patch_size)}, K={m.tokens_per_frame}, '
          f'{m.dtype}; {params}')


def main(argv):
  del argv
  base = _CONFIG.value
  n = jax.device_count()
  ar_job = base.job == 'train_ar'
  if not ar_job and features.needs_frames(base.model):
    base.model.repa_source = 'records'  # teacher weights are not needed here
  mesh = sharding.make_mesh(base.mesh)
  impls = _IMPLS.value or [base.model.get('attention_impl', '') or '']
  stages = ['ar'] if ar_job else _STAGES.value
  print(f'jax {jax.__version__}, {n} x {jax.devices()[0].device_kind}, mesh '
        f'{dict(mesh.shape)}; {describe(base)}', flush=True)
  rows = []
  outcomes = Outcomes(skip_unavailable=_SKIP.value)
  for stage in stages:
    batch = _BATCH.value   # 0: searched with the first impl, kept for the rest
    for impl in impls:
      config = base.copy_and_resolve_references()
      if stage == '2':   # encoder frozen, full decoder attention
        config = defaults.decoder_finetune(config)
      if impl or 'attention_impl' in config.model:
        # (AR configs get the key once the AR model reads it.)
        config.model.attention_impl = impl
      m = config.model
      label = (f'AR d{ar.ARConfig.from_config_dict(config.model).depth}' if ar_job
               else f'd{m.enc_depth}-d{m.dec_depth} stage {stage}'
               ) + f' {impl or "default"}'
      names = [f'{label} remat={p}' for p in _REMAT.value]
      try:
        b = batch = batch or largest_batch(config, mesh)
      except Exception as e:   # the batch search's compiles: its impl's rows
        outcomes.record(names, e)
        continue
      config.data.global_batch_size = b * n
      print(f'{label}: global batch {b * n}', flush=True)
      for policy, name in zip(_REMAT.value, names):
        with outcomes.row(name):
          bench(config, mesh, policy, impl, label, rows)
  print(MD_HEADER + ''.join(markdown_row(r) for r in rows), flush=True)
  sys.exit(outcomes.finish())


if __name__ == '__main__':
  app.run(main)
