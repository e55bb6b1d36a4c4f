"""Train step (tokenizer or AR): memory, FLOPs and speed per device, per remat
policy.

  PYTHONPATH=. python benchmarks/bench_train_step.py \
      --config=configs/tokenizer_k600.py --per_device_batch=4 \
      --remat=none,dots,full [--compile_only] [--steps=10] \
      [--peak_tflops=989] [--config.model.attention_impl=cudnn]

For each `model.remat` policy the jitted train step that `vftok.main` runs
for the config's job (train_tokenizer, or train_ar for configs/ar_*.py;
state sharded over a mesh of all devices by the logical-axis rules, donated)
is compiled for a global batch of per_device_batch x devices, and XLA's
numbers for one device are printed: argument / output / temporary bytes
(temporaries = activations kept for the backward pass + workspace) and FLOPs
per step. Unless --compile_only, the state is then created and --steps steps
on random batches are timed after a warm-up: s/step, latent frames/s (AR:
tokens/s), achieved TFLOP/s
(XLA's count, recomputation included) and, with --peak_tflops, MFU against
the FLOPs of the 'none' policy (the model's own FLOPs). On GPUs the device's
peak memory in use is printed too.

--compile_only needs no device memory for the state (everything abstract), so
the paper configs' memory can be read off on a CPU host: XLA's CPU buffer
assignment and schedule, a guide to the GPU/TPU ones, not an exact match.

REPA teachers that need weights on disk ('dinov2', 'i3d_keyframes') are
replaced by 'records' with random features of the teacher's width: the frozen
teacher's forward is not in these numbers.
"""
import os
import time

# XLA:CPU's default scheduler orders for concurrency and keeps buffers alive
# far longer than a GPU/TPU schedule would (a d4 demo step: 432 MiB of
# temporaries whatever the remat policy); the memory-minded order makes the
# CPU's compile-only numbers meaningful. No effect on other backends.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' '
                           '--xla_cpu_enable_concurrency_optimized_scheduler=false')

from absl import app
from absl import flags
import jax
import numpy as np
from ml_collections import config_flags

from vftok import ar_train_state
from vftok import sharding
from vftok import train_state
from vftok.models.pretrained import features
from vftok.models import tokenizer

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/demo.py', 'A train_tokenizer or train_ar config.',
    lock_config=False)
_BATCH = flags.DEFINE_integer('per_device_batch', 2, 'Clips per device.')
_REMAT = flags.DEFINE_list('remat', ['none', 'dots', 'full'],
                           'model.remat policies to compare.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps (after a warm-up).')
_COMPILE_ONLY = flags.DEFINE_bool('compile_only', False,
                                  'Memory and FLOPs from XLA only; run nothing.')
_PEAK = flags.DEFINE_float('peak_tflops', 0.0,
                           'Per-device peak TFLOP/s of the compute dtype, for '
                           'MFU (e.g. 989 for H100 bf16 dense).')

