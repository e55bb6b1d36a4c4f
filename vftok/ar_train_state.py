"""AR generator train state: creation, the pure train step, restore, captions.

The train step is a pure function (state, batch, rng) -> (state, metrics):
next-token cross-entropy over the [T, K] token grid laid out in the
configured order (time-first by default), with the condition (class label
or caption mask) replaced by the null one w.p. `cond_dropout` so the same
model also learns the unconditional branch classifier-free guidance needs.
The per-step RNG is fold_in(rng, step), so a resumed run draws the same
dropout and condition-dropout masks as an uninterrupted one.

The state layout (and its checkpoint) is the tokenizer's `TrainState`
(step, params = {'params': ...}, opt_state), sharded by the same logical-axis
rules (vftok/sharding.py).
"""
import collections
import os
from typing import Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vftok import optim
from vftok import train_state
from vftok.models import ar
from vftok.models import token_order

CHECKPOINT_DIR = train_state.CHECKPOINT_DIR
TrainState = train_state.TrainState


def model_config(config) -> ar.ARConfig:
  return ar.ARConfig.from_config_dict(config.model)


def dummy_inputs(mc: ar.ARConfig):
  """(args, kwargs) of a minimal forward that creates every parameter."""
  t = min(mc.num_frames, 2)
  args = (jnp.zeros((1, t), jnp.int32), np.arange(t, dtype=np.int32),
          np.zeros(t, np.int32))
  kwargs = {}
  if mc.num_classes:
    kwargs['class_labels'] = jnp.zeros((1,), jnp.int32)
  if mc.text_dim:
    kwargs['text_emb'] = jnp.zeros((1, 2, mc.text_dim))
    kwargs['text_mask'] = jnp.ones((1, 2), bool)
  return args, kwargs


def build(config):
  """-> (model, optimizer, lr schedule) for an AR config."""
  mc = model_config(config)
  model = ar.ARTransformer(mc)
  abstract = {'params': ar.abstract_params(mc)}
  tx, schedule = optim.make_optimizer(config.optim, config.train.total_steps,
                                      abstract)
  return model, tx, schedule


def make_init_fn(model, tx) -> Callable:
  """rng -> TrainState whose leaves keep their logical-axis boxes."""
  args, kwargs = dummy_inputs(model.config)

  def init(rng):
    params = model.init(rng, *args, **kwargs)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params))
  return init


def sequence_loss(logits, seq, num_frames: int, order: str):
  """-> (mean cross-entropy, accuracy, mean cross-entropy per level [n])."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, seq)
  correct = (jnp.argmax(logits, -1) == seq).astype(jnp.float32)
  n = seq.shape[1] // num_frames
  per_level = token_order.from_sequence(ce, num_frames, n, order).mean((0, 1))
  return ce.mean(), correct.mean(), per_level


def make_train_step(model, tx, schedule, *, order: str = 'time_first',
                    cond_dropout: float = 0.1) -> Callable:
  """Batches: tokens int32 [B, T, n]; label int32 [B] (class models; < 0 is
  the null class); text_emb float [B, Lt, D] + text_mask bool [B, Lt] (text
  models)."""
  mc = model.config

  def loss_fn(params, batch, rng):
    tokens = batch['tokens']
    _, t, n = tokens.shape
    seq = token_order.to_sequence(tokens, order)
    frame_index, token_index = token_order.positions(t, n, order)
    cond_rng, dropout_rng = jax.random.split(rng)
    labels = mask = None
    if mc.num_classes:
      labels = batch['label']
      labels = jnp.where(labels < 0, mc.num_classes, labels)
    if mc.text_dim:
      mask = batch['text_mask']
    if cond_dropout > 0 and (labels is not None or mask is not None):
      labels, mask = ar.drop_condition(cond_rng, cond_dropout, mc,
                                       class_labels=labels, text_mask=mask)
    logits = model.apply(params, seq, frame_index, token_index,
                         class_labels=labels, text_emb=batch.get('text_emb'),
                         text_mask=mask, train=True,
                         rngs={'dropout': dropout_rng})
    loss, accuracy, per_level = sequence_loss(logits, seq, t, order)
    return loss, dict(loss=loss, accuracy=accuracy,
                      loss_first_token=per_level[0],
                      loss_last_token=per_level[-1])

  def train_step(state: TrainState, batch, rng) -> Tuple[TrainState, Dict]:
    rng = jax.random.fold_in(rng, state.step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, metrics), grads = grad_fn(state.params, batch, rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads),
                   lr=schedule(state.step))
    return TrainState(step=state.step + 1, params=params,
                      opt_state=opt_state), metrics

  return train_step


def restore_params(config, workdir: str, step: Optional[int] = None):
  """The {'params': ...} of an AR workdir's checkpoint, on the first device
  (sampling replicates a model that fits one device)."""
  from vftok import checkpoint  # pylint: disable=g-import-not-at-top
  from vftok import sharding  # pylint: disable=g-import-not-at-top
  model, tx, _ = build(config)
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1)),
                            devices=jax.devices()[:1])
  return checkpoint.restore_params(os.path.join(workdir, CHECKPOINT_DIR),
                                   make_init_fn(model, tx), mesh, step)


# ---- text conditioning ---------------------------------------------------

def load_text_encoder(config):
  """The frozen caption encoder of a text-conditioned config, or None."""
  name = config.text.encoder
  dim = int(config.model.text_dim or 0)
  if not name:
    if dim:
      raise ValueError(f'config.model.text_dim={dim} but config.text.encoder '
                       "is '' (set the encoder, e.g. 't5' or 'minilm')")
    return None
  from vftok.models import text_encoders  # pylint: disable=g-import-not-at-top
  enc = text_encoders.get(name, config.text.path or None,
                          int(config.text.max_length))
  if enc.dim != dim:
    raise ValueError(f'text encoder {name!r} outputs {enc.dim}-d embeddings; '
                     f'set config.model.text_dim={enc.dim} (got {dim})')
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
