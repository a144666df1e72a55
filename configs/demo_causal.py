"""The embedded demo with a small Llama-shaped decoder-only model trained from scratch, offline, on a CPU.

  python -m slt_jax.main --config=configs/demo_causal.py --workdir=runs/demo_causal

The same corpus, tokenizer, data pipeline, batch, steps and learning rate as configs/demo.py (the T5 demo);
only the model differs: poses -> front end -> pose encoder -> projector -> a 4-layer Llama (GQA, RoPE, tied
embeddings) that reads [BOS][poses][answer start][target] (slt_jax/models/causal_slt.py).

Measured on the 2-core CPU machine (the 8-signer corpus this config pins; test split 200 sentences):
  as here, with the frame positions of model.pose.positions reaching the pose encoder (they did not before):
    val BLEU 13.6 at step 750, 59.5 at 1500; test BLEU 60.8; train loss 1.14 at step 550, 0.25 at 1300 (the T5
    demo's pace); fresh workdir (corpus generation included), compilation cache off, quiet machine (load ~2):
    5 min 52 s wall, ~160 examples/s at the end (the T5 demo: ~245):
    /usr/bin/time -v python -m slt_jax.main --config=configs/demo_causal.py --workdir=DIR \
      --config.training.compile_cache_dir=
  before that fix: test BLEU 35.1 (issue #23's measurement, 408 s on a quieter machine); with
    --config.model.llm_dropout=0.1 --config.model.bidirectional_prompt=True: test BLEU 29.9 +- 4.3, val 7.0 at
    step 750, 22 min 20 s under load 6-8; on the 12-signer corpus with --config.model.projector_norm=True and
    T5's 3 + 2 layer shape: test BLEU 18.3, train loss 1.44 at step 500 (#23): none of those was the cause.
Without absolute frame positions the LLM had only RoPE distances from each target token to the frames, which
shift with every row's number of pose positions, so it learnt the language first and the signs late.
"""
import importlib.util
import os

import ml_collections


def _demo_config():
  """configs/demo.py's config (configs/ is not a package)."""
  spec = importlib.util.spec_from_file_location('demo_config', os.path.join(os.path.dirname(__file__), 'demo.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config():
  config = _demo_config()
  # The corpus and inputs its figures were measured on: 8 signers, none held out, no dominant_hand / augmentation
  # (configs/demo.py now holds 4 signers out and uses both).
  config.data.synthetic.num_signers = 8
  config.data.synthetic.num_heldout_signers = 0
  config.data.dominant_hand = ''
  config.data.augment = False
  config.model.family = 'llama'
  # HF LlamaConfig fields. vocab_size covers the demo's trained tokenizer (538 ids); the special ids come from it.
  config.model.arch = ml_collections.ConfigDict(dict(
      vocab_size=576, hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=6,
      num_key_value_heads=2, head_dim=32, hidden_act='silu', rms_norm_eps=1e-6, rope_theta=10000.0,
      max_position_embeddings=512, tie_word_embeddings=True, initializer_range=0.02,
      attention_bias=False, mlp_bias=False,
  ))
  config.model.pose_encoder.num_layers = 2
  config.model.pose_encoder.num_heads = 6  # head_dim 32 over pose.hidden 192
  return config
