"""Config validation: each impossible config gives one clear message before anything compiles."""
import json
import os
import re
import subprocess
import sys
import types

import ml_collections
import pytest

from slt_jax import default_config
from slt_jax.default_config import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
  from slt_jax.models import slt  # pylint: disable=g-import-not-at-top
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
  monkeypatch.setattr(slt, 'build_model', must_not_run)  # (train/state.py builds the model)
  with pytest.raises(ConfigError, match='has 128 ids but the checkpoint'):
    trainer.setup(config, str(tmp_path))


# --- model.arch: every key must be one the family builds (config_from_hf drops the keys it does not read) ------
@pytest.mark.parametrize('family, typo, suggestion', [
    ('t5', 'num_decoder_layer', 'num_decoder_layers'),    # the old code built HF's default decoder depth
    ('bart', 'decoder_layer', 'decoder_layers'),
    ('llama', 'num_hidden_layer', 'num_hidden_layers'),
    ('qwen2', 'num_key_value_head', 'num_key_value_heads'),
])
def test_arch_typo_names_key_family_and_close_match(family, typo, suggestion):
  config = _config()
  config.model.family = family
  config.model.arch = ml_collections.ConfigDict({'model_type': family, typo: 2})
  with pytest.raises(ConfigError, match=rf"model\.arch \(model\.family='{family}'.*unknown key `{typo}` "
                                        rf'\(did you mean {suggestion}'):
    default_config.validate(config)


@pytest.mark.parametrize('family, arch, message', [
    # HF keys the family does not implement: accepted only at the value that switches them off.
    ('bart', dict(decoder_layerdrop=0.1), r'`decoder_layerdrop`=0\.1 is not implemented \(it may only be 0 or 0\.0'),
    ('llama', dict(attention_dropout=0.1), r'`attention_dropout`=0\.1 is not implemented'),
    # BART's num_hidden_layers is HF's alias of encoder_layers: another value would be ignored.
    ('bart', dict(encoder_layers=3, num_hidden_layers=6), r'`num_hidden_layers`=6 is not implemented .*only be 3'),
    # T5 v1.1's activation comes from feed_forward_proj; a contradicting dense_act_fn would win in HF.
    ('t5', dict(feed_forward_proj='gated-gelu', dense_act_fn='relu'), r"`dense_act_fn`='relu'.*'gelu_new'"),
    # Keys of other model_types: llama has no sliding window, Gemma's hidden_activation is not Llama's.
    ('llama', dict(sliding_window=4096), r'unknown key `sliding_window`'),
    ('llama', dict(hidden_activation='gelu'), r'unknown key `hidden_activation`'),
    # A generation setting is not architecture.
    ('t5', dict(num_beams=4), r'unknown key `num_beams`.*decoding settings go in config\.decode'),
])
def test_arch_values_the_family_does_not_build(family, arch, message):
  config = _config()
  config.model.family = family
  config.model.arch = ml_collections.ConfigDict(arch)
  with pytest.raises(ConfigError, match=message):
    default_config.validate(config)


def test_arch_model_type_must_match_family():
  """The decoder-only builder took arch.model_type over model.family (setdefault): say which one is meant."""
  config = _config()
  config.model.family = 'llama'
  config.model.arch = ml_collections.ConfigDict(dict(model_type='qwen2', hidden_size=64))
  with pytest.raises(ConfigError, match=r"model\.arch\.model_type='qwen2' disagrees with model\.family='llama'"):
    default_config.validate(config)
  config.model.family = 'gpt2'
  config.model.arch = ml_collections.ConfigDict(dict(n_embd=64))
  with pytest.raises(ConfigError, match=r"model\.family='gpt2' is not one of \['bart', 'gemma', 'llama'"):
    default_config.validate(config)


def test_arch_is_not_checked_when_a_checkpoint_gives_it(tmp_path):
  """With model.name the checkpoint's config.json is the architecture and model.arch is not used."""
  config = _config()
  config.model.name = _checkpoint_dir(tmp_path, model_type='t5', vocab_size=100)
  config.model.arch.num_decoder_layer = 2
  default_config.validate(config)


_TINY_HF = {
    't5': dict(d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4, vocab_size=64),
    'mt5': dict(d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4, vocab_size=64),
    'bart': dict(d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                 decoder_attention_heads=4, encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=64),
    'mbart': dict(d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=64),
    'llama': dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=64),
    'mistral': dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=64, sliding_window=8),
    'qwen2': dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=64),
    'gemma': dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=4, vocab_size=64),
}


