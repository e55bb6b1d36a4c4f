"""VidTok weights: read a checkpoint file, check it, map it to Flax params.

Accepted files (detected from their first bytes, not their names):
  * safetensors: the release's VideoFlexTok `model.safetensors` (VidTok
    tensors named `video_tokenizer.vae.vidtok.<key>` in the hub file, or
    `vae.vidtok.<key>` in a VideoFlexTok-level file; the rest is ignored and
    only the VAE tensors are read from disk) or a plain VidTok file
    (`encoder.*` / `decoder.*`);
  * a PyTorch zip checkpoint: upstream VidTok's Lightning `.ckpt` (tensors in
    `['state_dict']`, training-only `loss.*` etc. ignored) or a bare state
    dict, read by vftok.safe_pickle (no torch, no pickled code run).

`<key>` follows the PyTorch module tree of model_3dcausal.py; the Flax
parameter tree (vidtok_net.py) mirrors it, so the mapping is a rename
(`down.0` -> `down_0`; `weight` -> `kernel` / `scale`) and, for kernels,
PyTorch's [O, I, *k] reversed to [*k, I, O]. The architecture's sizes (base
channels, channel multipliers, blocks per level, latent channels) are read
from the tensors' shapes, then every tensor is checked against them.
"""
import functools
import re
from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from vftok.models.pretrained import safe_pickle
from vftok.models.pretrained import hf_checkpoint
from vftok.models.pretrained import vidtok_net

CheckpointError = hf_checkpoint.CheckpointError

# Where the release keeps VidTok inside a VideoFlexTok checkpoint, most
# specific first; '' is a plain VidTok state dict.
PREFIXES = ('video_tokenizer.vae.vidtok.', 'vae.vidtok.', '')
_HALVES = ('encoder.', 'decoder.')
# Children of `mid` are attributes named block_1 / attn_1 / block_2, not
# items of a list: their _<digit> is part of the name.
_NAMED_CHILDREN_OF = 'mid'


def _file_kind(path: str) -> str:
  try:
    with open(path, 'rb') as f:
      head = f.read(16)
  except OSError as e:
    raise CheckpointError(f'cannot read VidTok weights {path!r}: {e}') from None
  if head[:4] == b'PK\x03\x04':
    return 'torch'
  if len(head) >= 9 and head[8:9] == b'{':
    return 'safetensors'
  raise CheckpointError(
      f'{path}: neither a safetensors file nor a PyTorch zip checkpoint '
      f'(first bytes {head[:8]!r})')


def _select(names, path) -> Tuple[str, Dict[str, str]]:
  """-> (prefix, {vidtok key: stored name}) for the VAE tensors in `names`."""
  for prefix in PREFIXES:
    keys = {n[len(prefix):]: n for n in names
            if n.startswith(prefix) and n[len(prefix):].startswith(_HALVES)}
    if keys:
      return prefix, keys
  some = sorted(names)[:5]
  raise CheckpointError(
      f'{path}: no VidTok tensors (looked for encoder.* / decoder.* under '
      f'the prefixes {[p for p in PREFIXES if p]} or none); first names: '
      f'{some}')


def _as_float32(name, value, path):
  if not isinstance(value, np.ndarray):
    raise CheckpointError(f'{path}: {name} is not a tensor ({value!r})')
  if value.dtype.kind != 'f' and value.dtype.name != 'bfloat16':
    raise CheckpointError(f'{path}: {name} has dtype {value.dtype}, '
                          'expected floating point')
  return np.asarray(value, np.float32)


def read_state_dict(path: str) -> Dict[str, np.ndarray]:
  """The VidTok tensors of `path`, prefixes stripped, as float32 NumPy."""
  kind = _file_kind(path)
  if kind == 'safetensors':
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top
    try:
      with safe_open(path, framework='numpy') as f:
        _, keys = _select(list(f.keys()), path)
        return {k: _as_float32(k, f.get_tensor(n), path)
                for k, n in keys.items()}
    except CheckpointError:
      raise
    except Exception as e:  # safetensors raises its own error types
      raise CheckpointError(f'{path}: unreadable safetensors file (truncated '
                            f'or corrupt?): {e}') from None
  try:
    tree = safe_pickle.load_torch_checkpoint(path)
  except (ValueError, safe_pickle.UnsafePickleError) as e:
    raise CheckpointError(str(e)) from None
  if isinstance(tree, dict) and isinstance(tree.get('state_dict'), dict):
    tree = tree['state_dict']  # Lightning / VidTok's own .ckpt
  if not isinstance(tree, dict):
    raise CheckpointError(f'{path}: the checkpoint holds a '
                          f'{type(tree).__name__}, not a state dict')
  _, keys = _select([k for k in tree if isinstance(k, str)], path)
  return {k: _as_float32(k, tree[n], path) for k, n in keys.items()}


# ------------------------------------------------------------ structure ---

def _count(sd, pattern) -> int:
  found = [int(m.group(1)) for k in sd for m in [re.match(pattern, k)] if m]
  return max(found) + 1 if found else 0


