"""See what the model sees: `.pose` files drawn by pose-format's visualizer, as stored and as the model gets them.

  python -m slt_jax.main --config=configs/demo.py --workdir=runs/demo --mode=show --inputs=a.pose,poses/ \
      [--augment] [--output=DIR] [--render_format=gif|mp4]
  python -m slt_jax.show ...   (the same flags)

Each file becomes one animation (DIR/<name>.gif, DIR defaulting to WORKDIR/show) of two panels side by side, one
animation frame per frame of the model's input:
  left   as stored: every point of the file's first person in the file's own pixel frame (the header's width x
         height scaled to the panel), at the stored frame that the model's frame was taken from;
  right  as the model receives it, with the run's preprocessing (WORKDIR/config.json where there is one, else
         --config): keypoint preset, normalisation, frame stride / max_frames; with --augment one draw of the
         training augmentation (data.augmentations: speed, frame dropout, rotation, scale, shear, noise, mirror).
         The normalised coordinates go onto the panel by one scale and offset for the whole sequence, fitted to
         the unaugmented input (so an augmentation shows as a change); a grey cross marks the normalised origin.
Masked points (confidence 0 or NaN) are not drawn, nor are limbs with a masked end: a hand that is never detected
is absent. Drawing and the GIF writer are pose-format's (`pose_format.pose_visualizer.PoseVisualizer`); limbs and
colours come from the file's header (right panel: its limbs between the preset's points; points a preset names in
another layout's terms take that layout's, keypoints.LAYOUTS).

Also used by the trainer (`strip`: a row of frames of a model input, for TensorBoard: slt_jax/train/visuals.py)
and by `--mode=translate --render` (`render_translations`: the same animation with the translation as subtitle).
"""
import dataclasses
import functools
import itertools
import os

import numpy as np
from absl import logging
from pose_format.numpy.pose_body import NumPyPoseBody
from pose_format.pose import Pose
from pose_format.pose_header import PoseHeader, PoseHeaderComponent, PoseHeaderDimensions
from pose_format.pose_visualizer import PoseVisualizer

from slt_jax.data import keypoints as kp_lib
from slt_jax.data import pose_io

FORMATS = ('gif', 'mp4')
PANEL_HEIGHT = 320            # pixels of each panel (the stored one keeps the file's aspect ratio)
_WHITE, _BLACK, _GREY, _DARK = (255, 255, 255), (0, 0, 0), (200, 200, 200), (90, 90, 90)
_FONT_SIZE = 13
_SEPARATOR = 4                # grey pixels between the panels


# ------------------------------------------------------------------------------------------------------------
# Poses in pixels, drawn by pose-format.
# ------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CanvasMap:
  """pixel_xy = point_xy * scale + offset (z is scaled alike: the visualizer draws far points first)."""
  scale: float
  offset: tuple[float, float]

  def apply(self, points: np.ndarray) -> np.ndarray:
    """f32[..., C] (C >= 2) -> f32[..., C] in pixels."""
    out = np.asarray(points, np.float32) * np.float32(self.scale)
    out[..., :2] += np.asarray(self.offset, np.float32)
    return out

  @classmethod
  def fit(cls, points: np.ndarray, visible: np.ndarray, width: int, height: int,
          margin: float = 0.08) -> 'CanvasMap':
    """The map that fits the xy extent of the visible points (f32[T, K, C], bool[T, K]: the whole sequence, so
    motion stays motion) into width x height with `margin` on each side, aspect ratio kept."""
    xy = np.asarray(points)[np.asarray(visible)][:, :2]
    lo, hi = (xy.min(0), xy.max(0)) if len(xy) else (np.zeros(2), np.zeros(2))
    span = np.maximum(hi - lo, 1e-6)
    scale = float(min((1 - 2 * margin) * width / span[0], (1 - 2 * margin) * height / span[1]))
    center = (lo + hi) / 2
    return cls(scale, (width / 2 - center[0] * scale, height / 2 - center[1] * scale))


