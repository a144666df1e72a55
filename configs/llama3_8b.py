"""Llama-3.1-8B-Instruct as a decoder-only SLT model: poses -> text.

  python -m slt_jax.main --config=configs/llama3_8b.py --workdir=runs/llama3_8b \
      --config.model.name=/path/to/Llama-3.1-8B-Instruct --config.data.train_path=train.csv ...

Llama 3.1: GQA (8 kv heads), RoPE theta 500000 with the llama3 frequency scaling. `model.arch` is the
checkpoint's config.json so the model builds offline. LoRA q/k/v/o on a 4-bit base.
"""
import ml_collections

from slt_jax import default_config


def get_config():
  config = default_config.get_config()
  config.model.family = 'llama'
  config.model.name = ''  # e.g. a local copy of meta-llama/Llama-3.1-8B-Instruct.
  config.model.arch = ml_collections.ConfigDict(dict(
      model_type='llama', vocab_size=128256, hidden_size=4096, intermediate_size=14336,
      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
      hidden_act='silu', max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
      rope_scaling=dict(rope_type='llama3', factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                        original_max_position_embeddings=8192),
      attention_bias=False, mlp_bias=False, tie_word_embeddings=False,
      bos_token_id=128000, eos_token_id=[128001, 128008, 128009], pad_token_id=None,
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
