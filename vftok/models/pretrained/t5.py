"""T5 encoder in Flax linen, numerically equivalent to transformers'
`T5EncoderModel` (last_hidden_state).

Used as a frozen caption encoder: the AR generator cross-attends to its
per-token outputs. Covers T5 v1.0 (ReLU FFN) and v1.1 / Flan-T5 (gated GELU)
through `feed_forward_proj`, as HF does. Only inference is supported (no
dropout); checkpoints come from local directories via `hf_checkpoint`.
"""
import dataclasses
import math
from typing import Any, Dict, Tuple

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vftok.models.pretrained import hf_checkpoint
from vftok.models.layers import dense

Dtype = Any

# HF's ACT2FN names as used by T5Config.dense_act_fn.
ACTIVATIONS = {
    'relu': nn.relu,
    'gelu': lambda x: nn.gelu(x, approximate=False),
    'gelu_new': lambda x: nn.gelu(x, approximate=True),
    'gelu_pytorch_tanh': lambda x: nn.gelu(x, approximate=True),
    'silu': nn.silu,
    'swish': nn.silu,
}


@dataclasses.dataclass(frozen=True)
class T5Config:
  vocab_size: int = 32128
  d_model: int = 512
  d_kv: int = 64
  d_ff: int = 2048
  num_layers: int = 6
  num_heads: int = 8
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  feed_forward_proj: str = 'relu'

  @property
  def is_gated(self) -> bool:
    return self.feed_forward_proj.split('-')[0] == 'gated'

  @property
  def activation(self) -> str:
    act = self.feed_forward_proj.split('-')[-1]
    # HF special-cases this legacy name to the tanh approximation.
    return 'gelu_new' if self.feed_forward_proj == 'gated-gelu' else act

  @classmethod
  def from_hf(cls, cfg: Dict[str, Any]) -> 'T5Config':
    kw = {f.name: cfg[f.name] for f in dataclasses.fields(cls) if f.name in cfg}
    out = cls(**kw)
    if out.activation not in ACTIVATIONS:
      raise hf_checkpoint.CheckpointError(
          f'unsupported T5 feed_forward_proj {out.feed_forward_proj!r}')
    return out


def relative_position_buckets(q_len: int, k_len: int, num_buckets: int,
                              max_distance: int) -> np.ndarray:
  """[q_len, k_len] int32 bucket ids, bidirectional (encoder) case.

  Mirrors HF's float32 arithmetic (log, divide, truncate) so that positions at
  bucket boundaries land in the same bucket as in PyTorch; t5x adds an eps
  inside the log and can differ there. Static, so computed in NumPy.
  """
  rel = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]
  half = num_buckets // 2
  buckets = (rel > 0).astype(np.int64) * half
  rel = np.abs(rel)
  max_exact = half // 2
  # max(rel, 1) only avoids log(0); those entries take the exact branch.
  ratio = np.maximum(rel, 1).astype(np.float32) / np.float32(max_exact)
  large = max_exact + (
      np.log(ratio) / np.float32(math.log(max_distance / max_exact))
      * np.float32(half - max_exact)).astype(np.int64)
  large = np.minimum(large, half - 1)
  return (buckets + np.where(rel < max_exact, rel, large)).astype(np.int32)


class RMSNorm(nn.Module):
  """T5 LayerNorm: no mean subtraction, no bias; statistics in float32."""
  eps: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param('scale', nn.with_logical_partitioning(
        nn.initializers.ones_init(), ('norm',)), (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    return (x32 * jax.lax.rsqrt(var + self.eps)).astype(self.dtype) * \
        scale.astype(self.dtype)


class T5Attention(nn.Module):
  config: T5Config
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, bias, mask):
    c = self.config
    proj = lambda n: dense((c.num_heads, c.d_kv), ('embed', 'heads', 'head_dim'),
                           n, self.dtype)(x)
    q, k, v = proj('q'), proj('k'), proj('v')
    # T5 folds the 1/sqrt(d) scale into its initialisation, so none here.
    scores = jnp.einsum('bqhd,bkhd->bhqk', q, k).astype(jnp.float32) + bias
    scores = jnp.where(mask[:, None, None, :], scores,
                       jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
    out = jnp.einsum('bhqk,bkhd->bqhd', probs, v)
    return dense(c.d_model, ('heads', 'head_dim', 'embed'), 'o', self.dtype,
                 in_axis=(-2, -1))(out)


class T5FeedForward(nn.Module):
  config: T5Config
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = self.config
    act = ACTIVATIONS[c.activation]
    if c.is_gated:
      h = act(dense(c.d_ff, ('embed', 'mlp'), 'wi_0', self.dtype)(x)) * \
          dense(c.d_ff, ('embed', 'mlp'), 'wi_1', self.dtype)(x)
    else:
      h = act(dense(c.d_ff, ('embed', 'mlp'), 'wi', self.dtype)(x))
    return dense(c.d_model, ('mlp', 'embed'), 'wo', self.dtype)(h)


class T5Block(nn.Module):
  config: T5Config
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, bias, mask):
    c = self.config
    norm = lambda n: RMSNorm(c.layer_norm_epsilon, self.dtype, name=n)
    x = x + T5Attention(c, self.dtype, name='attn')(norm('attn_norm')(x),
                                                     bias, mask)
    return x + T5FeedForward(c, self.dtype, name='ffn')(norm('ffn_norm')(x))


class T5Encoder(nn.Module):
  """ids [B, L] int, mask [B, L] bool (True = real token) -> [B, L, d_model]."""
  config: T5Config
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, ids, mask):
    c = self.config
    x = nn.Embed(c.vocab_size, c.d_model, dtype=self.dtype, name='shared',
                 embedding_init=nn.with_logical_partitioning(
                     nn.initializers.normal(1.0), ('vocab', 'embed')))(ids)
    # HF keeps the bias table in block 0 and reuses its output in every
    # layer; one top-level table is the same computation.
    table = self.param('relative_attention_bias', nn.with_logical_partitioning(
        nn.initializers.normal(1.0), (None, 'heads')),
        (c.relative_attention_num_buckets, c.num_heads))
    length = ids.shape[1]
    buckets = relative_position_buckets(
        length, length, c.relative_attention_num_buckets,
        c.relative_attention_max_distance)
    bias = jnp.transpose(table.astype(jnp.float32)[buckets], (2, 0, 1))[None]
    mask = jnp.asarray(mask, bool)
    for i in range(c.num_layers):
      x = T5Block(c, self.dtype, name=f'blocks_{i}')(x, bias, mask)
    return RMSNorm(c.layer_norm_epsilon, self.dtype, name='final_norm')(x)


