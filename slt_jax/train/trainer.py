"""train_and_evaluate and evaluate: the training loop, top to bottom.

  data -> tokenizer -> model + sharded TrainState -> resume -> loop (step, log, eval + best, checkpoint,
  preemption) -> final evaluation of the best checkpoint on the test split.
"""
from concurrent import futures
import dataclasses
import functools
import itertools
import json
import math
import os
import signal
import time
from typing import Any

import jax
import numpy as np
from absl import logging
from clu import metric_writers
from jax.experimental import multihost_utils

from slt_jax import default_config
from slt_jax import evaluate as evaluate_lib
from slt_jax import inference
from slt_jax import run_config
from slt_jax.data import inputs as inputs_lib
from slt_jax.models import lora
from slt_jax.train import checkpoint as checkpoint_lib
from slt_jax.train import flops as flops_lib
from slt_jax.train import init_from as init_from_lib
from slt_jax.train import optim
from slt_jax.train import sharding as sharding_lib
from slt_jax.train import state as state_lib
from slt_jax.train import step as step_lib
from slt_jax.train import visuals

# Exit status of a run stopped by SIGTERM/SIGINT after writing its checkpoint (EX_TEMPFAIL: "try again").
PREEMPTED_EXIT_CODE = 75


class NonFiniteLossError(RuntimeError):
  """Too many consecutive updates with NaN/Inf gradients."""


@dataclasses.dataclass
class Run:
  """Everything a mode needs: data, tokenizer, the model as (graphdef, rest) and the sharded state."""
  config: Any
  workdir: str
  tokenizer: Any                      # slt_jax.data.tokenizer.Tokenizer
  splits: dict                        # {'train' | 'val' | 'test': pipeline.SplitData}
  mesh: jax.sharding.Mesh
  graphdef: Any
  rest: Any
  state: step_lib.TrainState
  state_shardings: Any
  tx: Any
  num_train_steps: int


# ------------------------------------------------------------------------------------------------------------
# Setup.
# ------------------------------------------------------------------------------------------------------------
def _num_train_steps(config, num_train_examples: int) -> int:
  t = config.training
  if t.num_train_steps > 0:
    return int(t.num_train_steps)
  return int(t.num_epochs * math.ceil(num_train_examples / t.batch_size))


def setup(config, workdir: str, splits=None) -> Run:
  """Builds data (`splits`; None: every split), the model and a sharded TrainState (fresh; restore separately).

  Inference without data: slt_jax/inference.py.
  """
  # Checks that need the devices, before reading data / loading weights / compiling.
  default_config.validate_devices(config, jax.device_count(), jax.process_count())
  sharding_lib.logical_rules(config)  # config.sharding.logical_rules checked before any work
  # Multi-host: process 0 prepares the shared workdir (demo corpus, tokenizer, caches) before the others read it.
  if jax.process_index() > 0:
    multihost_utils.sync_global_devices('slt_jax:inputs')
  tokenizer, datasets = inputs_lib.make_inputs(config, workdir, splits)
  if jax.process_count() > 1 and jax.process_index() == 0:
    multihost_utils.sync_global_devices('slt_jax:inputs')
  pose_dim = int(np.prod(next(iter(datasets.values())).pose_shape))
  num_steps = _num_train_steps(config, datasets['train'].num_examples) if 'train' in datasets else 0
  model = state_lib.build(config, workdir, tokenizer, pose_dim, num_steps)
  return Run(config, workdir, tokenizer, datasets, model.mesh, model.graphdef, model.rest, model.state,
             model.state_shardings, model.tx, num_steps)


def _device_batch(batch: dict, sharding) -> dict:
  """Host-local numpy batch -> global jax.Arrays split over the batch axes of the mesh."""
  return sharding_lib.global_batch(batch, sharding, keys=inputs_lib.DEVICE_KEYS)


# ------------------------------------------------------------------------------------------------------------
# Evaluation: decode a split, score it, write predictions and metrics.
# ------------------------------------------------------------------------------------------------------------
def decode_split(run: Run, split: str, params, decode_fn=None) -> tuple[list[str], list[str], list[str]]:
  """(uids, references, hypotheses) of a split, in row order."""
  decode_fn = decode_fn or inference.make_decode_fn(run.graphdef, run.config.decode, run.config.training.seed)
  batch_sharding = sharding_lib.batch_sharding(run.mesh, sharding_lib.logical_rules(run.config))
  rows = run.splits[split].rows
  hyps = {}
  for batch in run.splits[split].iterator():
    device_batch = _device_batch(batch, batch_sharding)
    ids = decode_fn(params, run.rest, device_batch['poses'], device_batch['pose_mask'], device_batch.get('corpus'))
    if jax.process_count() > 1:
      ids = multihost_utils.process_allgather(ids, tiled=True)
      index = multihost_utils.process_allgather(device_batch['index'], tiled=True)
      keep = multihost_utils.process_allgather(device_batch['example_mask'], tiled=True)
    else:
      ids, index, keep = (np.asarray(jax.device_get(x)) for x in
                          (ids, device_batch['index'], device_batch['example_mask']))
    for row_ids, i, k in zip(np.asarray(ids), np.asarray(index), np.asarray(keep)):
      if k:
        hyps[int(i)] = run.tokenizer.decode(row_ids.tolist())
  order = sorted(hyps)
  return ([rows[i].uid for i in order], [rows[i].text for i in order], [hyps[i] for i in order])


