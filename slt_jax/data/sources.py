"""Where examples come from: the seed's CSV layout + a pose directory.

CSV: a `uid` (or `video_path`) column, a text column (`text` by default), any extra columns. The pose
of a row is `pose_dir/<uid>.pose` (uid may hold sub-folders; from `video_path` the extension is
stripped). The delimiter is sniffed among , ; | and tab.

  rows, arrays, skipped = load_split('train.csv', 'poses/', pose_io.PoseOptions(), split='train')

Rows are skipped, counted and logged (absl) when the pose file is missing, the text is empty, the pose
is unreadable, lacks the preset's keypoints, or has no usable frame. `skipped` maps each reason to
the uids it dropped (`SKIP_REASONS`); `write_skip_report` writes them for the whole run.
"""
import concurrent.futures
import csv
import dataclasses
import json
import os

from absl import logging

from slt_jax.data import pose_io

SKIP_REASONS = ('missing_pose', 'empty_text', 'unreadable_pose', 'missing_keypoints',
                'no_usable_frames')
SkipReport = dict[str, list[str]]


@dataclasses.dataclass(frozen=True)
class Row:
  uid: str
  text: str
  pose_path: str
  extra: dict = dataclasses.field(default_factory=dict)  # the CSV's other columns


class SourceError(ValueError):
  """A CSV cannot be used (missing file or columns)."""


def _sniff_dialect(sample: str):
  try:
    return csv.Sniffer().sniff(sample.splitlines()[0] if sample else ',', delimiters=',;|\t')
  except csv.Error:
    return csv.excel


def read_csv(csv_path: str | os.PathLike, pose_dir: str | os.PathLike,
             text_column: str = 'text') -> tuple[list[Row], SkipReport]:
  """Rows of a CSV whose pose file exists and whose text is non-empty, and the skipped uids."""
  csv_path = os.fspath(csv_path)
  try:
    with open(csv_path, newline='', encoding='utf-8') as f:
      sample = f.read(4096)
      f.seek(0)
      reader = csv.DictReader(f, dialect=_sniff_dialect(sample))
      columns = [c.strip() for c in (reader.fieldnames or [])]
      records = list(reader)
  except OSError as e:
    raise SourceError(f'{csv_path}: cannot read CSV ({e.strerror or e})') from e
  reader.fieldnames = columns
  id_column = 'uid' if 'uid' in columns else 'video_path' if 'video_path' in columns else None
  if id_column is None or text_column not in columns:
    need = (["'uid' or 'video_path'"] if id_column is None else []) + (
        [repr(text_column)] if text_column not in columns else [])
    raise SourceError(f'{csv_path}: missing column(s) {" and ".join(need)}; found columns {columns}')

  rows, skipped = [], {r: [] for r in SKIP_REASONS}
  for rec in records:
    rec = {(k or '').strip(): (v or '') for k, v in rec.items()}
    uid = rec[id_column].strip()
    if id_column == 'video_path':
      uid = os.path.splitext(uid)[0]
    text = rec[text_column].strip()
    pose_path = os.path.join(os.fspath(pose_dir), uid + '.pose')
    if not text:
      skipped['empty_text'].append(uid)
    elif not uid or not os.path.isfile(pose_path):
      skipped['missing_pose'].append(uid)
    else:
      extra = {k: v for k, v in rec.items() if k not in (id_column, text_column)}
      rows.append(Row(uid=uid, text=text, pose_path=pose_path, extra=extra))
  return rows, skipped


def load_examples(rows: list[Row], options: pose_io.PoseOptions, num_workers: int = 1,
                  ) -> tuple[list[Row], list[pose_io.PoseArrays], SkipReport]:
  """Reads the pose of every row; drops (and reports) those that cannot be used."""
  def read(row):
    try:
      return pose_io.read_pose(row.pose_path, options), None
    except pose_io.NoUsableFramesError as e:
      return None, ('no_usable_frames', e)
    except pose_io.KeypointsMismatchError as e:
      return None, ('missing_keypoints', e)
    except pose_io.PoseReadError as e:
      return None, ('unreadable_pose', e)

  if num_workers > 1 and len(rows) > 1:
    # Threads, not processes: reading is file IO + numpy (releases the GIL), and forking a process
    # that has imported TF/jax is unsafe.
    with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
      results = list(pool.map(read, rows))
  else:
    results = [read(r) for r in rows]
  kept_rows, arrays, skipped = [], [], {r: [] for r in SKIP_REASONS}
  for row, (arr, err) in zip(rows, results):
    if arr is None:
      skipped[err[0]].append(row.uid)
      logging.warning('Skipping %s: %s', row.uid, err[1])
    else:
      kept_rows.append(row)
      arrays.append(arr)
  return kept_rows, arrays, skipped


def merge_skips(*reports: SkipReport) -> SkipReport:
  out = {r: [] for r in SKIP_REASONS}
  for rep in reports:
    for reason, uids in rep.items():
      out.setdefault(reason, []).extend(uids)
  return out


def load_split(csv_path, pose_dir, options: pose_io.PoseOptions, *, text_column: str = 'text',
               num_workers: int = 1, split: str = ''
               ) -> tuple[list[Row], list[pose_io.PoseArrays], SkipReport]:
  """read_csv + load_examples, with one log line of what was kept and skipped."""
  rows, skipped_csv = read_csv(csv_path, pose_dir, text_column)
  rows, arrays, skipped_read = load_examples(rows, options, num_workers)
  skipped = merge_skips(skipped_csv, skipped_read)
  log_skips(split or os.fspath(csv_path), len(rows), skipped)
  return rows, arrays, skipped


def log_skips(split: str, num_kept: int, skipped: SkipReport):
  counts = {k: len(v) for k, v in skipped.items() if v}
  if counts:
    logging.warning('%s: kept %d rows, skipped %d %s', split, num_kept, sum(counts.values()), counts)
  else:
    logging.info('%s: kept %d rows, none skipped', split, num_kept)


def write_skip_report(path: str | os.PathLike, reports: dict[str, SkipReport]):
  """Writes {split: {reason: [uid, ...]}} as JSON (only non-empty reasons)."""
  clean = {split: {k: v for k, v in rep.items() if v} for split, rep in reports.items()}
  os.makedirs(os.path.dirname(os.fspath(path)) or '.', exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(clean, f, indent=1, ensure_ascii=False)
