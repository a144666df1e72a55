"""Shared test fixtures: the path of the real pose data (skip when absent), and CI's rule that nothing skips.

A user's clone has no ../shared and may lack the test extras: those tests skip, saying why. In CI (CI=true, or
SLT_JAX_STRICT_SKIPS=1; SLT_JAX_STRICT_SKIPS=0 turns it off) the data and the extras are there, so a skip means a
test silently stopped running: it is reported as a failure instead.
"""
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


STRICT_SKIPS = os.environ.get('SLT_JAX_STRICT_SKIPS', os.environ.get('CI', '')).strip().lower() in ('1', 'true', 'yes')


def _fail_skip(report) -> None:
  """Turns a skip report into a failure that gives the skip's reason."""
  reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
  report.outcome = 'failed'
  report.longrepr = (f'skipped in CI ({reason}): CI has ../shared and the test extras, so this test must run '
                     '(set SLT_JAX_STRICT_SKIPS=0 to allow skips)')


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # pylint: disable=unused-argument
  report = (yield).get_result()
  if STRICT_SKIPS and report.skipped and not hasattr(report, 'wasxfail'):
    _fail_skip(report)


_SKIPPED_MODULES = []  # (module, reason) of modules skipped at collection (a module-level importorskip)


def pytest_collectreport(report):
  if STRICT_SKIPS and report.skipped:  # failing it here would interrupt the whole run: fail at the end instead
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    _SKIPPED_MODULES.append((report.nodeid, reason))


def pytest_sessionfinish(session, exitstatus):  # pylint: disable=unused-argument
  if _SKIPPED_MODULES:
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
  for nodeid, reason in _SKIPPED_MODULES:
    terminalreporter.write_line(f'FAILED (a module skipped in CI) {nodeid}: {reason}', red=True)
