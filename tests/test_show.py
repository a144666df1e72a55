"""What the model sees, drawn: --mode=show animations (GIF / MP4) read back frame by frame, the TensorBoard images
and data plots of a training run, and translate --render."""
import glob
import io
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image, ImageSequence
from pose_format.numpy.pose_body import NumPyPoseBody
from pose_format.pose import Pose

import tiny_demo
from slt_jax import default_config, show, translate
from slt_jax.data import inputs as inputs_lib
from slt_jax.data import keypoints as kp_lib
from slt_jax.data import pose_io
from slt_jax.train import trainer, visuals


def _dgs(real_data_dir, name='train_10'):
  return str(real_data_dir / 'fluent-pose-synthesis' / 'sample_dataset' / name.split('_')[0] / f'{name}_original.pose')


def _config(**data):
  config = default_config.get_config()
  for key, value in data.items():
    config.data[key] = value
  return config


def _gif_frames(path) -> list[np.ndarray]:
  with Image.open(path) as image:
    return [np.asarray(frame.convert('RGB')) for frame in ImageSequence.Iterator(image)]


def _mp4_frames(path) -> list[np.ndarray]:
  capture, frames = cv2.VideoCapture(str(path)), []
  ok, frame = capture.read()
  while ok:
    frames.append(frame)
    ok, frame = capture.read()
  capture.release()
  return frames


def _drawn(frame: np.ndarray, box) -> bool:
  """Whether anything is drawn (a pixel clearly off white) inside box = (x0, y0, x1, y1) of an RGB/BGR frame."""
  x0, y0, x1, y1 = (int(round(v)) for v in box)
  return bool((frame[max(y0, 0):y1, max(x0, 0):x1] < 200).any())


def _box(pixels: np.ndarray, origin, pad: float = 4.0):
  """The bounding box (+ pad) of pixel coordinates f32[N, >= 2] inside a panel whose top-left is `origin`."""
  lo, hi = pixels[:, :2].min(0) - pad, pixels[:, :2].max(0) + pad
  return (lo[0] + origin[0], lo[1] + origin[1], hi[0] + origin[0], hi[1] + origin[1])


# ------------------------------------------------------------------------------------------------------------
# Animations of files.
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('fmt,data,expected', [
    ('gif', dict(max_frames=20), 20),                     # 58 stored frames subsampled to 20
    ('mp4', dict(frame_stride=2), 29),                    # every other frame
    ('gif', dict(max_frames=256, keypoints='reduced_178'), 58),
])
def test_animation_has_one_frame_per_model_frame(real_data_dir, tmp_path, fmt, data, expected):
  path = _dgs(real_data_dir)
  config = _config(**data)
  model = pose_io.read_pose(path, pose_io.PoseOptions.from_config(config.data))
  assert len(model.points) == expected
  [written] = show.render_files([path], config, str(tmp_path), fmt=fmt)
  assert written == str(tmp_path / f'train_10_original.{fmt}')
  frames = _gif_frames(written) if fmt == 'gif' else _mp4_frames(written)
  assert len(frames) == expected
  # Both panels show the pose in every frame (the DGS file has its body detected throughout).
  rendering = show.render(show.model_input(path, config), config)
  h, w = frames[0].shape[:2]
  assert (h, w) == rendering.frames[0].shape[:2]
  for frame in frames:
    assert _drawn(frame, (0, rendering.stored_origin[1], rendering.model_origin[0] - 4, h))
    assert _drawn(frame, (rendering.model_origin[0], rendering.model_origin[1], w, h))


def test_stored_panel_shows_the_frame_the_model_frame_came_from(real_data_dir):
  path = _dgs(real_data_dir)
  header, body = pose_io.read_pose_file(path)
  config = _config(frame_stride=3, max_frames=10)
  inp = show.model_input(path, config)
  expected = np.round(np.linspace(0, len(range(0, 58, 3)) - 1, 10)).astype(int) * 3  # stride, then max_frames
  np.testing.assert_array_equal(inp.source_frames, expected)
  raw = np.asarray(body.data.data)[:, 0]
  for t, source in enumerate(inp.source_frames):
    visible = inp.stored.visible[t]
    np.testing.assert_array_equal(visible, np.asarray(body.confidence)[source, 0] > 0)
    np.testing.assert_allclose(inp.stored.points[t][visible], raw[source][visible], rtol=1e-6)
  assert inp.fps == pytest.approx(body.fps * 10 / 58)  # the animation lasts as long as the recording


