"""BART-large fine-tuned for SLT: poses -> BART encoder via inputs_embeds -> BART decoder.

  python -m slt_jax.main --config=configs/bart_large.py --workdir=runs/bart_large \
      --config.model.name=/path/to/bart-large --config.data.train_path=train.csv ...

`model.arch` is facebook/bart-large's config.json (builds offline from random init without `model.name`).
The decoder is fed </s> <s> before the text (decoder start + forced BOS, as HF generates with BART).
"""
import ml_collections

from slt_jax import default_config


def get_config():
  config = default_config.get_config()
  config.model.family = 'bart'
  config.model.name = ''  # e.g. a local copy of facebook/bart-large.
  config.model.arch = ml_collections.ConfigDict(dict(
      model_type='bart', vocab_size=50265, max_position_embeddings=1024, d_model=1024,
      encoder_layers=12, decoder_layers=12, encoder_attention_heads=16, decoder_attention_heads=16,
      encoder_ffn_dim=4096, decoder_ffn_dim=4096, activation_function='gelu', dropout=0.1,
      attention_dropout=0.0, activation_dropout=0.0, init_std=0.02, scale_embedding=False,
      pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_bos_token_id=0,
  ))
  config.model.pose.hidden = 512
  config.model.remat = 'dots'
  config.training.mixed_precision = 'bf16'
  config.training.learning_rate = 5e-5
  config.training.batch_size = 16
  config.training.label_smoothing = 0.1
  return config
