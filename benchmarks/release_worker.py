"""The release's side of benchmarks/bench_vs_release.py: a process that runs
the released VideoFlexTok (apple/ml-videoflextok, a local checkout; never
vendored) and times what the parent asks, one JSON line per request on
stdin, one JSON line per answer on stdout.

It never imports jax: diffusers 0.20 (a release dependency) takes a flax path
when jax is importable, and transformers (vftok's) does not load beside the
release's huggingface_hub 0.25, so both are hidden here, and torchvision (the
release needs it for its demo utilities only; the PyPI wheel does not load
beside the CPU torch wheel) is stubbed. tests/fixtures/official_p122/
make_fixture.py builds its fixture with these same helpers.

Requests: {"op": "setup", ...sizes} builds a random-weight model at those
sizes from the release's own config (the dev fixture's, resized), writes it
as a release `model.safetensors` and answers its path; {"op": "run", "what":
..., "inputs": npz path} runs one operation and answers its seconds (and
writes its output next to the inputs for the parent's agreement check).
"""
import argparse
import copy
import json
import os
import sys
import time
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEV_CONFIG = os.path.join(HERE, '..', 'tests', 'fixtures', 'official',
                          'config.yaml')


def stub_release_imports():
  """torchvision stubbed; transformers and jax / flax hidden (see above)."""
  tv = types.ModuleType('torchvision')
  tv.transforms = types.ModuleType('torchvision.transforms')
  tv.transforms.functional = types.ModuleType(
      'torchvision.transforms.functional')
  sys.modules['transformers'] = None
  sys.modules['jax'] = sys.modules['flax'] = None
  sys.modules.update({'torchvision': tv,
                      'torchvision.transforms': tv.transforms,
                      'torchvision.transforms.functional':
                          tv.transforms.functional})


def latent_pass_through_vae():
  """VidTokVAE's interface without weights: encode keeps given latents,
  decode returns the latents it is given (the tokenizer alone is timed)."""
  import torch  # pylint: disable=g-import-not-at-top

  class LatentPassThroughVAE(torch.nn.Module):

    def __init__(self, images_read_key, vae_latents_read_key,
                 vae_latents_write_key, images_reconst_write_key, **unused):
      super().__init__()
      del unused
      self.images_read_key = images_read_key
      self.vae_latents_read_key = vae_latents_read_key
      self.vae_latents_write_key = vae_latents_write_key
      self.images_reconst_write_key = images_reconst_write_key
      self.downsample_factor, self.temporal_downsample_factor = 8, 4
      self.is_causal = True

    def encode(self, data_dict):
      if self.vae_latents_write_key not in data_dict:
        data_dict[self.vae_latents_write_key] = data_dict[
            self.images_read_key]
      return data_dict

    def decode(self, data_dict, **unused):
      del unused
      data_dict[self.images_reconst_write_key] = data_dict[
          self.vae_latents_read_key]
      return data_dict

    def init_weights_muP(self):
      pass

  return LatentPassThroughVAE


def dev_config():
  import yaml  # pylint: disable=g-import-not-at-top
  with open(DEV_CONFIG) as f:
    return yaml.safe_load(f)


def build(config, instantiate):
  without_vae = {k: v for k, v in config.items() if k != 'vae'}
  return instantiate(without_vae,
                     vae=latent_pass_through_vae()(**config['vae']))


def perturb(model, seed: int):
  """No parameter zero (zero-initialised adaLN and heads would hide the
  decoder): position tables, registers, mask and null tokens get noise."""
  import torch  # pylint: disable=g-import-not-at-top
  gen = torch.Generator().manual_seed(seed + 1000)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if any(s in name for s in ('posembs', 'registers', 'mask_token',
                                 'nullcond')):
        p.add_(0.5 * noise)
      elif torch.all(p == 0):
        scale = 1 / np.sqrt(p.shape[-1]) if p.ndim >= 2 else 0.05
        p.copy_(scale * noise)


