"""Optimizer: AdamW with linear warmup + cosine decay, global-norm clipping and a NaN/Inf guard.

The gradient's global norm is computed per leaf as a dot product (`global_norm`), for the clipping, the
guard and the logged grad_norm. XLA's CPU backend (YNNPACK) reduces sum(x**2) and all(isfinite(x)) over a leaf several
times slower than it computes x . x (the update's cost both ways: README, Speed).
"""
from absl import logging
import jax
import jax.numpy as jnp
import optax


def learning_rate_schedule(config, num_train_steps: int) -> optax.Schedule:
  """Linear warmup to `learning_rate`, then cosine decay to 10% of it at `num_train_steps`.

  The warmup takes at most half of the steps (so a short run still decays), with a logged warning when that
  cuts training.warmup_steps.
  """
  t = config.training
  warmup = min(t.warmup_steps, max(num_train_steps // 2, 1))
  if warmup < t.warmup_steps:
    logging.warning('training.warmup_steps=%d is capped at %d: half of the %d training steps this schedule is for '
                    '(the rest decays)', t.warmup_steps, warmup, num_train_steps)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=t.learning_rate, warmup_steps=warmup,
      decay_steps=max(num_train_steps, warmup + 1), end_value=0.1 * t.learning_rate)


def global_norm(tree) -> jax.Array:
  """f32[]: sqrt of the sum of squares of every leaf (optax.global_norm), one dot product per leaf."""
  squares = [jnp.dot(x.ravel(), x.ravel(), preferred_element_type=jnp.float32) for x in jax.tree.leaves(tree)]
  return jnp.sqrt(sum(squares, jnp.zeros((), jnp.float32)))


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """optax.clip_by_global_norm with `global_norm`: g * min(1, max_norm / ||g||)."""
  def update(updates, state, params=None):
    del params
    scale = jnp.minimum(1.0, max_norm / global_norm(updates))
    return jax.tree.map(lambda g: (g * scale).astype(g.dtype), updates), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(config, num_train_steps: int) -> optax.GradientTransformation:
  """Clipping + AdamW. The train step applies it through `apply_gradients` (which skips NaN/Inf updates), on
  the state `init_state` makes.

  training.weight_decay applies to every trained parameter, biases and norm scales included (HF Trainer spares
  those two): sparing them lowered demo_causal's BLEU (README, Modes: train).
  """
  t = config.training
  return optax.chain(
      clip_by_global_norm(t.max_grad_norm) if t.max_grad_norm > 0 else optax.identity(),
      optax.adamw(learning_rate_schedule(config, num_train_steps), b1=0.9, b2=0.98, eps=1e-8,
                  weight_decay=t.weight_decay),
  )


def init_state(tx: optax.GradientTransformation, params) -> optax.ApplyIfFiniteState:
  """The optimizer state of a TrainState: tx's own (`inner_state`) and the skip counters, in the layout of
  optax.apply_if_finite's state."""
  return optax.ApplyIfFiniteState(notfinite_count=jnp.zeros([], jnp.int32), last_finite=jnp.array(True),
                                  total_notfinite=jnp.zeros([], jnp.int32), inner_state=tx.init(params))


def apply_gradients(tx: optax.GradientTransformation, grads, opt_state: optax.ApplyIfFiniteState, params):
  """One update of `params` by `tx`, skipped when a gradient holds NaN/Inf -> (params, opt_state, grad_norm).

  What optax.apply_if_finite + optax.apply_updates do, except that the parameter update happens inside the
  same lax.cond as the optimizer's, so XLA fuses AdamW's arithmetic with it (a cond's outputs are
  materialised; the update's cost both ways: README, Speed).
  Non-finiteness is read off the global norm, which any NaN/Inf makes non-finite. `notfinite_count` counts
  consecutive skipped updates; the trainer stops the run (training.max_consecutive_nonfinite), so an update
  with NaN/Inf is never applied.
  """
  grad_norm = global_norm(grads)
  finite = jnp.isfinite(grad_norm)

  def apply():
    updates, inner_state = tx.update(grads, opt_state.inner_state, params)
    return optax.apply_updates(params, updates), inner_state

  params, inner_state = jax.lax.cond(finite, apply, lambda: (params, opt_state.inner_state))
  skipped = jnp.logical_not(finite).astype(jnp.int32)
  return params, optax.ApplyIfFiniteState(
      notfinite_count=(opt_state.notfinite_count + 1) * skipped, last_finite=finite,
      total_notfinite=opt_state.total_notfinite + skipped, inner_state=inner_state), grad_norm


def nonfinite_count(opt_state) -> int:
  """Consecutive skipped (non-finite) updates recorded in the state (`apply_gradients`)."""
  return opt_state.notfinite_count
