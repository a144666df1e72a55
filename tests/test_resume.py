"""Never lose a day: exact data resume, SIGTERM / SIGKILL + resume equal to an uninterrupted run, disk full.

The end-to-end tests run `python -m slt_jax.main` on the tiny demo (tests/tiny_demo.py) in subprocesses that
share one persistent compilation cache, and compare the per-step `train/loss` of the TensorBoard event files
(float32, exact) of the resumed process with those of an uninterrupted run.
"""
import glob
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import tiny_demo
from slt_jax.data import inputs
from slt_jax.data import pipeline
from slt_jax.data import tokenizer as tokenizer_lib
from slt_jax.train import checkpoint as checkpoint_lib

NUM_STEPS = 40         # long enough that a signal sent at step >= 3 lands well before the end
CHECKPOINT_EVERY = 10


# --- the data stream -----------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def train_data(tmp_path_factory):
  """Training splits of the tiny synthetic corpus (40 sentences: 5 batches of 8 per epoch), demo buckets."""
  workdir = str(tmp_path_factory.mktemp('data'))
  config = tiny_demo.config(batch_size=8)
  config.data.synthetic.num_train = 42  # 42 % 8 = 2 examples left out per epoch (different ones each epoch)
  config.data.max_frames = 160
  config.data.bucket_boundaries = (48, 64, 80, 96, 112, 128, 160)
  config = inputs.resolve_data_paths(config, workdir)
  tok = tokenizer_lib.get_tokenizer(config, workdir)
  hosts = [pipeline.make_datasets(config, tok, workdir, splits=['train'], shard_index=h, num_shards=n)['train']
           for h, n in ((0, 1), (1, 2))]
  return config, hosts, workdir


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_resumed_stream_equals_uninterrupted(train_data):
  config, hosts, _ = train_data
  for train in hosts:
    full = _take(train.iterator(0), 13)
    for start in (3, 5, 11):  # inside the first epoch, on an epoch boundary, in a later epoch
      resumed = _take(train.iterator(start_step=start), 2)
      for k, batch in enumerate(resumed, start):
        assert batch.keys() == full[k].keys()
        for key in batch:
          np.testing.assert_array_equal(batch[key], full[k][key], err_msg=f'batch {k}, {key}')
  train = hosts[0]
  far = next(train.iterator(start_step=10 ** 12))  # no cost proportional to the step (nothing is skipped)
  assert far['poses'].shape[0] == 8
  per_epoch = 42 // 8
  batches = _take(train.iterator(0), 2 * per_epoch)
  for e in range(2):  # each epoch: distinct examples, 40 of the 42
    seen = np.concatenate([b['index'] for b in batches[e * per_epoch:(e + 1) * per_epoch]])
    assert len(set(seen.tolist())) == len(seen) == 40
  assert not np.array_equal(batches[0]['poses'], batches[per_epoch]['poses'])
  bounds = list(pipeline._boundaries(config))  # pylint: disable=protected-access
  real, padded = 0, 0
  for b in batches:
    t = b['pose_mask'].shape[1]
    lengths = b['pose_mask'].sum(1)
    assert t in bounds and lengths.max() <= t
    assert t == bounds[0] or lengths.max() > bounds[bounds.index(t) - 1]  # the longest example sets the bucket
    assert b['labels'].shape[1] == config.data.max_target_length  # labels: one fixed length
    real, padded = real + lengths.sum(), padded + b['pose_mask'].size
  assert real / padded > 0.7, f'padding fraction {1 - real / padded:.2f}'


def test_large_host_share_is_memory_mapped(train_data):
  _, _, workdir = train_data
  [path] = glob.glob(os.path.join(workdir, 'cache', 'train-*'))
  with open(os.path.join(path, 'meta.json')) as f:
    cache = pipeline._Cache(path, json.load(f))  # pylint: disable=protected-access
  in_memory = pipeline._host_examples(cache, 1, 2, 2**30)  # pylint: disable=protected-access
  assert not isinstance(in_memory.points, np.memmap)
  for _ in range(2):  # written once, then reused
    mapped = pipeline._host_examples(cache, 1, 2, 0)  # pylint: disable=protected-access  (max_in_memory_gb=0)
    assert isinstance(mapped.points, np.memmap)
    for field in ('points', 'visible', 'offsets', 'index'):
      np.testing.assert_array_equal(getattr(mapped, field), getattr(in_memory, field))
  assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(path, 'train-host*'))) == [
      'train-host00001-of-00002.points.npy', 'train-host00001-of-00002.visible.npy']


