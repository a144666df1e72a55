"""Pictures of the data for TensorBoard (and the workdir): what the model sees, and what the corpus holds.

  write_data_plots(writer, run, step)                          # once per run, process 0
  write_eval_poses(writer, run, split, step, uids, refs, hyps)  # at each evaluation, process 0

Tags (README, "What a run leaves in its workdir"):
  <split>/poses           at each evaluation: the split's first NUM_EXAMPLES examples as the model receives them
                          (one strip of NUM_FRAMES frames each, drawn by pose-format; masked points left out), uid,
                          reference and hypothesis written under each strip
  data/length_histogram   training sequence lengths (frames after frame_stride / max_frames) with the bucket
                          boundaries and the padding they cost (each sequence padded to its bucket's boundary)
  data/detection_rate     per split and component of the keypoint preset (body, face, each hand): the fraction of
                          frames where at least one of its points is visible
  data/skipped_rows       the counts of WORKDIR/skipped_rows.json, per split and reason
The three plots are also WORKDIR/plots/{length_histogram,detection_rate,skipped_rows}.png, and their numbers
WORKDIR/plots/data_stats.json; a rerun whose numbers are the same draws nothing (it reads those PNGs back). Poses
are read back from the split caches the pipeline wrote (at most DETECTION_EXAMPLES examples per split for the
detection rates, kept in the cache's detection.json for the next run): no .pose file is read again.
"""
import hashlib
import json
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from slt_jax import show
from slt_jax.data import inputs as inputs_lib
from slt_jax.data import keypoints as kp_lib
from slt_jax.data import pipeline

NUM_EXAMPLES = 3            # validation examples drawn at each evaluation
NUM_FRAMES = 8              # frames per strip
DETECTION_EXAMPLES = 2000   # examples per split read for the detection rates
PLOTS = 'plots'             # WORKDIR/plots/
COMPONENT_LABELS = {kp_lib.POSE: 'body', kp_lib.FACE: 'face', kp_lib.LEFT_HAND: 'left hand',
                    kp_lib.RIGHT_HAND: 'right hand', kp_lib.OP_BODY: 'body', kp_lib.OP_FACE: 'face',
                    kp_lib.OP_LEFT_HAND: 'left hand', kp_lib.OP_RIGHT_HAND: 'right hand'}


# ------------------------------------------------------------------------------------------------------------
# The split caches (what the model is fed, before batching).
# ------------------------------------------------------------------------------------------------------------
_CACHES = {}  # (workdir, split, config as JSON) -> the split's cache, found once per run (a TFDS builder is slow)


def _split_cache(config, workdir: str, split: str):
  """The pipeline's cache of `split` (built by the run's make_datasets: here only found again)."""
  key = (workdir, split, config.to_json_best_effort())
  if key not in _CACHES:
    resolved = inputs_lib.resolve_data_paths(config, workdir)
    source = pipeline._split_sources(resolved, [split])[split]  # pylint: disable=protected-access
    _CACHES[key] = pipeline._build_cache(  # pylint: disable=protected-access
        split, source, pipeline._cache_root(resolved, workdir))  # pylint: disable=protected-access
  return _CACHES[key]


def _cached_examples(cache, limit: int, with_points: bool = True):
  """The first `limit` cached examples in row order: (row index, points f32[T, K, C] or None, visible bool[T, K])."""
  k, c = cache.meta['num_points'], cache.meta['num_coords']
  spec = {key: pipeline._RECORD_SPEC[key] for key in  # pylint: disable=protected-access
          ('index', 'visible') + (('points',) if with_points else ())}
  records = tf.data.TFRecordDataset(cache.files).take(limit).batch(256)
  for batch in records.map(lambda r: tf.io.parse_example(r, spec)).as_numpy_iterator():
    for j, index in enumerate(batch['index']):
      visible = np.frombuffer(batch['visible'][j], np.uint8).reshape(-1, k) > 0
      points = np.frombuffer(batch['points'][j], np.float32).reshape(-1, k, c) if with_points else None
      yield int(index), points, visible


# ------------------------------------------------------------------------------------------------------------
# At each evaluation.
# ------------------------------------------------------------------------------------------------------------
def eval_poses_image(config, workdir: str, split: str, rows, texts: dict) -> np.ndarray:
  """RGB uint8 [H, W, 3]: strips of the split's first NUM_EXAMPLES model inputs, one above the other, each with
  its uid, reference and hypothesis (texts: uid -> (reference, hypothesis)) written under it."""
  names = kp_lib.preset(config.data.keypoints)
  strips = []
  for index, points, visible in _cached_examples(_split_cache(config, workdir, split), NUM_EXAMPLES):
    uid = rows[index].uid
    ref, hyp = texts.get(uid, (rows[index].text, ''))
    strips.append(show.strip(points, visible, names, num_frames=NUM_FRAMES,
                             lines=[f'{uid}   ({len(points)} frames)', f'reference:  {ref}', f'hypothesis: {hyp}']))
  return np.concatenate(strips)


