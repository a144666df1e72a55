"""The device mesh and the one logical-axis rule table shared by every model family.

Models name the dimensions of their parameters ('embed', 'mlp', 'heads', ...; see the model contract); this
table maps each name to mesh axes. A dimension that the mapped axes do not divide stays replicated, so tiny
test models run on any mesh.
"""
import jax
import numpy as np
from flax import nnx
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


def logical_to_spec(names, shape, mesh) -> P:
  """PartitionSpec for an array of `shape` whose dimensions have the logical `names`.

  A mesh axis is used at most once per array, and only where it divides the dimension.
  """
  used, spec = set(), []
  for name, dim in zip(names, shape):
    axes = LOGICAL_RULES.get(name) if name is not None else None
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    axes = tuple(a for a in axes if a not in used and mesh.shape[a] > 1)
    size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
    if not axes or dim % size:
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
  """Batch dimension split over data and fsdp; everything else replicated."""
  return NamedSharding(mesh, P(('data', 'fsdp')))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
