"""CSV sources, the tf.data pipeline and the augmentations, on the real DGS pairs (skipped where absent)."""
import csv
import shutil

import numpy as np
import pytest
import tensorflow as tf

from slt_jax import default_config
from slt_jax.data import augment
from slt_jax.data import keypoints as kp_lib
from slt_jax.data import pipeline
from slt_jax.data import pose_io
from slt_jax.data import sources
from slt_jax.data import tokenizer as tok_lib


@pytest.fixture(scope='module')
def dgs(real_data_dir):
  return real_data_dir / 'fluent-pose-synthesis'


# --- sources ---------------------------------------------------------------------------------------
def test_dgs_csv_and_empty_text_skipped(dgs):
  rows, skipped = sources.read_csv(dgs / 'train.csv', dgs / 'sample_dataset')
  assert len(rows) == 15
  assert skipped['empty_text'] == ['train/train_7_original']
  assert rows[0].uid == 'train/train_1_original' and rows[0].text.startswith('On Lanzarote')
  assert rows[0].extra['text_de'].startswith('Auf Lanzarote')
  rows, arrays, skipped = sources.load_split(dgs / 'test.csv', dgs / 'sample_dataset', pose_io.PoseOptions())
  assert len(rows) == len(arrays) == 16 and not any(skipped.values())


def test_bad_columns_error_names_found_columns(tmp_path):
  path = tmp_path / 'bad.csv'
  path.write_text('id,sentence\na,b\n')
  with pytest.raises(sources.SourceError, match=r"'uid' or 'video_path'.*'text'.*\['id', 'sentence'\]"):
    sources.read_csv(path, tmp_path)
  path.write_text('uid,sentence\na,b\n')
  with pytest.raises(sources.SourceError, match=r"missing column\(s\) 'text'; found columns \['uid', 'sentence'\]"):
    sources.read_csv(path, tmp_path)


def test_skips_missing_and_unreadable_poses(dgs, tmp_path):
  shutil.copy(dgs / 'sample_dataset/test/test_1_original.pose', tmp_path / 'good.pose')
  (tmp_path / 'clips').mkdir()
  (tmp_path / 'clips/bad.pose').write_bytes(b'garbage')
  path = tmp_path / 'rows.csv'
  with open(path, 'w', newline='') as f:
    w = csv.writer(f, delimiter='|')
    w.writerows([['video_path', 'text'], ['good.mp4', 'hello'], ['clips/bad.mp4', 'x'],
                 ['nowhere.mp4', 'y'], ['good.mp4', ' ']])
  rows, arrays, skipped = sources.load_split(path, tmp_path, pose_io.PoseOptions())
  assert [r.uid for r in rows] == ['good'] and len(arrays) == 1
  assert skipped['missing_pose'] == ['nowhere']
  assert skipped['unreadable_pose'] == ['clips/bad']
  assert skipped['empty_text'] == ['good']


# --- pipeline --------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def config(dgs):
  c = default_config.get_config()
  c.data.train_path = str(dgs / 'train.csv')
  c.data.val_path = str(dgs / 'test.csv')
  c.data.pose_dir = str(dgs / 'sample_dataset')
  c.data.max_target_length = 24
  c.data.augmentations.mirror = True
  c.training.batch_size = 4
  c.training.eval_batch_size = 6
  return c


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('workdir'))


@pytest.fixture(scope='module')
def tokenizer(config, workdir):
  return tok_lib.get_tokenizer(config, workdir)


@pytest.fixture(scope='module')
def splits(config, tokenizer, workdir):
  return pipeline.make_datasets(config, tokenizer, workdir, shard_index=0, num_shards=1)


def _check_batch(batch, tokenizer, batch_size, k, c):
  b, t = batch['pose_mask'].shape
  assert b == batch_size
  assert batch['poses'].shape == (b, t, k, c) and batch['poses'].dtype == np.float32
  assert batch['labels'].dtype == np.int32 and batch['index'].dtype == np.int32
  assert not batch['poses'][~batch['pose_mask']].any()  # padding frames are zero
  for i in range(b):
    n = batch['pose_mask'][i].sum()
    assert batch['pose_mask'][i, :n].all()  # real frames come first
    if batch['example_mask'][i]:
      m = batch['label_mask'][i].sum()
      assert m >= 2 and batch['label_mask'][i, :m].all()
      assert batch['labels'][i, m - 1] == tokenizer.eos_id
      assert (batch['labels'][i, m:] == tokenizer.pad_id).all()