@functools.lru_cache(maxsize=1)
def reference_header() -> PoseHeader:
  """Limbs and colours of every layout pose_io knows (keypoints.LAYOUTS; a component name's first layout wins),
  for points named by a preset (the names of its home layout, whatever the file's layout)."""
  components = {}
  for layout in kp_lib.LAYOUTS.values():
    for component in layout.components():
      components.setdefault(component.name, component)
  return PoseHeader(0.2, PoseHeaderDimensions(1, 1, 0), list(components.values()))


def header_for(names, sources, width: int, height: int, num_coords: int = 3) -> PoseHeader:
  """A header of the points `names` ((component, point) pairs, each component's points contiguous, as in the
  presets) of width x height pixels, with the limbs whose both ends are among them and the colours of the
  component of that name in the first of `sources` (PoseHeaders) that has one; else dark grey points, no limbs."""
  by_name = {}
  for source in sources:
    for component in source.components:
      by_name.setdefault(component.name, component)
  components, seen = [], set()
  for name, group in itertools.groupby(names, key=lambda kp: kp[0]):
    if name in seen:
      raise ValueError(f'header_for: the points of component {name!r} are not contiguous in the keypoint list')
    seen.add(name)
    points = [p for _, p in group]
    src = by_name.get(name)
    if src is None:
      limbs, colors = [], [_DARK]
    else:
      index = {p: i for i, p in enumerate(points)}
      src_index = {p: i for i, p in enumerate(src.points)}
      limbs = [(index[src.points[a]], index[src.points[b]]) for a, b in src.limbs
               if src.points[a] in index and src.points[b] in index]
      # A component's colours are per point (cycled): keep each kept point's own.
      colors = [tuple(int(v) for v in src.colors[src_index[p] % len(src.colors)]) if p in src_index else _DARK
                for p in points]
    components.append(PoseHeaderComponent(name, points, limbs, colors, 'XYZC' if num_coords == 3 else 'XYC'))
  return PoseHeader(0.2, PoseHeaderDimensions(width=int(width), height=int(height), depth=0), components)


def to_pose(points: np.ndarray, visible: np.ndarray, header: PoseHeader, fps: float, canvas: CanvasMap) -> Pose:
  """points f32[T, K, C], visible bool[T, K] -> a one-person Pose in the pixels of `canvas` (confidence 1 where
  visible, 0 elsewhere: pose-format draws no point and no limb of confidence 0)."""
  pixels = np.where(visible[..., None], canvas.apply(points), 0.0).astype(np.float32)
  return Pose(header, NumPyPoseBody(float(fps), pixels[:, None], visible[:, None].astype(np.float32)))


