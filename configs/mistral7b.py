"""Mistral-7B-v0.3 as a decoder-only SLT model: poses -> text.

  python -m slt_jax.main --config=configs/mistral7b.py --workdir=runs/mistral7b \
      --config.model.name=/path/to/Mistral-7B-v0.3 --config.data.train_path=train.csv ...

Mistral v0.3: GQA (8 kv heads), RoPE theta 1e6, no sliding window (v0.1 had 4096: set
`--config.model.arch.sliding_window=4096`). `model.arch` is the checkpoint's config.json so the model builds
offline. LoRA q/k/v/o on a 4-bit base.
"""
import ml_collections

from slt_jax import default_config


def get_config():
  config = default_config.get_config()
  config.model.family = 'mistral'
  config.model.name = ''  # e.g. a local copy of mistralai/Mistral-7B-v0.3 (or -Instruct-v0.3).
  config.model.arch = ml_collections.ConfigDict(dict(
      model_type='mistral', vocab_size=32768, hidden_size=4096, intermediate_size=14336,
      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
      hidden_act='silu', max_position_embeddings=32768, rms_norm_eps=1e-5, rope_theta=1000000.0,
      rope_scaling=None, sliding_window=None, tie_word_embeddings=False,
      bos_token_id=1, eos_token_id=2, pad_token_id=None,
  ))
  config.model.prompt = 'Translate the sign language in the pose sequence into text.'
  config.model.use_lora = True
  config.model.load_in_4bit = True  # LoRA r=16, alpha=32 on q/k/v/o: default_config's (the seed's).
  config.model.pose.hidden = 512
  config.model.remat = 'full'
  config.training.mixed_precision = 'bf16'
  config.training.learning_rate = 2e-4
  config.training.batch_size = 8
  config.training.label_smoothing = 0.0
  return config
