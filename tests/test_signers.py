"""Signer-independent translation on the demo corpus: every generator knob in config.data.synthetic (validated),
held-out signers scored as the signer groups (data.mixture corpora) of val / test, and data.dominant_hand (every
signer read as right-handed)."""
import csv
import hashlib
import inspect
import json
import os

import numpy as np
import pytest

import tiny_demo
from slt_jax import default_config
from slt_jax import evaluate
from slt_jax import run_config
from slt_jax.data import pose_io
from slt_jax.data import synthetic
from slt_jax.default_config import ConfigError
from slt_jax.train import trainer

TINY = dict(seed=3, vocab_size=40, num_signers=6, num_train=40, num_val=4, num_test=4, noise=0.01,
            dropout_prob=0.05, num_heldout_signers=2)


def _rows(path):
  with open(path, encoding='utf-8', newline='') as f:
    return list(csv.DictReader(f, delimiter='\t' if path.endswith('.tsv') else ','))


def test_config_holds_every_generator_knob():
  """data.synthetic = `enabled` + each keyword of generate_corpus (but `verbose`) with the generator's default."""
  signature = inspect.signature(synthetic.generate_corpus).parameters
  knobs = {k: p.default for k, p in signature.items() if p.kind == p.KEYWORD_ONLY and k != 'verbose'}
  assert knobs == synthetic.DEFAULTS
  assert dict(default_config.get_config().data.synthetic) == {'enabled': False, **knobs}


@pytest.mark.parametrize('field, value, message', [
    ('num_heldout_signers', 8, r'data.synthetic.num_heldout_signers must be in \[0, num_signers - 1 = 7\]'),
    ('fps', 0.0, r'data.synthetic.fps must be > 0 frames per second, got 0.0'),
    ('layout', 'big', r"data.synthetic.layout must be 'reduced' \(178 points\) or 'full' \(543\), got 'big'"),
    ('dropout_prob', 1.0, r'data.synthetic.dropout_prob must be in \[0, 1\)'),
    ('vocab_size', 10, r'data.synthetic.vocab_size must be a number of signs in \[20, '),
    ('heldout_pair_frac', 1.5, r'data.synthetic.heldout_pair_frac must be in \[0, 1\]'),
])
def test_bad_generator_knob_is_a_config_error(field, value, message):
  config = tiny_demo.config()
  config.data.synthetic.num_signers = 8
  config.data.synthetic[field] = value
  with pytest.raises(ConfigError, match=message):
    default_config.validate(config)


def test_heldout_signers_sign_every_eval_sentence_twice(tmp_path):
  paths = synthetic.generate_corpus(str(tmp_path), **TINY)
  glosses = {r['uid']: r for r in _rows(paths['glosses'])}
  n_train = TINY['num_signers'] - TINY['num_heldout_signers']
  assert {int(glosses[r['uid']]['signer']) for r in _rows(paths['train'])} <= set(range(n_train))
  assert sorted(paths['groups']) == ['seen_signers', 'unseen_signers']
  for split in ('val', 'test'):
    seen, unseen = (_rows(paths['groups'][g][split]) for g in ('seen_signers', 'unseen_signers'))
    assert [r['uid'] for r in seen] == [f'{split}_seen_{i:05d}' for i in range(TINY[f'num_{split}'])]
    assert [r['uid'] for r in unseen] == [f'{split}_unseen_{i:05d}' for i in range(TINY[f'num_{split}'])]
    assert [r['text'] for r in seen] == [r['text'] for r in unseen]  # the same sentences
    assert [glosses[r['uid']]['gloss'] for r in seen] == [glosses[r['uid']]['gloss'] for r in unseen]
    assert all(int(glosses[r['uid']]['signer']) < n_train for r in seen)
    assert all(int(glosses[r['uid']]['signer']) >= n_train for r in unseen)
    assert _rows(paths[split]) == seen + unseen
    for r in seen + unseen:
      assert os.path.isfile(os.path.join(paths['pose_dir'], r['uid'] + '.pose'))


def test_training_scores_seen_and_unseen_signers(tmp_path):
  """metrics.json: each split overall and per signer group (the data.mixture shape); the groups' rows partition
  the split, and each predictions row names its group (uid 'group/uid') as the corpus lists it."""
  workdir = str(tmp_path)
  config = tiny_demo.config(num_train_steps=2, checkpoint_every_steps=2)
  config.evaluation.bootstrap_resamples = 0
  for field in ('num_signers', 'num_heldout_signers'):
    config.data.synthetic[field] = TINY[field]
  default_config.validate(config)
  trainer.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, 'metrics.json'), encoding='utf-8') as f:
    metrics = json.load(f)
  data = os.path.join(workdir, 'data')
  signer = {r['uid']: int(r['signer']) for r in _rows(os.path.join(data, 'glosses.csv'))}
  n_train = TINY['num_signers'] - TINY['num_heldout_signers']
  for split in ('val', 'test'):
    rows = _rows(os.path.join(workdir, f'predictions_{split}.tsv'))
    groups = {}
    for r in rows:
      group, uid = r['uid'].split('/')
      groups.setdefault(group, []).append(r)
      assert (signer[uid] >= n_train) == (group == 'unseen_signers'), r['uid']
    assert sorted(r['uid'].split('/')[1] for r in rows) == sorted(r['uid'] for r in _rows(
        os.path.join(data, f'{split}.csv')))  # every row of the split once: the groups partition it
    assert {g: len(v) for g, v in groups.items()} == {'seen_signers': 4, 'unseen_signers': 4}
    oracle = evaluate.score([r['hypothesis'] for r in rows], [r['reference'] for r in rows])
    assert metrics[split]['bleu'] == pytest.approx(oracle['bleu']) and metrics[split]['num_examples'] == 8
    assert set(metrics[split]['corpora']) == {'seen_signers', 'unseen_signers'}
    for group, mine in groups.items():
      oracle = evaluate.score([r['hypothesis'] for r in mine], [r['reference'] for r in mine])
      got = metrics[split]['corpora'][group]
      assert got['chrf'] == pytest.approx(oracle['chrf']) and got['num_examples'] == 4


