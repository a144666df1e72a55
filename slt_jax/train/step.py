"""The train step: a pure function, and TrainStep, its one jitted form built from the config.

The model lives as `(graphdef, params, rest)`: `params` are the trained variables, `rest` everything else
(frozen base weights under LoRA, non-trainable buffers). `train_step` is a pure function of a `TrainState` and
a batch; `TrainStep(config, ...)` jits it with explicit shardings and the state donated, for the trainer,
--mode=check and the benchmarks alike. No tensorflow import here: GPU hosts run this without it.
"""
import functools
from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from slt_jax.models import contract
from slt_jax.models.token_rows import TokenCounts
from slt_jax.train import optim
from slt_jax.train import sharding as sharding_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array        # i32[], optimizer steps taken.
  params: Any            # nnx.State of the trained variables.
  opt_state: Any         # optim.init_state: the optax state over `params` and the NaN/Inf skip counters.
  rng: jax.Array         # PRNG key for dropout; split every step.


def cross_entropy(logits, labels, mask, label_smoothing: float = 0.0):
  """Summed token cross-entropy and token count.

  Args:
    logits: f32[..., V] (any float dtype; the loss is computed in float32), e.g. [B, L, V] or token rows [N, V].
    labels: i32[...].
    mask: bool[...], True on tokens that count.
    label_smoothing: mass spread uniformly over the vocabulary.
  Returns:
    (loss_sum f32[], num_tokens f32[]), so micro-batches and hosts can be summed before dividing.
  """
  logits = logits.astype(jnp.float32)
  vocab = logits.shape[-1]
  # Integer labels, no one-hot: the gradient is one fused pass over the logits instead of several.
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  if label_smoothing > 0:
    # Against targets (1 - s) * onehot + s / V: (1 - s) * nll + s * (cross-entropy against the uniform).
    uniform = jax.nn.logsumexp(logits, axis=-1) - jnp.mean(logits, axis=-1)
    loss = (1.0 - label_smoothing) * loss + label_smoothing * uniform
    # Subtract the entropy of the smoothed target so that a perfect model scores 0.
    confidence = 1.0 - label_smoothing + label_smoothing / vocab
    low = label_smoothing / vocab
    min_entropy = -(confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low + 1e-20))
    loss = loss - min_entropy
  mask = mask.astype(jnp.float32)
  return jnp.sum(loss * mask), jnp.sum(mask)


