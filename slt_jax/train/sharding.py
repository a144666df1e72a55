"""The device mesh and placement: arrays onto the mesh by the logical-axis rules of the config.

Models name the dimensions of their parameters ('embed', 'mlp', 'heads', ...; models/layers.py LOGICAL_AXES)
and config.sharding.logical_rules (slt_jax/default_config.py: one table for every model family, changeable per
model) maps each name to mesh axes. A dimension that the mapped axes do not divide stays replicated, so tiny
test models run on any mesh.

  mesh, rules = make_mesh(config.mesh), logical_rules(config)
  graphdef, state, rest, shardings = state.create_sharded_state(build_model, tx, mesh, seed=..., rules=rules)
  train = jit_train_step(partial(step.train_step, graphdef=..., tx=...), shardings, rest, mesh, rules)
  state, metrics = train(state, global_batch(host_batch, batch_sharding(mesh, rules)))
"""
import collections
import functools
from typing import Callable, Iterator

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from slt_jax import default_config
from slt_jax.models import layers

MESH_AXES = ('data', 'fsdp', 'tensor')
# Logical names of activation dimensions; the parameters' are layers.LOGICAL_AXES.
ACTIVATION_AXES = ('batch', 'length')


def logical_rules(config=None) -> dict:
  """config.sharding.logical_rules (None: the default config's) as {logical name: mesh axes}, checked.

  Raises default_config.ConfigError naming a logical name that no model uses (known: layers.LOGICAL_AXES and
  ACTIVATION_AXES), a mesh axis that is not one of MESH_AXES, a name given twice, or a rule that is not a
  (name, axes) pair. Names without a rule stay replicated.
  """
  if config is None:
    return _default_rules()
  table = config.sharding.logical_rules
  known = tuple(a for a in layers.LOGICAL_AXES if a is not None) + ACTIVATION_AXES
  rules = {}
  for rule in table:
    if not isinstance(rule, (tuple, list)) or len(rule) != 2:
      raise default_config.ConfigError(f'config.sharding.logical_rules: each rule is a (logical name, mesh axes) '
                                       f'pair, got {rule!r}')
    name, axes = rule
    if name not in known:
      raise default_config.ConfigError(f'config.sharding.logical_rules: unknown logical axis {name!r} (the models '
                                       f'name {", ".join(known)})')
    if name in rules:
      raise default_config.ConfigError(f'config.sharding.logical_rules: {name!r} has two rules')
    axes = tuple(axes) if isinstance(axes, (tuple, list)) else axes
    unknown = [a for a in ((axes,) if isinstance(axes, str) else axes or ()) if a not in MESH_AXES]
    if unknown or not (axes is None or isinstance(axes, (str, tuple))):
      raise default_config.ConfigError(f'config.sharding.logical_rules: {name!r} -> {axes!r}: mesh axes are '
                                       f'None, one of {MESH_AXES} or a tuple of them')
    rules[name] = axes
  return rules


@functools.lru_cache(maxsize=1)
def _default_rules() -> dict:
  return logical_rules(default_config.get_config())


def make_mesh(mesh_config, devices=None) -> jax.sharding.Mesh:
  """A (data, fsdp, tensor) mesh; one size may be -1 (the rest of the devices)."""
  devices = list(devices if devices is not None else jax.devices())
  sizes = [int(mesh_config.data), int(mesh_config.fsdp), int(mesh_config.tensor)]
  if sizes.count(-1) > 1:
    raise ValueError(f'config.mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}')
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f'config.mesh {dict(zip(MESH_AXES, sizes))} does not divide the {len(devices)} devices')
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f'config.mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, '
                     f'but {len(devices)} are available')
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def logical_to_spec(names, shape, mesh, rules=None) -> P:
  """PartitionSpec for an array of `shape` whose dimensions have the logical `names`.

  A mesh axis is used at most once per array. Where the mapped axes do not divide a dimension, the longest
  prefix of them that does is used (('data', 'fsdp') -> 'data'), else the dimension stays replicated.
  mesh: a Mesh or AbstractMesh (only its axis sizes are read). rules: logical_rules(config) (None: the default
  config's).
  """
  rules = logical_rules() if rules is None else rules
  used, spec = set(), []
  for name, dim in zip(names, shape):
    axes = rules.get(name) if name is not None else None
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    axes = tuple(a for a in axes if a not in used and mesh.shape[a] > 1)
    while axes and dim % int(np.prod([mesh.shape[a] for a in axes])):
      axes = axes[:-1]
    if not axes:
      spec.append(None)
      continue
    used.update(axes)
    spec.append(axes[0] if len(axes) == 1 else axes)
  return P(*spec)