# ---------------------------------------------------------------------------------------------------------------
# data.dominant_hand: left-handed signers mirrored into right-handed ones.
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  paths = synthetic.generate_corpus(str(tmp_path_factory.mktemp('signers')), **{**TINY, 'num_heldout_signers': 0})
  with open(paths['lexicon'], encoding='utf-8') as f:
    left_handed = [s['left_handed'] for s in json.load(f)['signers']]
  rows = _rows(paths['glosses'])
  return paths, [(os.path.join(paths['pose_dir'], r['uid'] + '.pose'), left_handed[int(r['signer'])]) for r in rows]


def test_dominant_side_finds_the_signers_handedness(corpus):
  _, files = corpus
  options = pose_io.PoseOptions(keypoints='hands_body')
  found = []
  for path, left in files:
    a = pose_io.read_pose(path, options)
    found.append(pose_io.dominant_side(a.points, a.visible, a.keypoints) == ('left' if left else 'right'))
  assert {left for _, left in files} == {True, False}
  assert np.mean(found) >= 0.95, np.mean(found)


def test_dominant_hand_right_mirrors_left_dominant_sequences(corpus):
  _, files = corpus
  plain, right = pose_io.PoseOptions(keypoints='hands_body'), pose_io.PoseOptions(keypoints='hands_body',
                                                                                   dominant_hand='right')
  mirrored = 0
  for path, _ in files[:30]:
    a, b = pose_io.read_pose(path, plain), pose_io.read_pose(path, right)
    assert b.points.shape == a.points.shape and b.keypoints == a.keypoints
    if pose_io.dominant_side(a.points, a.visible, a.keypoints) == 'left':
      mirrored += 1
      want_points, want_visible = pose_io.mirror(a.points, a.visible, a.keypoints)
      np.testing.assert_array_equal(b.visible, want_visible)
      np.testing.assert_allclose(b.points, np.where(want_visible[..., None], want_points, 0), atol=1e-6)
      assert pose_io.dominant_side(b.points, b.visible, b.keypoints) == 'right'
    else:
      np.testing.assert_array_equal(b.points, a.points)
  assert mirrored > 0


def test_mirror_swaps_the_hands():
  names = pose_io.kp_lib.preset('hands_body')
  rng = np.random.default_rng(0)
  points, visible = rng.normal(0, 1, (5, len(names), 3)).astype(np.float32), rng.random((5, len(names))) > 0.3
  out, out_visible = pose_io.mirror(points, visible, names)
  left = names.index((pose_io.kp_lib.LEFT_HAND, 'INDEX_FINGER_TIP'))
  right = names.index((pose_io.kp_lib.RIGHT_HAND, 'INDEX_FINGER_TIP'))
  np.testing.assert_allclose(out[:, left], points[:, right] * (-1, 1, 1))
  np.testing.assert_array_equal(out_visible[:, right], visible[:, left])


def test_dominant_hand_is_preprocessing_with_its_own_cache_key():
  plain = pose_io.PoseOptions(keypoints='hands_body')
  assert pose_io.PoseOptions(keypoints='hands_body', dominant_hand='right').fingerprint() != plain.fingerprint()
  fields = {k: v for k, v in plain.__dict__.items() if k != 'dominant_hand'}
  blob = json.dumps({**fields, 'version': pose_io.VERSION}, sort_keys=True)
  assert plain.fingerprint() == hashlib.sha256(blob.encode()).hexdigest()[:16]  # caches made before stay valid
  assert 'dominant_hand' in run_config.PREPROCESSING  # eval / translate read poses as the run was trained


@pytest.mark.parametrize('fields, message', [
    (dict(dominant_hand='up'), r"data.dominant_hand must be '' \(as recorded\), 'right' or 'left', got 'up'"),
    (dict(dominant_hand='right', normalize='none'), r"data.dominant_hand='right' mirrors about the normalised"),
])
def test_dominant_hand_config_errors(fields, message):
  config = tiny_demo.config()
  config.data.update(fields)
  with pytest.raises(ConfigError, match=message):
    default_config.validate(config)
