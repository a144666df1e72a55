"""Multi-host on one machine: processes on 127.0.0.1 with two CPU devices each, joined by jax.distributed.

- global_batch: hosts whose local batches differ in frame count (bucketed separately) still build one global
  batch (padded to the largest host's shape) with each host's rows in place.
- The demo config trained by two processes x two devices started through scripts/launch_multihost.sh: both
  finish, only process 0 writes summaries and metrics, each host takes its rows of each global batch, and the
  training losses equal those of one process x four devices: the global batches are a function of (seed, step)
  alone, whatever the number of hosts.
Every child process runs in its own session and is killed (with its group) if the test times out or fails.
"""
import contextlib
import glob
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PYTHON_BIN = os.path.dirname(sys.executable)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env(**extra):
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2', PYTHONUNBUFFERED='1', **extra)
  env['PATH'] = PYTHON_BIN + os.pathsep + env.get('PATH', '')  # the launcher runs `python`: this venv's
  env.pop('XLA_FLAGS', None)  # the device count comes from --num_local_cpu_devices / jax_num_cpu_devices
  return env


@contextlib.contextmanager
def _processes():
  """Starts processes in their own sessions; on leaving, kills whatever of them is still running."""
  started = []

  def start(args, log_path, **kw):
    log = open(log_path, 'w')  # pylint: disable=consider-using-with
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO, **kw)
    started.append((proc, log))
    return proc
  try:
    yield start
  finally:
    for proc, log in started:
      if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
          os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
      log.close()


def _wait_all(procs, logs, timeout):
  """Waits for every process; fails (the caller's context kills the rest) on a timeout or non-zero exit."""
  deadline = time.time() + timeout
  for proc, log in zip(procs, logs):
    try:
      proc.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
      pytest.fail(f'process {proc.args[:4]} still running after {timeout}s (a side hung?); log tail:\n'
                  + _tail(log))
    if proc.returncode:
      pytest.fail(f'process {proc.args[:4]} exited with {proc.returncode}; log tail:\n' + _tail(log))


def _tail(path, n=4000):
  with open(path, errors='replace') as f:
    return f.read()[-n:]


# ------------------------------------------------------------------------------------------------------------
# global_batch with host batches of different shapes (child: python tests/test_multihost.py PID PORT OUT).
# ------------------------------------------------------------------------------------------------------------
def _global_batch_child(process_id: int, port: int, out: str):
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_num_cpu_devices', 2)
  jax.distributed.initialize(f'127.0.0.1:{port}', num_processes=2, process_id=process_id,
                             initialization_timeout=60)
  import ml_collections  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from slt_jax.train import sharding  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)))
  frames, length = (5, 3) if process_id == 0 else (7, 2)  # each host bucketed its own examples
  batch = {
      'poses': np.full((2, frames, 3, 2), process_id + 1, np.float32),
      'pose_mask': np.ones((2, frames), bool),
      'labels': np.full((2, length), 10 + process_id, np.int32),
      'label_mask': np.ones((2, length), bool),
      'index': np.arange(2, dtype=np.int32) + 2 * process_id,
  }
  arrays = sharding.global_batch(batch, sharding.batch_sharding(mesh))
  frames_total = jax.jit(lambda b: b['pose_mask'].sum())(arrays)
  full = {k: np.asarray(multihost_utils.process_allgather(v, tiled=True)) for k, v in arrays.items()}
  with open(out, 'w') as f:
    json.dump({'shapes': {k: list(v.shape) for k, v in arrays.items()},
               'frames_total': int(frames_total), 'num_devices': jax.device_count(),
               'full': {k: v.tolist() for k, v in full.items()}}, f)
  jax.distributed.shutdown()


def test_global_batch_pads_host_batches_to_one_shape(tmp_path):
  port = _free_port()
  with _processes() as start:
    procs, logs = [], []
    for pid in range(2):
      logs.append(str(tmp_path / f'p{pid}.log'))
      procs.append(start([sys.executable, __file__, str(pid), str(port), str(tmp_path / f'p{pid}.json')],
                         logs[-1], env=_env()))
    _wait_all(procs, logs, timeout=180)
  results = [json.loads((tmp_path / f'p{pid}.json').read_text()) for pid in range(2)]
  assert results[0] == results[1]
  r = results[0]
  assert r['num_devices'] == 4
  assert r['shapes'] == {'index': [4], 'label_mask': [4, 3], 'labels': [4, 3], 'pose_mask': [4, 7],
                         'poses': [4, 7, 3, 2]}
  assert r['frames_total'] == 2 * 5 + 2 * 7
  full = {k: np.asarray(v) for k, v in r['full'].items()}
  np.testing.assert_array_equal(full['index'], [0, 1, 2, 3])
  np.testing.assert_array_equal(full['pose_mask'].sum(1), [5, 5, 7, 7])
  assert np.all(full['poses'][:2, :5] == 1) and np.all(full['poses'][:2, 5:] == 0) and np.all(full['poses'][2:] == 2)
  np.testing.assert_array_equal(full['label_mask'].sum(1), [3, 3, 2, 2])
  np.testing.assert_array_equal(full['labels'][2:], [[11, 11, 0]] * 2)


