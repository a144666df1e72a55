"""The split cache built in bounded memory (pipeline._write_cache, sources.read_chunks) on the real DGS poses.

- The streamed, chunked build writes the files the old whole-split-in-memory build wrote (its algorithm, written
  out below as the oracle), byte for byte, with the same skips, counted and logged.
- A build killed half way resumes: finished chunks and shards are kept (not read again), half-written files are
  not taken as finished, and the cache is the same as an uninterrupted build's.
- Worker processes (data.num_workers=2) give the same cache.
- data.max_in_memory_gb: 0 memory-maps the training examples, a large budget keeps them in memory; < 0 is an error.
"""
import csv
import glob
import json
import logging
import math
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from slt_jax import default_config
from slt_jax.data import pipeline
from slt_jax.data import pose_io
from slt_jax.data import sources
from slt_jax.data import tokenizer as tok_lib

SHARD_BYTES = 300_000  # the 16 DGS test poses (~0.5 MB as cached) make 2 shards
CHUNK_ROWS = 3         # 19 rows: 7 chunks, whose examples straddle the shards


@pytest.fixture(scope='module')
def corpus(real_data_dir, tmp_path_factory):
  """A CSV of the 16 DGS test poses, an unreadable pose, a missing one and an empty text: (csv path, pose dir)."""
  tmp = tmp_path_factory.mktemp('corpus')
  poses = tmp / 'poses'
  (poses / 'clips').mkdir(parents=True)
  rows = [['uid', 'text']]
  for i, path in enumerate(sorted(glob.glob(str(real_data_dir / 'fluent-pose-synthesis/sample_dataset/test/*.pose')))):
    shutil.copy(path, poses / f'ex{i:02d}.pose')
    rows.append([f'ex{i:02d}', f'sentence number {i}'])
    if i == 4:
      rows += [['clips/bad', 'unreadable'], ['nowhere', 'missing']]
  (poses / 'clips/bad.pose').write_bytes(b'garbage')
  rows.append(['ex00', ' '])
  with open(tmp / 'train.csv', 'w', newline='') as f:
    csv.writer(f).writerows(rows)
  return str(tmp / 'train.csv'), str(poses)


@pytest.fixture(autouse=True)
def small_shards_and_chunks(monkeypatch):
  monkeypatch.setattr(pipeline, '_SHARD_BYTES', SHARD_BYTES)
  monkeypatch.setattr(sources, 'CHUNK_ROWS', CHUNK_ROWS)


def _config(corpus, num_workers=0):
  c = default_config.get_config()
  c.data.train_path, c.data.pose_dir = corpus
  c.data.num_workers = num_workers
  c.data.keypoints = 'hands_body'
  c.data.trained_tokenizer.kind = 'wordlevel'
  return c


def _build(config, root):
  source = pipeline._split_sources(config, ['train'])['train']  # pylint: disable=protected-access
  return pipeline._build_cache('train', source, str(root))  # pylint: disable=protected-access


def _files(path) -> dict[str, bytes]:
  return {name: open(os.path.join(path, name), 'rb').read() for name in sorted(os.listdir(path))}


def _old_build(config, folder):
  """The oracle: the cache as the whole-split-in-memory build wrote it (load_split, then the shards)."""
  source = pipeline._split_sources(config, ['train'])['train']  # pylint: disable=protected-access
  d = config.data
  rows, arrays, skipped = sources.load_split(d.train_path, d.pose_dir, source.options, split='train')
  os.makedirs(folder)
  total = sum(a.points.nbytes + a.visible.nbytes for a in arrays)
  num_files = max(1, math.ceil(total / SHARD_BYTES))
  per_file = math.ceil(len(arrays) / num_files)
  files = [f'data-{i:05d}-of-{num_files:05d}.tfrecord' for i in range(num_files)]
  for i, name in enumerate(files):
    with tf.io.TFRecordWriter(os.path.join(folder, name)) as writer:
      for index in range(i * per_file, min(len(arrays), (i + 1) * per_file)):
        a = arrays[index]
        feature = {'index': tf.train.Feature(int64_list=tf.train.Int64List(value=[index])),
                   'length': tf.train.Feature(int64_list=tf.train.Int64List(value=[a.points.shape[0]])),
                   'points': tf.train.Feature(bytes_list=tf.train.BytesList(
                       value=[np.ascontiguousarray(a.points, np.float32).tobytes()])),
                   'visible': tf.train.Feature(bytes_list=tf.train.BytesList(
                       value=[np.ascontiguousarray(a.visible, np.uint8).tobytes()]))}
        writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
  k, c = arrays[0].points.shape[1:]
  meta = {'split': 'train', **source.meta, 'options': pose_io.dataclasses.asdict(source.options),
          'num_examples': len(rows), 'num_points': int(k), 'num_coords': int(c),
          'lengths': [int(a.points.shape[0]) for a in arrays], 'bytes': int(total), 'files': files,
          'rows': [{'uid': r.uid, 'text': r.text, 'extra': r.extra} for r in rows], 'skipped': skipped}
  with open(os.path.join(folder, 'meta.json'), 'w') as f:
    json.dump(meta, f, ensure_ascii=False)
  return _files(folder)


