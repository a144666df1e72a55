"""run_config.for_inference: eval and translate use the model and preprocessing a workdir was trained with."""
import json

import pytest

import tiny_demo
from slt_jax import run_config
from slt_jax.default_config import ConfigError


@pytest.fixture()
def workdir(tmp_path):
  """A workdir whose config.json is the tiny demo's, as train_and_evaluate writes it."""
  (tmp_path / 'config.json').write_text(tiny_demo.config().to_json_best_effort(), encoding='utf-8')
  return str(tmp_path)


def test_same_config_passes_and_data_location_decode_evaluation_may_differ(workdir):
  config = tiny_demo.config()
  config.data.train_path, config.data.pose_dir = '/elsewhere/train.csv', '/elsewhere/poses'
  config.data.synthetic.enabled = False
  config.decode.num_beams, config.evaluation.split, config.model.attention = 4, 'val', 'xla'
  result = run_config.for_inference(config, workdir)
  assert result.data.train_path == '/elsewhere/train.csv' and result.decode.num_beams == 4
  assert result.model.to_dict() == {**tiny_demo.config().model.to_dict(), 'attention': 'xla'}


@pytest.mark.parametrize('field, value', [('data.normalize', 'minmax'), ('data.keypoints', 'hands'),
                                          ('data.max_frames', 32), ('model.arch.d_ff', 128),
                                          ('model.pose.conv_stride', 2), ('model.prompt', 'Translate:')])
def test_a_model_or_preprocessing_difference_is_an_error_naming_it(workdir, field, value):
  config = tiny_demo.config()
  *parents, leaf = field.split('.')
  node = config
  for p in parents:
    node = node[p]
  trained = node[leaf]
  node[leaf] = value
  with pytest.raises(ConfigError, match='does not match the model') as error:
    run_config.for_inference(config, workdir)
  assert f'{field}: --config has {value!r}, the run was trained with {trained!r}' in str(error.value)
  # translate (not strict) uses the run's value instead
  assert run_config.for_inference(config, workdir, strict=False).to_dict() == {
      **config.to_dict(), 'model': tiny_demo.config().model.to_dict(),
      'data': {**config.data.to_dict(), leaf: trained} if parents == ['data'] else config.data.to_dict()}


def test_an_arch_key_of_one_side_only_is_a_difference(workdir):
  stored = json.loads(open(f'{workdir}/config.json', encoding='utf-8').read())
  stored['model']['arch']['vocab_size'] = 500
  open(f'{workdir}/config.json', 'w', encoding='utf-8').write(json.dumps(stored))
  with pytest.raises(ConfigError, match=r"model\.arch\.vocab_size: --config has '\(not set\)'"):
    run_config.for_inference(tiny_demo.config(), workdir)
  assert run_config.for_inference(tiny_demo.config(), workdir, strict=False).model.arch.vocab_size == 500


def test_no_config_json_keeps_the_config(tmp_path):
  config = tiny_demo.config()
  assert run_config.for_inference(config, str(tmp_path)) is config
