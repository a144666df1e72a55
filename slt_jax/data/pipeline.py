"""tf.data input pipeline: CSV + .pose files (or a TFDS builder) -> cached shards -> padded, bucketed batches.

Usage (what the trainer does):

  tok = tokenizer.get_tokenizer(config, workdir)
  splits = pipeline.make_datasets(config, tok, workdir)     # {'train': SplitData, 'val': ..., 'test': ...}
  train = splits['train']
  for step, batch in zip(range(start, num_steps), train.iterator(start_step=start)):
    ...                                                      # batch: the dict below, numpy, this host's share
  for batch in splits['val'].iterator():                     # finite: exactly splits['val'].num_batches
    uid = splits['val'].rows[batch['index'][0]].uid          # where batch['example_mask'][0]

Each batch (per host: global batch size / number of hosts rows):
  poses        f32[B, T, K, C]  normalised keypoints, masked points 0 (C = len(coords) + visibility channel)
  pose_mask    bool[B, T]       real frames
  labels       i32[B, L]        token ids ending with EOS, padded with tokenizer.pad_id
  label_mask   bool[B, L]       real tokens (incl. EOS)
  example_mask bool[B]          False on filler rows (eval only)
  index        i32[B]           row in `SplitData.rows` (-1 on filler rows)
  corpus       i32[B]           the row's corpus, its number in contract.corpus_names (0: filler rows, no mixture)

How: each split is preprocessed once (pose_io in Python) into TFRecord shards under
`config.data.cache_dir or WORKDIR/cache`, in a folder keyed by a hash of the CSV bytes, pose_dir and
the pose options (a changed CSV or option builds a new cache; rewriting .pose files in place does not:
delete the folder); with `data.source='tfds'` (tfds_source.py) by the builder, its config, version,
split and feature keys instead of the CSV.
Train (exact resume: global batch k is a pure function of (training.seed, k), host h taking its rows
[h * B, (h + 1) * B), so a run resumed at step k, on any number of hosts, sees the batches k, k+1, ... of an
uninterrupted run, at a cost independent of k): every host holds the split's examples in memory (memory-mapped
above data.max_in_memory_gb); a numpy batch plan per epoch
(seeded permutation, speed/frame-dropout draws, length sorting within pools of batches, shuffled
batch order; see _BatchPlan) says which frames of which examples batch k holds; tf.data maps the steps
k, k+1, ... to those padded batches (frame axis padded to the bucket boundary of the batch's longest
example, so few shapes ever reach jit), applies the spatial augmentation (per group of _AUGMENT_GROUP rows of
the global batch, seeded by (seed, step, group)), adds labels, prefetches; infinite. Eval = same shards, fixed
order, no augmentation, frame axis padded to the bucket boundary of the batch's longest example, last batch
filled to B with example_mask False; every host yields the same number of batches.
Per-host split: `shard_index, num_shards` (default jax.process_index() / process_count()); host h
reads rows h, h + n, h + 2n, ... of each eval split (training: its rows of each global batch, above).

Preprocessing in bounded memory (_write_cache): a split's rows are read in chunks by `data.num_workers` worker
processes (sources.read_chunks), then streamed into the shards; a killed build resumes from its finished chunks
and shards (WORKDIR/cache/<split>-<key>.partial).
"""
import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import math
import os
import shutil
import threading
import uuid
from typing import Callable, Iterator

from absl import logging
import numpy as np
import tensorflow as tf

from slt_jax.data import augment
from slt_jax.data import keypoints as kp_lib
from slt_jax.data import pose_io
from slt_jax.data import sources
from slt_jax.models import contract

SPLITS = ('train', 'val', 'test')
DEVICE_KEYS = contract.DEVICE_KEYS  # the batch layout of the module docstring (slt_jax.models.contract.Batch)
_SHARD_BYTES = 256 << 20     # target size of one TFRecord shard


def _configure_tf():
  """TF never takes accelerator memory and stays small on the CPU (it shares it with jax)."""
  try:
    tf.config.set_visible_devices([], 'GPU')
  except (RuntimeError, ValueError):  # already initialised
    pass
  try:
    tf.config.threading.set_inter_op_parallelism_threads(2)
    tf.config.threading.set_intra_op_parallelism_threads(1)
  except RuntimeError:
    pass


_configure_tf()


@dataclasses.dataclass
class SplitData:
  """One split on this host. `rows[i]` is the row of `batch['index'] == i`."""
  name: str
  rows: list                      # list[sources.Row], the whole split (all hosts)
  skipped: sources.SkipReport     # reason -> uids left out of `rows`
  batch_size: int                 # per host
  num_examples: int               # examples in the split (all hosts)
  num_batches: int | None         # eval: batches each host yields; train: None (infinite)
  pose_shape: tuple[int, int]     # (K, C) of `poses`
  _make: Callable[[int], tf.data.Dataset]
  # data.mixture: corpus -> (start, stop) of its rows in `rows` (whose uids are then 'corpus/uid'); {} otherwise.
  corpora: dict = dataclasses.field(default_factory=dict)

  def dataset(self, start_step: int = 0) -> tf.data.Dataset:
    """The tf.data.Dataset; for train, the batches start_step, start_step + 1, ... of the stream."""
    return self._make(start_step)

  def iterator(self, start_step: int = 0) -> Iterator[dict]:
    return self.dataset(start_step).as_numpy_iterator()

  def __iter__(self):
    return self.iterator()


def pose_feature_shape(config) -> tuple[int, int]:
  """(K, C) of `poses` for a config, without reading data: pose_dim = K * C."""
  d = config.data
  num_points = len(kp_lib.preset(d.keypoints))
  return num_points, len(d.coords) + int(bool(d.get('visibility_channel', False)))


