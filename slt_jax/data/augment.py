"""Training-time pose augmentations in TF ops (run inside tf.data; deterministic given the seeds).

Two kinds, placed where they are cheapest:
- `resample_frames` (one example, before batching): speed change and frame dropout. They change the
  number of frames T, so they must run before the frames are bucketed and padded.
- `spatial` (a padded batch, after batching): per-example rotation, scale, shear, small noise and an
  optional left/right mirror, vectorised over the batch (one op chain per batch, not per example).
  They keep every shape and mask; masked points and padding frames stay exactly 0.

Coordinates are the normalised ones (origin between the shoulders for 'shoulders'), so rotations and
the mirror (x -> -x plus the left/right point swap of `keypoints.mirror_permutation`) act around the
body. Seeds are int32/int64[2] tensors for TF's stateless random ops.
"""
import math

import tensorflow as tf


def _seed(seed, k: int):
  """A sub-seed k of a [2] seed (stateless ops want distinct seeds per draw)."""
  seed = tf.cast(seed, tf.int64)
  return tf.stack([seed[0] * 1000003 + k, seed[1]])


def resample_frames(points, visible, seed, *, speed: float = 0.0, frame_dropout: float = 0.0,
                    max_frames: int | None = None):
  """Speed change (nearest-frame resampling by a factor in [1/(1+speed), 1+speed]) + frame dropout.

  points: f32[T, K, C], visible: bool[T, K] -> f32[T', K, C], bool[T', K] with 1 <= T' <= max_frames.
  """
  t = tf.shape(points)[0]
  t_f = tf.cast(t, tf.float32)
  new_t = t
  if speed > 0:
    log_f = tf.random.stateless_uniform([], _seed(seed, 0), -math.log1p(speed), math.log1p(speed))
    new_t = tf.cast(tf.round(t_f * tf.exp(log_f)), tf.int32)
  if max_frames:
    new_t = tf.minimum(new_t, max_frames)
  new_t = tf.maximum(new_t, 1)
  # Frame i of the output shows source frame floor((i + 0.5) * T / T'): uniform, no repeats at 1x.
  idx = tf.cast(tf.floor((tf.range(new_t, dtype=tf.float32) + 0.5) * t_f
                         / tf.cast(new_t, tf.float32)), tf.int32)
  idx = tf.clip_by_value(idx, 0, t - 1)
  if frame_dropout > 0:
    keep = tf.random.stateless_uniform([new_t], _seed(seed, 1)) >= frame_dropout
    keep = tf.logical_or(keep, tf.logical_not(tf.reduce_any(keep)))  # never drop every frame
    idx = tf.boolean_mask(idx, keep)
  return tf.gather(points, idx), tf.gather(visible, idx)


def spatial(points, visible, seed, *, rotate: float = 0.0, scale: float = 0.0, shear: float = 0.0,
            noise: float = 0.0, mirror_perm=None, mirror_prob: float = 0.5):
  """Per-example affine jitter (+ optional mirror) of a padded batch.

  points: f32[B, T, K, C] (C = 2 or 3), visible: bool[B, T, K]; seed: [2].
  rotate: max angle (radians) in the image (x, y) plane; scale: max relative isotropic change;
  shear: max x/y shear factor; noise: std of Gaussian noise on visible points;
  mirror_perm: int[K] from `keypoints.mirror_permutation` (None = no mirror).
  Returns (points, visible) of the same shapes; masked points stay 0.
  """
  b = tf.shape(points)[0]
  c = points.shape[-1]
  if mirror_perm is not None:
    flip = tf.random.stateless_uniform([b], _seed(seed, 0)) < mirror_prob
    perm = tf.constant(mirror_perm, tf.int32)
    m_points = tf.gather(points, perm, axis=2) * tf.constant([-1.0] + [1.0] * (c - 1), tf.float32)
    m_visible = tf.gather(visible, perm, axis=2)
    points = tf.where(flip[:, None, None, None], m_points, points)
    visible = tf.where(flip[:, None, None], m_visible, visible)

  def uniform(k, bound):
    return tf.random.stateless_uniform([b], _seed(seed, k), -bound, bound)

  angle, s, sh_x, sh_y = uniform(1, rotate), 1.0 + uniform(2, scale), uniform(3, shear), uniform(4, shear)
  cos, sin = tf.cos(angle), tf.sin(angle)
  # xy' = s * R(angle) @ [[1, sh_x], [sh_y, 1]] @ xy ; z' = s * z. Written out elementwise: on the
  # CPU this is several times cheaper than a batched matmul/einsum over [B, T, K].
  m00, m01 = s * (cos - sin * sh_y), s * (cos * sh_x - sin)
  m10, m11 = s * (sin + cos * sh_y), s * (sin * sh_x + cos)
  m00, m01, m10, m11, s = (tf.reshape(v, [-1, 1, 1]) for v in (m00, m01, m10, m11, s))
  x, y = points[..., 0], points[..., 1]
  coords = [m00 * x + m01 * y, m10 * x + m11 * y] + [points[..., i] * s for i in range(2, c)]
  out = tf.stack(coords, -1)
  if noise > 0:
    out += noise * tf.random.stateless_normal(tf.shape(out), _seed(seed, 5))
  out = tf.where(visible[..., None], out, 0.0)
  return out, visible
