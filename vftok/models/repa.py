"""REPA head: predicts teacher features from early decoder hidden states.

A depth-2 Transformer with time-causal attention at decoder width (mimicking
the decoder, as in the paper's Table 5) reads the latent-patch hidden states
after decoder block `repa_layer` and projects them to the teacher's feature
width. The loss is the negative cosine similarity per patch, averaged.
"""
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from vftok.models import layers
from vftok.models import masks


class RepaHead(nn.Module):
  width: int
  depth: int
  head_dim: int
  feature_dim: int
  mlp_ratio: float = 4.0
  remat: str = 'none'               # layers.REMAT_POLICIES
  attention_impl: Optional[str] = None  # config.model.attention_impl: layers.attend
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, hidden):
    """hidden [B, T, N, width] -> predicted features [B, T, N, feature_dim]."""
    b, t, n, w = hidden.shape
    layout = masks.patches_only(t, n)
    mask = masks.time_causal_mask(layout, layout)
    x = hidden.reshape(b, t * n, w)
    block_cls = layers.remat_block(layers.Block, self.remat, static_argnums=(2,))
    for i in range(self.depth):
      x = block_cls(self.width, self.head_dim, self.mlp_ratio, self.dtype,
                    self.attention_impl,
                    name=f'repa_blocks_{i}')(x, layers.StaticMask(mask))
    x = layers.layer_norm(x)
    x = layers.dense(self.feature_dim, ('embed', 'repa'), 'to_features',
                     jnp.float32, use_bias=True)(x)
    return x.reshape(b, t, n, self.feature_dim)


def cosine_loss(pred, target, eps=1e-6):
  """Mean over patches of -cos(pred, target); both [..., D]."""
  pred = pred.astype(jnp.float32)
  target = target.astype(jnp.float32)
  pred = pred / (jnp.linalg.norm(pred, axis=-1, keepdims=True) + eps)
  target = target / (jnp.linalg.norm(target, axis=-1, keepdims=True) + eps)
  return -jnp.mean(jnp.sum(pred * target, axis=-1))
