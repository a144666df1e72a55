"""Config fields as a new user writes them: the seed's boolean mixed_precision (in a file and on the command line),
fp16 refused, and the demo config never silently replacing the data paths a user gives."""
import os

import pytest
from absl import flags
from ml_collections import config_flags

import tiny_demo
from slt_jax import default_config
from slt_jax.default_config import ConfigError


def _parse(*overrides):
  """configs/demo.py with command-line overrides, parsed as slt_jax.main parses them, then validated."""
  argv = ['main', f'--config={tiny_demo.DEMO}'] + [f'--config.{o}' for o in overrides]
  flag_values = flags.FlagValues()
  # sys_argv: config_flags defines the override flags from the command line it is given.
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=flag_values, lock_config=True,
                                  sys_argv=argv)
  flag_values(argv)
  config = flag_values.config
  default_config.validate(config)
  return config


@pytest.mark.parametrize('value, expected', [('True', 'bf16'), ('False', 'no'), ('true', 'bf16'), ('bf16', 'bf16'),
                                             ('no', 'no')])
def test_mixed_precision_from_the_command_line(value, expected):
  assert _parse(f'training.mixed_precision={value}').training.mixed_precision == expected


@pytest.mark.parametrize('value, expected', [(True, 'bf16'), (False, 'no')])
def test_mixed_precision_boolean_in_a_config_file(value, expected):
  config = tiny_demo.config()
  config.training.mixed_precision = value  # a config file's `config.training.mixed_precision = True`
  default_config.validate(config)
  assert config.training.mixed_precision == expected


@pytest.mark.parametrize('value, message', [('fp16', 'not supported.*loss scaling'), ('bf17', "must be 'no'")])
def test_mixed_precision_refused(value, message):
  with pytest.raises(ConfigError, match=message):
    _parse(f'training.mixed_precision={value}')


def test_demo_config_with_user_paths_is_an_error_naming_the_flag(tmp_path):
  csv = os.path.join(tmp_path, 'train.csv')
  with pytest.raises(ConfigError, match='--config.data.synthetic.enabled=False') as error:
    _parse(f'data.train_path={csv}', f'data.pose_dir={tmp_path}')
  assert csv in str(error.value)
  config = _parse(f'data.train_path={csv}', f'data.pose_dir={tmp_path}', 'data.synthetic.enabled=False')
  assert config.data.train_path == csv and not config.data.synthetic.enabled
