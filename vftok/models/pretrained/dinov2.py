"""DINOv2 ViT in Flax, loaded from a local Hugging Face checkpoint (REPA teacher).

Equivalent to transformers' `Dinov2Model` / `Dinov2WithRegistersModel` in
inference: same tokens ([CLS, registers..., patches]), same hidden states
(embeddings output, then each block's output; the last one is NOT normalised,
`last_hidden_state` is), same position-embedding interpolation. Pixels are
channel-last [B, H, W, 3], already normalised like HF's `pixel_values`.

Position-embedding resampling is written as two small interpolation matrices
built in NumPy from the static grid sizes, reproducing torch's
`F.interpolate(mode='bicubic', align_corners=False)` (Dinov2: Keys a=-0.75,
border-clamped taps) and, for the registers variant, `antialias=True` (PIL
style a=-0.5 filter whose support grows with the downscale factor,
renormalised over in-range taps). The weights are computed in float32 with
torch's formulas; the result matches torch to float32 rounding (~1e-7), not
bit for bit, because the summation order differs.
"""
import dataclasses
from typing import Any, NamedTuple, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vftok.models.pretrained import hf_checkpoint
from vftok.models import layers
from vftok.models.pretrained import resample

Dtype = Any
CheckpointError = hf_checkpoint.CheckpointError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MODEL_TYPES = ('dinov2', 'dinov2_with_registers')
_ACTS = {
    'gelu': lambda x: nn.gelu(x, approximate=False),  # HF 'gelu' is erf GELU
    'gelu_new': lambda x: nn.gelu(x, approximate=True),
    'gelu_pytorch_tanh': lambda x: nn.gelu(x, approximate=True),
    'gelu_fast': lambda x: nn.gelu(x, approximate=True),
    'quick_gelu': lambda x: x * jax.nn.sigmoid(1.702 * x),
    'silu': nn.silu, 'swish': nn.silu, 'relu': nn.relu,
}


def _layer_norm(name, eps, dtype):
  # Two-pass variance: flax's fast E[x^2]-E[x]^2 costs ~1e-6 of parity.
  init = lambda i: nn.with_logical_partitioning(i, ('norm',))
  return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=dtype, name=name,
                      use_fast_variance=False, scale_init=init(nn.initializers.ones_init()),
                      bias_init=init(nn.initializers.zeros_init()))


class Dinov2Output(NamedTuple):
  last_hidden_state: jax.Array                       # after the final norm
  hidden_states: Optional[Tuple[jax.Array, ...]] = None  # embeddings + blocks


