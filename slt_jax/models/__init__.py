"""Flax NNX models: shared layers, the HF families (T5, BART, decoder-only) and the SLT wrappers."""
from slt_jax.models.hf import from_pretrained, save_pretrained  # noqa: F401
