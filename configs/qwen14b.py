"""Qwen2.5-14B-Instruct as a decoder-only SLT model: poses -> text.

  python -m slt_jax.main --config=configs/qwen14b.py --workdir=runs/qwen14b \
      --config.model.name=/path/to/Qwen2.5-14B-Instruct --config.data.train_path=train.csv ...

Same recipe as configs/qwen7b.py (chat prompt, pose prefix, LoRA q/k/v/o on a 4-bit base); `model.arch` is
the checkpoint's config.json so the model builds offline.
"""
import ml_collections

from slt_jax import default_config


def get_config():
  config = default_config.get_config()
  config.model.family = 'qwen2'
  config.model.name = ''  # e.g. a local copy of Qwen/Qwen2.5-14B-Instruct.
  config.model.arch = ml_collections.ConfigDict(dict(
      model_type='qwen2', vocab_size=152064, hidden_size=5120, intermediate_size=13824,
      num_hidden_layers=48, num_attention_heads=40, num_key_value_heads=8, hidden_act='silu',
      max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0, rope_scaling=None,
      use_sliding_window=False, sliding_window=131072, max_window_layers=70, tie_word_embeddings=False,
      bos_token_id=151643, eos_token_id=151645, pad_token_id=151643,
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