def test_train_batches_shapes_masks_buckets(splits, config, tokenizer, workdir):
  train = splits['train']
  assert len(train.rows) == 15 and train.skipped['empty_text'] == ['train/train_7_original']
  assert tf.io.gfile.exists(f'{workdir}/skipped_rows.json')
  k, c = pipeline.pose_feature_shape(config)
  assert train.pose_shape == (k, c) == (50, 3)
  bounds = list(pipeline._boundaries(config))
  it = train.iterator()
  seen = set()
  for _ in range(12):  # more than an epoch: train repeats
    batch = next(it)
    _check_batch(batch, tokenizer, 4, k, c)
    t = batch['pose_mask'].shape[1]
    assert t in bounds
    lengths = batch['pose_mask'].sum(1)
    prev = bounds[bounds.index(t) - 1] if t != bounds[0] else 0
    assert (lengths <= t).all() and lengths.max() > prev  # the batch's longest example sets its bucket
    assert batch['example_mask'].all()
    seen.update(batch['index'].tolist())
    for labels, i in zip(batch['labels'], batch['index']):
      assert tokenizer.decode(labels) == train.rows[i].text
  assert seen <= set(range(15)) and len(seen) > 8
  # Same seed and start_step: same stream.
  a, b = next(train.iterator(start_step=3)), next(train.iterator(start_step=3))
  np.testing.assert_array_equal(a['poses'], b['poses'])


def test_eval_batches_fixed_order_padded(splits, tokenizer):
  val = splits['val']
  batches = list(val.iterator())
  assert len(batches) == val.num_batches == 3  # 16 rows / 6
  for batch in batches:
    _check_batch(batch, tokenizer, 6, 50, 3)
  index = np.concatenate([b['index'] for b in batches])
  mask = np.concatenate([b['example_mask'] for b in batches])
  np.testing.assert_array_equal(index[mask], np.arange(16))
  assert mask.sum() == 16 and (index[~mask] == -1).all()
  assert not batches[-1]['poses'][~batches[-1]['example_mask']].any()
  again = list(val.iterator())
  for x, y in zip(batches, again):
    np.testing.assert_array_equal(x['poses'], y['poses'])
  # No augmentation: the real frames are the file's.
  arr = pose_io.read_pose(val.rows[0].pose_path, pose_io.PoseOptions(max_frames=256))
  np.testing.assert_allclose(batches[0]['poses'][0, :arr.points.shape[0]], arr.points, rtol=1e-6)


def test_per_host_shards(config, tokenizer, workdir):
  hosts = [pipeline.make_datasets(config, tokenizer, workdir, splits=['val'], shard_index=h, num_shards=2)['val']
           for h in (0, 1)]
  per_host = [list(h.iterator()) for h in hosts]
  assert len(per_host[0]) == len(per_host[1]) == hosts[0].num_batches == 3  # 8 rows per host / 3
  seen = [np.concatenate([b['index'][b['example_mask']] for b in batches]) for batches in per_host]
  np.testing.assert_array_equal(seen[0], np.arange(0, 16, 2))
  np.testing.assert_array_equal(seen[1], np.arange(1, 16, 2))
  assert pipeline.make_datasets(config, tokenizer, workdir, splits=['train'], shard_index=1,
                                num_shards=2)['train'].batch_size == 2


def test_cache_is_reused(config, tokenizer, workdir, monkeypatch, splits):
  del splits  # built the cache
  def fail(*args, **kwargs):
    raise AssertionError('cache not reused')
  monkeypatch.setattr(sources, 'load_split_chunked', fail)
  monkeypatch.setattr(sources, 'read_chunk', fail)
  pipeline.make_datasets(config, tokenizer, workdir, shard_index=0, num_shards=1)


# --- augmentations ---------------------------------------------------------------------------------
def _example(t=40, k=50, c=3, seed=0):
  rng = np.random.default_rng(seed)
  visible = rng.random((t, k)) > 0.2
  points = np.where(visible[..., None], rng.normal(size=(t, k, c)), 0).astype(np.float32)
  return points, visible