def evaluate_split(run: Run, split: str, params, step: int, writer=None, decode_fn=None) -> dict:
  uids, refs, hyps = decode_split(run, split, params, decode_fn)
  metrics = evaluate_lib.score_with_config(hyps, refs, run.config.evaluation)
  metrics['step'] = int(step)
  corpora = run.splits[split].corpora  # data.mixture: each corpus's rows scored on their own too
  if corpora:
    assert len(hyps) == len(run.splits[split].rows), 'decode_split decodes every row, in row order'
    metrics['corpora'] = {name: evaluate_lib.score_with_config(hyps[lo:hi], refs[lo:hi], run.config.evaluation)
                          for name, (lo, hi) in corpora.items()}
  if jax.process_index() == 0:
    evaluate_lib.write_predictions(os.path.join(run.workdir, f'predictions_{split}.tsv'), uids, refs, hyps)
    evaluate_lib.update_metrics_json(run.workdir, split, metrics)
    logging.info('[%s @ step %d] BLEU %.2f  chrF %.2f  ROUGE-L %.2f  (%d examples)  %s', split, step,
                 metrics['bleu'], metrics['chrf'], metrics['rougeL'], len(hyps), metrics['bleu_signature'])
    for name, m in metrics.get('corpora', {}).items():
      logging.info('[%s/%s @ step %d] BLEU %.2f  chrF %.2f  ROUGE-L %.2f  (%d examples)', split, name, step,
                   m['bleu'], m['chrf'], m['rougeL'], m['num_examples'])
    if writer is not None:
      writer.write_scalars(step, {f'{split}/{k}': v for k, v in metrics.items() if isinstance(v, float)})
      for name, m in metrics.get('corpora', {}).items():
        writer.write_scalars(step, {f'{split}/{name}/{k}': v for k, v in m.items() if isinstance(v, float)})
      writer.write_texts(step, {f'{split}/examples': evaluate_lib.examples_markdown(uids, refs, hyps)})
      visuals.write_eval_poses(writer, run, split, step, uids, refs, hyps)  # <split>/poses: what the model sees
  return metrics


# ------------------------------------------------------------------------------------------------------------
# Preemption: SIGTERM / SIGINT ask the loop to checkpoint and leave at the end of the current step.
# ------------------------------------------------------------------------------------------------------------
class _StopRequest:
  def __init__(self):
    self.signal = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    logging.warning('Received %s: finishing this step, then writing a checkpoint.', signal.Signals(signum).name)
    self.signal = signum

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def requested(self, step: int) -> bool:
    local = self.signal is not None
    if jax.process_count() > 1:
      # On multi-host, hosts agree on the step (JAX's preemption sync point) so they checkpoint together.
      return multihost_utils.reached_preemption_sync_point(step) or bool(
          multihost_utils.process_allgather(np.array(local)).any())
    return local


def _batch_counts(batch) -> dict:
  """Real examples, target tokens and frames of a host batch (for throughput; padding excluded)."""
  return {'examples': int(np.sum(batch['example_mask'])), 'tokens': int(np.sum(batch['label_mask'])),
          'frames': int(np.sum(batch['pose_mask'])), 'frame_slots': int(np.size(batch['pose_mask'])),
          'shape': batch['poses'].shape}


def _compile_in_background(train_fn: step_lib.TrainStep, state, device_batch, counts) -> futures.Future:
  """Compiles (or reads from the persistent compilation cache) the train step of the first batch in a thread.

  XLA releases the GIL while it compiles or deserialises, so that work overlaps what the trainer still does
  before its first step (hparams, data plots). jit's own caches then serve the first call: nothing is compiled
  twice.
  """
  pool = futures.ThreadPoolExecutor(1, thread_name_prefix='compile_first_step')
  compiled = pool.submit(lambda: train_fn.jitted(counts).lower(state, device_batch).compile())
  pool.shutdown(wait=False)  # (the submitted compilation still runs to the end)
  return compiled


