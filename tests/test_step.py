"""The pure train step: loss, label smoothing, gradient accumulation, NaN skipping."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from slt_jax import default_config
from slt_jax.train import optim
from slt_jax.train import step as step_lib


class TinySLT(nnx.Module):
  """Follows the model contract: logits[b, i] predicts labels[b, i] from mean-pooled poses and the position."""

  def __init__(self, pose_dim, vocab, length, rngs, dropout=0.1):
    self.proj = nnx.Linear(pose_dim, 16, rngs=rngs)
    self.pos = nnx.Param(jax.random.normal(rngs.params(), (length, 16)) * 0.1)
    self.out = nnx.Linear(16, vocab, rngs=rngs)
    self.drop = nnx.Dropout(dropout)

  def __call__(self, batch, rngs=None):
    poses, mask = batch['poses'], batch['pose_mask']
    b, t = poses.shape[:2]
    x = self.proj(poses.reshape(b, t, -1)) * mask[..., None]
    pooled = x.sum(1) / jnp.maximum(mask.sum(1, keepdims=True), 1)
    h = jnp.tanh(pooled[:, None, :] + self.pos[...][: batch['labels'].shape[1]])
    h = self.drop(h, deterministic=rngs is None, rngs=rngs)
    return self.out(h)


def _batch(seed, b=8, t=6, k=5, c=2, length=4, vocab=11):
  rng = np.random.RandomState(seed)
  return {
      'poses': rng.randn(b, t, k, c).astype(np.float32),
      'pose_mask': np.ones((b, t), bool),
      'labels': rng.randint(1, vocab, (b, length)).astype(np.int32),
      'label_mask': rng.rand(b, length) > 0.2,
      'example_mask': np.ones((b,), bool),
  }


@pytest.fixture(scope='module')
def setup():
  config = default_config.get_config()
  config.training.learning_rate = 1e-2
  config.training.warmup_steps = 1
  config.training.max_grad_norm = 1.0
  model = TinySLT(10, 11, 4, nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optim.make_optimizer(config, 100)
  state = step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optim.init_state(tx, params),
                              rng=jax.random.PRNGKey(0))
  return graphdef, rest, tx, state


def _reference_cross_entropy(logits, labels, mask, label_smoothing):
  """optax's smoothed cross-entropy minus the entropy of the smoothed target (so a perfect model scores 0),
  summed over the mask -> (loss_sum, num_tokens)."""
  logits = logits.astype(jnp.float32)
  target = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  entropy = -jnp.sum(jax.scipy.special.xlogy(target, target), axis=-1)
  loss = optax.softmax_cross_entropy(logits, target) - entropy
  return jnp.sum(loss * mask), jnp.sum(mask.astype(jnp.float32))


# (label_smoothing, vocab, shape of the labels, dtype of the logits); masks drop a random ~30% of the tokens.
SMOOTHING_CASES = [
    (0.0, 7, (2, 3), jnp.float32),
    (0.1, 7, (2, 3), jnp.float32),
    (0.1, 1000, (3, 5), jnp.float32),
    (0.3, 2, (4, 6), jnp.float32),
    (1.0, 11, (2, 4), jnp.float32),     # all mass on the uniform: the loss is KL(uniform || model)
    (0.2, 50, (3, 4), jnp.bfloat16),    # bf16 logits, computed in float32
    (0.1, 32, (37,), jnp.float32),      # padding-free token rows: logits [N, V], labels [N], padded tail
]


@functools.partial(jax.jit, static_argnums=(0, 4))
def _loss_and_grad(loss_fn, logits, labels, mask, label_smoothing):
  """((loss_sum, num_tokens), d loss_sum / d logits) of loss_fn(logits, labels, mask, label_smoothing)."""
  loss_sum = lambda x: loss_fn(x, labels, mask, label_smoothing)
  return loss_sum(logits), jax.grad(lambda x: loss_sum(x)[0])(logits)


@pytest.mark.parametrize('label_smoothing,vocab,shape,dtype', SMOOTHING_CASES)
def test_cross_entropy_equals_optax_smoothed(label_smoothing, vocab, shape, dtype):
  rs = np.random.RandomState(vocab)
  logits = jnp.asarray(3 * rs.randn(*shape, vocab), dtype)
  labels = jnp.asarray(rs.randint(0, vocab, shape))
  mask = rs.rand(*shape) > 0.3
  if len(shape) == 1:
    mask[-5:] = False  # the padded rows after the real tokens
  mask = jnp.asarray(mask)
  (loss, n), grad = _loss_and_grad(step_lib.cross_entropy, logits, labels, mask, label_smoothing)
  (ref_loss, ref_n), ref_grad = _loss_and_grad(_reference_cross_entropy, logits, labels, mask, label_smoothing)
  assert float(n) == float(ref_n) == int(mask.sum())
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-5)
  # and its gradient with respect to the logits (zero on masked tokens)
  np.testing.assert_allclose(np.asarray(grad, np.float32), np.asarray(ref_grad, np.float32), rtol=1e-4,
                             atol=1e-6)
  assert not np.asarray(grad)[~np.asarray(mask)].any()


@pytest.mark.parametrize('label_smoothing', [0.0, 0.1, 0.5])
def test_perfect_prediction_scores_zero(label_smoothing):
  """A model that predicts the smoothed target exactly has loss 0 (and positive loss otherwise)."""
  vocab = 9
  labels = jnp.asarray([[1, 2, 3], [4, 8, 0]])
  mask = jnp.ones(labels.shape, bool)
  target = optax.smooth_labels(jax.nn.one_hot(labels, vocab), label_smoothing)
  perfect = jnp.log(jnp.maximum(target, 1e-30))
  loss, _ = step_lib.cross_entropy(perfect, labels, mask, label_smoothing)
  assert abs(float(loss)) < 1e-4
  assert float(step_lib.cross_entropy(perfect[:, ::-1], labels, mask, label_smoothing)[0]) > 1.0


def test_train_step_loss_is_the_smoothed_cross_entropy(setup):
  """The step's reported loss: the masked mean of the smoothed cross-entropy of the model's logits."""
  _, _, tx, _ = setup
  model = TinySLT(10, 11, 4, nnx.Rngs(0), dropout=0.0)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  state = step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optim.init_state(tx, params),
                              rng=jax.random.PRNGKey(0))
  batch = _batch(5)
  _, metrics = jax.jit(lambda s, b: step_lib.train_step(s, b, graphdef=graphdef, rest=rest, tx=tx,
                                                        label_smoothing=0.2))(state, batch)
  loss_sum, n = _reference_cross_entropy(model(batch), batch['labels'], batch['label_mask'], 0.2)
  np.testing.assert_allclose(metrics['loss'], loss_sum / n, rtol=1e-5)
  assert float(metrics['num_tokens']) == batch['label_mask'].sum()


def test_loss_falls(setup):
  graphdef, rest, tx, state = setup
  fn = jax.jit(lambda s, b: step_lib.train_step(s, b, graphdef=graphdef, rest=rest, tx=tx, label_smoothing=0.0))
  batch = _batch(0)
  losses = []
  for _ in range(30):
    state, metrics = fn(state, batch)
    losses.append(float(metrics['loss']))
  assert losses[-1] < 0.7 * losses[0], losses
  assert int(state.step) == 30


def test_gradient_accumulation_equals_full_batch(setup):
  _, _, tx, _ = setup
  graphdef, params, rest = nnx.split(TinySLT(10, 11, 4, nnx.Rngs(0), dropout=0.0), nnx.Param, ...)
  state = step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optim.init_state(tx, params),
                              rng=jax.random.PRNGKey(0))
  batch = _batch(1)
  run = lambda accum: step_lib.train_step(state, batch, graphdef=graphdef, rest=rest, tx=tx,
                                          label_smoothing=0.1, grad_accum=accum)
  full, m1 = run(1)
  acc, m4 = run(4)
  np.testing.assert_allclose(m1['loss'], m4['loss'], rtol=1e-5)
  np.testing.assert_allclose(m1['grad_norm'], m4['grad_norm'], rtol=1e-4)
  for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(acc.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match='divisible'):
    step_lib.train_step(state, _batch(1, b=6), graphdef=graphdef, rest=rest, tx=tx, label_smoothing=0.0,
                        grad_accum=4)


def test_nonfinite_batch_is_skipped(setup):
  graphdef, rest, tx, state = setup
  batch = _batch(2)
  batch['poses'][0, 0, 0, 0] = np.nan
  new, metrics = step_lib.train_step(state, batch, graphdef=graphdef, rest=rest, tx=tx, label_smoothing=0.0)
  assert int(metrics['nonfinite_count']) == 1
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(new.params)):
    np.testing.assert_array_equal(a, b)
  good, metrics = step_lib.train_step(new, _batch(3), graphdef=graphdef, rest=rest, tx=tx, label_smoothing=0.0)
  assert int(metrics['nonfinite_count']) == 0


def test_rbg_dropout_is_reproducible_and_differs_from_threefry(setup):
  graphdef, rest, tx, state = setup
  batch = _batch(4)
  loss = lambda impl: float(step_lib.train_step(state, batch, graphdef=graphdef, rest=rest, tx=tx,
                                                label_smoothing=0.0, rng_impl=impl)[1]['loss'])
  rbg = loss('rbg')
  assert rbg == loss('rbg')            # same state key -> same masks
  assert rbg != loss('threefry')       # another mask stream
  assert step_lib.dropout_rng_impl('auto') == 'rbg'  # this test runs on CPU
  assert step_lib.dropout_rng_impl('threefry') == 'threefry'
