"""JAX's persistent compilation cache (training.compile_cache_dir), set up by slt_jax.main before anything compiles.

A process that compiles a program some earlier process on this machine compiled already (a resumed or repeated
run, an eval or translate of a trained run, the next seed of a sweep) loads the executable from disk instead of
compiling it again. JAX keys each entry on the program, its compile options, the jax/jaxlib version and the
device, so a stale entry is never used: a changed model, batch shape or learning-rate schedule (a constant in
the step) is another key and compiles anew.

The default ('auto') is a folder in the user's cache ($XDG_CACHE_HOME or ~/.cache, /slt_jax/jax_compile), not
in the workdir: entries do not depend on the run, so a fresh workdir of the same config (a rerun, a sweep, a
test) hits them too, where a workdir's own cache would only serve its resumes. The folder is bounded
(MAX_BYTES, least recently used entries evicted first). A JAX_COMPILATION_CACHE_DIR in the environment wins
over 'auto'; '' turns the cache off.
"""
import collections
import os
from typing import Optional

import jax
from absl import logging

# Every compile is written, however short: on a CPU a small step compiles in well under JAX's default 1 s
# threshold yet its seconds add up over a run's dozen programs. A threshold would also make what a run writes
# depend on the machine's load that day (a 0.9 s compile cached once, not the next time).
MIN_COMPILE_SECS = 0.0
MAX_BYTES = 4 << 30  # LRU-evicted beyond this (JAX's jax_compilation_cache_max_size; it needs `filelock`)

_EVENTS = {'/jax/compilation_cache/cache_hits': 'hits', '/jax/compilation_cache/cache_misses': 'written'}
_counts = collections.Counter()


def default_dir() -> str:
  """$XDG_CACHE_HOME/slt_jax/jax_compile, else ~/.cache/slt_jax/jax_compile."""
  return os.path.join(os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'slt_jax',
                      'jax_compile')


def resolve(setting: str) -> Optional[str]:
  """training.compile_cache_dir -> the cache folder, or None (off).

  'auto': JAX_COMPILATION_CACHE_DIR where the environment sets it, else default_dir(); '': off; else a path
  (~ expanded).
  """
  if not setting:
    return None
  if setting == 'auto':
    return os.environ.get('JAX_COMPILATION_CACHE_DIR') or default_dir()
  return os.path.abspath(os.path.expanduser(setting))


def configure(setting: str) -> Optional[str]:
  """Turns the persistent cache on in `resolve(setting)` (or off) for this process; returns the folder.

  Call before the first compile: JAX reads these settings when it first uses the cache. Thresholds the
  environment sets (JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS, ..._MIN_ENTRY_SIZE_BYTES) are kept.
  """
  path = resolve(setting)
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_enable_compilation_cache', path is not None)
  if path is None:
    logging.info('Persistent compilation cache off (training.compile_cache_dir is empty).')
    return None
  os.makedirs(path, exist_ok=True)
  if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in os.environ:
    jax.config.update('jax_persistent_cache_min_compile_time_secs', MIN_COMPILE_SECS)
  if 'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES' not in os.environ:
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  if 'JAX_COMPILATION_CACHE_MAX_SIZE' not in os.environ:
    jax.config.update('jax_compilation_cache_max_size', MAX_BYTES)
  if not _counts:
    jax.monitoring.register_event_listener(_count_event)
    _counts['listening'] = 1
  logging.info('Persistent compilation cache: %s (training.compile_cache_dir; \'\' turns it off).', path)
  return path


def _count_event(event: str, **kwargs) -> None:
  del kwargs
  if event in _EVENTS:
    _counts[_EVENTS[event]] += 1


def stats() -> dict:
  """{'hits': executables loaded from the cache, 'written': compiled and written to it} in this process."""
  return {name: _counts[name] for name in _EVENTS.values()}


def log_stats() -> None:
  """One line: what this process took from and added to the cache (nothing when the cache is off)."""
  if jax.config.jax_compilation_cache_dir:
    s = stats()
    logging.info('Persistent compilation cache %s: %d programs loaded, %d compiled and written.',
                 jax.config.jax_compilation_cache_dir, s['hits'], s['written'])
