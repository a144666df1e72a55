"""data.mixture: several corpora in one run. Training batches each come from one corpus in the proportions of the
weights, are a function of (seed, step) (exact resume), read each corpus in its own epochs; val / test score each
corpus and all together (metrics.json), uids are 'corpus/uid', examples shared between corpora's splits are caught.

Two tiny synthetic corpora: `a` (seed 0, 40 training sentences) and `b` (seed 1, another language, 16).
"""
import csv
import hashlib
import json
import os

import numpy as np
import pytest

import tiny_demo
from slt_jax import default_config
from slt_jax import evaluate
from slt_jax.data import inputs
from slt_jax.data import pipeline
from slt_jax.data import sources
from slt_jax.data import synthetic
from slt_jax.default_config import ConfigError
from slt_jax.train import trainer

SIZES = {'a': 40, 'b': 16}
WEIGHTS = {'a': 3.0, 'b': 1.0}
STEPS = 1003  # a block of the mixture (1000 steps) and into the next


@pytest.fixture(scope='module')
def corpora(tmp_path_factory):
  root = tmp_path_factory.mktemp('corpora')
  return {name: synthetic.generate_corpus(str(root / name), seed=seed, num_signers=3, num_train=SIZES[name],
                                          num_val=4, num_test=4)
          for seed, name in enumerate(SIZES)}


def _config(corpora, **weights):
  c = tiny_demo.config(num_train_steps=2, checkpoint_every_steps=2)
  c.evaluation.bootstrap_resamples = 0
  c.data.synthetic.enabled = False
  for name, paths in corpora.items():
    c.data.mixture[name] = default_config.mixture_corpus(
        train_path=paths['train'], val_path=paths['val'], test_path=paths['test'], pose_dir=paths['pose_dir'],
        weight=weights.get(name, WEIGHTS[name]))
  default_config.validate(c)
  return c


def _corpus_of(index: np.ndarray, ranges: dict) -> str:
  """The one corpus whose rows a batch holds (its real rows: index >= 0)."""
  index = index[index >= 0]
  found = {name for name, (lo, hi) in ranges.items() if ((index >= lo) & (index < hi)).any()}
  assert len(found) == 1, f'a batch mixes corpora {found}'
  return found.pop()


def _digest(batch: dict) -> str:
  h = hashlib.sha256()
  for key in sorted(batch):
    h.update(np.ascontiguousarray(batch[key]).tobytes())
  return h.hexdigest()


@pytest.fixture(scope='module')
def train_stream(corpora, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('stream'))
  config = _config(corpora)
  tokenizer, splits = inputs.make_inputs(config, workdir, splits=['train'])
  train = splits['train']
  batches = [next(it) for it in [train.iterator(0)] for _ in range(STEPS)]
  return train, tokenizer, [(b['index'], _digest(b)) for b in batches]


def test_batches_follow_the_weights_and_read_each_corpus_in_epochs(train_stream):
  train, _, stream = train_stream
  assert train.corpora == {'a': (0, 40), 'b': (40, 56)}
  assert [r.uid for r in train.rows[39:41]] == ['a/train_00039', 'b/train_00000']
  corpus = [_corpus_of(index, train.corpora) for index, _ in stream]
  # Each block of 1000 steps holds exactly the weights' shares; any stretch of it about them.
  assert corpus[:1000].count('b') == 250 and corpus[:1000].count('a') == 750
  for lo, hi in ((0, 200), (500, 800)):
    n, expected = hi - lo, (hi - lo) * WEIGHTS['b'] / sum(WEIGHTS.values())
    assert abs(corpus[lo:hi].count('b') - expected) <= 4 * np.sqrt(n * 0.25 * 0.75), (lo, hi)
  # A corpus's batches are its own stream in order: its epochs (16 examples / 8 = 2 batches) cover its rows.
  b_batches = [index for (index, _), c in zip(stream, corpus) if c == 'b']
  for epoch in range(3):
    seen = np.concatenate(b_batches[2 * epoch:2 * epoch + 2])
    assert sorted(seen.tolist()) == list(range(40, 56)), epoch