def draw(pose: Pose, marker: tuple[float, float] | None = None) -> list[np.ndarray]:
  """BGR uint8 frames [H, W, 3] of `pose` on white, drawn by pose-format's PoseVisualizer; `marker`: a grey cross
  at that pixel, under the pose."""
  visualizer = PoseVisualizer(pose)
  if marker is None:
    return list(visualizer.draw(background_color=_WHITE))
  dims = pose.header.dimensions
  background = np.full((dims.height, dims.width, 3), 255, np.uint8)
  visualizer.cv2.drawMarker(background, (int(round(marker[0])), int(round(marker[1]))), _GREY,
                            visualizer.cv2.MARKER_CROSS, max(9, dims.height // 20), 1)
  return list(visualizer.draw_on_video(background.copy() for _ in range(len(pose.body.data))))


# ------------------------------------------------------------------------------------------------------------
# Text (captions, subtitles): DejaVu Sans (shipped with matplotlib) covers Latin, Greek and Cyrillic.
# ------------------------------------------------------------------------------------------------------------
def _font(size: int = _FONT_SIZE):
  import matplotlib  # pylint: disable=g-import-not-at-top
  from PIL import ImageFont  # pylint: disable=g-import-not-at-top
  return ImageFont.truetype(os.path.join(matplotlib.get_data_path(), 'fonts', 'ttf', 'DejaVuSans.ttf'), size)


def _fit_line(text: str, width: int, font) -> str:
  """text cut (with an ellipsis) to fit `width` pixels."""
  if font.getlength(text) <= width:
    return text
  while text and font.getlength(text + '…') > width:
    text = text[:-1]
  return text + '…'


def _wrap(text: str, width: int, font, max_lines: int) -> list[str]:
  """Words of `text` in lines of at most `width` pixels (the last one cut if more would be needed)."""
  lines, line = [], ''
  for word in text.split():
    if line and font.getlength(f'{line} {word}') > width:
      lines.append(line)
      line = word
    else:
      line = f'{line} {word}' if line else word
  lines.append(line)
  if len(lines) > max_lines:
    lines = lines[:max_lines - 1] + [_fit_line(' '.join(lines[max_lines - 1:]), width, font)]
  return [_fit_line(l, width, font) for l in lines]


def text_band(lines: list[str], width: int, font=None) -> np.ndarray:
  """BGR uint8 [h, width, 3]: the lines (each cut to the width) in black on white."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  font = font or _font()
  step = font.size + 4
  image = Image.new('RGB', (width, 4 + step * len(lines)), _WHITE)
  pen = ImageDraw.Draw(image)
  for i, line in enumerate(lines):
    pen.text((4, 2 + i * step), _fit_line(line, width - 8, font), fill=_BLACK, font=font)
  return np.asarray(image)[..., ::-1].copy()


# ------------------------------------------------------------------------------------------------------------
# A file as stored and as the model receives it.
# ------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ModelInput:
  """A `.pose` file as stored and as the model receives it, frame by frame of the latter (T' frames)."""
  header: PoseHeader              # the file's
  stored: pose_io.PoseArrays      # every point, pixels of the file (first person): points f32[T', P, 3]
  model: pose_io.PoseArrays       # what the model gets: points f32[T', K, C] (augmented with `augment`)
  unaugmented: pose_io.PoseArrays  # the same before augmentation (== model without it)
  augmented: bool
  source_frames: np.ndarray       # int[T']: the stored frame each frame shows
  num_stored_frames: int          # T of the file
  fps: float                      # frames per second of the T' frames (the recording's duration kept)


def kept_frames(num_frames: int, options: pose_io.PoseOptions) -> np.ndarray:
  """int[T']: the frames of a T-frame file that pose_io keeps under `options` (frame_stride, then max_frames).

  Found by reading each frame's own number through pose_io (a one-point pose whose x is the frame index), so it
  never disagrees with what the model is given.
  """
  header = PoseHeader(0.2, PoseHeaderDimensions(1, 1, 0),
                      [PoseHeaderComponent('FRAME', ['INDEX'], [], [_BLACK], 'XYC')])
  index = np.arange(num_frames, dtype=np.float32).reshape(-1, 1, 1, 1).repeat(2, -1)
  arrays = pose_io.arrays_from_pose(header, index, np.ones((num_frames, 1, 1), np.float32), 1.0,
                                    _stored_options(options))
  return arrays.points[:, 0, 0].astype(np.int64)


def _stored_options(options: pose_io.PoseOptions) -> pose_io.PoseOptions:
  """`options`' frame selection alone: every point, in the file's pixels (xyz)."""
  return dataclasses.replace(options, keypoints=None, coords='xyz', normalize='none', hand_normalize=False)


def model_input(path: str, config, *, augment: bool = False, seed: int = 0) -> ModelInput:
  """Reads `path` as the training pipeline would under `config.data` (+ one augmentation draw seeded by `seed`).

  Raises pose_io.PoseReadError (and its subclasses) as the pipeline would skip the file.
  """
  options = pose_io.PoseOptions.from_config(config.data)
  header, body = pose_io.read_pose_file(path)
  model = pose_io.arrays_from_pose(header, body.data, body.confidence, body.fps, options, source=path)
  stored = pose_io.arrays_from_pose(header, body.data, body.confidence, body.fps, _stored_options(options), source=path)
  num_frames = len(body.data)
  frames = kept_frames(num_frames, options)
  fps = float(body.fps) * len(frames) / num_frames
  unaugmented, pick = model, np.arange(len(frames))
  if augment:
    model, pick = _augment(model, config.data, seed)
  stored = dataclasses.replace(stored, points=stored.points[pick], visible=stored.visible[pick])
  return ModelInput(header, stored, model, unaugmented, augment, frames[pick], num_frames, fps)


def _augment(arrays: pose_io.PoseArrays, data_config, seed: int) -> tuple[pose_io.PoseArrays, np.ndarray]:
  """One draw of the training augmentation of `data_config.augmentations`: (augmented arrays, int[T''] the input
  frame each output frame shows). The frame resampling is augment.resample_frames run on the frame numbers."""
  from slt_jax.data import augment as augment_lib  # pylint: disable=g-import-not-at-top  (TensorFlow)
  aug = data_config.get('augmentations', {})
  if not data_config.get('augment', True):
    logging.info('data.augment is False (the run trains without augmentation): showing data.augmentations anyway.')
  t = len(arrays.points)
  index, _ = augment_lib.resample_frames(np.arange(t, dtype=np.float32)[:, None, None], np.ones((t, 1), bool),
                                         np.array([seed, 0]), speed=aug.get('speed', 0.0),
                                         frame_dropout=aug.get('frame_dropout', 0.0),
                                         max_frames=data_config.get('max_frames', None))
  pick = np.asarray(index)[:, 0, 0].astype(np.int64)
  mirror_perm = kp_lib.mirror_permutation(arrays.keypoints) if aug.get('mirror', False) else None
  points, visible = augment_lib.spatial_numpy(
      arrays.points[pick][None], arrays.visible[pick][None], (seed, 1), rotate=aug.get('rotate', 0.0),
      scale=aug.get('scale', 0.0), shear=aug.get('shear', 0.0), noise=aug.get('noise', 0.0), mirror_perm=mirror_perm,
      yaw=aug.get('yaw', 0.0))
  return dataclasses.replace(arrays, points=points[0], visible=visible[0]), pick


@dataclasses.dataclass
class Rendering:
  """An animation: BGR uint8 frames [H, W, 3] and where each panel lies in them."""
  frames: list[np.ndarray]
  fps: float
  source_frames: np.ndarray          # int[T']: the stored frame each animation frame shows
  stored_origin: tuple[int, int]     # (x, y) of the stored panel's top-left pixel in a frame
  model_origin: tuple[int, int]      # (x, y) of the model panel's
  stored_map: CanvasMap              # file pixels -> stored panel pixels
  model_map: CanvasMap               # normalised model coordinates -> model panel pixels
  model_pose: Pose                   # the model panel's pose (pixels), fps = `fps`


def render(inp: ModelInput, config, *, subtitle: str | None = None, height: int = PANEL_HEIGHT) -> Rendering:
  """The two panels of `inp` side by side (each `height` pixels high), captions above, `subtitle` below."""
  dims = inp.header.dimensions
  stored_width = max(2, int(round(dims.width * height / max(dims.height, 1))))
  stored_map = CanvasMap(height / max(dims.height, 1), (0.0, 0.0))
  stored_pose = to_pose(inp.stored.points, inp.stored.visible,
                        header_for(inp.stored.keypoints, [inp.header], stored_width, height), inp.fps, stored_map)
  model_map = CanvasMap.fit(inp.unaugmented.points, inp.unaugmented.visible, height, height)
  model_pose = to_pose(inp.model.points, inp.model.visible,
                       header_for(inp.model.keypoints, [inp.header, reference_header()], height, height,
                                  inp.model.points.shape[-1]),
                       inp.fps, model_map)
  left, right = draw(stored_pose), draw(model_pose, marker=model_map.offset)

  d, font, t_model = config.data, _font(), len(inp.model.points)
  about_stored = [f'as stored: {inp.stored.points.shape[1]} points, {dims.width}x{dims.height} px',
                  f'{inp.num_stored_frames} frames, {inp.stored.fps:g} fps']
  about_model = [f'model input: {d.keypoints or "all points"}, {inp.model.points.shape[1]} points',
                 f'normalize={d.normalize}' + (', hand_normalize' if d.get('hand_normalize') else '')
                 + (', augmented' if inp.augmented else '') + f', {t_model} frames']
  bottom = None
  if subtitle is not None:
    big = _font(_FONT_SIZE + 3)
    width = stored_width + _SEPARATOR + height
    bottom = text_band(_wrap(subtitle, width - 8, big, 3), width, big)
  out = []
  for t in range(t_model):
    stored_band = text_band(about_stored + [f'frame {inp.source_frames[t] + 1}/{inp.num_stored_frames}'],
                            stored_width, font)
    model_band = text_band(about_model + [f'frame {t + 1}/{t_model}   (1 unit = {model_map.scale:.3g} px)'],
                           height, font)
    stored, model = np.concatenate([stored_band, left[t]]), np.concatenate([model_band, right[t]])
    frame = np.concatenate([stored, np.full((len(stored), _SEPARATOR, 3), _GREY[0], np.uint8), model], 1)
    out.append(_even(frame if bottom is None else np.concatenate([frame, bottom])))
  top = len(stored_band)
  return Rendering(out, inp.fps, inp.source_frames, (0, top), (stored_width + _SEPARATOR, top), stored_map,
                   model_map, model_pose)


def _even(frame: np.ndarray) -> np.ndarray:
  """Padded with white to even height and width (H.264 / most MP4 players want them)."""
  h, w = frame.shape[:2]
  return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), constant_values=255)


def save(path: str, rendering: Rendering) -> str:
  """Writes the animation as GIF (pose-format's writer) or MP4 (OpenCV's, mp4v) by the extension of `path`."""
  ext = os.path.splitext(path)[1].lower().lstrip('.')
  if ext not in FORMATS:
    raise ValueError(f'{path}: an animation is written as one of {FORMATS} (by its extension)')
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if ext == 'gif':
    PoseVisualizer(rendering.model_pose).save_gif(path, rendering.frames)
  else:
    import cv2  # pylint: disable=g-import-not-at-top
    h, w = rendering.frames[0].shape[:2]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), rendering.fps, (w, h))
    if not writer.isOpened():
      raise RuntimeError(f'{path}: OpenCV cannot write MP4 here (no mp4v encoder); use --render_format=gif')
    for frame in rendering.frames:
      writer.write(frame)
    writer.release()
  return path


