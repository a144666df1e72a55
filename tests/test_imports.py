"""A plain `pip install -e .` (no extras) runs the demo: the package imports, trains, evaluates and translates with
the optional packages (torch, peft, wandb, sign-language-datasets) made unimportable, in a fresh interpreter."""
import os
import subprocess
import sys
import textwrap

import pytest

import tiny_demo

OPTIONAL = ('torch', 'peft', 'wandb', 'sign_language_datasets')  # the test / wandb / datasets extras
MODULES = ('slt_jax', 'slt_jax.models', 'slt_jax.train.trainer', 'slt_jax.main', 'slt_jax.translate',
           'slt_jax.check', 'slt_jax.evaluate', 'slt_jax.decode', 'slt_jax.show', 'slt_jax.compare')

_BLOCKER = textwrap.dedent('''
    import importlib.abc, sys
    OPTIONAL = {optional!r}
    attempted = []

    class Block(importlib.abc.MetaPathFinder):
      def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in OPTIONAL:
          attempted.append(name)
          raise ModuleNotFoundError(f'No module named {{name!r}} (blocked: an optional extra)', name=name)

    sys.meta_path.insert(0, Block())
''').format(optional=OPTIONAL)


def _run(script: str, timeout: int = 600) -> subprocess.CompletedProcess:
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '3'}
  return subprocess.run([sys.executable, '-c', _BLOCKER + textwrap.dedent(script)], cwd=tiny_demo.REPO, env=env,
                        capture_output=True, text=True, timeout=timeout, check=False)


def test_blocker_blocks():
  """The check below can fail: with the blocker, importing an optional package raises."""
  result = _run('import torch')
  assert result.returncode != 0 and 'blocked: an optional extra' in result.stderr


def test_each_module_imports_alone_without_extras():
  for module in MODULES:
    result = _run(f'import {module}')
    assert result.returncode == 0, f'{module} needs an optional package at import:\n{result.stderr[-3000:]}'


@pytest.mark.slow
def test_demo_trains_evaluates_and_translates_without_extras(tmp_path):
  workdir = tmp_path / 'demo'
  result = _run(f'''
      import glob, json, os
      sys.path.insert(0, {os.path.dirname(__file__)!r})
      import tiny_demo
      from slt_jax import default_config, translate
      from slt_jax.train import trainer
      config = tiny_demo.config(num_train_steps=2, eval_every_steps=2, checkpoint_every_steps=2)
      default_config.validate(config)
      trainer.train_and_evaluate(config, {str(workdir)!r})
      pose = sorted(glob.glob(os.path.join({str(workdir)!r}, 'data', 'poses', '*.pose')))[0]
      [(path, text)] = translate.translate(config, {str(workdir)!r}, [pose])
      loaded = sorted(m for m in sys.modules if m.split('.')[0] in OPTIONAL)
      print('RESULT', json.dumps({{'loaded': loaded, 'attempted': attempted}}))
  ''')
  assert result.returncode == 0, result.stderr[-5000:]
  assert 'RESULT {"loaded": []' in result.stdout, result.stdout[-2000:]
  metrics = (workdir / 'metrics.json').read_text(encoding='utf-8')
  assert '"test"' in metrics and '"bleu"' in metrics
