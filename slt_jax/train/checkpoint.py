"""Orbax checkpoints: the latest N for resuming, and the best one by a validation metric.

Layout under WORKDIR:
  checkpoints/<step>/{state,meta}   latest `keep` steps (async writes; atomic renames, so a write killed half way
                                    never becomes a step directory)
  best/<step>/{state,meta}          the single best step by `best_metric` (T5X's SaveBestCheckpointer idea)
`state` is the TrainState pytree; `meta` is JSON (step, data position, metrics). Restoring always goes against
an abstract target (shapes, dtypes, shardings), so a checkpoint restores onto any mesh. A latest checkpoint that
cannot be read (truncated, corrupt) is skipped with a warning in favour of the one before it; a checkpoint whose
leaves (paths, shapes, dtypes) differ from the target's is another model's: CheckpointMismatchError, never a
silent restart from step 0.
"""
import contextlib
import os
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import flags
from absl import logging


class CheckpointMismatchError(ValueError):
  """A checkpoint whose tree or shapes do not match the model being restored."""


class CheckpointSaveError(OSError):
  """Writing a checkpoint failed (disk full, quota, permissions); the checkpoints before it are intact."""


def _use_distributed_barriers() -> None:
  """Multi-process runs: make orbax synchronise processes through the jax.distributed key-value store.

  Orbax's default barrier is a device collective (multihost_utils.sync_global_devices). Its async-save thread
  calls it while the main thread runs the train step's, the batch assembly's or decoding's collectives, so
  two processes can enter the collectives in different orders and deadlock (seen as a SIGABRT inside
  wait_until_finished). Orbax's distributed-client barrier is safe from background threads.
  """
  if jax.process_count() > 1:
    if not flags.FLAGS.is_parsed():  # used as a library, without absl.app
      flags.FLAGS.mark_as_parsed()
    flags.FLAGS.experimental_orbax_use_distributed_barrier = True


def _manager(directory, max_to_keep, best_metric=None, async_save=True, read_only=False):
  # read_only: another run's checkpoints (training.init_from), which may still be training: nothing is created,
  # cleaned up or deleted there.
  options = ocp.CheckpointManagerOptions(
      max_to_keep=None if read_only else max_to_keep,
      best_fn=(lambda m: float(m[best_metric])) if best_metric else None,
      best_mode='max',
      keep_checkpoints_without_metrics=not best_metric,
      cleanup_tmp_directories=not read_only,
      enable_async_checkpointing=async_save and not read_only,
      read_only=read_only, create=not read_only, save_interval_steps=0 if read_only else 1,
  )
  # Handlers named up front (not registered lazily by the first save / restore): a fresh manager, as on
  # resuming, can then read a step's tree metadata before restoring it.
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_handlers={'state': ocp.StandardCheckpointHandler(),
                                              'meta': ocp.JsonCheckpointHandler()})


def _abstract(tree):
  """ShapeDtypeStructs (with shardings) of a pytree of arrays."""
  def one(x):
    sharding = getattr(x, 'sharding', None)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  return jax.tree.map(one, tree)


