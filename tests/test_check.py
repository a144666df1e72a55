"""--mode=check on every config: it builds offline without weights, it counts the model training builds (an
encoder-decoder from random init has the tokenizer's vocabulary), and the seed models' parameter counts beside
it equal those of the real checkpoints."""
import importlib.util
import json
import pathlib

import pytest

from slt_jax import check
from slt_jax import default_config

CONFIGS = sorted((pathlib.Path(__file__).resolve().parents[1] / 'configs').glob('*.py'))

# Parameters of the real HF checkpoints (model.num_parameters(), tied embeddings counted once).
REAL_PARAMS = {
    't5_small': 60_506_624,        # google-t5/t5-small
    't5_base': 222_903_552,        # google-t5/t5-base
    't5_large': 737_668_096,       # google-t5/t5-large
    'bart_large': 406_291_456,     # facebook/bart-large
    'qwen7b': 7_615_616_512,       # Qwen/Qwen2.5-7B-Instruct
    'qwen14b': 14_770_033_664,     # Qwen/Qwen2.5-14B-Instruct
    'gemma7b': 8_537_680_896,      # google/gemma-7b
    'llama3_8b': 8_030_261_248,    # meta-llama/Llama-3.1-8B
    'llama3_1b': 1_235_814_400,    # meta-llama/Llama-3.2-1B
    'mistral7b': 7_248_023_552,    # mistralai/Mistral-7B-v0.3
}


def _load(path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize('path', CONFIGS, ids=[p.stem for p in CONFIGS])
def test_check_every_config(path, tmp_path):
  config = _load(path)
  default_config.validate(config, require_data=False)
  report = check.check(config, str(tmp_path), memory=False)
  written = json.loads((tmp_path / 'check.json').read_text())
  for key in ('family', 'backbone_params', 'total_params', 'trainable_params'):
    assert written[key] == report[key]
  assert report['total_params'] >= report['backbone_params'] > 0
  assert 0 < report['trainable_params'] <= report['total_params']
  if path.stem in REAL_PARAMS:  # the pretrained size: beside the built one when the vocabularies differ
    assert report.get('pretrained_backbone_params', report['backbone_params']) == REAL_PARAMS[path.stem]


def test_mbart_count_equals_transformers(tmp_path):
  """mBART-50's count, from transformers' own model of the same config built on the meta device."""
  torch = pytest.importorskip('torch')
  import transformers  # pylint: disable=g-import-not-at-top
  config = _load(CONFIGS[[p.stem for p in CONFIGS].index('mbart')])
  report = check.check(config, str(tmp_path), memory=False)
  hf_config = transformers.MBartConfig(**{k: v for k, v in config.model.arch.to_dict().items()})
  with torch.device('meta'):
    hf_model = transformers.MBartForConditionalGeneration(hf_config)
  assert report['pretrained_backbone_params'] == hf_model.num_parameters()


def test_check_counts_the_vocabulary_training_builds(tmp_path):
  """From random init an encoder-decoder's embedding has the tokenizer's ids, not model.arch.vocab_size: check
  counts that model (transformers' T5 of the same config and vocabulary is the oracle), with the tokenizer an
  earlier run left in WORKDIR/tokenizer, or data.trained_tokenizer.vocab_size before there is one; the
  pretrained t5-small count (60.5M, vocab 32128) stands beside it."""
  torch = pytest.importorskip('torch')
  import transformers  # pylint: disable=g-import-not-at-top
  from slt_jax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  config = _load(CONFIGS[[p.stem for p in CONFIGS].index('t5_small')])

  def hf_count(vocab):
    arch = {**config.model.arch.to_dict(), 'vocab_size': vocab}
    with torch.device('meta'):
      return transformers.T5ForConditionalGeneration(transformers.T5Config(**arch)).num_parameters()

  report = check.check(config, str(tmp_path / 'fresh'), memory=False)
  assert (report['vocab_size'], report['backbone_params']) == (2000, hf_count(2000))
  assert 'upper bound' in report['vocab_source']
  assert (report['pretrained_vocab_size'], report['pretrained_backbone_params']) == (32128, REAL_PARAMS['t5_small'])

  tok = tokenizer_lib.train_tokenizer(['the old dog saw a cat', 'a cat will see the dog'], kind='wordlevel')
  tok.save(str(tmp_path / 'run' / 'tokenizer'))
  report = check.check(config, str(tmp_path / 'run'), memory=False)
  assert (report['vocab_size'], report['backbone_params']) == (tok.vocab_size, hf_count(tok.vocab_size))
  assert report['vocab_source'] == f"the tokenizer in {tmp_path / 'run' / 'tokenizer'}"
  assert json.loads((tmp_path / 'run' / 'check.json').read_text())['pretrained_backbone_params'] == \
      REAL_PARAMS['t5_small']


def test_memory_plan_of_demo(tmp_path):
  config = _load(CONFIGS[[p.stem for p in CONFIGS].index('demo')])
  report = check.check(config, str(tmp_path), memory=True)
  plan = report['memory_per_device']
  assert plan['trained_params_bytes'] == 4 * report['trainable_params']  # float32 master weights
  assert plan['optimizer_state_bytes'] >= 2 * plan['trained_params_bytes']  # Adam's two moments
  assert plan['total_bytes'] > plan['trained_params_bytes'] + plan['optimizer_state_bytes']


def test_memory_plan_lowers_the_trainers_padding_free_step(tmp_path, monkeypatch):
  """With model.padding_free, check plans the step the trainer compiles (step.TrainStep): the TokenCounts the
  trainer counts (step.padding_free_counts, per micro-batch of 4 / 2 rows) for a batch whose every frame and
  token is real, not the padded step."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from slt_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top
  seen, train_step = [], step_lib.train_step

  def recording(*args, counts=None, **kwargs):
    seen.append(counts)
    return train_step(*args, counts=counts, **kwargs)

  monkeypatch.setattr(step_lib, 'train_step', recording)
  config = _load(CONFIGS[[p.stem for p in CONFIGS].index('demo')])
  config.model.padding_free = 8
  config.training.update(batch_size=4, gradient_accumulation_steps=2)
  config.data.update(max_frames=16, max_target_length=6)
  report = check.check(config, str(tmp_path), memory=True)
  full = {'pose_mask': np.ones((4, 16), bool), 'label_mask': np.ones((4, 6), bool)}
  trainers = step_lib.padding_free_counts(full, 8, grad_accum=2)
  assert trainers is not None and seen == [trainers]
  assert report['memory_per_device']['batch'] == {'batch_size': 4, 'frames': 16, 'target_len': 6}
