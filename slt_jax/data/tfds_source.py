"""Examples from a TFDS builder (the `sign-language-datasets` corpora: rwth_phoenix2014_t, dgs_corpus, ...).

  source = TfdsSource(config.data.tfds)
  rows, arrays, skipped = source.load_split('train', pose_io.PoseOptions())   # as sources.load_split

The pose feature of sign-language-datasets (`sign_language_datasets.utils.features.PoseFeature`) yields
  example[pose_key] = {'data': f32[T, N, P, D], 'conf': f32[T, N, P], 'fps': i32}
with no point names: those are in the header file the builder hands the feature (rwth_phoenix2014_t
`pose.header` and dgs_corpus `holistic.poseheader`: MediaPipe Holistic 543 = POSE_LANDMARKS 33 +
FACE_LANDMARKS 468 + LEFT/RIGHT_HAND_LANDMARKS 21, XYZC; dgs_corpus `openpose.poseheader`: OpenPose 137,
XYC). `data.tfds.pose_header` (a `.pose` / `.poseheader` file) replaces it. From there an example becomes
`pose_io.PoseArrays` by `pose_io.arrays_from_pose`, the steps `pose_io.read_pose` takes after parsing.

Skipped, counted and logged (reasons of sources.SKIP_REASONS): an empty text ('empty_text'); a pose with
no frames or people, which is how PoseFeature stores a missing pose ('missing_pose'); a pose whose point
count is not the header's ('unreadable_pose'); no visible selected point ('no_usable_frames'). A header
without the preset's points is a configuration error, raised before any example is read.
"""
import hashlib
import json
import os
from typing import Any, Iterable

from absl import logging
import numpy as np
from pose_format.pose_header import PoseHeader
from pose_format.utils.reader import BufferReader

from slt_jax.data import keypoints as kp_lib
from slt_jax.data import pose_io
from slt_jax.data import sources

_SPLIT_FIELDS = {'train': 'train_split', 'val': 'val_split', 'test': 'test_split'}


class TfdsSourceError(ValueError):
  """A TFDS source that cannot be used (unknown builder, split or feature, no header)."""


_DATASETS_EXTRA = "pip install -e '.[datasets]'"


