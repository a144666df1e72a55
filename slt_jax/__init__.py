"""slt_jax: sign language translation (pose sequences -> text) with JAX and Flax NNX."""
from flax import nnx

# Parameters carry logical axis names ('embed', 'mlp', ...) that slt_jax.train.sharding maps to the mesh when
# it places them. Flax's eager sharding would instead demand a mesh context at every variable creation (and
# fail in tests and on one device), so it is off for the whole package.
nnx.use_eager_sharding(False)
