"""Keypoint layouts (Holistic, OpenPose, COCO-WholeBody, AlphaPose), semantic presets, and tools.to_pose.

The oracle is the published point order of each layout, written out below from its source (not from
pose-format's point names): MediaPipe's pose landmark list, OpenPose's BODY_25 / BODY_135 part maps
(poseParameters.cpp), MMPose's COCO-WholeBody and Halpe dataset metadata.
"""
import io
import os
import pathlib
import pickle

import numpy as np
import pytest
from pose_format import Pose
from pose_format.numpy.pose_body import NumPyPoseBody

from slt_jax.data import keypoints as kp_lib
from slt_jax.data import pose_io
from slt_jax.tools import to_pose

MEDIAPIPE_POSE_33 = [
    'nose', 'left_eye_inner', 'left_eye', 'left_eye_outer', 'right_eye_inner', 'right_eye', 'right_eye_outer',
    'left_ear', 'right_ear', 'mouth_left', 'mouth_right', 'left_shoulder', 'right_shoulder', 'left_elbow',
    'right_elbow', 'left_wrist', 'right_wrist', 'left_pinky', 'right_pinky', 'left_index', 'right_index',
    'left_thumb', 'right_thumb', 'left_hip', 'right_hip', 'left_knee', 'right_knee', 'left_ankle', 'right_ankle',
    'left_heel', 'right_heel', 'left_foot_index', 'right_foot_index']
UPPER_BODY_8 = ['left_shoulder', 'right_shoulder', 'left_elbow', 'right_elbow', 'left_wrist', 'right_wrist',
                'left_hip', 'right_hip']
COCO_BODY_17 = ['nose', 'left_eye', 'right_eye', 'left_ear', 'right_ear', 'left_shoulder', 'right_shoulder',
                'left_elbow', 'right_elbow', 'left_wrist', 'right_wrist', 'left_hip', 'right_hip', 'left_knee',
                'right_knee', 'left_ankle', 'right_ankle']
COCO_FEET_6 = ['left_big_toe', 'left_small_toe', 'left_heel', 'right_big_toe', 'right_small_toe', 'right_heel']
BODY_25 = ['nose', 'neck', 'right_shoulder', 'right_elbow', 'right_wrist', 'left_shoulder', 'left_elbow',
           'left_wrist', 'mid_hip', 'right_hip', 'right_knee', 'right_ankle', 'left_hip', 'left_knee', 'left_ankle',
           'right_eye', 'left_eye', 'right_ear', 'left_ear', 'left_big_toe', 'left_small_toe', 'left_heel',
           'right_big_toe', 'right_small_toe', 'right_heel']
HANDS_42 = [f'{side}_hand.{i}' for side in ('left', 'right') for i in range(21)]
FACE68 = [f'face68.{i}' for i in range(68)]


def _enum(names, start=0):
  return {n: start + i for i, n in enumerate(names)}


def _hands(left, right, left_wrist=None, right_wrist=None):
  """21 points per hand from `left` / `right`; with a wrist index, the hand's joints 1-20 only."""
  if left_wrist is None:
    return {**_enum(HANDS_42[:21], left), **_enum(HANDS_42[21:], right)}
  return {'left_hand.0': left_wrist, 'right_hand.0': right_wrist,
          **_enum(HANDS_42[1:21], left), **_enum(HANDS_42[22:], right)}


