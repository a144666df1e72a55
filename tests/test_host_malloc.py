"""slt_jax.host_malloc: with the settings applied, XLA:CPU reuses a step's temporaries instead of faulting fresh
pages in at every call (run in subprocesses: the settings must precede JAX's start, and stay for the process)."""
import subprocess
import sys

import pytest

from slt_jax import host_malloc

_SCRIPT = '''
import resource, sys
from slt_jax import host_malloc
applied = host_malloc.configure(sys.argv[1])
import jax, jax.numpy as jnp
def loss(ws, x):
  for w in ws:
    x = jnp.tanh(x @ w)
  return jnp.sum(x)
step = jax.jit(jax.grad(loss))  # a train step's shape: six 8 MB activations kept for the backward pass
ws = [jnp.full((512, 512), 0.01, jnp.float32) for _ in range(6)]
x = jnp.ones((4096, 512), jnp.float32)
for _ in range(3):  # compile; the heap grows to the step's peak
  step(ws, x)[0].block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
  step(ws, x)[0].block_until_ready()
print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 8)
'''


def _faults_per_call(setting):
  out = subprocess.run([sys.executable, '-c', _SCRIPT, setting], capture_output=True, text=True, check=True,
                       env={'JAX_PLATFORMS': 'cpu', 'PATH': '/usr/bin:/bin'})
  applied, faults = out.stdout.split()
  return applied == 'True', float(faults)


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc mallopt')
def test_step_memory_is_reused_instead_of_faulted_in():
  applied_off, faults_off = _faults_per_call('off')
  applied_on, faults_on = _faults_per_call('on')
  assert not applied_off and applied_on
  # glibc's defaults: the step's temporaries are faulted in again at every call (measured: ~24,000 pages)...
  assert faults_off > 10_000, faults_off
  assert faults_on < faults_off / 2, (faults_on, faults_off)  # ...not when freed memory is kept (150-8,000)


def test_auto_follows_the_installed_platforms(monkeypatch):
  monkeypatch.setattr(host_malloc, 'accelerator_installed', lambda: True)
  assert host_malloc.configure('auto') is False  # a GPU/TPU host keeps glibc's defaults
  assert host_malloc.configure('off') is False
  monkeypatch.undo()
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')  # JAX will not look for accelerators
  assert host_malloc.accelerator_installed() is False