def test_resample_frames_keeps_point_shapes_and_masks():
  points, visible = _example()
  seed = tf.constant([1, 2], tf.int64)
  p, v = augment.resample_frames(points, visible, seed)
  np.testing.assert_array_equal(p, points)  # no speed change, no dropout: identity
  for s in range(5):
    p, v = augment.resample_frames(points, visible, tf.constant([s, 0], tf.int64), speed=0.5,
                                   frame_dropout=0.3, max_frames=48)
    assert p.shape[1:] == points.shape[1:] and v.shape[1:] == visible.shape[1:]
    assert 1 <= p.shape[0] <= 48 and p.shape[0] == v.shape[0]
    assert not np.asarray(p)[~np.asarray(v)].any()
    # every output frame is a source frame
    src = {f.tobytes() for f in points}
    assert all(f.tobytes() in src for f in np.asarray(p))


def test_spatial_keeps_shapes_masks_and_padding():
  points, visible = _example()
  batch_p = np.stack([points, np.zeros_like(points)])
  batch_v = np.stack([visible, np.zeros_like(visible)])
  p, v = augment.spatial(batch_p, batch_v, tf.constant([3, 4], tf.int64), rotate=0.2, scale=0.2,
                         shear=0.1, noise=0.01)
  p, v = np.asarray(p), np.asarray(v)
  assert p.shape == batch_p.shape
  np.testing.assert_array_equal(v, batch_v)
  assert not p[~v].any() and p[v].any()
  assert not np.allclose(p[0][visible], points[visible])


def test_noise_is_gaussian_independent_and_keeps_masks():
  rng = np.random.default_rng(0)
  points = rng.uniform(0.5, 1.0, (8, 40, 50, 3)).astype(np.float32)
  visible = rng.random((8, 40, 50)) > 0.2
  points[~visible] = 0.0
  p, v = augment.spatial_numpy(points, visible, (1, 2), noise=0.01)
  np.testing.assert_array_equal(v, visible)
  assert not p[~visible].any()
  delta = (p - points)[visible]  # [M, 3]
  assert abs(delta.std() / 0.01 - 1) < 0.02 and abs(delta.mean()) < 3e-4
  assert abs(np.corrcoef(delta[:-1, 0], delta[1:, 0])[0, 1]) < 0.02  # neighbours independent
  per_example = (p - points).reshape(8, -1)
  assert not np.allclose(per_example[0], per_example[1])
  np.testing.assert_array_equal(augment.spatial_numpy(points, visible, (1, 2), noise=0.01)[0], p)
  assert not np.array_equal(augment.spatial_numpy(points, visible, (1, 3), noise=0.01)[0], p)


def test_mirror_swaps_named_points():
  names = kp_lib.preset('hands_body')
  perm = kp_lib.mirror_permutation(names)
  points, visible = _example(k=len(names))
  p, v = augment.spatial(points[None], visible[None], tf.constant([0, 0], tf.int64), mirror_perm=perm,
                         mirror_prob=1.0)
  p, v = np.asarray(p)[0], np.asarray(v)[0]
  pairs = [((kp_lib.POSE, 'LEFT_WRIST'), (kp_lib.POSE, 'RIGHT_WRIST')),
           ((kp_lib.LEFT_HAND, 'THUMB_TIP'), (kp_lib.RIGHT_HAND, 'THUMB_TIP'))]
  for a, b in pairs:
    i, j = names.index(a), names.index(b)
    np.testing.assert_array_equal(v[:, i], visible[:, j])
    np.testing.assert_allclose(p[:, i, 0], -points[:, j, 0])
    np.testing.assert_allclose(p[:, i, 1:], points[:, j, 1:])


def test_rotation_preserves_xy_lengths():
  points, visible = _example()
  p, _ = augment.spatial(points[None], visible[None], tf.constant([5, 6], tf.int64), rotate=0.5)
  p = np.asarray(p)[0]
  np.testing.assert_allclose(np.linalg.norm(p[..., :2], axis=-1), np.linalg.norm(points[..., :2], axis=-1),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(p[..., 2], points[..., 2])
  assert not np.allclose(p[..., :2], points[..., :2])