# ------------------------------------------------------------------------------------------------------------
# A strip of frames (TensorBoard): what the model sees of one example.
# ------------------------------------------------------------------------------------------------------------
def strip(points: np.ndarray, visible: np.ndarray, names, *, num_frames: int = 8, size: int = 128,
          lines: list[str] = ()) -> np.ndarray:
  """RGB uint8 [H, num_frames * size, 3]: `num_frames` frames evenly spaced over a model input (points
  f32[T, K, C], visible bool[T, K], the K point names), each size x size with one canvas map for the sequence,
  drawn by pose-format with the limbs of the known layouts; `lines` (e.g. reference and hypothesis) below."""
  t = len(points)
  pick = np.unique(np.round(np.linspace(0, t - 1, min(num_frames, t))).astype(int))
  canvas = CanvasMap.fit(points, visible, size, size)
  header = header_for(names, [reference_header()], size, size, points.shape[-1])
  frames = draw(to_pose(points[pick], visible[pick], header, 1.0, canvas))
  row = np.concatenate(frames + [np.full((size, size * (num_frames - len(frames)), 3), 255, np.uint8)], 1)
  font = _font(11)
  labels = np.concatenate([text_band([f'frame {i + 1}/{t}'], size, font) for i in pick]
                          + [text_band([''], size * (num_frames - len(pick)), font)] * (num_frames > len(pick)), 1)
  image = np.concatenate([labels, row, text_band(list(lines), row.shape[1])]) if lines else np.concatenate(
      [labels, row])
  return image[..., ::-1].copy()