def _synthetic_pose_file(path, frames: int = 6):
  """A reduced-Holistic pose: body and face in every frame; the right hand (top right, away from everything)
  detected in frames 0-2 and masked (confidence 0, coordinates kept) after; the left hand (inside the torso) never
  detected. Shoulders at (300, 250) and (200, 250): 'shoulders' normalisation is (xy - (250, 250)) / 100."""
  header = kp_lib.holistic_header(512, 512, reduced=True)
  names = kp_lib.header_keypoints(header)
  data = np.zeros((frames, 1, len(names), 3), np.float32)
  conf = np.ones((frames, 1, len(names)), np.float32)
  body = dict(LEFT_SHOULDER=(300, 250), RIGHT_SHOULDER=(200, 250), LEFT_ELBOW=(320, 330), RIGHT_ELBOW=(180, 330),
              LEFT_WRIST=(330, 400), RIGHT_WRIST=(170, 400), LEFT_HIP=(290, 460), RIGHT_HIP=(210, 460))
  ring = lambda center, r, n: np.asarray(center) + r * np.stack(
      [np.cos(np.linspace(0, 2 * np.pi, n)), np.sin(np.linspace(0, 2 * np.pi, n))], -1)
  face, right, left = ring((250, 170), 30, 128), ring((430, 110), 15, 21), ring((250, 360), 15, 21)
  counters = {kp_lib.FACE: iter(face), kp_lib.RIGHT_HAND: iter(right), kp_lib.LEFT_HAND: iter(left)}
  for i, (component, point) in enumerate(names):
    xy = body[point] if component == kp_lib.POSE else next(counters[component])
    data[:, 0, i, :2] = xy
  members = lambda comp: [i for i, (c, _) in enumerate(names) if c == comp]
  conf[3:, 0, members(kp_lib.RIGHT_HAND)] = 0.0
  conf[:, 0, members(kp_lib.LEFT_HAND)] = 0.0
  with open(path, 'wb') as f:
    Pose(header, NumPyPoseBody(25.0, data, conf)).write(f)
  return data[0, 0], members


def test_masked_points_are_not_drawn(tmp_path):
  path = str(tmp_path / 'masked.pose')
  raw, members = _synthetic_pose_file(path)
  config = _config()  # hands_body, shoulders
  [written] = show.render_files([path], config, str(tmp_path / 'out'), fmt='gif')
  frames = _gif_frames(written)
  assert len(frames) == 6
  rendering = show.render(show.model_input(path, config), config)
  right, left = raw[members(kp_lib.RIGHT_HAND)], raw[members(kp_lib.LEFT_HAND)]
  normalised = lambda xy: (xy - np.array([250.0, 250.0, 0.0])) / 100.0
  boxes = {  # where each hand is (or would be, masked) in each panel
      'stored right': _box(rendering.stored_map.apply(right), rendering.stored_origin),
      'stored left': _box(rendering.stored_map.apply(left), rendering.stored_origin),
      'model right': _box(rendering.model_map.apply(normalised(right)), rendering.model_origin),
      'model left': _box(rendering.model_map.apply(normalised(left)), rendering.model_origin),
  }
  x, y = rendering.stored_origin
  for t, frame in enumerate(frames):
    for panel in ('stored', 'model'):
      assert _drawn(frame, boxes[f'{panel} right']) == (t < 3), (t, panel)
      assert not _drawn(frame, boxes[f'{panel} left']), (t, panel)
    assert not _drawn(frame, (x, y, x + 8, y + 8)), t  # nor at (0, 0), where pose_io zeroes masked points
  # The body is there in every frame of the model panel.
  shoulders = rendering.model_map.apply(np.array([[-0.5, 0.0], [0.5, 0.0]], np.float32))
  assert all(_drawn(frame, _box(shoulders, rendering.model_origin, 3)) for frame in frames)