class Dinov2Layer(nn.Module):
  hidden_size: int
  num_heads: int
  mlp_hidden: int
  use_swiglu: bool
  hidden_act: str
  qkv_bias: bool
  eps: float
  dtype: Dtype

  @nn.compact
  def __call__(self, x):
    d, h = self.hidden_size, self.num_heads
    dense = lambda f, axes, name, bias=True, in_axis=-1: layers.dense(
        f, axes, name, self.dtype, use_bias=bias, in_axis=in_axis)
    scale = lambda name: self.param(name, nn.with_logical_partitioning(
        nn.initializers.ones_init(), ('embed',)), (d,), self.dtype)

    y = _layer_norm('norm1', self.eps, self.dtype)(x)
    q, k, v = (dense((h, d // h), ('embed', 'heads', 'head_dim'), n,
                     self.qkv_bias)(y) for n in ('query', 'key', 'value'))
    y = jax.nn.dot_product_attention(q, k, v)
    y = dense(d, ('heads', 'head_dim', 'embed'), 'out', in_axis=(-2, -1))(y)
    x = x + y * scale('layer_scale1')

    y = _layer_norm('norm2', self.eps, self.dtype)(x)
    if self.use_swiglu:
      y = (nn.silu(dense(self.mlp_hidden, ('embed', 'mlp'), 'gate')(y)) *
           dense(self.mlp_hidden, ('embed', 'mlp'), 'up')(y))
      y = dense(d, ('mlp', 'embed'), 'down')(y)
    else:
      y = _ACTS[self.hidden_act](dense(self.mlp_hidden, ('embed', 'mlp'), 'fc1')(y))
      y = dense(d, ('mlp', 'embed'), 'fc2')(y)
    return x + y * scale('layer_scale2')


class Dinov2(nn.Module):
  """DINOv2 ViT; `num_positions` is the checkpoint's (square) patch grid area."""
  hidden_size: int
  num_layers: int
  num_heads: int
  mlp_hidden: int
  num_positions: int
  patch_size: int = 14
  num_channels: int = 3
  num_register_tokens: int = 0
  use_swiglu: bool = False
  hidden_act: str = 'gelu'
  qkv_bias: bool = True
  layer_norm_eps: float = 1e-6
  antialias_pos: bool = False   # Dinov2WithRegisters interpolates with antialias
  dtype: Dtype = jnp.float32

  def position_embeddings(self, pos, grid_hw):
    """[1 + P, D] checkpoint table -> [1 + gh * gw, D], interpolated in f32."""
    side = int(round(self.num_positions ** 0.5))
    patch = pos[1:].astype(jnp.float32).reshape(side, side, -1)
    patch = resample.resize_grid(
        patch, grid_hw,
        lambda i, o: resample.bicubic_matrix(i, o, self.antialias_pos))
    return jnp.concatenate([pos[:1], patch.reshape(-1, pos.shape[-1]).astype(pos.dtype)])

  @nn.compact
  def __call__(self, pixels, output_hidden_states: bool = False) -> Dinov2Output:
    """pixels [B, H, W, C] normalised; H, W need not be multiples of the patch
    (the remainder is dropped, as torch's stride-p conv does)."""
    b, hgt, wid, c = pixels.shape
    p, d = self.patch_size, self.hidden_size
    if c != self.num_channels or hgt < p or wid < p:
      raise ValueError(f'pixels must be [B, H>={p}, W>={p}, {self.num_channels}] '
                       f'(channel-last), got {pixels.shape}')
    gh, gw = hgt // p, wid // p
    x = pixels[:, :gh * p, :gw * p].astype(self.dtype)
    x = x.reshape(b, gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, gh * gw, p * p * c)
    x = layers.dense(d, ('patch', 'embed'), 'patch_embed', self.dtype,
                     use_bias=True)(x)

    param = lambda name, shape, axes: self.param(name, nn.with_logical_partitioning(
        nn.initializers.normal(0.02), axes), shape, self.dtype)
    cls = param('cls_token', (d,), ('embed',))
    pos = param('pos_embed', (1 + self.num_positions, d), ('length', 'embed'))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)), x], axis=1)
    x = x + self.position_embeddings(pos, (gh, gw))[None]
    if self.num_register_tokens:  # after the position embedding, as HF
      reg = param('register_tokens', (self.num_register_tokens, d),
                  ('registers', 'embed'))
      x = jnp.concatenate(
          [x[:, :1], jnp.broadcast_to(reg, (b,) + reg.shape), x[:, 1:]], axis=1)

    hidden = [x]
    for i in range(self.num_layers):
      x = Dinov2Layer(d, self.num_heads, self.mlp_hidden, self.use_swiglu,
                      self.hidden_act, self.qkv_bias, self.layer_norm_eps,
                      self.dtype, name=f'layers_{i}')(x)
      hidden.append(x)
    last = _layer_norm('norm', self.layer_norm_eps, self.dtype)(x)
    return Dinov2Output(last, tuple(hidden) if output_hidden_states else None)


def _config_int(config, key):
  v = config.get(key)
  if isinstance(v, (list, tuple)):
    if len(set(v)) != 1:
      raise CheckpointError(f'non-square {key}={v} is not supported')
    v = v[0]
  return int(v)


