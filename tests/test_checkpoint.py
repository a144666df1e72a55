"""Orbax checkpoints: save -> restore gives identical parameters; a corrupt latest falls back; mismatch errors."""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from slt_jax import default_config
from slt_jax.train import checkpoint as checkpoint_lib
from slt_jax.train import optim
from slt_jax.train import step as step_lib


def _state(width=8, seed=0, use_bias=True, dtype=jnp.float32):
  model = nnx.Sequential(nnx.Linear(4, width, use_bias=use_bias, param_dtype=dtype, rngs=nnx.Rngs(seed)),
                         nnx.Linear(width, 3, param_dtype=dtype, rngs=nnx.Rngs(seed + 1)))
  _, params, _ = nnx.split(model, nnx.Param, ...)
  tx = optim.make_optimizer(default_config.get_config(), 10)
  return step_lib.TrainState(step=jnp.array(seed, jnp.int32), params=params, opt_state=optim.init_state(tx, params),
                             rng=jax.random.PRNGKey(seed))


def _assert_same(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_save_restore_identical(tmp_path):
  ckpt = checkpoint_lib.Checkpoints(str(tmp_path), keep=2)
  saved = _state(seed=3)
  ckpt.save(5, saved, {'step': 5, 'data_position': 5})
  ckpt.wait()
  restored, meta = ckpt.restore_latest(_state(seed=0))
  _assert_same(saved, restored)
  assert meta['step'] == 5
  ckpt.close()


def test_keep_n_and_best(tmp_path):
  ckpt = checkpoint_lib.Checkpoints(str(tmp_path), keep=2, best_metric='bleu')
  for step, bleu in [(1, 10.0), (2, 30.0), (3, 20.0)]:
    s = _state(seed=step)
    ckpt.save(step, s, {'step': step})
    ckpt.save_best(step, s, {'step': step}, {'bleu': bleu})
  ckpt.wait()
  assert ckpt.latest.all_steps() == [2, 3]
  best, meta = ckpt.restore_best(_state())
  assert meta['step'] == 2
  _assert_same(best, _state(seed=2))
  ckpt.close()


def test_corrupt_latest_falls_back_to_previous(tmp_path):
  ckpt = checkpoint_lib.Checkpoints(str(tmp_path), keep=3)
  ckpt.save(1, _state(seed=1), {'step': 1})
  ckpt.save(2, _state(seed=2), {'step': 2})
  ckpt.wait()
  ckpt.close()
  # Truncate every data file of the latest step, as a kill during a non-atomic copy would.
  latest = tmp_path / 'checkpoints' / '2' / 'state'
  for root, _, files in os.walk(latest):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'r+b') as f:
        f.truncate(max(os.path.getsize(path) // 3, 1))
  ckpt = checkpoint_lib.Checkpoints(str(tmp_path), keep=3)
  restored, meta = ckpt.restore_latest(_state())
  assert meta['step'] == 1
  _assert_same(restored, _state(seed=1))
  ckpt.close()


@pytest.mark.parametrize('model, first_leaf', [
    (dict(width=16), r'params/layers/0/bias/value is float32\[8\] in the checkpoint but float32\[16\] in the model'),
    (dict(use_bias=False), r'params/layers/0/bias/value \(float32\[8\]\) is in the checkpoint but not in the model'),
    (dict(dtype=jnp.bfloat16), r'params/layers/0/bias/value is float32\[8\] in the checkpoint but bfloat16\[8\]'),
], ids=['wider', 'other_leaves', 'other_dtype'])
def test_checkpoint_of_another_model_is_an_error(tmp_path, model, first_leaf):
  """Another width, leaf set or dtype: an error naming the first differing leaf and the checkpoint, never a
  fallback to an older step or a fresh start (orbax alone would cast another dtype silently)."""
  ckpt = checkpoint_lib.Checkpoints(str(tmp_path), keep=3)
  ckpt.save(1, _state(**model), {'step': 1})  # an older step of the new model does not make the newer one skip
  ckpt.save(2, _state(width=8), {'step': 2})
  ckpt.wait()
  ckpt.close()
  ckpt = checkpoint_lib.Checkpoints(str(tmp_path), keep=3)  # a fresh manager, as a rerun has
  directory = os.path.join(tmp_path, 'checkpoints', '2')
  for restore in (ckpt.restore_latest, ckpt.restore_best):
    with pytest.raises(checkpoint_lib.CheckpointMismatchError) as error:
      restore(_state(**model))
    message = str(error.value)
    assert re.search(first_leaf, message), message
    assert f'checkpoint {directory} does not match the model' in message and 'fresh --workdir' in message
  ckpt.close()
