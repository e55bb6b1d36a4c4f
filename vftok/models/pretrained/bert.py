"""BERT encoder in Flax linen, numerically equivalent to transformers'
`BertModel` last_hidden_state (the pooler is dropped).

This is the architecture of all-MiniLM-L6-v2, the small caption encoder used
when a T5 is too heavy (tests, CPU runs). Inference only: no dropout.
"""
import dataclasses
from typing import Any, Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vftok.models.pretrained import hf_checkpoint
from vftok.models.layers import dense
from vftok.models.pretrained.t5 import ACTIVATIONS, check_tree

Dtype = Any


@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = 'gelu'
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12

  @classmethod
  def from_hf(cls, cfg: Dict[str, Any]) -> 'BertConfig':
    if cfg.get('position_embedding_type', 'absolute') != 'absolute':
      raise hf_checkpoint.CheckpointError(
          'only absolute position embeddings are supported, got '
          f'{cfg["position_embedding_type"]!r}')
    out = cls(**{f.name: cfg[f.name] for f in dataclasses.fields(cls)
                 if f.name in cfg})
    if out.hidden_act not in ACTIVATIONS:
      raise hf_checkpoint.CheckpointError(
          f'unsupported BERT hidden_act {out.hidden_act!r}')
    return out


def _layer_norm(eps, dtype, name):
  # Two-pass variance, as torch: the fast E[x^2]-E[x]^2 form loses
  # precision when |mean| >> std.
  return nn.LayerNorm(
      epsilon=eps, dtype=dtype, name=name, use_fast_variance=False,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(),
                                              ('norm',)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                             ('norm',)))


class BertLayer(nn.Module):
  config: BertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask):
    c = self.config
    heads = c.num_attention_heads
    head_dim = c.hidden_size // heads
    proj = lambda n: dense((heads, head_dim), ('embed', 'heads', 'head_dim'),
                           n, self.dtype, use_bias=True)(x)
    q, k, v = proj('query'), proj('key'), proj('value')
    scores = jnp.einsum('bqhd,bkhd->bhqk', q, k).astype(jnp.float32)
    scores = scores / np.sqrt(head_dim)
    scores = jnp.where(mask[:, None, None, :], scores,
                       jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
    h = jnp.einsum('bhqk,bkhd->bqhd', probs, v)
    h = dense(c.hidden_size, ('heads', 'head_dim', 'embed'), 'attn_out',
              self.dtype, use_bias=True, in_axis=(-2, -1))(h)
    # Post-LN: the residual sum is normalised, unlike the pre-LN blocks of
    # the tokenizer (layers.Block).
    x = _layer_norm(c.layer_norm_eps, self.dtype, 'attn_norm')(x + h)
    h = dense(c.intermediate_size, ('embed', 'mlp'), 'fc1', self.dtype,
              use_bias=True)(x)
    h = dense(c.hidden_size, ('mlp', 'embed'), 'fc2', self.dtype,
              use_bias=True)(ACTIVATIONS[c.hidden_act](h))
    return _layer_norm(c.layer_norm_eps, self.dtype, 'mlp_norm')(x + h)


class BertEncoder(nn.Module):
  """ids [B, L] int, mask [B, L] bool (True = real token), optional
  token_type_ids [B, L] -> [B, L, hidden_size]."""
  config: BertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, ids, mask, token_type_ids=None):
    c = self.config
    embed = lambda n, num: nn.Embed(
        num, c.hidden_size, dtype=self.dtype, name=n,
        embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(0.02), ('vocab', 'embed')))
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(ids)
    length = ids.shape[1]
    if length > c.max_position_embeddings:
      raise ValueError(f'length {length} > max_position_embeddings '
                       f'{c.max_position_embeddings}')
    x = (embed('word_embeddings', c.vocab_size)(ids) +
         embed('token_type_embeddings', c.type_vocab_size)(token_type_ids) +
         embed('position_embeddings', c.max_position_embeddings)(
             jnp.arange(length)[None]))
    x = _layer_norm(c.layer_norm_eps, self.dtype, 'embed_norm')(x)
    mask = jnp.asarray(mask, bool)
    for i in range(c.num_hidden_layers):
      x = BertLayer(c, self.dtype, name=f'layers_{i}')(x, mask)
    return x


def convert_params(config: BertConfig, weights: Dict[str, np.ndarray]
                   ) -> Dict[str, Any]:
  """HF BERT state dict (BertModel, or BertFor* with the 'bert.' prefix)."""
  c = config
  prefixes = ('', 'bert.')
  get = lambda n: hf_checkpoint.take(weights, n, prefixes)
  heads = (c.num_attention_heads, c.hidden_size // c.num_attention_heads)

  def norm(n):
    # Checkpoints converted from TF name LayerNorm parameters gamma / beta.
    try:
      return {'scale': get(f'{n}.weight'), 'bias': get(f'{n}.bias')}
    except hf_checkpoint.CheckpointError:
      return {'scale': get(f'{n}.gamma'), 'bias': get(f'{n}.beta')}

  def linear(n, in_shape=None, out_shape=None):
    k, b = get(f'{n}.weight').T, get(f'{n}.bias')
    if in_shape is not None:
      k = k.reshape(*in_shape, k.shape[-1])
    if out_shape is not None:
      k, b = k.reshape(*k.shape[:-1], *out_shape), b.reshape(out_shape)
    return {'kernel': k, 'bias': b}

  e = 'embeddings.'
  params = {n: {'embedding': get(f'{e}{n}.weight')} for n in (
      'word_embeddings', 'token_type_embeddings', 'position_embeddings')}
  params['embed_norm'] = norm(f'{e}LayerNorm')
  for i in range(c.num_hidden_layers):
    p = f'encoder.layer.{i}.'
    layer = {n: linear(f'{p}attention.self.{n}', out_shape=heads)
             for n in ('query', 'key', 'value')}
    layer.update(
        attn_out=linear(f'{p}attention.output.dense', in_shape=heads),
        attn_norm=norm(f'{p}attention.output.LayerNorm'),
        fc1=linear(f'{p}intermediate.dense'),
        fc2=linear(f'{p}output.dense'),
        mlp_norm=norm(f'{p}output.LayerNorm'))
    params[f'layers_{i}'] = layer
  return {'params': params}


def load_bert(path: str, dtype: Dtype = jnp.float32
              ) -> Tuple[BertEncoder, Dict[str, Any]]:
  """(module, params) of a local HF BERT-family directory (BERT, MiniLM,
  all-MiniLM-L6-v2). Params are plain arrays in `dtype`."""
  cfg, weights = hf_checkpoint.load(str(path))
  if cfg.get('model_type') != 'bert':
    raise hf_checkpoint.CheckpointError(
        f'{path!r} is not a BERT checkpoint (model_type='
        f'{cfg.get("model_type")!r})')
  config = BertConfig.from_hf(cfg)
  module = BertEncoder(config, dtype)
  params = convert_params(config, weights)
  shape = jax.ShapeDtypeStruct((1, 2), jnp.int32)
  check_tree(module, params, shape, jax.ShapeDtypeStruct((1, 2), jnp.bool_))
  params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
  return module, params
