"""The one owner of the logical -> mesh axis rules (maxtext style).

Models name every parameter dimension logically ('embed', 'mlp', ...; see
vftok/models/layers.py); this module maps those names onto a 2-d device mesh
('data', 'fsdp') and builds the shardings of the whole train state.

  * 'data': pure data parallelism; parameters are replicated over it.
  * 'fsdp': ZeRO-3 style fully sharded data parallelism: the batch is split
    over it too, and every parameter (and its Adam moments) is split along its
    model-width ('embed') dimension, so each device holds 1/fsdp of the state.
    XLA all-gathers a weight just before it is used.

A dimension whose size is not divisible by the size of its mesh axes is
replicated instead of sharded (e.g. the 6-wide FSQ projection on fsdp=8), so
any config runs on any mesh; `state_shardings` does this per array.
"""
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ('data', 'fsdp')

# (logical name, mesh axis or axes or None). The first rule that matches a
# name and whose mesh axes are still unused by the array wins (flax semantics),
# so an activation [batch, length, embed] shards only its batch dimension.
LOGICAL_RULES: Tuple[Tuple[str, Any], ...] = (
    ('batch', ('data', 'fsdp')),  # activations: batch over every device
    ('length', None),
    ('embed', 'fsdp'),            # FSDP: weights split along model width
    # Without a tensor-parallel axis everything else is replicated; a 'tensor'
    # axis would map mlp / heads / kv / vocab / cond here (maxtext).
    ('mlp', None),
    ('heads', None),
    ('head_dim', None),
    ('kv', None),
    ('vocab', None),
    ('cond', None),
    ('patch', None),
    ('latent', None),
    ('registers', None),
    ('codes', None),
    ('repa', None),
    ('norm', None),
)


def is_box(x) -> bool:
  return isinstance(x, nn.Partitioned)


