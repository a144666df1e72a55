"""Training-time pose augmentations, deterministic given their seeds (exact resume: seed = f(step)).

Two kinds, placed where they are cheapest:
- `resample_frames` (TF ops, one example, before batching): speed change and frame dropout. They change
  the number of frames T, so they must run before the frames are bucketed and padded (the training
  pipeline draws the same resampling in its numpy batch plan).
- `spatial_numpy` (a padded batch, after batching): per-example rotation, scale, shear, a turn about the
  vertical axis (yaw), small Gaussian noise and an optional left/right mirror, vectorised over the batch: one BLAS matmul and a few
  contiguous passes. The training pipeline calls it inside its numpy batch function; `spatial` is the
  same as a TF op. On the CPU, TF kernels for this ([B, T, K, 3] slices, stacks, broadcast selects,
  stateless normals) cost ~10x more (20-30 ms per 32x128x50x3 batch on one thread).
  They keep every shape and mask; masked points and padding frames stay exactly 0.

Coordinates are the normalised ones (origin between the shoulders for 'shoulders'), so rotations and
the mirror (x -> -x plus the left/right point swap of `keypoints.mirror_permutation`) act around the
body. Seeds are int[2] (the pipeline uses (seed, step)).
"""
import functools
import math
import threading

import numpy as np
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
            noise: float = 0.0, mirror_perm=None, mirror_prob: float = 0.5, yaw: float = 0.0):
  """Per-example affine jitter (+ optional mirror) of a padded batch, as a TF op (`spatial_numpy` inside).

  points: f32[B, T, K, C] (C = 2 or 3), 0 where not visible (pose_io and the pipeline write them so; the
  affine map keeps them 0 and no noise goes there); visible: bool[B, T, K]; seed: int[2].
  rotate: max angle (radians) in the image (x, y) plane; scale: max relative isotropic change;
  shear: max x/y shear factor; noise: std of Gaussian noise on visible points (see `_add_noise`);
  mirror_perm: int[K] from `keypoints.mirror_permutation` (None = no mirror), applied with
  probability mirror_prob; yaw: max turn (radians) of the signer about the vertical (y) axis through the
  origin, as signers stand at an angle to the camera (x' = x cos + z sin, z' = -x sin + z cos; with C = 2, where
  z is unknown, x' = x cos). Returns (points, visible) of the same shapes; masked points stay 0.
  """
  points = tf.convert_to_tensor(points, tf.float32)
  visible = tf.convert_to_tensor(visible, tf.bool)
  fn = functools.partial(spatial_numpy, rotate=rotate, scale=scale, shear=shear, noise=noise,
                         mirror_perm=mirror_perm, mirror_prob=mirror_prob, yaw=yaw)
  args = [points, visible, tf.cast(seed, tf.int64)]
  if mirror_perm is None:  # visible is unchanged: do not copy it through numpy
    out = tf.numpy_function(lambda *a: fn(*a)[0], args, tf.float32, stateful=False)
  else:
    out, visible_out = tf.numpy_function(fn, args, (tf.float32, tf.bool), stateful=False)
    visible = tf.ensure_shape(visible_out, visible.shape)
  return tf.ensure_shape(out, points.shape), visible