# ------------------------------------------------------------------------------------------------------------
# The loop.
# ------------------------------------------------------------------------------------------------------------
def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (resuming from WORKDIR/checkpoints when there are any), then evaluates the best checkpoint."""
  t = config.training
  run = setup(config, workdir)
  is_main = jax.process_index() == 0
  if is_main:
    write_json(os.path.join(workdir, 'config.json'), json.loads(config.to_json_best_effort()))
  writer = metric_writers.create_default_writer(os.path.join(workdir, 'tensorboard'), just_logging=not is_main)
  if t.use_wandb and is_main:  # W&B next to TensorBoard; wandb is an optional dependency, imported only here.
    from slt_jax.train import wandb_writer  # pylint: disable=g-import-not-at-top
    writer = metric_writers.MultiWriter([writer, wandb_writer.create(config, workdir)])
  ckpt = checkpoint_lib.Checkpoints(workdir, keep=t.keep_checkpoints, best_metric=t.best_metric)

  state = run.state
  restored = ckpt.restore_latest(state)
  if restored is not None:
    state, meta = restored
    logging.info('Resuming from step %d.', int(meta['step']))
  else:  # a fresh run: the trained parameters from training.init_from (a resumed one has its own)
    state, _ = init_from_lib.load(config, workdir, state, run.rest, into='params')
  start_step = int(jax.device_get(state.step))
  num_steps = run.num_train_steps
  logging.info('Training %d steps (batch %d, %d training examples, %d parameters).', num_steps, t.batch_size,
               run.splits['train'].num_examples, lora.count_weights(state.params))

  # The jitted step (one compilation per padding-free TokenCounts), the same one check and the benchmarks run.
  train_fn = step_lib.TrainStep(config, run.graphdef, run.tx, run.state_shardings, run.rest, run.mesh)
  decode_fn = inference.make_decode_fn(run.graphdef, run.config.decode, t.seed)
  batch_sharding = sharding_lib.batch_sharding(run.mesh, sharding_lib.logical_rules(config))
  lr_schedule = optim.learning_rate_schedule(config, num_steps)

  # (host batch, device batch, its padding-free TokenCounts (None: padded), computed once per batch)
  train_iter = ((batch, device_batch, train_fn.counts(batch)) for batch, device_batch in
                sharding_lib.prefetch_to_device(run.splits['train'].iterator(start_step=start_step),
                                                config.data.prefetch_to_device,
                                                functools.partial(_device_batch, sharding=batch_sharding)))
  first_compile = None
  if start_step < num_steps:
    first = next(train_iter)
    train_iter = itertools.chain([first], train_iter)
    first_compile = _compile_in_background(train_fn, state, *first[1:])
  if is_main:
    writer.write_hparams({k: v for k, v in config.training.items() if isinstance(v, (int, float, str, bool))})
    visuals.write_data_plots(writer, run, start_step)  # data/*: lengths + buckets, detection rates, skipped rows
  if first_compile is not None:
    first_compile.result()  # (raises what the compilation raised)
  meta = lambda step: {'step': step, 'data_position': step}  # batches are a function of the step (exact resume).
  last_log_time, last_log_step, pending = time.time(), start_step, []
  val_metrics = {}  # step -> validation metrics of this process's evaluations
  # (poses shape, labels shape, padding-free counts) -> FLOPs one train step executes per device (3 x forward,
  # MaxText's count, on the token rows when padding-free); each key is one compiled train step.
  step_flops = {}
  peak_flops = flops_lib.device_peak_flops(jax.devices()[0], t.peak_tflops)
  step = start_step
  with _StopRequest() as stop:
    while step < num_steps:
      batch, device_batch, token_counts = next(train_iter)
      state, metrics = train_fn.jitted(token_counts)(state, device_batch)
      step += 1
      step_key = (batch['poses'].shape, batch['labels'].shape, token_counts)
      pending.append((metrics, {**_batch_counts(batch), 'step_key': step_key}))
      if is_main and step_key not in step_flops:  # once per compiled step: one trace, no compile
        step_flops[step_key] = flops_lib.train_step_flops(
            run.graphdef, state.params, run.rest, batch, step_key[2], t.gradient_accumulation_steps
        ) * jax.process_count() / jax.device_count()

      if step % t.log_every_steps == 0 or step == num_steps:
        fetched = jax.device_get([m for m, _ in pending])
        counts = {k: sum(c[k] for _, c in pending) for k in ('examples', 'tokens', 'frames')}
        flops = sum(step_flops.get(c['step_key'], 0.0) for _, c in pending)
        elapsed = time.time() - last_log_time
        # Longest run of skipped (NaN/Inf) updates seen in this window: a streak that ended before the log
        # step still counts. The optimizer never applies such an update, so every checkpoint stays finite.
        nonfinite = max(int(m['nonfinite_count']) for m in fetched)
        skipped = sum(int(m['nonfinite_count']) > 0 for m in fetched)
        summary = {
            'train/loss': float(np.mean([m['loss'] for m in fetched if np.isfinite(m['loss'])] or [np.nan])),
            'train/learning_rate': float(lr_schedule(step - 1)),
            'train/grad_norm': float(np.mean([m['grad_norm'] for m in fetched])),
            'train/examples_per_second': counts['examples'] / elapsed,
            'train/tokens_per_second': counts['tokens'] / elapsed,   # real (non-padding) target tokens
            'train/frames_per_second': counts['frames'] / elapsed,   # real (non-padding) pose frames
            'train/padding_fraction': 1.0 - sum(c['frames'] for _, c in pending) / max(
                sum(c['frame_slots'] for _, c in pending), 1),
            'train/nonfinite_steps': float(skipped),
        }
        if peak_flops and flops:
          summary['train/mfu'] = flops / elapsed / peak_flops
        writer.write_scalars(step, summary)
        eta = (num_steps - step) * elapsed / max(step - last_log_step, 1)
        logging.info('step %d/%d  loss %.4f  lr %.2e  %.1f examples/s  %.0f tokens/s  %.0f frames/s%s  ETA %s',
                     step, num_steps, summary['train/loss'], summary['train/learning_rate'],
                     summary['train/examples_per_second'], summary['train/tokens_per_second'],
                     summary['train/frames_per_second'],
                     f"  MFU {100 * summary['train/mfu']:.1f}%" if 'train/mfu' in summary else '',
                     time.strftime('%H:%M:%S', time.gmtime(eta)))
        if skipped:
          logging.warning('step %d: skipped %d update(s) with NaN/Inf gradients since the last log line.', step,
                          skipped)
        last_log_time, last_log_step, pending = time.time(), step, []
        if nonfinite >= t.max_consecutive_nonfinite:
          ckpt.wait()
          raise NonFiniteLossError(
              f'{nonfinite} consecutive steps had NaN/Inf gradients (training.max_consecutive_nonfinite='
              f'{t.max_consecutive_nonfinite}); stopped at step {step}. The last good checkpoint is kept in '
              f'{workdir}/checkpoints.')

      if (step % t.eval_every_steps == 0 or step == num_steps) and is_main:
        logging.info('%d distinct train steps compiled so far (batch shape x padding-free counts).',
                     len(step_flops))
      if (step % t.eval_every_steps == 0 or step == num_steps) and 'val' in run.splits:
        val_metrics[step] = evaluate_split(run, 'val', state.params, step, writer, decode_fn)
        ckpt.save_best(step, state, meta(step), {t.best_metric: val_metrics[step][t.best_metric]})
      if step % t.checkpoint_every_steps == 0 or step == num_steps:
        ckpt.save(step, state, meta(step))

      if stop.requested(step) and step < num_steps:
        ckpt.save(step, state, meta(step), force=True)
        ckpt.wait()
        writer.close()  # (ends the W&B run too)
        logging.warning('Stopped at step %d on request; checkpoint written to %s/checkpoints. Rerun the same '
                        'command to resume.', step, workdir)
        raise SystemExit(PREEMPTED_EXIT_CODE)
  ckpt.wait()

  # Final evaluation: the best checkpoint (by validation metric) on the test and validation splits.
  restored = ckpt.restore_best(state)
  best_state, best_meta = restored if restored is not None else (state, meta(step))
  best_step, results = int(best_meta['step']), {}
  for split in ('val', 'test'):
    if split == 'val' and best_step == max(val_metrics, default=None):
      results[split] = val_metrics[best_step]  # the files of the last evaluation are the best checkpoint's
    elif split in run.splits:
      results[split] = evaluate_split(run, split, best_state.params, best_step, writer, decode_fn)
  writer.close()  # (ends the W&B run too)
  ckpt.close()
  return results


def evaluate(config, workdir: str, split: str = 'test', step: int | None = None) -> dict:
  """Evaluates the best checkpoint (or `step`) of WORKDIR on `split`, with the model and preprocessing of the run
  (WORKDIR/config.json; a --config that differs there is a ConfigError)."""
  config = run_config.for_inference(config, workdir)
  run = setup(config, workdir, splits=[split])
  state, restored_step = inference.restore_checkpoint(config, workdir, run.state, step)
  return evaluate_split(run, split, state.params, restored_step)


def write_json(path: str, content: dict) -> None:
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(content, f, indent=2, sort_keys=True)
