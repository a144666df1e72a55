"""Samples per second of the input pipeline (slt_jax/data/pipeline.py), cold and warm, vs a pose-format loop.

  .venv/bin/python scripts/bench_data.py                                    # 512 synthetic sentences
  .venv/bin/python scripts/bench_data.py --csv=train.csv --pose_dir=poses --json

cold  make_datasets on an empty cache (every `.pose` parsed, keypoints selected and normalised, written to
      TFRecord shards, read back into memory) + one epoch of training batches: what the first run pays.
warm  the cache present: make_datasets (startup, reported apart) then training batches with the training
      augmentations (data.augmentations defaults) for --epochs epochs; the rate counts the batches after the
      first one (tf.data start). warm_noaug: the same without augmentation (the pipeline's own cost).
loop  the baseline: the same rows read one by one in Python, `Pose.read` (pose-format) + the same keypoint
      selection / normalisation / subsampling (pose_io.arrays_from_pose, the steps of pose_io.read_pose),
      padded and stacked into batches of the same size; no augmentation, so it does less work than warm.
warm, warm_noaug and loop are timed --rounds times, interleaved; each rate is the median of its rounds
(robust to load spikes on a shared CPU).

--scale: the cache build at growing corpus sizes (--scale_sizes, default 2k, 8k, 32k examples: a base corpus of
      --num synthetic sentences or --csv, tiled by symlinks to N rows with distinct uids and texts), each in a
      fresh child process with data.max_in_memory_gb=0 (make_datasets: the cache, then the training examples
      memory-mapped): build examples/s, and the peak anonymous memory (RssAnon: heap, not file-backed or page
      cache pages) of the child and its worker processes, sampled every 20 ms, with the child's RssAnon after its
      imports (before the build) for reference. The peak should stay flat while N grows.

  .venv/bin/python scripts/bench_data.py --scale --num=64 --num_workers=2

Data: the embedded synthetic corpus (slt_jax/data/synthetic.py, reduced 178-point Holistic, 25 fps) generated
into a temporary folder, or --csv/--pose_dir (the seed's uid,text layout). The page cache holds the files for
every phase (the synthetic corpus was just written; cold reads them first). The CPU may be shared with other
processes: compare figures from one run. Prints a table, then one JSON line (--json: only the JSON line).
"""
import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from pose_format import Pose

from slt_jax import default_config
from slt_jax.data import pipeline
from slt_jax.data import pose_io
from slt_jax.data import sources
from slt_jax.data import synthetic
from slt_jax.data import tokenizer as tok_lib


