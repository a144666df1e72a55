"""mBART-50 (large) fine-tuned for SLT into one target language.

  python -m slt_jax.main --config=configs/mbart.py --workdir=runs/mbart \
      --config.model.name=/path/to/mbart-large-50 --config.model.tgt_lang=de_DE \
      --config.data.train_path=train.csv ...

`model.arch` is facebook/mbart-large-50's config.json (builds offline from random init without
`model.name`). mBART: pre-LN layers, final layer norms, scale_embedding. The decoder is fed
</s> <tgt_lang> before the text (decoder start + forced BOS, as HF generates with mBART-50); labels and
generated tokens are the text alone. `tgt_lang` needs the checkpoint's tokenizer (its language codes).
"""
import ml_collections

from slt_jax import default_config


def get_config():
  config = default_config.get_config()
  config.model.family = 'mbart'
  config.model.name = ''  # e.g. a local copy of facebook/mbart-large-50.
  config.model.tgt_lang = ''  # e.g. 'de_DE' (PHOENIX-2014T) or 'en_XX'; needs model.name / model.tokenizer.
  config.model.arch = ml_collections.ConfigDict(dict(
      model_type='mbart', vocab_size=250054, max_position_embeddings=1024, d_model=1024,
      encoder_layers=12, decoder_layers=12, encoder_attention_heads=16, decoder_attention_heads=16,
      encoder_ffn_dim=4096, decoder_ffn_dim=4096, activation_function='gelu', dropout=0.1,
      attention_dropout=0.0, activation_dropout=0.0, init_std=0.02, scale_embedding=True,
      pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
  ))
  config.model.pose.hidden = 512
  config.model.remat = 'dots'
  config.training.mixed_precision = 'bf16'
  config.training.learning_rate = 5e-5
  config.training.batch_size = 16
  return config
