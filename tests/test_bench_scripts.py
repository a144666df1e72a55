"""The benchmark scripts run end to end on tiny shapes and print the JSON their docs promise."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _last_json(script, *args):
  out = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', script), *args, '--json'], cwd=ROOT,
                       capture_output=True, text=True, timeout=600, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_bench_vs_torch_reports_both_sides_the_ratio_and_the_hardware_figures():
  result = _last_json('bench_vs_torch.py', '--batch_size=4', '--frames=16', '--target_len=6', '--runs=2',
                      '--steps=1')
  assert len(result['ours_runs']) == len(result['torch_runs']) == 2
  assert result['ours_examples_per_s'] > 0 and result['torch_examples_per_s'] > 0
  assert result['ratio'] == pytest.approx(result['ours_examples_per_s'] / result['torch_examples_per_s'])
  # Achieved model GFLOP/s = step GFLOP / batch x examples/s, on both sides (the same model's count).
  per_example = result['step_gflop'] / 4
  assert result['ours_gflops'] == pytest.approx(result['ours_examples_per_s'] * per_example)
  assert result['torch_gflops'] == pytest.approx(result['torch_examples_per_s'] * per_example)
  assert result['gemm_gflops_jax'] > 0 and result['gemm_gflops_torch'] > 0
  assert (result['batch_size'], result['frames'], result['target_len']) == (4, 16, 6)
