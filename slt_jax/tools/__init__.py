"""Command-line tools that make `.pose` files for slt_jax from other data (arrays, videos)."""
