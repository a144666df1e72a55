"""Optimizer: AdamW with linear warmup + cosine decay, global-norm clipping and a NaN/Inf guard."""
import optax


def learning_rate_schedule(config, num_train_steps: int) -> optax.Schedule:
  """Linear warmup to `learning_rate`, then cosine decay to 10% of it at `num_train_steps`."""
  t = config.training
  warmup = min(t.warmup_steps, max(num_train_steps // 2, 1))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=t.learning_rate, warmup_steps=warmup,
      decay_steps=max(num_train_steps, warmup + 1), end_value=0.1 * t.learning_rate)


def make_optimizer(config, num_train_steps: int) -> optax.GradientTransformation:
  """AdamW + clipping, wrapped so that an update whose gradients hold NaN/Inf is skipped.

  The wrapper counts consecutive skipped updates in its state (`notfinite_count`); the trainer stops with a
  clear message once `training.max_consecutive_nonfinite` is reached (the wrapper itself never gives up).
  """
  t = config.training
  tx = optax.chain(
      optax.clip_by_global_norm(t.max_grad_norm) if t.max_grad_norm > 0 else optax.identity(),
      optax.adamw(learning_rate_schedule(config, num_train_steps), b1=0.9, b2=0.98, eps=1e-8,
                  weight_decay=t.weight_decay),
  )
  # The wrapper must never give up and apply a non-finite update (the trainer checks the count only at log
  # steps, and the parameters of every checkpoint must stay finite): the trainer stops the run instead.
  return optax.apply_if_finite(tx, max_consecutive_errors=2**31 - 1)


def nonfinite_count(opt_state) -> int:
  """Consecutive skipped (non-finite) updates recorded by `optax.apply_if_finite`'s state."""
  return opt_state.notfinite_count