def spatial_numpy(points, visible, seed, *, rotate: float = 0.0, scale: float = 0.0, shear: float = 0.0,
                  noise: float = 0.0, mirror_perm=None, mirror_prob: float = 0.5, inplace: bool = False,
                  yaw: float = 0.0):
  """`spatial` on numpy arrays (what the training pipeline's numpy batch function calls).

  Same arguments (seed: int[2], e.g. (seed, step)); returns numpy (points, visible). inplace: write into
  `points` / `visible` (the caller's own fresh arrays) instead of copies.
  """
  points = np.ascontiguousarray(points, np.float32)
  visible = np.ascontiguousarray(visible, np.bool_)
  if not inplace:
    points = points.copy()
  b, t, k, c = points.shape
  if c not in (2, 3):
    raise ValueError(f'spatial augmentation wants 2 or 3 coordinates, got points of shape {points.shape}')
  rng = np.random.Generator(np.random.SFC64(np.random.SeedSequence(np.asarray(seed).astype(np.uint64))))
  flip = rng.random(b) < mirror_prob if mirror_perm is not None else np.zeros(b, bool)
  angle, s, sh_x, sh_y = np.array([[rotate], [scale], [shear], [shear]]) * rng.uniform(-1.0, 1.0, (4, b))
  s += 1.0
  cos, sin = np.cos(angle), np.sin(angle)
  # xy' = s * R(angle) @ [[1, sh_x], [sh_y, 1]] @ F @ xy, z' = s * z, F = diag(-1, 1) on mirrored
  # examples (whose left/right point swap commutes with this per-point map: done first); with yaw, the turn
  # R_y sits between the image-plane map and F.
  m = np.zeros((b, c, c))
  m[:, 0, 0], m[:, 0, 1] = s * (cos - sin * sh_y), s * (cos * sh_x - sin)
  m[:, 1, 0], m[:, 1, 1] = s * (sin + cos * sh_y), s * (sin * sh_x + cos)
  if c == 3:
    m[:, 2, 2] = s
  if yaw:  # drawn after the other angles, so configs without yaw keep their draws
    turn = yaw * rng.uniform(-1.0, 1.0, b)
    r_y = np.zeros((b, c, c))
    r_y[:, 0, 0], r_y[:, 1, 1] = np.cos(turn), 1.0
    if c == 3:
      r_y[:, 0, 2], r_y[:, 2, 0], r_y[:, 2, 2] = np.sin(turn), -np.sin(turn), np.cos(turn)
    m = m @ r_y  # the turn first, then the image-plane map
  m[flip, :, 0] *= -1.0
  if flip.any():
    perm = np.asarray(mirror_perm)
    points[flip] = points[flip][:, :, perm]
    visible = visible if inplace else visible.copy()
    visible[flip] = visible[flip][:, :, perm]
  # Frames after the batch's last visible one (its padding) are 0 in and out: skip them.
  used = np.flatnonzero(visible.reshape(b, -1).any(0))
  t_used = int(used[-1]) // k + 1 if len(used) else 0
  n = t_used * k
  if not n:
    return points, visible
  # Per-point products as [N / g, g * C] @ blockdiag(m^T x g): with C = 3 a plain [N, 3] @ [3, 3] product
  # is mostly BLAS overhead; g = 4 points per row halves it (the extra terms are exact zeros).
  g = next(g for g in (4, 2, 1) if n % g == 0)
  mg = np.zeros((b, g, c, g, c), np.float32)
  for j in range(g):
    mg[:, j, :, j, :] = m.transpose(0, 2, 1)
  mg = mg.reshape(b, g * c, g * c)
  table = _noise_table(float(noise)) if noise > 0 else None
  # Some examples at a time through per-thread scratch buffers (no fresh pages per batch, the chunk
  # stays in cache): points -> matmul -> scratch -> + noise -> points.
  step = max(1, _CHUNK_POINTS // n)
  for i in range(0, b, step):
    rows = points[i:i + step]
    x = _frames_view(rows, t_used, g * c)
    y = _scratch('affine', x.size).reshape(x.shape)
    np.matmul(x, mg[i:i + step], out=y)
    if table is None:
      x[...] = y
    else:
      _add_noise(y.reshape(len(y), n, c), table, rng, out=_frames_view(rows, t_used, c))
  return points, visible


_CHUNK_POINTS = 65536  # points per chunk of spatial_numpy (768 KB of f32 for C = 3)


def _frames_view(x, t_used: int, width: int):
  """x[:, :t_used] of a C-contiguous [B, T, ...] array as a [B, -1, width] view (never a copy)."""
  b = x.shape[0]
  return x.reshape(b, -1)[:, :t_used * math.prod(x.shape[2:])].reshape(b, -1, width)


def _add_noise(y, table, rng, out):
  """out = y + noise where y != 0; y, out: f32[B, N, C].

  Masked points are exactly 0 (and stay so); a visible point's coordinate that is exactly 0.0 (e.g. the
  z of 2D keypoints stored as 0) gets no noise either. Example i's noise is the window
  table[o_i : o_i + N * C] at a uniform random offset o_i. This costs a few contiguous passes: ~4x less
  than looking up B * N * C quantised normals, or than masking by the point mask repeated over C.
  """
  b, n, c = y.shape
  size = n * c
  if size > len(table):
    raise ValueError(f'noise augmentation: {n} points x {c} coordinates per example exceed the noise table '
                     f'({len(table)} values); lower data.max_frames or the keypoint count')
  flat = y.reshape(b, size)
  noise = _scratch('noise', b * size).reshape(b, size)
  for i, o in enumerate(rng.integers(0, len(table) - size + 1, b)):
    noise[i] = table[o:o + size]
  np.multiply(noise, flat != 0, out=noise)
  np.add(y, noise.reshape(b, n, c), out=out)


_local = threading.local()


def _scratch(name: str, size: int) -> np.ndarray:
  """f32[size] owned by this thread (tf.data runs batches in parallel) and reused across calls."""
  bufs = _local.__dict__.setdefault('bufs', {})
  if name not in bufs or bufs[name].size < size:
    bufs[name] = np.empty(size, np.float32)
  return bufs[name][:size]


_NOISE_TABLE_SIZE = 1 << 22  # 16 MiB per noise std; a window is one example's T * K * C values


@functools.lru_cache(maxsize=4)
def _noise_table(std: float) -> np.ndarray:
  """f32[_NOISE_TABLE_SIZE] of independent N(0, std^2) draws (fixed seed), the source of `_add_noise`'s
  windows. Two examples' windows overlap (then share shifted draws) with probability ~2 N C / size:
  harmless for augmentation; within an example every coordinate's noise is independent."""
  return (std * np.random.default_rng(0x5EED).standard_normal(_NOISE_TABLE_SIZE, np.float32))
