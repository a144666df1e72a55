"""Steady-state train-step throughput of a config on synthetic batches (no tensorflow, no data files).

  python scripts/bench_train.py --config=configs/demo.py --batch_size=32 --frames=80 --target_len=16 [--json]

Compile time is measured separately from the timed steps. Reports examples/s, tokens/s (encoder frames +
target tokens) and MFU against `--peak_tflops` (or the known peak of the device).

--lengths_from=WORKDIR: the batches' frame and target lengths are those of a run's training split instead
(WORKDIR/cache/train-*/meta.json and WORKDIR/tokenizer, e.g. a demo run), batched as the input pipeline does:
within pools of 8 batches sorted by frame count, each batch padded to its data.bucket_boundaries rung, labels
to data.max_target_length. --num_batches of them are compiled (each distinct shape and padding-free count
once) and the timed steps cycle over them; `first_loss` is the untrained model's loss on the first batch.
  python scripts/bench_train.py --config=configs/demo_causal.py --lengths_from=runs/demo --num_batches=8 \
    --config.model.padding_free=0      # the padded step; 16 (or any multiple): padding-free
"""
import json
import os
import time

from absl import app, flags
import jax
import numpy as np
from ml_collections import config_flags

from slt_jax import compile_cache
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
_LENGTHS_FROM = flags.DEFINE_string('lengths_from', '', "A run's WORKDIR: its training split's frame and target "
                                    'lengths (see the docstring) instead of --frames / --target_len.')
_NUM_BATCHES = flags.DEFINE_integer('num_batches', 8, 'With --lengths_from: distinct batches the steps cycle over.')
_COMPILE_CACHE = flags.DEFINE_string('compile_cache_dir', '', "The persistent compilation cache, as "
                                     "training.compile_cache_dir ('' off: compile_s is then the compile time; a "
                                     "folder a first run filled: compile_s is reading the programs back).")


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


def run_lengths(workdir: str):
  """(frame counts i32[N], target lengths i32[N] with EOS) of the training split of the run in `workdir`."""
  import glob  # pylint: disable=g-import-not-at-top
  from slt_jax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top  (no tensorflow)
  metas = sorted(glob.glob(os.path.join(workdir, 'cache', 'train-*', 'meta.json')))
  if not metas:
    raise FileNotFoundError(f'--lengths_from={workdir}: no cache/train-*/meta.json there (a run writes it)')
  with open(metas[0]) as f:
    meta = json.load(f)
  tok = tokenizer_lib.load_tokenizer(os.path.join(workdir, 'tokenizer'))
  targets = [len(tok.encode(row['text'])) + 1 for row in meta['rows']]
  return np.asarray(meta['lengths'], np.int32), np.asarray(targets, np.int32)


