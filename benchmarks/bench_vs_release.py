"""vftok against the released VideoFlexTok (apple/ml-videoflextok), side by
side on this machine, the same weights, the same inputs, interleaved.

  PYTHONPATH=. python benchmarks/bench_vs_release.py --release=/tmp/release \
      --release_pkgs=/tmp/relpkgs [--repeats 5] [--threads 2] \
      [--ops tokenize,decoder,detokenize,vidtok_encode,vidtok_decode] \
      [--impls ,xla] [--max_isa avx2] [--markdown rows.md]

The release runs from a local checkout (`git archive 4fd72ec videoflextok`
of a mirror of stipefrkovic/ml-videoflextok; never vendored) in a child process
(benchmarks/release_worker.py) with its pinned dependencies on
--release_pkgs (`pip install --target DIR --no-deps hydra-core omegaconf
antlr4-python3-runtime==4.9.3 mup diffusers==0.20.0 huggingface_hub==0.25.2`)
and torch from requirements-test.txt. The release builds a random-weight model
at the sizes below from its own config and writes it as a release
`model.safetensors`; vftok loads that file (`Tokenizer.from_official`), so
both compute the same function (the token agreement is printed).

Sizes (the defaults): width 384, 6 heads of 64, encoder and decoder depth 6,
K = 32 registers, latents 5 x 16 x 16 x 16, patch 1, batch 4, float32.
Operations, each the median of --repeats runs after one warm-up run
(compilation) and timed alternately (vftok, release, vftok, ...):
  tokenize     latents -> tokens;
  decoder      one decoder forward: detokenize with 1 Euler step, no guidance;
  detokenize   the release notebook's settings: 40 Euler steps, APG
               (scale 25, norm threshold 0.6) of --detok_batch clips;
  vidtok_encode / vidtok_decode   VidTok kl_causal_488_16chn (ch 128, random
               weights written by the release, read by vftok) on one
               17 x --vidtok_resolution^2 clip.
--impls: the vftok `model.attention_impl` values, one column each ('' = the
default: 'xla_sparse' on CPU; 'xla' = dense), for tokenize and the decoder
forward; the whole detokenize and VidTok time the first one only.
--max_isa avx2 runs the whole benchmark, release worker included, through
benchmarks/as_avx2.py: every library on both sides then takes its AVX2
kernels, as on a machine without AVX-512 (XLA's and torch's ISA caps, and
CPUID answered without the AVX-512 bits, which is what keeps the matmul
libraries off it).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

import as_avx2

HERE = os.path.dirname(os.path.abspath(__file__))
OPS = ('tokenize', 'decoder', 'detokenize', 'vidtok_encode', 'vidtok_decode')
# The release notebook's APG (vftok's Tokenizer.sample_defaults match it).
APG = dict(guidance_scale=25.0, perform_norm_guidance=True, eta=0.0,
           momentum=0.0, norm_threshold=0.6)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--release', required=True, help='release checkout (4fd72ec)')
  p.add_argument('--release_pkgs', default='',
                 help="a --target dir of the release's pinned dependencies")
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--threads', type=int, default=2)
  p.add_argument('--ops', default=','.join(OPS))
  p.add_argument('--impls', default=',xla',
                 help="vftok model.attention_impl values ('' = default)")
  p.add_argument('--width', type=int, default=384)
  p.add_argument('--head_dim', type=int, default=64)
  p.add_argument('--depth', type=int, default=6)
  p.add_argument('--registers', type=int, default=32)
  p.add_argument('--latents', default='5,16,16', help='T,h,w latent grid')
  p.add_argument('--batch', type=int, default=4)
  p.add_argument('--detok_batch', type=int, default=1)
  p.add_argument('--steps', type=int, default=40)
  p.add_argument('--vidtok_resolution', type=int, default=128)
  p.add_argument('--max_isa', default='', choices=('', 'avx2'))
  p.add_argument('--markdown', default='', help='also write the table here')
  args = p.parse_args(argv)
  args.ops = [o for o in args.ops.split(',') if o]
  bad = sorted(set(args.ops) - set(OPS))
  if bad:
    p.error(f'--ops: unknown {bad}; choose from {OPS}')
  if args.repeats < 1:
    p.error('--repeats must be >= 1')
  args.impls = args.impls.split(',')
  args.latents = tuple(int(v) for v in args.latents.split(','))
  if not os.path.isdir(os.path.join(args.release, 'videoflextok')):
    p.error(f'--release={args.release!r} holds no videoflextok package')
  return args


class ReleaseProcess:
  """benchmarks/release_worker.py in a child process, one JSON line each
  way per request."""

  def __init__(self, args, work):
    env = dict(os.environ)
    path = [args.release] + ([args.release_pkgs] if args.release_pkgs else [])
    env['PYTHONPATH'] = os.pathsep.join(path)
    # torch.compile's kernels compiled afresh for this run: a cache shared
    # across runs hands kernels built under one --max_isa to another, and
    # those compute something else (tokens then agree on ~5 %).
    env['TORCHINDUCTOR_CACHE_DIR'] = os.path.join(work, 'inductor')
    env.pop('XLA_FLAGS', None)
    self.proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, 'release_worker.py'),
         f'--release={args.release}', f'--threads={args.threads}'],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    self.info = self._read()

  def _read(self):
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError('the release worker exited (its stderr is above)')
    answer = json.loads(line)
    if 'error' in answer:
      raise RuntimeError(f'release worker: {answer["error"]}')
    return answer

  def ask(self, **req):
    self.proc.stdin.write(json.dumps(req) + '\n')
    self.proc.stdin.flush()
    return self._read()

  def close(self):
    self.proc.stdin.close()
    self.proc.wait(timeout=60)


def machine(args, release_info) -> str:
  model = as_avx2.cpuinfo().get('model name', platform.processor())
  flags = as_avx2.cpu_flags()
  import jax  # pylint: disable=g-import-not-at-top
  isa = ('AVX-512' if 'avx512f' in flags else
         'AVX2' if 'avx2' in flags else 'no AVX2')
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') \
      else os.cpu_count()
  cap = (', run as AVX2 without AVX-512 (benchmarks/as_avx2.py)'
         if args.max_isa else '')
  return (f'{model}: {cores} cores usable, {isa}{cap}; vftok jax '
          f'{jax.__version__} (XLA CPU); release torch '
          f'{release_info["torch"]} ({release_info["threads"]} threads, '
          f'ATen {release_info["capability"]}, compiled FlexAttention)')


def vftok_side(args, model_path, vidtok_path):
  """-> {impl: Tokenizer}, VidTok or None."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from vftok.api.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top
  from vftok.models.pretrained import vidtok, vidtok_weights  # pylint: disable=g-import-not-at-top
  base = Tokenizer.from_official(model_path, latent_shape=args.latents)
  toks = {}
  for impl in args.impls:
    config = ml_collections.ConfigDict(base.config.to_dict())
    config.model.attention_impl = impl
    toks[impl] = Tokenizer(config, base.params)
  vt = None
  if vidtok_path:
    vt = vidtok.VidTok.from_state_dict(
        vidtok_weights.read_state_dict(vidtok_path), vidtok_path)
  return toks, vt


