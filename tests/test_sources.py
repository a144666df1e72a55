"""The CSV splits checked before anything is trained or written: encodings (a byte-order mark, not UTF-8), a
split with no usable row (a wrong pose_dir), a tokenizer of nothing left by such a run, duplicate uids and
splits that share examples. On the tiny synthetic corpus of tests/tiny_demo.py (CSV + .pose files)."""
import csv
import logging
import os

import pytest

import tiny_demo
from slt_jax.data import inputs
from slt_jax.data import pipeline
from slt_jax.data import sources
from slt_jax.data import tokenizer as tok_lib


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  """config.data of the tiny demo's corpus (16 / 4 / 4 rows), generated once."""
  config = tiny_demo.config()
  config.data.synthetic.num_train = 16
  return inputs.resolve_data_paths(config, str(tmp_path_factory.mktemp('corpus'))).data


def _config(corpus, **data):
  """The tiny demo reading `corpus` as a plain CSV dataset, with `data.<k>=v` overrides."""
  config = tiny_demo.config()
  config.data.synthetic.enabled = False
  for field in ('train_path', 'val_path', 'test_path', 'pose_dir'):
    config.data[field] = corpus[field]
  for k, v in data.items():
    config.data[k] = v
  return config


def _rows(path):
  with open(path, newline='', encoding='utf-8') as f:
    return list(csv.reader(f))


def _write(path, rows):
  with open(path, 'w', newline='', encoding='utf-8') as f:
    csv.writer(f).writerows(rows)
  return str(path)


# --- encodings ---------------------------------------------------------------------------------------------
def test_csv_with_byte_order_mark_reads(tmp_path):
  (tmp_path / 'a.pose').touch()
  (tmp_path / 'b.pose').touch()
  path = tmp_path / 'excel.csv'  # Excel's "CSV UTF-8": a byte-order mark, ';' in a German locale
  path.write_bytes('\ufeffuid;text\na;Grüße aus Köln\nb;ça va\n'.encode('utf-8'))
  rows, skipped = sources.read_csv(path, tmp_path)
  assert [(r.uid, r.text) for r in rows] == [('a', 'Grüße aus Köln'), ('b', 'ça va')]
  assert not any(skipped.values())


def test_csv_not_utf8_names_file_line_and_byte(tmp_path):
  path = tmp_path / 'latin1.csv'
  path.write_bytes('uid,text\na,one\nb,café au lait\n'.encode('latin-1'))
  with pytest.raises(sources.SourceError,
                     match=rf"{path}:3: not UTF-8: byte 0xe9 at column 6 .*'b,caf\ufffd au lait'.*Re-encode"):
    sources.read_csv(path, tmp_path)
  path.write_bytes('uid,text\na,one\n'.encode('utf-16'))  # Excel's "Unicode text"
  with pytest.raises(sources.SourceError, match=rf'{path}:1: not UTF-8: byte 0x(ff|fe).*UTF-16 byte-order mark'):
    sources.read_csv(path, tmp_path)


# --- no usable rows ----------------------------------------------------------------------------------------
def test_wrong_pose_dir_writes_nothing_then_rerun_works(corpus, tmp_path):
  workdir, wrong = tmp_path / 'run', str(tmp_path / 'not_the_poses')
  os.makedirs(workdir)
  with pytest.raises(sources.NoUsableRowsError,
                     match=rf"train: no usable rows in {corpus.train_path} \(16 rows, skipped {{'missing_pose': 16}}\): "
                           rf"every pose file missing from data.pose_dir='{wrong}' \(e.g. {wrong}/train_00000.pose, "
                           rf'{wrong}/train_00001.pose, .*is data.pose_dir right\?'):
    inputs.make_inputs(_config(corpus, pose_dir=wrong), str(workdir))
  assert os.listdir(workdir) == []  # no tokenizer, cache or skip report
  tokenizer, splits = inputs.make_inputs(_config(corpus), str(workdir))  # the corrected rerun
  assert splits['train'].num_examples == 16
  assert not tokenizer.learned_nothing()
  for row in splits['train'].rows:  # a vocabulary of the texts: no <unk>, exact round trip
    ids = tokenizer.encode(row.text)
    assert tokenizer.unk_id not in ids and tokenizer.decode(ids) == row.text


