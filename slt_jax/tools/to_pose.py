"""Numpy keypoint arrays -> `.pose` files, so pose data released as arrays can be trained on.

    python -m slt_jax.tools.to_pose --layout=coco_wholebody_133 --fps=25 clip.npy clip.pose
    python -m slt_jax.tools.to_pose --layout=coco_wholebody_133 --fps=25 arrays/ poses/   # a folder
    python -m slt_jax.tools.to_pose --list_layouts

Inputs (read with `np.load(..., allow_pickle=False)`):
  .npy  f32[T, K, C] or f32[T, N, K, C] (N people): C = D + 1 (x, y[, z], confidence), or C = D with
        --confidence_one. D is the layout's: 2 for OpenPose / COCO-WholeBody / AlphaPose, 3 for Holistic.
  .npz  'keypoints' f32[T, (N,) K, D or D + 1] (an .npz of one array: that array), and optionally
        'scores' (or 'keypoint_scores', 'confidence') f32[T, (N,) K] -- the names MMPose / rtmlib give
        their outputs -- and 'fps' (a scalar; --fps may be left out then, or must agree).
K must be the layout's point count (`--list_layouts`). A point with a NaN / inf coordinate or confidence
is masked (confidence 0, coordinates 0). A folder converts each .npy / .npz below it into the same place
under OUT (`a/b.npz` -> `OUT/a/b.pose`); existing outputs are kept unless --overwrite; files that fail
are listed at the end (exit status 1).

Pickles (.pkl, .pickle) are never read: loading one runs whatever code it holds. Convert a release you
trust yourself, in an environment you trust, e.g.
    python -c "import pickle, numpy as np; d = pickle.load(open('x.pkl', 'rb')); \\
               np.savez('x.npz', keypoints=d['keypoints'], scores=d['scores'])"
(the key names are the release's own), then convert the .npz.
"""
import argparse
import math
import os
import pathlib
import sys

import numpy as np
from pose_format import Pose
from pose_format.numpy import NumPyPoseBody

from slt_jax.data import keypoints as kp_lib

ARRAY_SUFFIXES = ('.npy', '.npz')
PICKLE_SUFFIXES = ('.pkl', '.pickle')
_KEYPOINT_KEYS = ('keypoints',)
_SCORE_KEYS = ('scores', 'keypoint_scores', 'confidence')
PICKLE_MESSAGE = ('pickles are not read (loading one runs the code it holds): load it yourself in an '
                  'environment you trust and np.save / np.savez its arrays (keypoints [T, K, C], scores '
                  '[T, K]), then convert the .npy / .npz (see `python -m slt_jax.tools.to_pose --help`)')


class ConversionError(ValueError):
  """Arrays that cannot become a `.pose` file of the layout, with a message saying why."""


def load_arrays(path: str) -> tuple[np.ndarray, np.ndarray | None, float | None]:
  """(keypoints, scores or None, fps or None) of a .npy / .npz file, never unpickling."""
  suffix = pathlib.Path(path).suffix.lower()
  if suffix in PICKLE_SUFFIXES:
    raise ConversionError(f'{path}: {PICKLE_MESSAGE}')
  if suffix not in ARRAY_SUFFIXES:
    raise ConversionError(f'{path}: not a .npy or .npz file')
  try:
    loaded = np.load(path, allow_pickle=False)
  except ValueError as e:  # object arrays need pickle
    raise ConversionError(f'{path}: holds Python objects, not numbers ({e}); {PICKLE_MESSAGE}') from e
  except (OSError, EOFError) as e:
    raise ConversionError(f'{path}: cannot read ({e})') from e
  if isinstance(loaded, np.ndarray):
    return loaded, None, None
  with loaded:
    return _npz_arrays(path, {key: loaded[key] for key in loaded.files})


def _npz_arrays(path, arrays) -> tuple[np.ndarray, np.ndarray | None, float | None]:
  keys = [k for k in _KEYPOINT_KEYS if k in arrays] or (list(arrays) if len(arrays) == 1 else [])
  if not keys:
    raise ConversionError(f'{path}: no \'keypoints\' array among {sorted(arrays)} (an .npz needs '
                          f'\'keypoints\', optionally \'scores\' and \'fps\')')
  scores = next((arrays[k] for k in _SCORE_KEYS if k in arrays), None)
  fps = None
  if 'fps' in arrays:
    if arrays['fps'].size != 1:
      raise ConversionError(f'{path}: \'fps\' must be one number, got shape {arrays["fps"].shape}')
    fps = float(arrays['fps'].reshape(()))
  return arrays[keys[0]], scores, fps


