"""The device mesh, the one logical-axis rule table shared by every model family, and placement.

Models name the dimensions of their parameters ('embed', 'mlp', 'heads', ...; see the model contract); this
table maps each name to mesh axes. A dimension that the mapped axes do not divide stays replicated, so tiny
test models run on any mesh.

  mesh = make_mesh(config.mesh)
  graphdef, state, rest, shardings = create_sharded_state(build_model, tx, mesh, seed=...)  # straight onto them
  train = jit_train_step(partial(step.train_step, graphdef=..., tx=...), shardings, rest, mesh)
  state, metrics = train(state, global_batch(host_batch, batch_sharding(mesh)))
"""
import collections
import contextlib
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

MESH_AXES = ('data', 'fsdp', 'tensor')

# logical name -> mesh axis (or None: replicated). Parameters are sharded over 'fsdp' along their embedding
# dimension (ZeRO-3 style) and over 'tensor' along heads / MLP width (Megatron style).
LOGICAL_RULES = {
    'batch': ('data', 'fsdp'),
    'vocab': 'tensor',
    'embed': 'fsdp',
    'mlp': 'tensor',
    'heads': 'tensor',
    'kv_heads': 'tensor',
    'head_dim': None,
    'layers': None,
    'relpos': None,
    'pose_in': None,
    'norm': None,
    'length': None,
}


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
  mesh: a Mesh or AbstractMesh (only its axis sizes are read). rules: default LOGICAL_RULES.
  """
  rules = LOGICAL_RULES if rules is None else rules
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


def state_shardings(state: nnx.State, mesh) -> nnx.State:
  """NamedShardings for an nnx.State whose variables carry logical names (`nnx.with_partitioning`)."""
  def one(x):
    value = x.get_value() if isinstance(x, nnx.Variable) else x
    names = x.get_metadata().get('out_sharding') if isinstance(x, nnx.Variable) else None
    shape = getattr(value, 'shape', ())
    spec = logical_to_spec(names, shape, mesh) if names else P()
    sharding = NamedSharding(mesh, spec)
    return x.replace(sharding) if isinstance(x, nnx.Variable) else sharding
  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh) -> NamedSharding:
  """Batch dimension split over the 'batch' rule's axes (data and fsdp); everything else replicated."""
  return NamedSharding(mesh, P(LOGICAL_RULES['batch']))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def create_sharded_state(build_model, tx, mesh, *, seed: int, trainable=nnx.Param, eager: bool = False,
                         abstract: bool = False):
  """Builds a model and its TrainState straight onto their shardings.

  Args:
    build_model: () -> nnx.Module.
    tx: the optax optimizer of the trained variables.
    mesh: the device mesh.
    seed: seeds the dropout PRNG key of the TrainState.
    trainable: nnx filter of the variables that the optimizer trains (the rest stays frozen).
    eager: build on the host first (pretrained weights read from disk), then place each array on its sharding;
      otherwise random init runs inside jit with out_shardings, so no parameter ever sits whole on one device.
    abstract: allocate nothing: the TrainState and rest are jax.ShapeDtypeStructs carrying their shardings
      (a restore target: orbax then reads each array straight onto its sharding).
  Returns:
    (graphdef, TrainState, rest, TrainState shardings) where `rest` holds the non-trained variables.
  """
  from slt_jax.train import optim, step as step_lib  # pylint: disable=g-import-not-at-top

  def build():
    return nnx.split(build_model(), trainable, ...)

  def init_state(params):
    return step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optim.init_state(tx, params),
                               rng=jax.random.PRNGKey(seed))

  graphdef, abstract_params, abstract_rest = nnx.eval_shape(build)
  shardings = state_shardings(jax.eval_shape(init_state, abstract_params), mesh)
  rest_shardings = state_shardings(abstract_rest, mesh)
  if abstract:
    with_sharding = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
    return (graphdef, jax.tree.map(with_sharding, jax.eval_shape(init_state, abstract_params), shardings),
            jax.tree.map(with_sharding, abstract_rest, rest_shardings), shardings)
  if eager:
    # Pretrained weights are read into host memory (never onto one accelerator), then each array goes
    # straight to its sharding; the params are donated so the TrainState does not hold them twice.
    with _on_host():
      _, params, rest = build()
    params, rest = place(params, shardings.params), place(rest, rest_shardings)
    state = jax.jit(init_state, out_shardings=shardings, donate_argnums=0)(params)
  else:
    def init_all():
      _, params, rest = build()
      return init_state(params), rest
    state, rest = jax.jit(init_all, out_shardings=(shardings, rest_shardings))()
  return graphdef, state, rest, shardings


def _on_host():
  """Default device = this host's CPU while pretrained weights are read (no-op where there is no CPU backend)."""
  try:
    return jax.default_device(jax.local_devices(backend='cpu')[0])
  except RuntimeError:
    return contextlib.nullcontext()


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


def jit_train_step(step_fn, state_shardings, rest, mesh):
  """One jit of `step_fn(state, batch, rest=rest) -> (state, metrics)` with explicit shardings.

  The state is donated (updated in place); `rest` (frozen variables, e.g. a LoRA base model) is passed as an
  argument on its own shardings, not closed over: jit would bake closed-over arrays into the program as
  constants. Returns `train(state, batch) -> (state, metrics)`, metrics replicated.
  """
  rest_shardings = jax.tree.map(lambda x: x.sharding, rest)
  jitted = jax.jit(lambda state, rest, batch: step_fn(state, batch, rest=rest),
                   in_shardings=(state_shardings, rest_shardings, batch_sharding(mesh)),
                   out_shardings=(state_shardings, replicated(mesh)), donate_argnums=0)
  return lambda state, batch: jitted(state, rest, batch)


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
