"""The AR generator's configuration (models/ar.py builds the model from it)
and its analytic parameter counts. No JAX here: config files and the
compute plan import it.
"""
import dataclasses
import math
from typing import Dict

import ml_collections

PAPER_C2V_DEPTHS = (10, 12, 16, 20, 24, 30, 36)   # Table 6
PAPER_T2V_DEPTHS = (12, 20, 30, 42)               # Table 7


@dataclasses.dataclass(frozen=True)
class ARConfig:
  depth: int = 16
  width: int = 0              # 0: 64 * depth
  heads: int = 0              # 0: depth (head_dim 64)
  vocab_size: int = 64000
  seq_len: int = 1280         # max sequence = default KV-cache length
  num_frames: int = 5         # rows of the latent-frame position table
  tokens_per_frame: int = 256  # rows of the coarse-to-fine position table (K)
  num_classes: int = 0        # 0: no class conditioning
  text_dim: int = 0           # 0: no text cross-attention
  cross_attn_every: int = 1   # cross-attention in blocks i % every == 0
  dropout: float = 0.0        # FFN, attention-probability and projection
  dtype: str = 'float32'      # compute dtype; params stay float32
  mlp_multiple_of: int = 64   # SwiGLU hidden width rounding (see mlp_hidden)
  remat: str = 'none'         # training only: layers.REMAT_POLICIES
  attention_impl: str = ''    # a kernel of models/attention_kernels.py

  def __post_init__(self):
    if not self.width:
      object.__setattr__(self, 'width', 64 * self.depth)
    if not self.heads:
      object.__setattr__(self, 'heads', self.depth)
    if self.width % self.heads:
      raise ValueError(f'width {self.width} not divisible by heads '
                       f'{self.heads}')
    if self.dtype not in ('float32', 'bfloat16'):
      raise ValueError(f'dtype must be float32 or bfloat16, got {self.dtype}')
    if self.attention_impl not in ('', 'xla') and self.dropout > 0:
      raise ValueError(f'attention_impl={self.attention_impl!r} has no '
                       'attention dropout: set model.dropout=0 or '
                       "attention_impl='xla'")

  @property
  def head_dim(self) -> int:
    return self.width // self.heads

  @property
  def mlp_hidden(self) -> int:
    # LLaMA's 2/3 * 4 * width keeps SwiGLU (3 matrices) at the 8 * width^2 of
    # a ratio-4 MLP. LLaMA rounds up to 256, which is +5% for d10 (1707 ->
    # 1792) and breaks Table 6; 64 keeps every paper size within 1% (exact
    # when depth % 3 == 0) and still tiles on accelerators.
    m = self.mlp_multiple_of
    return m * math.ceil(int(8 * self.width / 3) / m)

  @property
  def compute_dtype(self):
    from vftok.models import layers  # pylint: disable=g-import-not-at-top
    return layers.optional_dtype(self.dtype)

  def has_cross_attn(self, block: int) -> bool:
    every = self.cross_attn_every
    return bool(self.text_dim) and every > 0 and block % every == 0

  @classmethod
  def from_config_dict(cls, cd) -> 'ARConfig':
    """From an ml_collections ConfigDict (or dict); None means default."""
    items = dict(cd.items()) if hasattr(cd, 'items') else dict(cd)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(items) - names
    if unknown:
      raise ValueError(f'unknown AR config fields: {sorted(unknown)}')
    return cls(**{k: v for k, v in items.items() if v is not None})


def config_dict(depth: int = 16, **overrides) -> ml_collections.ConfigDict:
  """The ConfigDict form of ARConfig (width / heads 0 = derived from depth)."""
  fields = dataclasses.asdict(ARConfig(depth=depth))
  fields.update(width=0, heads=0)
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def analytic_param_counts(config: ARConfig) -> Dict[str, int]:
  """The counts of `count_params` / `scaling_params` without building."""
  c, w = config, config.width
  block = 4 * w * w + 3 * w * c.mlp_hidden + 2 * w
  cross = sum(c.has_cross_attn(i) for i in range(c.depth))
  non_emb = c.depth * block + cross * (4 * w * w + w) + w
  head = w * c.vocab_size
  emb = (c.vocab_size + c.num_frames + c.tokens_per_frame + 1) * w
  emb += (c.num_classes + 1) * w if c.num_classes else 0
  # text_null, text_proj, text_norm
  emb += (w + c.text_dim * w + w) if c.text_dim else 0
  return dict(non_embedding=non_emb, head=head, scaling=non_emb + head,
              total=non_emb + head + emb)