def infer_config(sd: Dict[str, np.ndarray], path: str = 'checkpoint',
                 **runtime) -> vidtok_net.VidTokConfig:
  """Sizes from the tensors' shapes; `runtime`: dtype / precision."""
  def shape(name):
    if name not in sd:
      raise CheckpointError(f'{path}: missing tensor {name} (needed to read '
                            'the model size)')
    return sd[name].shape

  conv_in = shape('encoder.conv_in.conv.weight')  # [ch, in, 3, 3, 3]
  ch, in_channels = conv_in[0], conv_in[1]
  levels = _count(sd, r'encoder\.down\.(\d+)\.')
  blocks = _count(sd, r'encoder\.down\.\d+\.block\.(\d+)\.')
  if levels < 3 or blocks < 1:
    raise CheckpointError(f'{path}: found {levels} encoder levels and '
                          f'{blocks} blocks per level; not a VidTok 3-D VAE')
  mult = []
  for i in range(levels):
    out = shape(f'encoder.down.{i}.block.0.conv1.weight')[0]
    if out % ch:
      raise CheckpointError(f'{path}: encoder.down.{i} has {out} channels, '
                            f'not a multiple of the base {ch}')
    mult.append(out // ch)
  z = shape('decoder.conv_in.conv.weight')[1]
  out_ch = shape('decoder.conv_out.conv.weight')[0]
  return vidtok_net.VidTokConfig(
      ch=int(ch), ch_mult=tuple(int(m) for m in mult),
      num_res_blocks=int(blocks), z_channels=int(z),
      in_channels=int(in_channels), out_ch=int(out_ch), **runtime)


def torch_name(path) -> str:
  """Flax param path (tuple of names) -> PyTorch state-dict key."""
  parts = []
  for parent, name in zip(('',) + tuple(path[:-2]), path[:-1]):
    m = re.fullmatch(r'(.+)_(\d+)', name)
    if m and parent != _NAMED_CHILDREN_OF:
      parts += [m.group(1), m.group(2)]
    else:
      parts.append(name)
  leaf = path[-1]
  parts.append({'kernel': 'weight', 'scale': 'weight'}.get(leaf, leaf))
  return '.'.join(parts)


def torch_shape(shape) -> Tuple[int, ...]:
  """Flax kernel [*k, I, O] -> PyTorch [O, I, *k]; vectors unchanged."""
  shape = tuple(shape)
  return shape if len(shape) < 2 else (shape[-1], shape[-2]) + shape[:-2]


@functools.lru_cache(maxsize=8)
def param_shapes(cfg: vidtok_net.VidTokConfig):
  """{flax path: flax shape} of VidTokNet(cfg), in the module's order."""
  s = cfg.space_factor
  video = jax.ShapeDtypeStruct((1, 1, s, s, cfg.in_channels), jnp.float32)
  shapes = jax.eval_shape(vidtok_net.VidTokNet(cfg).init, jax.random.key(0),
                          video)['params']
  flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
  return {tuple(k.key for k in kp): tuple(v.shape) for kp, v in flat}


def expected_state_dict_shapes(cfg) -> Dict[str, Tuple[int, ...]]:
  """{torch key: torch shape} a checkpoint of this config must hold."""
  return {torch_name(p): torch_shape(s) for p, s in param_shapes(cfg).items()}


def _describe(cfg):
  return (f'ch={cfg.ch}, ch_mult={list(cfg.ch_mult)}, '
          f'num_res_blocks={cfg.num_res_blocks}, z_channels={cfg.z_channels}')


def to_flax_params(sd: Dict[str, np.ndarray], cfg, path: str = 'checkpoint'):
  """Checked state dict -> nested {'encoder': ..., 'decoder': ...} of NumPy
  float32 arrays (VidTokNet's `params`)."""
  want = param_shapes(cfg)
  names = {torch_name(p): p for p in want}
  missing = sorted(set(names) - set(sd))
  extra = sorted(set(sd) - set(names))
  if missing or extra:
    msg = [f'{path}: the VidTok tensors do not match the architecture '
           f'({_describe(cfg)}, read from the tensor shapes)']
    if missing:
      msg.append(f'missing {len(missing)}: {missing[:8]}')
    if extra:
      msg.append(f'unexpected {len(extra)}: {extra[:8]}')
    raise CheckpointError('; '.join(msg))
  params = {}
  for name, fpath in names.items():
    value = sd[name]
    expect = torch_shape(want[fpath])
    if tuple(value.shape) != expect:
      raise CheckpointError(
          f'{path}: tensor {name} has shape {tuple(value.shape)}, expected '
          f'{expect} ({_describe(cfg)})')
    if value.ndim >= 2:  # [O, I, *k] -> [*k, I, O]
      value = np.transpose(value, tuple(range(2, value.ndim)) + (1, 0))
    if not np.all(np.isfinite(value)):
      raise CheckpointError(f'{path}: tensor {name} has non-finite values')
    node = params
    for part in fpath[:-1]:
      node = node.setdefault(part, {})
    node[fpath[-1]] = np.ascontiguousarray(value, np.float32)
  return params


def load_params(path: str, **runtime):
  """-> (VidTokConfig, params) from a weights file (module docstring)."""
  sd = read_state_dict(path)
  cfg = infer_config(sd, path, **runtime)
  return cfg, to_flax_params(sd, cfg, path)