def _convert(config, weights, dtype) -> Tuple[Dinov2, dict]:
  prefixes = ('', 'dinov2.', 'dinov2_with_registers.', 'model.')

  def get(*names):
    for name in names:
      for pre in prefixes:
        if pre + name in weights:
          return np.asarray(weights[pre + name], np.float32)
    raise CheckpointError(f'checkpoint has no tensor {names[0]!r} (nor '
                          f'{list(names[1:])}; tried prefixes {list(prefixes)})')

  d, heads = int(config['hidden_size']), int(config['num_attention_heads'])
  n_layers, p = int(config['num_hidden_layers']), _config_int(config, 'patch_size')
  n_reg = int(config.get('num_register_tokens', 0) or 0)
  swiglu = bool(config.get('use_swiglu_ffn', False))
  act = config.get('hidden_act', 'gelu')
  if act not in _ACTS:
    raise CheckpointError(f'unsupported hidden_act {act!r}')
  if d % heads:
    raise CheckpointError(f'hidden_size {d} not divisible by {heads} heads')
  hd = d // heads

  pos = get('embeddings.position_embeddings').reshape(-1, d)
  conv = get('embeddings.patch_embeddings.projection.weight')  # [D, C, p, p]
  params = {
      'patch_embed': {'kernel': conv.transpose(2, 3, 1, 0).reshape(-1, d),
                      'bias': get('embeddings.patch_embeddings.projection.bias')},
      'cls_token': get('embeddings.cls_token').reshape(d),
      'pos_embed': pos,
      'norm': {'scale': get('layernorm.weight'), 'bias': get('layernorm.bias')},
  }
  if n_reg:
    params['register_tokens'] = get('embeddings.register_tokens').reshape(n_reg, d)

  qkv_bias = bool(config.get('qkv_bias', True))
  mlp_hidden = None
  for i in range(n_layers):
    pre = f'encoder.layer.{i}.'
    g = lambda *n, pre=pre: get(*(pre + x for x in n))
    att = lambda old, new, part, g=g: g(f'attention.attention.{old}.{part}',
                                        f'attention.{new}.{part}')
    layer = {'norm1': {'scale': g('norm1.weight'), 'bias': g('norm1.bias')},
             'norm2': {'scale': g('norm2.weight'), 'bias': g('norm2.bias')},
             'layer_scale1': g('layer_scale1.lambda1'),
             'layer_scale2': g('layer_scale2.lambda1')}
    for old, new in (('query', 'q_proj'), ('key', 'k_proj'), ('value', 'v_proj')):
      layer[old] = {'kernel': att(old, new, 'weight').T.reshape(d, heads, hd)}
      if qkv_bias:
        layer[old]['bias'] = att(old, new, 'bias').reshape(heads, hd)
    layer['out'] = {
        'kernel': g('attention.output.dense.weight', 'attention.o_proj.weight'
                    ).T.reshape(heads, hd, d),
        'bias': g('attention.output.dense.bias', 'attention.o_proj.bias')}
    lin = lambda w, b: {'kernel': w.T, 'bias': b}
    if swiglu:
      try:  # original / saved layout: gate and up fused, gate first
        w_in, b_in = g('mlp.weights_in.weight'), g('mlp.weights_in.bias')
        (wg, wu), (bg, bu) = np.split(w_in, 2), np.split(b_in, 2)
      except CheckpointError:
        wg, bg = g('mlp.gate_proj.weight'), g('mlp.gate_proj.bias')
        wu, bu = g('mlp.up_proj.weight'), g('mlp.up_proj.bias')
      layer['gate'], layer['up'] = lin(wg, bg), lin(wu, bu)
      layer['down'] = lin(g('mlp.weights_out.weight', 'mlp.down_proj.weight'),
                          g('mlp.weights_out.bias', 'mlp.down_proj.bias'))
      width = wg.shape[0]
    else:
      layer['fc1'] = lin(g('mlp.fc1.weight'), g('mlp.fc1.bias'))
      layer['fc2'] = lin(g('mlp.fc2.weight'), g('mlp.fc2.bias'))
      width = layer['fc1']['kernel'].shape[1]
    mlp_hidden = width  # from the tensors: SwiGLU widths are rounded (HF: to 8)
    params[f'layers_{i}'] = layer

  module = Dinov2(
      hidden_size=d, num_layers=n_layers, num_heads=heads,
      mlp_hidden=mlp_hidden or 4 * d, num_positions=pos.shape[0] - 1,
      patch_size=p, num_channels=int(config.get('num_channels', 3)),
      num_register_tokens=n_reg, use_swiglu=swiglu, hidden_act=act,
      qkv_bias=qkv_bias, layer_norm_eps=float(config.get('layer_norm_eps', 1e-6)),
      antialias_pos=config['model_type'] == 'dinov2_with_registers', dtype=dtype)
  side = int(round(module.num_positions ** 0.5))
  if side * side != module.num_positions:
    raise CheckpointError(f'{module.num_positions} position embeddings do not '
                          'form a square grid')
  return module, params


