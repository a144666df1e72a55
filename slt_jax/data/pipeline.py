"""tf.data input pipeline: CSV + .pose files -> cached shards -> padded, bucketed numpy batches.

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

How: each split is preprocessed once (pose_io in Python) into TFRecord shards under
`config.data.cache_dir or WORKDIR/cache`, in a folder keyed by a hash of the CSV bytes, pose_dir and
the pose options (a changed CSV or option builds a new cache; rewriting .pose files in place does not:
delete the folder). Then pure tf.data: train = shard per host -> in-memory cache -> repeat ->
seeded shuffle -> per-example speed/frame-dropout -> bucketing by length (`bucket_boundaries`; the
frame axis is padded to its bucket's boundary, so few shapes ever reach jit) -> per-batch spatial
augmentation -> prefetch; infinite. Eval = same shards, fixed order, no augmentation, frame axis padded
to the bucket boundary of the batch's longest example, last batch filled to B with example_mask False;
every host yields the same number of batches.
Per-host split: `shard_index, num_shards` (default jax.process_index() / process_count()); host h
reads rows h, h + n, h + 2n, ... of each split.
"""
import dataclasses
import hashlib
import json
import math
import os
import shutil
import uuid
from typing import Callable, Iterator

from absl import logging
import numpy as np
import tensorflow as tf

from slt_jax.data import augment
from slt_jax.data import keypoints as kp_lib
from slt_jax.data import pose_io
from slt_jax.data import sources

