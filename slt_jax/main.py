"""Entry point: python -m slt_jax.main --config=configs/demo.py --workdir=runs/demo [--mode=train|eval].

`--config.training.batch_size=8`-style flags override any config field (a misspelt field is an error).
"""
import os

# TF (tf.data) must never take the accelerator's memory, and shares 2 cores nicely only with few threads.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging  # pylint: disable=g-import-not-at-top
import jax
from ml_collections import config_flags

from slt_jax import default_config

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (a .py with get_config()).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs, metrics and data caches.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval'], 'train (then evaluate the best checkpoint on '
                          'the test split) or eval (the best checkpoint, or --config.evaluation.step).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  default_config.validate(config)
  workdir = os.path.abspath(_WORKDIR.value)
  os.makedirs(workdir, exist_ok=True)
  logging.info('JAX devices: %s (process %d of %d)', jax.devices(), jax.process_index(), jax.process_count())

  from slt_jax.train import trainer  # pylint: disable=g-import-not-at-top  (after flags: imports TF)
  if _MODE.value == 'train':
    results = trainer.train_and_evaluate(config, workdir)
  else:
    step = config.evaluation.step if config.evaluation.step >= 0 else None
    results = trainer.evaluate(config, workdir, config.evaluation.split, step)
  logging.info('Results: %s', results)


if __name__ == '__main__':
  app.run(main)
