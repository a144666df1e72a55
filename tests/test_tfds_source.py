"""The TFDS source (sign-language-datasets builders) without downloads.

rwth_phoenix2014_t is built for real (its own _generate_examples and PoseFeature) from a local folder laid
out like its download: a handful of annotation rows + the real PHOENIX holistic pose of
../shared/data/real (skipped where absent). dgs_corpus (nested text feature) runs on tfds' mock data.
"""
import json
import os
from unittest import mock

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from slt_jax import default_config
from slt_jax.data import inputs
from slt_jax.data import keypoints as kp_lib
from slt_jax.data import pipeline
from slt_jax.data import pose_io
from slt_jax.data import sources
from slt_jax.data import tfds_source

# sign-language-datasets warns about dataset licences on every builder's download step.
pytestmark = pytest.mark.filterwarnings('ignore:This library provides access to data sets:UserWarning')

PHOENIX_POSE = 'sign-language-datasets/rwth_phoenix2014_t/25October_2010_Monday_tagesschau-17.pose'
# The pose above shows 11August_2010_Wednesday_tagesschau-1 (MANIFEST.md); its text, and another one.
TEXT_1 = 'und nun die wettervorhersage für morgen donnerstag den zwölften august'
TEXT_4 = 'tiefer luftdruck bestimmt in den nächsten tagen unser wetter'
# id -> translation ('' = empty) and pose kind: real | dark (every confidence 0) | none (no file).
TRAIN_ROWS = {'p1': (TEXT_1, 'real'), 'p2': ('', 'real'), 'p3': ('regen', 'dark'), 'p4': (TEXT_4, 'real')}


def _tfds_config(data_dir, **overrides):
  c = default_config.get_config().data.tfds
  c.name = 'rwth_phoenix2014_t'
  c.data_dir = str(data_dir)
  c.train_split, c.val_split, c.test_split = 'train', 'validation', 'test'
  for k, v in overrides.items():
    c[k] = v
  return c


def _write_download(root, real_pose):
  """A folder laid out as rwth_phoenix2014_t's two downloads (annotations, holistic poses)."""
  ann = root / 'annotations' / 'PHOENIX-2014-T-release-v3' / 'PHOENIX-2014-T' / 'annotations' / 'manual'
  ann.mkdir(parents=True)
  raw = real_pose.read_bytes()
  # A v0.1 body ends with the confidence block f32[F, N, P]: zeroing it masks every point ("dark").
  frames, people, points = 86, 1, 543
  dark = raw[:-4 * frames * people * points] + bytes(4 * frames * people * points)
  splits = {'train': TRAIN_ROWS, 'dev': {'p1': (TEXT_1, 'real')}, 'test': {'p4': (TEXT_4, 'real')}}
  for split, rows in splits.items():
    poses = root / 'poses' / 'holistic' / split
    poses.mkdir(parents=True)
    lines = ['name|video|start|end|speaker|orth|translation']
    for uid, (text, kind) in rows.items():
      lines.append(f'{uid}|{uid}/1/*.png|-1|-1|Signer01|WETTER MORGEN|{text}')
      (poses / f'{uid}.pose').write_bytes(raw if kind == 'real' else dark)
    (ann / f'PHOENIX-2014-T.{split}.corpus.csv').write_text('\n'.join(lines) + '\n', encoding='utf-8')
  return [str(root / 'annotations'), str(root / 'poses')]


@pytest.fixture(scope='module')
def phoenix(real_data_dir, tmp_path_factory):
  """(data_dir of a prepared rwth_phoenix2014_t, the real pose file it holds)."""
  tmp = tmp_path_factory.mktemp('phoenix')
  real_pose = real_data_dir / PHOENIX_POSE
  downloads = _write_download(tmp / 'download', real_pose)
  source = tfds_source.TfdsSource(_tfds_config(tmp / 'tfds'))
  with mock.patch.object(tfds.download.DownloadManager, 'download_and_extract', lambda self, urls: downloads):
    assert source.builder.info.splits['train'].num_examples == len(TRAIN_ROWS)
  return tmp / 'tfds', real_pose


OPTIONS = [
    pose_io.PoseOptions(),
    pose_io.PoseOptions(keypoints='holistic', coords='xy', normalize='minmax', max_frames=40, frame_stride=2),
    pose_io.PoseOptions(keypoints='youtube_asl', hand_normalize=True),
    pose_io.PoseOptions(keypoints=None, normalize='none'),
]