# --- disk full -------------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's failed writer thread
def test_failed_save_keeps_previous_checkpoint(tmp_path):
  """A write that fails half way (the OS refuses to grow files, as on a full disk) is a clear error, and the
  previous checkpoint stays the latest readable one."""
  from test_checkpoint import _state, _assert_same  # pylint: disable=g-import-not-at-top
  ckpt = checkpoint_lib.Checkpoints(str(tmp_path), keep=2)
  ckpt.save(1, _state(width=256, seed=1), {'step': 1})
  ckpt.wait()
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes fail with EFBIG instead of killing us
  resource.setrlimit(resource.RLIMIT_FSIZE, (1024, hard))
  try:
    with pytest.raises(checkpoint_lib.CheckpointSaveError, match=r'(?s)failed.*too large.*intact \(steps \[1\]\)'):
      ckpt.save(2, _state(width=256, seed=2), {'step': 2})
      ckpt.wait()
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, previous)
  assert sorted(os.listdir(tmp_path / 'checkpoints'))[0] == '1' and '2' not in os.listdir(tmp_path / 'checkpoints')
  ckpt = checkpoint_lib.Checkpoints(str(tmp_path), keep=2)
  restored, meta = ckpt.restore_latest(_state(width=256))
  assert meta['step'] == 1
  _assert_same(restored, _state(width=256, seed=1))
  assert ckpt.latest.all_steps() == [1]  # the half-written step never counts as one
  ckpt.close()


# --- kill and resume a real run ----------------------------------------------------------------------------
def _env(cache_dir):
  return {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '2',
          'JAX_COMPILATION_CACHE_DIR': cache_dir, 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
          'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0'}