def test_resumed_mixture_stream_equals_uninterrupted(train_stream):
  train, _, stream = train_stream
  for start in (3, 998):  # inside the first block, across into the second
    resumed = train.iterator(start_step=start)
    for k in range(start, start + 4):
      index, digest = stream[k]
      batch = next(resumed)
      np.testing.assert_array_equal(batch['index'], index, err_msg=f'step {k}')
      assert _digest(batch) == digest, f'step {k}'


def test_tokenizer_learns_every_corpus(corpora, train_stream):
  """Trained on the training texts of both corpora: b's own words (another language's lexicon) are whole tokens."""
  _, tokenizer, _ = train_stream

  def words(name):
    with open(corpora[name]['train'], encoding='utf-8', newline='') as f:
      return {w.strip('.?') for row in csv.DictReader(f) for w in row['text'].split()}
  only_b = words('b') - words('a')
  assert only_b
  vocab = tokenizer._tok.get_vocab()  # pylint: disable=protected-access
  assert [w for w in only_b if '▁' + w not in vocab] == []


def test_weight_too_small_for_a_block_is_an_error(corpora, tmp_path):
  config = _config(corpora, b=1e-4)
  with pytest.raises(ValueError, match=r"data.mixture weights \{'a': 3.0, 'b': 0.0001\}: the smallest share"):
    inputs.make_inputs(config, str(tmp_path), splits=['train'])


def test_training_scores_each_corpus_and_all_of_them(corpora, tmp_path):
  workdir = str(tmp_path)
  config = _config(corpora)
  results = trainer.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, 'metrics.json'), encoding='utf-8') as f:
    metrics = json.load(f)
  for split in ('val', 'test'):
    with open(os.path.join(workdir, f'predictions_{split}.tsv'), encoding='utf-8', newline='') as f:
      rows = list(csv.DictReader(f, delimiter='\t'))
    assert [r['uid'].split('/')[0] for r in rows] == ['a'] * 4 + ['b'] * 4
    oracle = evaluate.score([r['hypothesis'] for r in rows], [r['reference'] for r in rows])
    assert metrics[split]['bleu'] == pytest.approx(oracle['bleu'])
    assert set(metrics[split]['corpora']) == {'a', 'b'}
    for name, m in metrics[split]['corpora'].items():
      mine = [r for r in rows if r['uid'].startswith(name + '/')]
      oracle = evaluate.score([r['hypothesis'] for r in mine], [r['reference'] for r in mine])
      assert m['bleu'] == pytest.approx(oracle['bleu']) and m['chrf'] == pytest.approx(oracle['chrf'])
      assert m['num_examples'] == 4
    assert results[split]['corpora'].keys() == {'a', 'b'}
  run = trainer.setup(config, workdir, splits=['val'])
  for batch in run.splits['val'].iterator():  # an eval batch holds one corpus's rows (a per-corpus decode)
    _corpus_of(batch['index'], run.splits['val'].corpora)


def test_an_example_in_two_corpora_splits_is_an_error(corpora, tmp_path):
  """b's test split lists a pose file of a's training split: evaluation data seen in training."""
  test_csv = tmp_path / 'test.csv'
  shared = os.path.relpath(os.path.join(corpora['a']['pose_dir'], 'train_00000'), corpora['b']['pose_dir'])
  test_csv.write_text(f'uid,text\n{shared},a sentence\n', encoding='utf-8')
  config = _config(corpora)
  config.data.mixture.b.test_path = str(test_csv)
  with pytest.raises(sources.SplitOverlapError, match=r"train and test: 1 pose file.*as 'a/train_00000' and 'b/"):
    pipeline.check_splits(config)


def test_mixture_config_errors(corpora):
  config = _config(corpora)
  config.data.train_path = corpora['a']['train']
  with pytest.raises(ConfigError, match='data.mixture names the corpora'):
    default_config.validate(config)
  config = _config(corpora)
  config.data.mixture.a.weight = 0.0
  with pytest.raises(ConfigError, match=r'data.mixture.a.weight must be > 0'):
    default_config.validate(config)
  config = _config(corpora)
  config.data.mixture.a.pose_path = 'x'
  with pytest.raises(ConfigError, match=r'unknown config field `data.mixture.a.pose_path`'):
    default_config.validate(config)
  config = _config(corpora)
  config.data.mixture['a/b'] = default_config.mixture_corpus(train_path='x.csv', pose_dir='p')
  with pytest.raises(ConfigError, match='a corpus name is letters'):
    default_config.validate(config)