# ------------------------------------------------------------------------------------------------------------
# Files in, animations out.
# ------------------------------------------------------------------------------------------------------------
def _unique_names(paths: list[str], ext: str) -> list[str]:
  """`<stem>.<ext>` per path; a stem seen before gets `-2`, `-3`, ..."""
  seen, names = {}, []
  for p in paths:
    stem = os.path.splitext(os.path.basename(p))[0]
    seen[stem] = seen.get(stem, 0) + 1
    names.append(f'{stem}.{ext}' if seen[stem] == 1 else f'{stem}-{seen[stem]}.{ext}')
  return names


def render_files(paths: list[str], config, out_dir: str, *, fmt: str = 'gif', augment: bool = False,
                 seed: int = 0, subtitles: list[str] | None = None, names: list[str] | None = None) -> list[str]:
  """Renders each `.pose` file into out_dir (see the module docstring) as `<name>.<fmt>` (names: default the files'
  own); unreadable files are skipped with a message. Returns the paths written, in input order."""
  if fmt not in FORMATS:
    raise ValueError(f'render format must be one of {FORMATS}, got {fmt!r}')
  written = []
  for i, (path, name) in enumerate(zip(paths, _unique_names(names or paths, fmt))):
    try:
      inp = model_input(path, config, augment=augment, seed=seed)
    except pose_io.PoseReadError as e:
      logging.warning('Not rendering %s: %s', path, e)
      print(f'# skipped {path}: {e}')
      continue
    rendering = render(inp, config, subtitle=subtitles[i] if subtitles else None)
    written.append(save(os.path.join(out_dir, name), rendering))
    logging.info('%s -> %s (%d frames)', path, written[-1], len(rendering.frames))
  return written