def published(layout: str) -> dict[str, int]:
  """semantic point -> its global index in a file of `layout`, from the layout's published point list."""
  if layout == 'holistic_reduced_178':  # pose-format's reduce_holistic: 8 pose, 128 contour face points
    contour = [f'face_mesh.{p}' for p in kp_lib.FACE_CONTOUR_POINTS]
    return {**_enum(UPPER_BODY_8), **_enum(contour, 8), **_hands(136, 157)}
  if layout.startswith('holistic_'):
    face = 478 if layout in ('holistic_553', 'holistic_586') else 468
    return {**_enum(MEDIAPIPE_POSE_33), **_enum([f'face_mesh.{i}' for i in range(face)], 33),
            **_hands(33 + face, 54 + face)}
  if layout in ('coco_wholebody_133', 'alphapose_133'):  # MMPose coco_wholebody.py: ids 0-132
    return {**_enum(COCO_BODY_17 + COCO_FEET_6), **_enum(FACE68, 23), **_hands(91, 112)}
  if layout == 'alphapose_136':  # Halpe (MMPose halpe.py): 17 head, 18 neck, 19 hip; feet interleaved
    feet = ['left_big_toe', 'right_big_toe', 'left_small_toe', 'right_small_toe', 'left_heel', 'right_heel']
    return {**_enum(COCO_BODY_17), 'head_top': 17, 'neck': 18, 'mid_hip': 19, **_enum(feet, 20),
            **_enum(FACE68, 26), **_hands(94, 115)}
  if layout == 'openpose_137':  # BODY_25, face 70 (68: right pupil, 69: left), hands 21
    return {**_enum(BODY_25), **_enum(FACE68, 25), 'right_pupil': 93, 'left_pupil': 94, **_hands(95, 116)}
  if layout == 'openpose_135':  # BODY_135: body 25, hands' joints 1-20 at 25 / 45, face 70 at 65
    return {**_enum(COCO_BODY_17), 'upper_neck': 17, 'head_top': 18, **_enum(COCO_FEET_6, 19),
            **_hands(25, 45, left_wrist=9, right_wrist=10), **_enum(FACE68, 65), 'right_pupil': 133,
            'left_pupil': 134}
  raise KeyError(layout)


@pytest.mark.parametrize('name', sorted(kp_lib.LAYOUTS))
def test_layout_points_are_the_published_ones(name):
  layout = kp_lib.LAYOUTS[name]
  keypoints = layout.keypoints
  assert len(keypoints) == int(name.rsplit('_', 1)[1])
  assert len(set(keypoints)) == len(keypoints), 'a (component, point) name must be unique in its layout'
  ours = {s: keypoints.index(kp) for s, kp in layout.points.items() if kp in keypoints}
  assert ours == published(name)
  assert kp_lib.detect_layout(layout.header()) is layout
  assert all(c.format == ('XYZC' if layout.dims == 3 else 'XYC') for c in layout.header().components)


def test_holistic_refined_layout_matches_real_file(real_data_dir):
  path = real_data_dir / 'pose-format/tests/data/hand_estimation/6fb01565da31c5500d1ef2cd2906b06b.pose'
  real = Pose.read(path.read_bytes()).header  # refined face (478) + world landmarks: 586 points
  assert kp_lib.LAYOUTS['holistic_586'].keypoints == kp_lib.header_keypoints(real)
  assert kp_lib.detect_layout(real).name == 'holistic_586'


def test_preset_semantic_orders():
  assert kp_lib.PRESET_POINTS['hands_body'] == tuple(UPPER_BODY_8 + HANDS_42)
  assert kp_lib.PRESET_POINTS['wholebody_133'] == tuple(COCO_BODY_17 + COCO_FEET_6 + FACE68 + HANDS_42)
  assert kp_lib.PRESET_POINTS['openpose_137'] == tuple(BODY_25 + FACE68 + ['right_pupil', 'left_pupil'] + HANDS_42)
  for name, points in kp_lib.PRESET_POINTS.items():
    assert len(kp_lib.PRESETS[name]) == len(points) == len(set(points)), name


# --- the same skeleton written in every layout -----------------------------------------------------
T = 6


def _skeleton(seed=0) -> dict[str, np.ndarray]:
  """semantic point -> f32[T, 3]: one signer, every point distinct."""
  rng = np.random.default_rng(seed)
  names = set()
  for name in kp_lib.LAYOUTS:
    names |= set(published(name))
  return {n: rng.uniform(50, 450, (T, 3)).astype(np.float32) for n in sorted(names)}


