"""Shared test fixtures: the path of the real pose data (skip when absent) and a tiny contract-following model."""
import os
import pathlib

# Quiet TF and keep tests on the CPU.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import pytest  # pylint: disable=g-import-not-at-top

import slt_jax  # pylint: disable=unused-import,g-import-not-at-top  (sets flax's eager sharding off)

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'
REAL_DATA = SHARED / 'data' / 'real'


@pytest.fixture(scope='session')
def real_data_dir():
  """../shared/data/real, or skip: a user's clone has no shared/ folder (CI has it)."""
  if not REAL_DATA.is_dir():
    pytest.skip(f'real pose data not found at {REAL_DATA} (only present in the project workspace / CI)')
  return REAL_DATA