def test_augmented_draw_resamples_frames_and_moves_points(real_data_dir):
  path = _dgs(real_data_dir)
  config = _config(augmentations=dict(rotate=0.4, scale=0.1, shear=0.0, noise=0.0, frame_dropout=0.3, speed=0.5,
                                      mirror=False))
  plain, augmented = show.model_input(path, config), show.model_input(path, config, augment=True, seed=3)
  assert augmented.augmented and not plain.augmented
  pick = np.searchsorted(plain.source_frames, augmented.source_frames)
  np.testing.assert_array_equal(plain.source_frames[pick], augmented.source_frames)  # frames of the input
  assert len(augmented.model.points) != len(plain.model.points)
  # Each augmented frame is its source frame, rotated and scaled: same points visible, distances scaled alike.
  np.testing.assert_array_equal(augmented.model.visible, plain.model.visible[pick])
  np.testing.assert_array_equal(augmented.unaugmented.points, plain.model.points)
  assert not np.allclose(augmented.model.points, plain.model.points[pick])
  a, b = augmented.model.points[0, :2, :2], plain.model.points[pick[0], :2, :2]  # the shoulders
  ratio = np.linalg.norm(a[0] - a[1]) / np.linalg.norm(b[0] - b[1])
  assert 0.89 < ratio < 1.11
  # The animation: one frame per augmented frame.
  assert len(show.render(augmented, config).frames) == len(augmented.model.points)


def test_strip_draws_each_frame_and_leaves_masked_frames_blank():
  t, names = 8, kp_lib.preset('hands_body')
  points = np.random.default_rng(0).uniform(-1, 1, (t, len(names), 3)).astype(np.float32)
  visible = np.ones((t, len(names)), bool)
  visible[5] = False  # a frame with nothing detected
  image = show.strip(points, visible, names, num_frames=8, size=96, lines=['reference: a', 'hypothesis: b'])
  assert image.dtype == np.uint8 and image.shape[1] == 8 * 96
  label = show.text_band(['frame'], 96, show._font(11)).shape[0]  # pylint: disable=protected-access
  cells = [image[label:label + 96, i * 96:(i + 1) * 96] for i in range(8)]
  assert [bool((c < 200).any()) for c in cells] == [i != 5 for i in range(8)]
  assert (image[label + 96:] < 100).any()  # the text lines below


def test_render_translations_adds_the_subtitle(real_data_dir, tmp_path):
  path = _dgs(real_data_dir)
  config = _config()
  [written] = show.render_translations([(path, 'Am Wochenende: Ärger über Öl.')], config,
                                       str(tmp_path / 'translations.tsv'))
  assert written == str(tmp_path / 'translations_videos' / 'train_10_original.gif')
  frames = _gif_frames(written)
  plain = show.render(show.model_input(path, config), config).frames[0]
  assert len(frames) == 58 and frames[0].shape[0] > plain.shape[0]
  assert (frames[0][plain.shape[0]:] < 100).any()  # the subtitle's text under the panels


def test_unreadable_files_are_skipped_with_a_message(real_data_dir, tmp_path, capsys):
  broken = tmp_path / 'broken.pose'
  broken.write_bytes(open(_dgs(real_data_dir), 'rb').read()[:300])
  written = show.render_files([str(broken), _dgs(real_data_dir)], _config(max_frames=4), str(tmp_path / 'out'))
  assert written == [str(tmp_path / 'out' / 'train_10_original.gif')]
  assert f'# skipped {broken}' in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------------------
# A training run: TensorBoard images and the data plots.
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('show_run'))
  config = tiny_demo.config(num_train_steps=2, eval_every_steps=2, checkpoint_every_steps=2)
  resolved = inputs_lib.resolve_data_paths(config, workdir)  # the demo corpus, generated: add a row without pose
  with open(resolved.data.val_path, 'a', encoding='utf-8') as f:
    f.write('val_without_pose,This row has no pose file.\n')
  trainer.train_and_evaluate(config, workdir)
  return config, resolved, workdir


