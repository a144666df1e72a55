"""The defaults, as a config file: `python -m slt_jax.main --config=configs/default.py`.

The fields and their comments live in slt_jax/default_config.py.
"""
from slt_jax.default_config import get_config  # pylint: disable=unused-import
