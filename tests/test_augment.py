"""Spatial augmentations of slt_jax/data/augment.py: the yaw turn and the left/right mirror do what they say, keep
every shape and mask, and leave masked points at 0."""
import numpy as np
import pytest

from slt_jax.data import augment
from slt_jax.data import keypoints as kp_lib

NAMES = kp_lib.preset('hands_body')


def _batch(b=4, t=6, c=3, seed=0):
  """points f32[B, T, K, C] of the hands_body preset with some masked points (0), visible bool[B, T, K]."""
  rng = np.random.default_rng(seed)
  points = rng.normal(0, 1, (b, t, len(NAMES), c)).astype(np.float32)
  visible = rng.random((b, t, len(NAMES))) > 0.2
  points[~visible] = 0.0
  return points, visible


@pytest.mark.parametrize('c', [2, 3])
def test_yaw_turns_about_the_vertical_axis(c):
  points, visible = _batch(c=c)
  yaw = 0.3
  out, out_visible = augment.spatial_numpy(points, visible, (7, 1), yaw=yaw)
  assert out.shape == points.shape and out.dtype == np.float32
  np.testing.assert_array_equal(out_visible, visible)
  assert (out[~visible] == 0).all()
  np.testing.assert_allclose(out[..., 1], points[..., 1], atol=1e-6)  # height is kept
  for i in range(len(points)):
    v = visible[i]
    if c == 3:  # a rotation in the x/z plane: one angle per example, lengths kept
      angle = np.arctan2(out[i][v][:, 0], out[i][v][:, 2]) - np.arctan2(points[i][v][:, 0], points[i][v][:, 2])
      angle = (angle + np.pi) % (2 * np.pi) - np.pi
      assert np.ptp(angle) < 1e-4 and abs(angle[0]) <= yaw + 1e-6
      np.testing.assert_allclose(np.hypot(out[i][v][:, 0], out[i][v][:, 2]),
                                 np.hypot(points[i][v][:, 0], points[i][v][:, 2]), rtol=1e-5)
    else:  # z unknown: the projection of the turn, x shrinks by cos(angle)
      ratio = out[i][v][:, 0] / points[i][v][:, 0]
      assert np.ptp(ratio) < 1e-5 and np.cos(yaw) - 1e-6 <= ratio[0] <= 1.0
  assert not np.allclose(out, points)  # it did turn


def test_yaw_angles_spread_over_the_range():
  points, visible = _batch(b=256, t=1)
  points[..., 2] = 0.0
  points[..., 0] = 1.0  # x = 1, z = 0: the turn moves it to (cos a, -sin a)
  visible[:] = True
  out, _ = augment.spatial_numpy(points, visible, (3, 4), yaw=0.2)
  angle = np.arcsin(-out[:, 0, 0, 2])
  assert angle.min() < -0.15 and angle.max() > 0.15 and np.abs(angle).max() <= 0.2 + 1e-6


def test_mirror_swaps_left_and_right_hands_of_the_layout():
  points, visible = _batch()
  perm = kp_lib.mirror_permutation(NAMES)
  out, out_visible = augment.spatial_numpy(points, visible, (0, 0), mirror_perm=perm, mirror_prob=1.0)
  index = {kp: i for i, kp in enumerate(NAMES)}
  pairs = [(index[(kp_lib.LEFT_HAND, p)], index[(kp_lib.RIGHT_HAND, p)]) for p in kp_lib.HAND_LANDMARKS]
  pairs += [(index[(kp_lib.POSE, f'LEFT_{p}')], index[(kp_lib.POSE, f'RIGHT_{p}')])
            for p in ('SHOULDER', 'ELBOW', 'WRIST', 'HIP')]
  assert len(pairs) == len(NAMES) // 2
  for left, right in pairs:  # each side takes the other's points, x negated
    for a, b in ((left, right), (right, left)):
      np.testing.assert_array_equal(out_visible[:, :, a], visible[:, :, b])
      np.testing.assert_allclose(out[:, :, a, 0], -points[:, :, b, 0], atol=1e-6)
      np.testing.assert_allclose(out[:, :, a, 1:], points[:, :, b, 1:], atol=1e-6)
  assert (out[~out_visible] == 0).all()
