"""T5-small (v1.0: ReLU, tied embeddings) fine-tuned for SLT: poses -> T5 encoder via inputs_embeds.

  python -m slt_jax.main --config=configs/t5_small.py --workdir=runs/t5_small \
      --config.model.name=/path/to/t5-small --config.data.train_path=train.csv ...

`model.arch` is t5-small's config.json, so without `model.name` the same architecture builds offline from
random init (with a tokenizer trained on the texts). For T5 v1.1 / mT5 point `model.name` at the checkpoint:
its config.json decides (gated-GELU, untied head, ...).
"""
import ml_collections

from slt_jax import default_config


def get_config():
  config = default_config.get_config()
  config.model.family = 't5'
  config.model.name = ''  # e.g. a local copy of google-t5/t5-small (model.safetensors + spiece.model).
  config.model.arch = ml_collections.ConfigDict(dict(
      model_type='t5', vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6,
      num_decoder_layers=6, num_heads=8, feed_forward_proj='relu', dropout_rate=0.1,
      relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
      tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
  ))
  config.model.pose.hidden = 512
  config.training.learning_rate = 5e-4
  config.training.batch_size = 32
  return config