def _linear(w: np.ndarray, out_shape=None, in_shape=None) -> np.ndarray:
  """torch Linear weight [out, in] -> DenseGeneral kernel [*in, *out]."""
  k = w.T
  if in_shape is not None:
    k = k.reshape(*in_shape, k.shape[-1])
  if out_shape is not None:
    k = k.reshape(*k.shape[:-1], *out_shape)
  return k


def convert_params(config: T5Config, weights: Dict[str, np.ndarray]
                   ) -> Dict[str, Any]:
  """HF state dict (full T5 or T5EncoderModel) -> our {'params': ...}."""
  c = config
  get = lambda n: hf_checkpoint.take(weights, n)
  heads = (c.num_heads, c.d_kv)
  if 'shared.weight' in weights:
    shared = weights['shared.weight']
  else:
    shared = get('encoder.embed_tokens.weight')
  params = {
      'shared': {'embedding': shared},
      'relative_attention_bias': get(
          'encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight'),
      'final_norm': {'scale': get('encoder.final_layer_norm.weight')},
  }
  for i in range(c.num_layers):
    p = f'encoder.block.{i}.layer.'
    attn = {n: {'kernel': _linear(get(f'{p}0.SelfAttention.{n}.weight'),
                                  out_shape=heads)} for n in 'qkv'}
    attn['o'] = {'kernel': _linear(get(f'{p}0.SelfAttention.o.weight'),
                                   in_shape=heads)}
    ffn_names = ('wi_0', 'wi_1', 'wo') if c.is_gated else ('wi', 'wo')
    params[f'blocks_{i}'] = {
        'attn_norm': {'scale': get(f'{p}0.layer_norm.weight')},
        'attn': attn,
        'ffn_norm': {'scale': get(f'{p}1.layer_norm.weight')},
        'ffn': {n: {'kernel': _linear(get(f'{p}1.DenseReluDense.{n}.weight'))}
                for n in ffn_names},
    }
  return {'params': params}


def check_tree(module: nn.Module, params, *example_args):
  """Raise CheckpointError unless `params` has exactly the module's shapes
  (catches a name-mapping slip or a config that disagrees with the weights)."""
  want = nn.meta.unbox(jax.eval_shape(module.init, jax.random.key(0),
                                      *example_args))
  want = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(
      want, sep='/').items()}
  got = {k: np.shape(v) for k, v in traverse_util.flatten_dict(
      params, sep='/').items()}
  bad = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
  if bad:
    raise hf_checkpoint.CheckpointError(
        f'checkpoint does not fit {type(module).__name__}: ' + ', '.join(
            f'{k} got {got.get(k)} want {want.get(k)}' for k in bad[:5]))


def load_t5_encoder(path: str, dtype: Dtype = jnp.float32
                    ) -> Tuple[T5Encoder, Dict[str, Any]]:
  """(module, params) of the encoder of a local HF T5 / T5EncoderModel /
  Flan-T5 directory. Params are plain arrays in `dtype`; decoder tensors are
  ignored."""
  cfg, weights = hf_checkpoint.load(str(path))
  if cfg.get('model_type') not in ('t5', 'mt5', 'umt5'):
    raise hf_checkpoint.CheckpointError(
        f'{path!r} is not a T5 checkpoint (model_type='
        f'{cfg.get("model_type")!r})')
  if cfg.get('model_type') == 'umt5':
    # umT5 has a bias table per layer; the shared-table port would be wrong.
    raise hf_checkpoint.CheckpointError('umT5 checkpoints are not supported')
  config = T5Config.from_hf(cfg)
  module = T5Encoder(config, dtype)
  params = convert_params(config, weights)
  ids = jax.ShapeDtypeStruct((1, 2), jnp.int32)
  check_tree(module, params, ids, jax.ShapeDtypeStruct((1, 2), jnp.bool_))
  params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
  return module, params
