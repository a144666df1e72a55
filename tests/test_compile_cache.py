"""The persistent compilation cache (training.compile_cache_dir, slt_jax/compile_cache.py): a second run of the
same config loads every program the first one compiled and wrote, and '' turns the cache off."""
import os
import re
import subprocess
import sys

import pytest

import tiny_demo
from slt_jax import compile_cache

_STATS = re.compile(r'Persistent compilation cache (\S+): (\d+) programs loaded, (\d+) compiled and written')


def _run(workdir, xdg_cache_home, *flags):
  """A 2-step tiny demo run through slt_jax.main; -> (its log, (folder, loaded, written) or None)."""
  env = {k: v for k, v in os.environ.items() if not k.startswith('JAX_PERSISTENT_CACHE')
         and k not in ('JAX_COMPILATION_CACHE_DIR', 'JAX_COMPILATION_CACHE_MAX_SIZE')}
  env.update(JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2', XDG_CACHE_HOME=str(xdg_cache_home))
  argv = [sys.executable, '-m', 'slt_jax.main', f'--workdir={workdir}', *tiny_demo.flags(num_train_steps=2),
          *flags]
  out = subprocess.run(argv, cwd=tiny_demo.REPO, env=env, capture_output=True, text=True, timeout=600,
                       check=False)
  log = out.stdout + out.stderr
  assert out.returncode == 0, log[-3000:]
  found = _STATS.findall(log)
  return log, (found[-1][0], int(found[-1][1]), int(found[-1][2])) if found else None


def _entries(folder):
  return {name for name in os.listdir(folder) if not name.startswith('.')} if os.path.isdir(folder) else set()


@pytest.mark.slow
def test_second_run_loads_what_the_first_compiled_and_empty_turns_it_off(tmp_path):
  xdg = tmp_path / 'xdg'
  folder = os.path.join(xdg, 'slt_jax', 'jax_compile')  # 'auto' (the default): the user's cache
  _, first = _run(tmp_path / 'run1', xdg)
  written = _entries(folder)
  assert first[0] == folder and first[2] > 0 and len(written) >= first[2], (first, written)
  # Nothing the first run compiled was compiled or loaded again in it (the first train step, compiled ahead in a
  # thread, is the one the loop calls).
  assert first[1] == 0, first

  _, second = _run(tmp_path / 'run2', xdg)  # a fresh workdir, same config: the same programs
  assert second[0] == folder and second[1] >= first[2] and second[2] == 0, (first, second)
  assert _entries(folder) == written  # nothing new on disk

  other = tmp_path / 'xdg-off'
  log, third = _run(tmp_path / 'run3', other, '--config.training.compile_cache_dir=')
  assert third is None and 'Persistent compilation cache off' in log
  assert not os.path.exists(os.path.join(other, 'slt_jax')) and _entries(folder) == written


def test_resolve(monkeypatch, tmp_path):
  monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR', raising=False)
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
  assert compile_cache.resolve('auto') == os.path.join(tmp_path, 'slt_jax', 'jax_compile')
  assert compile_cache.resolve('') is None
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  assert compile_cache.resolve('~/jc') == os.path.join(tmp_path, 'home', 'jc')
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', str(tmp_path / 'env'))  # the user's own JAX setting wins
  assert compile_cache.resolve('auto') == str(tmp_path / 'env')
  assert compile_cache.resolve(str(tmp_path / 'mine')) == str(tmp_path / 'mine')
