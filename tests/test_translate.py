"""--mode=translate: a demo-trained workdir translates real .pose files, one line per file, and skips an
unreadable one with a message; also the train -> eval path leaves metrics.json and predictions behind."""
import json
import os

import pytest

import tiny_demo
from slt_jax.train import trainer
from slt_jax import default_config, translate


@pytest.fixture(scope='module')
def trained_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('demo'))
  config = tiny_demo.config(num_train_steps=4, eval_every_steps=4, checkpoint_every_steps=4)
  results = trainer.train_and_evaluate(config, workdir)
  return config, workdir, results


def test_train_writes_metrics_and_predictions(trained_workdir):
  _, workdir, results = trained_workdir
  with open(os.path.join(workdir, 'metrics.json'), encoding='utf-8') as f:
    metrics = json.load(f)
  assert set(metrics) == {'val', 'test'}
  for split in ('val', 'test'):
    for key in ('bleu', 'chrf', 'rougeL', 'bleu_signature'):
      assert key in metrics[split]
    assert metrics[split]['bleu'] == pytest.approx(results[split]['bleu'])
    lines = open(os.path.join(workdir, f'predictions_{split}.tsv'), encoding='utf-8').read().splitlines()
    assert lines[0] == 'uid\treference\thypothesis' and len(lines) == 1 + metrics[split]['num_examples']
  assert 'tok:13a' in metrics['test']['bleu_signature']


def test_translate_real_files_and_skip_unreadable(trained_workdir, real_data_dir, tmp_path, capsys):
  config, workdir, _ = trained_workdir
  real = sorted((real_data_dir / 'fluent-pose-synthesis' / 'sample_dataset' / 'test').glob('*.pose'))[:5]
  broken = tmp_path / 'broken.pose'
  broken.write_bytes(real[0].read_bytes()[:500])  # truncated
  output = tmp_path / 'out.tsv'
  results = translate.translate(config, workdir, [str(p) for p in real] + [str(broken)], str(output), batch_size=4)
  printed = capsys.readouterr().out.splitlines()
  assert [p for p, _ in results] == [str(p) for p in real]
  assert any(line.startswith(f'# skipped {broken}') for line in printed)
  assert sum(line.startswith(str(real_data_dir)) for line in printed) == len(real)
  assert len(output.read_text(encoding='utf-8').splitlines()) == 1 + len(real)


def test_eval_with_another_preprocessing_is_an_error_before_any_work(trained_workdir):
  config, workdir, _ = trained_workdir
  other = config.copy_and_resolve_references()
  other.data.normalize = 'minmax'  # same shapes: would restore and score silently wrong
  before = sorted(os.listdir(workdir))
  with pytest.raises(default_config.ConfigError, match=r"data\.normalize: --config has 'minmax'"):
    trainer.evaluate(other, workdir, 'test')
  assert sorted(os.listdir(workdir)) == before


def test_inference_does_not_import_the_training_loop():
  """translate and inference restore the model below the trainer: importing them in a fresh interpreter loads
  neither the training loop nor its TensorBoard writers."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  loop = ('slt_jax.train.trainer', 'slt_jax.train.visuals', 'clu.metric_writers')
  code = f'import sys, slt_jax.translate, slt_jax.inference; print(sorted(m for m in {loop!r} if m in sys.modules))'
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300, check=False,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().splitlines()[-1] == '[]'
