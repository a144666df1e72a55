"""Steady-state train-step throughput of a config on synthetic batches (no tensorflow, no data files).

  python scripts/bench_train.py --config=configs/demo.py --batch_size=32 --frames=80 --target_len=16 [--json]

Compile time is measured separately from the timed steps. Reports examples/s, tokens/s (encoder frames +
target tokens) and MFU against `--peak_tflops` (or the known peak of the device).
"""
import json
import time

from absl import app, flags
import jax
import numpy as np
from ml_collections import config_flags

from slt_jax import host_malloc
from slt_jax.models import contract, lora
from slt_jax.train import flops as flops_lib
from slt_jax.train import optim
from slt_jax.train import sharding as sharding_lib
from slt_jax.train import state as state_lib
from slt_jax.train import step as step_lib

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/demo.py', 'Config file.')
_BATCH = flags.DEFINE_integer('batch_size', None, 'Global batch size (default: the config\'s).')
_FRAMES = flags.DEFINE_integer('frames', 96, 'Pose frames per example.')
_TARGET = flags.DEFINE_integer('target_len', 24, 'Target tokens per example.')
_KEYPOINTS = flags.DEFINE_integer('keypoints', 50, 'Keypoints per frame (50 = the hands_body preset).')
_COORDS = flags.DEFINE_integer('coords', 3, 'Channels per keypoint.')
_VOCAB = flags.DEFINE_integer('vocab_size', 0, 'Vocabulary size (0: the pretrained model\'s or 2000).')
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed steps after compilation.')
_PEAK = flags.DEFINE_float('peak_tflops', 0.0, 'Device peak TFLOP/s for MFU (0: known GPUs, else no MFU).')
_JSON = flags.DEFINE_bool('json', False, 'Print one JSON object as the last line.')


def synthetic_batch(batch_size, frames, keypoints, coords, target_len, vocab_size, seed=0):
  """A random contract.Batch: f32[B, T, K, C] poses, ~10% padding frames and tokens, no filler rows."""
  rng = np.random.RandomState(seed)
  lengths = rng.randint(int(frames * 0.8), frames + 1, batch_size)
  tlen = rng.randint(int(target_len * 0.8), target_len + 1, batch_size)
  batch = contract.zeros(batch_size, frames, keypoints, coords, target_len)
  batch['poses'][:] = rng.randn(batch_size, frames, keypoints, coords)
  batch['pose_mask'][:] = np.arange(frames)[None] < lengths[:, None]
  batch['labels'][:] = rng.randint(4, vocab_size, (batch_size, target_len))
  batch['label_mask'][:] = np.arange(target_len)[None] < tlen[:, None]
  batch['example_mask'][:] = True
  batch['index'][:] = np.arange(batch_size)
  return batch


def main(argv):
  del argv
  config = _CONFIG.value
  host_malloc.configure(config.training.host_malloc)  # as slt_jax.main, before JAX starts
  batch_size = _BATCH.value or config.training.batch_size
  vocab = _VOCAB.value or int(config.model.arch.get('vocab_size', 0) or 2000)
  pose_dim = _KEYPOINTS.value * _COORDS.value
  mesh = sharding_lib.make_mesh(config.mesh)
  tx = optim.make_optimizer(config, 1000)
  graphdef, state, rest, shardings = state_lib.from_config(config, tx, mesh, vocab, pose_dim)
  host_batch = synthetic_batch(batch_size, _FRAMES.value, _KEYPOINTS.value, _COORDS.value, _TARGET.value, vocab)
  # The trainer's jitted step (step.TrainStep: its padding-free counts, shardings, donation), compiled ahead.
  train = step_lib.TrainStep(config, graphdef, tx, shardings, rest, mesh)
  batch = sharding_lib.global_batch(host_batch, sharding_lib.batch_sharding(mesh, sharding_lib.logical_rules(config)))

  t0 = time.perf_counter()
  compiled = train.jitted(train.counts(host_batch)).lower(state, batch).compile()  # takes (state, rest, batch)
  compile_s = time.perf_counter() - t0
  state, metrics = compiled(state, rest, batch)  # warm-up
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(_STEPS.value):
    state, metrics = compiled(state, rest, batch)
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - t0) / _STEPS.value

  step_flops = flops_lib.train_step_flops(graphdef, state.params, rest, batch)
  memory = jax.devices()[0].memory_stats() or {}  # None on CPU
  peak = flops_lib.device_peak_flops(jax.devices()[0], _PEAK.value)
  real_tokens = float(host_batch['pose_mask'].sum() + host_batch['label_mask'].sum())
  result = {
      'config': _CONFIG.value.model.family, 'device': jax.devices()[0].device_kind,
      'num_devices': jax.device_count(), 'batch_size': batch_size, 'frames': _FRAMES.value,
      'target_len': _TARGET.value, 'compile_s': round(compile_s, 2), 'step_s': seconds,
      'examples_per_s': batch_size / seconds, 'tokens_per_s': real_tokens / seconds,
      'tflops_per_s': step_flops / seconds / 1e12,
      'mfu': (step_flops / seconds / (peak * jax.device_count())) if peak else None,
      'loss': float(metrics['loss']),
      'trainable_params': lora.count_weights(state.params),
      'peak_memory_gib': memory.get('peak_bytes_in_use', 0) / 2**30 or None,
  }
  for k, v in result.items():
    print(f'{k:>16}: {v}')
  if _JSON.value:
    print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