def make_datasets(config, tokenizer, workdir: str, *, splits=None, shard_index: int | None = None,
                  num_shards: int | None = None) -> dict[str, SplitData]:
  """Builds (or reuses) each split's cache and returns its SplitData.

  splits: names among ('train', 'val', 'test') that the source has (default: all it has): with
    `data.source='csv'` those whose `config.data.<name>_path` is set, with 'tfds' those whose
    `data.tfds.<name>_split` is. Writes WORKDIR/skipped_rows.json ({split: {reason: [uid]}}) from host 0.
  """
  if shard_index is None or num_shards is None:
    import jax  # pylint: disable=g-import-not-at-top
    shard_index, num_shards = jax.process_index(), jax.process_count()
  out, reports = {}, {}
  for split, split_sources in _sources(config, splits).items():
    caches = [(source, _build_cache(split, source, _cache_root(config, workdir))) for source in split_sources]
    reports[split] = _skipped(caches)
    if split == 'train':
      out[split] = _train_split(config, tokenizer, caches, shard_index, num_shards)
    else:
      out[split] = _eval_split(config, tokenizer, caches, split, shard_index, num_shards)
  if not _all_csv(config):  # (CSV splits: checked up front by check_splits)
    _check_rows(config, {split: data.rows for split, data in out.items()})
  if shard_index == 0 and reports:
    sources.write_skip_report(os.path.join(workdir, 'skipped_rows.json'), reports)
  return out


def train_texts(config, workdir: str) -> Iterator[str] | None:
  """Texts to train a tokenizer on when the source is not a CSV the tokenizer reads itself (None then).

  Lazy: the training split's cache is built (or read) only if the texts are consumed. A data.mixture with a
  TFDS corpus: the texts of every corpus's training split.
  """
  if _all_csv(config):
    return None

  def texts():
    train_sources = _sources(config, ['train']).get('train')
    if not train_sources:
      raise ValueError('training a tokenizer needs a training split (data.tfds.train_split)')
    for source in train_sources:
      yield from (r.text for r in _build_cache('train', source, _cache_root(config, workdir)).rows)
  return texts()


def _cache_root(config, workdir: str) -> str:
  return config.data.get('cache_dir', '') or os.path.join(workdir, 'cache')


# ------------------------------------------------------------------------------------------------
# Sources: where a split's examples come from (`config.data.source`), and what keys its cache.
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Source:
  key: str                      # cache folder suffix: a digest of everything that decides the examples
  where: str                    # for messages
  meta: dict                    # stored in the cache's meta.json (csv_path + pose_dir, or tfds)
  options: pose_io.PoseOptions
  load: Callable[[str], object]  # (working folder) -> the split's examples: a sources.ChunkedSplit or _InMemory
  corpus: str = ''              # its data.mixture name ('' without a mixture)
  weight: float = 1.0           # data.mixture: its weight in the training batches


def _corpora(config) -> list[tuple[str, float, object]]:
  """(name, weight, data config) of each corpus: data.mixture's (sorted by name), each data.* with the corpus's own
  source fields (default_config.mixture_corpus), or ('', 1.0, config.data) without a mixture."""
  d = config.data
  if not d.get('mixture', None):
    return [('', 1.0, d)]
  out = []
  for name in d.mixture.keys():
    corpus = d.mixture[name]
    view = d.copy_and_resolve_references()
    with view.unlocked():
      for field in ('source', 'train_path', 'val_path', 'test_path', 'pose_dir', 'text_column', 'tfds'):
        view[field] = corpus[field]
      view.mixture = {}
    out.append((name, float(corpus.weight), view))
  return out


def _all_csv(config) -> bool:
  return all(d.get('source', 'csv') == 'csv' for _, _, d in _corpora(config))


def _uid(corpus: str, uid: str) -> str:
  """A row's uid in a split's rows: 'corpus/uid' in a data.mixture (uids of two corpora may be the same)."""
  return f'{corpus}/{uid}' if corpus else uid


def _sources(config, splits=None) -> dict[str, list[_Source]]:
  """Each configured split among `splits` -> the _Source of every corpus that has it (one without data.mixture)."""
  out = {}
  for name, weight, d in _corpora(config):
    for split, source in _data_sources(d, splits).items():
      out.setdefault(split, []).append(dataclasses.replace(source, corpus=name, weight=weight))
  return out


def _split_sources(config, splits=None) -> dict[str, _Source]:
  """The _Source of each configured split among `splits` (with data.mixture: its first corpus's)."""
  return {split: found[0] for split, found in _sources(config, splits).items()}


def _data_sources(d, splits=None) -> dict[str, _Source]:
  """The one place that dispatches on `data.source` (d: config.data, or a data.mixture corpus's view): the
  configured splits among `splits`."""
  options = pose_io.PoseOptions.from_config(d)
  wanted = splits or SPLITS
  source = d.get('source', 'csv')
  if source == 'tfds':
    from slt_jax.data import tfds_source  # pylint: disable=g-import-not-at-top  (optional extra)
    src = tfds_source.TfdsSource(d.tfds)
    return {s: _Source(key=src.cache_key(s, options), where=src.describe(s),
                       meta={'tfds': {'name': d.tfds.name, 'split': src.split_spec(s)}}, options=options,
                       load=lambda folder, s=s: _InMemory(*src.load_split(s, options)))
            for s in wanted if src.split_spec(s)}
  if source != 'csv':
    raise ValueError(f"data.source must be 'csv' or 'tfds', got {source!r}")
  text_column = d.get('text_column', 'text')
  out = {}
  for s in wanted:
    path = d.get(f'{s}_path', '')
    if path:
      out[s] = _Source(
          key=_cache_key(path, d.pose_dir, options, text_column), where=f'{path} (pose_dir {d.pose_dir})',
          meta={'csv_path': os.path.abspath(path), 'pose_dir': os.path.abspath(d.pose_dir)}, options=options,
          load=functools.partial(sources.load_split_chunked, path, d.pose_dir, options, text_column=text_column,
                                 num_workers=d.get('num_workers', -1), split=s))
  return out


