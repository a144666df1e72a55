"""T5-large (v1.0) fine-tuned for SLT; bf16 compute and rematerialised layers to fit one GPU.

  python -m slt_jax.main --config=configs/t5_large.py --workdir=runs/t5_large \
      --config.model.name=/path/to/t5-large --config.data.train_path=train.csv ...

`model.arch` is t5-large's config.json (builds offline from random init without `model.name`).
"""
import ml_collections

from slt_jax import default_config


def get_config():
  config = default_config.get_config()
  config.model.family = 't5'
  config.model.name = ''  # e.g. a local copy of google-t5/t5-large.
  config.model.arch = ml_collections.ConfigDict(dict(
      model_type='t5', vocab_size=32128, d_model=1024, d_kv=64, d_ff=4096, num_layers=24,
      num_decoder_layers=24, num_heads=16, feed_forward_proj='relu', dropout_rate=0.1,
      relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
      tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
  ))
  config.model.pose.hidden = 512
  config.model.remat = 'dots'
  config.training.mixed_precision = 'bf16'
  config.training.learning_rate = 1e-4
  config.training.batch_size = 16
  return config
