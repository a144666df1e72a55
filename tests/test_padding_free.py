"""Padding-free training (model.padding_free): the token-row maps, the host-side counts, the config checks and
a trainer run. The models' losses and gradients against the padded computation: tests/test_slt.py (seq2seq),
tests/test_causal_slt.py (decoder-only)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_demo
from slt_jax import default_config
from slt_jax.default_config import ConfigError
from slt_jax.models.token_rows import TokenCounts, TokenRows
from slt_jax.train import step as step_lib
from slt_jax.train import trainer


def _prefix_mask(lengths, width):
  return np.arange(width)[None] < np.asarray(lengths)[:, None]


def test_rows_hold_the_tokens_in_order_and_zeros_elsewhere():
  mask = _prefix_mask([3, 0, 5, 1], 5)                       # 9 tokens
  x = np.random.RandomState(0).randn(4, 5, 2).astype(np.float32)
  rows = TokenRows.from_mask(jnp.asarray(mask), 12)           # 3 filler rows
  gathered = np.asarray(rows.gather(x))
  np.testing.assert_array_equal(gathered[:9], x[mask])       # row-major order of the real positions
  np.testing.assert_array_equal(gathered[9:], 0)
  scattered = np.asarray(rows.scatter(jnp.asarray(gathered) + 1.0))
  np.testing.assert_array_equal(scattered[mask], x[mask] + 1.0)
  np.testing.assert_array_equal(scattered[~mask], 0)         # padding positions get nothing from filler rows


def test_shards_gather_their_own_batch_rows():
  """shards=2: block s (batch rows 2s, 2s + 1) fills rows [6s, 6s + 6) from its own positions only."""
  mask = _prefix_mask([3, 0, 5, 1], 5)
  x = np.random.RandomState(0).randn(4, 5, 2).astype(np.float32)
  rows = TokenRows.from_mask(jnp.asarray(mask), 6, shards=2)
  gathered = np.asarray(rows.gather(x))
  np.testing.assert_array_equal(gathered[:3], x[0, :3])
  np.testing.assert_array_equal(gathered[3:6], 0)            # block 0's filler rows
  np.testing.assert_array_equal(gathered[6:11], x[2, :5])
  np.testing.assert_array_equal(gathered[11], x[3, 0])
  scattered = np.asarray(rows.scatter(jnp.asarray(gathered)))
  np.testing.assert_array_equal(scattered, np.where(mask[..., None], x, 0))
  with pytest.raises(ValueError, match='3 shards do not divide the batch of 4 rows'):
    TokenRows.from_mask(jnp.asarray(mask), 6, shards=3)


def test_row_maps_have_each_others_gradient():
  """gather's gradient is a scatter and vice versa (both computed as gathers): compare with plain indexing."""
  mask = _prefix_mask([2, 4, 3], 4)
  rs = np.random.RandomState(1)
  x, w_rows, w_pos = rs.randn(3, 4, 2), rs.randn(11, 2), rs.randn(3, 4, 2)
  rows = TokenRows.from_mask(jnp.asarray(mask), 11)
  flat = np.flatnonzero(mask.reshape(-1))

  def plain_gather(x):
    return jnp.zeros((11, 2)).at[:flat.size].set(x.reshape(-1, 2)[flat])

  def plain_scatter(r):
    return jnp.zeros((12, 2)).at[flat].set(r[:flat.size]).reshape(3, 4, 2)

  grad = lambda f, w, a: np.asarray(jax.grad(lambda a: jnp.sum(f(a) * w))(a))
  np.testing.assert_allclose(grad(rows.gather, w_rows, x), grad(plain_gather, w_rows, x), atol=1e-6)
  r = rs.randn(11, 2)
  np.testing.assert_allclose(grad(rows.scatter, w_pos, r), grad(plain_scatter, w_pos, r), atol=1e-6)


def test_counts_round_up_per_micro_batch_and_refuse_holes():
  batch = {'pose_mask': _prefix_mask([10, 7, 3, 9], 12), 'label_mask': _prefix_mask([4, 2, 5, 1], 6)}
  assert step_lib.padding_free_counts(batch, 0) is None
  assert step_lib.padding_free_counts(batch, 8) == TokenCounts(frames=32, labels=16)   # 29 -> 32, 12 -> 16
  assert step_lib.padding_free_counts(batch, 1) == TokenCounts(frames=29, labels=12)
  # Two micro-batches of 2 rows: the larger one bounds both (frames 17 | 12, labels 6 | 6).
  assert step_lib.padding_free_counts(batch, 1, grad_accum=2) == TokenCounts(frames=17, labels=6)
  # Two shards (the mesh's batch blocks of 2 rows): the larger block bounds both; with 2 micro-batches, one row.
  assert step_lib.padding_free_counts(batch, 1, shards=2) == TokenCounts(frames=17, labels=6, shards=2)
  assert step_lib.padding_free_counts(batch, 1, grad_accum=2, shards=2) == TokenCounts(10, 5, shards=2)
  batch['pose_mask'][1, 2] = False  # a hole: the models' row bounds assume prefix masks
  with pytest.raises(ValueError, match=r"batch\['pose_mask'\] to be a prefix mask"):
    step_lib.padding_free_counts(batch, 8)


def test_config_checks():
  config = default_config.get_config()
  config.data.synthetic.enabled = True
  config.model.padding_free = -1
  with pytest.raises(ConfigError, match='model.padding_free must be 0'):
    default_config.validate(config)
  config.model.padding_free = 64
  default_config.validate(config)
  default_config.validate_devices(config, 1)
  default_config.validate_devices(config, 8)  # a mesh: rows gathered within each batch shard
  with pytest.raises(ConfigError, match='runs on one host'):
    default_config.validate_devices(config, 8, num_processes=2)


def test_trainer_runs_padding_free_steps(tmp_path, monkeypatch):
  """The trainer computes each batch's counts (rounded up to model.padding_free) and trains on the token rows."""
  seen = []
  counts_fn = step_lib.padding_free_counts

  def spy(batch, multiple, grad_accum=1, shards=1):
    counts = counts_fn(batch, multiple, grad_accum, shards)
    seen.append((counts, int(np.sum(batch['pose_mask'])), int(np.sum(batch['label_mask']))))
    return counts
  monkeypatch.setattr(step_lib, 'padding_free_counts', spy)
  config = tiny_demo.config(num_train_steps=4)
  config.model.padding_free = 128  # coarse: few distinct counts, so few compiles
  trainer.train_and_evaluate(config, str(tmp_path))
  assert len(seen) == 4
  for counts, frames, labels in seen:
    assert counts.frames % 128 == 0 and counts.labels % 128 == 0
    assert frames <= counts.frames < frames + 128 and labels <= counts.labels < labels + 128
  losses = tiny_demo.scalars(str(tmp_path), 'train/loss')
  assert sorted(losses) == [1, 2, 3, 4] and all(np.isfinite(list(losses.values()))), losses
  assert 3.0 < losses[1] < 10.0, losses  # a cross-entropy near log(vocabulary), not a sum over filler rows
