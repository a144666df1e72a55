"""Weights & Biases logging (slt_jax/train/wandb_writer.py) in offline mode: no network, no account.

The offline run is read back from its transaction log, WORKDIR/wandb/offline-run-*/run-ID.wandb (wandb 0.31
writes no summary or config file offline and has no Python reader for it): a LevelDB-style log of
wandb_internal_pb2.Record protos.
"""
import glob
import json
import os
import struct
import sys
import time

import pytest

import tiny_demo
from slt_jax import default_config
from slt_jax.train import wandb_writer

wandb = pytest.importorskip('wandb')
from google.protobuf.message import DecodeError  # pylint: disable=g-import-not-at-top
from wandb.proto import wandb_internal_pb2  # pylint: disable=g-import-not-at-top


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
  """No network, no login, no prompts; W&B's own settings and cache in tmp."""
  for key, value in (('WANDB_MODE', 'offline'), ('WANDB_SILENT', 'true'), ('WANDB_CONSOLE', 'off'),
                     ('WANDB_DISABLE_GIT', 'true'), ('WANDB_CONFIG_DIR', str(tmp_path / 'wandb_config')),
                     ('WANDB_CACHE_DIR', str(tmp_path / 'wandb_cache')),
                     ('WANDB_DATA_DIR', str(tmp_path / 'wandb_data'))):
    monkeypatch.setenv(key, value)
  monkeypatch.delenv('WANDB_API_KEY', raising=False)


def _records(path):
  """The Record protos of a .wandb file: a ':W&B' header, then 32 KiB blocks of chunks, each
  (crc32 u32, length u16, type u8: 1 full, 2 first, 3 middle, 4 last) + payload."""
  block = 32768
  data = open(path, 'rb').read()
  assert data[:4] == b':W&B', data[:7]
  pos, payload = 7, b''
  while pos + 7 <= len(data):
    left = block - pos % block
    _, n, kind = struct.unpack('<IHB', data[pos:pos + 7])
    if left < 7 or (kind == 0 and n == 0):  # block trailer / padding
      pos += left
      continue
    chunk, pos = data[pos + 7:pos + 7 + n], pos + 7 + n
    payload = chunk if kind in (1, 2) else payload + chunk
    if kind in (1, 4):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(payload)
      yield record


def _finished_records(path, timeout=60.0):
  """All records of a run's log once its last one is `exit`. run.finish() returns before W&B's service
  process has flushed the log (reading it at once found it cut short about one time in 20), so wait."""
  deadline = time.monotonic() + timeout
  while True:
    try:
      records = list(_records(path))
      if records and records[-1].WhichOneof('record_type') == 'exit':
        return records
    except DecodeError:
      pass  # a record cut short: still being written
    assert time.monotonic() < deadline, f'{path} has no exit record after {timeout} s'
    time.sleep(0.1)