class Checkpoints:
  """The latest-N and best-by-metric checkpoint managers of one workdir."""

  def __init__(self, workdir: str, keep: int = 2, best_metric: str = 'bleu', async_save: bool = True,
               read_only: bool = False):
    self.best_metric = best_metric
    _use_distributed_barriers()
    if jax.process_count() > 1 and jax.default_backend() == 'cpu':
      # Several CPU processes (gloo collectives): orbax's save thread still runs device collectives beside the
      # main thread's, which deadlocked about one run in two; writing in the main thread keeps one order.
      async_save = False
    self.latest = _manager(os.path.join(workdir, 'checkpoints'), keep, async_save=async_save, read_only=read_only)
    self.best = _manager(os.path.join(workdir, 'best'), 1, best_metric=best_metric, async_save=async_save,
                         read_only=read_only)

  def save(self, step: int, state, meta: dict, force: bool = False) -> None:
    """Starts writing `step` (async); a failed earlier write surfaces here or in `wait` as CheckpointSaveError."""
    with self._reporting(self.latest, step):
      self.latest.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     meta=ocp.args.JsonSave(meta)), force=force)

  def save_best(self, step: int, state, meta: dict, metrics: dict) -> None:
    """Offers `state` to the best manager; orbax keeps it only if `metrics[best_metric]` is the best so far."""
    with self._reporting(self.best, step):
      self.best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   meta=ocp.args.JsonSave(meta)),
                     metrics={k: float(v) for k, v in metrics.items()}, force=True)

  def wait(self) -> None:
    """Blocks until the pending writes are on disk; raises CheckpointSaveError if one failed."""
    for manager in (self.latest, self.best):
      with self._reporting(manager, None):
        manager.wait_until_finished()

  @contextlib.contextmanager
  def _reporting(self, manager, step):
    """Turns a failed (background) write into one clear error. Orbax writes each step into a temporary folder
    and renames it only once complete, so a failed write never replaces or damages an earlier step."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except  (tensorstore reports ENOSPC as ValueError)
      kept = manager.all_steps()
      raise CheckpointSaveError(
          f'writing a checkpoint{"" if step is None else f" (step {step})"} to {manager.directory} failed: '
          f'{type(e).__name__}: {str(e)[:500]}\nThe earlier checkpoints there are intact '
          f'(steps {kept}); free disk space (or fix the permissions / quota) and rerun the same command: it '
          'resumes from the latest intact checkpoint.') from e

  def close(self) -> None:
    self.latest.close()
    self.best.close()

  def restore_latest(self, target) -> tuple[Any, dict] | None:
    """The newest readable checkpoint restored onto `target`'s shapes and shardings, or None if there is none.

    Unreadable steps (e.g. truncated files) are skipped with a warning, newest first; a checkpoint of
    another model (a leaf of another path, shape or dtype) is a CheckpointMismatchError.
    """
    for step in sorted(self.latest.all_steps(), reverse=True):
      try:
        return self._restore(self.latest, step, target)
      except _UnreadableCheckpoint as e:  # (a CheckpointMismatchError is raised: never restart silently)
        logging.warning('Checkpoint at step %d in %s is unreadable (%s); trying the previous one.',
                        step, self.latest.directory, str(e)[:300])
    return None

  def restore_best(self, target, step: int | None = None) -> tuple[Any, dict] | None:
    """The best checkpoint (or the given step, from either manager) restored onto `target`."""
    if step is not None:
      return self._restore(*self.find(step), target)
    best_step = self.best.best_step()
    if best_step is None:
      return self.restore_latest(target)
    return self._restore(self.best, best_step, target)

  def find(self, step: int | None = None) -> tuple[Any, int] | None:
    """(manager, step) of `step` (in either manager; FileNotFoundError if neither has it), or with None of the
    best checkpoint, else the newest latest one; None when there is no checkpoint."""
    if step is not None:
      for manager in (self.best, self.latest):
        if step in manager.all_steps():
          return manager, step
      raise FileNotFoundError(f'no checkpoint at step {step} in {self.best.directory} or {self.latest.directory}')
    if self.best.best_step() is not None:
      return self.best, self.best.best_step()
    latest = self.latest.latest_step()
    return None if latest is None else (self.latest, latest)

  @staticmethod
  def stored_tree(manager, step: int):
    """The TrainState tree of a step as stored: nested dicts of orbax ArrayMetadata (shape, dtype), nothing read."""
    try:
      return manager.item_metadata(step)['state']
    except Exception as e:  # pylint: disable=broad-except  (a truncated or corrupt metadata file)
      raise _UnreadableCheckpoint(f'{manager.directory}/{step}: {type(e).__name__}: {e}') from e

  @staticmethod
  def restore_partial(manager, step: int, item):
    """Only the leaves of `item` (a sub-tree of the stored TrainState: nested dicts, ShapeDtypeStruct leaves with
    the shardings and dtypes to restore onto) from `step`; the rest of the checkpoint is never read."""
    directory = os.path.join(str(manager.directory), str(step), 'state')
    restored = ocp.PyTreeCheckpointer().restore(directory, args=ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True))
    logging.info('Restored part of checkpoint %s', directory)
    return restored

  @staticmethod
  def _restore(manager, step, target):
    """`step` of `manager` onto `target`; CheckpointMismatchError if its tree is another model's,
    _UnreadableCheckpoint if its files cannot be read."""
    abstract = _abstract(target)
    directory = f'{manager.directory}/{step}'
    try:
      stored = manager.item_metadata(step)['state']
    except Exception as e:  # pylint: disable=broad-except  (a truncated or corrupt metadata file)
      raise _UnreadableCheckpoint(f'{directory}: {type(e).__name__}: {e}') from e
    if stored is not None:  # (None: no metadata to compare; orbax's restore still checks the tree)
      _check_same_tree(stored, abstract, directory)
    try:
      restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except  (the tree matched: the files are damaged)
      raise _UnreadableCheckpoint(f'{directory}: {type(e).__name__}: {e}') from e
    logging.info('Restored checkpoint %s', directory)
    return restored.state, dict(restored.meta)


class _UnreadableCheckpoint(OSError):
  """A checkpoint whose files cannot be read (truncated, corrupt): restore_latest tries the one before."""


def _spec(x) -> tuple[tuple[int, ...], Any]:
  """(shape, dtype) of an array, ShapeDtypeStruct or orbax ArrayMetadata."""
  return tuple(getattr(x, 'shape', ())), jnp.dtype(getattr(x, 'dtype', type(x)))


def _leaf_text(x) -> str:
  shape, dtype = _spec(x)
  return f'{dtype.name}{list(shape)}'


def _check_same_tree(stored, abstract, directory: str) -> None:
  """Raises CheckpointMismatchError unless the checkpoint's leaves (metadata: path, shape, dtype) are exactly
  the restore target's. Orbax itself would cast another dtype silently, and reports other mismatches in
  messages that vary between versions; this names the first differing leaf."""
  ours = ocp.tree.to_flat_dict(abstract, sep='/')
  theirs = ocp.tree.to_flat_dict(stored, sep='/')
  missing = [p for p in ours if p not in theirs]      # in the model, not in the checkpoint
  extra = [p for p in theirs if p not in ours]        # in the checkpoint, not in the model
  different = [p for p in ours if p in theirs and _spec(ours[p]) != _spec(theirs[p])]
  if not (missing or extra or different):
    return
  bad = {*missing, *extra, *different}
  # The model's parameters first (the optimizer state mirrors them), each side in its tree order.
  first = next(p for p in sorted([*ours, *extra], key=lambda p: not p.startswith('params/')) if p in bad)
  if first in different:
    what = f'{first} is {_leaf_text(theirs[first])} in the checkpoint but {_leaf_text(ours[first])} in the model'
  elif first in missing:
    what = f'{first} ({_leaf_text(ours[first])}) is in the model but not in the checkpoint'
  else:
    what = f'{first} ({_leaf_text(theirs[first])}) is in the checkpoint but not in the model'
  raise CheckpointMismatchError(
      f'checkpoint {directory} does not match the model: {what} ({len(different)} leaves differ in shape or '
      f'dtype, {len(missing)} are missing from the checkpoint, {len(extra)} are not in the model). It was '
      'written by another model config: use a fresh --workdir for this config, or rerun with the config that '
      'wrote it (WORKDIR/config.json).')
