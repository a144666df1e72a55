"""Llama-3.2-1B-Instruct as a decoder-only SLT model: poses -> text (a ~1B decoder for single-GPU runs).

  python -m slt_jax.main --config=configs/llama3_1b.py --workdir=runs/llama3_1b \
      --config.model.name=/path/to/Llama-3.2-1B-Instruct --config.data.train_path=train.csv ...

Llama 3.2 1B: 16 layers, GQA (8 kv heads), tied embeddings, RoPE theta 500000 with llama3 scaling (factor 32).
LoRA q/k/v/o on a bf16 base (no quantisation needed at this size). Also the decoder of scripts/gpu_check.sh.
"""
import ml_collections

from slt_jax import default_config


def get_config():
  config = default_config.get_config()
  config.model.family = 'llama'
  config.model.name = ''  # e.g. a local copy of meta-llama/Llama-3.2-1B-Instruct.
  config.model.arch = ml_collections.ConfigDict(dict(
      model_type='llama', vocab_size=128256, hidden_size=2048, intermediate_size=8192,
      num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
      hidden_act='silu', max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
      rope_scaling=dict(rope_type='llama3', factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                        original_max_position_embeddings=8192),
      attention_bias=False, mlp_bias=False, tie_word_embeddings=True,
      bos_token_id=128000, eos_token_id=[128001, 128008, 128009], pad_token_id=None,
  ))
  config.model.prompt = 'Translate the sign language in the pose sequence into text.'
  config.model.use_lora = True
  config.model.pose.hidden = 512
  config.model.remat = 'dots'
  config.training.mixed_precision = 'bf16'
  config.training.learning_rate = 2e-4
  config.training.batch_size = 16
  config.training.label_smoothing = 0.0
  return config