def check_splits(config, splits=None) -> dict[str, list]:
  """The rows of each CSV split, checked before any tokenizer is trained or anything is written.

  Reads the CSVs of `splits` (default: all) and of the other configured splits whose CSV exists (for the
  overlap check), stat-ing each pose file but reading none: a requested split without a usable row is a
  sources.NoUsableRowsError (wrong data.pose_dir, say); uids repeated within a split are a warning; the
  same uid or pose file in two splits is a sources.SplitOverlapError unless data.allow_overlap. TFDS rows
  are known only once read: make_datasets checks them. Returns {split: rows} of the CSV splits read ({} when a
  TFDS source is among them).
  """
  rows = {}
  for name, _, d in _corpora(config):  # (data.mixture: every CSV corpus; uids as 'corpus/uid')
    if d.get('source', 'csv') != 'csv':
      continue
    text_column = d.get('text_column', 'text')
    for split in SPLITS:
      path = d.get(f'{split}_path', '')
      if path and (split in (splits or SPLITS) or os.path.exists(path)):
        found, skipped = sources.read_csv(path, d.pose_dir, text_column)
        if split in (splits or SPLITS):
          sources.require_usable_rows(_uid(name, split), path, d.pose_dir, found, skipped, text_column)
        rows.setdefault(split, []).extend(dataclasses.replace(r, uid=_uid(name, r.uid)) for r in found)
  _check_rows(config, rows)
  return rows if _all_csv(config) else {}  # (a TFDS corpus: its rows are read, and all checked, by make_datasets)


def _check_rows(config, rows: dict[str, list]) -> None:
  """Duplicate uids within each split (a warning), overlap between the splits (an error, see check_splits)."""
  for split, split_rows in rows.items():
    sources.report_duplicate_uids(split, split_rows)
  sources.check_overlap(rows, allow_overlap=config.data.get('allow_overlap', False))


# ------------------------------------------------------------------------------------------------
# Cache: one folder of TFRecord shards + meta.json per (split, source, pose options).
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Cache:
  path: str
  meta: dict

  @property
  def files(self) -> list[str]:
    return [os.path.join(self.path, f) for f in self.meta['files']]

  @property
  def rows(self) -> list:
    pose_dir = self.meta.get('pose_dir', '')  # none for TFDS examples
    return [sources.Row(uid=r['uid'], text=r['text'],
                        pose_path=os.path.join(pose_dir, r['uid'] + '.pose') if pose_dir else '',
                        extra=r.get('extra', {})) for r in self.meta['rows']]


def _cache_key(csv_path, pose_dir, options: pose_io.PoseOptions, text_column) -> str:
  h = hashlib.sha256()
  with open(csv_path, 'rb') as f:
    h.update(f.read())
  h.update(json.dumps([os.path.abspath(pose_dir), text_column, options.fingerprint()]).encode())
  return h.hexdigest()[:16]


def _build_cache(split, source: _Source, cache_root) -> _Cache:
  """The cache of a split's source: found, or built (resuming a killed build) by one process at a time."""
  path = os.path.join(cache_root, f'{split}-{source.key}')
  cache = _found_cache(path)
  if cache:
    logging.info('%s: using cached examples in %s', split, path)
    return cache
  os.makedirs(cache_root, exist_ok=True)
  with _lock(os.path.join(cache_root, f'.{split}-{source.key}.lock')):
    cache = _found_cache(path)  # (built by another process while this one waited)
    if cache:
      logging.info('%s: using cached examples in %s (built by another process)', split, path)
      return cache
    return _write_cache(split, source, path)


def _found_cache(path: str) -> '_Cache | None':
  try:
    with open(os.path.join(path, 'meta.json')) as f:
      return _Cache(path, json.load(f))
  except FileNotFoundError:
    return None


@contextlib.contextmanager
def _lock(path: str):
  """An exclusive lock on `path` (flock: released when the holder dies); none where the file system has none."""
  with open(path, 'a') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX)
    except OSError:  # (some network file systems)
      logging.warning('cannot lock %s: builds of this cache by several processes at once may collide', path)
    yield


def _write_cache(split, source: _Source, path: str) -> _Cache:
  """Builds a split's cache in `path`.partial, in bounded memory, then renames it to `path`.

  The examples are read in chunks (sources.read_chunks, in worker processes), then streamed into the TFRecord
  shards (one chunk in memory at a time). A killed build leaves `path`.partial: the next one keeps its finished
  chunk and shard files (each complete once present: written under a temporary name, then renamed) and does the
  rest. The files are those the whole split read into memory at once gives (the same shard layout: it needs the
  total bytes, known once every chunk is read).
  """
  partial = f'{path}.partial'
  os.makedirs(partial, exist_ok=True)
  meta_path = os.path.join(partial, 'meta.json')
  if os.path.exists(meta_path):  # killed just before the rename: complete
    os.rename(partial, path)
    return _found_cache(path)
  examples = source.load(partial)
  rows, skipped = examples.rows, examples.skipped
  if not rows:
    shutil.rmtree(partial, ignore_errors=True)  # (nothing of it is of use)
    raise sources.NoUsableRowsError(f'{split}: no usable rows in {source.where}; skipped: '
                                    f'{ {k: len(v) for k, v in skipped.items() if v} }')
  total = int(np.sum(examples.nbytes))
  num_files = max(1, math.ceil(total / _SHARD_BYTES))
  per_file = math.ceil(len(rows) / num_files)
  files = [f'data-{i:05d}-of-{num_files:05d}.tfrecord' for i in range(num_files)]
  for i, name in enumerate(files):
    _write_shard(os.path.join(partial, name), i * per_file, examples.examples(i * per_file, (i + 1) * per_file))
  meta = {'split': split, **source.meta, 'options': dataclasses.asdict(source.options),
          'num_examples': len(rows), 'num_points': int(examples.num_points), 'num_coords': int(examples.num_coords),
          'lengths': [int(n) for n in examples.lengths], 'bytes': total, 'files': files,
          'rows': [{'uid': r.uid, 'text': r.text, 'extra': r.extra} for r in rows],
          'skipped': skipped}
  with open(meta_path + '.tmp', 'w') as f:
    json.dump(meta, f, ensure_ascii=False)
  examples.remove()  # (the chunk files: the shards hold the examples now)
  for name in set(os.listdir(partial)) - set(files) - {'meta.json.tmp'}:  # (shards of another layout)
    os.remove(os.path.join(partial, name))
  os.replace(meta_path + '.tmp', meta_path)
  if os.path.exists(path):  # a folder without meta.json (an older build's leftovers): never used
    shutil.rmtree(path)
  os.rename(partial, path)
  return _Cache(path, meta)


