"""AdamW with warmup + cosine, global-norm clipping and muP learning rates.

    clip(grad_clip) -> adam(b1, b2) -> + wd * p (matrices) -> * muP -> * -lr(t)

muP (Tensor Programs V, Adam; the `mup` library's `set_base_shapes` +
`MuAdamW`): the same model is also built abstractly at a base width
(`mup_base_width`). A parameter whose fan-in differs between the two is a
hidden or output matrix and its learning rate is scaled by
base_fan_in / fan_in (lr ~ 1/width); every other parameter (vectors, norms,
biases, input embeddings with a fixed fan-in) keeps the base learning rate.
Hyperparameters tuned at the base width then transfer to wider models.

Fan-in convention (from the logical axis names of the boxed params): the last
axis is the output axis, except for kernels whose names end in
('heads', 'head_dim') (q/k/v projections [embed, heads, head_dim]), whose
output is heads x head_dim. Fan-in is the product of all other axes. Unboxed
leaves (no names) use the last-axis rule.
"""
import math
from typing import Any, Callable, Sequence, Tuple

import jax
import jax.numpy as jnp
import optax

from vftok import sharding


def lr_schedule(optim_config, total_steps: int) -> Callable[[Any], jax.Array]:
  """Linear warmup warmup_init_lr -> lr, then cosine to lr * final_lr_ratio."""
  peak = float(optim_config.lr)
  init = float(optim_config.warmup_init_lr)
  end = peak * float(optim_config.final_lr_ratio)
  warmup = int(optim_config.warmup_steps)
  decay = max(int(total_steps) - warmup, 1)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = init + (peak - init) * step / max(warmup, 1)
    t = jnp.clip((step - warmup) / decay, 0.0, 1.0)
    cos = end + (peak - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * t))
    return jnp.where(step < warmup, warm, cos)

  return schedule


def _fan_in_axes(ndim: int, names) -> Tuple[int, ...]:
  n_out = 1
  if names is not None and ndim >= 2 and tuple(names[-2:]) == ('heads',
                                                                'head_dim'):
    n_out = 2
  return tuple(range(ndim - n_out))


def _multiplier(shape, base_shape, names) -> float:
  if len(shape) != len(base_shape):
    raise ValueError(f'rank differs from the base model: {shape} vs '
                     f'{base_shape}')
  if len(shape) < 2:
    return 1.0  # vector-like: lr does not scale with width under Adam
  axes = _fan_in_axes(len(shape), names)
  fan_in = math.prod(shape[i] for i in axes)
  base_fan_in = math.prod(base_shape[i] for i in axes)
  return base_fan_in / fan_in if fan_in != base_fan_in else 1.0


def _flatten(tree):
  return jax.tree_util.tree_flatten_with_path(tree, is_leaf=sharding.is_box)


def mup_lr_multipliers(params, base_params):
  """Tree (structure of unboxed `params`) of per-parameter lr multipliers.

  Both trees may be boxed abstract trees from `jax.eval_shape(model.init)`;
  `base_params` is the same model at the base width.
  """
  leaves, treedef = _flatten(params)
  base_leaves, _ = _flatten(base_params)
  base = {jax.tree_util.keystr(p): x for p, x in base_leaves}
  if len(base) != len(leaves):
    raise ValueError(f'base model has {len(base)} parameters, model has '
                     f'{len(leaves)}: muP needs the same architecture')
  mults = []
  for path, x in leaves:
    key = jax.tree_util.keystr(path)
    if key not in base:
      raise ValueError(f'{key} is missing from the muP base model')
    names = x.names if sharding.is_box(x) else None
    shape = (x.value if sharding.is_box(x) else x).shape
    b = base[key]
    mults.append(_multiplier(tuple(shape), tuple((b.value if sharding.is_box(b)
                                                  else b).shape), names))
  return jax.tree.unflatten(treedef, mults)


def scale_by_tree(multipliers) -> optax.GradientTransformation:
  """Multiplies each update by a constant from a tree of floats.

  `multipliers` only needs to be a prefix of the updates (a boxed update is
  scaled inside its box), so one tree serves boxed and unboxed params.
  """
  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    updates = jax.tree.map(
        lambda m, u: jax.tree.map(lambda x: x * jnp.asarray(m, x.dtype), u),
        multipliers, updates)
    return updates, state

  return optax.GradientTransformation(init_fn, update_fn)