@pytest.mark.parametrize('family', sorted(_TINY_HF))
def test_arch_accepts_config_json_of_transformers_and_ours(family):
  """What transformers' own config class writes (a config.json copied into model.arch) and what our
  save_pretrained writes (config_to_hf) are accepted as they are."""
  import transformers  # pylint: disable=g-import-not-at-top
  from slt_jax.models import hf  # pylint: disable=g-import-not-at-top
  hf_config = transformers.AutoConfig.for_model(family, **_TINY_HF[family]).to_dict()
  assert hf.arch_problems(hf_config) == []
  fam = hf.family(family)
  ours = fam.config_to_hf(fam.config_from_hf({'model_type': family, **_TINY_HF[family]}))
  assert hf.arch_problems(ours) == []
  config = _config()
  config.model.family = family
  config.model.arch = ml_collections.ConfigDict(ours)
  default_config.validate(config)


# --- training, data ------------------------------------------------------------------------------------------
def test_best_metric_is_a_metric_the_evaluation_produces():
  """best_metric picks the checkpoint with the highest value of one of evaluate.score's numbers."""
  from slt_jax import evaluate  # pylint: disable=g-import-not-at-top
  scores = evaluate.score(['the cat sat'], ['the cat sat down'])
  for name in default_config._BEST_METRICS:  # pylint: disable=protected-access
    assert isinstance(scores[name], float)
    config = _config()
    config.training.best_metric = name
    default_config.validate(config)
  for wrong in ('BLEU', 'loss', 'bleu_signature'):
    config = _config()
    config.training.best_metric = wrong
    with pytest.raises(ConfigError, match=rf"training\.best_metric must be one of \('bleu', 'chrf', 'rougeL'\).*"
                                          rf"got '{wrong}'"):
      default_config.validate(config)


@pytest.mark.parametrize('max_frames', [0, -8, None])
def test_max_frames_must_be_positive(max_frames):
  config = _config()
  config.data.max_frames = max_frames
  with pytest.raises(ConfigError, match=rf'data\.max_frames must be a positive number of frames.*got '
                                        rf'{max_frames!r}'):
    default_config.validate(config, require_data=False)


@pytest.mark.parametrize('keypoints', ['', 'hands'])
def test_keypoints_must_be_a_preset(keypoints):
  config = _config()
  config.data.keypoints = keypoints
  with pytest.raises(ConfigError, match=rf"data\.keypoints='{keypoints}' is not a keypoint preset; choose one of "
                                        r"\['hands_body', 'holistic', 'openpose_137', 'reduced_178', 'wholebody_133', 'youtube_asl'\]"):
    default_config.validate(config, require_data=False)


def test_removed_shuffle_buffer_says_why():
  """The batches are a full seeded permutation of the split; a shuffle buffer size would be ignored."""
  assert 'shuffle_buffer' not in default_config.get_config().data
  config = _config()
  config.data.shuffle_buffer = 1000  # what a config file written for the old field does
  with pytest.raises(ConfigError, match=r'`data\.shuffle_buffer` was removed: .*seeded permutation of the whole '
                                        r'split'):
    default_config.validate(config)


@pytest.mark.parametrize('override, message', [
    ('--config.data.shuffle_buffer=5', r'--config.data.shuffle_buffer=5: config field `data.shuffle_buffer` was '
                                       r'removed: .*seeded permutation'),
    ('--config.training.batchsize=8', r'unknown config field `training.batchsize` \(known fields here: batch_size, '),
    ('--config.model.arch.no_such_key=1', r'--config.model.arch.no_such_key=1 names a field that this config does '
                                          r'not have .*in the config file, not on the command line'),
])
def test_command_line_override_of_a_missing_field_is_a_flags_error(override, message, tmp_path):
  """Before any work: exit status 1, absl's flags-error line naming the field and why, no traceback."""
  argv = [sys.executable, '-m', 'slt_jax.main', '--config=configs/demo.py', f'--workdir={tmp_path / "run"}',
          override]
  out = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
                       env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'})
  assert out.returncode == 1, out.stderr[-2000:]
  assert re.search('FATAL Flags parsing error: .*' + message, out.stderr), out.stderr[-2000:]
  assert 'Traceback' not in out.stderr and not (tmp_path / 'run').exists()


@pytest.mark.parametrize('path', ['training.batch_size', 'data.augmentations.yaw', 'model.arch.anything',
                                  'data.mixture.mine.weight'])
def test_check_field_path_takes_every_config_field(path):
  default_config.check_field_path(path)  # (free-form groups take any key)


def test_warmup_cap_is_logged(caplog):
  """warmup_steps beyond half the run is cut to half the run, and the log says so."""
  import logging  # pylint: disable=g-import-not-at-top
  from slt_jax.train import optim  # pylint: disable=g-import-not-at-top
  config = _config()
  config.training.warmup_steps, config.training.learning_rate = 200, 1.0
  with caplog.at_level(logging.WARNING):
    schedule = optim.learning_rate_schedule(config, 100)
  assert float(schedule(50)) == pytest.approx(1.0)  # the peak at step 50, not 200
  assert 'training.warmup_steps=200 is capped at 50: half of the 100 training steps' in caplog.text
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    optim.learning_rate_schedule(config, 400)
  assert 'capped' not in caplog.text
