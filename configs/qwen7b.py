"""Qwen2.5-7B-Instruct as a decoder-only SLT model (the seed's recommended model): poses -> text.

  python -m slt_jax.main --config=configs/qwen7b.py --workdir=runs/qwen7b \
      --config.model.name=/path/to/Qwen2.5-7B-Instruct --config.data.train_path=train.csv ...
  python -m slt_jax.main --config=configs/qwen7b.py --mode=check   # abstract build: 7,615,616,512 LLM params

`model.arch` is the checkpoint's config.json, so the model also builds offline (random init) when
`model.name` is empty. The sequence is [chat prompt][pose embeddings][target]; LoRA on q/k/v/o over a 4-bit
base (the seed's defaults).
"""
import ml_collections

from slt_jax import default_config


def get_config():
  config = default_config.get_config()
  config.model.family = 'qwen2'
  config.model.name = ''  # e.g. a local copy of Qwen/Qwen2.5-7B-Instruct (config.json + *.safetensors).
  config.model.arch = ml_collections.ConfigDict(dict(
      model_type='qwen2', vocab_size=152064, hidden_size=3584, intermediate_size=18944,
      num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, hidden_act='silu',
      max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0, rope_scaling=None,
      use_sliding_window=False, sliding_window=131072, max_window_layers=28, tie_word_embeddings=False,
      bos_token_id=151643, eos_token_id=151645, pad_token_id=151643,
  ))
  config.model.prompt = 'Translate the sign language in the pose sequence into text.'
  config.model.use_lora = True
  config.model.load_in_4bit = True  # LoRA r=16, alpha=32 on q/k/v/o: default_config's (the seed's).
  config.model.pose.hidden = 512
  config.model.remat = 'full'             # 28 layers x long pose prefixes: recompute activations.
  config.training.mixed_precision = 'bf16'
  config.training.learning_rate = 2e-4    # LoRA + new pose encoder.
  config.training.batch_size = 8
  config.training.label_smoothing = 0.0
  return config