def state_shardings(state: nnx.State, mesh, rules=None) -> nnx.State:
  """NamedShardings for an nnx.State whose variables carry logical names (`nnx.with_partitioning`)."""
  def one(x):
    value = x.get_value() if isinstance(x, nnx.Variable) else x
    names = x.get_metadata().get('out_sharding') if isinstance(x, nnx.Variable) else None
    shape = getattr(value, 'shape', ())
    spec = logical_to_spec(names, shape, mesh, rules) if names else P()
    sharding = NamedSharding(mesh, spec)
    return x.replace(sharding) if isinstance(x, nnx.Variable) else sharding
  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh, rules=None) -> NamedSharding:
  """Batch dimension split over the 'batch' rule's axes (data and fsdp); everything else replicated."""
  rules = logical_rules() if rules is None else rules
  return NamedSharding(mesh, P(rules.get('batch')))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def place(tree, shardings):
  """Puts each (host) array of `tree` on its sharding in `shardings` (same structure).

  Each device receives only its own shard, read from the host copy; this also works on multi-host, where
  every process holds the same host copy and fills its addressable devices.
  """
  def one(x, sharding):
    if jax.dtypes.issubdtype(getattr(x, 'dtype', None), jax.dtypes.prng_key):
      return jax.device_put(x, sharding)  # typed PRNG keys have no numpy form (and are tiny)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
  return jax.tree.map(one, tree, shardings)


class JittedStep:
  """`train(state, batch) -> (state, metrics)`: a jitted step with its frozen variables `rest` bound.

  `lower(state, batch)` lowers it ahead of time (abstract ShapeDtypeStructs with shardings work too, as
  --mode=check does); the compiled executable takes `(state, rest, batch)`.
  """

  def __init__(self, jitted, rest):
    self.jitted, self.rest = jitted, rest

  def __call__(self, state, batch):
    return self.jitted(state, self.rest, batch)

  def lower(self, state, batch):
    return self.jitted.lower(state, self.rest, batch)


def jit_train_step(step_fn, state_shardings, rest, mesh, rules=None) -> JittedStep:
  """One jit of `step_fn(state, batch, rest=rest) -> (state, metrics)` with explicit shardings.

  The state is donated (updated in place); `rest` (frozen variables, e.g. a LoRA base model) is passed as an
  argument on its own shardings, not closed over: jit would bake closed-over arrays into the program as
  constants. The batch is split by batch_sharding(mesh, rules); metrics come back replicated.
  """
  rest_shardings = jax.tree.map(lambda x: x.sharding, rest)
  jitted = jax.jit(lambda state, rest, batch: step_fn(state, batch, rest=rest),
                   in_shardings=(state_shardings, rest_shardings, batch_sharding(mesh, rules)),
                   out_shardings=(state_shardings, replicated(mesh)), donate_argnums=0)
  return JittedStep(jitted, rest)


def global_batch(batch: dict, sharding, keys=None) -> dict:
  """Host-local numpy batch -> global jax.Arrays whose first axis is split by `sharding` (batch_sharding).

  Each host passes only its rows (global batch / number of hosts). Hosts bucket their own examples, so their
  batches may differ in frame count T or label length L; on multi-host every array is first padded at the end
  of its non-batch axes (zeros / False, i.e. masked frames and tokens) to the largest shape of any host,
  because a global array has one shape.
  keys: the keys to keep (default: all).
  """
  arrays = {k: np.asarray(v) for k, v in sorted(batch.items()) if keys is None or k in keys}
  if jax.process_count() > 1:
    dims = np.array([d for v in arrays.values() for d in v.shape[1:]], np.int64)
    dims = iter(np.max(multihost_utils.process_allgather(dims), axis=0).tolist())
    for k, v in arrays.items():
      target = [v.shape[0]] + [next(dims) for _ in v.shape[1:]]
      if list(v.shape) != target:
        arrays[k] = np.pad(v, [(0, t - s) for s, t in zip(v.shape, target)])
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in arrays.items()}


def prefetch_to_device(batches: Iterator[dict], size: int, put: Callable[[dict], dict]):
  """Yields (host_batch, put(host_batch)) with `size` batches placed ahead of the one being consumed.

  jax transfers are asynchronous, so placing the next batches while the current step runs lets the copy
  to the accelerator overlap compute (flax's prefetch_to_device, for sharded global batches). size 0 =
  place each batch when it is needed.
  """
  queue = collections.deque()
  for batch in batches:
    queue.append((batch, put(batch)))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()