@pytest.fixture(scope='module')
def oracle(corpus, tmp_path_factory):
  return _old_build(_config(corpus), str(tmp_path_factory.mktemp('oracle') / 'cache'))


def test_streamed_cache_is_the_in_memory_build_byte_for_byte(corpus, oracle, tmp_path, caplog):
  with caplog.at_level(logging.WARNING):
    cache = _build(_config(corpus), tmp_path)
  assert list(oracle) == ['data-00000-of-00002.tfrecord', 'data-00001-of-00002.tfrecord', 'meta.json']
  assert _files(cache.path) == oracle
  assert sorted(os.listdir(tmp_path)) == [f'.{os.path.basename(cache.path)}.lock', os.path.basename(cache.path)]
  assert cache.meta['skipped'] == {'missing_pose': ['nowhere'], 'empty_text': ['ex00'],
                                   'unreadable_pose': ['clips/bad'], 'missing_keypoints': [], 'no_usable_frames': []}
  assert 'Skipping clips/bad: ' in caplog.text
  assert "train: kept 16 rows, skipped 3 {'missing_pose': 1, 'empty_text': 1, 'unreadable_pose': 1}" in caplog.text


def test_worker_processes_give_the_same_cache(corpus, oracle, tmp_path):
  cache = _build(_config(corpus, num_workers=2), tmp_path)
  assert _files(cache.path) == oracle


class _Killed(Exception):
  pass


def _count_reads(monkeypatch) -> list:
  reads = []
  real = pose_io.read_pose

  def read(path, options):
    reads.append(os.path.basename(path))
    return real(path, options)
  monkeypatch.setattr(pose_io, 'read_pose', read)
  return reads


def test_build_killed_while_reading_resumes_from_its_chunks(corpus, oracle, tmp_path, monkeypatch):
  real_read_chunk = sources.read_chunk
  done = []

  def read_chunk(rows, options, path):
    if len(done) == 3:
      open(path + '.tmp-killed', 'wb').write(b'half a chunk')  # the write the kill cut short
      raise _Killed
    done.append(path)
    return real_read_chunk(rows, options, path)
  monkeypatch.setattr(sources, 'read_chunk', read_chunk)
  with pytest.raises(_Killed):
    _build(_config(corpus), tmp_path)
  [partial] = glob.glob(str(tmp_path / 'train-*.partial'))
  assert sorted(os.listdir(partial)) == ['chunk-000000.npz', 'chunk-000001.npz', 'chunk-000002.npz',
                                         'chunk-000003.npz.tmp-killed', 'chunks.json']
  monkeypatch.setattr(sources, 'read_chunk', real_read_chunk)
  reads = _count_reads(monkeypatch)
  cache = _build(_config(corpus), tmp_path)
  assert len(reads) == 17 - 3 * CHUNK_ROWS  # the rows of the 3 unfinished chunks (of the 17 with a pose file)
  assert 'ex00.pose' not in reads and 'ex14.pose' in reads
  assert _files(cache.path) == oracle
  assert not os.path.exists(partial)


def test_build_killed_while_writing_shards_keeps_the_finished_shard(corpus, oracle, tmp_path, monkeypatch):
  real_write_shard = pipeline._write_shard  # pylint: disable=protected-access

  def write_shard(path, first_index, examples):
    if first_index:
      open(path, 'wb').write(b'not a finished shard')  # (never renamed: as a kill leaves it)
      os.replace(path, path + '.tmp-killed')
      raise _Killed
    real_write_shard(path, first_index, examples)
  monkeypatch.setattr(pipeline, '_write_shard', write_shard)
  with pytest.raises(_Killed):
    _build(_config(corpus), tmp_path)
  [partial] = glob.glob(str(tmp_path / 'train-*.partial'))
  first_shard = os.path.join(partial, 'data-00000-of-00002.tfrecord')
  assert os.path.exists(first_shard) and os.path.exists(partial + '/data-00001-of-00002.tfrecord.tmp-killed')
  mtime = os.stat(first_shard).st_mtime_ns
  monkeypatch.setattr(pipeline, '_write_shard', real_write_shard)
  reads = _count_reads(monkeypatch)
  cache = _build(_config(corpus), tmp_path)
  assert not reads  # every chunk was read before the kill
  assert os.stat(os.path.join(cache.path, 'data-00000-of-00002.tfrecord')).st_mtime_ns == mtime  # kept, not rewritten
  assert _files(cache.path) == oracle


def test_chunks_of_another_chunking_are_not_reused(corpus, oracle, tmp_path, monkeypatch):
  """A partial build whose manifest does not match (here: another CHUNK_ROWS) starts again, shards and all."""
  real_read_chunk = sources.read_chunk
  done = []

  def read_chunk(rows, options, path):
    if len(done) == 2:
      raise _Killed
    done.append(path)
    return real_read_chunk(rows, options, path)
  monkeypatch.setattr(sources, 'read_chunk', read_chunk)
  with pytest.raises(_Killed):
    _build(_config(corpus), tmp_path)
  [partial] = glob.glob(str(tmp_path / 'train-*.partial'))
  with open(os.path.join(partial, 'data-00000-of-00002.tfrecord'), 'wb') as f:  # a shard made of those chunks
    f.write(b'stale')
  monkeypatch.setattr(sources, 'read_chunk', real_read_chunk)
  monkeypatch.setattr(sources, 'CHUNK_ROWS', 5)
  reads = _count_reads(monkeypatch)
  cache = _build(_config(corpus), tmp_path)
  assert len(reads) == 17  # every row with a pose file, again
  assert _files(cache.path) == oracle


