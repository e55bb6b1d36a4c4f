"""Released VideoFlexTok checkpoints (apple/ml-videoflextok) -> vftok.

A release `model.safetensors` holds the tensors and, in its `__metadata__`,
the Hydra config: one entry per top-level key, each the `str()` of a Python
object. Reading it here executes nothing: each value is parsed with
`yaml.safe_load` (after the release's 'None' -> 'null'), every `_target_` must
be one of the release's own allowed module types, and the modules are found by
type and by how their read/write keys chain (module names in the released
configs are not known here, only the types are), then mapped onto a vftok
tokenizer config and its parameter tree. Tensors are converted one at a time
and, given a mesh, put straight into their shards.

Anything the vftok model cannot express (another mask mode, a cross-attention
decoder, interpolated positions, biases the release makes optional, ...) is
refused with one error naming the config field.
"""
import json
import os
import re
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from vftok import errors

PREFIX = 'videoflextok.'
ALLOWED_TARGETS = frozenset(PREFIX + t for t in (
    'wrappers.VideoFlexTok',
    'flow_matching.pipelines.VideoMinRFPipeline',
    'flow_matching.noise_modules.PrefixMinRFNoiseModule',
    'flow_matching.noise_modules.MinRFNoiseModule',
    'resamplers.video_wrappers.VideoFlowMatchingResampler',
    'compressors.vidtok.VidTokVAE',
    'model.utils.wrappers.SequentialModuleDictWrapper',
    'model.utils.posembs.PositionalEmbeddingAdder',
    'model.utils.dict_ops.PerSampleOp',
    'model.utils.dict_ops.channels_first_to_last',
    'model.utils.dict_ops.channels_last_to_first',
    'model.trunks.transformers.FlexTransformer',
    'model.preprocessors.token_dropout.MaskedNestedDropout',
    'model.preprocessors.token_dropout.MaskedPrefixDropout',
    'model.preprocessors.time_embedding.TimestepEmbedder',
    'model.preprocessors.registers.RegistersTemporal2D',
    'model.preprocessors.patching.PatchEmbedder',
    'model.preprocessors.nullcond.LearnedNullCond',
    'model.preprocessors.linear.LinearLayer',
    'model.preprocessors.flex_seq_packing.BlockWiseSequenceInterleavePacker',
    'model.postprocessors.seq_unpacking.SequenceInterleavedUnpacker',
    'model.postprocessors.heads.LinearHead',
    'model.postprocessors.heads.TransformerHead',
    'model.postprocessors.heads.ToPatchesLinearHead',
    'regularizers.quantize_fsq.FSQ',
))
MAX_METADATA_LEN = 10_000  # the release leaves longer values unparsed
VAE_PREFIXES = ('vae.',)   # VidTok weights ride along in the same file


class CheckpointError(errors.InputError):
  """A release checkpoint that cannot be loaded (one line says why;
  vftok/main.py prints it without a traceback)."""


# ---- reading ---------------------------------------------------------------

def _header(path: str) -> dict:
  """The safetensors JSON header, checked against the file size (a truncated
  file is named before any tensor is read)."""
  try:
    size = os.path.getsize(path)
    with open(path, 'rb') as f:
      n = int.from_bytes(f.read(8), 'little')
      if n <= 0 or 8 + n > size:
        raise CheckpointError(f'{path}: not a safetensors file (header length '
                              f'{n}, file size {size})')
      header = json.loads(f.read(n))
  except FileNotFoundError:
    raise CheckpointError(f'{path}: no such file') from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f'{path}: unreadable safetensors header ({e})') from None
  end = max([v['data_offsets'][1] for k, v in header.items()
             if k != '__metadata__'] or [0])
  if 8 + n + end > size:
    raise CheckpointError(f'{path}: truncated: the header promises '
                          f'{8 + n + end} bytes, the file has {size}')
  return header


