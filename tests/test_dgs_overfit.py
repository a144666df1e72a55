"""The real DGS sentences through the whole stack: a tiny T5 memorises the 15 usable training pairs.

../shared/data/real/fluent-pose-synthesis/train.csv (16 rows; `train/train_7_original` has an empty English
text) with its reduced-Holistic poses loads as a CSV dataset through the real pipeline;
trainer.train_and_evaluate trains on it and scores the same rows through the normal evaluation path (the
training CSV is also the validation split), so the BLEU is training BLEU. Skipped where the real data is
absent.
"""
import json
import os
import time

import pytest

from slt_jax import default_config
from slt_jax.train import trainer

NUM_STEPS = 80


def _config(dgs):
  c = default_config.get_config()
  c.data.train_path = str(dgs / 'train.csv')
  c.data.val_path = str(dgs / 'train.csv')  # evaluate on the training pairs themselves
  c.data.allow_overlap = True               # (which is otherwise an error)
  c.data.pose_dir = str(dgs / 'sample_dataset')
  c.data.keypoints = 'hands_body'
  c.data.max_frames = 32                    # every sequence (20..152 frames) subsampled to <= 32: one shape
  c.data.bucket_boundaries = (32,)
  c.data.max_target_length = 32             # the longest text is 27 word-level tokens + EOS
  c.data.augment = False                    # memorising, not generalising
  c.data.trained_tokenizer.kind = 'wordlevel'
  c.model.family = 't5'
  c.model.arch.update(d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=1, num_decoder_layers=1,
                      dropout_rate=0.0)
  c.model.pose.update(hidden=64, conv_layers=1, conv_stride=2, dropout=0.0)
  c.training.num_train_steps = NUM_STEPS
  c.training.batch_size = 15                # the whole usable set in every batch
  c.training.eval_batch_size = 16
  c.training.learning_rate = 3e-3
  c.training.warmup_steps = 10
  c.training.label_smoothing = 0.0
  c.training.weight_decay = 0.0
  c.training.log_every_steps = 50
  c.training.eval_every_steps = NUM_STEPS
  c.training.checkpoint_every_steps = NUM_STEPS
  c.training.keep_checkpoints = 1
  c.decode.max_new_tokens = 32
  return c


@pytest.mark.slow
def test_tiny_t5_overfits_dgs_training_pairs(real_data_dir, tmp_path):
  dgs = real_data_dir / 'fluent-pose-synthesis'
  config = _config(dgs)
  default_config.validate(config)
  start = time.time()
  results = trainer.train_and_evaluate(config, str(tmp_path))
  elapsed = time.time() - start
  val = results['val']
  print(f'DGS overfit: training BLEU {val["bleu"]:.1f} chrF {val["chrf"]:.1f} after {NUM_STEPS} steps, '
        f'{elapsed:.0f} s')
  with open(tmp_path / 'skipped_rows.json') as f:
    skipped = json.load(f)
  assert skipped['train'] == {'empty_text': ['train/train_7_original']}
  # The 15 usable pairs were decoded (not 16: the empty text is not a target).
  with open(tmp_path / 'predictions_val.tsv', encoding='utf-8') as f:
    lines = f.read().strip('\n').split('\n')
  assert len(lines) - 1 == 15 and not any('train_7_original' in line for line in lines)
  assert val['bleu'] >= 90, (val, lines)
  assert os.path.exists(tmp_path / 'metrics.json')