def body_arrays(keypoints: np.ndarray, scores: np.ndarray | None, layout: kp_lib.Layout, *,
                confidence_one: bool = False, source: str = '') -> tuple[np.ndarray, np.ndarray]:
  """Keypoint arrays -> (data f32[T, N, K, D], confidence f32[T, N, K]) of `layout`, NaNs masked.

  keypoints: [T, K, C] or [T, N, K, C] with C = D + 1 (confidence last), or C = D with `scores`
  ([T, K] / [T, N, K]) or `confidence_one` (every finite point gets confidence 1).
  """
  where = f'{source}: ' if source else ''
  keypoints = np.asarray(keypoints)
  if not np.issubdtype(keypoints.dtype, np.number) or keypoints.ndim not in (3, 4):
    raise ConversionError(f'{where}keypoints must be numbers shaped [T, K, C] or [T, N, K, C], got '
                          f'{keypoints.dtype} {keypoints.shape}')
  if keypoints.ndim == 3:
    keypoints = keypoints[:, None]
  if scores is not None and np.ndim(scores) == 2:  # [T, K]: the one person's
    scores = np.asarray(scores)[:, None]
  frames, people, points, channels = keypoints.shape
  if frames == 0 or people == 0:
    raise ConversionError(f'{where}no frames or no people (keypoints {keypoints.shape})')
  if points != len(layout.keypoints):
    same = [n for n, l in kp_lib.LAYOUTS.items() if len(l.keypoints) == points]
    raise ConversionError(f'{where}{points} points per frame, but layout {layout.name!r} has '
                          f'{len(layout.keypoints)} (layouts with {points}: {same or "none"})')
  dims = layout.dims
  coords = 'xyz'[:dims]
  if scores is not None:
    scores = np.asarray(scores)
    if channels != dims or scores.shape != keypoints.shape[:3]:
      raise ConversionError(f'{where}with scores {scores.shape}, keypoints must be [T, (N,) K, {dims}] '
                            f'({coords} of layout {layout.name!r}) with the same T, N, K; got {keypoints.shape}')
    data, conf = keypoints, scores
  elif channels == dims + 1:
    data, conf = keypoints[..., :dims], keypoints[..., dims]
  elif channels == dims and confidence_one:
    data, conf = keypoints, np.ones(keypoints.shape[:3], np.float32)
  elif channels == dims:
    raise ConversionError(f'{where}keypoints have {channels} channels ({coords}) and no confidence: give '
                          f'an .npz with \'scores\', or --confidence_one to count every finite point as seen')
  else:
    raise ConversionError(f'{where}layout {layout.name!r} is {coords}: expected {dims + 1} channels '
                          f'({coords} + confidence) or {dims} with scores, got {channels} ({keypoints.shape})')
  data = data.astype(np.float32)
  conf = conf.astype(np.float32)
  visible = np.isfinite(data).all(-1) & np.isfinite(conf)
  return np.where(visible[..., None], data, 0.0), np.where(visible, conf, 0.0)


def arrays_to_pose(keypoints: np.ndarray, scores: np.ndarray | None, layout_name: str, fps: float, *,
                   width: int | None = None, height: int | None = None, confidence_one: bool = False,
                   source: str = '') -> Pose:
  """A `Pose` of the named layout from keypoint arrays (see `body_arrays`).

  width / height default to the extent of the visible points (pixels, or 1 for coordinates in [0, 1]).
  """
  layout = kp_lib.layout(layout_name)
  if not fps or not math.isfinite(fps) or fps <= 0:
    raise ConversionError(f'{source + ": " if source else ""}no frame rate: give --fps (frames per second '
                          f'of the video the keypoints come from), got {fps!r}')
  data, conf = body_arrays(keypoints, scores, layout, confidence_one=confidence_one, source=source)
  seen = data[conf > 0]
  extent = np.ceil(seen.max(0)) if seen.size else np.ones(layout.dims)
  width = width or max(int(extent[0]), 1)
  height = height or max(int(extent[1]), 1)
  return Pose(layout.header(width=width, height=height), NumPyPoseBody(fps=fps, data=data, confidence=conf))