def load_dinov2(path: str, dtype: Dtype = jnp.float32) -> Tuple[Dinov2, dict]:
  """(module, params) of a local HF DINOv2 (with or without registers) dir.

  Params are stored in `dtype`, which is also the compute dtype (position
  interpolation and layer-norm statistics stay in float32).
  """
  config, weights = hf_checkpoint.load(path)
  if config.get('model_type') not in _MODEL_TYPES:
    raise CheckpointError(f'{path!r} is not a DINOv2 checkpoint: model_type='
                          f'{config.get("model_type")!r}, expected one of {_MODEL_TYPES}')
  missing = [k for k in ('hidden_size', 'num_hidden_layers', 'num_attention_heads',
                         'patch_size') if k not in config]
  if missing:
    raise CheckpointError(f'{path!r}: config.json lacks {missing}')
  module, params = _convert(config, weights, dtype)
  # Compare with the tree the module itself would create, so a renamed or
  # reshaped tensor fails here and not deep inside a jitted step.
  p = module.patch_size
  expected = nn.unbox(jax.eval_shape(
      module.init, jax.random.key(0), jnp.zeros((1, p, p, module.num_channels),
                                                dtype))['params'])
  want = {jax.tree_util.keystr(k): v.shape
          for k, v in jax.tree_util.tree_leaves_with_path(expected)}
  got = {jax.tree_util.keystr(k): v.shape
         for k, v in jax.tree_util.tree_leaves_with_path(params)}
  if want != got:
    bad = sorted(set(want.items()) ^ set(got.items()))[:6]
    raise CheckpointError(f'{path!r}: tensors do not fit the config: {bad}')
  return module, jax.tree.map(lambda a: jnp.asarray(a, dtype), params)


def make_patch_feature_fn(path: str, layer: Optional[int] = None,
                          grid_hw: Optional[Sequence[int]] = None,
                          image_size=224, dtype: Dtype = jnp.float32):
  """RGB frames [B, T, H, W, 3] in [0, 255] -> patch features [B, T, h*w, D].

  Each frame is resized as a whole (no center crop: the targets must cover
  the same field of view as the latent grid) to `image_size` (int or (H, W),
  multiples of the patch size) with antialiased bicubic (PIL-like, as HF's
  processor), then scaled to [0, 1] and normalised with ImageNet mean/std.
  Features are the patch tokens (CLS and registers dropped) of the final
  normalised output (`layer=None`) or of `hidden_states[layer]` (0 is the
  embeddings, k the k-th block's raw output), resampled from the ViT patch
  grid to `grid_hw` with `resample.area_or_linear_matrix` (area average when shrinking,
  bilinear when growing); `grid_hw=None` keeps the ViT grid.

  The returned `features(frames, params=None)` is jit-able. Pass `params`
  (`features.params`, e.g. placed with a sharding) as a jit argument for big
  models: closed-over arrays would be baked into the executable as constants.
  """
  module, params = load_dinov2(path, dtype)
  n_hidden = module.num_layers + 1
  if layer is not None and not -n_hidden <= layer < n_hidden:
    raise ValueError(f'layer {layer} out of range for {n_hidden} hidden states')
  n_layers = module.num_layers if layer is None else range(n_hidden)[layer]
  # Blocks after `layer` are never run (params of deeper blocks are ignored).
  run = dataclasses.replace(module, num_layers=n_layers)
  size = (image_size, image_size) if np.isscalar(image_size) else tuple(image_size)
  p = module.patch_size
  if size[0] % p or size[1] % p:
    raise ValueError(f'image_size {size} must be multiples of the patch {p}')
  vit_grid = (size[0] // p, size[1] // p)
  out_grid = vit_grid if grid_hw is None else tuple(grid_hw)
  skip = 1 + module.num_register_tokens
  mean = np.asarray(IMAGENET_MEAN, np.float32) * 255
  std = np.asarray(IMAGENET_STD, np.float32) * 255

  def features(frames, params=None):
    params = jax.lax.stop_gradient(features.params if params is None else params)
    b, t, h, w, c = frames.shape
    x = frames.reshape(b * t, h, w, c).astype(jnp.float32)
    if (h, w) != size:
      x = jax.image.resize(x, (b * t,) + size + (c,), 'cubic', antialias=True)
      x = jnp.clip(x, 0, 255)  # the processor resizes uint8 images
    x = ((x - mean) / std).astype(dtype)
    out = run.apply({'params': params}, x, output_hidden_states=layer is not None)
    tokens = out.last_hidden_state if layer is None else out.hidden_states[-1]
    grid = tokens[:, skip:].astype(jnp.float32).reshape(b * t, *vit_grid, -1)
    grid = resample.resize_grid(grid, out_grid)
    return jax.lax.stop_gradient(grid.reshape(b, t, out_grid[0] * out_grid[1], -1))

  features.params, features.module = params, module
  return features