@pytest.mark.parametrize('gb, mapped', [(0, True), (0.5, False)])
def test_max_in_memory_gb_maps_the_training_examples(corpus, tmp_path, gb, mapped):
  config = _config(corpus)
  config.data.max_in_memory_gb = gb
  tokenizer = tok_lib.get_tokenizer(config, str(tmp_path))
  train = pipeline.make_datasets(config, tokenizer, str(tmp_path), splits=['train'], shard_index=0,
                                 num_shards=1)['train']
  [path] = glob.glob(str(tmp_path / 'cache' / 'train-*'))
  assert bool(glob.glob(os.path.join(path, 'train-host*.points.npy'))) == mapped
  assert next(train.iterator())['poses'].shape[0] == config.training.batch_size


@pytest.mark.parametrize('shard_index, num_shards', [(0, 1), (0, 2), (1, 2)])
@pytest.mark.parametrize('max_in_memory', [0.0, 1e12])
@pytest.mark.parametrize('files_order', ['written', 'reversed'])
def test_host_examples_hold_each_cached_example(corpus, tmp_path, shard_index, num_shards, max_in_memory,
                                                 files_order):
  """Every example of this host's share, read into memory or memory-mapped, equals its record decoded on its own
  (files reversed: the rows of a parsed batch are not consecutive, the one-example-at-a-time path)."""
  cache = _build(_config(corpus), tmp_path / 'cache')
  if files_order == 'reversed':
    cache = pipeline._Cache(cache.path, {**cache.meta, 'files': cache.meta['files'][::-1]})
  assert len(cache.meta['files']) == 2
  oracle = {}
  for record in tf.data.TFRecordDataset(cache.files):
    r = tf.io.parse_single_example(record, pipeline._RECORD_SPEC)  # pylint: disable=protected-access
    k, c = cache.meta['num_points'], cache.meta['num_coords']
    oracle[int(r['index'])] = (np.frombuffer(r['points'].numpy(), np.float32).reshape(-1, k, c),
                               np.frombuffer(r['visible'].numpy(), np.uint8).reshape(-1, k) > 0)
  host = pipeline._host_examples(cache, shard_index, num_shards, max_in_memory)  # pylint: disable=protected-access
  assert isinstance(host.points, np.memmap) == (max_in_memory == 0.0)
  np.testing.assert_array_equal(host.index, np.arange(shard_index, len(oracle), num_shards))
  for j, row in enumerate(host.index):
    points, visible = oracle[int(row)]
    np.testing.assert_array_equal(host.points[host.offsets[j]:host.offsets[j + 1]], points)
    np.testing.assert_array_equal(host.visible[host.offsets[j]:host.offsets[j + 1]], visible)
  assert not host.points[-1].any() and not host.visible[-1].any()  # the padding frame


def test_negative_max_in_memory_gb_is_an_error(corpus):
  config = _config(corpus)
  config.data.max_in_memory_gb = -1
  with pytest.raises(default_config.ConfigError, match=r'data.max_in_memory_gb must be >= 0.*got -1'):
    default_config.validate(config)


def test_global_batches_are_the_same_on_any_number_of_hosts(corpus, tmp_path):
  """Batch k of one host == the rows of batch k of two hosts, one after the other, augmentations included."""
  config = _config(corpus)
  config.training.batch_size = 16  # (8 rows per host: whole groups of pipeline._AUGMENT_GROUP)
  config.data.augmentations.mirror = True
  tokenizer = tok_lib.get_tokenizer(config, str(tmp_path))
  one, *two = [pipeline.make_datasets(config, tokenizer, str(tmp_path), splits=['train'], shard_index=h,
                                      num_shards=n)['train'] for h, n in ((0, 1), (0, 2), (1, 2))]
  streams = [train.iterator(start_step=3) for train in [one] + two]
  for step in range(3, 7):  # (one batch per epoch: 4 epochs)
    whole, first, second = (next(s) for s in streams)
    assert first['poses'].shape[0] == 8
    for key in whole:
      np.testing.assert_array_equal(np.concatenate([first[key], second[key]]), whole[key], err_msg=f'{step} {key}')


def test_num_workers(monkeypatch):
  monkeypatch.setattr(sources, '_num_cpus', lambda: 16)
  assert [sources.num_workers_for(-1, n) for n in (1, 15, 16, 1000)] == [0, 0, 8, 8]  # -1: per core, <= 8
  assert [sources.num_workers_for(w, 100) for w in (0, 1, 2, 12)] == [0, 0, 2, 12]
  assert sources.num_workers_for(4, 1) == 0  # one chunk: in process