def sized_config(width, head_dim, depth, registers, latents, patch):
  """The dev fixture's release config at the benchmark's sizes."""
  config = copy.deepcopy(dev_config())
  t, h, w = latents

  def walk(node):
    if isinstance(node, dict):
      for key, value in list(node.items()):
        if key in ('dim',) and value == 64:
          node[key] = width
        elif key == 'head_dim':
          node[key] = head_dim
        elif key == 'depth':
          node[key] = depth
        elif key == 'patch_sizes':
          node[key] = list(patch)
        else:
          walk(value)
    elif isinstance(node, list):
      for value in node:
        walk(value)

  walk(config)
  enc, dec = config['encoder']['module_dict'], config['decoder']['module_dict']
  grid = [max(t // patch[0], 1), max(h // patch[1], 1), max(w // patch[2], 1)]
  # The release's position tables are cubes / squares (equal max_sizes).
  enc['enc_posemb_module']['max_sizes'] = [max(grid)] * 3
  dec['dec_patches_posemb_module']['max_sizes'] = [max(grid)] * 3
  reg = enc['enc_register_module']
  reg['t_max'], reg['n_min'], reg['n_max'] = grid[0], registers, registers
  dec['dec_registers_posemb_module']['max_sizes'] = [
      max(grid[0], registers)] * 2
  return config


class Release:

  def __init__(self, release: str, threads: int):
    stub_release_imports()
    sys.path.insert(0, os.path.abspath(release))
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(threads)
    self.torch = torch
    self.model = self.vae = None

  def setup(self, req):
    import torch  # pylint: disable=g-import-not-at-top
    from hydra.utils import instantiate  # pylint: disable=g-import-not-at-top
    from videoflextok.utils import checkpoint  # pylint: disable=g-import-not-at-top
    torch.manual_seed(req['seed'])
    config = sized_config(req['width'], req['head_dim'], req['depth'],
                          req['registers'], req['latents'], req['patch'])
    model = build(config, instantiate).eval()
    perturb(model, req['seed'])
    state = {k: v for k, v in model.state_dict().items()
             if not k.startswith('vae.')}
    path = os.path.join(req['dir'], 'model.safetensors')
    checkpoint.save_safetensors(state, path, metadata_dict=config)
    self.model = model
    answer = dict(path=path, params=int(sum(v.numel() for v in state.values())))
    if req.get('vidtok'):
      from videoflextok.compressors import vidtok  # pylint: disable=g-import-not-at-top
      self.vae = vidtok.VidTokVAE('rgb', 'vae_latents_reconst', 'vae_latents',
                                  'rgb_reconst', 'vidtok_kl_causal_488_16chn',
                                  compile=False).eval()
      vae_path = os.path.join(req['dir'], 'vidtok.safetensors')
      from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
      save_file({k: v.contiguous() for k, v in
                 self.vae.vidtok.state_dict().items()}, vae_path)
      answer['vidtok_path'] = vae_path
    return answer

  def run(self, req):
    torch = self.torch
    data = dict(np.load(req['inputs']))
    with torch.no_grad():
      what = req['what']
      if what == 'tokenize':     # latents [B, C, T, H, W]
        latents = torch.from_numpy(data['latents'])
        t0 = time.perf_counter()
        out = torch.cat(self.model.tokenize(
            {'vae_latents': list(latents.split(1))}))
      elif what in ('decoder', 'detokenize'):   # same call, steps differ
        tokens = torch.from_numpy(data['tokens'])
        b = tokens.shape[0]
        kw = dict(req['guidance'])
        t0 = time.perf_counter()
        out = torch.cat(self.model.detokenize(
            list(tokens.split(1)), vae_video_sizes=tuple(req['latents']),
            num_keep_tokens_list=[tokens.shape[-1]] * b,
            timesteps=req['steps'], verbose=False,
            generator=torch.Generator().manual_seed(0), **kw))
      elif what == 'vidtok_encode':   # video [B, 3, F, H, W] in [-1, 1]
        video = torch.from_numpy(data['video'])
        t0 = time.perf_counter()
        out = self.vae._encode(video)   # pylint: disable=protected-access
      elif what == 'vidtok_decode':   # latents [B, 16, T, h, w]
        latents = torch.from_numpy(data['latents'])
        t0 = time.perf_counter()
        out = self.vae._decode(latents)   # pylint: disable=protected-access
      else:
        raise ValueError(f'unknown operation {what!r}')
      seconds = time.perf_counter() - t0
    if req.get('output'):
      np.save(req['output'], out.numpy())
    return dict(seconds=seconds)


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--release', required=True)
  p.add_argument('--threads', type=int, default=2)
  args = p.parse_args()
  # Answers go to the real stdout; whatever the release prints, to stderr.
  answers, sys.stdout = sys.stdout, sys.stderr
  worker = Release(args.release, args.threads)
  answer = dict(ready=True, torch=worker.torch.__version__,
                threads=worker.torch.get_num_threads(),
                capability=worker.torch.backends.cpu.get_cpu_capability())
  print(json.dumps(answer), file=answers, flush=True)
  for line in sys.stdin:
    req = json.loads(line)
    try:
      answer = getattr(worker, req['op'])(req)
    except Exception as e:  # pylint: disable=broad-except
      answer = dict(error=f'{type(e).__name__}: {e}')
    print(json.dumps(answer), file=answers, flush=True)


if __name__ == '__main__':
  main()