def make_mesh(mesh_config, devices: Optional[Sequence[Any]] = None
              ) -> jax.sharding.Mesh:
  """A ('data', 'fsdp') mesh over all of `devices` (default: jax.devices()).

  `mesh_config.data == -1` takes every device not used by fsdp; fsdp must
  divide the device count.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  data, fsdp = int(mesh_config.data), int(mesh_config.fsdp)
  if fsdp < 1 or (data < 1 and data != -1):
    raise ValueError(f'mesh sizes must be >= 1 (data may be -1), got '
                     f'data={data} fsdp={fsdp}')
  if data == -1:
    if n % fsdp:
      raise ValueError(f'mesh.fsdp={fsdp} does not divide the {n} devices')
    data = n // fsdp
  if data * fsdp != n:  # a partial mesh would leave devices idle
    raise ValueError(f'mesh data*fsdp = {data}*{fsdp} = {data * fsdp} must '
                     f'equal the {n} devices (data=-1 fills it)')
  kwargs = {}
  # jax >= 0.7 defaults make_mesh to Explicit axes (sharding in types); this
  # code relies on GSPMD propagation from in/out shardings, i.e. Auto axes.
  axis_type = getattr(jax.sharding, 'AxisType', None)
  if axis_type is not None:
    kwargs['axis_types'] = (axis_type.Auto,) * len(MESH_AXES)
  return jax.make_mesh((data, fsdp), MESH_AXES, devices=devices, **kwargs)


def _axis_size(mesh: jax.sharding.Mesh, axes) -> int:
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else axes
  return int(np.prod([mesh.shape[a] for a in axes]))


def mesh_spec(logical_names, mesh: jax.sharding.Mesh,
              shape: Optional[Sequence[int]] = None, rules=LOGICAL_RULES) -> P:
  """Logical names -> mesh PartitionSpec; non-divisible dims replicated."""
  spec = nn.logical_to_mesh_axes(tuple(logical_names), rules)
  spec = list(spec) if spec is not None else []
  if shape is not None:
    spec += [None] * (len(shape) - len(spec))
    spec = [a if dim % _axis_size(mesh, a) == 0 else None
            for a, dim in zip(spec, shape)]
  return P(*spec)


def logical_to_mesh_sharding(logical_spec_tree, mesh: jax.sharding.Mesh,
                             shapes=None, rules=LOGICAL_RULES):
  """Tree of PartitionSpec(logical names) -> tree of NamedSharding.

  `shapes` (an optional tree of arrays / ShapeDtypeStructs with the same
  structure) enables the replicate-if-not-divisible fallback.
  """
  if shapes is None:
    return nn.logical_to_mesh_sharding(logical_spec_tree, mesh, rules)
  is_spec = lambda x: isinstance(x, P)
  return jax.tree.map(
      lambda s, x: NamedSharding(mesh, mesh_spec(s, mesh, x.shape, rules)),
      logical_spec_tree, shapes, is_leaf=is_spec)


def _dict_path(path) -> Tuple[str, ...]:
  """The dict keys of a key path: the part params and optax mu/nu share."""
  return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def _match(path, x, by_suffix) -> P:
  """Spec of the boxed leaf with the longest common dict path (same shape)."""
  keys, shape = _dict_path(path), tuple(getattr(x, 'shape', ()))
  for i in range(len(keys)):
    found = by_suffix.get((keys[i:], shape))
    if found:
      return next(iter(found)) if len(found) == 1 else P()
  return P()


def state_shardings(abstract_state, mesh: jax.sharding.Mesh,
                    rules=LOGICAL_RULES):
  """NamedShardings for a (boxed) abstract state, in its unboxed structure.

  `abstract_state` comes from `jax.eval_shape` and holds nn.LogicallyPartitioned
  boxes. Optax state built from boxed params (`tx.init(params)` inside the
  init function) holds the same boxes, so mu/nu shard exactly like params.
  An unboxed array leaf (e.g. a moment built from already-unboxed params)
  takes the sharding of the boxed leaf of the same shape whose dict-key path
  ends the same way ('params/fc1/kernel'), if that is unambiguous; every
  other leaf (step, optimizer counts) is replicated.
  """
  # optax.multi_transform (frozen modules) keeps boxes around an empty
  # MaskedNode: nothing to shard there, so drop the box.
  abstract_state = jax.tree.map(
      lambda x: x.value if is_box(x) and not jax.tree.leaves(x.value) else x,
      abstract_state, is_leaf=is_box)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(
      abstract_state, is_leaf=is_box)
  specs, by_suffix = [], {}
  for path, x in leaves:
    spec = None
    if is_box(x):
      spec = mesh_spec(x.names, mesh, x.value.shape, rules)
      keys, shape = _dict_path(path), tuple(x.value.shape)
      for i in range(len(keys)):
        by_suffix.setdefault((keys[i:], shape), set()).add(spec)
    specs.append(spec)
  specs = [s if s is not None else _match(path, x, by_suffix)
           for (path, x), s in zip(leaves, specs)]
  # Boxes are leaves of `treedef`, so this is the unboxed structure.
  return jax.tree.unflatten(treedef, [NamedSharding(mesh, s) for s in specs])


def unbox(tree):
  """Strips LogicallyPartitioned boxes, like `nn.meta.unbox`.

  Unlike it, never adds a sharding constraint (which would lack the
  divisibility fallback and fails on ShapeDtypeStructs under a global mesh).
  """
  return jax.tree.map(lambda x: x.value if is_box(x) else x, tree,
                      is_leaf=is_box)


def abstract_state(init_fn: Callable, rng, mesh: jax.sharding.Mesh,
                   rules=LOGICAL_RULES):
  """-> (unboxed ShapeDtypeStructs carrying their shardings, the shardings)
  of the state `init_fn(rng)` would create: from `jax.eval_shape` (no FLOPs,
  no memory). A restore target, or what a step is compiled against."""
  with nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(init_fn, rng)
    shardings = state_shardings(boxed, mesh, rules)
  abstract = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      unbox(boxed), shardings)
  return abstract, shardings


def create_sharded_state(init_fn: Callable, rng, mesh: jax.sharding.Mesh,
                         rules=LOGICAL_RULES):
  """-> (unboxed state, its shardings); state is created already sharded.

  The shardings come from `abstract_state` and the jitted init writes every
  array straight into its shards, so no device ever holds the full unsharded
  state (maxtext pattern).
  """
  _, shardings = abstract_state(init_fn, rng, mesh, rules)
  with nn.logical_axis_rules(rules):
    init = jax.jit(lambda r: unbox(init_fn(r)), out_shardings=shardings)
    state = init(rng)
  return state, shardings


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Leading (batch) dim split over every device; other dims replicated."""
  return NamedSharding(mesh, P(MESH_AXES))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


# ---- evaluation and sampling: data parallel, weights replicated ------------

def data_mesh(devices=None) -> jax.sharding.Mesh:
  """Pure data-parallel mesh over all devices: evaluation replicates weights
  (they fit on one device) and splits only the batch."""
  return make_mesh(ml_collections.ConfigDict({'data': -1, 'fsdp': 1}),
                   devices)


def put_global(x: np.ndarray, named_sharding) -> jax.Array:
  """A host array that every process holds in full -> a global jax.Array.

  make_array_from_callback copies only the shards this process addresses, so
  the same call serves one process and multi-host runs."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, named_sharding,
                                      lambda idx: x[idx])


def fetch(x: jax.Array) -> np.ndarray:
  """A (possibly multi-host) global array -> the full host array everywhere."""
  if getattr(x, 'is_fully_addressable', True):
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def single_device(params):
  """Replicated params -> one copy on the first local device: sampling a
  few videos on every data-parallel replica would only repeat the work.
  Sharded (FSDP) params stay as they are (every device takes part)."""
  leaves = jax.tree.leaves(params)
  if all(getattr(x, 'sharding', None) is None or x.sharding.is_fully_replicated
         for x in leaves):
    return jax.device_put(params, jax.local_devices()[0])
  return params
