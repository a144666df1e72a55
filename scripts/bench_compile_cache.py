"""Time to the first train step of a rerun of the demo: persistent compilation cache off, cold and warm.

  python scripts/bench_compile_cache.py [--workdir=/tmp/bench_compile_cache] [--pairs=2] [--json]

First the demo's data (corpus, preprocessed cache, tokenizer) is prepared once in WORKDIR/run, so that every timed
run differs only in what it compiles (the preprocessed cache is keyed on the data's path: a copy elsewhere would
rebuild it). Then, --pairs times, three reruns of

  python -m slt_jax.main --config=configs/demo.py --workdir=WORKDIR/run --config.training.num_train_steps=N
      --config.training.log_every_steps=1 --config.training.compile_cache_dir=...

in that workdir, its checkpoints and logs removed first (it trains from step 0 again), take turns:
  off    training.compile_cache_dir='' (compiles everything, writes nothing: how runs started before the cache);
  cold   an empty cache folder (compiles everything and writes it: a first run on this machine);
  warm   the folder the cold run just filled (a rerun: loads the programs).
Each run is timed from its start to the trainer's first `step 1/N` log line, then stopped. Reports the median
seconds of each kind and warm's speed-up over cold and off; with --json the last line is a JSON object
{"off_s", "cold_s", "warm_s" (medians), "<kind>_runs", "warm_speedup_vs_cold", "warm_speedup_vs_off"}.

Measured (2-core CPU, nothing else running, --pairs=2): off 25.4 s, cold 27.2 s, warm 13.2 s: warm 2.05x sooner
than cold (29 cache entries). The README's speed section has the runs and what the start-up spends its time on.
"""
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

from absl import app, flags

_WORKDIR = flags.DEFINE_string('workdir', '/tmp/bench_compile_cache', 'Scratch folder (emptied first).')
_PAIRS = flags.DEFINE_integer('pairs', 2, 'Rounds of (off, cold, warm) runs; the median of each is reported.')
_STEPS = flags.DEFINE_integer('num_train_steps', 1500, "The demo's training.num_train_steps (part of the "
                              "compiled step: its learning-rate schedule).")
_TIMEOUT = flags.DEFINE_integer('timeout', 900, 'Seconds a run may take to reach its first step.')
_JSON = flags.DEFINE_bool('json', False, 'Print a JSON object as the last line.')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRST_STEP = re.compile(r'\bstep 1/\d+ ')
KINDS = ('off', 'cold', 'warm')


def _seconds_to_first_step(workdir: str, cache_dir: str) -> float:
  """Runs the demo in `workdir` until its first logged step; -> seconds from the start. Its log: workdir/log.txt."""
  argv = [sys.executable, '-m', 'slt_jax.main', f'--config={os.path.join(REPO, "configs", "demo.py")}',
          f'--workdir={workdir}', f'--config.training.num_train_steps={_STEPS.value}',
          '--config.training.log_every_steps=1', f'--config.training.compile_cache_dir={cache_dir}']
  env = {k: v for k, v in os.environ.items() if not k.startswith(('JAX_COMPILATION_CACHE', 'JAX_PERSISTENT_CACHE'))}
  log_path = os.path.join(workdir, 'log.txt')
  start = time.perf_counter()
  with open(log_path, 'w') as log:
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
  try:
    while True:
      with open(log_path) as f:
        if FIRST_STEP.search(f.read()):
          return time.perf_counter() - start
      if proc.poll() is not None:
        raise RuntimeError(f'the run in {workdir} exited ({proc.returncode}) before its first step; see {log_path}')
      if time.perf_counter() - start > _TIMEOUT.value:
        raise RuntimeError(f'no first step in {_TIMEOUT.value} s; see {log_path}')
      time.sleep(0.05)
  finally:
    proc.kill()
    proc.wait()


def _rerun_workdir(workdir: str) -> str:
  """`workdir` with its data, preprocessed cache and tokenizer kept, its checkpoints, logs and TensorBoard files
  removed (a rerun from step 0)."""
  for name in ('checkpoints', 'best', 'tensorboard', 'log.txt', 'config.json'):
    path = os.path.join(workdir, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    elif os.path.exists(path):
      os.remove(path)
  return workdir


def main(argv):
  del argv
  root = _WORKDIR.value
  shutil.rmtree(root, ignore_errors=True)
  os.makedirs(root)
  run = os.path.join(root, 'run')
  os.makedirs(run)
  print(f'preparing the demo data in {run} ...', flush=True)
  _seconds_to_first_step(run, '')
  times = {kind: [] for kind in KINDS}
  for i in range(_PAIRS.value):
    cache = os.path.join(root, f'cache-{i}')
    for kind, cache_dir in (('off', ''), ('cold', cache), ('warm', cache)):
      seconds = _seconds_to_first_step(_rerun_workdir(run), cache_dir)
      times[kind].append(seconds)
      print(f'{kind:4s} run {i}: first step after {seconds:.1f} s', flush=True)
  result = {f'{kind}_s': statistics.median(t) for kind, t in times.items()}
  result.update({f'{kind}_runs': t for kind, t in times.items()})
  result['warm_speedup_vs_cold'] = result['cold_s'] / result['warm_s']
  result['warm_speedup_vs_off'] = result['off_s'] / result['warm_s']
  result['cache_entries'] = len(os.listdir(os.path.join(root, 'cache-0')))
  print(f"first step: off {result['off_s']:.1f} s, cold {result['cold_s']:.1f} s, warm {result['warm_s']:.1f} s "
        f"(warm {result['warm_speedup_vs_cold']:.2f}x sooner than cold, {result['warm_speedup_vs_off']:.2f}x than "
        f"off; {result['cache_entries']} cache entries)")
  if _JSON.value:
    print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
