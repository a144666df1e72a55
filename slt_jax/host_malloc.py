"""glibc malloc settings that let XLA's CPU backend reuse each train step's memory instead of faulting it in.

XLA:CPU mallocs a step's temporaries (hundreds of MB even for a small model) and frees them when the step
ends. glibc serves requests of 32 MiB and more with mmap and returns memory from its per-thread arenas to the
kernel, so every step faults its temporaries in again, page by page, each page zeroed by the kernel. With one
arena, no mmap and no trimming, the freed memory is reused (the faults, system time and step time both ways:
README, Speed). The cost: the heap keeps its peak size, and the host's threads share one arena.

mallopt(3) applies the settings in-process, but a thread keeps the arena it got at its first malloc, so
`configure` must run before JAX starts its CPU client (the first jax.devices() or computation).
"""
import ctypes
import importlib.metadata
import importlib.util
import os
import sys

from absl import logging

# mallopt(3) parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def accelerator_installed() -> bool:
  """Whether JAX may find an accelerator: a PJRT plugin (jax-cuda*/rocm) or libtpu, unless JAX_PLATFORMS=cpu."""
  if os.environ.get('JAX_PLATFORMS', '').strip().lower() == 'cpu':
    return False
  return bool(importlib.metadata.entry_points(group='jax_plugins')) or importlib.util.find_spec('libtpu') is not None


def configure(setting: str = 'auto') -> bool:
  """Applies the settings ('on'; 'auto': only where no accelerator is installed; 'off'). -> whether applied.

  Call before JAX initialises its backend. A no-op (False) off Linux/glibc.
  """
  if setting == 'off' or (setting == 'auto' and accelerator_installed()):
    return False
  if not sys.platform.startswith('linux'):
    return False
  try:
    libc = ctypes.CDLL('libc.so.6')
  except OSError:
    return False
  applied = all(libc.mallopt(param, value) == 1 for param, value in (
      (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**30)))
  logging.info('glibc malloc: one arena, no mmap, no trim (training.host_malloc=%s)%s', setting,
               '' if applied else ' -- mallopt refused a setting')
  return applied
