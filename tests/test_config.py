"""Config validation: each impossible config gives one clear message before anything compiles."""
import json
import types

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


# --- checks that need the devices, the hosts or the tokenizer -------------------------------------------------
@pytest.mark.parametrize('mesh, batch, devices, hosts, message', [
    ((-1, -1, 1), 32, 8, 1, r'at most one may be -1'),                                # static (validate)
    ((3, 1, 1), 32, 3, 1, r'batch_size=32 is not divisible by the data-parallel size 3'),  # static (validate)
    ((2, 1, 1), 32, 4, 1, r"mesh \{'data': 2, 'fsdp': 1, 'tensor': 1\} needs 2 devices, but this run has 4"),
    ((-1, 3, 1), 33, 8, 1, r'product 3\) do not divide the 8 devices'),
    ((-1, 1, 1), 12, 8, 1, r'batch_size=12 is not divisible by the data-parallel size 8 \(mesh data=8 x fsdp=1\)'),
    ((-1, 2, 2), 6, 8, 1, r'batch_size=6 is not divisible by the data-parallel size 4 \(mesh data=2 x fsdp=2\)'),
    ((1, 1, -1), 6, 8, 4, r'batch_size=6 is not divisible by the 4 hosts'),
])
def test_mesh_and_batch_against_devices(mesh, batch, devices, hosts, message):
  config = _config()
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh
  config.training.batch_size = config.training.eval_batch_size = batch
  with pytest.raises(ConfigError, match=message):
    default_config.validate(config)
    default_config.validate_devices(config, devices, hosts)


def test_valid_mesh_passes():
  config = _config()
  config.mesh.data, config.mesh.fsdp = -1, 2
  default_config.validate(config)
  default_config.validate_devices(config, 8, 2)  # data=4 x fsdp=2 divides 32 and 64; 2 hosts too


def _checkpoint_dir(tmp_path, **hf_config):
  (tmp_path / 'config.json').write_text(json.dumps(hf_config))
  return str(tmp_path)


def test_tokenizer_larger_than_pretrained_vocab(tmp_path):
  config = _config()
  config.model.name = _checkpoint_dir(tmp_path, model_type='t5', vocab_size=100)
  default_config.validate_vocab(config, 100)
  with pytest.raises(ConfigError, match=r"the tokenizer \(the checkpoint's tokenizer\) has 101 ids but the "
                                        r'checkpoint .* has only 100 embeddings'):
    default_config.validate_vocab(config, 101)
  config.model.name, config.model.family = '', 'llama'  # decoder-only from arch: its vocab_size is fixed
  config.model.arch.vocab_size = 50
  with pytest.raises(ConfigError, match=r'has 60 ids but model.arch.vocab_size \(llama\) has only 50'):
    default_config.validate_vocab(config, 60)
  config.model.family = 't5'  # an encoder-decoder from arch takes the tokenizer's size
  default_config.validate_vocab(config, 60)


def test_trainer_checks_before_data_and_weights(tmp_path, monkeypatch):
  """trainer.setup fails on the device check before reading any data, on the vocabulary before building."""
  from slt_jax.train import trainer  # pylint: disable=g-import-not-at-top

  def must_not_run(*args, **kwargs):
    raise AssertionError('reached a later setup stage')

  config = _config()
  config.mesh.data = 2  # this test process has one CPU device
  monkeypatch.setattr(trainer.inputs_lib, 'make_inputs', must_not_run)
  with pytest.raises(ConfigError, match='needs 2 devices, but this run has 1'):
    trainer.setup(config, str(tmp_path))

  config.mesh.data = -1
  config.model.name = _checkpoint_dir(tmp_path, model_type='t5', vocab_size=100)
  tokenizer = types.SimpleNamespace(vocab_size=128)
  train = types.SimpleNamespace(pose_shape=(50, 3), num_examples=10)
  monkeypatch.setattr(trainer.inputs_lib, 'make_inputs', lambda *a: (tokenizer, {'train': train}))
  monkeypatch.setattr(trainer.slt, 'build_model', must_not_run)
  with pytest.raises(ConfigError, match='has 128 ids but the checkpoint'):
    trainer.setup(config, str(tmp_path))