def _split_microbatches(batch, num_micro: int):
  """{k: [B, ...]} -> {k: [num_micro, B / num_micro, ...]}."""
  def split(x):
    if x.shape[0] % num_micro:
      raise ValueError(f'batch size {x.shape[0]} is not divisible by gradient_accumulation_steps={num_micro}')
    return x.reshape((num_micro, x.shape[0] // num_micro) + x.shape[1:])
  return jax.tree.map(split, batch)


RUNGS_PER_OCTAVE = 16  # padding_free_rung (a power of 2): under 1/16 of a rung's rows are filler past 16 multiples


def padding_free_rung(count: int, multiple: int, full: int) -> int:
  """The rung of a fixed ladder at or above `count` (a real-token count), capped at `full` (the padded size).

  The rungs are the multiples of `multiple` up to 16 of them, then 16 per octave (steps of multiple x 2^k in
  [16, 32) x multiple x 2^k), then `full` itself: each distinct rung compiles its own step, so the steps a run
  compiles are bounded by ~16 x log2(full / (16 x multiple)) + 17 per count whatever its data, and a rung
  wastes under 1/16 of its rows (or under `multiple` rows) on filler.
  """
  units = max(-(-count // multiple), 1)
  step = 1 << max(units.bit_length() - RUNGS_PER_OCTAVE.bit_length(), 0)  # 2^(floor(log2 units) - 4), or 1
  return min(-(-units // step) * step * multiple, max(full, multiple))


def padding_free_counts(batch: dict, multiple: int, grad_accum: int = 1,
                        shards: int = 1) -> Optional[TokenCounts]:
  """model.padding_free: the static TokenCounts of a host batch, or None when `multiple` is 0 (off).

  The most real pose frames and label tokens in any of its `grad_accum` micro-batches, each rounded up to its
  rung of a fixed ladder (padding_free_rung: multiples of `multiple`, coarser in proportion above 16 of them,
  never past the micro-batch's padded size), so every distinct value, which compiles its own step, comes from
  a small fixed set. The models derive their row counts from these assuming prefix masks (real entries, then
  padding), as the input pipeline makes them; a batch with holes in a mask is refused here rather than have
  tokens dropped.

  shards: the blocks each micro-batch is split into on the mesh (the devices of the batch's axes, data x
  fsdp); the counts then bound the tokens of any block, within which the models gather their rows.
  """
  if multiple <= 0:
    return None
  counts = []
  for key in ('pose_mask', 'label_mask'):
    mask = np.asarray(batch[key]).astype(bool)
    lengths = mask.sum(axis=1)
    if not np.array_equal(mask, np.arange(mask.shape[1])[None] < lengths[:, None]):
      raise ValueError(f'model.padding_free needs batch[{key!r}] to be a prefix mask (real entries, then '
                       'padding) in every row; set model.padding_free=0 for masks with holes')
    if mask.shape[0] % (grad_accum * shards):
      raise ValueError(f'model.padding_free: a batch of {mask.shape[0]} rows does not split into {grad_accum} '
                       f'micro-batches of {shards} shards')
    most = int(lengths.reshape(grad_accum * shards, -1).sum(axis=1).max())
    counts.append(padding_free_rung(most, multiple, full=mask.size // (grad_accum * shards)))
  return TokenCounts(*counts, shards=shards)


def batch_shards(mesh, rules=None) -> int:
  """The number of blocks batch_sharding(mesh, rules) splits a batch into (the devices of data x fsdp)."""
  n = mesh.devices.size  # a batch of n rows: divisible by any product of the mesh's axes
  return n // sharding_lib.batch_sharding(mesh, rules).shard_shape((n,))[0]


def dropout_rng_impl(setting: str) -> str:
  """training.dropout_rng -> the PRNG of a step's dropout key: 'auto' is rbg on CPU and threefry on
  accelerators (where it shards without replicating the key derivation)."""
  if setting == 'auto':
    return 'rbg' if jax.default_backend() == 'cpu' else 'threefry'
  return setting


def dropout_key(step_rng: jax.Array, impl: str = 'threefry') -> jax.Array:
  """The dropout key of a step from the state's threefry key: itself, or an `impl` ('rbg') key seeded by it.

  Each dropout site draws two 32-bit words from it; the masks are hashed from those and the positions
  (layers.dropout_keep), so the choice no longer changes the cost much (it did when the masks themselves
  were drawn from the PRNG: threefry masks cost as much as a small model's matmuls on a CPU). The state
  keeps a threefry key either way, so checkpoints do not depend on the choice.
  """
  if impl == 'threefry':
    return step_rng
  return jax.random.wrap_key_data(jax.random.bits(step_rng, (4,), jnp.uint32), impl=impl)


def train_step(state: TrainState, batch, *, graphdef, rest, tx, label_smoothing: float, grad_accum: int = 1,
               rng_impl: str = 'threefry', counts: Optional[TokenCounts] = None):
  """One optimizer step (with `grad_accum` micro-batches scanned sequentially).

  Args:
    state: the TrainState.
    batch: a contract.Batch dict: poses f32[B, T, K, C], pose_mask bool[B, T], labels i32[B, L],
      label_mask bool[B, L], ... (the model reads contract.MODEL_KEYS).
    graphdef, rest: the static model graph and its non-trained variables.
    rng_impl: PRNG of the dropout masks ('threefry' | 'rbg', see dropout_key).
    counts: padding-free (model.padding_free): the batch's static TokenCounts (padding_free_counts); the
      model then runs its position-wise layers on the real tokens only. None: the padded computation.
  Returns:
    (new state, metrics dict of scalars: loss, num_tokens, grad_norm, nonfinite_count).
  """
  rng, step_rng = jax.random.split(state.rng)
  step_rng = dropout_key(step_rng, rng_impl)
  model_batch = contract.model_batch(batch)

  def loss_fn(params, micro, key):
    # copy=True: fresh Variables at this (grad) trace level; `rest`'s own ones belong to the jit level, and
    # nnx.scan refuses those (the frozen LoRA base lives in `rest`).
    model = nnx.merge(graphdef, params, rest, copy=True)
    rngs = nnx.Rngs(dropout=key)
    if counts is None:
      logits, labels, mask = model(micro, rngs=rngs), micro['labels'], micro['label_mask']
    else:  # padding-free: the loss of the decoder's token rows
      logits, labels, mask = model.token_logits(micro, counts, rngs=rngs)
    loss_sum, n = cross_entropy(logits, labels, mask, label_smoothing)
    return loss_sum / jnp.maximum(n, 1.0), (loss_sum, n)

  grad_fn = jax.grad(loss_fn, has_aux=True)
  if grad_accum == 1:
    grads, (loss_sum, n) = grad_fn(state.params, model_batch, step_rng)
  else:
    micro_batches = _split_microbatches(model_batch, grad_accum)
    keys = jax.random.split(step_rng, grad_accum)

    def accumulate(carry, xs):
      g_acc, l_acc, n_acc = carry
      g, (l, n) = grad_fn(state.params, xs[0], xs[1])
      # Weight each micro-batch's mean-loss gradient by its token count: the sum equals the full batch's.
      g_acc = jax.tree.map(lambda a, b: a + b * n, g_acc, g)
      return (g_acc, l_acc + l, n_acc + n), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (grads, loss_sum, n), _ = jax.lax.scan(accumulate, (zeros, 0.0, 0.0), (micro_batches, keys))
    grads = jax.tree.map(lambda g: g / jnp.maximum(n, 1.0), grads)

  params, opt_state, grad_norm = optim.apply_gradients(tx, grads, state.opt_state, state.params)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)
  metrics = {
      'loss': loss_sum / jnp.maximum(n, 1.0),
      'num_tokens': n,
      'grad_norm': grad_norm,
      'nonfinite_count': opt_state.notfinite_count,
  }
  return new_state, metrics


class TrainStep:
  """The train step of `config`, jitted with explicit shardings: the one the trainer runs.

  Built from the config (label smoothing, gradient accumulation, the dropout PRNG, model.padding_free) and the
  model's state: the trainer, --mode=check (lowered on abstract inputs) and the benchmarks all run this, so a
  benchmark measures the trainer's step. Padding-free steps compile once per TokenCounts.

    train = TrainStep(config, graphdef, tx, state_shardings, rest, mesh)
    state, metrics = train(state, host_batch, device_batch)   # device_batch: host_batch on the mesh
  """

  def __init__(self, config, graphdef, tx, state_shardings, rest, mesh):
    t = config.training
    self._padding_free, self._grad_accum = int(config.model.padding_free), int(t.gradient_accumulation_steps)
    self._step = functools.partial(train_step, graphdef=graphdef, tx=tx, label_smoothing=t.label_smoothing,
                                   grad_accum=self._grad_accum, rng_impl=dropout_rng_impl(t.dropout_rng))
    self._jit = functools.partial(sharding_lib.jit_train_step, state_shardings=state_shardings, rest=rest, mesh=mesh,
                                  rules=sharding_lib.logical_rules(config))
    self._jitted = {}  # TokenCounts (None: padded) -> sharding.JittedStep
    rules = sharding_lib.logical_rules(config)
    self._shards, self._blocks = batch_shards(mesh, rules), sharding_lib.batch_sharding(mesh, rules)

  def counts(self, host_batch) -> Optional[TokenCounts]:
    """The padding-free TokenCounts of a host batch (numpy masks), None when model.padding_free is off; on a
    mesh they bound each batch shard's tokens (the models gather rows within shards, never across devices)."""
    counts = padding_free_counts(host_batch, self._padding_free, self._grad_accum, self._shards)
    return counts._replace(blocks=self._blocks) if counts is not None and self._shards > 1 else counts

  def jitted(self, counts: Optional[TokenCounts]) -> sharding_lib.JittedStep:
    """The jitted step for batches of these `counts`: (state, device batch) -> (state, metrics); .lower()."""
    if counts not in self._jitted:
      self._jitted[counts] = self._jit(functools.partial(self._step, counts=counts))
    return self._jitted[counts]

  def __call__(self, state: TrainState, host_batch, device_batch):
    """One step on `device_batch` (host_batch on the mesh; the host copy gives the padding-free counts)."""
    return self.jitted(self.counts(host_batch))(state, device_batch)