def write_eval_poses(writer, run, split: str, step: int, uids, refs, hyps) -> None:
  """`<split>/poses` (see the module docstring) for the evaluation at `step`."""
  texts = dict(zip(uids, zip(refs, hyps)))
  image = eval_poses_image(run.config, run.workdir, split, run.splits[split].rows, texts)
  writer.write_images(step, {f'{split}/poses': image[None]})


# ------------------------------------------------------------------------------------------------------------
# Once per run.
# ------------------------------------------------------------------------------------------------------------
def data_stats(config, workdir: str, splits, lengths: np.ndarray) -> dict:
  """The numbers behind the plots: training lengths (int[N], the cached ones) and buckets, detection rates,
  skipped-row counts."""
  bounds = pipeline._boundaries(config)  # pylint: disable=protected-access
  padded = bounds[np.minimum(np.searchsorted(bounds, lengths), len(bounds) - 1)]
  names = kp_lib.preset(config.data.keypoints)
  components = list(dict.fromkeys(c for c, _ in names))
  members = {c: np.asarray([i for i, (name, _) in enumerate(names) if name == c]) for c in components}
  detection = {split: _detection_rates(_split_cache(config, workdir, split), components, members)
               for split in splits}
  report_path = os.path.join(workdir, 'skipped_rows.json')
  report = {}
  if os.path.exists(report_path):
    with open(report_path, encoding='utf-8') as f:
      report = json.load(f)
  return {'train_lengths': {'count': int(len(lengths)), 'min': int(lengths.min()), 'max': int(lengths.max()),
                            'mean': float(lengths.mean()), 'bucket_boundaries': bounds.tolist(),
                            'per_bucket': {int(b): int((padded == b).sum()) for b in bounds},
                            'at_max_frames': int((lengths == int(config.data.max_frames)).sum()),
                            'padding_fraction': float(1 - lengths.sum() / padded.sum())},
          'detection': detection,
          'skipped': {split: {reason: len(uids) for reason, uids in reasons.items()}
                      for split, reasons in report.items()}}


def _detection_rates(cache, components: list, members: dict) -> dict:
  """{'examples', 'frames', 'rate': {component: fraction of frames with a point of it visible}} of a split's first
  DETECTION_EXAMPLES cached examples; kept next to the cache (detection.json), so a rerun reads no record."""
  path = os.path.join(cache.path, 'detection.json')
  key = {'examples_read': DETECTION_EXAMPLES, 'members': {c: m.tolist() for c, m in members.items()}}
  try:
    with open(path, encoding='utf-8') as f:
      saved = json.load(f)
    if saved['key'] == key:
      return saved['detection']
  except (OSError, ValueError, KeyError):
    pass  # (not there yet, or written for another preset / count: computed again)
  detected, frames, examples = dict.fromkeys(components, 0), 0, 0
  for _, _, visible in _cached_examples(cache, DETECTION_EXAMPLES, False):
    frames += len(visible)
    examples += 1
    for c in components:
      detected[c] += int(visible[:, members[c]].any(1).sum())
  detection = {'examples': examples, 'frames': frames, 'rate': {c: detected[c] / max(frames, 1) for c in components}}
  tmp = f'{path}.tmp-{os.getpid()}'
  try:
    with open(tmp, 'w', encoding='utf-8') as f:
      json.dump({'key': key, 'detection': detection}, f)
    os.replace(tmp, path)
  except OSError:  # (a read-only cache: computed again next time)
    pass
  return detection


def _figure(width: float = 7.0, height: float = 4.0):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top  (no pyplot: no global state)
  figure = Figure(figsize=(width, height), dpi=100, layout='constrained')
  return figure, figure.add_subplot()


