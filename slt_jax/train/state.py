"""The model and its TrainState, built straight onto their shardings: from a config as the trainer builds them.

  model = state.build(config, workdir, tokenizer, pose_dim)        # training and inference (slt_jax/inference.py)
  graphdef, state, rest, shardings = state.from_config(config, tx, mesh, vocab_size, pose_dim)   # check, benches

`from_config` is the one recipe (model, seeds, trainable filter, eager loading of pretrained weights, the rule
table) that training, --mode=check, inference and the benchmarks share; `build` adds the mesh, the optimizer
and the frozen weights of training.init_from; `create_sharded_state` is the placement machinery for any model
builder.
"""
import contextlib
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from slt_jax import default_config
from slt_jax.models import slt
from slt_jax.train import init_from as init_from_lib
from slt_jax.train import optim
from slt_jax.train import sharding as sharding_lib
from slt_jax.train import step as step_lib


@dataclasses.dataclass
class ModelState:
  """A config's model on the mesh, as (graphdef, rest), with its sharded TrainState (fresh: restore separately)."""
  mesh: jax.sharding.Mesh
  tx: Any                             # the optax optimizer of state.params
  graphdef: Any
  rest: Any                           # the non-trained variables (frozen parts, a LoRA base)
  state: step_lib.TrainState
  state_shardings: Any


def build(config, workdir: str, tokenizer, pose_dim: int, num_train_steps: int = 0) -> ModelState:
  """The model training and inference run: checked against the tokenizer, on config.mesh, with the frozen
  parameters of training.init_from in `rest` (the trained ones are the fresh run's business: init_from.load).

  tokenizer: the run's (its vocab_size and special ids); pose_dim: K * C; num_train_steps: the learning-rate
  schedule's length (0 where nothing trains).
  """
  default_config.validate_vocab(config, tokenizer.vocab_size)
  mesh = sharding_lib.make_mesh(config.mesh)
  tx = optim.make_optimizer(config, max(num_train_steps, 1))
  graphdef, state, rest, state_shardings = from_config(config, tx, mesh, tokenizer.vocab_size, pose_dim,
                                                       tokenizer=tokenizer)
  init_from_lib.check_trainable(config, state.params, rest)
  # training.init_from: the parameters outside the TrainState (frozen, LoRA base) in every mode; the trained ones
  # only on a fresh training run (trainer.train_and_evaluate), a resumed one has its own.
  state, rest = init_from_lib.load(config, workdir, state, rest, into='rest')
  return ModelState(mesh, tx, graphdef, rest, state, state_shardings)


def from_config(config, tx, mesh, vocab_size: int, pose_dim: int, *, tokenizer=None, abstract: bool = False):
  """The model of `config` (slt.build_model) and its TrainState on `mesh`, as training builds them.

  Args:
    tx: the optimizer (optim.make_optimizer).
    vocab_size, pose_dim: the tokenizer's ids and K * C of a pose frame.
    tokenizer: the run's; the model takes its EOS / pad (and a random one's start) ids from it.
    abstract: allocate nothing (create_sharded_state(abstract=True)): a restore target or for --mode=check.
  Returns:
    (graphdef, TrainState, rest, TrainState shardings): the parameters are config.training.seed's random init
    or model.name's weights; with LoRA the adapters + pose front end are trained, the base stays in `rest`, and
    so do the parts of training.freeze (init_from.trainable_filter).
  """
  seed = int(config.training.seed)
  return create_sharded_state(
      lambda: slt.build_model(config, vocab_size, pose_dim, rngs=nnx.Rngs(params=seed), tokenizer=tokenizer),
      tx, mesh, seed=seed + 1, eager=bool(config.model.name),
      trainable=init_from_lib.trainable_filter(config), abstract=abstract,
      rules=sharding_lib.logical_rules(config))


def create_sharded_state(build_model, tx, mesh, *, seed: int, trainable=nnx.Param, eager: bool = False,
                         abstract: bool = False, rules=None):
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
    rules: sharding.logical_rules(config) (None: the default config's).
  Returns:
    (graphdef, TrainState, rest, TrainState shardings) where `rest` holds the non-trained variables.
  """
  def build():
    return nnx.split(build_model(), trainable, ...)

  def init_state(params):
    return step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optim.init_state(tx, params),
                               rng=jax.random.PRNGKey(seed))

  graphdef, abstract_params, abstract_rest = nnx.eval_shape(build)
  shardings = sharding_lib.state_shardings(jax.eval_shape(init_state, abstract_params), mesh, rules)
  rest_shardings = sharding_lib.state_shardings(abstract_rest, mesh, rules)
  if abstract:
    with_sharding = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
    return (graphdef, jax.tree.map(with_sharding, jax.eval_shape(init_state, abstract_params), shardings),
            jax.tree.map(with_sharding, abstract_rest, rest_shardings), shardings)
  if eager:
    # Pretrained weights are read into host memory (never onto one accelerator), then each array goes
    # straight to its sharding; the params are donated so the TrainState does not hold them twice.
    with _on_host():
      _, params, rest = build()
    params, rest = sharding_lib.place(params, shardings.params), sharding_lib.place(rest, rest_shardings)
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
