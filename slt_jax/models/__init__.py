"""Flax NNX models: shared layers, the HF families (T5, BART, decoder-only) and the SLT wrappers.

Imports run one way: contract, layers, hf_io <- the families (t5, bart, decoder) <- registry <- hf, slt,
causal_slt, lora. The checkpoint helpers below load on first use, so a light module of this package
(contract, registry) imports without the rest.
"""
import importlib

_LAZY = {'save_pretrained': 'slt_jax.models.hf', 'from_pretrained': 'slt_jax.models.lora',
         'load_adapter': 'slt_jax.models.lora', 'merge_adapter': 'slt_jax.models.lora',
         'save_adapter': 'slt_jax.models.lora'}


def __getattr__(name):
  if name not in _LAZY:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  return getattr(importlib.import_module(_LAZY[name]), name)