def _pixels(figure) -> np.ndarray:
  """RGB uint8 [H, W, 3] of a matplotlib Figure."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  canvas = FigureCanvasAgg(figure)
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def length_histogram(lengths: np.ndarray, stats: dict):
  s = stats['train_lengths']
  figure, ax = _figure()
  ax.hist(lengths, bins=min(60, max(10, int(lengths.max() - lengths.min()) + 1)), color='tab:blue')
  for b in s['bucket_boundaries']:
    ax.axvline(b, color='tab:red', linestyle='--', linewidth=1)
  ax.set_xlabel('frames per sequence (after frame_stride / max_frames); dashed: bucket boundaries')
  ax.set_ylabel('training sequences')
  ax.set_title(f"train: {s['count']} sequences, {s['min']}-{s['max']} frames (mean {s['mean']:.0f}); "
               f"{s['at_max_frames']} at max_frames (longer: subsampled)\n"
               f"padding to the bucket boundaries: {100 * s['padding_fraction']:.1f}% of the frames", fontsize=10)
  return figure


def detection_rate(stats: dict):
  detection = stats['detection']
  splits = list(detection)
  components = list(next(iter(detection.values()))['rate']) if detection else []
  figure, ax = _figure()
  width = 0.8 / max(len(splits), 1)
  for j, split in enumerate(splits):
    x = np.arange(len(components)) + (j - (len(splits) - 1) / 2) * width
    rates = [detection[split]['rate'][c] for c in components]
    bars = ax.bar(x, rates, width, label=f"{split} ({detection[split]['examples']} examples)")
    ax.bar_label(bars, [f'{r:.2f}' for r in rates], fontsize=8)
  ax.set_xticks(np.arange(len(components)), [COMPONENT_LABELS.get(c, c) for c in components])
  ax.set_ylim(0, 1.25)
  ax.set_ylabel('frames with the component detected')
  ax.set_title('detection rate per component (points of the keypoint preset)', fontsize=10)
  ax.legend(fontsize=8, loc='upper center', ncols=max(len(splits), 1))
  return figure


def skipped_rows(stats: dict):
  skipped = stats['skipped']
  reasons = sorted({r for counts in skipped.values() for r in counts})
  figure, ax = _figure()
  if not reasons:
    ax.text(0.5, 0.5, 'no rows skipped', ha='center', va='center', fontsize=14)
    ax.set_axis_off()
  width = 0.8 / max(len(skipped), 1)
  for j, (split, counts) in enumerate(skipped.items()):
    if not reasons:
      break
    x = np.arange(len(reasons)) + (j - (len(skipped) - 1) / 2) * width
    bars = ax.bar(x, [counts.get(r, 0) for r in reasons], width, label=split)
    ax.bar_label(bars, fontsize=8)
  if reasons:
    ax.set_xticks(np.arange(len(reasons)), [r.replace('_', ' ') for r in reasons])
    ax.set_ylabel('rows skipped')
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
  ax.set_title('skipped rows (WORKDIR/skipped_rows.json)', fontsize=10)
  return figure


def write_data_plots(writer, run, step: int) -> dict:
  """data/* images (see the module docstring) at `step`, and WORKDIR/plots/*.png + data_stats.json. Returns the
  stats."""
  splits = [s for s in pipeline.SPLITS if s in run.splits]
  lengths = np.asarray(_split_cache(run.config, run.workdir, 'train').meta['lengths'], np.int64)
  stats = data_stats(run.config, run.workdir, splits, lengths)
  out_dir = os.path.join(run.workdir, PLOTS)
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, 'data_stats.json'), 'w', encoding='utf-8') as f:
    json.dump(stats, f, indent=1)
  # A rerun in the same workdir (a resume) draws nothing when the numbers are those of the PNGs already there.
  drawn_from = {'stats': stats, 'lengths_sha256': hashlib.sha256(lengths.tobytes()).hexdigest()}
  names = ('length_histogram', 'detection_rate', 'skipped_rows')
  images = _drawn_before(out_dir, names, drawn_from)
  if images is None:
    figures = {'length_histogram': length_histogram(lengths, stats), 'detection_rate': detection_rate(stats),
               'skipped_rows': skipped_rows(stats)}
    images = {name: _pixels(figures[name]) for name in names}  # each drawn once
    for name, pixels in images.items():
      Image.fromarray(pixels).save(os.path.join(out_dir, f'{name}.png'))
    with open(os.path.join(out_dir, _DRAWN_FROM), 'w', encoding='utf-8') as f:
      json.dump(drawn_from, f)
  writer.write_images(step, {f'data/{name}': pixels[None] for name, pixels in images.items()})
  return stats


_DRAWN_FROM = '.drawn_from.json'  # WORKDIR/plots/: the numbers its PNGs were drawn from


def _drawn_before(out_dir: str, names, drawn_from: dict) -> 'dict | None':
  """{name: RGB uint8 [H, W, 3]} of the PNGs in `out_dir` when they were drawn from `drawn_from`, else None."""
  try:
    with open(os.path.join(out_dir, _DRAWN_FROM), encoding='utf-8') as f:
      if json.load(f) != json.loads(json.dumps(drawn_from)):  # (compared as JSON: tuples read back as lists)
        return None
    images = {}
    for name in names:
      with Image.open(os.path.join(out_dir, f'{name}.png')) as image:
        images[name] = np.asarray(image.convert('RGB'))
    return images
  except (OSError, ValueError):
    return None