def parse_metadata(raw: Dict[str, str]) -> Dict[str, Any]:
  """The release's safe parse: yaml.safe_load of each value after replacing
  'None' by 'null'; then every `_target_` checked against the allowlist."""
  import yaml  # pylint: disable=g-import-not-at-top
  config = {}
  for key, value in raw.items():
    if not isinstance(value, str) or len(value) > MAX_METADATA_LEN:
      raise CheckpointError(f'metadata entry {key!r} is not a parsable config '
                            f'value (over {MAX_METADATA_LEN} characters or not '
                            'text)')
    try:
      config[key] = yaml.safe_load(value.replace('None', 'null'))
    except yaml.YAMLError as e:
      first = str(e).splitlines()[0]
      raise CheckpointError(f'metadata entry {key!r} is not plain YAML data '
                            f'({first})') from None
  _check_targets(config, 'config')
  return config


def _check_targets(node, where: str):
  if isinstance(node, dict):
    for k, v in node.items():
      if k == '_target_':
        if not isinstance(v, str) or v not in ALLOWED_TARGETS:
          raise CheckpointError(f'{where}._target_ = {v!r} is not one of the '
                                'release\'s module types; refusing to load it')
      else:
        _check_targets(v, f'{where}.{k}')
  elif isinstance(node, list):
    for i, v in enumerate(node):
      _check_targets(v, f'{where}[{i}]')


def read_config(path: str) -> Dict[str, Any]:
  header = _header(path)
  raw = header.get('__metadata__') or {}
  if 'encoder' not in raw or 'decoder' not in raw:
    raise CheckpointError(f'{path}: no release config in the safetensors '
                          'metadata (expected encoder/decoder entries)')
  return parse_metadata(raw)


# ---- config -> vftok model config -----------------------------------------

def _cls(module: dict) -> str:
  return str(module.get('_target_', '')).rsplit('.', 1)[-1]


class _Modules:
  """The module_dict of the release's encoder or decoder, looked up by type."""

  def __init__(self, config: dict, part: str):
    try:
      self.items = list(config[part]['module_dict'].items())
    except (KeyError, TypeError, AttributeError):
      raise CheckpointError(f'config.{part}.module_dict missing') from None
    self.part = part

  def find(self, cls: str, optional=False, **match) -> Optional[Tuple[str, dict]]:
    hits = [(n, m) for n, m in self.items if _cls(m) == cls and
            all(m.get(k) == v for k, v in match.items())]
    if not hits and optional:
      return None
    if len(hits) != 1:
      want = cls + (f' with {match}' if match else '')
      raise CheckpointError(f'config.{self.part}.module_dict: expected one '
                            f'{want}, found {len(hits)}')
    return hits[0]

  def index(self, name: str) -> int:
    return [n for n, _ in self.items].index(name)

  def field(self, name: str, key: str) -> str:
    return f'config.{self.part}.module_dict.{name}.{key}'


def _require(cond: bool, field: str, value, want: str):
  if not cond:
    raise CheckpointError(f'{field} = {value!r}: vftok supports {want}')


POS_KINDS = {'learnable_sum': 'sum', 'learnable_prod': 'prod'}


def _posemb(mods: _Modules, name: str, m: dict, axes: int) -> Tuple[int, str]:
  sizes = list(m.get('max_sizes') or [])
  _require(len(sizes) == axes and len(set(sizes)) == 1,
           mods.field(name, 'max_sizes'), sizes, f'{axes} equal sizes')
  _require(m.get('posemb_type') in POS_KINDS, mods.field(name, 'posemb_type'),
           m.get('posemb_type'), 'learnable_sum or learnable_prod')
  _require(m.get('posemb_scaling', 'absolute') == 'absolute',
           mods.field(name, 'posemb_scaling'), m.get('posemb_scaling'),
           "'absolute' (cropped tables)")
  return int(sizes[0]), POS_KINDS[m['posemb_type']]


