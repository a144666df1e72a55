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
import contextlib
import csv
import dataclasses
import functools
import hashlib
import io
import json
import math
import multiprocessing
import os
import sys
import time
import types
import uuid

from absl import logging
import numpy as np

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


def _read_row(row: Row, options: pose_io.PoseOptions):
  """(PoseArrays, None) of a row, or (None, (skip reason, error)) when its pose cannot be used."""
  try:
    return pose_io.read_pose(row.pose_path, options), None
  except pose_io.NoUsableFramesError as e:
    return None, ('no_usable_frames', e)
  except pose_io.KeypointsMismatchError as e:
    return None, ('missing_keypoints', e)
  except pose_io.PoseReadError as e:
    return None, ('unreadable_pose', e)


def load_examples(rows: list[Row], options: pose_io.PoseOptions, num_workers: int = 1,
                  ) -> tuple[list[Row], list[pose_io.PoseArrays], SkipReport]:
  """Reads the pose of every row into memory; drops (and reports) those that cannot be used.

  (The pipeline's cache reads a split in bounded memory instead: `load_split_chunked`.)
  """
  read = functools.partial(_read_row, options=options)
  if num_workers > 1 and len(rows) > 1:
    # Threads: reading is file IO + numpy (releases the GIL).
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


# ------------------------------------------------------------------------------------------------
# Reading a split in bounded memory (the pipeline's cache): chunks of rows, each read by a worker process
# into a .npz file of its own (numpy arrays only: no pickles), kept until the cache is written.
# ------------------------------------------------------------------------------------------------
CHUNK_ROWS = 64           # rows per chunk: a worker holds one chunk's arrays at a time (~1 MB per row at most)
_CHUNK_FORMAT = 1         # of the chunk files and their manifest: bump on a change (old partial reads restart)
_MANIFEST = 'chunks.json'
_PROGRESS_EVERY_S = 10.0


_AUTO_MIN_CHUNKS = 16     # data.num_workers=-1 reads fewer chunks in process (a worker takes seconds to start)


def num_workers_for(num_workers: int, num_chunks: int) -> int:
  """Worker processes for `num_chunks` chunks: data.num_workers (-1: one per core, at most 8, from _AUTO_MIN_CHUNKS
  chunks on); 0 or 1: none (read in this process), as when there is a single chunk."""
  if num_workers < 0:
    num_workers = min(8, _num_cpus()) if num_chunks >= _AUTO_MIN_CHUNKS else 0
  return num_workers if num_workers > 1 and num_chunks > 1 else 0


def _num_cpus() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def read_chunk(rows: list[Row], options: pose_io.PoseOptions, path: str) -> int:
  """Reads the poses of `rows` into the chunk file `path` (complete once it exists: written under a temporary
  name, then renamed). Returns the number of rows read. Runs in a worker process: numpy and pose_io only.

  The file: points f32[F, K, C] and visible bool[F, K] of the kept rows one after the other, their lengths
  i64[n], nbytes i64[n] (points + visible bytes as read), kept i64[n] (their positions in `rows`), and each
  skipped row's position, reason and message (skip_at, skip_reason, skip_message).
  """
  points, visible, lengths, nbytes, kept, skips = [], [], [], [], [], []
  for i, row in enumerate(rows):
    arrays, err = _read_row(row, options)
    if arrays is None:
      skips.append((i, err[0], str(err[1])))
      continue
    points.append(arrays.points)
    visible.append(arrays.visible)
    lengths.append(arrays.points.shape[0])
    nbytes.append(arrays.points.nbytes + arrays.visible.nbytes)
    kept.append(i)
  tmp = f'{path}.tmp-{uuid.uuid4().hex[:8]}'
  with open(tmp, 'wb') as f:
    np.savez(f, points=np.concatenate(points) if points else np.zeros((0, 0, 0), np.float32),
             visible=np.concatenate(visible) if visible else np.zeros((0, 0), bool),
             lengths=np.asarray(lengths, np.int64), nbytes=np.asarray(nbytes, np.int64),
             kept=np.asarray(kept, np.int64), skip_at=np.asarray([s[0] for s in skips], np.int64),
             skip_reason=np.asarray([s[1] for s in skips], str), skip_message=np.asarray([s[2] for s in skips], str))
  os.replace(tmp, path)
  return len(rows)


