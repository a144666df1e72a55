"""The final evaluation reports the best checkpoint's validation metrics, and metrics.json / predictions_val.tsv
hold that checkpoint's, even when a later evaluation was worse."""
import json
import os

import tiny_demo
from slt_jax import evaluate as evaluate_lib
from slt_jax.train import trainer


def test_val_files_are_the_best_checkpoints_when_a_later_evaluation_is_worse(tmp_path, monkeypatch):
  score = evaluate_lib.score_with_config
  planted = iter([50.0, 10.0])  # validation BLEU of the evaluations at steps 2 and 4: step 2 is the best

  def scored(hyps, refs, evaluation):
    metrics = score(hyps, refs, evaluation)
    metrics['bleu'] = next(planted, metrics['bleu'])  # the final evaluations keep their real scores
    return metrics
  monkeypatch.setattr(evaluate_lib, 'score_with_config', scored)
  workdir = str(tmp_path)
  config = tiny_demo.config(num_train_steps=4, eval_every_steps=2, checkpoint_every_steps=2)
  results = trainer.train_and_evaluate(config, workdir)
  assert os.listdir(os.path.join(workdir, 'best')) == ['2']
  with open(os.path.join(workdir, 'metrics.json'), encoding='utf-8') as f:
    metrics = json.load(f)
  assert metrics['val']['step'] == results['val']['step'] == metrics['test']['step'] == 2
  assert metrics['val']['bleu'] == results['val']['bleu']