def _write_layout(path, layout_name, skeleton, seed=1):
  """A .pose file of the layout (pose-format's own Pose / header): the skeleton at its published indices,
  different noise everywhere else. Returns data f32[T, K, D] as written."""
  layout = kp_lib.LAYOUTS[layout_name]
  k = len(layout.keypoints)
  data = np.random.default_rng(seed).uniform(-1000, -500, (T, k, layout.dims)).astype(np.float32)
  for name, i in published(layout_name).items():
    if not name.endswith('_hand.0'):  # openpose_135's hand roots are its wrists: the wrist's value wins
      data[:, i] = skeleton[name][:, :layout.dims]
  for name in ('left_hand.0', 'right_hand.0'):
    if layout_name != 'openpose_135':
      data[:, published(layout_name)[name]] = skeleton[name][:, :layout.dims]
  conf = np.ones((T, 1, k), np.float32)
  buf = io.BytesIO()
  Pose(layout.header(), NumPyPoseBody(fps=25, data=data[:, None], confidence=conf)).write(buf)
  path.write_bytes(buf.getvalue())
  return data


SAME_POINTS = {  # preset -> layouts that have all its points, each a different file of the same signer
    'hands_body': [n for n in kp_lib.LAYOUTS if n != 'openpose_135'],
    'wholebody_133': ['coco_wholebody_133', 'alphapose_133', 'alphapose_136', 'openpose_137'],
    'youtube_asl': [n for n in kp_lib.LAYOUTS if n.startswith('holistic')],
    'reduced_178': [n for n in kp_lib.LAYOUTS if n.startswith('holistic')],
}


@pytest.mark.parametrize('preset', sorted(SAME_POINTS))
def test_preset_picks_the_same_body_parts_from_every_layout(tmp_path, preset):
  skeleton = _skeleton()
  expected = np.stack([skeleton[s][:, :2] for s in kp_lib.PRESET_POINTS[preset]], 1)  # [T, K, 2]
  normalised = {}
  for layout in SAME_POINTS[preset]:
    path = tmp_path / f'{layout}.pose'
    _write_layout(path, layout, skeleton)
    raw = pose_io.read_pose(path, pose_io.PoseOptions(keypoints=preset, coords='xy', normalize='none'))
    np.testing.assert_array_equal(raw.points, expected, err_msg=layout)
    assert raw.keypoints == kp_lib.preset(preset)  # the features are named as on the preset's home layout
    options = pose_io.PoseOptions(keypoints=preset, coords='xy', normalize='shoulders', hand_normalize=True)
    normalised[layout] = pose_io.read_pose(path, options).points
  first = SAME_POINTS[preset][0]
  for layout, points in normalised.items():  # the shoulder frame is found in every layout
    np.testing.assert_allclose(points, normalised[first], rtol=1e-5, atol=1e-5, err_msg=layout)


@pytest.mark.parametrize('preset', ['hands_body', 'wholebody_133'])
def test_openpose_135_hands_take_the_body_wrists(tmp_path, preset):
  skeleton = _skeleton()
  path = tmp_path / 'op135.pose'
  data = _write_layout(path, 'openpose_135', skeleton)
  arrays = pose_io.read_pose(path, pose_io.PoseOptions(keypoints=preset, coords='xy', normalize='none'))
  where = published('openpose_135')
  np.testing.assert_array_equal(arrays.points, data[:, [where[s] for s in kp_lib.PRESET_POINTS[preset]]])
  names = kp_lib.PRESET_POINTS[preset]
  np.testing.assert_array_equal(arrays.points[:, names.index('left_hand.0')],
                                skeleton['left_wrist'][:, :2])  # the documented substitute


