"""Tests of the embedded demo sign language (slt_jax/data/synthetic.py), on a tiny corpus."""
import csv
import filecmp
import json
import os

import ml_collections
import numpy as np
import pytest
from pose_format import Pose

from slt_jax.data import keypoints, pose_io, synthetic

TINY = dict(seed=3, vocab_size=40, num_signers=4, num_train=50, num_val=8, num_test=8, noise=0.01,
            dropout_prob=0.05)


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('synthetic') / 'a')
  return out, synthetic.generate_corpus(out, **TINY)


def _rows(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def _glosses(paths):
  rows = _rows(paths['glosses'])
  return {split: [r for r in rows if r['split'] == split] for split in ('train', 'val', 'test')}


def test_csv_layout_and_pose_files(corpus):
  _, paths = corpus
  for split in ('train', 'val', 'test'):
    with open(paths[split], newline='') as f:
      header = next(csv.reader(f))
    assert header == ['uid', 'text']
    rows = _rows(paths[split])
    assert len(rows) == TINY[f'num_{split}']
    for r in rows:
      assert os.path.isfile(os.path.join(paths['pose_dir'], r['uid'] + '.pose'))
      assert r['text'][0].isupper() and r['text'][-1] in '.?'


def test_pose_files_are_holistic_and_readable(corpus):
  _, paths = corpus
  uid = _rows(paths['test'])[0]['uid']
  path = os.path.join(paths['pose_dir'], uid + '.pose')
  with open(path, 'rb') as f:
    pose = Pose.read(f.read())
  expected = keypoints.holistic_header(reduced=True)
  assert [c.name for c in pose.header.components] == [c.name for c in expected.components]
  assert keypoints.header_keypoints(pose.header) == keypoints.header_keypoints(expected)
  assert pose.body.fps == 25
  T = pose.body.data.shape[0]
  assert pose.body.data.shape == (T, 1, 178, 3) and 20 < T < 200
  # Our own reader: hands + upper body, shoulder-normalised.
  arrays = pose_io.read_pose(path, pose_io.PoseOptions(keypoints='hands_body'))
  assert arrays.points.shape == (T, 50, 3)
  assert np.isfinite(arrays.points).all()
  ls = arrays.keypoints.index((keypoints.POSE, 'LEFT_SHOULDER'))
  assert 0.3 < abs(arrays.points[:, ls, 0]).mean() < 0.7   # shoulders at about +-0.5


def test_full_layout(tmp_path):
  paths = synthetic.generate_corpus(str(tmp_path), **{**TINY, 'num_train': 40, 'num_val': 2,
                                                      'num_test': 2}, layout='full')
  with open(os.path.join(paths['pose_dir'], 'test_00000.pose'), 'rb') as f:
    pose = Pose.read(f.read())
  assert pose.body.data.shape[2] == 543


def test_deterministic(corpus, tmp_path):
  out, paths = corpus
  paths2 = synthetic.generate_corpus(str(tmp_path / 'b'), **TINY)
  for key in ('train', 'val', 'test', 'glosses', 'lexicon'):
    assert filecmp.cmp(paths[key], paths2[key], shallow=False), key
  names = sorted(os.listdir(paths['pose_dir']))
  assert names == sorted(os.listdir(paths2['pose_dir']))
  match, mismatch, errors = filecmp.cmpfiles(paths['pose_dir'], paths2['pose_dir'], names, shallow=False)
  assert not mismatch and not errors
  other = synthetic.make_sentences(synthetic.build_lexicon(4, 40), 4, 50, 8, 8)
  assert [s['text'] for s in other['train']] != [r['text'] for r in _rows(paths['train'])]


def test_heldout_combinations_and_seen_words(corpus):
  _, paths = corpus
  g = _glosses(paths)
  train_sets = [set(r['gloss'].split()) for r in g['train']]
  train_words = set().union(*train_sets)
  train_pairs = set()
  for s in train_sets:
    content = sorted(s - {'NOT', 'Q'})
    train_pairs |= {(a, b) for i, a in enumerate(content) for b in content[i + 1:]}
  assert len(train_words) == TINY['vocab_size']  # every word is signed in training
  train_text_words = {w for r in _rows(paths['train']) for w in r['text'].lower().rstrip('.?').split()}
  train_texts = {r['text'] for r in _rows(paths['train'])}
  for split in ('val', 'test'):
    for r, t in zip(g[split], _rows(paths[split])):
      words = set(r['gloss'].split())
      assert words <= train_words
      content = sorted(words - {'NOT', 'Q'})
      pairs = {(a, b) for i, a in enumerate(content) for b in content[i + 1:]}
      assert pairs - train_pairs, f'{split} sentence {r["gloss"]} has no unseen word combination'
      assert t['text'] not in train_texts
      assert set(t['text'].lower().rstrip('.?').split()) <= train_text_words
  assert not {r['gloss'] for r in g['val']} & {r['gloss'] for r in g['test']}


def test_dropped_detections_have_zero_confidence(corpus, tmp_path):
  _, paths = corpus
  zero_frames = 0
  for r in _rows(paths['train'])[:20]:
    with open(os.path.join(paths['pose_dir'], r['uid'] + '.pose'), 'rb') as f:
      pose = Pose.read(f.read())
    conf = pose.body.confidence[:, 0]
    hands = conf[:, -42:]
    assert set(np.unique(hands)) <= {0., 1.}
    # A dropped hand: all its 21 points at confidence 0 (and coordinates 0) in that frame.
    for h in (hands[:, :21], hands[:, 21:]):
      assert ((h == 0).all(1) | (h == 1).all(1)).all()
    zero_frames += int((hands == 0).any(1).sum())
    assert (conf[:, :8] > 0).all()  # the body is always found
  assert zero_frames > 0
  clean = synthetic.generate_corpus(str(tmp_path), **{**TINY, 'num_train': 40, 'num_val': 2,
                                                      'num_test': 2, 'dropout_prob': 0.0})
  with open(os.path.join(clean['pose_dir'], 'train_00000.pose'), 'rb') as f:
    assert (Pose.read(f.read()).body.confidence > 0).all()


def test_signer_variation(corpus):
  _, paths = corpus
  lex = json.load(open(paths['lexicon']))
  assert {s['left_handed'] for s in lex['signers']} == {True, False}
  widths, dominant = {}, {}
  for r in _glosses(paths)['train']:
    with open(os.path.join(paths['pose_dir'], r['uid'] + '.pose'), 'rb') as f:
      pose = Pose.read(f.read())
    d = pose.body.data.data[:, 0]
    widths.setdefault(r['signer'], []).append(np.linalg.norm(d[:, 0, :2] - d[:, 1, :2], axis=-1).mean())
    # The dominant hand travels further (wrist path length, from the body's wrist points 4/5).
    travel = [np.abs(np.diff(d[:, i, :2], axis=0)).sum() for i in (4, 5)]  # LEFT_WRIST, RIGHT_WRIST
    dominant.setdefault(r['signer'], []).append(travel[0] > travel[1])
  mean_width = {s: np.mean(w) for s, w in widths.items()}
  assert max(mean_width.values()) > 1.1 * min(mean_width.values())  # body scale varies
  for s, left_moves_more in dominant.items():  # mostly the left hand for left-handed signers
    assert (np.mean(left_moves_more) > 0.5) == lex['signers'][int(s)]['left_handed'], s


def test_heldout_signers(tmp_path):
  """The held-out signer signs no training sentence, and each val / test sentence once (its unseen_signers
  row; tests/test_signers.py checks the groups)."""
  paths = synthetic.generate_corpus(str(tmp_path), **{**TINY, 'num_train': 40, 'num_val': 4,
                                                      'num_test': 4}, num_heldout_signers=1)
  g = _glosses(paths)
  assert all(r['signer'] != '3' for r in g['train'])
  for split in ('val', 'test'):
    assert [r['signer'] == '3' for r in g[split]] == [False] * 4 + [True] * 4
    assert [r['uid'] for r in g[split] if r['signer'] == '3'] == [f'{split}_unseen_{i:05d}' for i in range(4)]


def test_grammar_reorders():
  words = synthetic.build_lexicon(0, 120)
  by = {w['gloss']: w for w in words}
  g = synthetic._Grammar(words)
  noun = g.animate[0]
  obj = g.things[0]
  verb = next(w for w in g.tv if w['obj'] in ('any', 'thing'))
  adj = next(a for a in g.adj if a['kind'] in ('a', 'x'))
  past = next(w for w in g.time if w['tense'] == 'past')
  text = g.english('tv', past, (noun, adj), (obj, None), verb, None, True, False)
  art = 'an' if obj['en'][0] in 'aeiou' else 'a'
  assert text == f"The {adj['en']} {noun['en']} did not {verb['base']} {art} {obj['en']} {past['en']}."
  assert g.english('cop', None, (by['I'], None), None, None, adj, False, True) == f"Am I {adj['en']}?"
  assert g.english('iv', None, (noun, None), None, g.iv[0], None, False, False) == (
      f"The {noun['en']} {g.iv[0]['s3']}.")


def test_signs_are_distinct():
  words = synthetic.build_lexicon(0, synthetic.MAX_VOCAB)
  keys = [(w['sign']['handshape'], w['sign']['location'] if w['sign']['hands'] != 'base' else '',
           w['sign']['movement'], w['sign']['orientation'], w['sign']['hands']) for w in words]
  for i in range(len(keys)):
    for j in range(i):
      assert sum(a != b for a, b in zip(keys[i], keys[j])) >= 2
  assert len({w['gloss'] for w in words}) == len(words)


def test_ensure_corpus_generates_once(tmp_path, monkeypatch):
  cfg = ml_collections.ConfigDict(dict(enabled=True, **{**TINY, 'num_train': 40, 'num_val': 2,
                                                         'num_test': 2}))
  paths = synthetic.ensure_corpus(cfg, str(tmp_path))
  assert os.path.exists(os.path.join(str(tmp_path), synthetic.MARKER))
  def fail(*args, **kwargs):
    raise AssertionError('regenerated')
  monkeypatch.setattr(synthetic, 'generate_corpus', fail)
  assert synthetic.ensure_corpus(cfg, str(tmp_path)) == paths
  cfg.seed = 5
  with pytest.raises(AssertionError, match='regenerated'):
    synthetic.ensure_corpus(cfg, str(tmp_path))
