"""What a run reads: the splits of `config.data` (generating the demo corpus first if asked) and a tokenizer.

  tokenizer, splits = make_inputs(config, workdir)   # splits: {'train'|'val'|'test': pipeline.SplitData}
"""
import os

from absl import logging

from slt_jax.data import pipeline
from slt_jax.data import synthetic
from slt_jax.data import tokenizer as tokenizer_lib

DEVICE_KEYS = pipeline.DEVICE_KEYS


def resolve_data_paths(config, workdir: str):
  """With `data.synthetic.enabled`, generates the demo corpus into WORKDIR/data (once) and points
  `data.{train,val,test}_path` and `data.pose_dir` at it. Returns the (possibly updated) config."""
  if not config.data.synthetic.enabled:
    return config
  paths = synthetic.ensure_corpus(config.data.synthetic, os.path.join(workdir, 'data'))
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.data.train_path, config.data.val_path, config.data.test_path = (
        paths['train'], paths['val'], paths['test'])
    config.data.pose_dir = paths['pose_dir']
  logging.info('Synthetic corpus in %s', os.path.dirname(paths['train']))
  return config


def make_inputs(config, workdir: str, splits=None):
  """(tokenizer, {split: pipeline.SplitData}) for the splits whose paths are set (default: all)."""
  config = resolve_data_paths(config, workdir)
  # Before anything is trained or written: CSV splits with no usable row, duplicates, splits that overlap.
  rows = pipeline.check_splits(config, splits)
  # A CSV source: the tokenizer trains on the checked training texts; TFDS: on the training split's (lazily).
  texts = [r.text for r in rows['train']] if 'train' in rows else pipeline.train_texts(config, workdir)
  tokenizer = tokenizer_lib.get_tokenizer(config, workdir, texts=texts)
  datasets = pipeline.make_datasets(config, tokenizer, workdir, splits=splits)
  return tokenizer, datasets