def _trunk(mods: _Modules, name: str, m: dict, adaln: bool) -> dict:
  for key, want in (('qkv_bias', False), ('proj_bias', False),
                    ('mlp_bias', False), ('gated_mlp', True), ('qk_norm', True)):
    _require(m.get(key, want) == want, mods.field(name, key), m.get(key),
             f'{key}={want} (the release\'s blocks)')
  dim = int(m['dim'])
  head_dim = int(m.get('head_dim') or dim // int(m['num_heads']))
  out = dict(dim=dim, depth=int(m['depth']), head_dim=head_dim,
             mlp_ratio=float(m.get('mlp_ratio', 4.0)))
  if adaln:
    _require(m.get('adaLN_emb_read_key') is not None,
             mods.field(name, 'adaLN_emb_read_key'), None,
             'adaLN-Zero decoder blocks')
    out['adaln_expansion'] = int(m.get('adaLN_expansion', 1))
  return out


def model_config(config: dict) -> Dict[str, Any]:
  """The release's Hydra config -> vftok model fields + tensor name map."""
  enc, dec = _Modules(config, 'encoder'), _Modules(config, 'decoder')
  names: Dict[str, str] = {}
  out: Dict[str, Any] = {}
  # Encoder: patches -> posemb; registers; packer [patches, registers].
  n, pe = enc.find('PatchEmbedder')
  names['enc_patch'] = n
  out['patch_size'] = tuple(int(p) for p in pe['patch_sizes'])
  out['latent_channels'] = int(pe['channels_in'])
  n, pos = enc.find('PositionalEmbeddingAdder', read_key=pe['patches_list_write_key'])
  names['enc_pos'] = n
  enc_pos_size, enc_kind = _posemb(enc, n, pos, 3)
  n, reg = enc.find('RegistersTemporal2D')
  names['enc_registers'] = n
  _require(reg['n_min'] == reg['n_max'], enc.field(n, 'n_min'), reg['n_min'],
           'a fixed register count (n_min == n_max)')
  out['tokens_per_frame'], out['max_frames'] = int(reg['n_max']), int(reg['t_max'])
  n, pk = enc.find('BlockWiseSequenceInterleavePacker')
  _require(list(pk['input_list_read_keys']) == [pos['write_key'],
                                                reg['registers_write_key']],
           enc.field(n, 'input_list_read_keys'), pk['input_list_read_keys'],
           '[patches, registers] per frame')
  _require(pk.get('mask_mode') == 'time_block_causal_last',
           enc.field(n, 'mask_mode'), pk.get('mask_mode'),
           "'time_block_causal_last'")
  n, tr = enc.find('FlexTransformer')
  names['enc_trunk'] = n
  t_enc = _trunk(enc, n, tr, adaln=False)
  n, head = enc.find('LinearHead')
  names['enc_head'] = n
  _require(not head.get('use_mup_readout'), enc.field(n, 'use_mup_readout'),
           True, 'plain Linear heads (the release cannot run MuReadout at '
           'inference)')
  levels = [int(l) for l in config['regularizer']['levels']]
  _require(int(head['dim_out']) == len(levels), enc.field(n, 'dim_out'),
           head['dim_out'], f'one output per FSQ level ({len(levels)})')
  out['fsq_levels'] = tuple(levels)

  # Decoder: from_latents -> register posemb -> nested dropout -> (prefix
  # masking) -> null cond; patches -> posemb; time embedding; packer.
  n, fl = dec.find('LinearLayer')
  names['dec_from_latents'] = n
  n_rpos, rpos = dec.find('PositionalEmbeddingAdder', read_key=fl['write_key'])
  names['dec_reg_pos'] = n_rpos
  reg_pos_size, reg_kind = _posemb(dec, n_rpos, rpos, 2)
  n_nd, nd = dec.find('MaskedNestedDropout')
  names['dec_nested'] = n_nd
  pre = dec.find('MaskedPrefixDropout', optional=True)
  n_nc, nc = dec.find('LearnedNullCond')
  names['dec_null'] = n_nc
  _require(not nc.get('replace_with_single_token'),
           dec.field(n_nc, 'replace_with_single_token'), True,
           'a null condition that replaces every register')
  chain = [dec.index(n_rpos), dec.index(n_nd)] + (
      [dec.index(pre[0])] if pre else []) + [dec.index(n_nc)]
  _require(chain == sorted(chain), f'config.decoder.module_dict (order of '
           f'{n_rpos}, {n_nd}{", " + pre[0] if pre else ""}, {n_nc})',
           [dec.items[i][0] for i in sorted(chain)],
           'posemb -> nested dropout -> prefix masking -> null condition')
  if pre:
    names['dec_prefix'] = pre[0]
  n, pe = dec.find('PatchEmbedder')
  names['dec_patch'] = n
  _require(tuple(int(p) for p in pe['patch_sizes']) == out['patch_size'],
           dec.field(n, 'patch_sizes'), pe['patch_sizes'],
           'the encoder\'s patch size')
  n, ppos = dec.find('PositionalEmbeddingAdder', read_key=pe['patches_list_write_key'])
  names['dec_pos'] = n
  dec_pos_size, dec_kind = _posemb(dec, n, ppos, 3)
  _require(dec_pos_size == enc_pos_size and dec_kind == enc_kind == reg_kind,
           dec.field(n, 'max_sizes'), (dec_pos_size, dec_kind),
           f'the encoder\'s position table ({enc_pos_size}, {enc_kind})')
  n, te = dec.find('TimestepEmbedder')
  names['dec_temb'] = n
  _require(int(te.get('frequency_embedding_size', 256)) == 256 and
           float(te.get('max_timestep', 1.0)) == 1.0 and
           not te.get('temb_as_tokens', False), dec.field(n, 'max_timestep'),
           te.get('max_timestep'), 'frequency size 256, max_timestep 1.0, '
           'adaLN conditioning')
  n, pk = dec.find('BlockWiseSequenceInterleavePacker')
  keys = list(pk['input_list_read_keys'])
  _require(sorted(keys) == sorted([nc['read_write_key'], ppos['write_key']]),
           dec.field(n, 'input_list_read_keys'), keys, 'registers and patches')
  registers_first = keys[0] == nc['read_write_key']
  mode = pk.get('mask_mode')
  _require(mode in ('time_block_causal', 'full'), dec.field(n, 'mask_mode'),
           mode, "'time_block_causal' or 'full'")
  n, tr = dec.find('FlexTransformer')
  names['dec_trunk'] = n
  t_dec = _trunk(dec, n, tr, adaln=True)
  per_subseq = bool(pk.get('per_subseq_embs', False))
  _require(t_dec['adaln_expansion'] == (2 if per_subseq else 1),
           dec.field(n, 'adaLN_expansion'), t_dec['adaln_expansion'],
           'one modulation per sub-sequence (2, per_subseq_embs) or one shared (1)')
  n, head = dec.find('ToPatchesLinearHead')
  names['dec_head'] = n
  _require(not head.get('use_mup_readout'), dec.field(n, 'use_mup_readout'),
           True, 'plain Linear heads')
  for key in ('head_dim', 'mlp_ratio'):
    _require(t_enc[key] == t_dec[key], dec.field(names['dec_trunk'], key),
             t_dec[key], f'the encoder\'s {key} ({t_enc[key]})')

  out.update(
      enc_width=t_enc['dim'], enc_depth=t_enc['depth'], dec_width=t_dec['dim'],
      dec_depth=t_dec['depth'], head_dim=t_enc['head_dim'],
      mlp_ratio=t_enc['mlp_ratio'], pos_max_size=enc_pos_size,
      register_pos_max_size=reg_pos_size, pos_kind=enc_kind,
      decoder_registers_first=registers_first,
      adaln_subsequences=t_dec['adaln_expansion'],
      decoder_attention='time_causal' if mode == 'time_block_causal' else 'full',
      frame_conditioning=pre is not None)
  return {'model': out, 'names': names}


# ---- tensors ---------------------------------------------------------------

def _linear(w):                      # torch Linear [out, in] -> kernel [in, out]
  return np.ascontiguousarray(np.asarray(w).T)


def tensor_map(names: Dict[str, str], enc_depth: int, dec_depth: int,
               heads: Tuple[int, int], head_dim: int
               ) -> Dict[str, Tuple[Tuple[str, ...], Callable]]:
  """release tensor name -> (vftok param path, conversion)."""
  e = lambda k: f'encoder.module_dict.{names[k]}'
  d = lambda k: f'decoder.module_dict.{names[k]}'
  pos = lambda w: np.ascontiguousarray(np.asarray(w)[:, 0].transpose(0, 2, 1))
  same = np.asarray
  m = {
      f'{e("enc_patch")}.patch_proj.weight': (('encoder', 'patch_embed', 'kernel'), _linear),
      f'{e("enc_patch")}.patch_proj.bias': (('encoder', 'patch_embed', 'bias'), same),
      f'{e("enc_pos")}.posembs': (('encoder', 'pos_patch'), pos),
      f'{e("enc_registers")}.registers': (('encoder', 'registers'), same),
      f'{e("enc_head")}.proj.weight': (('encoder', 'to_codes', 'kernel'), _linear),
      f'{e("enc_head")}.proj.bias': (('encoder', 'to_codes', 'bias'), same),
      f'{d("dec_from_latents")}.proj.weight': (('decoder', 'codes_embed', 'kernel'), _linear),
      f'{d("dec_from_latents")}.proj.bias': (('decoder', 'codes_embed', 'bias'), same),
      f'{d("dec_reg_pos")}.posembs': (('decoder', 'pos_register'), pos),
      f'{d("dec_nested")}.dropout_mask_token': (('decoder', 'mask_token'), same),
      f'{d("dec_null")}.nullcond': (('decoder', 'null_token'), same),
      f'{d("dec_patch")}.patch_proj.weight': (('decoder', 'patch_embed', 'kernel'), _linear),
      f'{d("dec_patch")}.patch_proj.bias': (('decoder', 'patch_embed', 'bias'), same),
      f'{d("dec_pos")}.posembs': (('decoder', 'pos_patch'), pos),
      f'{d("dec_temb")}.mlp.0.weight': (('decoder', 'time_embed', 'fc1', 'kernel'), _linear),
      f'{d("dec_temb")}.mlp.0.bias': (('decoder', 'time_embed', 'fc1', 'bias'), same),
      f'{d("dec_temb")}.mlp.2.weight': (('decoder', 'time_embed', 'fc2', 'kernel'), _linear),
      f'{d("dec_temb")}.mlp.2.bias': (('decoder', 'time_embed', 'fc2', 'bias'), same),
      f'{d("dec_head")}.adaLN_modulation.1.weight': (('decoder', 'adaln_final', 'kernel'), _linear),
      f'{d("dec_head")}.adaLN_modulation.1.bias': (('decoder', 'adaln_final', 'bias'), same),
      f'{d("dec_head")}.proj.weight': (('decoder', 'to_patches', 'kernel'), _linear),
      f'{d("dec_head")}.proj.bias': (('decoder', 'to_patches', 'bias'), same),
  }
  if 'dec_prefix' in names:
    m[f'{d("dec_prefix")}.dropout_mask_token'] = (('decoder', 'prefix_token'), same)
  for part, trunk, depth, h in (('encoder', e('enc_trunk'), enc_depth, heads[0]),
                                ('decoder', d('dec_trunk'), dec_depth, heads[1])):
    qkv = lambda w, h=h: _linear(w).reshape(-1, h, head_dim)
    out = lambda w, h=h: _linear(w).reshape(h, head_dim, -1)
    for i in range(depth):
      src, dst = f'{trunk}.blocks.{i}', (part, f'blocks_{i}')
      for a, b in (('wq', 'query'), ('wk', 'key'), ('wv', 'value')):
        m[f'{src}.attn.{a}.weight'] = (dst + ('attn', b, 'kernel'), qkv)
      m[f'{src}.attn.proj.weight'] = (dst + ('attn', 'out', 'kernel'), out)
      for fc in ('fc1', 'fc2', 'fc3'):
        m[f'{src}.mlp.{fc}.weight'] = (dst + ('mlp', fc, 'kernel'), _linear)
      if part == 'decoder':
        m[f'{src}.adaLN_modulation.1.weight'] = (dst + ('adaln', 'kernel'), _linear)
        m[f'{src}.adaLN_modulation.1.bias'] = (dst + ('adaln', 'bias'), same)
  return m


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def _set(tree, path, value):
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def convert_tensors(path: str, release: Dict[str, Any], abstract_params,
                    put: Callable) -> dict:
  """Reads the checkpoint tensor by tensor, converts each and hands it to
  `put(value, abstract_leaf)` (e.g. a sharded device_put), so no host holds a
  second full copy. abstract_params: vftok's {'encoder': ..., 'decoder': ...}
  ShapeDtypeStructs. Returns the same tree of put arrays."""
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  f = release['model']
  mapping = tensor_map(release['names'], f['enc_depth'], f['dec_depth'],
                       (f['enc_width'] // f['head_dim'],
                        f['dec_width'] // f['head_dim']), f['head_dim'])
  header = _header(path)
  stored = [k for k in header if k != '__metadata__']
  model_keys = [k for k in stored if not k.startswith(VAE_PREFIXES)]
  extra = sorted(set(model_keys) - set(mapping))
  missing = sorted(set(mapping) - set(model_keys))
  if missing:
    raise CheckpointError(f'{path}: missing tensor {missing[0]}'
                          + (f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''))
  if extra:
    raise CheckpointError(f'{path}: unexpected tensor {extra[0]} (not part of '
                          'the configured model)'
                          + (f' (and {len(extra) - 1} more)' if len(extra) > 1 else ''))
  out = {}
  try:
    with safe_open(path, framework='np') as st:
      for key in model_keys:
        dst, conv = mapping[key]
        want = _get(abstract_params, dst)
        value = conv(st.get_tensor(key)).astype(np.float32)
        if tuple(value.shape) != tuple(want.shape):
          raise CheckpointError(
              f'{path}: tensor {key} has shape {tuple(st.get_slice(key).get_shape())}'
              f' (-> {tuple(value.shape)}); the config needs '
              f'{_torch_shape(key, want.shape)} (-> {tuple(want.shape)})')
        _set(out, dst, put(value, want))
  except CheckpointError:
    raise
  except Exception as e:  # safetensors' own errors on a damaged file
    raise CheckpointError(f'{path}: cannot read tensors ({e})') from None
  return out


def _torch_shape(key: str, shape) -> tuple:
  """The release's shape of a tensor that should have vftok shape `shape`."""
  shape = tuple(shape)
  if key.endswith('posembs'):
    return (shape[0], 1, shape[2], shape[1])
  if re.search(r'\.(wq|wk|wv)\.weight$', key):
    return (shape[1] * shape[2], shape[0])
  if key.endswith('attn.proj.weight'):
    return (shape[2], shape[0] * shape[1])
  if key.endswith('.weight') and len(shape) == 2:
    return (shape[1], shape[0])
  return shape


def has_vae_tensors(path: str) -> bool:
  """True if the file also carries VidTok's weights (`vae.vidtok.*`)."""
  return any(k.startswith(VAE_PREFIXES) for k in _header(path)
             if k != '__metadata__')