GiB = 2 ** 30


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
    if config.job == 'train_ar':
      self.model, self.tx, schedule = ar_train_state.build(config)
      self.init_fn = ar_train_state.make_init_fn(self.model, self.tx)
      self.step_fn = ar_train_state.make_train_step(
          self.model, self.tx, schedule, order=config.order,
          cond_dropout=config.cond_dropout)
      self.extra = ()
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
    else:
      m = config.model
      self.model, self.tx, schedule = train_state.build(config)
      self.init_fn = train_state.make_init_fn(self.model, self.tx, m)
      self.step_fn = train_state.make_train_step(self.model, self.tx,
                                                 schedule, m)
      self.extra = (self.step_fn.teacher.params,)
      b = config.data.global_batch_size
      self.shapes = {
          'latents': ((b, m.latent_frames, *m.latent_size, m.latent_channels),
                      np.float32),
          'label': ((b,), np.int32)}
      if m.repa_weight > 0 and m.repa_source == 'records':
        gh, gw = tokenizer.grid_hw(m)
        self.shapes['repa_features'] = (
            (b, m.latent_frames // m.patch_size[0], gh, gw, m.repa_dim),
            np.float32)
      self.unit, self.per_step = 'latent frames', b * m.latent_frames

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


def bench(config, mesh, policy: str, model_flops):
  config.model.remat = policy
  w = Workload(config)
  rng = jax.random.key(0)
  abstract_state, state_sh = sharding.abstract_state(w.init_fn, rng, mesh)
  repl = sharding.replicated(mesh)
  jitted = jax.jit(
      w.step_fn,
      in_shardings=(state_sh, sharding.batch_sharding(mesh), repl) +
      (repl,) * len(w.extra),
      out_shardings=(state_sh, repl), donate_argnums=0)
  t0 = time.perf_counter()
  compiled = jitted.lower(abstract_state, w.batch(mesh, True), rng,
                          *w.extra).compile()
  compile_s = time.perf_counter() - t0
  flops = _flops(compiled)
  mem = compiled.memory_analysis()
  line = f'remat={policy:5s} compile {compile_s:6.1f} s'
  if mem is not None:
    line += (f' | per device: args {mem.argument_size_in_bytes / GiB:6.2f} GiB,'
             f' out {mem.output_size_in_bytes / GiB:6.2f} GiB,'
             f' temp {mem.temp_size_in_bytes / GiB:7.2f} GiB')
  line += f' | {flops / 1e12:8.2f} TFLOP/step/device'
  print(line, flush=True)
  if _COMPILE_ONLY.value:
    return flops

  state, _ = sharding.create_sharded_state(w.init_fn, rng, mesh)
  batch = w.batch(mesh, False)
  state, metrics = compiled(state, batch, rng, *w.extra)  # warm-up
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(_STEPS.value):
    state, metrics = compiled(state, batch, rng, *w.extra)
  jax.block_until_ready((state, metrics))
  dt = (time.perf_counter() - t0) / _STEPS.value
  line = (f'remat={policy:5s} {dt * 1e3:9.1f} ms/step | {w.per_step / dt:9.1f} '
          f'{w.unit}/s | {flops / dt / 1e12:7.2f} TFLOP/s/device'
          f' | loss {float(metrics["loss"]):.4f}')
  if _PEAK.value and model_flops:
    line += f' | MFU {model_flops / dt / 1e12 / _PEAK.value:.1%}'
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    line += f' | peak in use {stats["peak_bytes_in_use"] / GiB:.2f} GiB'
  print(line, flush=True)
  return flops


def main(argv):
  del argv
  config = _CONFIG.value
  n = jax.device_count()
  config.data.global_batch_size = _BATCH.value * n
  ar_job = config.job == 'train_ar'
  if not ar_job and features.needs_frames(config.model):
    config.model.repa_source = 'records'  # teacher weights are not needed here
  mesh = sharding.make_mesh(config.mesh)
  m = config.model
  if ar_job:
    mc = ar_train_state.model_config(config)
    what = (f'AR d{mc.depth} w{mc.width}, {mc.num_frames} frames x '
            f'{config.data.tokens_per_frame or mc.tokens_per_frame} tokens, '
            f'{"text" if mc.text_dim else "class"}-conditioned, {mc.dtype}')
  else:
    what = (f'encoder d{m.enc_depth} w{m.enc_width}, decoder d{m.dec_depth} '
            f'w{m.dec_width}, {m.latent_frames} x {tuple(m.latent_size)} '
            f'latents, patch {tuple(m.patch_size)}, K={m.tokens_per_frame}, '
            f'{config.model.dtype}, attention '
            f'{m.get("attention_impl") or "default"}')
  print(f'jax {jax.__version__}, {n} x {jax.devices()[0].device_kind}, mesh '
        f'{dict(mesh.shape)}; {what}; global batch '
        f'{config.data.global_batch_size}', flush=True)
  model_flops = None
  for policy in _REMAT.value:
    flops = bench(config, mesh, policy, model_flops)
    if policy == 'none':
      model_flops = flops


if __name__ == '__main__':
  app.run(main)