SPLITS = ('train', 'val', 'test')
DEVICE_KEYS = ('poses', 'pose_mask', 'labels', 'label_mask', 'example_mask', 'index')
_SHARD_BYTES = 256 << 20     # target size of one TFRecord shard
_CACHE_IN_MEMORY = 2 << 30   # keep a host's split in RAM (tf.data cache) below this many bytes


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

  def dataset(self, start_step: int = 0) -> tf.data.Dataset:
    """The tf.data.Dataset; for train, `start_step` reseeds the shuffle/augmentation on resume."""
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

  splits: names among ('train', 'val', 'test') whose `config.data.<name>_path` is set (default: all
    that are set). Writes WORKDIR/skipped_rows.json ({split: {reason: [uid]}}) from host 0.
  """
  if shard_index is None or num_shards is None:
    import jax  # pylint: disable=g-import-not-at-top
    shard_index, num_shards = jax.process_index(), jax.process_count()
  d = config.data
  splits = [s for s in (splits or SPLITS) if d.get(f'{s}_path', '')]
  options = pose_io.PoseOptions.from_config(d)
  cache_root = d.get('cache_dir', '') or os.path.join(workdir, 'cache')
  out, reports = {}, {}
  for split in splits:
    cache = _build_cache(split, d[f'{split}_path'], d.pose_dir, options, cache_root,
                         d.get('text_column', 'text'), d.get('num_workers', 1))
    reports[split] = cache.meta['skipped']
    if split == 'train':
      out[split] = _train_split(config, tokenizer, cache, shard_index, num_shards)
    else:
      out[split] = _eval_split(config, tokenizer, cache, split, shard_index, num_shards)
  if shard_index == 0 and reports:
    sources.write_skip_report(os.path.join(workdir, 'skipped_rows.json'), reports)
  return out


# ------------------------------------------------------------------------------------------------
# Cache: one folder of TFRecord shards + meta.json per (split, CSV, pose options).
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
    return [sources.Row(uid=r['uid'], text=r['text'],
                        pose_path=os.path.join(self.meta['pose_dir'], r['uid'] + '.pose'),
                        extra=r.get('extra', {})) for r in self.meta['rows']]


def _cache_key(csv_path, pose_dir, options: pose_io.PoseOptions, text_column) -> str:
  h = hashlib.sha256()
  with open(csv_path, 'rb') as f:
    h.update(f.read())
  h.update(json.dumps([os.path.abspath(pose_dir), text_column, options.fingerprint()]).encode())
  return h.hexdigest()[:16]


def _build_cache(split, csv_path, pose_dir, options, cache_root, text_column, num_workers) -> _Cache:
  path = os.path.join(cache_root, f'{split}-{_cache_key(csv_path, pose_dir, options, text_column)}')
  meta_path = os.path.join(path, 'meta.json')
  if os.path.exists(meta_path):
    with open(meta_path) as f:
      logging.info('%s: using cached examples in %s', split, path)
      return _Cache(path, json.load(f))

  rows, arrays, skipped = sources.load_split(csv_path, pose_dir, options, text_column=text_column,
                                             num_workers=num_workers, split=split)
  if not rows:
    raise ValueError(f'{split}: no usable rows in {csv_path} (pose_dir {pose_dir}); skipped: '
                     f'{ {k: len(v) for k, v in skipped.items() if v} }')
  # Write into a private folder, then rename: concurrent hosts never see a half-written cache.
  tmp = f'{path}.tmp-{uuid.uuid4().hex[:8]}'
  os.makedirs(tmp)
  total = sum(a.points.nbytes + a.visible.nbytes for a in arrays)
  num_files = max(1, math.ceil(total / _SHARD_BYTES))
  per_file = math.ceil(len(arrays) / num_files)
  files = [f'data-{i:05d}-of-{num_files:05d}.tfrecord' for i in range(num_files)]
  for i, name in enumerate(files):
    with tf.io.TFRecordWriter(os.path.join(tmp, name)) as writer:
      for index in range(i * per_file, min(len(arrays), (i + 1) * per_file)):
        writer.write(_serialize(index, arrays[index]))
  k, c = arrays[0].points.shape[1:]
  meta = {'split': split, 'csv_path': os.path.abspath(csv_path),
          'pose_dir': os.path.abspath(pose_dir), 'options': dataclasses.asdict(options),
          'num_examples': len(rows), 'num_points': int(k), 'num_coords': int(c),
          'lengths': [int(a.points.shape[0]) for a in arrays], 'bytes': int(total), 'files': files,
          'rows': [{'uid': r.uid, 'text': r.text, 'extra': r.extra} for r in rows],
          'skipped': skipped}
  with open(os.path.join(tmp, 'meta.json'), 'w') as f:
    json.dump(meta, f, ensure_ascii=False)
  try:
    os.rename(tmp, path)
  except OSError:  # another process won the race: use its copy
    shutil.rmtree(tmp, ignore_errors=True)
  return _Cache(path, meta)


def _serialize(index: int, a: pose_io.PoseArrays) -> bytes:
  def b(x):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[x.tobytes()]))

  def i(x):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[x]))

  return tf.train.Example(features=tf.train.Features(feature={
      'index': i(index), 'length': i(a.points.shape[0]),
      'points': b(np.ascontiguousarray(a.points, np.float32)),
      'visible': b(np.ascontiguousarray(a.visible, np.uint8))})).SerializeToString()


def _records(cache: _Cache, shard_index: int, num_shards: int) -> tf.data.Dataset:
  """This host's examples as {points f32[T, K, C], visible bool[T, K], index i32}, in row order."""
  k, c = cache.meta['num_points'], cache.meta['num_coords']
  spec = {'index': tf.io.FixedLenFeature([], tf.int64), 'length': tf.io.FixedLenFeature([], tf.int64),
          'points': tf.io.FixedLenFeature([], tf.string),
          'visible': tf.io.FixedLenFeature([], tf.string)}

  def parse(record):
    ex = tf.io.parse_single_example(record, spec)
    t = tf.cast(ex['length'], tf.int32)
    points = tf.reshape(tf.io.decode_raw(ex['points'], tf.float32), [t, k, c])
    visible = tf.reshape(tf.io.decode_raw(ex['visible'], tf.uint8), [t, k]) > 0
    return {'points': points, 'visible': visible, 'index': tf.cast(ex['index'], tf.int32)}

  ds = tf.data.TFRecordDataset(cache.files)  # sequential read keeps row order across shards
  if num_shards > 1:
    ds = ds.shard(num_shards, shard_index)
  ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
  if cache.meta['bytes'] / num_shards < _CACHE_IN_MEMORY:
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
  """Frame-axis sizes a batch may have: the configured boundaries up to max_frames, then max_frames."""
  d = config.data
  max_frames = int(d.max_frames) if d.max_frames else max(d.bucket_boundaries)
  bounds = sorted({int(b) for b in d.bucket_boundaries if 0 < b < max_frames} | {max_frames})
  return np.asarray(bounds, np.int32)


def _bucket(length, bounds):
  """Index of the smallest boundary >= length (the last one for longer sequences)."""
  return tf.minimum(tf.reduce_sum(tf.cast(bounds < length, tf.int32)), len(bounds) - 1)


def _finish(batch, label_table, label_lengths, config, tokenizer, example_mask=None):
  """Padded example dicts -> the batch layout of the module docstring (adds labels)."""
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
          'index': index}


def _with_length(ex):
  return {**ex, 'length': tf.shape(ex['points'])[0]}


_PADDING = {'points': 0.0, 'visible': False, 'index': -1, 'length': 0}


def _per_host_batch(global_batch: int, num_shards: int, what: str) -> int:
  if global_batch % num_shards:
    raise ValueError(f'{what}={global_batch} is not divisible by the number of hosts {num_shards}')
  return global_batch // num_shards


