"""Config validation: each impossible config gives one clear message before anything compiles."""
import ml_collections
import pytest

from slt_jax import default_config
from slt_jax.default_config import ConfigError


def _config():
  config = default_config.get_config()
  config.data.synthetic.enabled = True
  return config


def test_default_is_valid():
  default_config.validate(_config())


@pytest.mark.parametrize('mutate, message', [
    (lambda c: c.training.__setattr__('learning_rte', 1.0), 'unknown config field `training.learning_rte`'),
    # A config file that rebuilds a group can smuggle in a wrong type (assignment itself is type-checked).
    (lambda c: c.__setattr__('training', ml_collections.ConfigDict({**c.training.to_dict(), 'batch_size': 'big'})),
     '`training.batch_size` must be int'),
    (lambda c: c.model.__setattr__('load_in_4bit', True), 'only makes sense with model.use_lora'),
    (lambda c: (c.training.__setattr__('batch_size', 30), c.training.__setattr__('gradient_accumulation_steps', 4)),
     'not divisible by training.gradient_accumulation_steps'),
    (lambda c: c.data.synthetic.__setattr__('enabled', False), 'set data.train_path'),
])
def test_invalid_configs(mutate, message):
  config = _config()
  mutate(config)
  with pytest.raises(ConfigError, match=message.replace('.', r'\.').replace('`', '.')):
    default_config.validate(config)
