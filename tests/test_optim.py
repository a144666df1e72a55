"""slt_jax/train/optim.py against optax: the hand-written clipping + AdamW + NaN/Inf guard must update parameters
as optax.apply_if_finite(optax.chain(optax.clip_by_global_norm, optax.adamw)) does, NaN / Inf steps included,
and the learning-rate schedule must take the values of linear warmup (capped at half the run) + cosine decay.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from slt_jax import default_config
from slt_jax.train import optim

STEPS = 10
# step -> what the gradient of that step holds: NaN / Inf (skipped, twice in a row at 5 and 6), or a scale
# above / below the clipping norm (1.0) so that both sides of the clip are taken.
NONFINITE = {2: np.nan, 5: np.inf, 6: -np.inf}
SCALE = {0: 3.0, 1: 0.05, 3: 10.0, 4: 0.1, 7: 2.0, 8: 0.02, 9: 5.0}


def _config(learning_rate=1e-2, warmup_steps=3, weight_decay=0.1, max_grad_norm=1.0):
  config = default_config.get_config()
  config.training.update(learning_rate=learning_rate, warmup_steps=warmup_steps, weight_decay=weight_decay,
                         max_grad_norm=max_grad_norm)
  return config


def _expected_lr(step, peak, warmup, total):
  """Linear 0 -> peak over `warmup` steps, then cosine from peak to 0.1 * peak at `total`, flat after."""
  if step < warmup:
    return peak * step / warmup
  frac = min(step - warmup, total - warmup) / (total - warmup)
  return 0.1 * peak + 0.9 * peak * 0.5 * (1 + math.cos(math.pi * frac))


def _params():
  rs = np.random.RandomState(0)
  return {'dense': {'kernel': jnp.asarray(rs.randn(6, 4), jnp.float32),
                    'bias': jnp.asarray(rs.randn(4), jnp.float32)},
          'norm': jnp.asarray(1 + 0.1 * rs.randn(4), jnp.float32), 'scalar': jnp.asarray(0.5, jnp.float32)}


def _gradients(params):
  """STEPS gradient trees: random directions with the step's norm scale, or a NaN / Inf in one leaf."""
  rs = np.random.RandomState(1)
  out = []
  for step in range(STEPS):
    g = jax.tree.map(lambda p: np.asarray(rs.randn(*p.shape), np.float32), params)
    norm = float(optax.global_norm(g))
    g = jax.tree.map(lambda x: x * np.float32(SCALE.get(step, 1.0) / norm), g)
    if step in NONFINITE:
      g['dense']['kernel'][step % 6, 1] = NONFINITE[step]
    out.append(jax.tree.map(jnp.asarray, g))
  return out


def _reference(config, num_steps, warmup):
  """optax's own chain, with the schedule written out here (_expected_lr), never giving up on NaN steps."""
  t = config.training
  lr = lambda count: jnp.asarray([_expected_lr(s, t.learning_rate, warmup, num_steps) for s in range(64)],
                                 jnp.float32)[count]
  clip = [optax.clip_by_global_norm(t.max_grad_norm)] if t.max_grad_norm > 0 else []
  return optax.apply_if_finite(
      optax.chain(*clip, optax.adamw(lr, b1=0.9, b2=0.98, eps=1e-8, weight_decay=t.weight_decay)),
      max_consecutive_errors=10**6)


def _assert_close(a, b, msg):
  """Equal to float32 rounding: the two clip and norm in another order (g * (c / |g|) vs g / |g| * c)."""
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(np.abs(b).max()), err_msg=msg)


@pytest.mark.parametrize('max_grad_norm', [1.0, 0.0])
def test_updates_equal_optax_chain_with_nonfinite_steps(max_grad_norm):
  config = _config(max_grad_norm=max_grad_norm)
  tx = optim.make_optimizer(config, STEPS)
  ref_tx = _reference(config, STEPS, warmup=3)
  params = ref_params = _params()
  state, ref_state = optim.init_state(tx, params), ref_tx.init(params)

  ours = jax.jit(lambda g, s, p: optim.apply_gradients(tx, g, s, p))

  @jax.jit
  def reference(g, s, p):
    updates, s = ref_tx.update(g, s, p)
    return optax.apply_updates(p, updates), s

  for step, grads in enumerate(_gradients(params)):
    before = params
    params, state, grad_norm = ours(grads, state, params)
    ref_params, ref_state = reference(grads, ref_state, ref_params)
    finite = step not in NONFINITE
    for a, b, p in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), jax.tree.leaves(before)):
      if finite and step > 0:  # (the learning rate is 0 at step 0, the start of the warmup)
        assert not np.array_equal(a, p), step
      elif not finite:
        np.testing.assert_array_equal(a, p)   # a skipped step leaves the parameters bit-identical
      _assert_close(a, b, f'step {step}')
    for field in ('notfinite_count', 'last_finite', 'total_notfinite'):
      assert int(getattr(state, field)) == int(getattr(ref_state, field)), (step, field)
    assert int(optim.nonfinite_count(state)) == (2 if step == 6 else 1 if step in NONFINITE else 0)
    # The optimizer's own state (Adam's count, mu, nu) too: a skipped step must not advance it.
    for a, b in zip(jax.tree.leaves(state.inner_state), jax.tree.leaves(ref_state.inner_state), strict=True):
      _assert_close(a, b, f'step {step}')
    if finite:
      np.testing.assert_allclose(grad_norm, optax.global_norm(grads), rtol=1e-6)
    else:
      assert not np.isfinite(float(grad_norm))
  assert int(state.total_notfinite) == len(NONFINITE)


@pytest.mark.parametrize('warmup_steps,num_steps,warmup', [
    (10, 100, 10),    # warmup, peak, cosine to 10% at the end, flat after
    (1000, 100, 50),  # warmup longer than the run: capped at half of it
    (0, 20, 0),       # no warmup: the peak at step 0
    (5, 3, 1),        # a 3-step run: warmup 3 // 2 = 1
])
def test_learning_rate_schedule_values(warmup_steps, num_steps, warmup):
  peak = 3e-4
  schedule = optim.learning_rate_schedule(_config(learning_rate=peak, warmup_steps=warmup_steps), num_steps)
  steps = sorted({0, warmup // 2, warmup, (warmup + num_steps) // 2, num_steps - 1, num_steps, 2 * num_steps})
  got = [float(schedule(s)) for s in steps]
  want = [_expected_lr(s, peak, warmup, num_steps) for s in steps]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-12, err_msg=str(steps))
  assert float(schedule(warmup)) == pytest.approx(peak, rel=1e-6)
  assert float(schedule(num_steps)) == pytest.approx(0.1 * peak, rel=1e-6)
