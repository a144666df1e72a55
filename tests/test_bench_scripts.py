"""The benchmark scripts run end to end on tiny shapes and print the JSON their docs promise."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _last_json(script, *args, env=None, timeout=600):
  out = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', script), *args, '--json'], cwd=ROOT,
                       capture_output=True, text=True, timeout=timeout, check=False, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_bench_vs_torch_reports_every_side_the_ratio_and_the_hardware_figures(tmp_path):
  # No C++ compiler on PATH: the torch.compile side is skipped with its reason; the others run, f32 and bf16.
  # One OpenMP thread: on a loaded machine PyTorch's parallel kernels crawl (a thread waits for the other's core).
  env = {**os.environ, 'PATH': str(tmp_path), 'OMP_NUM_THREADS': '1'}
  env.pop('CXX', None)
  result = _last_json('bench_vs_torch.py', '--batch_size=4', '--frames=16', '--target_len=6', '--runs=1',
                      '--steps=1', '--torch_sides=loop,fused,compile', '--mixed_precision=no,bf16',
                      '--padding_free=1', env=env,  # (64 would round this tiny batch's counts up to its size)
                      timeout=900)
  assert 'C++ compiler' in result['skipped']['torch_compile'] and 'torch_compile_examples_per_s' not in result
  sides = ('ours', 'torch_loop', 'torch_fused', 'ours_bf16', 'torch_loop_bf16', 'torch_fused_bf16')
  for side in sides:
    assert len(result[f'{side}_runs']) == 1 and result[f'{side}_examples_per_s'] > 0, side
  # The headline ratio is ours over the strongest PyTorch side (float32 first); bf16 has its own.
  for precision, suffix in (('no', ''), ('bf16', '_bf16')):
    best = max((f'torch_loop{suffix}', f'torch_fused{suffix}'), key=lambda s: result[f'{s}_examples_per_s'])
    assert result[f'torch_side_{precision}'] == best
    assert result[f'ratio_{precision}'] == pytest.approx(
        result[f'ours{suffix}_examples_per_s'] / result[f'{best}_examples_per_s'])
  assert result['ratio'] == result['ratio_no'] and result['torch_side'] == result['torch_side_no']
  assert result['torch_examples_per_s'] == result[f"{result['torch_side']}_examples_per_s"]
  # Achieved GFLOP/s = executed GFLOP per example x examples/s: PyTorch the padded step, ours its token rows
  # (padding-free: less work than the padded step).
  assert result['ours_step_gflop'] < result['step_gflop']
  for side in sides:
    step_gflop = result['ours_step_gflop'] if side.startswith('ours') else result['step_gflop']
    assert result[f'{side}_gflops'] == pytest.approx(result[f'{side}_examples_per_s'] * step_gflop / 4), side
  assert result['gemm_gflops_jax'] > 0 and result['gemm_gflops_torch_bf16'] > 0
  assert (result['batch_size'], result['frames'], result['target_len']) == (4, 16, 6)


@pytest.mark.slow
def test_bench_train_reads_its_programs_back_from_a_compilation_cache(tmp_path):
  """scripts/gpu_check.sh's cache rows: a first bench_train run compiles and writes its programs, a second one
  reads every one of them back and compiles nothing; the same first loss."""
  cache = str(tmp_path / 'jax_compile')
  args = ('--config=configs/demo.py', '--batch_size=4', '--frames=16', '--target_len=6', '--steps=1',
          '--vocab_size=64', '--config.model.arch.num_layers=1', '--config.model.arch.num_decoder_layers=1',
          f'--compile_cache_dir={cache}')
  cold, warm = _last_json('bench_train.py', *args), _last_json('bench_train.py', *args)
  assert cold['compile_cache']['hits'] == 0 and cold['compile_cache']['written'] > 0, cold
  assert warm['compile_cache'] == {'hits': cold['compile_cache']['written'], 'written': 0}, (cold, warm)
  assert warm['first_loss'] == cold['first_loss']
  assert 'compile_cache' not in _last_json('bench_train.py', *args[:-1])  # ('' : the cache off)