class _Run:
  """`python -m slt_jax.main` on the tiny demo in `workdir`, its log in workdir/log-N.txt."""

  def __init__(self, workdir, cache_dir):
    os.makedirs(workdir, exist_ok=True)
    n = len(glob.glob(os.path.join(workdir, 'log-*.txt')))
    self.log_path = os.path.join(workdir, f'log-{n}.txt')
    self.log = open(self.log_path, 'w')  # pylint: disable=consider-using-with
    argv = [sys.executable, '-m', 'slt_jax.main', f'--workdir={workdir}'] + tiny_demo.flags(
        num_train_steps=NUM_STEPS, checkpoint_every_steps=CHECKPOINT_EVERY)
    self.proc = subprocess.Popen(argv, cwd=tiny_demo.REPO, env=_env(cache_dir), stdout=self.log,
                                 stderr=subprocess.STDOUT)
    self.workdir = workdir

  def text(self):
    with open(self.log_path) as f:
      return f.read()

  def wait_for(self, predicate, what, timeout=400):
    deadline = time.time() + timeout
    while not predicate():
      if self.proc.poll() is not None:
        pytest.fail(f'the run exited ({self.proc.returncode}) before {what}:\n{self.text()[-3000:]}')
      if time.time() > deadline:
        self.proc.kill()
        pytest.fail(f'no {what} after {timeout} s:\n{self.text()[-3000:]}')
      time.sleep(0.02)

  def finish(self, timeout=400):
    try:
      rc = self.proc.wait(timeout)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      pytest.fail(f'run did not finish in {timeout} s:\n{self.text()[-3000:]}')
    self.log.close()
    return rc

  def losses(self) -> dict[int, float]:
    """step -> train/loss written by this process (its own TensorBoard event file)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    files = glob.glob(os.path.join(self.workdir, 'tensorboard', f'events.out.tfevents.*.{self.proc.pid}.*'))
    assert len(files) == 1, files
    out = {}
    for event in tf.compat.v1.train.summary_iterator(files[0]):
      for v in event.summary.value:
        if v.tag == 'train/loss':
          out[event.step] = np.float32(tf.make_ndarray(v.tensor) if v.HasField('tensor') else v.simple_value)
    return out


def _logged_step(run, at_least):
  def reached():
    steps = [int(s) for s in re.findall(r'step (\d+)/', run.text())]
    return steps and max(steps) >= at_least
  return reached


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('jax_cache'))


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, cache_dir):
  """step -> loss of the whole run, never stopped."""
  run = _Run(str(tmp_path_factory.mktemp('uninterrupted')), cache_dir)
  assert run.finish() == 0, run.text()[-3000:]
  losses = run.losses()
  assert sorted(losses) == list(range(1, NUM_STEPS + 1))
  return losses


def _assert_resumed_equal(workdir, cache_dir, uninterrupted, from_step):
  run = _Run(workdir, cache_dir)
  assert run.finish() == 0, run.text()[-3000:]
  assert f'Resuming from step {from_step}.' in run.text()
  losses = run.losses()
  assert sorted(losses) == list(range(from_step + 1, NUM_STEPS + 1))
  np.testing.assert_array_equal([losses[s] for s in sorted(losses)],
                                [uninterrupted[s] for s in sorted(losses)])


@pytest.mark.slow
def test_sigterm_checkpoints_and_resume_is_exact(tmp_path, cache_dir, uninterrupted):
  run = _Run(str(tmp_path), cache_dir)
  run.wait_for(_logged_step(run, 3), 'step 3')
  # Stop the process first so that it is surely mid-run when it sees SIGTERM.
  run.proc.send_signal(signal.SIGSTOP)
  run.proc.send_signal(signal.SIGTERM)
  run.proc.send_signal(signal.SIGCONT)
  assert run.finish() == 75, run.text()[-3000:]
  stopped = re.search(r'Stopped at step (\d+) on request; checkpoint written', run.text())
  assert stopped, run.text()[-3000:]
  step = int(stopped.group(1))
  assert 3 <= step < NUM_STEPS and os.path.isdir(tmp_path / 'checkpoints' / str(step))
  _assert_resumed_equal(str(tmp_path), cache_dir, uninterrupted, step)


@pytest.mark.slow
def test_sigkill_after_checkpoint_resume_is_exact(tmp_path, cache_dir, uninterrupted):
  run = _Run(str(tmp_path), cache_dir)
  run.wait_for(lambda: os.path.isdir(tmp_path / 'checkpoints' / str(CHECKPOINT_EVERY)), 'first checkpoint')
  run.proc.send_signal(signal.SIGKILL)
  assert run.finish() == -signal.SIGKILL
  steps = sorted(int(s) for s in os.listdir(tmp_path / 'checkpoints') if s.isdigit())
  assert steps and steps[-1] < NUM_STEPS
  _assert_resumed_equal(str(tmp_path), cache_dir, uninterrupted, steps[-1])


# --- a workdir of another model ------------------------------------------------------------------------------
@pytest.mark.slow
def test_rerun_with_another_model_is_an_error(tmp_path):
  """A workdir trained with one model config, rerun with a wider or a deeper model: an error naming the first
  differing leaf and the checkpoint, before any step (never a silent fresh start from step 0 that would then
  overwrite the old run's checkpoints)."""
  from slt_jax.train import trainer  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path)
  trainer.train_and_evaluate(tiny_demo.config(num_train_steps=2, checkpoint_every_steps=2), workdir)
  wider, deeper = (tiny_demo.config(num_train_steps=4, checkpoint_every_steps=2) for _ in range(2))
  wider.model.arch.d_model = 48
  deeper.model.arch.num_layers = 2
  for config, first_leaf in (
      (wider, r'params/\S+ is float32\[[^]]*32[^]]*\] in the checkpoint but float32\[[^]]*48[^]]*\] in the model'),
      (deeper, r'params/\S+ \(float32\[.*\]\) is in the model but not in the checkpoint')):
    with pytest.raises(checkpoint_lib.CheckpointMismatchError,
                       match=rf'checkpoint {re.escape(workdir)}/checkpoints/2 does not match the model: {first_leaf}'
                             r'.*fresh --workdir'):
      trainer.train_and_evaluate(config, workdir)
    assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2']
