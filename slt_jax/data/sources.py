"""Where examples come from: the seed's CSV layout + a pose directory.

CSV: a `uid` (or `video_path`) column, a text column (`text` by default), any extra columns. The pose
of a row is `pose_dir/<uid>.pose` (uid may hold sub-folders; from `video_path` the extension is
stripped). The delimiter is sniffed among , ; | and tab. The file is UTF-8, with or without a byte-order
mark; another encoding is an error naming the file, line and byte.

  rows, arrays, skipped = load_split('train.csv', 'poses/', pose_io.PoseOptions(), split='train')

Rows are skipped, counted and logged (absl) when the pose file is missing, the text is empty, the pose
is unreadable, lacks the preset's keypoints, or has no usable frame. `skipped` maps each reason to
the uids it dropped (`SKIP_REASONS`); `write_skip_report` writes them for the whole run.

Checked before anything is trained or written (pipeline.check_splits): a split with no usable row is an
error (`require_usable_rows`), uids repeated within a split a warning (`report_duplicate_uids`), the same
uid or pose file in two splits an error unless data.allow_overlap (`check_overlap`).
"""
import codecs
import collections
import concurrent.futures
import csv
import dataclasses
import io
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
  """A CSV cannot be used (missing file or columns, not UTF-8)."""


class NoUsableRowsError(SourceError):
  """A split with no usable row (every pose file missing, every text empty, ...)."""


class SplitOverlapError(SourceError):
  """The same example (uid or pose file) in two splits, without data.allow_overlap."""


def _sniff_dialect(sample: str):
  try:
    return csv.Sniffer().sniff(sample.splitlines()[0] if sample else ',', delimiters=',;|\t')
  except csv.Error:
    return csv.excel


def _read_text(csv_path: str) -> str:
  """A CSV file's text: UTF-8, with or without the byte-order mark Excel writes; else an error naming the line."""
  try:
    with open(csv_path, 'rb') as f:
      data = f.read()
  except OSError as e:
    raise SourceError(f'{csv_path}: cannot read CSV ({e.strerror or e})') from e
  start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
  try:
    return data[start:].decode('utf-8')
  except UnicodeDecodeError as e:
    at = start + e.start  # byte offset in the file
    line, line_start, line_end = data.count(b'\n', 0, at) + 1, data.rfind(b'\n', 0, at) + 1, data.find(b'\n', at)
    shown = data[line_start:line_end if line_end >= 0 else len(data)][:120]
    utf16 = data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
    raise SourceError(
        f'{csv_path}:{line}: not UTF-8: byte 0x{data[at]:02x} at column {at - line_start + 1} (byte {at} of the '
        f'file) in {shown.decode("utf-8", "replace")!r}'
        f'{" (the file is UTF-16: it starts with a UTF-16 byte-order mark)" if utf16 else ""}. Re-encode the '
        f'file as UTF-8, e.g. `iconv -f {"UTF-16" if utf16 else "LATIN1"} -t UTF-8 {os.path.basename(csv_path)} '
        f'> utf8.csv` (use the encoding it was written in).') from e


def read_csv(csv_path: str | os.PathLike, pose_dir: str | os.PathLike,
             text_column: str = 'text') -> tuple[list[Row], SkipReport]:
  """Rows of a CSV whose pose file exists and whose text is non-empty, and the skipped uids."""
  csv_path = os.fspath(csv_path)
  content = _read_text(csv_path)
  reader = csv.DictReader(io.StringIO(content, newline=''), dialect=_sniff_dialect(content[:4096]))
  columns = [c.strip() for c in (reader.fieldnames or [])]
  records = list(reader)
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


def require_usable_rows(split: str, csv_path, pose_dir, rows: list[Row], skipped: SkipReport,
                        text_column: str = 'text', num_examples: int = 3) -> None:
  """Raises NoUsableRowsError, saying why and what to check, when `read_csv` kept no row of a split."""
  if rows:
    return
  counts = {k: len(v) for k, v in skipped.items() if v}
  total = sum(counts.values())
  why = []
  missing = skipped.get('missing_pose', [])
  if missing:
    paths = ', '.join(os.path.join(os.fspath(pose_dir), uid + '.pose') for uid in missing[:num_examples])
    why.append(f'{"every" if len(missing) == total else len(missing)} pose file missing from '
               f'data.pose_dir={os.fspath(pose_dir)!r} (e.g. {paths}): is data.pose_dir right?')
  if skipped.get('empty_text'):
    why.append(f'{len(skipped["empty_text"])} rows with an empty {text_column!r} column: is data.text_column '
               'right?')
  raise NoUsableRowsError(f'{split}: no usable rows in {os.fspath(csv_path)} '
                          f'({f"{total} rows, skipped {counts}" if total else "the CSV has no rows"})'
                          f'{": " + "; ".join(why) if why else ""}. Nothing was trained or written.')


def report_duplicate_uids(split: str, rows: list[Row], num_examples: int = 5) -> dict[str, int]:
  """Warns, once and up front, about uids that occur more than once in a split; returns {uid: count}.

  A warning, not an error: each row stays an example of its own, which corpora use on purpose (several
  translations of one video, oversampling); within one split no evaluation data reaches training. It
  does weigh those rows more in the loss and in a val/test score, so the warning names them.
  """
  counts = collections.Counter(r.uid for r in rows)
  duplicates = {uid: n for uid, n in counts.items() if n > 1}
  if duplicates:
    examples = ', '.join(f'{uid!r} x{n}' for uid, n in list(duplicates.items())[:num_examples])
    logging.warning('%s: %d uid(s) occur more than once (%d extra rows), e.g. %s. Each copy is kept as an '
                    'example of its own (more weight in training and in this split\'s scores); remove the '
                    'copies unless they are meant.', split, len(duplicates),
                    sum(duplicates.values()) - len(duplicates), examples)
  return duplicates


def check_overlap(rows_by_split: dict[str, list[Row]], allow_overlap: bool = False,
                  num_examples: int = 5) -> list[str]:
  """The same uid, or the same pose file (under another uid), in two splits: a SplitOverlapError, or with
  `allow_overlap` (data.allow_overlap) a warning. Returns one line per overlapping pair of splits."""
  def pose_files(rows):  # real path (symlinks resolved) -> uid
    return {os.path.realpath(r.pose_path): r.uid for r in rows if r.pose_path}

  uids = {s: {r.uid for r in rows} for s, rows in rows_by_split.items()}
  files = {s: pose_files(rows) for s, rows in rows_by_split.items()}
  names, lines = list(rows_by_split), []
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      found = []
      same_uid = sorted(uids[a] & uids[b])
      if same_uid:
        found.append(f'{len(same_uid)} uid(s) in both (e.g. {", ".join(map(repr, same_uid[:num_examples]))})')
      same_file = sorted(f for f in files[a].keys() & files[b].keys() if files[a][f] != files[b][f])
      if same_file:
        found.append(f'{len(same_file)} pose file(s) in both under other uids (e.g. ' + ', '.join(
            f'{f} as {files[a][f]!r} and {files[b][f]!r}' for f in same_file[:num_examples]) + ')')
      if found:
        lines.append(f'{a} and {b}: {"; ".join(found)}')
  if lines and not allow_overlap:
    raise SplitOverlapError('the same examples are in two splits (evaluation data seen in training inflates every '
                            'score): ' + ' | '.join(lines) + '. Remove them from one of the splits, or set '
                            'data.allow_overlap=True if the overlap is intended.')
  for line in lines:
    logging.warning('Splits overlap (data.allow_overlap=True): %s', line)
  return lines


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
