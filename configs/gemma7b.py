"""Gemma-7B as a decoder-only SLT model: poses -> text.

  python -m slt_jax.main --config=configs/gemma7b.py --workdir=runs/gemma7b \
      --config.model.name=/path/to/gemma-7b --config.data.train_path=train.csv ...

Gemma: (1 + w) RMSNorm, sqrt(hidden) embedding scale, GeGLU, head_dim 256 != 3072 / 16, tied embeddings.
`model.arch` is the checkpoint's config.json so the model builds offline. LoRA q/k/v/o on a 4-bit base.
"""
import ml_collections

from slt_jax import default_config


def get_config():
  config = default_config.get_config()
  config.model.family = 'gemma'
  config.model.name = ''  # e.g. a local copy of google/gemma-7b (or gemma-7b-it, which has a chat template).
  config.model.arch = ml_collections.ConfigDict(dict(
      model_type='gemma', vocab_size=256000, hidden_size=3072, intermediate_size=24576,
      num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=16, head_dim=256,
      hidden_act='gelu_pytorch_tanh', max_position_embeddings=8192, rms_norm_eps=1e-6,
      rope_theta=10000.0, rope_scaling=None, attention_bias=False, tie_word_embeddings=True,
      bos_token_id=2, eos_token_id=1, pad_token_id=0,
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