@pytest.mark.parametrize('options', OPTIONS, ids=['hands_body', 'holistic_minmax_sub', 'youtube_asl', 'raw'])
def test_phoenix_rows_equal_pose_file_and_skips(phoenix, options):
  data_dir, real_pose = phoenix
  source = tfds_source.TfdsSource(_tfds_config(data_dir))
  rows, arrays, skipped = source.load_split('train', options)
  assert sorted(r.uid for r in rows) == ['p1', 'p4']
  assert {r.uid: r.text for r in rows} == {'p1': TEXT_1, 'p4': TEXT_4}
  assert rows[0].extra == {'gloss': 'WETTER MORGEN', 'signer': 'Signer01'} and rows[0].pose_path == ''
  assert skipped['empty_text'] == ['p2'] and skipped['no_usable_frames'] == ['p3']
  assert sum(map(len, skipped.values())) == 2
  # What the builder stored, through its PoseFeature, reads like the file itself through pose_io.
  expected = pose_io.read_pose(real_pose, options)
  for a in arrays:
    np.testing.assert_array_equal(a.points, expected.points)
    np.testing.assert_array_equal(a.visible, expected.visible)
    assert a.keypoints == expected.keypoints and a.fps == 25.0
  t = min(86, options.max_frames or 86)
  k = len(kp_lib.preset(options.keypoints)) if options.keypoints else 543
  assert arrays[0].points.shape == (t, k, len(options.coords)) and arrays[0].visible.shape == (t, k)


def test_tfds_config_builds_the_pipeline(phoenix, tmp_path):
  data_dir, _ = phoenix
  config = default_config.get_config()
  config.data.source = 'tfds'
  config.data.tfds = _tfds_config(data_dir)
  config.data.max_frames = 64
  config.data.bucket_boundaries = (32, 64)
  config.training.batch_size = 2
  config.training.eval_batch_size = 2
  default_config.validate(config)
  workdir = str(tmp_path)
  # No download happens: the builder was prepared by the fixture.
  with mock.patch.object(tfds.download.DownloadManager, 'download_and_extract', side_effect=AssertionError):
    # The fixture's dev split holds the training example p1: an error once the splits are read ...
    with pytest.raises(sources.SplitOverlapError, match=r"train and val: 1 uid\(s\) in both \(e.g. 'p1'\)"):
      inputs.make_inputs(config, workdir)
    config.data.allow_overlap = True  # ... unless allowed
    tokenizer, splits = inputs.make_inputs(config, workdir)
  assert set(splits) == {'train', 'val', 'test'}
  train = splits['train']
  assert sorted(r.uid for r in train.rows) == ['p1', 'p4'] and train.pose_shape == (50, 3)
  batch = next(train.iterator())
  assert batch['poses'].shape == (2, 64, 50, 3) and batch['pose_mask'].shape == (2, 64)
  assert (batch['pose_mask'].sum(1) > 0).all()
  texts = {train.rows[i].text for i in batch['index']}
  for labels, mask in zip(batch['labels'], batch['label_mask']):  # the tokenizer was trained on the texts
    assert tokenizer.decode(labels[mask][:-1]) in texts
  val = splits['val']
  assert val.num_batches == 1 and [r.uid for r in val.rows] == ['p1']
  batch = next(val.iterator())
  assert batch['example_mask'].tolist() == [True, False] and batch['pose_mask'][0].sum() == 64
  with open(os.path.join(workdir, 'skipped_rows.json')) as f:
    report = json.load(f)
  assert report == {'train': {'empty_text': ['p2'], 'no_usable_frames': ['p3']}, 'val': {}, 'test': {}}
  # The cache is reused: the TFDS examples are not read again.
  with mock.patch.object(tfds_source.TfdsSource, 'load_split', side_effect=AssertionError):
    again = pipeline.make_datasets(config, tokenizer, workdir, shard_index=0, num_shards=1)
  assert [r.uid for r in again['train'].rows] == [r.uid for r in train.rows]


def _fake_dataset(features, num_examples, overrides):
  """tf.data of `num_examples` examples with the structure of `features`: every text 'f<i>', numbers
  random, unknown dims 20 (frames) or 2; `overrides[i]` {'a/b': value} replaces features of example i.
  (tfds' own random examples cannot: they expect one tensor per feature, PoseFeature has three.)"""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  info = features.get_tensor_info()
  spec = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.tf_dtype), info)
  rng = np.random.default_rng(0)

  def make(t, i, path):
    shape = [20 if (d is None and n == 0) else 2 if d is None else d for n, d in enumerate(t.shape)]
    if t.tf_dtype == tf.string:
      return np.full(shape, f'{path} {i}'.encode(), object)
    return rng.uniform(0.1, 1.0, shape).astype(t.np_dtype)

  def fill(node, i, prefix=''):
    return {k: fill(v, i, f'{prefix}{k}/') if isinstance(v, dict) else make(v, i, prefix + k)
            for k, v in node.items()}

  def gen():
    for i in range(num_examples):
      ex = fill(info, i)
      for key, value in overrides.get(i, {}).items():
        *parents, leaf = key.split('/')
        node = ex
        for p in parents:
          node = node[p]
        node[leaf] = value
      yield ex
  return tf.data.Dataset.from_generator(gen, output_signature=spec)