def _train_split(config, tokenizer, cache: _Cache, shard_index, num_shards) -> SplitData:
  d, t = config.data, config.training
  rows = cache.rows
  table, lengths = _label_table(rows, tokenizer, d.max_target_length)
  batch = _per_host_batch(t.batch_size, num_shards, 'training.batch_size')
  bounds = _boundaries(config)
  k, c = cache.meta['num_points'], cache.meta['num_coords']
  n_host = len(range(shard_index, len(rows), num_shards))
  aug = d.get('augmentations', {}) if d.augment else {}
  mirror_perm = None
  if d.augment and aug.get('mirror', False):
    names = kp_lib.preset(d.keypoints) if d.keypoints else None
    if names is None:
      raise ValueError('augmentations.mirror needs a keypoint preset (data.keypoints)')
    mirror_perm = kp_lib.mirror_permutation(names)

  def make(start_step: int) -> tf.data.Dataset:
    seed = int(t.seed) * 1_000_003 + int(start_step)
    table_t, lengths_t, bounds_t = tf.constant(table), tf.constant(lengths), tf.constant(bounds)
    ds = _records(cache, shard_index, num_shards).repeat()
    ds = ds.shuffle(max(1, min(n_host, int(d.get('shuffle_buffer', 10000)))), seed=seed,
                    reshuffle_each_iteration=True)
    ds = ds.enumerate()

    def temporal(i, ex):
      points, visible = ex['points'], ex['visible']
      if aug:
        points, visible = augment.resample_frames(
            points, visible, tf.stack([tf.constant(seed, tf.int64), i]),
            speed=aug.get('speed', 0.0), frame_dropout=aug.get('frame_dropout', 0.0),
            max_frames=int(bounds[-1]))
      return _with_length({'points': points, 'visible': visible, 'index': ex['index']})

    ds = ds.map(temporal, num_parallel_calls=tf.data.AUTOTUNE)

    def reduce(key, window):
      size = tf.cast(bounds_t[key], tf.int64)
      shapes = {'points': tf.stack([size, k, c]), 'visible': tf.stack([size, k]),
                'index': tf.constant([], tf.int64), 'length': tf.constant([], tf.int64)}
      return window.padded_batch(batch, padded_shapes=shapes,
                                 padding_values=_PADDING, drop_remainder=True)

    ds = ds.group_by_window(key_func=lambda ex: tf.cast(_bucket(ex['length'], bounds_t), tf.int64),
                            reduce_func=reduce, window_size=batch)
    ds = ds.enumerate()

    def finish(i, b):
      if aug:
        points, visible = augment.spatial(
            b['points'], b['visible'], tf.stack([tf.constant(seed + 1, tf.int64), i]),
            rotate=aug.get('rotate', 0.0), scale=aug.get('scale', 0.0),
            shear=aug.get('shear', 0.0), noise=aug.get('noise', 0.0), mirror_perm=mirror_perm)
        b = {**b, 'points': points, 'visible': visible}
      return _finish(b, table_t, lengths_t, config, tokenizer)

    ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(2).with_options(_options())

  return SplitData('train', rows, cache.meta['skipped'], batch, len(rows), None,
                   pose_feature_shape(config) if d.keypoints else (k, c + _vis(config)), make)


def _eval_split(config, tokenizer, cache: _Cache, split, shard_index, num_shards) -> SplitData:
  d = config.data
  rows = cache.rows
  table, lengths = _label_table(rows, tokenizer, d.max_target_length)
  batch = _per_host_batch(config.training.eval_batch_size, num_shards, 'training.eval_batch_size')
  bounds = _boundaries(config)
  k, c = cache.meta['num_points'], cache.meta['num_coords']
  n_host = len(range(shard_index, len(rows), num_shards))
  num_batches = math.ceil(math.ceil(len(rows) / num_shards) / batch)
  fillers = num_batches - math.ceil(n_host / batch)

  def make(start_step: int = 0) -> tf.data.Dataset:
    del start_step
    table_t, lengths_t, bounds_t = tf.constant(table), tf.constant(lengths), tf.constant(bounds)
    ds = _records(cache, shard_index, num_shards).map(_with_length)
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
    ds = ds.map(lambda b: _finish(b, table_t, lengths_t, config, tokenizer))
    return ds.prefetch(2).with_options(_options())

  return SplitData(split, rows, cache.meta['skipped'], batch, len(rows), num_batches,
                   pose_feature_shape(config) if d.keypoints else (k, c + _vis(config)), make)


def _vis(config) -> int:
  return int(bool(config.data.get('visibility_channel', False)))


def _options() -> tf.data.Options:
  opts = tf.data.Options()
  opts.deterministic = True
  # Small private pools: jax trains on the same 2+ cores.
  opts.threading.private_threadpool_size = 2
  opts.threading.max_intra_op_parallelism = 1
  return opts