def _write_shard(path: str, first_index: int, examples) -> None:
  """One TFRecord shard of the examples first_index, first_index + 1, ...; kept if a killed build finished it."""
  if os.path.exists(path):
    return
  tmp = f'{path}.tmp-{uuid.uuid4().hex[:8]}'
  with tf.io.TFRecordWriter(tmp) as writer:
    for index, (points, visible) in enumerate(examples, first_index):
      writer.write(_serialize(index, points, visible))
  os.replace(tmp, path)


class _InMemory:
  """A split read into memory ((rows, arrays, skipped) as sources.load_split), as a sources.ChunkedSplit."""

  def __init__(self, rows, arrays, skipped):
    self.rows, self.skipped, self._arrays = rows, skipped, arrays
    self.lengths = np.asarray([a.points.shape[0] for a in arrays], np.int64)
    self.nbytes = np.asarray([a.points.nbytes + a.visible.nbytes for a in arrays], np.int64)
    self.num_points, self.num_coords = arrays[0].points.shape[1:] if arrays else (0, 0)

  def examples(self, start: int, stop: int):
    return ((a.points, a.visible) for a in self._arrays[start:stop])

  def remove(self):
    pass


def _serialize(index: int, points: np.ndarray, visible: np.ndarray) -> bytes:
  """One example: points f32[T, K, C], visible bool[T, K]."""
  def b(x):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[x.tobytes()]))

  def i(x):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[x]))

  return tf.train.Example(features=tf.train.Features(feature={
      'index': i(index), 'length': i(points.shape[0]),
      'points': b(np.ascontiguousarray(points, np.float32)),
      'visible': b(np.ascontiguousarray(visible, np.uint8))})).SerializeToString()


_RECORD_SPEC = {'index': tf.io.FixedLenFeature([], tf.int64), 'length': tf.io.FixedLenFeature([], tf.int64),
                'points': tf.io.FixedLenFeature([], tf.string), 'visible': tf.io.FixedLenFeature([], tf.string)}


def _records(cache: _Cache, shard_index: int, num_shards: int, max_in_memory: float) -> tf.data.Dataset:
  """This host's examples as {points f32[T, K, C], visible bool[T, K], index i32}, in row order; held in memory
  (tf.data cache) after the first pass when they take less than `max_in_memory` bytes."""
  k, c = cache.meta['num_points'], cache.meta['num_coords']

  def parse(record):
    ex = tf.io.parse_single_example(record, _RECORD_SPEC)
    t = tf.cast(ex['length'], tf.int32)
    points = tf.reshape(tf.io.decode_raw(ex['points'], tf.float32), [t, k, c])
    visible = tf.reshape(tf.io.decode_raw(ex['visible'], tf.uint8), [t, k]) > 0
    return {'points': points, 'visible': visible, 'index': tf.cast(ex['index'], tf.int32)}

  ds = tf.data.TFRecordDataset(cache.files)  # sequential read keeps row order across shards
  if num_shards > 1:
    ds = ds.shard(num_shards, shard_index)
  ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
  if cache.meta['bytes'] / num_shards < max_in_memory:
    ds = ds.cache()
  return ds


# ------------------------------------------------------------------------------------------------
# Labels, bucketing, final batch layout.
# ------------------------------------------------------------------------------------------------
def _label_table(rows, tokenizer, max_len: int) -> tuple[np.ndarray, np.ndarray]:
  """int32[N, max_len] target ids (+ EOS, padded with pad_id) and int32[N] their lengths."""
  table = np.full((len(rows), max_len), tokenizer.pad_id, np.int32)
  lengths = np.zeros(len(rows), np.int32)
  for i, row in enumerate(rows):
    ids = list(tokenizer.encode(row.text))[:max_len - 1] + [tokenizer.eos_id]
    table[i, :len(ids)] = ids
    lengths[i] = len(ids)
  return table, lengths


def _boundaries(config) -> np.ndarray:
  """Frame-axis sizes a batch may have: the configured boundaries up to max_frames, then max_frames (> 0,
  default_config.validate: every cached sequence has at most max_frames frames, so it fits the last one)."""
  d = config.data
  max_frames = int(d.max_frames)
  bounds = sorted({int(b) for b in d.bucket_boundaries if 0 < b < max_frames} | {max_frames})
  return np.asarray(bounds, np.int32)


def _bucket(length, bounds):
  """Index of the smallest boundary >= length (the last one for longer sequences)."""
  return tf.minimum(tf.reduce_sum(tf.cast(bounds < length, tf.int32)), len(bounds) - 1)