def test_both_wrists_and_all_hand_points_from_every_layout(tmp_path):
  skeleton = _skeleton()
  wanted = ['left_wrist', 'right_wrist'] + HANDS_42
  home = kp_lib.LAYOUTS['holistic_543'].points
  for layout in kp_lib.LAYOUTS:
    path = tmp_path / f'{layout}.pose'
    _write_layout(path, layout, skeleton)
    header = Pose.read(path.read_bytes()).header
    idx = kp_lib.select_indices(header, [home[s] for s in wanted], source=str(path))
    np.testing.assert_array_equal(idx, [published(layout)[s] for s in wanted], err_msg=layout)


def test_missing_points_name_them_and_the_layout(tmp_path):
  skeleton = _skeleton()
  coco = tmp_path / 'coco.pose'
  _write_layout(coco, 'coco_wholebody_133', skeleton)
  with pytest.raises(pose_io.KeypointsMismatchError,
                     match=r"coco\.pose.*'youtube_asl'.*37 point.*FACE_LANDMARKS:61 \(face_mesh\.61\).*"
                           r"layout 'coco_wholebody_133'"):
    pose_io.read_pose(coco, pose_io.PoseOptions(keypoints='youtube_asl'))
  holistic = tmp_path / 'holistic.pose'
  _write_layout(holistic, 'holistic_543', skeleton)
  with pytest.raises(pose_io.KeypointsMismatchError,
                     match=r"'wholebody_133'.*72 point.*BODY:left_big_toe, BODY:left_small_toe.*FACE:face-0 \(face68\.0\).*"
                           r"layout 'holistic_543'"):
    pose_io.read_pose(holistic, pose_io.PoseOptions(keypoints='wholebody_133'))
  with pytest.raises(pose_io.KeypointsMismatchError, match=r'pose_keypoints_2d:Neck \(neck\).*coco_wholebody_133'):
    pose_io.read_pose(coco, pose_io.PoseOptions(keypoints='openpose_137'))


@pytest.mark.parametrize('name', sorted(kp_lib.LAYOUTS))
def test_mirror_swaps_sides_in_every_layout(name):
  points = kp_lib.LAYOUTS[name].points
  keypoints = set(kp_lib.LAYOUTS[name].keypoints)
  face68 = {0: 16, 8: 8, 17: 26, 30: 30, 36: 45, 39: 42, 48: 54, 51: 51, 60: 64, 66: 66}
  for s in published(name):
    if s.startswith('left_') and not s.startswith('left_hand.0'):
      assert kp_lib.mirror_keypoint(points[s]) == points['right_' + s[5:]], s
    if s.startswith('face68.') and int(s[7:]) in face68:
      assert kp_lib.mirror_keypoint(points[s]) == points[f'face68.{face68[int(s[7:])]}'], s
  assert all(kp_lib.mirror_keypoint(kp) in keypoints for kp in keypoints if kp_lib.semantic_name(kp))
  perm = kp_lib.mirror_permutation(kp_lib.preset('wholebody_133'))
  np.testing.assert_array_equal(perm[perm], np.arange(133))


# --- tools.to_pose ---------------------------------------------------------------------------------
def _arrays(k, dims, people=None, seed=0):
  """Keypoints [T, (N,) K, dims + 1] with some NaN coordinates and zero confidences."""
  rng = np.random.default_rng(seed)
  shape = (T, k) if people is None else (T, people, k)
  arr = np.concatenate([rng.uniform(0, 640, shape + (dims,)), rng.uniform(0.1, 1, shape + (1,))], -1)
  arr = arr.astype(np.float32)
  arr[1, ..., 3, 0] = np.nan
  arr[2, ..., 5, dims] = 0.0
  arr[3, ..., 7, dims] = np.nan
  return arr


def _read_all(path, coords='xy'):
  return pose_io.read_pose(path, pose_io.PoseOptions(keypoints=None, coords=coords, normalize='none'))


