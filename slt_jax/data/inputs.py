"""What a run reads: the splits of `config.data` (generating the demo corpus first if asked) and a tokenizer.

  tokenizer, splits = make_inputs(config, workdir)   # splits: {'train'|'val'|'test': pipeline.SplitData}
"""
import os

from absl import logging

from slt_jax import default_config
from slt_jax.data import pipeline
from slt_jax.data import synthetic
from slt_jax.data import tokenizer as tokenizer_lib

DEVICE_KEYS = pipeline.DEVICE_KEYS


def resolve_data_paths(config, workdir: str):
  """With `data.synthetic.enabled`, generates the demo corpus into WORKDIR/data (once) and points
  `data.{train,val,test}_path` and `data.pose_dir` at it. Returns the (possibly updated) config.

  With held-out signers (data.synthetic.num_heldout_signers > 0) the corpus is a data.mixture of its signer
  groups instead: `seen_signers` (the training split, and the val / test sentences signed by training signers)
  and `unseen_signers` (the same sentences signed by held-out signers), so every evaluation scores each group as
  a corpus of the split (metrics.json: split -> corpora -> group) and all of them together.
  """
  if not config.data.synthetic.enabled:
    return config
  paths = synthetic.ensure_corpus(config.data.synthetic, os.path.join(workdir, 'data'))
  config = config.copy_and_resolve_references()
  with config.unlocked():
    if paths['groups']:
      for group, group_paths in paths['groups'].items():
        config.data.mixture[group] = default_config.mixture_corpus(
            train_path=paths['train'] if group == synthetic.SIGNER_GROUPS[0] else '', val_path=group_paths['val'],
            test_path=group_paths['test'], pose_dir=paths['pose_dir'], text_column=config.data.text_column)
    else:
      config.data.train_path, config.data.val_path, config.data.test_path = (
          paths['train'], paths['val'], paths['test'])
      config.data.pose_dir = paths['pose_dir']
  logging.info('Synthetic corpus in %s%s', os.path.dirname(paths['train']),
               f' (signer groups {sorted(paths["groups"])})' if paths['groups'] else '')
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