class ChunkedSplit:
  """A split's usable examples as chunk files in a folder (load_split_chunked), read back one chunk at a time.

  rows: the kept rows, in CSV order; skipped: reason -> uids; lengths / nbytes: i64[n] of the kept examples;
  num_points / num_coords: K, C; examples(start, stop): (points f32[T, K, C], visible bool[T, K]) of kept
  examples start..stop-1; remove(): deletes the chunk files (once the cache is written).
  """

  def __init__(self, folder: str, rows: list[Row], chunk_rows: int):
    self.folder, self._paths = folder, [_chunk_path(folder, i) for i in range(math.ceil(len(rows) / chunk_rows))]
    self.rows, self.skipped, lengths, nbytes, self._kept = [], {r: [] for r in SKIP_REASONS}, [], [], []
    self.num_points = self.num_coords = 0
    for i, path in enumerate(self._paths):
      chunk_rows_i = rows[i * chunk_rows:(i + 1) * chunk_rows]
      with np.load(path, allow_pickle=False) as z:
        skips = list(zip(z['skip_at'].tolist(), z['skip_reason'].tolist(), z['skip_message'].tolist()))
        kept = z['kept'].tolist()
        lengths.append(z['lengths'])
        nbytes.append(z['nbytes'])
        if kept and not self.num_points:
          self.num_points, self.num_coords = z['points'].shape[1:]  # (reads one chunk's arrays once)
      for at, reason, message in skips:
        self.skipped[reason].append(chunk_rows_i[at].uid)
        logging.warning('Skipping %s: %s', chunk_rows_i[at].uid, message)
      self.rows += [chunk_rows_i[j] for j in kept]
      self._kept.append(len(kept))
    self.lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    self.nbytes = np.concatenate(nbytes) if nbytes else np.zeros(0, np.int64)
    self._first = np.concatenate([[0], np.cumsum(self._kept)])  # first kept example of each chunk

  def examples(self, start: int, stop: int):
    for c in range(max(0, int(np.searchsorted(self._first, start, 'right')) - 1), len(self._paths)):
      lo, hi = max(start, self._first[c]), min(stop, self._first[c + 1])
      if lo >= stop:
        return
      if lo >= hi:
        continue
      with np.load(self._paths[c], allow_pickle=False) as z:
        points, visible, lengths = z['points'], z['visible'], z['lengths']
      offsets = np.concatenate([[0], np.cumsum(lengths)])
      for j in range(lo - self._first[c], hi - self._first[c]):
        yield points[offsets[j]:offsets[j + 1]], visible[offsets[j]:offsets[j + 1]]

  def remove(self):
    for path in self._paths + [os.path.join(self.folder, _MANIFEST)]:
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _chunk_path(folder: str, i: int) -> str:
  return os.path.join(folder, f'chunk-{i:06d}.npz')


def load_split_chunked(csv_path, pose_dir, options: pose_io.PoseOptions, folder: str, *, text_column: str = 'text',
                       num_workers: int = -1, split: str = '') -> ChunkedSplit:
  """load_split in bounded memory: the poses go to chunk files in `folder` (see read_chunks), not into memory.
  The same rows, skips and log lines as load_split."""
  rows, skipped_csv = read_csv(csv_path, pose_dir, text_column)
  chunked = read_chunks(rows, options, folder, num_workers=num_workers, what=split or os.fspath(csv_path))
  chunked.skipped = merge_skips(skipped_csv, chunked.skipped)
  log_skips(split or os.fspath(csv_path), len(chunked.rows), chunked.skipped)
  return chunked