def _args(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--csv', default='', help='CSV (uid,text); default: a generated synthetic corpus')
  p.add_argument('--pose_dir', default='', help='pose folder of --csv')
  p.add_argument('--num', type=int, default=512, help='synthetic sentences to generate (without --csv)')
  p.add_argument('--keypoints', default='hands_body')
  p.add_argument('--coords', default='xyz')
  p.add_argument('--normalize', default='shoulders')
  p.add_argument('--max_frames', type=int, default=128)
  p.add_argument('--batch_size', type=int, default=32)
  p.add_argument('--epochs', type=int, default=12,
                 help='warm: epochs of training batches to time (the default, ~0.5 s, is well past the '
                      'ramp of tf.data autotuning its parallelism; 3 epochs read ~15%% lower)')
  p.add_argument('--rounds', type=int, default=5, help='interleaved timings of warm / warm_noaug / loop')
  p.add_argument('--num_workers', type=int, default=-1,
                 help='data.num_workers (processes parsing .pose files into the cache; -1: one per core)')
  p.add_argument('--scale', action='store_true', help='time the cache build at --scale_sizes examples')
  p.add_argument('--scale_sizes', default='2000,8000,32000', help='--scale: corpus sizes (examples)')
  p.add_argument('--scale_child', default='', help=argparse.SUPPRESS)  # (internal: one --scale build, CSV path)
  p.add_argument('--json', action='store_true', help='print only the JSON line')
  return p.parse_args(argv)


def _config(a, csv_path, pose_dir, cache_dir, augment=True):
  c = default_config.get_config()
  c.data.train_path, c.data.pose_dir, c.data.cache_dir = csv_path, pose_dir, cache_dir
  c.data.keypoints, c.data.coords, c.data.normalize = a.keypoints, a.coords, a.normalize
  c.data.max_frames = a.max_frames
  c.data.bucket_boundaries = tuple(b for b in c.data.bucket_boundaries if b < a.max_frames) + (a.max_frames,)
  c.data.augment = augment
  c.data.num_workers = a.num_workers
  c.training.batch_size = a.batch_size
  c.data.trained_tokenizer.kind = 'wordlevel'
  return c


def _batches(split, n):
  """Times n batches of a split's stream: (seconds of batches 2..n, examples in them, first batch seconds)."""
  it = split.iterator()
  start = time.perf_counter()
  next(it)
  first = time.perf_counter() - start
  start, examples = time.perf_counter(), 0
  for _ in range(n - 1):
    examples += int(next(it)['example_mask'].sum())
  return time.perf_counter() - start, examples, first


def _loop(rows, options, batch_size):
  """The baseline: one file at a time with pose-format, then pad + stack per batch. Returns (seconds, n)."""
  start, n, pending = time.perf_counter(), 0, []
  for row in rows:
    with open(row.pose_path, 'rb') as f:
      pose = Pose.read(f.read())
    body = pose.body
    pending.append(pose_io.arrays_from_pose(pose.header, body.data, body.confidence, body.fps, options,
                                            source=row.pose_path))
    if len(pending) == batch_size:
      t, (k, c) = max(x.points.shape[0] for x in pending), pending[0].points.shape[1:]
      points, visible = np.zeros((batch_size, t, k, c), np.float32), np.zeros((batch_size, t, k), bool)
      for i, x in enumerate(pending):
        points[i, :len(x.points)], visible[i, :len(x.points)] = x.points, x.visible
      n, pending = n + batch_size, []
  return time.perf_counter() - start, n


def _train(config, tokenizer, workdir):
  splits = pipeline.make_datasets(config, tokenizer, workdir, splits=['train'], shard_index=0, num_shards=1)
  return splits['train']


def _measure(a, tmp, csv_path, pose_dir) -> dict:
  config = _config(a, csv_path, pose_dir, os.path.join(tmp, 'cache'))
  rows, _ = sources.read_csv(csv_path, pose_dir)
  tokenizer = tok_lib.train_tokenizer([r.text for r in rows], kind='wordlevel')

  # cold: preprocessing into an empty cache, then the first epoch of batches.
  start = time.perf_counter()
  train = _train(config, tokenizer, tmp)
  cold_build_s = time.perf_counter() - start
  per_epoch = max(train.num_examples // a.batch_size, 1)
  it = train.iterator()
  for _ in range(per_epoch):
    next(it)
  cold_s = time.perf_counter() - start

  # warm: the cache is there. loop: pose-format one sample at a time (the same usable rows).
  start = time.perf_counter()
  train = _train(config, tokenizer, tmp)
  warm_startup_s = time.perf_counter() - start
  plain = _train(_config(a, csv_path, pose_dir, config.data.cache_dir, augment=False), tokenizer, tmp)
  options = pose_io.PoseOptions.from_config(config.data)
  rates, first_batch_s = {'warm': [], 'warm_noaug': [], 'loop': []}, []
  for _ in range(max(a.rounds, 1)):
    warm_s, warm_n, first = _batches(train, a.epochs * per_epoch + 1)
    plain_s, plain_n, _ = _batches(plain, a.epochs * per_epoch + 1)
    loop_s, loop_n = _loop(train.rows, options, a.batch_size)
    first_batch_s.append(first)
    for phase, (s, m) in {'warm': (warm_s, warm_n), 'warm_noaug': (plain_s, plain_n),
                          'loop': (loop_s, loop_n)}.items():
      rates[phase].append(m / s)

  n = train.num_examples
  r = {'samples': n, 'skipped': sum(len(v) for v in train.skipped.values()), 'batch_size': a.batch_size,
       'pose_shape': list(train.pose_shape), 'max_frames': a.max_frames,
       'cold_build_s': round(cold_build_s, 2), 'cold_s': round(cold_s, 2),
       'cold_samples_per_s': round(n / cold_s, 1),
       'warm_startup_s': round(warm_startup_s, 2), 'warm_first_batch_s': round(first_batch_s[0], 3),
       'rounds': len(rates['warm']), 'warm_samples_timed': warm_n, 'loop_samples_timed': loop_n}
  for phase, values in rates.items():
    r[f'{phase}_samples_per_s'] = round(float(np.median(values)), 1)
    r[f'{phase}_rounds_samples_per_s'] = [round(v, 1) for v in values]
  for phase in ('warm', 'warm_noaug', 'cold'):
    r[f'{phase}_over_loop'] = round(r[f'{phase}_samples_per_s'] / r['loop_samples_per_s'], 2)
  return r


def _table(r) -> str:
  k, c = r['pose_shape']
  lines = [(f"data: {r['source']}; {r['samples']} usable samples, batch {r['batch_size']}, "
            f"poses [B, <={r['max_frames']}, {k}, {c}]"),
           f"{'phase':<10} {'samples/s':>10} {'x loop':>7}  what"]
  what = {
      'cold': f"preprocessing into the cache ({r['cold_build_s']:.1f} s) + the first epoch "
              f"({r['cold_s']:.1f} s in all)",
      'warm': f"augmented training batches (startup {r['warm_startup_s']:.2f} s, first batch "
              f"{r['warm_first_batch_s']:.2f} s: not counted)",
      'warm_noaug': 'the same without augmentation',
      'loop': 'pose-format Pose.read + selection / normalisation, one by one'}
  for phase, text in what.items():
    ratio = r[f'{phase}_over_loop'] if phase != 'loop' else 1.0
    lines.append(f"{phase:<10} {r[f'{phase}_samples_per_s']:>10.1f} {ratio:>7.2f}  {text}")
  return '\n'.join(lines)


# ------------------------------------------------------------------------------------------------------------
# --scale: cache build rate and peak heap against the corpus size.
# ------------------------------------------------------------------------------------------------------------
def _tile(csv_path, pose_dir, n, out_dir) -> tuple[str, str]:
  """A corpus of n rows: the usable rows of csv_path repeated, each copy a symlink of its pose file under a uid of
  its own (the same texts: the tokenizer stays the same size). Returns (csv path, pose dir)."""
  rows, _ = sources.read_csv(csv_path, pose_dir)
  poses = os.path.join(out_dir, 'poses')
  os.makedirs(poses)
  with open(os.path.join(out_dir, 'train.csv'), 'w', newline='', encoding='utf-8') as f:
    writer = csv.writer(f)
    writer.writerow(['uid', 'text'])
    for i in range(n):
      row = rows[i % len(rows)]
      os.symlink(os.path.abspath(row.pose_path), os.path.join(poses, f'x{i:07d}.pose'))
      writer.writerow([f'x{i:07d}', row.text])
  return os.path.join(out_dir, 'train.csv'), poses


def _rss_anon_kib(pid: int) -> int:
  try:
    with open(f'/proc/{pid}/status') as f:
      for line in f:
        if line.startswith('RssAnon:'):
          return int(line.split()[1])
  except OSError:  # (exited)
    pass
  return 0


def _tree(pid: int) -> list[int]:
  """pid and its descendants (from /proc/*/stat parent ids)."""
  parents = {}
  for entry in os.listdir('/proc'):
    if entry.isdigit():
      try:
        with open(f'/proc/{entry}/stat') as f:
          parents[int(entry)] = int(f.read().rsplit(')', 1)[1].split()[1])
      except (OSError, IndexError, ValueError):
        pass
  tree, frontier = [pid], [pid]
  while frontier:
    frontier = [p for p, parent in parents.items() if parent in frontier]
    tree += frontier
  return tree


def _scale_child(a):
  """One --scale build (in a fresh process): prints {'startup_anon_kib', 'build_s', 'examples'} as JSON."""
  csv_path, pose_dir = a.scale_child, a.pose_dir
  tmp = os.path.dirname(csv_path)
  config = _config(a, csv_path, pose_dir, os.path.join(tmp, 'cache'), augment=False)
  config.data.max_in_memory_gb = 0
  texts = [r.text for r in sources.read_csv(csv_path, pose_dir)[0]]
  tokenizer = tok_lib.train_tokenizer(texts, kind='wordlevel')
  startup = _rss_anon_kib(os.getpid())
  print(json.dumps({'startup_anon_kib': startup}), flush=True)
  start = time.perf_counter()
  train = _train(config, tokenizer, tmp)
  build_s = time.perf_counter() - start
  print(json.dumps({'build_s': build_s, 'examples': train.num_examples}), flush=True)


def _scale(a, tmp, csv_path, pose_dir) -> list[dict]:
  results = []
  for n in [int(x) for x in a.scale_sizes.split(',')]:
    folder = os.path.join(tmp, f'scale{n}')
    os.makedirs(folder)
    tiled_csv, tiled_poses = _tile(csv_path, pose_dir, n, folder)
    argv = [sys.executable, os.path.abspath(__file__), f'--scale_child={tiled_csv}', f'--pose_dir={tiled_poses}',
            f'--keypoints={a.keypoints}', f'--coords={a.coords}', f'--normalize={a.normalize}',
            f'--max_frames={a.max_frames}', f'--batch_size={a.batch_size}', f'--num_workers={a.num_workers}']
    with tempfile.TemporaryFile('w+') as out:
      child = subprocess.Popen(argv, stdout=out, stderr=subprocess.DEVNULL)
      peak, peak_main, peak_procs = 0, 0, 1
      while child.poll() is None:
        tree = _tree(child.pid)
        anon = sum(_rss_anon_kib(p) for p in tree)
        if anon > peak:
          peak, peak_procs = anon, len(tree)
        peak_main = max(peak_main, _rss_anon_kib(child.pid))
        time.sleep(0.02)
      if child.returncode:
        raise RuntimeError(f'--scale child for N={n} failed ({child.returncode}): {" ".join(argv)}')
      out.seek(0)
      r = {}
      for line in out:
        if line.startswith('{'):
          r.update(json.loads(line))
    results.append({'n': n, 'examples': r['examples'], 'build_s': round(r['build_s'], 2),
                    'examples_per_s': round(r['examples'] / r['build_s'], 1),
                    'peak_anon_mib': round(peak / 1024, 1), 'peak_anon_main_mib': round(peak_main / 1024, 1),
                    'procs_at_peak': peak_procs, 'startup_anon_mib': round(r['startup_anon_kib'] / 1024, 1),
                    'cache_mib': round(_du(os.path.join(folder, 'cache')) / 2**20, 1)})
    shutil.rmtree(folder, ignore_errors=True)
  return results


def _du(path) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _scale_table(results, source) -> str:
  lines = [f'data: {source}, tiled; data.max_in_memory_gb=0; load: {_load()}',
           f"{'N':>7} {'build s':>8} {'ex/s':>7} {'peak anon MiB':>14} {'(main)':>7} {'procs':>5} "
           f"{'startup MiB':>11} {'cache MiB':>9}"]
  for r in results:
    lines.append(f"{r['n']:>7} {r['build_s']:>8.1f} {r['examples_per_s']:>7.1f} {r['peak_anon_mib']:>14.1f} "
                 f"{r['peak_anon_main_mib']:>7.1f} {r['procs_at_peak']:>5} {r['startup_anon_mib']:>11.1f} "
                 f"{r['cache_mib']:>9.1f}")
  peaks = [r['peak_anon_mib'] for r in results]
  lines.append(f'peak anon, largest / smallest N: {max(peaks) / min(peaks):.2f}')
  return '\n'.join(lines)


def _load() -> str:
  return ' '.join(f'{x:.2f}' for x in os.getloadavg()) + f' ({os.cpu_count()} cpus)'


def main(argv=None):
  a = _args(argv)
  if a.scale_child:
    _scale_child(a)
    return
  tmp = tempfile.mkdtemp(prefix='bench_data_')
  try:
    start = time.perf_counter()
    if a.csv:
      csv_path, pose_dir, source = a.csv, a.pose_dir, f'{a.csv} (pose_dir {a.pose_dir})'
    else:
      paths = synthetic.generate_corpus(os.path.join(tmp, 'corpus'), num_train=a.num, num_val=1, num_test=1)
      csv_path, pose_dir = paths['train'], paths['pose_dir']
      source = f'synthetic corpus, {a.num} sentences (reduced Holistic, 178 points)'
    if a.scale:
      results = _scale(a, tmp, csv_path, pose_dir)
      if not a.json:
        print(_scale_table(results, source))
      print(json.dumps({'source': source, 'load': _load(), 'scale': results}))
      return
    result = {'source': source, 'generate_s': round(time.perf_counter() - start, 2),
              **_measure(a, tmp, csv_path, pose_dir), 'load': _load()}
    if not a.json:
      print(_table(result))
    print(json.dumps(result))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
  main(sys.argv[1:])
