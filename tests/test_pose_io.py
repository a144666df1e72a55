"""pose_io + keypoints on the real `.pose` files of ../shared/data/real (skipped where absent)."""
import io

import numpy as np
import pytest
from pose_format import Pose
from pose_format.numpy.pose_body import NumPyPoseBody

from slt_jax.data import keypoints as kp_lib
from slt_jax.data import pose_io

RAW = pose_io.PoseOptions(keypoints=None, normalize='none')


def _pose_files(real_data_dir):
  files = sorted(real_data_dir.rglob('*.pose'))
  assert files, f'no .pose files under {real_data_dir}'
  return files


def _raw(path):
  pose = Pose.read(path.read_bytes())
  return pose.header, np.asarray(pose.body.data.data)[:, 0], np.asarray(pose.body.confidence)[:, 0]


def test_reads_every_real_file(real_data_dir):
  versions, layouts = set(), set()
  for path in _pose_files(real_data_dir):
    header, data, conf = _raw(path)
    versions.add(round(header.version, 3))
    layouts.add(header.components[0].name)
    arrays = pose_io.read_pose(path, RAW)
    t, k = conf.shape
    assert arrays.points.shape == (t, k, 3) and arrays.points.dtype == np.float32, path
    expected_visible = (conf > 0) & np.isfinite(data[..., :3]).all(-1)
    np.testing.assert_array_equal(arrays.visible, expected_visible, err_msg=str(path))
    assert np.isfinite(arrays.points).all(), path
    assert not arrays.points[~arrays.visible].any(), path  # masked points are filled with 0
    d = min(3, data.shape[-1])
    np.testing.assert_array_equal(arrays.points[arrays.visible][:, :d], data[..., :d][expected_visible])
  assert versions == {0.0, 0.1, 0.2}
  assert {'POSE_LANDMARKS', 'pose_keypoints_2d', 'RIGHT_HAND_LANDMARKS'} <= layouts


def test_masks_by_confidence_not_by_zero_coordinates(real_data_dir):
  path = real_data_dir / 'pose-format/tests/data/mediapipe.pose'
  _, data, conf = _raw(path)
  assert (data[conf == 0] != 0).any()  # the file carries non-zero values at masked points
  arrays = pose_io.read_pose(path, RAW)
  np.testing.assert_array_equal(arrays.visible, conf > 0)
  # NaN coordinates (hand-normalised file) are masked too.
  path = real_data_dir / 'pose-format/tests/data/mediapipe_hand_normalized.pose'
  _, data, conf = _raw(path)
  assert np.isnan(data).any()
  arrays = pose_io.read_pose(path, RAW)
  assert not arrays.visible[np.isnan(data).any(-1)].any()
  assert np.isfinite(arrays.points).all()


def test_holistic_header_matches_real_file(real_data_dir):
  real = Pose.read((real_data_dir / 'pose-format/pose_viewer/sample-data/example.pose').read_bytes()).header
  ours = kp_lib.holistic_header(320, 240, 0, with_world=True)
  assert [(c.name, c.format, list(c.points)) for c in ours.components] == [
      (c.name, c.format, list(c.points)) for c in real.components]
  for a, b in zip(ours.components, real.components):
    if a.name != kp_lib.FACE:  # we draw the face with contours, not the 2556-edge tessellation
      assert sorted(map(tuple, a.limbs)) == sorted(map(tuple, b.limbs))
  reduced = Pose.read((real_data_dir / 'pose-format/tests/data/mediapipe.pose').read_bytes()).header
  assert kp_lib.header_keypoints(kp_lib.holistic_header(reduced=True)) == kp_lib.header_keypoints(reduced)
  assert kp_lib.PRESETS['reduced_178'] == kp_lib.header_keypoints(reduced)