def convert_file(src: str, dst: str, layout_name: str, fps: float | None = None, *,
                 width: int | None = None, height: int | None = None, confidence_one: bool = False) -> None:
  """One .npy / .npz file -> one `.pose` file (written whole or not at all). Raises ConversionError."""
  keypoints, scores, file_fps = load_arrays(src)
  if fps and file_fps and not math.isclose(fps, file_fps, rel_tol=1e-6):
    raise ConversionError(f'{src}: holds fps={file_fps:g} but --fps={fps:g} was given; drop one')
  pose = arrays_to_pose(keypoints, scores, layout_name, fps or file_fps, width=width, height=height,
                        confidence_one=confidence_one, source=src)
  os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
  tmp = f'{dst}.tmp{os.getpid()}'
  try:
    with open(tmp, 'wb') as f:
      pose.write(f)
    os.replace(tmp, dst)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _folder_jobs(src: str, dst: str) -> tuple[list[tuple[str, str]], list[str]]:
  """([(array file, its .pose path)], [pickle files]) below the folder `src`, sorted."""
  jobs, pickles = [], []
  for path in sorted(pathlib.Path(src).rglob('*')):
    suffix = path.suffix.lower()
    if suffix in ARRAY_SUFFIXES:
      jobs.append((str(path), str(pathlib.Path(dst) / path.relative_to(src).with_suffix('.pose'))))
    elif suffix in PICKLE_SUFFIXES:
      pickles.append(str(path))
  return jobs, pickles


def convert(src: str, dst: str, layout_name: str, fps: float | None = None, *, overwrite: bool = False,
            **kwargs) -> int:
  """A file or a folder (see the module docstring); prints what it did. Returns the exit status."""
  kp_lib.layout(layout_name)  # an unknown layout fails before anything is read
  if not os.path.isdir(src):
    if os.path.isdir(dst):
      dst = os.path.join(dst, pathlib.Path(src).with_suffix('.pose').name)
    if os.path.exists(dst) and not overwrite:
      raise ConversionError(f'{dst} exists: pass --overwrite to replace it')
    convert_file(src, dst, layout_name, fps, **kwargs)
    print(f'wrote {dst}')
    return 0
  jobs, pickles = _folder_jobs(src, dst)
  for path in pickles:
    print(f'skipped {path}: {PICKLE_MESSAGE}', file=sys.stderr)
  if not jobs:
    raise ConversionError(f'{src}: no .npy or .npz files below it'
                          + (f' ({len(pickles)} pickles, not read)' if pickles else ''))
  if not fps and any(path.lower().endswith('.npy') for path, _ in jobs):
    raise ConversionError(f'{src}: .npy files hold no frame rate: give --fps')
  written, kept, failed = 0, 0, []
  for array_path, pose_path in jobs:
    if os.path.exists(pose_path) and not overwrite:
      kept += 1
      continue
    try:
      convert_file(array_path, pose_path, layout_name, fps, **kwargs)
      written += 1
    except ConversionError as e:
      failed.append(str(e))
  for message in failed:
    print(f'failed: {message}', file=sys.stderr)
  print(f'{dst}: wrote {written} .pose files; kept {kept} existing (--overwrite replaces them); '
        f'{len(failed)} failed; {len(pickles)} pickles skipped')
  return 1 if failed else 0


def list_layouts() -> str:
  return '\n'.join(f'{name:22s} {len(l.keypoints):4d} points  {"xyz"[:l.dims]:4s} {l.description}'
                   for name, l in kp_lib.LAYOUTS.items())


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m slt_jax.tools.to_pose', description=__doc__,
                              epilog='Layouts:\n' + list_layouts(), formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('input', nargs='?', help='a .npy / .npz file, or a folder of them')
  p.add_argument('output', nargs='?', help='the .pose file (or a folder: one .pose per input)')
  p.add_argument('--layout', choices=sorted(kp_lib.LAYOUTS), help='the layout of the arrays\' K points')
  p.add_argument('--fps', type=float, default=None, help='frames per second (else the .npz\'s \'fps\')')
  p.add_argument('--width', type=int, default=None, help='frame width in the header (default: the points\' extent)')
  p.add_argument('--height', type=int, default=None, help='frame height in the header')
  p.add_argument('--confidence_one', action='store_true',
                 help='arrays without confidence: every finite point gets confidence 1')
  p.add_argument('--overwrite', action='store_true', help='replace existing .pose files')
  p.add_argument('--list_layouts', action='store_true', help='print the layouts and exit')
  args = p.parse_args(argv)
  if args.list_layouts:
    print(list_layouts())
    return 0
  if not (args.input and args.output and args.layout):
    p.error('give --layout=NAME, an input (file or folder) and an output')
  try:
    return convert(args.input, args.output, args.layout, args.fps, overwrite=args.overwrite, width=args.width,
                   height=args.height, confidence_one=args.confidence_one)
  except ConversionError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2


if __name__ == '__main__':
  sys.exit(main())