def test_tokenizer_of_nothing_is_never_written_nor_reused(corpus, tmp_path):
  config = _config(corpus)
  with pytest.raises(ValueError, match='no training texts to train a tokenizer on.*Nothing was written'):
    tok_lib.get_tokenizer(config, str(tmp_path), texts=[])
  assert not os.path.exists(tmp_path / 'tokenizer')
  tok_lib.train_tokenizer([]).save(str(tmp_path / 'tokenizer'))  # what a run with a wrong pose_dir used to leave
  tokenizer, _ = inputs.make_inputs(config, str(tmp_path), splits=['train'])
  assert not tokenizer.learned_nothing() and tokenizer.vocab_size > 100
  assert tok_lib.load_tokenizer(str(tmp_path / 'tokenizer')).encode('She sells') == tokenizer.encode('She sells')


# --- duplicates and leakage --------------------------------------------------------------------------------
def test_duplicate_uids_are_reported_before_anything_else(corpus, tmp_path, caplog, monkeypatch):
  rows = _rows(corpus.train_path)
  train = _write(tmp_path / 'train.csv', rows + rows[1:3] + rows[1:2])  # train_00000 x3, train_00001 x2
  monkeypatch.setattr(tok_lib, 'get_tokenizer', lambda *a, **k: pytest.fail('the tokenizer came first'))
  with caplog.at_level(logging.WARNING), pytest.raises(pytest.fail.Exception, match='the tokenizer came first'):
    inputs.make_inputs(_config(corpus, train_path=train), str(tmp_path))
  assert ("train: 2 uid(s) occur more than once (3 extra rows), e.g. 'train_00000' x3, 'train_00001' x2. Each "
          'copy is kept') in caplog.text


def test_same_uid_in_two_splits_is_an_error(corpus, tmp_path, caplog):
  train_rows = _rows(corpus.train_path)
  test = _write(tmp_path / 'test.csv', _rows(corpus.test_path) + train_rows[4:6])
  workdir = tmp_path / 'run'
  os.makedirs(workdir)
  with pytest.raises(sources.SplitOverlapError,
                     match=r"train and test: 2 uid\(s\) in both \(e.g. 'train_00003', 'train_00004'\).*"
                           'data.allow_overlap=True'):
    inputs.make_inputs(_config(corpus, test_path=test), str(workdir))
  assert os.listdir(workdir) == []
  with pytest.raises(sources.SplitOverlapError, match=r"train and test: 2 uid\(s\)"):  # even when only test is asked
    pipeline.check_splits(_config(corpus, test_path=test), splits=['test'])
  with caplog.at_level(logging.WARNING):
    rows = pipeline.check_splits(_config(corpus, test_path=test, allow_overlap=True))
  assert len(rows['test']) == 6
  assert "Splits overlap (data.allow_overlap=True): train and test: 2 uid(s) in both" in caplog.text


def test_same_pose_file_under_another_uid_is_an_error(corpus, tmp_path):
  poses = tmp_path / 'poses'
  poses.mkdir()
  for name in os.listdir(corpus.pose_dir):
    os.symlink(os.path.join(corpus.pose_dir, name), poses / name)
  os.symlink(poses / 'train_00002.pose', poses / 'copy_of_2.pose')  # one recording under two names
  val = _write(tmp_path / 'val.csv', _rows(corpus.val_path) + [['copy_of_2', 'any text']])
  target = os.path.realpath(os.path.join(corpus.pose_dir, 'train_00002.pose'))
  with pytest.raises(sources.SplitOverlapError,
                     match=rf"train and val: 1 pose file\(s\) in both under other uids \(e.g. {target} as "
                           r"'train_00002' and 'copy_of_2'\)"):
    pipeline.check_splits(_config(corpus, val_path=val, pose_dir=str(poses)))