def pipeline_batches(frames, targets, config, batch_size, num_batches, vocab_size, keypoints, coords, seed=0):
  """Batches of the lengths `frames`/`targets` as the input pipeline cuts them (pipeline._BatchPlan without
  augmentation): a permutation, sorted by frame count within pools of 8 batches, each batch's frame axis
  padded to the bucket boundary of its longest example, labels to data.max_target_length."""
  rng = np.random.default_rng(seed)
  bounds = np.asarray(config.data.bucket_boundaries or [config.data.max_frames])
  max_len = int(config.data.max_target_length)
  order = rng.permutation(len(frames))[:8 * batch_size * -(-num_batches // 8)]
  pools = [p[np.argsort(frames[p], kind='stable')] for p in np.split(order, len(order) // (8 * batch_size))]
  rows = np.concatenate(pools).reshape(-1, batch_size)[rng.permutation(len(order) // batch_size)][:num_batches]
  out = []
  for r in rows:
    n = np.minimum(frames[r], bounds[-1])
    t = int(bounds[min(np.searchsorted(bounds, n.max()), len(bounds) - 1)])
    batch = synthetic_batch(batch_size, t, keypoints, coords, max_len, vocab_size, seed=len(out))
    batch['pose_mask'][:] = np.arange(t)[None] < n[:, None]
    batch['label_mask'][:] = np.arange(max_len)[None] < np.minimum(targets[r], max_len)[:, None]
    out.append(batch)
  return out


def main(argv):
  del argv
  config = _CONFIG.value
  host_malloc.configure(config.training.host_malloc)  # as slt_jax.main, before JAX starts
  compile_cache.configure(_COMPILE_CACHE.value)
  batch_size = _BATCH.value or config.training.batch_size
  vocab = _VOCAB.value or int(config.model.arch.get('vocab_size', 0) or 2000)
  pose_dim = _KEYPOINTS.value * _COORDS.value
  mesh = sharding_lib.make_mesh(config.mesh)
  tx = optim.make_optimizer(config, 1000)
  graphdef, state, rest, shardings = state_lib.from_config(config, tx, mesh, vocab, pose_dim)
  if _LENGTHS_FROM.value:
    host_batches = pipeline_batches(*run_lengths(_LENGTHS_FROM.value), config, batch_size, _NUM_BATCHES.value,
                                    vocab, _KEYPOINTS.value, _COORDS.value)
  else:
    host_batches = [synthetic_batch(batch_size, _FRAMES.value, _KEYPOINTS.value, _COORDS.value, _TARGET.value,
                                    vocab)]
  # The trainer's jitted step (step.TrainStep: its padding-free counts, shardings, donation), compiled ahead.
  train = step_lib.TrainStep(config, graphdef, tx, shardings, rest, mesh)
  batch_sharding = sharding_lib.batch_sharding(mesh, sharding_lib.logical_rules(config))
  batches = [sharding_lib.global_batch(b, batch_sharding) for b in host_batches]

  t0 = time.perf_counter()
  compiled, steps = {}, []  # (shapes, counts) -> executable taking (state, rest, batch); each batch's key
  for host_batch, batch in zip(host_batches, batches):
    counts = train.counts(host_batch)
    key = (host_batch['poses'].shape, host_batch['labels'].shape, counts)
    if key not in compiled:
      compiled[key] = train.jitted(counts).lower(state, batch).compile()
    steps.append(compiled[key])
  compile_s = time.perf_counter() - t0
  first_loss = None
  for fn, batch in zip(steps, batches):  # warm-up: every executable runs once
    state, metrics = fn(state, rest, batch)
    first_loss = float(metrics['loss']) if first_loss is None else first_loss
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for i in range(_STEPS.value):
    state, metrics = steps[i % len(steps)](state, rest, batches[i % len(steps)])
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - t0) / _STEPS.value
  host_batch, batch = host_batches[0], batches[0]

  step_flops = flops_lib.train_step_flops(graphdef, state.params, rest, batch)
  memory = jax.devices()[0].memory_stats() or {}  # None on CPU
  peak = flops_lib.device_peak_flops(jax.devices()[0], _PEAK.value)
  real_tokens = float(np.mean([b['pose_mask'].sum() + b['label_mask'].sum() for b in host_batches]))
  result = {
      'config': _CONFIG.value.model.family, 'device': jax.devices()[0].device_kind,
      'num_devices': jax.device_count(), 'batch_size': batch_size, 'frames': _FRAMES.value,
      'target_len': _TARGET.value, 'compile_s': round(compile_s, 2), 'step_s': seconds,
      'examples_per_s': batch_size / seconds, 'tokens_per_s': real_tokens / seconds,
      'tflops_per_s': step_flops / seconds / 1e12,
      'mfu': (step_flops / seconds / (peak * jax.device_count())) if peak else None,
      'loss': float(metrics['loss']), 'first_loss': first_loss, 'compiled_steps': len(compiled),
      'trainable_params': lora.count_weights(state.params),
      'peak_memory_gib': memory.get('peak_bytes_in_use', 0) / 2**30 or None,
  }
  if _COMPILE_CACHE.value:
    result['compile_cache'] = compile_cache.stats()  # {'hits': programs read back, 'written': compiled and written}
  for k, v in result.items():
    print(f'{k:>16}: {v}')
  if _JSON.value:
    print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