@pytest.mark.parametrize('name,files', [
    ('hands_body', ['pose-format/pose_viewer/sample-data/example.pose',
                    'pose-format/tests/data/mediapipe.pose',
                    'fluent-pose-synthesis/sample_dataset/test/test_1_original.pose',
                    'sign-language-datasets/autsl/signer0_sample1000.pose']),
    ('reduced_178', ['pose-format/tests/data/hand_estimation/6fb01565da31c5500d1ef2cd2906b06b.pose',
                     'fluent-pose-synthesis/sample_dataset/test/test_1_original.pose']),
    ('youtube_asl', ['sign-language-datasets/rwth_phoenix2014_t/25October_2010_Monday_tagesschau-17.pose',
                     'pose-format/tests/data/mediapipe_long.pose']),
    ('holistic', ['pose-format/pose_viewer/sample-data/example.pose']),
    ('openpose_137', ['pose-format/tests/data/openpose.pose', 'pose-format/pose_viewer/example/example.pose']),
])
def test_presets_pick_points_by_name(real_data_dir, name, files):
  wanted = kp_lib.preset(name)
  for f in files:
    path = real_data_dir / f
    header, data, conf = _raw(path)
    arrays = pose_io.read_pose(path, pose_io.PoseOptions(keypoints=name, normalize='none'))
    assert arrays.points.shape == (conf.shape[0], len(wanted), 3)
    where = {kp: i for i, kp in enumerate(kp_lib.header_keypoints(header))}
    for j in (0, len(wanted) // 2, len(wanted) - 1):
      i = where[wanted[j]]
      np.testing.assert_array_equal(arrays.visible[:, j], conf[:, i] > 0)
      vis = conf[:, i] > 0
      np.testing.assert_allclose(arrays.points[vis, j, :data.shape[-1]], data[vis, i, :3])


def test_preset_missing_points_error_lists_them(real_data_dir):
  path = real_data_dir / 'fluent-pose-synthesis/sample_dataset/test/test_1_original.pose'
  with pytest.raises(pose_io.KeypointsMismatchError, match=r'POSE_LANDMARKS:NOSE.*test_1_original|test_1_original.*POSE_LANDMARKS:NOSE'):
    pose_io.read_pose(path, pose_io.PoseOptions(keypoints='holistic'))
  with pytest.raises(pose_io.KeypointsMismatchError, match='pose_keypoints_2d:Nose'):
    pose_io.read_pose(path, pose_io.PoseOptions(keypoints='openpose_137'))


def test_normalisation(real_data_dir):
  path = real_data_dir / 'pose-format/tests/data/mediapipe.pose'
  arr = pose_io.read_pose(path, pose_io.PoseOptions(keypoints='hands_body', normalize='shoulders'))
  left, right = kp_lib.preset('hands_body').index((kp_lib.POSE, 'LEFT_SHOULDER')), 1
  both = arr.visible[:, left] & arr.visible[:, right]
  mid = (arr.points[both, left] + arr.points[both, right]) / 2
  np.testing.assert_allclose(mid.mean(0), 0, atol=1e-4)
  width = np.linalg.norm((arr.points[both, left] - arr.points[both, right])[:, :2], axis=-1)
  np.testing.assert_allclose(width.mean(), 1, rtol=1e-4)

  arr = pose_io.read_pose(path, pose_io.PoseOptions(keypoints='hands_body', normalize='minmax'))
  pts = arr.points[arr.visible]
  np.testing.assert_allclose(pts.min(0), -1, atol=1e-5)
  np.testing.assert_allclose(pts.max(0), 1, atol=1e-5)

  arr = pose_io.read_pose(path, pose_io.PoseOptions(keypoints='hands_body', hand_normalize=True))
  names = kp_lib.preset('hands_body')
  w, m = names.index((kp_lib.RIGHT_HAND, 'WRIST')), names.index((kp_lib.RIGHT_HAND, 'MIDDLE_FINGER_MCP'))
  vis = arr.visible[:, w] & arr.visible[:, m]
  assert vis.any()
  np.testing.assert_allclose(np.linalg.norm(arr.points[vis, m, :2], axis=-1).mean(), 1, rtol=1e-4)


def test_frames_coords_and_2d_files(real_data_dir):
  path = real_data_dir / 'pose-format/tests/data/mediapipe_long.pose'  # 278 frames
  assert pose_io.read_pose(path, pose_io.PoseOptions(max_frames=100)).points.shape[0] == 100
  assert pose_io.read_pose(path, pose_io.PoseOptions(frame_stride=3)).points.shape[0] == 93
  assert pose_io.read_pose(path, pose_io.PoseOptions(coords='xy')).points.shape[-1] == 2
  arr = pose_io.read_pose(real_data_dir / 'pose-format/tests/data/openpose.pose',
                          pose_io.PoseOptions(keypoints='openpose_137'))
  assert arr.points.shape == (93, 137, 3) and not arr.points[..., 2].any()  # 2D file: z = 0


def _write(path, data):
  path.write_bytes(data)
  return path


def test_bad_files_raise_naming_the_file(real_data_dir, tmp_path):
  good = real_data_dir / 'fluent-pose-synthesis/sample_dataset/test/test_1_original.pose'  # v0.2
  v01 = real_data_dir / 'pose-format/tests/data/mediapipe.pose'
  cases = {
      'missing.pose': None,
      'empty.pose': b'',
      'garbage.pose': b'\x00\x01not a pose file at all' * 3,
      'truncated_v02.pose': good.read_bytes()[:-1000],
      'truncated_v01.pose': v01.read_bytes()[:-10],
      'header_only.pose': good.read_bytes()[:2000],
  }
  for name, content in cases.items():
    path = tmp_path / name if content is None else _write(tmp_path / name, content)
    with pytest.raises(pose_io.PoseReadError, match=name):
      pose_io.read_pose(path)


def test_no_usable_frames(tmp_path):
  header = kp_lib.holistic_header(reduced=True)
  k = header.total_points()
  body = NumPyPoseBody(fps=25, data=np.ones((5, 1, k, 3), np.float32), confidence=np.zeros((5, 1, k), np.float32))
  buf = io.BytesIO()
  Pose(header, body).write(buf)
  path = _write(tmp_path / 'blank.pose', buf.getvalue())
  with pytest.raises(pose_io.NoUsableFramesError, match='blank.pose'):
    pose_io.read_pose(path)


def test_mirror_permutation():
  for name, names in kp_lib.PRESETS.items():
    perm = kp_lib.mirror_permutation(names)
    np.testing.assert_array_equal(perm[perm], np.arange(len(names)), err_msg=name)
  names = kp_lib.preset('hands_body')
  perm = kp_lib.mirror_permutation(names)
  assert names[perm[names.index((kp_lib.POSE, 'LEFT_WRIST'))]] == (kp_lib.POSE, 'RIGHT_WRIST')
  assert names[perm[names.index((kp_lib.LEFT_HAND, 'THUMB_TIP'))]] == (kp_lib.RIGHT_HAND, 'THUMB_TIP')
  op = kp_lib.preset('openpose_137')
  assert op[kp_lib.mirror_permutation(op)[op.index((kp_lib.OP_BODY, 'LShoulder'))]] == (kp_lib.OP_BODY, 'RShoulder')
