"""NaN guard inside the real training loop: a planted NaN batch is skipped and counted; a streak stops the run
with NonFiniteLossError and leaves only finite checkpoints.

One in-process run of trainer.train_and_evaluate on the tiny demo (tests/tiny_demo.py), whose training stream
is poisoned (poses set to NaN) at batch 2 (step 3) and from batch 5 on (steps 6, 7, ...);
max_consecutive_nonfinite=2, a checkpoint every step.
"""
import dataclasses
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow as tf

import tiny_demo
from slt_jax.data import inputs as inputs_lib
from slt_jax.train import trainer

SINGLE_NAN_BATCH, STREAK_FROM = 2, 5  # batch k is trained at step k + 1


def _poisoned(split):
  """The split whose batches SINGLE_NAN_BATCH and STREAK_FROM, STREAK_FROM + 1, ... carry NaN poses."""
  def make(start_step):
    def poison(k, batch):
      bad = tf.logical_or(k == SINGLE_NAN_BATCH, k >= STREAK_FROM)
      return {**batch, 'poses': tf.where(bad, np.float32(np.nan), batch['poses'])}
    return split.dataset(start_step).enumerate(start_step).map(poison)
  return dataclasses.replace(split, _make=make)


@pytest.fixture(scope='module')
def stopped_run(tmp_path_factory):
  """(NonFiniteLossError, workdir) of the poisoned run."""
  workdir = str(tmp_path_factory.mktemp('nan'))
  config = tiny_demo.config(num_train_steps=20, checkpoint_every_steps=1, keep_checkpoints=20,
                            max_consecutive_nonfinite=2)
  make_inputs = inputs_lib.make_inputs

  def poisoned_inputs(config, workdir, splits=None):
    tokenizer, datasets = make_inputs(config, workdir, ['train'])  # no eval splits: nothing else to compile
    return tokenizer, {'train': _poisoned(datasets['train'])}

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(trainer.inputs_lib, 'make_inputs', poisoned_inputs)
    with pytest.raises(trainer.NonFiniteLossError) as error:
      trainer.train_and_evaluate(config, workdir)
  return error.value, workdir


def _checkpoint(workdir, step):
  manager = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'), item_names=('state', 'meta'))
  state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state
  manager.close()
  return state


def _params(state):
  return [np.asarray(x) for x in jax.tree.leaves(state['params'])]


@pytest.mark.slow
def test_nan_batch_is_skipped_and_counted(stopped_run):
  _, workdir = stopped_run
  before, nan_step, after = (_checkpoint(workdir, s) for s in (SINGLE_NAN_BATCH, SINGLE_NAN_BATCH + 1,
                                                                 SINGLE_NAN_BATCH + 2))
  for x, y in zip(_params(before), _params(nan_step)):  # the update of the NaN batch was skipped
    np.testing.assert_array_equal(x, y)
  assert int(nan_step['opt_state']['notfinite_count']) == 1
  assert int(after['opt_state']['notfinite_count']) == 0  # the next good batch trains again
  assert any(not np.array_equal(x, y) for x, y in zip(_params(nan_step), _params(after)))
  assert int(after['opt_state']['total_notfinite']) == 1
  # Counted in the training summaries as well.
  nonfinite = tiny_demo.scalars(workdir, 'train/nonfinite_steps')
  assert nonfinite[SINGLE_NAN_BATCH + 1] == 1 and nonfinite[SINGLE_NAN_BATCH + 2] == 0


@pytest.mark.slow
def test_nan_streak_stops_with_clear_error_and_finite_checkpoints(stopped_run):
  error, workdir = stopped_run
  stop_step = STREAK_FROM + 2  # the second NaN step in a row
  assert str(error) == (
      f'2 consecutive steps had NaN/Inf gradients (training.max_consecutive_nonfinite=2); stopped at step '
      f'{stop_step}. The last good checkpoint is kept in {workdir}/checkpoints.')
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')) if s.isdigit())
  assert steps[-1] == stop_step - 1  # the stopping step writes no checkpoint
  last_good = _checkpoint(workdir, STREAK_FROM)
  latest = _checkpoint(workdir, steps[-1])
  for x, y in zip(_params(last_good), _params(latest)):  # updates inside the streak were never applied
    np.testing.assert_array_equal(x, y)
    assert np.isfinite(y).all()