def main(argv=None):
  args = parse_args(argv)
  if args.max_isa and not os.environ.get(as_avx2.ACTIVE):
    # A fresh process: the CPUID library must be loaded at its start.
    argv = sys.argv[1:] if argv is None else list(argv)
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__),
                               *argv], as_avx2.avx2_env())
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  work = tempfile.mkdtemp(prefix='bench_vs_release_')
  release = ReleaseProcess(args, work)
  vid_ops = [o for o in args.ops if o.startswith('vidtok')]
  setup = release.ask(op='setup', dir=work, seed=0, width=args.width,
                      head_dim=args.head_dim, depth=args.depth,
                      registers=args.registers, latents=list(args.latents),
                      patch=[1, 1, 1], vidtok=bool(vid_ops))
  toks, vt = vftok_side(args, setup['path'], setup.get('vidtok_path'))
  where = machine(args, release.info)
  print(where)
  print(f'model: width {args.width}, {args.width // args.head_dim} heads of '
        f'{args.head_dim}, depth {args.depth}-{args.depth}, K = '
        f'{args.registers}, latents {args.latents} x 16, batch {args.batch}, '
        f'float32; {setup["params"] / 1e6:.1f}M parameters (the release '
        f'file); {args.repeats} timed runs after a warm-up', flush=True)

  t, h, w = args.latents
  rng = np.random.default_rng(0)
  latents = rng.standard_normal((args.batch, t, h, w, 16), np.float32)
  first = next(iter(toks.values()))
  tokens = np.asarray(first.tokenize(latents))
  noise = rng.standard_normal(latents.shape, np.float32)
  frames = 4 * (t - 1) + 1
  r = args.vidtok_resolution
  video = rng.uniform(-1, 1, (1, frames, r, r, 3)).astype(np.float32)
  vid_latents = rng.standard_normal((1, t, r // 8, r // 8, 16), np.float32)
  cf = lambda x: np.ascontiguousarray(np.moveaxis(x, -1, 1))  # channels first
  inputs = {}

  def save(name, **arrays):   # only the inputs of the operations timed
    if name in args.ops:
      inputs[name] = os.path.join(work, f'{name}.npz')
      np.savez(inputs[name], **arrays)

  save('tokenize', latents=cf(latents))
  save('decoder', tokens=tokens)
  save('detokenize', tokens=tokens[:args.detok_batch])
  save('vidtok_encode', video=cf(video))
  save('vidtok_decode', latents=cf(vid_latents))
  db = args.detok_batch
  guided = dict(steps=args.steps, guidance='apg',
                guidance_scale=APG['guidance_scale'], apg_eta=APG['eta'],
                apg_momentum=APG['momentum'],
                apg_norm_threshold=APG['norm_threshold'])
  vftok_ops = {
      'tokenize': lambda tok: tok.tokenize(latents),
      'decoder': lambda tok: tok.detokenize(tokens, steps=1,
                                            guidance_scale=1.0, noise=noise),
      'detokenize': lambda tok: tok.detokenize(tokens[:db], noise=noise[:db],
                                               **guided),
      'vidtok_encode': lambda _: vt.encode(jnp.asarray(video)),
      'vidtok_decode': lambda _: vt.decode(jnp.asarray(vid_latents)),
  }
  release_req = {
      'tokenize': {}, 'decoder': dict(steps=1, guidance=dict(
          guidance_scale=1.0), latents=list(args.latents)),
      'detokenize': dict(steps=args.steps, guidance=APG,
                         latents=list(args.latents)),
      'vidtok_encode': {}, 'vidtok_decode': {}}

  times = {op: {'release': []} for op in args.ops}
  for op in args.ops:
    # The dense column where attention is a large share (one decoder pass);
    # the 80-pass detokenize and VidTok (no attention) time the first only.
    impls = args.impls if op in ('tokenize', 'decoder') else args.impls[:1]
    for i in range(args.repeats + 1):          # run 0: warm-up / compile
      for impl in impls:
        t0 = time.perf_counter()
        jax.block_until_ready(vftok_ops[op](toks[impl]))
        if i:
          times[op].setdefault(impl, []).append(time.perf_counter() - t0)
      out = os.path.join(work, f'{op}_release.npy') if i == 0 else ''
      answer = release.ask(op='run', what=op, inputs=inputs[op], output=out,
                           **release_req[op])
      if 'error' in answer:
        raise RuntimeError(f'release {op}: {answer["error"]}')
      if i:
        times[op]['release'].append(answer['seconds'])
    med = {k: float(np.median(v)) for k, v in times[op].items()}
    print(f'{op}: release {med["release"]:.3f} s, ' + ', '.join(
        f'vftok[{k or "default"}] {v:.3f} s ({med["release"] / v:.2f}x)'
        for k, v in med.items() if k != 'release'), flush=True)
    times[op] = med
    if op == 'tokenize':
      ref = np.load(os.path.join(work, 'tokenize_release.npy'))
      agree = float(np.mean(ref.reshape(tokens.shape) == tokens))
      print(f'  tokens equal to the release\'s: {100 * agree:.2f} %')
  release.close()

  head = ('| operation | release s | ' + ' | '.join(
      f'vftok[{i or "default"}] s | speed-up' for i in args.impls) + ' |')
  rows = [head, '|' + '---|' * (2 + 2 * len(args.impls))]
  labels = {'tokenize': f'tokenize (batch {args.batch})',
            'decoder': f'decoder forward (batch {args.batch})',
            'detokenize': f'detokenize, {args.steps} steps APG '
                          f'(batch {args.detok_batch})',
            'vidtok_encode': f'VidTok encode 1 x {frames} x {r}^2',
            'vidtok_decode': f'VidTok decode 1 x {t} x {r // 8}^2 latents'}
  for op in args.ops:
    med = times[op]
    cells = []
    for impl in args.impls:
      v = med.get(impl)
      cells += (['', ''] if v is None else
                [f'{v:.3f}', f'{med["release"] / v:.2f}x'])
    rows.append(f'| {labels[op]} | {med["release"]:.3f} | '
                + ' | '.join(cells) + ' |')
  table = '\n'.join(rows)
  print(table)
  if args.markdown:
    with open(args.markdown, 'w') as f:
      f.write(where + '\n\n' + table + '\n')


if __name__ == '__main__':
  main()