def _read_run(workdir):
  """-> (run ids, history rows [{key: value}], config updates {key: value}) of all offline runs in workdir."""
  files = sorted(glob.glob(os.path.join(workdir, 'wandb', 'offline-run-*', 'run-*.wandb')))
  assert files, os.listdir(workdir)
  ids, history, config = [], [], {}
  for path in files:
    for r in _finished_records(path):
      kind = r.WhichOneof('record_type')
      if kind == 'run':
        ids.append(r.run.run_id)
        config.update({i.key: json.loads(i.value_json) for i in r.run.config.update})
      elif kind == 'config':
        config.update({i.key: json.loads(i.value_json) for i in r.config.update})
      elif kind == 'history':
        history.append({i.key or '/'.join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
  return ids, history, config


def _config(**training):
  config = default_config.get_config()
  config.training.update(use_wandb=True, wandb_project='test', **training)
  return config


def test_writer_logs_scalars_texts_hparams_and_resumes_the_run(tmp_path):
  workdir = str(tmp_path / 'work')
  writer = wandb_writer.create(_config(wandb_run_name='tiny'), workdir)
  writer.write_hparams({'learning_rate': 0.5, 'batch_size': 8})
  writer.write_scalars(1, {'train/loss': 3.5})
  writer.write_scalars(2, {'train/loss': 2.25})
  writer.write_scalars(2, {'val/bleu': 1.5})
  table = '| uid | reference | hypothesis |\n|---|---|---|\n| a | hello | hi |'
  writer.write_texts(2, {'val/examples': table, 'notes': 'plain <text>'})
  writer.close()
  run_id = open(os.path.join(workdir, 'wandb', 'run_id')).read().strip()
  ids, history, config = _read_run(workdir)
  assert ids == [run_id]
  assert config['learning_rate'] == 0.5 and config['batch_size'] == 8   # write_hparams
  assert config['training']['wandb_project'] == 'test'                   # the whole config, at init
  rows = [(h['step'], k, h[k]) for h in history for k in ('train/loss', 'val/bleu') if k in h]
  assert rows == [(1, 'train/loss', 3.5), (2, 'train/loss', 2.25), (2, 'val/bleu', 1.5)]
  texts = next(h for h in history if 'val/examples/_type' in h)
  assert texts['val/examples/_type'] == 'table-file' and texts['val/examples/nrows'] == 1
  assert texts['notes/_type'] == 'html-file'
  run_dir = glob.glob(os.path.join(workdir, 'wandb', 'offline-run-*'))[0]
  logged = json.load(open(os.path.join(run_dir, 'files', texts['val/examples/path'])))
  assert logged['columns'] == ['uid', 'reference', 'hypothesis'] and logged['data'] == [['a', 'hello', 'hi']]
  html = open(os.path.join(run_dir, 'files', texts['notes/path'])).read()
  assert 'plain &lt;text&gt;' in html

  # Resuming the workdir continues the same run id (a second offline run directory; `wandb sync` merges).
  writer = wandb_writer.create(_config(), workdir)
  writer.write_scalars(3, {'train/loss': 2.0})
  writer.close()
  ids, history, _ = _read_run(workdir)
  assert ids == [run_id, run_id]
  assert [h['train/loss'] for h in history if 'train/loss' in h] == [3.5, 2.25, 2.0]


def test_markdown_table():
  assert wandb_writer._markdown_table('| a | b |\n|---|:-:|\n| 1 | 2 |\n| 3 | 4 |') == (
      ['a', 'b'], [['1', '2'], ['3', '4']])
  assert wandb_writer._markdown_table('| a | b |\n|---|---|\n| 1 | x | y |') is None  # a '|' in a cell
  assert wandb_writer._markdown_table('just text') is None
  assert wandb_writer._markdown_table('| a |\n| b |') is None  # no separator row


def test_missing_wandb_and_bad_mode_are_clear_errors(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'wandb', None)  # `import wandb` raises ImportError
  with pytest.raises(ImportError, match=r"pip install -e '\.\[wandb\]'"):
    wandb_writer.create(_config(), str(tmp_path))
  config = _config(wandb_mode='cloud')
  with pytest.raises(default_config.ConfigError, match='wandb_mode'):
    default_config.validate(config, require_data=False)


@pytest.mark.slow  # compiles the tiny demo's train step (about 30 s of the 40-80 s on 2 shared cores)
def test_trainer_logs_to_wandb_and_tensorboard(tmp_path):
  from slt_jax.train import trainer  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'demo')
  config = tiny_demo.config(num_train_steps=2, eval_every_steps=2, checkpoint_every_steps=2, use_wandb=True)
  trainer.train_and_evaluate(config, workdir)
  _, history, config = _read_run(workdir)
  losses = {h['step']: h['train/loss'] for h in history if 'train/loss' in h}
  assert sorted(losses) == [1, 2] and all(isinstance(v, float) for v in losses.values())
  assert any('val/bleu' in h for h in history) and any('test/bleu' in h for h in history)
  assert any(h.get('val/examples/_type') == 'table-file' for h in history)
  assert config['num_train_steps'] == 2 and config['model']['arch']['d_model'] == 32
  assert glob.glob(os.path.join(workdir, 'tensorboard', 'events.out.tfevents.*'))  # TensorBoard as always