def _check_round_trip(arrays, arr, dims):
  first = arr if arr.ndim == 3 else arr[:, 0]
  visible = np.isfinite(first).all(-1) & (first[..., dims] > 0)
  np.testing.assert_array_equal(arrays.visible, visible)
  np.testing.assert_array_equal(arrays.points[visible], first[visible][:, :arrays.points.shape[-1]])
  assert not visible[1, 3] and not visible[2, 5] and not visible[3, 7] and visible.sum() == visible.size - 3


def test_to_pose_round_trip_npy(tmp_path):
  arr = _arrays(133, 2)
  np.save(tmp_path / 'clip.npy', arr)
  assert to_pose.main(['--layout=coco_wholebody_133', '--fps=25', str(tmp_path / 'clip.npy'),
                       str(tmp_path / 'clip.pose')]) == 0
  arrays = _read_all(tmp_path / 'clip.pose')
  assert arrays.fps == 25 and arrays.keypoints == kp_lib.LAYOUTS['coco_wholebody_133'].keypoints
  _check_round_trip(arrays, arr, 2)
  assert not _read_all(tmp_path / 'clip.pose', coords='xyz').points[..., 2].any()  # a 2D layout: z = 0
  body = Pose.read((tmp_path / 'clip.pose').read_bytes()).body
  assert np.isfinite(body.data.data).all()  # NaNs are masked in the file, not written


def test_to_pose_npz_people_axis_and_holistic(tmp_path):
  arr = _arrays(136, 2, people=1)  # [T, 1, K, C]
  np.savez(tmp_path / 'a.npz', keypoints=arr[..., :2], scores=arr[..., 2], fps=np.float32(30))
  assert to_pose.main(['--layout=alphapose_136', str(tmp_path / 'a.npz'), str(tmp_path)]) == 0
  arrays = _read_all(tmp_path / 'a.pose')
  assert arrays.fps == 30
  _check_round_trip(arrays, arr, 2)
  arr = _arrays(553, 3)  # x, y, z, confidence
  np.save(tmp_path / 'h.npy', arr)
  assert to_pose.main(['--layout=holistic_553', '--fps=24', str(tmp_path / 'h.npy'), str(tmp_path / 'h.pose')]) == 0
  _check_round_trip(_read_all(tmp_path / 'h.pose', coords='xyz'), arr, 3)
  # the file reads as Holistic: a preset picks its points by name
  assert pose_io.read_pose(tmp_path / 'h.pose', pose_io.PoseOptions(keypoints='youtube_asl')).points.shape == (T, 85, 3)


def test_to_pose_refuses_bad_input_clearly(tmp_path, capsys):
  def run(*args):
    assert to_pose.main(list(map(str, args))) == 2
    return capsys.readouterr().err

  arr = _arrays(133, 2)
  np.save(tmp_path / 'clip.npy', arr)
  assert "133 points per frame, but layout 'alphapose_136' has 136 (layouts with 133: " \
         "['coco_wholebody_133', 'alphapose_133'])" in run('--layout=alphapose_136', '--fps=25', tmp_path / 'clip.npy',
                                                          tmp_path / 'x.pose')
  assert 'no frame rate: give --fps' in run('--layout=coco_wholebody_133', tmp_path / 'clip.npy', tmp_path / 'x.pose')
  np.savez(tmp_path / 'fps.npz', keypoints=arr, fps=np.float32(30))
  assert 'holds fps=30 but --fps=25' in run('--layout=coco_wholebody_133', '--fps=25', tmp_path / 'fps.npz',
                                            tmp_path / 'x.pose')
  np.save(tmp_path / 'xy.npy', arr[..., :2])
  assert '--confidence_one' in run('--layout=coco_wholebody_133', '--fps=25', tmp_path / 'xy.npy', tmp_path / 'x.pose')
  assert not (tmp_path / 'x.pose').exists()
  assert to_pose.main(['--layout=coco_wholebody_133', '--fps=25', '--confidence_one', str(tmp_path / 'xy.npy'),
                       str(tmp_path / 'x.pose')]) == 0
  assert _read_all(tmp_path / 'x.pose').visible.sum() == arr[..., 0].size - 1  # the NaN point only
  assert 'exists: pass --overwrite' in run('--layout=coco_wholebody_133', '--fps=25', '--confidence_one',
                                           tmp_path / 'xy.npy', tmp_path / 'x.pose')