def _finish(batch, label_table, label_lengths, row_corpora, config, tokenizer, example_mask=None):
  """Padded example dicts -> the batch layout of the module docstring (adds labels and corpus numbers;
  row_corpora: i32[rows], _row_corpora)."""
  d = config.data
  points, visible, index = batch['points'], batch['visible'], batch['index']
  safe_index = tf.maximum(index, 0)
  label_len = tf.where(index >= 0, tf.gather(label_lengths, safe_index), 0)
  labels = tf.gather(label_table, safe_index)
  max_len = label_table.shape[1]
  multiple = int(d.get('label_pad_multiple', 0) or 0)
  if multiple:
    width = tf.minimum(max_len, (tf.reduce_max(label_len) + multiple - 1) // multiple * multiple)
    labels = labels[:, :width]
  label_mask = tf.range(tf.shape(labels)[1])[None, :] < label_len[:, None]
  labels = tf.where(label_mask, labels, tokenizer.pad_id)
  if d.get('visibility_channel', False):
    points = tf.concat([points, tf.cast(visible, tf.float32)[..., None]], -1)
  if example_mask is None:
    example_mask = index >= 0
  return {'poses': points, 'pose_mask': tf.sequence_mask(batch['length'], tf.shape(points)[1]),
          'labels': labels, 'label_mask': label_mask, 'example_mask': example_mask,
          'index': index, 'corpus': tf.where(index >= 0, tf.gather(row_corpora, safe_index), 0)}


def _with_length(ex):
  return {**ex, 'length': tf.shape(ex['points'])[0]}


_PADDING = {'points': 0.0, 'visible': False, 'index': -1, 'length': 0}


def _per_host_batch(global_batch: int, num_shards: int, what: str) -> int:
  if global_batch % num_shards:
    raise ValueError(f'{what}={global_batch} is not divisible by the number of hosts {num_shards}')
  return global_batch // num_shards


# ------------------------------------------------------------------------------------------------
# Train: a host-side batch plan (numpy) -> tf.data. Global batch k is a pure function of (seed, k).
# ------------------------------------------------------------------------------------------------
_SORT_POOL = 64            # batches per length-sorting pool (more: less padding, less varied batches)
# Rows of the global batch augmented by one spatial_numpy call (one call per row costs ~5x a whole batch's): the
# augmentation is the same on any number of hosts whose per-host batch is a multiple of it (else groups of
# gcd(_AUGMENT_GROUP, per-host batch) rows, the same among host counts with that gcd).
_AUGMENT_GROUP = 8
_FOREVER = 2 ** 62


@dataclasses.dataclass
class _HostExamples:
  """This host's training examples, every frame in one array (random access by example)."""
  points: np.ndarray    # f32[F + 1, K, C], F = total frames; example j is points[offsets[j]:offsets[j + 1]];
  visible: np.ndarray   # bool[F + 1, K]      frame F is all 0 / False: the source of padding frames
  offsets: np.ndarray   # i64[n + 1]
  index: np.ndarray     # i32[n], row of example j in the split

  @property
  def lengths(self) -> np.ndarray:
    return np.diff(self.offsets)


def _host_examples(cache: _Cache, shard_index: int, num_shards: int, max_in_memory: float) -> _HostExamples:
  """Reads the rows shard_index, shard_index + num_shards, ... of the cache into memory (training: all of them).

  A share of `max_in_memory` bytes or more (data.max_in_memory_gb; 0: always) goes to .npy files next to the
  cache (written once) and is memory-mapped instead, so a large corpus costs page cache rather than process memory.
  """
  k, c = cache.meta['num_points'], cache.meta['num_coords']
  index = np.arange(shard_index, cache.meta['num_examples'], num_shards, dtype=np.int32)
  lengths = np.asarray(cache.meta['lengths'], np.int64)[index]
  offsets = np.concatenate([[0], np.cumsum(lengths)])
  shape = (int(offsets[-1]) + 1, k, c)  # + the padding frame
  prefix = os.path.join(cache.path, f'train-host{shard_index:05d}-of-{num_shards:05d}')
  mapped = cache.meta['bytes'] / num_shards >= max_in_memory
  if mapped and os.path.exists(prefix + '.points.npy'):
    points = np.load(prefix + '.points.npy', mmap_mode='r')
    if points.shape == shape:  # (else written by an older layout: write it again)
      return _HostExamples(points, np.load(prefix + '.visible.npy', mmap_mode='r'), offsets, index)
  if mapped:
    tmp = f'{prefix}.tmp-{uuid.uuid4().hex[:8]}'
    points = np.lib.format.open_memmap(tmp + '.points.npy', 'w+', np.float32, shape)
    visible = np.lib.format.open_memmap(tmp + '.visible.npy', 'w+', np.bool_, shape[:2])
  else:
    points, visible = np.empty(shape, np.float32), np.empty(shape[:2], np.bool_)
  points[-1], visible[-1] = 0.0, False
  records = tf.data.TFRecordDataset(cache.files)
  if num_shards > 1:
    records = records.shard(num_shards, shard_index)
  # Parsed in batches, decoded with numpy: ~100x faster than one tf.data element per example. The cache holds its
  # rows in order, so a batch's examples are consecutive and fill one range of frames in one copy.
  for b in records.batch(256).map(lambda r: tf.io.parse_example(r, _RECORD_SPEC)).as_numpy_iterator():
    rows = (b['index'].astype(np.int64) - shard_index) // num_shards
    if np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
      runs = [(rows[0], rows[-1] + 1, b''.join(b['points']), b''.join(b['visible']))]
    else:  # (a cache written in another order: one example at a time)
      runs = [(j, j + 1, p, v) for j, p, v in zip(rows, b['points'], b['visible'])]
    for lo, hi, p, v in runs:
      points[offsets[lo]:offsets[hi]] = np.frombuffer(p, np.float32).reshape(-1, k, c)
      visible[offsets[lo]:offsets[hi]] = np.frombuffer(v, np.uint8).reshape(-1, k) > 0
  if mapped:
    points.flush()
    visible.flush()
    del points, visible
    os.replace(tmp + '.visible.npy', prefix + '.visible.npy')
    os.replace(tmp + '.points.npy', prefix + '.points.npy')  # last: its presence marks a complete pair
    return _host_examples(cache, shard_index, num_shards, max_in_memory)
  return _HostExamples(points, visible, offsets, index)


class _BatchPlan:
  """The infinite training stream as a plan: global batch k = f(seed, k), computed in O(epoch); a host gathers
  its rows `slots` of each.

  Epoch e (rng seeded by (seed, e)): a permutation of the split's examples, each with a random
  speed factor (-> frame count T') and frame-dropout mask; within pools of _SORT_POOL batches the
  examples are sorted by their final length and cut into batches (little padding), then the order
  of the epoch's batches is shuffled. A batch's frame axis is padded to the bucket boundary of its
  longest example, so only len(bounds) frame shapes exist. An epoch holds
  max(n, B) // B batches (the n mod B examples left out differ from epoch to epoch).
  """

  def __init__(self, examples: _HostExamples, batch: int, bounds: np.ndarray, seed: int, *,
               speed: float = 0.0, frame_dropout: float = 0.0, pool: int = _SORT_POOL, stream: int = 0,
               slots: tuple[int, int] | None = None):
    self.examples, self.batch, self.bounds, self.seed = examples, batch, bounds, seed
    self.slots = slots or (0, batch)  # the rows of each batch that __call__ gathers (this host's share)
    self.stream = stream  # data.mixture: the corpus's number (0: the first, or the only one)
    self.speed, self.frame_dropout, self.pool = speed, frame_dropout, pool
    self.num_examples = len(examples.index)
    self.batches_per_epoch = max(self.num_examples, batch) // batch
    self._epochs, self._lock = {}, threading.Lock()

  def epoch(self, e: int) -> dict:
    """Plan of epoch e: example i32[nb, B], src_len/new_len/out_len i32[nb, B], keep_start i64[nb, B]
    into keep bool[*], frames i32[nb]."""
    with self._lock:
      if e not in self._epochs:
        if len(self._epochs) >= 2:  # the stream only moves forward: keep the current and next epoch
          del self._epochs[min(self._epochs)]
        self._epochs[e] = self._make_epoch(e)
      return self._epochs[e]

  def _make_epoch(self, e: int) -> dict:
    rng = np.random.default_rng([self.seed % 2**63, e] + ([self.stream] if self.stream else []))
    n, b, nb = self.num_examples, self.batch, self.batches_per_epoch
    order = np.concatenate([rng.permutation(n) for _ in range(-(-b // n))])[:nb * b]
    src = self.examples.lengths[order]
    new = src.astype(np.float64)
    if self.speed > 0:
      new = np.round(new * np.exp(rng.uniform(-math.log1p(self.speed), math.log1p(self.speed), len(src))))
    new = np.clip(new, 1, self.bounds[-1]).astype(np.int64)
    keep_start = np.concatenate([[0], np.cumsum(new)[:-1]])
    keep = np.ones(int(new.sum()), bool)
    out = new
    if self.frame_dropout > 0:
      keep = rng.random(len(keep)) >= self.frame_dropout
      out = np.add.reduceat(keep, keep_start)
      for i in np.flatnonzero(out == 0):  # never drop every frame
        keep[keep_start[i]:keep_start[i] + new[i]] = True
      out = np.where(out == 0, new, out)
    slots = np.arange(nb * b)
    for p in range(0, nb * b, self.pool * b):  # sort by length within each pool
      slots[p:p + self.pool * b] = p + np.argsort(out[p:p + self.pool * b], kind='stable')
    slots = slots.reshape(nb, b)[rng.permutation(nb)]
    longest = out[slots].max(1)
    frames = self.bounds[np.minimum(np.searchsorted(self.bounds, longest), len(self.bounds) - 1)]
    return {'example': order[slots], 'src_len': src[slots], 'new_len': new[slots], 'out_len': out[slots],
            'keep_start': keep_start[slots], 'keep': keep, 'frames': frames.astype(np.int32)}

  def padding_fraction(self, e: int = 0) -> float:
    p = self.epoch(e)
    return 1.0 - float(p['out_len'].sum()) / float((p['frames'] * self.batch).sum())

  def __call__(self, step) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows `slots` of batch `step`: points f32[b, T, K, C], visible bool[b, T, K], index i32[b], length i32[b]
    (b = slots[1] - slots[0]; T: the whole batch's bucket, the same on every host)."""
    e, j = divmod(int(step), self.batches_per_epoch)
    p = self.epoch(e)
    ex = self.examples
    rows = slice(*self.slots)
    b = self.slots[1] - self.slots[0]
    src, new, out = p['src_len'][j, rows], p['new_len'][j, rows], p['out_len'][j, rows]  # [b] each
    example_ids = p['example'][j, rows]
    frames = int(p['frames'][j])
    # Resampled frame f of example i shows its source frame floor((f + 0.5) * T_i / T'_i) (as
    # augment.resample_frames): uniform, no repeats at speed 1. All B examples at once, as flat [sum T'].
    example = np.repeat(np.arange(b), new)
    f = np.arange(len(example)) - np.repeat(np.cumsum(new) - new, new)
    source = np.minimum(((f + 0.5) * np.repeat(src, new) / np.repeat(new, new)).astype(np.int64),
                        np.repeat(src - 1, new))
    kept = p['keep'][np.repeat(p['keep_start'][j, rows], new) + f]  # then the frame-dropout mask
    example, source = example[kept], source[kept]
    slot = np.arange(len(example)) - np.repeat(np.cumsum(out) - out, out)  # output frame within example
    # One gather per array: slots past an example's length read the all-zero padding frame.
    frame = np.full((b, frames), len(ex.points) - 1, np.int64)
    frame[example, slot] = ex.offsets[example_ids][example] + source
    return (ex.points.take(frame, axis=0), ex.visible.take(frame, axis=0), ex.index[example_ids],
            out.astype(np.int32))


class _Mixture:
  """Batch `step` of a weighted mixture of corpora's batch streams (data.mixture), a pure function of the step.

  The steps come in blocks of BLOCK: block b is a permutation, seeded by (seed, b), of m_c steps of each corpus c
  (m_c = its weight's share of BLOCK, largest remainders), so over each block the corpora get their weights'
  shares exactly. A corpus's stream is read densely, in order: the step at position p of block b reads its batch
  b * m_c + (its steps in the block before p), so each corpus still goes through its own epochs. O(BLOCK) per
  block, whatever the step: a resumed run gets the batches of an uninterrupted one.
  """
  BLOCK = 1000

  def __init__(self, streams: list, weights: list[float], seed: int, names: list[str]):
    self.streams, self.seed = streams, seed
    self.counts = _apportion(weights, self.BLOCK)
    if not all(self.counts):
      raise ValueError(f'data.mixture weights {dict(zip(names, weights))}: the smallest share is less than one '
                       f'training batch in {self.BLOCK}; raise it')
    self._blocks, self._lock = {}, threading.Lock()

  def block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
    """(corpus i32[BLOCK], its batch number in its own stream i64[BLOCK]) of the steps of block b."""
    with self._lock:
      if b not in self._blocks:
        if len(self._blocks) >= 2:  # the stream only moves forward
          del self._blocks[min(self._blocks)]
        rng = np.random.default_rng([self.seed % 2**63, b, len(self.streams)])
        corpus = rng.permutation(np.repeat(np.arange(len(self.counts)), self.counts))
        before = np.zeros(len(corpus), np.int64)  # steps of the same corpus earlier in the block
        for c in range(len(self.counts)):
          at = np.flatnonzero(corpus == c)
          before[at] = np.arange(len(at))
        counts = np.asarray(self.counts, np.int64)
        self._blocks[b] = (corpus.astype(np.int32), b * counts[corpus] + before)
      return self._blocks[b]

  def __call__(self, step):
    b, p = divmod(int(step), self.BLOCK)
    corpus, number = self.block(b)
    return self.streams[corpus[p]](number[p])


def _apportion(weights: list[float], total: int) -> list[int]:
  """Integers proportional to `weights` that sum to `total` (largest remainders)."""
  exact = np.asarray(weights, np.float64) / np.sum(weights) * total
  counts = np.floor(exact).astype(np.int64)
  counts[np.argsort(-(exact - counts), kind='stable')[:total - counts.sum()]] += 1
  return counts.tolist()


def _shifted(plan: '_BatchPlan', offset: int):
  """plan's batches with `index` moved by `offset` (a mixture corpus's first row in the split's rows)."""
  if not offset:
    return plan

  def batch(step):
    points, visible, index, length = plan(step)
    return points, visible, index + np.int32(offset), length
  return batch


def _corpus_rows(caches) -> tuple[list, dict]:
  """The rows of a split's corpora, one corpus after the other (a mixture's uids as 'corpus/uid'), and
  {corpus: (start, stop)} of each corpus's rows ({} without data.mixture)."""
  rows, ranges = [], {}
  for source, cache in caches:
    start = len(rows)
    rows += [dataclasses.replace(r, uid=_uid(source.corpus, r.uid)) for r in cache.rows]
    if source.corpus:
      ranges[source.corpus] = (start, len(rows))
  return rows, ranges


def _row_corpora(config, num_rows: int, ranges: dict) -> np.ndarray:
  """i32[rows]: each row's corpus number (contract.corpus_names: sorted data.mixture names), from the
  {corpus: (start, stop)} of _corpus_rows; 0 without a mixture."""
  numbers = {name: i for i, name in enumerate(contract.corpus_names(config))}
  out = np.zeros(num_rows, np.int32)
  for name, (start, stop) in ranges.items():
    out[start:stop] = numbers[name]
  return out


def _point_shape(caches) -> tuple[int, int]:
  """(K, C) of a split's caches, the same for every corpus (one keypoint preset reads each one's layout)."""
  shapes = {(s.corpus, c.meta['num_points'], c.meta['num_coords']) for s, c in caches}
  if len({shape[1:] for shape in shapes}) > 1:
    raise ValueError(f'the corpora of data.mixture give poses of different shapes (corpus, K, C): {sorted(shapes)}')
  return next(iter(shapes))[1:]


def _train_split(config, tokenizer, caches, shard_index, num_shards) -> SplitData:
  """caches: [(_Source, _Cache)] of the corpora (one without data.mixture)."""
  d, t = config.data, config.training
  rows, corpora = _corpus_rows(caches)
  table, lengths = _label_table(rows, tokenizer, d.max_target_length)
  row_corpora = _row_corpora(config, len(rows), corpora)
  batch = _per_host_batch(t.batch_size, num_shards, 'training.batch_size')
  bounds = _boundaries(config)
  k, c = _point_shape(caches)
  aug = d.get('augmentations', {}) if d.augment else {}
  mirror_perm = None
  if d.augment and aug.get('mirror', False):
    names = kp_lib.preset(d.keypoints) if d.keypoints else None
    if names is None:
      raise ValueError('augmentations.mirror needs a keypoint preset (data.keypoints)')
    mirror_perm = kp_lib.mirror_permutation(names)
  # One global plan, whatever the number of hosts: global batch `step` is a function of (seed, step) alone and
  # host h takes its rows [h * batch, (h + 1) * batch), so a run resumed on another number of hosts sees the same
  # data. Every host holds every training example (memory-mapped above data.max_in_memory_gb); the spatial
  # augmentation is drawn per group of _AUGMENT_GROUP rows of the global batch, seeded by (seed, step, group).
  seed = int(t.seed) * 1_000_003
  slots = (shard_index * batch, (shard_index + 1) * batch)
  max_in_memory = float(d.get('max_in_memory_gb', 2.0)) * 2**30
  streams, offset = [], 0
  for i, (source, cache) in enumerate(caches):
    plan = _BatchPlan(_host_examples(cache, 0, 1, max_in_memory), t.batch_size, bounds, seed, stream=i,
                      speed=aug.get('speed', 0.0), frame_dropout=aug.get('frame_dropout', 0.0), slots=slots)
    logging.info('train%s (host %d): %d examples, %d batches of %d per epoch (this host: rows %d-%d of each), '
                 'frame shapes %s, %.1f%% padding frames%s', f' {source.corpus}' if source.corpus else '',
                 shard_index, plan.num_examples, plan.batches_per_epoch, t.batch_size, slots[0], slots[1] - 1,
                 sorted(set(plan.epoch(0)['frames'].tolist())), 100 * plan.padding_fraction(0),
                 f', weight {source.weight:g}' if source.corpus else '')
    streams.append(_shifted(plan, offset))
    offset += cache.meta['num_examples']
  batch_fn = stream = streams[0] if len(streams) == 1 else _Mixture(
      streams, [s.weight for s, _ in caches], seed, [s.corpus for s, _ in caches])
  if aug:
    spatial = functools.partial(
        augment.spatial_numpy, rotate=aug.get('rotate', 0.0), scale=aug.get('scale', 0.0),
        shear=aug.get('shear', 0.0), noise=aug.get('noise', 0.0), mirror_perm=mirror_perm, inplace=True,
        yaw=aug.get('yaw', 0.0))

    group = math.gcd(_AUGMENT_GROUP, batch)

    def batch_fn(step):
      """The plan's batch `step` augmented in place (its fresh arrays), `group` rows at a time, each group seeded
      by (seed, step, its number in the global batch): the same augmentation whichever host holds the rows."""
      points, visible, index, length = stream(step)
      for i in range(0, len(points), group):
        rows = slice(i, i + group)
        points[rows], visible[rows] = spatial(points[rows], visible[rows], (seed, int(step), (slots[0] + i) // group))
      return points, visible, index, length

  def make(start_step: int) -> tf.data.Dataset:
    table_t, lengths_t, corpora_t = tf.constant(table), tf.constant(lengths), tf.constant(row_corpora)

    def load(step):
      points, visible, index, length = tf.numpy_function(
          batch_fn, [step], (tf.float32, tf.bool, tf.int32, tf.int32), stateful=False)
      points.set_shape([batch, None, k, c])
      visible.set_shape([batch, None, k])
      index.set_shape([batch])
      length.set_shape([batch])
      b = {'points': points, 'visible': visible, 'index': index, 'length': length}
      return _finish(b, table_t, lengths_t, corpora_t, config, tokenizer)

    ds = tf.data.Dataset.range(int(start_step), _FOREVER)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)  # ordered: options.deterministic
    return ds.prefetch(2).with_options(_options())

  return SplitData('train', rows, _skipped(caches), batch, len(rows), None,
                   pose_feature_shape(config) if d.keypoints else (k, c + _vis(config)), make, corpora)


def _skipped(caches) -> sources.SkipReport:
  """The skipped rows of a split's corpora (a mixture's uids as 'corpus/uid')."""
  return sources.merge_skips(*({reason: [_uid(s.corpus, u) for u in uids] for reason, uids in c.meta['skipped'].items()}
                               for s, c in caches))


def _eval_split(config, tokenizer, caches, split, shard_index, num_shards) -> SplitData:
  """caches: [(_Source, _Cache)] of the corpora (one without data.mixture). A batch holds the rows of one corpus."""
  d = config.data
  rows, corpora = _corpus_rows(caches)
  table, lengths = _label_table(rows, tokenizer, d.max_target_length)
  row_corpora = _row_corpora(config, len(rows), corpora)
  batch = _per_host_batch(config.training.eval_batch_size, num_shards, 'training.eval_batch_size')
  bounds = _boundaries(config)
  k, c = _point_shape(caches)
  # Per corpus: every host yields the batches of the host with the most rows (the first), the others fill up.
  sizes = [cache.meta['num_examples'] for _, cache in caches]
  per_corpus = [math.ceil(math.ceil(n / num_shards) / batch) for n in sizes]
  fillers = [m - math.ceil(len(range(shard_index, n, num_shards)) / batch) for n, m in zip(sizes, per_corpus)]
  num_batches = sum(per_corpus)

  def make(start_step: int = 0) -> tf.data.Dataset:
    del start_step
    table_t, lengths_t, bounds_t = tf.constant(table), tf.constant(lengths), tf.constant(bounds)
    corpora_t = tf.constant(row_corpora)
    parts = [_eval_batches(cache, offset, n_fill, batch, bounds_t, bounds, shard_index, num_shards,
                           float(d.get('max_in_memory_gb', 2.0)) * 2**30)
             for (_, cache), offset, n_fill in zip(caches, np.cumsum([0] + sizes[:-1]).tolist(), fillers)]
    ds = functools.reduce(lambda a, b: a.concatenate(b), parts)
    ds = ds.map(lambda b: _finish(b, table_t, lengths_t, corpora_t, config, tokenizer))
    return ds.prefetch(2).with_options(_options())

  return SplitData(split, rows, _skipped(caches), batch, len(rows), num_batches,
                   pose_feature_shape(config) if d.keypoints else (k, c + _vis(config)), make, corpora)


def _eval_batches(cache: _Cache, offset: int, fillers: int, batch: int, bounds_t, bounds, shard_index: int,
                  num_shards: int, max_in_memory: float) -> tf.data.Dataset:
  """One corpus's eval batches (index moved by `offset`, its first row in the split), then `fillers` batches of
  padding rows; the frame axis of each padded to the bucket boundary of its longest example."""
  k, c = cache.meta['num_points'], cache.meta['num_coords']
  ds = _records(cache, shard_index, num_shards, max_in_memory).map(_with_length)
  if offset:
    ds = ds.map(lambda ex: {**ex, 'index': ex['index'] + offset})
  ds = ds.padded_batch(batch, padding_values=_PADDING)

  def pad(b):
    n, t_max = tf.shape(b['index'])[0], tf.reduce_max(b['length'])
    size = bounds_t[_bucket(t_max, bounds_t)]
    rows_pad, frames_pad = batch - n, size - tf.shape(b['points'])[1]
    return {'points': tf.pad(b['points'], [[0, rows_pad], [0, frames_pad], [0, 0], [0, 0]]),
            'visible': tf.pad(b['visible'], [[0, rows_pad], [0, frames_pad], [0, 0]]),
            'index': tf.pad(b['index'], [[0, rows_pad]], constant_values=-1),
            'length': tf.pad(b['length'], [[0, rows_pad]])}

  ds = ds.map(pad)
  if fillers > 0:
    filler = {'points': tf.zeros([batch, int(bounds[0]), k, c]),
              'visible': tf.zeros([batch, int(bounds[0]), k], tf.bool),
              'index': -tf.ones([batch], tf.int32), 'length': tf.zeros([batch], tf.int32)}
    ds = ds.concatenate(tf.data.Dataset.from_tensors(filler).repeat(fillers))
  return ds


def _vis(config) -> int:
  return int(bool(config.data.get('visibility_channel', False)))


def _options() -> tf.data.Options:
  opts = tf.data.Options()
  opts.deterministic = True
  # A private pool of half this process's cores (at least 2): jax trains on the same cores (2 on a small
  # CPU host, ~8 on a 16-core GPU host, where batches are built in parallel); one thread per op.
  opts.threading.private_threadpool_size = max(2, _num_cpus() // 2)
  opts.threading.max_intra_op_parallelism = 1
  return opts


def _num_cpus() -> int:
  """Cores this process may run on (its affinity mask where the OS has one)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 2