def read_chunks(rows: list[Row], options: pose_io.PoseOptions, folder: str, *, num_workers: int = -1,
                what: str = '', chunk_rows: int | None = None) -> ChunkedSplit:
  """Reads the poses of `rows` into chunk files of `chunk_rows` rows in `folder`, in `num_workers` worker
  processes (num_workers_for), logging progress (rows/s, ETA).

  Resumable: the chunk files a killed run finished are kept and not read again, if `folder`'s manifest says they
  hold these rows with these options (else the folder's chunks are deleted first); files a killed write left
  half-written (temporary names) are deleted. One process at a time per folder (the pipeline holds a lock).
  """
  chunk_rows = chunk_rows or CHUNK_ROWS
  os.makedirs(folder, exist_ok=True)
  _start_manifest(folder, rows, options, chunk_rows)
  chunks = [(i, rows[a:a + chunk_rows]) for i, a in enumerate(range(0, len(rows), chunk_rows))]
  todo = [(i, chunk) for i, chunk in chunks if not os.path.exists(_chunk_path(folder, i))]
  workers = num_workers_for(num_workers, len(todo))
  progress = _Progress(what, len(rows), len(rows) - sum(len(c) for _, c in todo))
  if workers:
    # Spawned, not forked: forking a process that has imported TF / jax (threads) is unsafe.
    with _plain_main(), concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context('spawn')) as pool:
      futures = [pool.submit(read_chunk, chunk, options, _chunk_path(folder, i)) for i, chunk in todo]
      try:
        for future in concurrent.futures.as_completed(futures):
          progress.add(future.result())
      except concurrent.futures.BrokenExecutor as e:
        raise RuntimeError(f'{what}: a worker process reading .pose files died (out of memory? lower '
                           f'data.num_workers): {e}. Finished chunks in {folder} are kept: run again to '
                           'go on.') from e
      finally:  # (an error: stop at once, not after the chunks still queued)
        for future in futures:
          future.cancel()
  else:
    for i, chunk in todo:
      progress.add(read_chunk(chunk, options, _chunk_path(folder, i)))
  progress.done()
  return ChunkedSplit(folder, rows, chunk_rows)


def _start_manifest(folder: str, rows: list[Row], options: pose_io.PoseOptions, chunk_rows: int):
  """Keeps the files of an earlier run on the same rows, options and chunking, less the temporary files of killed
  writes; else empties the folder (the build's own: its chunks and what was made of them)."""
  h = hashlib.sha256(json.dumps([[r.uid, r.pose_path] for r in rows]).encode())
  manifest = {'format': _CHUNK_FORMAT, 'chunk_rows': chunk_rows, 'num_rows': len(rows),
              'rows_sha256': h.hexdigest(), 'options': options.fingerprint()}
  path = os.path.join(folder, _MANIFEST)
  try:
    with open(path) as f:
      same = json.load(f) == manifest
  except (OSError, ValueError):
    same = False
  for name in os.listdir(folder):
    if '.tmp-' in name or not same:
      os.remove(os.path.join(folder, name))
  if same:
    return
  with open(path + '.tmp', 'w') as f:
    json.dump(manifest, f)
  os.replace(path + '.tmp', path)


@contextlib.contextmanager
def _plain_main():
  """Spawned workers import the parent's __main__ module again (a trainer script: TF and jax, seconds and
  hundreds of MB each) unless it is hidden while they start: they need only this module."""
  main = sys.modules['__main__']
  sys.modules['__main__'] = types.ModuleType('__main__')
  try:
    yield
  finally:
    sys.modules['__main__'] = main


class _Progress:
  """Logs rows read (of `total`), rows/s and the time left, at most every _PROGRESS_EVERY_S seconds."""

  def __init__(self, what: str, total: int, done: int):
    self.what, self.total, self.done_before, self.count = what, total, done, done
    self.start = self.last = time.monotonic()
    if done:
      logging.info('%s: %d of %d rows read by an earlier run (kept)', what, done, total)

  def add(self, n: int):
    self.count += n
    now = time.monotonic()
    if now - self.last >= _PROGRESS_EVERY_S:
      self.last = now
      logging.info('%s', self.line(now))

  def line(self, now: float) -> str:
    rate = (self.count - self.done_before) / max(now - self.start, 1e-9)
    left = (self.total - self.count) / rate if rate > 0 else float('inf')
    eta = f'{left // 60:.0f} min {left % 60:02.0f} s' if math.isfinite(left) else '?'
    return (f'{self.what}: read {self.count}/{self.total} rows ({100 * self.count / max(self.total, 1):.0f}%), '
            f'{rate:.1f} rows/s, ETA {eta}')

  def done(self):
    logging.info('%s (done)', self.line(time.monotonic()))


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