class _Payload:
  """Unpickling this creates a file: the proof that a loader ran a pickle's code."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (open, (self.path, 'w'))


def test_to_pose_never_unpickles(tmp_path, capsys):
  ran = str(tmp_path / 'the_pickle_ran')
  (tmp_path / 'x.pkl').write_bytes(pickle.dumps({'keypoints': _Payload(ran)}))
  np.save(tmp_path / 'obj.npy', np.array([_Payload(ran)], dtype=object), allow_pickle=True)
  assert not os.path.exists(ran)
  for name in ('x.pkl', 'obj.npy'):
    assert to_pose.main(['--layout=coco_wholebody_133', '--fps=25', str(tmp_path / name),
                         str(tmp_path / 'out.pose')]) == 2
    err = capsys.readouterr().err
    assert 'pickles are not read' in err and 'np.save' in err, err
  assert not os.path.exists(ran) and not (tmp_path / 'out.pose').exists()


def test_to_pose_folder(tmp_path, capsys):
  src, dst = tmp_path / 'arrays', tmp_path / 'poses'
  (src / 'sub').mkdir(parents=True)
  good = _arrays(137, 2)
  np.save(src / 'a.npy', good)
  np.savez(src / 'sub' / 'b.npz', keypoints=good[..., :2], scores=good[..., 2])
  np.save(src / 'bad.npy', good[:, :100])
  (src / 'c.pkl').write_bytes(pickle.dumps({'keypoints': 1}))
  assert to_pose.main(['--layout=openpose_137', '--fps=24', str(src), str(dst)]) == 1
  out = capsys.readouterr()
  assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob('*')) == ['a.pose', 'sub', 'sub/b.pose']
  for path in (dst / 'a.pose', dst / 'sub' / 'b.pose'):
    _check_round_trip(_read_all(path), good, 2)
  assert 'bad.npy: 100 points per frame' in out.err and 'c.pkl: pickles are not read' in out.err
  assert 'wrote 2 .pose files; kept 0 existing' in out.out and '1 failed; 1 pickles skipped' in out.out
  (src / 'bad.npy').unlink()
  assert to_pose.main(['--layout=openpose_137', '--fps=24', str(src), str(dst)]) == 0  # a rerun keeps them
  assert 'wrote 0 .pose files; kept 2 existing' in capsys.readouterr().out


def test_readme_preset_table_is_true():
  """The README's preset x layout table: a ✓ exactly where the layouts of its column have every point."""
  readme = (pathlib.Path(__file__).parent.parent / 'README.md').read_text(encoding='utf-8')
  columns = [[n for n in kp_lib.LAYOUTS if n.startswith('holistic_5')], ['holistic_reduced_178'], ['openpose_137'],
             ['openpose_135'], ['coco_wholebody_133', 'alphapose_133'], ['alphapose_136']]
  rows = {}
  for line in readme.splitlines():
    cells = [c.strip() for c in line.strip().strip('|').split('|')]
    if len(cells) == 8 and cells[0].startswith('`') and cells[0].strip('`').split('`')[0] in kp_lib.PRESETS:
      rows[cells[0].strip('`').split('`')[0]] = cells
  assert sorted(rows) == sorted(kp_lib.PRESETS), 'every preset has a row'
  for name, cells in rows.items():
    assert int(cells[1]) == len(kp_lib.PRESETS[name])
    for layouts, cell in zip(columns, cells[2:]):
      for layout in layouts:
        have = set(kp_lib.LAYOUTS[layout].keypoints)
        complete = all(kp_lib.LAYOUTS[layout].points.get(s) in have for s in kp_lib.PRESET_POINTS[name])
        assert complete == cell.startswith('✓'), (name, layout, cell)