# ------------------------------------------------------------------------------------------------------------
# The demo config, trained by two processes through the launcher vs by one process.
# ------------------------------------------------------------------------------------------------------------
# Tiny: 3 global batches of 16 per epoch (host h takes rows 8h..8h+7 of each), with the training augmentations
# (speed, frame dropout and the spatial ones, seeded by their rows' place in the global batch); no dropout.
OVERRIDES = [
    '--config.data.synthetic.num_train=48', '--config.data.synthetic.num_val=8',
    '--config.data.synthetic.num_test=8', '--config.data.max_frames=48', '--config.data.augment=True',
    '--config.model.arch.d_model=32', '--config.model.arch.d_kv=8', '--config.model.arch.num_heads=4',
    '--config.model.arch.d_ff=64', '--config.model.arch.num_layers=1', '--config.model.arch.num_decoder_layers=1',
    '--config.model.arch.dropout_rate=0.0', '--config.model.pose.hidden=32', '--config.model.pose.dropout=0.0',
    '--config.training.num_train_steps=3', '--config.training.batch_size=16',
    '--config.training.eval_batch_size=8', '--config.training.log_every_steps=1',
    '--config.training.eval_every_steps=3', '--config.training.checkpoint_every_steps=3',
    '--config.training.warmup_steps=1', '--config.decode.max_new_tokens=4',
]


def _train_losses(workdir) -> dict:
  """{step: train/loss} from the TensorBoard event files under workdir/tensorboard."""
  from tensorboard.backend.event_processing import event_file_loader  # pylint: disable=g-import-not-at-top
  from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top
  losses = {}
  for path in glob.glob(os.path.join(workdir, 'tensorboard', '**', 'events.out.tfevents.*'), recursive=True):
    for event in event_file_loader.EventFileLoader(path).Load():
      for value in event.summary.value:
        if value.tag == 'train/loss':
          losses[event.step] = float(tensor_util.make_ndarray(value.tensor)) if value.HasField('tensor') \
              else value.simple_value
  return losses


@pytest.mark.slow
def test_two_processes_through_the_launcher_match_one(tmp_path):
  port = _free_port()
  multi, single = tmp_path / 'multi', tmp_path / 'single'
  with _processes() as start:
    procs, logs = [], []
    for pid in range(2):
      logs.append(str(tmp_path / f'host{pid}.log'))
      procs.append(start(['bash', 'scripts/launch_multihost.sh', f'127.0.0.1:{port}', '2', str(pid),
                          'configs/demo.py', str(multi), '--num_local_cpu_devices=2'] + OVERRIDES,
                         logs[-1], env=_env()))
    logs.append(str(tmp_path / 'single.log'))
    procs.append(start([sys.executable, '-m', 'slt_jax.main', '--config=configs/demo.py', f'--workdir={single}',
                        '--num_local_cpu_devices=4'] + OVERRIDES, logs[-1], env=_env()))
    _wait_all(procs, logs, timeout=900)
    host_pids = [p.pid for p in procs[:2]]  # `exec python` in the launcher: these are the trainers' pids

  # Only process 0 wrote summaries: every event file carries its pid (events.out.tfevents.TIME.HOST.PID...).
  events = glob.glob(str(multi / 'tensorboard' / '**' / 'events.out.tfevents.*'), recursive=True)
  assert events and all(f'.{host_pids[0]}.' in os.path.basename(e) for e in events), (events, host_pids)
  assert (multi / 'metrics.json').exists() and (multi / 'predictions_test.tsv').exists()
  host0, host1 = _tail(logs[0], 100_000), _tail(logs[1], 100_000)
  assert 'step 3/3' in host0 and 'step 3/3' not in host1  # process 1 only warns
  # Each host holds every training example (> one global batch) and takes its 8 rows of each global batch of 16
  # (one process: all 16).
  line = r'train(?: \w+)? \(host 0\): (\d+) examples, (\d+) batches of 16 per epoch \(this host: rows (\d+-\d+)'
  found = [re.findall(line, text) for text in (host0, _tail(logs[2], 100_000))]
  assert found[0] and found[1] and found[0][0][:2] == found[1][0][:2] and int(found[0][0][1]) > 1, found
  assert (found[0][0][2], found[1][0][2]) == ('0-7', '0-15'), found
  # Both hosts wrote the collective checkpoint; the single-process run gives the same step layout.
  assert sorted(os.listdir(multi / 'checkpoints')) == sorted(os.listdir(single / 'checkpoints')) == ['3']

  multi_losses, single_losses = _train_losses(multi), _train_losses(single)
  assert sorted(multi_losses) == sorted(single_losses) == [1, 2, 3], (multi_losses, single_losses)
  np.testing.assert_allclose([multi_losses[s] for s in (1, 2, 3)], [single_losses[s] for s in (1, 2, 3)],
                             rtol=1e-4)
  # Same test translations from the jointly trained parameters as from the single process's.
  assert (multi / 'predictions_test.tsv').read_text() == (single / 'predictions_test.tsv').read_text()


if __name__ == '__main__':
  _global_batch_child(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