def test_dgs_corpus_sentences_on_mock_data(tmp_path):
  kwargs = ml_collections.ConfigDict(
      {'include_video': False, 'include_pose': 'holistic', 'data_type': 'sentence'})
  c = _tfds_config(tmp_path, name='dgs_corpus', config_kwargs=kwargs, text_key='sentence/english',
                   val_split='', test_split='')
  options = pose_io.PoseOptions(keypoints='youtube_asl', max_frames=16)
  no_pose = {'data': np.zeros((0, 1, 543, 3), np.float32), 'conf': np.zeros((0, 1, 543), np.float32),
             'fps': np.int32(0)}
  overrides = {1: {'sentence/english': b''}, 2: {'pose': no_pose}}

  def as_dataset(self, split, **kwargs):
    del split, kwargs
    return _fake_dataset(self.info.features, 4, overrides)

  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    source = tfds_source.TfdsSource(c)
    assert source.builder.builder_config.data_type == 'sentence'
    assert source.split_spec('val') == ''
    rows, arrays, skipped = source.load_split('train', options)
  assert [r.uid for r in rows] == ['id 0', 'id 3'] and len(arrays) == 2
  assert skipped['empty_text'] == ['id 1'] and skipped['missing_pose'] == ['id 2']
  for i, row, a in zip((0, 3), rows, arrays):
    assert row.text == f'sentence/english {i}' and row.extra['sentence/german'] == f'sentence/german {i}'
    assert 'sentence/english' not in row.extra and 'id' not in row.extra
    assert a.points.shape == (16, 85, 3) and a.visible.all()  # 20 frames subsampled to 16
    assert np.isfinite(a.points).all()


def _example(text='hello', frames=5, points=543, uid='x'):
  rng = np.random.default_rng(0)
  return {'id': uid.encode(), 'text': text.encode(),
          'pose': {'data': rng.normal(size=(frames, 1, points, 3)).astype(np.float32),
                   'conf': np.ones((frames, 1, points), np.float32), 'fps': np.int32(25)}}


def test_rows_from_examples_skips_and_errors():
  header = kp_lib.holistic_header()
  examples = [_example(uid='ok'), _example(uid='no_pose', frames=0), _example(uid='bad', points=178),
              _example(uid='blank', text='  '), _example(uid='')]
  options = pose_io.PoseOptions()
  rows, arrays, skipped = tfds_source.rows_from_examples(examples, header, options, split='train')
  assert [r.uid for r in rows] == ['ok', 'train#4'] and len(arrays) == 2
  assert skipped['missing_pose'] == ['no_pose'] and skipped['unreadable_pose'] == ['bad']
  assert skipped['empty_text'] == ['blank']
  with pytest.raises(tfds_source.TfdsSourceError, match=r"text feature 'sentence/english' not in .*'text'"):
    tfds_source.rows_from_examples(examples, header, pose_io.PoseOptions(), text_key='sentence/english')
  # dgs_corpus' OpenPose header (137 points) has none of the face-mesh points of 'youtube_asl' (it has those
  # of 'hands_body', by what they are: keypoints.select_indices).
  from sign_language_datasets.datasets import dgs_corpus  # pylint: disable=g-import-not-at-top
  openpose = tfds_source.read_header(os.path.join(os.path.dirname(dgs_corpus.__file__),
                                                  'openpose.poseheader'))
  assert len(kp_lib.header_keypoints(openpose)) == 137
  with pytest.raises(tfds_source.TfdsSourceError, match=r"FACE_LANDMARKS:61 \(face_mesh\.61\).*'openpose_137'.*data.keypoints"):
    tfds_source.rows_from_examples(examples, openpose, pose_io.PoseOptions(keypoints='youtube_asl'))
  rows, _, skipped = tfds_source.rows_from_examples(examples, openpose, pose_io.PoseOptions(keypoints=None),
                                                    split='dev')
  assert not rows and skipped['unreadable_pose'] == ['ok', 'bad', 'dev#4']  # 543 / 178 points, not 137


def test_config_errors(tmp_path):
  config = default_config.get_config()
  config.data.source = 'tfds'
  with pytest.raises(default_config.ConfigError, match='data.tfds.name'):
    default_config.validate(config)
  config.data.source = 'parquet'
  with pytest.raises(default_config.ConfigError, match="data.source must be 'csv' or 'tfds'"):
    default_config.validate(config)
  config.data.source = 'tfds'
  config.data.tfds.name = 'no_such_sign_corpus'
  default_config.validate(config)
  with pytest.raises(tfds_source.TfdsSourceError, match='no_such_sign_corpus'):
    _ = tfds_source.TfdsSource(config.data.tfds).builder
