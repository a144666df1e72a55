"""Flax NNX models: shared layers, the HF families (T5, BART, decoder-only) and the SLT wrappers."""
from slt_jax.models.hf import save_pretrained  # noqa: F401
from slt_jax.models.lora import from_pretrained, load_adapter, merge_adapter, save_adapter  # noqa: F401
