"""Tiny random HF decoder-only checkpoints (transformers' PyTorch classes) for test_decoder / test_causal_slt.

Each case exercises one family difference: Llama 3 rope scaling, Mistral's sliding window (shorter than
the test sequences), Qwen2's q/k/v biases + tied embeddings + a sliding window on its upper layer only,
Gemma's (1 + w) norm / embedding scale / GeGLU / head_dim != hidden / heads, and GQA with one kv head
(with Llama's attention and MLP biases).
"""
import os

import torch
import transformers

VOCAB = 256
_COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, max_position_embeddings=1024, initializer_range=0.05,
               bos_token_id=1, eos_token_id=2, pad_token_id=0)

CASES = {
    'llama3': lambda: transformers.LlamaConfig(num_key_value_heads=2, rope_parameters=dict(
        rope_type='llama3', rope_theta=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=64), **_COMMON),
    'mistral': lambda: transformers.MistralConfig(num_key_value_heads=2, sliding_window=96, **_COMMON),
    'qwen2': lambda: transformers.Qwen2Config(num_key_value_heads=2, tie_word_embeddings=True,
                                              use_sliding_window=True, sliding_window=80, max_window_layers=1,
                                              **_COMMON),
    'gemma': lambda: transformers.GemmaConfig(num_key_value_heads=2, head_dim=32, **_COMMON),
    'mqa': lambda: transformers.LlamaConfig(num_key_value_heads=1, attention_bias=True, mlp_bias=True,
                                            rope_parameters=dict(rope_type='default', rope_theta=10000.0),
                                            **_COMMON),
}


def make_checkpoint(name: str, directory: str, seed: int = 0) -> str:
  """Saves a random tiny model of case `name` to directory/name; norms and biases are perturbed too."""
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(CASES[name](), attn_implementation='eager').eval()
  with torch.no_grad():
    for p in model.parameters():
      if p.ndim == 1:  # norm weights (ones / zeros) and biases (zeros) would hide mapping mistakes
        p.add_(0.1 * torch.randn_like(p))
  path = os.path.join(directory, name)
  model.save_pretrained(path)
  return path


def load_hf(path: str):
  return transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation='eager',
                                                           dtype=torch.float32).eval()