def decay_mask(params):
  """True for matrices: ndim >= 2 and not a bias.

  Norm scales, biases (also DenseGeneral's [heads, head_dim] ones) and other
  vectors are not decayed. Works on boxed and unboxed trees (the leaf name is
  the last dict key of its path either way).
  """
  def is_matrix(path, x):
    keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    return jnp.ndim(x) >= 2 and not (keys and keys[-1] == 'bias')
  return jax.tree_util.tree_map_with_path(is_matrix, params)


def make_optimizer(optim_config, total_steps: int, params,
                   base_params=None
                   ) -> Tuple[optax.GradientTransformation, Callable]:
  """-> (optax transformation, lr schedule). See module docstring.

  `params` / `base_params` may be abstract (eval_shape) and boxed; they are
  used only for shapes and logical names.
  """
  schedule = lr_schedule(optim_config, total_steps)
  chain = []
  if optim_config.grad_clip and optim_config.grad_clip > 0:
    chain.append(optax.clip_by_global_norm(float(optim_config.grad_clip)))
  chain.append(optax.scale_by_adam(
      b1=float(optim_config.b1), b2=float(optim_config.b2),
      eps=float(getattr(optim_config, 'eps', 1e-8))))
  if optim_config.weight_decay:
    chain.append(optax.add_decayed_weights(float(optim_config.weight_decay),
                                           mask=decay_mask))
  if optim_config.mup_base_width:
    if base_params is None:
      raise ValueError('muP is on (mup_base_width > 0): pass base_params, the '
                       'abstract params of the model at the base width')
    chain.append(scale_by_tree(mup_lr_multipliers(params, base_params)))
  pairs = tuple((str(p), float(x)) for p, x in optim_config.get('lr_scales',
                                                               ()) or ())
  if pairs:
    chain.append(scale_by_tree(path_multipliers(params, pairs)))
  chain.append(optax.scale_by_learning_rate(schedule))
  tx = optax.chain(*chain)
  frozen = tuple(getattr(optim_config, 'freeze', ()) or ())
  if frozen:
    tx = freeze_modules(tx, params, frozen)
  return tx, schedule


def freeze_modules(tx, params, frozen: Sequence[str]
                   ) -> optax.GradientTransformation:
  """Trains params['params'][m] for m not in `frozen` with `tx`; the frozen
  modules get zero updates and no optimizer state (stage 2: the encoder).

  Their parameters then stay bit-identical (p + 0 = p) and no Adam moments are
  allocated for them.
  """
  modules = set(params.get('params', {}))
  unknown = set(frozen) - modules
  if unknown:
    raise ValueError(f'optim.freeze names {sorted(unknown)}, which are not '
                     f'modules of the model (have {sorted(modules)})')

  def labels(tree):
    def label(path, _):
      keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
      return ('frozen' if len(keys) > 1 and keys[0] == 'params'
              and keys[1] in frozen else 'train')
    return jax.tree_util.tree_map_with_path(label, tree)

  return optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()},
                               labels)


def path_multipliers(params, pairs: Sequence[Tuple[str, float]]):
  """Tree of per-parameter lr multipliers from (path prefix, scale) pairs.

  A prefix names modules under the 'params' collection, '/'-separated
  ('encoder', 'encoder/to_codes'); a parameter takes the scale of the longest
  prefix that matches it, 1 if none does. Uses: a slower encoder while the
  decoder learns to read the registers, a slower FSQ readout (whose few
  outputs Adam's sign-like steps otherwise saturate).
  """
  prefixes = {}
  for prefix, scale in pairs:
    parts = tuple(q for q in str(prefix).split('/') if q)
    if not parts:
      raise ValueError(f'optim.lr_scales: empty path prefix {prefix!r}')
    prefixes[parts] = float(scale)
  used = set()

  def mult(path, _):
    keys = tuple(str(k.key) for k in path
                 if isinstance(k, jax.tree_util.DictKey))
    if not keys or keys[0] != 'params':
      return 1.0
    best = max((p for p in prefixes if keys[1:1 + len(p)] == p), key=len,
               default=None)
    if best is None:
      return 1.0
    used.add(best)
    return prefixes[best]

  tree = jax.tree_util.tree_map_with_path(mult, params, is_leaf=sharding.is_box)
  unused = sorted('/'.join(p) for p in set(prefixes) - used)
  if unused:
    raise ValueError(f'optim.lr_scales: {unused} match no '
                     'parameter (paths under params, e.g. '
                     f"'encoder/to_codes'; top-level modules: "
                     f"{sorted(params.get('params', {}))})")
  return tree