def _images(workdir) -> dict:
  """{(tag, step): decoded RGB images} of the image summaries in WORKDIR/tensorboard."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out = {}
  for path in glob.glob(os.path.join(workdir, 'tensorboard', 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == 'images':
          encoded = tf.make_ndarray(value.tensor)[2:]  # [width, height, png, ...]
          out[(value.tag, event.step)] = [np.asarray(Image.open(io.BytesIO(png)).convert('RGB')) for png in encoded]
  return out


def test_tensorboard_holds_the_documented_images(trained):
  _, _, workdir = trained
  images = _images(workdir)
  assert set(images) == {('data/length_histogram', 0), ('data/detection_rate', 0), ('data/skipped_rows', 0),
                         ('val/poses', 2), ('test/poses', 2)}
  for (tag, _), [image] in images.items():
    assert (image < 128).any() and (image > 250).mean() > 0.3, tag  # drawn on, mostly background
  [poses] = images[('val/poses', 2)]
  assert poses.shape[1] == visuals.NUM_FRAMES * 128
  single = show.strip(np.zeros((1, 50, 3), np.float32), np.ones((1, 50), bool), kp_lib.preset('hands_body'),
                      lines=['uid', 'reference', 'hypothesis'])
  assert poses.shape[0] == visuals.NUM_EXAMPLES * single.shape[0]  # three examples, one strip each
  label = show.text_band(['frame'], 128, show._font(11)).shape[0]  # pylint: disable=protected-access
  for i in range(visuals.NUM_EXAMPLES):  # every strip shows a pose in each of its frames
    row = poses[i * single.shape[0] + label:i * single.shape[0] + label + 128]
    assert all((row[:, j * 128:(j + 1) * 128] < 200).any() for j in range(visuals.NUM_FRAMES))


def test_data_plots_and_their_numbers(trained):
  config, resolved, workdir = trained
  plots = os.path.join(workdir, 'plots')
  for name in ('length_histogram', 'detection_rate', 'skipped_rows'):
    with Image.open(os.path.join(plots, f'{name}.png')) as image:
      assert image.size == (700, 400)
      pixels = np.asarray(image.convert('RGB'))
    assert (pixels < 128).any() and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20
  with open(os.path.join(plots, 'data_stats.json'), encoding='utf-8') as f:
    stats = json.load(f)
  # Oracle: the raw .pose files of each split, read on their own.
  options = pose_io.PoseOptions.from_config(config.data)
  read = lambda split: [pose_io.read_pose(p, options) for p in sorted(glob.glob(
      os.path.join(resolved.data.pose_dir, f'{split}_*.pose')))]
  lengths = np.array([len(a.points) for a in read('train')])
  assert stats['train_lengths']['count'] == len(lengths) == 64
  assert stats['train_lengths']['padding_fraction'] == pytest.approx(1 - lengths.sum() / (64 * len(lengths)))
  assert stats['train_lengths']['at_max_frames'] == int((lengths == 64).sum())
  names = kp_lib.preset(config.data.keypoints)
  for split in ('val', 'test'):
    arrays = read(split)
    frames = sum(len(a.visible) for a in arrays)
    for component in (kp_lib.POSE, kp_lib.LEFT_HAND, kp_lib.RIGHT_HAND):
      idx = [i for i, (c, _) in enumerate(names) if c == component]
      rate = sum(int(a.visible[:, idx].any(1).sum()) for a in arrays) / frames
      assert stats['detection'][split]['rate'][component] == pytest.approx(rate)
  assert stats['skipped'] == {'train': {}, 'val': {'missing_pose': 1}, 'test': {}}


def test_detection_rates_are_read_back_on_a_rerun(trained, monkeypatch):
  """A rerun takes each split's detection rates from its cache's detection.json, reading no record; a file
  written for another keypoint selection is computed again."""
  config, _, workdir = trained
  with open(os.path.join(workdir, 'plots', 'data_stats.json'), encoding='utf-8') as f:
    first = json.load(f)
  lengths = np.zeros(3, np.int64) + 10
  splits = ('train', 'val', 'test')
  def no_reading(*args, **kwargs):
    raise AssertionError('a cached example was read')
  with monkeypatch.context() as m:
    m.setattr(visuals, '_cached_examples', no_reading)
    assert visuals.data_stats(config, workdir, splits, lengths)['detection'] == first['detection']
  [memo] = glob.glob(os.path.join(workdir, 'cache', 'val-*', 'detection.json'))
  with open(memo, encoding='utf-8') as f:
    saved = json.load(f)
  saved['key']['examples_read'] += 1
  with open(memo, 'w', encoding='utf-8') as f:
    json.dump(saved, f)
  read = []
  original = visuals._cached_examples  # pylint: disable=protected-access
  monkeypatch.setattr(visuals, '_cached_examples', lambda cache, *a: read.append(cache.path) or original(cache, *a))
  assert visuals.data_stats(config, workdir, splits, lengths)['detection'] == first['detection']
  assert read == [os.path.dirname(memo)]


def test_a_rerun_draws_the_data_plots_only_when_their_numbers_change(trained, tmp_path, monkeypatch):
  """Same numbers: the PNGs are read back (nothing drawn) and logged as before; other skip counts: drawn again."""
  config, _, workdir = trained
  run = trainer.Run(config, workdir, None, {s: None for s in ('train', 'val', 'test')}, *[None] * 7)
  before = {name: np.asarray(Image.open(os.path.join(workdir, 'plots', f'{name}.png')).convert('RGB'))
            for name in ('length_histogram', 'detection_rate', 'skipped_rows')}
  class Images:
    def write_images(self, step, images):
      self.images = images
  writer = Images()
  with monkeypatch.context() as m:
    m.setattr(visuals, '_pixels', lambda figure: pytest.fail('a figure was drawn'))
    visuals.write_data_plots(writer, run, 0)
  assert {tag: pixels[0].tolist() for tag, pixels in writer.images.items()} == {
      f'data/{name}': pixels.tolist() for name, pixels in before.items()}
  report = os.path.join(workdir, 'skipped_rows.json')
  with open(report, encoding='utf-8') as f:
    saved = f.read()
  drawn = []
  original = visuals._pixels  # pylint: disable=protected-access
  monkeypatch.setattr(visuals, '_pixels', lambda figure: drawn.append(figure) or original(figure))
  try:
    with open(report, 'w', encoding='utf-8') as f:
      json.dump({**json.loads(saved), 'test': {'unreadable_pose': ['x']}}, f)
    visuals.write_data_plots(writer, run, 0)
  finally:
    with open(report, 'w', encoding='utf-8') as f:
      f.write(saved)
    visuals.write_data_plots(writer, run, 0)  # (the fixture's plots again, for the other tests)
  assert len(drawn) == 6  # three figures, twice


def test_translate_render_writes_a_video_per_input(trained, real_data_dir, tmp_path):
  config, _, workdir = trained
  real = [_dgs(real_data_dir, 'test_10'), _dgs(real_data_dir, 'test_11')]
  output = tmp_path / 'out.tsv'
  results = translate.translate(config, workdir, real, str(output), batch_size=2, render=True, render_format='mp4')
  assert [p for p, _ in results] == real
  run_options = pose_io.PoseOptions.from_config(config.data)  # the tiny demo's: max_frames 64
  for path in real:
    video = tmp_path / 'out_videos' / (os.path.basename(path)[:-len('.pose')] + '.mp4')
    assert len(_mp4_frames(video)) == len(pose_io.read_pose(path, run_options).points)


def test_translate_render_needs_an_output_before_any_work(tmp_path):
  with pytest.raises(ValueError, match='--output'):
    translate.translate(_config(), str(tmp_path / 'nothing'), ['a.pose'], None, render=True)
  assert not os.path.exists(tmp_path / 'nothing')


def test_show_command_uses_the_runs_preprocessing(trained, real_data_dir, tmp_path):
  _, _, workdir = trained
  out = tmp_path / 'shown'
  result = subprocess.run(
      [sys.executable, '-m', 'slt_jax.show', f'--config={tiny_demo.DEMO}', f'--workdir={workdir}',
       f'--inputs={_dgs(real_data_dir)}', f'--output={out}', '--config.data.frame_stride=2'],
      cwd=tiny_demo.REPO, capture_output=True, text=True, timeout=300, check=False,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert result.returncode == 0, result.stderr[-3000:]
  assert str(out / 'train_10_original.gif') in result.stdout
  assert len(_gif_frames(out / 'train_10_original.gif')) == 58  # the run's frame_stride 1, not --config's 2