def _import_tfds():
  """tensorflow_datasets with the sign-language-datasets builders registered (importing them does)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if _missing_datasets_extra():
    logging.warning('sign-language-datasets is not installed; only builders registered otherwise are '
                    'available (%s)', _DATASETS_EXTRA)
  return tfds


def _missing_datasets_extra() -> str:
  """'' when sign-language-datasets imports; else a hint naming the extra (appended to builder errors)."""
  try:
    import sign_language_datasets.datasets  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    return f' (sign-language-datasets is not importable: {e}; its corpora need {_DATASETS_EXTRA})'
  return ''


def read_header(path: str | os.PathLike) -> PoseHeader:
  """The header of a `.pose` or `.poseheader` file (the body, if any, is not read)."""
  path = os.fspath(path)
  try:
    with open(path, 'rb') as f:
      return PoseHeader.read(BufferReader(f.read()))
  except OSError as e:
    raise TfdsSourceError(f'cannot read pose header {path} ({e.strerror or e})') from e
  except Exception as e:  # struct.error, UnicodeDecodeError, ...
    raise TfdsSourceError(f'{path}: not a pose header ({type(e).__name__}: {e})') from e


def _lookup(example: dict, key: str, what: str):
  """example['a/b'] -> example['a']['b'], or TfdsSourceError listing the keys there are."""
  node = example
  for part in key.split('/'):
    if not isinstance(node, dict) or part not in node:
      raise TfdsSourceError(f'{what} feature {key!r} not in the examples; features: '
                            f'{sorted(_flatten(example))}')
    node = node[part]
  return node


def _flatten(example: dict, prefix: str = '') -> dict[str, Any]:
  out = {}
  for k, v in example.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}/'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def _text(value) -> str:
  if isinstance(value, bytes):
    return value.decode('utf-8')
  if isinstance(value, np.ndarray) and value.shape == ():
    return _text(value.item())
  return str(value)


def rows_from_examples(examples: Iterable[dict], header: PoseHeader, options: pose_io.PoseOptions, *,
                       text_key: str = 'text', pose_key: str = 'pose', id_key: str = 'id', split: str = '',
                       ) -> tuple[list[sources.Row], list[pose_io.PoseArrays], sources.SkipReport]:
  """TFDS examples (numpy, as tfds.as_numpy yields them) -> (rows, arrays, skipped) like sources.load_split.

  Row.uid is the `id_key` feature ('<split>#<i>' where there is none), Row.pose_path is '' and
  Row.extra holds the example's other scalar text features ('gloss', 'sentence/german', ...).
  """
  # A header without the preset's points would skip every example: say so once, up front.
  if options.keypoints is not None:
    try:
      kp_lib.select_indices(kp_lib.header_keypoints(header), options.keypoints, source=f'{split} pose header')
    except kp_lib.MissingKeypointsError as e:
      raise TfdsSourceError(f'{e} (choose another data.keypoints preset, or data.tfds.pose_header)') from e
  rows, arrays, skipped = [], [], {r: [] for r in sources.SKIP_REASONS}
  for i, ex in enumerate(examples):
    if i == 0:  # a misspelt key is a configuration error, not a reason to skip every example
      for key, what in ((text_key, 'text'), (pose_key, 'pose')):
        _lookup(ex, key, what)
    uid = _text(_lookup(ex, id_key, 'id')).strip() if id_key and _has(ex, id_key) else ''
    uid = uid or f'{split}#{i}'
    text = _text(_lookup(ex, text_key, 'text')).strip()
    pose = _lookup(ex, pose_key, 'pose')
    if not text:
      skipped['empty_text'].append(uid)
      continue
    data, conf = np.asarray(pose['data']), np.asarray(pose['conf'])
    if data.ndim != 4 or data.shape[0] == 0 or data.shape[1] == 0:
      skipped['missing_pose'].append(uid)  # PoseFeature encodes a missing pose as 0 frames
      logging.warning('Skipping %s: no pose (data shape %s)', uid, data.shape)
      continue
    try:
      arr = pose_io.arrays_from_pose(header, data, conf, float(pose.get('fps', 0)), options, source=uid)
    except pose_io.NoUsableFramesError as e:
      reason, err = 'no_usable_frames', e
    except pose_io.PoseReadError as e:
      reason, err = 'unreadable_pose', e
    else:
      extra = {k: _text(v) for k, v in _flatten(ex).items()
               if k not in (text_key, id_key) and not k.startswith(pose_key + '/') and _is_text(v)}
      rows.append(sources.Row(uid=uid, text=text, pose_path='', extra=extra))
      arrays.append(arr)
      continue
    skipped[reason].append(uid)
    logging.warning('Skipping %s: %s', uid, err)
  return rows, arrays, skipped


def _is_text(value) -> bool:
  return isinstance(value, bytes) or (isinstance(value, np.ndarray) and value.shape == ()
                                      and value.dtype.kind in 'SO')


def _has(example: dict, key: str) -> bool:
  try:
    _lookup(example, key, '')
    return True
  except TfdsSourceError:
    return False


def _kwargs(tfds_config) -> dict:
  kwargs = tfds_config.get('config_kwargs', None) or {}
  return kwargs.to_dict() if hasattr(kwargs, 'to_dict') else dict(kwargs)


class TfdsSource:
  """The splits of one TFDS builder, as `config.data.tfds` describes it (see default_config.py)."""

  def __init__(self, tfds_config):
    self.config = tfds_config
    if not tfds_config.name:
      raise TfdsSourceError("data.source='tfds' needs data.tfds.name (e.g. 'rwth_phoenix2014_t')")
    self._builder = None

  def split_spec(self, split: str) -> str:
    """The TFDS split (spec, e.g. 'train[:95%]') of 'train' | 'val' | 'test'; '' = not configured."""
    return self.config.get(_SPLIT_FIELDS[split], '')

  def _builder_config(self, tfds):
    """A named builder config (data.tfds.config), or a new one of the builder's config class from
    data.tfds.config_kwargs (sign-language-datasets: SignDatasetConfig / DgsCorpusConfig kwargs)."""
    c = self.config
    kwargs = _kwargs(c)
    if c.config:
      if kwargs:
        logging.info('data.tfds.config=%r is a named builder config: data.tfds.config_kwargs %s are not used',
                     c.config, kwargs)
      return c.config
    if not kwargs:
      return None  # the builder's default config
    try:
      cls = tfds.builder_cls(c.name)
    except Exception as e:  # tfds raises DatasetNotFoundError (with the known names) or ImportError
      raise TfdsSourceError(f'unknown TFDS builder data.tfds.name={c.name!r}: {e}'
                            f'{_missing_datasets_extra()}') from e
    if not getattr(cls, 'BUILDER_CONFIGS', None):
      raise TfdsSourceError(f'TFDS builder {c.name!r} has no builder configs: leave data.tfds.config_kwargs '
                            'empty')
    # The name holds a digest of the kwargs: prepared data of different kwargs never share a folder.
    digest = hashlib.sha256(json.dumps(kwargs, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return type(cls.BUILDER_CONFIGS[0])(name=f'slt-{digest}', **kwargs)

  @property
  def builder(self):
    """The tfds builder (created once; download_and_prepare when data.tfds.download)."""
    if self._builder is None:
      tfds = _import_tfds()
      c = self.config
      kwargs = {'data_dir': c.data_dir} if c.get('data_dir', '') else {}
      config = self._builder_config(tfds)
      if config is not None:
        kwargs['config'] = config
      try:
        builder = tfds.builder(c.name, **kwargs)
      except Exception as e:  # DatasetNotFoundError, unknown config name, ...
        raise TfdsSourceError(f'cannot make TFDS builder {c.name!r} ({type(e).__name__}: {e})'
                              f'{_missing_datasets_extra()}') from e
      if c.get('download', True):
        builder.download_and_prepare()
      self._builder = builder
    return self._builder

  def header(self) -> PoseHeader:
    """Point names of the pose feature: data.tfds.pose_header, else the header the builder gives it."""
    if self.config.get('pose_header', ''):
      return read_header(self.config.pose_header)
    feature = _lookup(dict(self.builder.info.features), self.config.pose_key, 'pose')
    header = getattr(feature, '_header', None)  # sign-language-datasets' PoseFeature(header_path=...)
    if header is None:
      raise TfdsSourceError(f'the pose feature {self.config.pose_key!r} of {self.config.name} names no '
                            'header: set data.tfds.pose_header to a .pose / .poseheader file of its layout')
    return header

  def cache_key(self, split: str, options: pose_io.PoseOptions) -> str:
    """Digest of everything that decides this split's examples (builder, config, version, keys, options)."""
    c, b = self.config, self.builder
    header = self.header()
    blob = json.dumps(['tfds', b.name, str(b.builder_config.name if b.builder_config else ''),
                       _kwargs(c) if not c.config else {}, str(b.data_dir),
                       str(b.version), self.split_spec(split), c.text_key, c.pose_key, c.id_key,
                       [(comp.name, comp.format, list(comp.points)) for comp in header.components],
                       options.fingerprint()], default=str, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]

  def describe(self, split: str) -> str:
    b = self.builder
    config = b.builder_config.name if b.builder_config else ''
    return f'TFDS {b.name}/{config} split {self.split_spec(split)!r}'

  def load_split(self, split: str, options: pose_io.PoseOptions,
                 ) -> tuple[list[sources.Row], list[pose_io.PoseArrays], sources.SkipReport]:
    """(rows, arrays, skipped) of one split ('train' | 'val' | 'test'), with one log line of the counts."""
    tfds = _import_tfds()
    spec = self.split_spec(split)
    try:
      ds = self.builder.as_dataset(split=spec, shuffle_files=False)
    except Exception as e:  # unknown split names raise several kinds of errors
      raise TfdsSourceError(f'{self.describe(split)}: cannot read ({type(e).__name__}: {e}); splits: '
                            f'{sorted(self.builder.info.splits)}') from e
    c = self.config
    rows, arrays, skipped = rows_from_examples(tfds.as_numpy(ds), self.header(), options, text_key=c.text_key,
                                               pose_key=c.pose_key, id_key=c.id_key, split=spec)
    sources.log_skips(f'{split} ({self.describe(split)})', len(rows), skipped)
    return rows, arrays, skipped