def show(config, workdir: str, inputs: list[str], out_dir: str | None = None, *, fmt: str = 'gif',
         augment: bool = False) -> list[str]:
  """--mode=show: `.pose` files and folders in, one animation each in out_dir (default WORKDIR/show), with the
  preprocessing of the run in `workdir` (its config.json) where it has one, else of `config`."""
  from slt_jax import run_config  # pylint: disable=g-import-not-at-top
  from slt_jax.data.video import expand_inputs  # pylint: disable=g-import-not-at-top
  config = run_config.for_inference(config, workdir, strict=False)
  paths = []
  for path in expand_inputs(inputs):
    if path.lower().endswith('.pose'):
      paths.append(path)
    else:
      print(f'# skipped {path}: --mode=show reads .pose files (--mode=translate extracts the poses of videos)')
  written = render_files(paths, config, out_dir or os.path.join(workdir, 'show'), fmt=fmt, augment=augment,
                         seed=int(config.training.seed))
  for path in written:
    print(path)
  return written


def render_translations(results: list[tuple[str, str]], config, output: str, fmt: str = 'gif',
                        pose_file=lambda path: path) -> list[str]:
  """--mode=translate --render: each (input path, translation) as an animation with the translation as subtitle,
  in the folder next to the TSV `output` named after it (translations.tsv -> translations_videos/<input>.<fmt>).
  pose_file: input path -> its `.pose` file (a video's extracted poses)."""
  out_dir = os.path.splitext(output)[0] + '_videos'
  inputs = [p for p, _ in results]
  return render_files([pose_file(p) for p in inputs], config, out_dir, fmt=fmt,
                      subtitles=[t for _, t in results], names=inputs)


if __name__ == '__main__':
  # python -m slt_jax.show: slt_jax.main --mode=show, with the same flags.
  import sys  # pylint: disable=g-import-not-at-top
  from absl import app  # pylint: disable=g-import-not-at-top
  from slt_jax import main as main_lib  # pylint: disable=g-import-not-at-top
  app.run(main_lib.main, argv=[sys.argv[0], '--mode=show'] + sys.argv[1:])
