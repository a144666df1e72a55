"""Two-stage training: training.init_from loads exactly the named parts of an earlier run (and its tokenizer),
mismatched parts raise naming the part, training.freeze keeps parts bit-identical over steps and out of the
checkpoints, a chained stage finds frozen parts upstream, and a resumed run takes its own checkpoint.

One tiny demo run (tests/tiny_demo.py, 3 steps) is the earlier run; the later runs read its corpus.
"""
import functools
import json
import os
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

import tiny_demo
from slt_jax import default_config
from slt_jax import inference
from slt_jax.data import inputs
from slt_jax.data import tokenizer as tokenizer_lib
from slt_jax.default_config import ConfigError
from slt_jax.models import slt
from slt_jax.train import checkpoint as checkpoint_lib
from slt_jax.train import init_from
from slt_jax.train import sharding as sharding_lib
from slt_jax.train import step as step_lib
from slt_jax.train import trainer

STEPS = 3


def _config(data_dir: str, **training):
  """The tiny demo on the corpus in data_dir (no generation), validated (which normalises the part lists)."""
  c = tiny_demo.config(**{'num_train_steps': STEPS, 'checkpoint_every_steps': STEPS, **training})
  c.evaluation.bootstrap_resamples = 0
  c.data.synthetic.enabled = False
  for split in ('train', 'val', 'test'):
    c.data[f'{split}_path'] = os.path.join(data_dir, f'{split}.csv')
  c.data.pose_dir = os.path.join(data_dir, 'poses')
  default_config.validate(c)
  return c


def _flat(tree) -> dict:
  """'a/b/c' -> numpy array of every nnx.Param of an nnx.State."""
  return {'/'.join(map(str, p)): np.asarray(jax.device_get(v[...])) for p, v in nnx.to_flat_state(tree)
          if isinstance(v, nnx.Param)}


def _part(key: str) -> str:
  return init_from.part_of(key.split('/'))


def _restored_params(workdir: str, like_state) -> dict:
  """The parameters of WORKDIR's best checkpoint (a TrainState of the same tree as `like_state`)."""
  ckpt = checkpoint_lib.Checkpoints(workdir, read_only=True)
  state, _ = ckpt.restore_best(like_state)
  ckpt.close()
  return _flat(state.params)


@pytest.fixture(scope='module')
def source(tmp_path_factory):
  """The earlier run: the tiny demo trained STEPS steps. -> (workdir, its data dir, its best parameters)."""
  workdir = str(tmp_path_factory.mktemp('stage1'))
  c = tiny_demo.config(num_train_steps=STEPS, checkpoint_every_steps=STEPS)
  c.evaluation.bootstrap_resamples = 0
  trainer.train_and_evaluate(c, workdir)
  data_dir = os.path.join(workdir, 'data')
  run = trainer.setup(_config(data_dir), str(tmp_path_factory.mktemp('like_source')))
  return workdir, data_dir, _restored_params(workdir, run.state)


@pytest.fixture(scope='module')
def frozen_run(source, tmp_path_factory):
  """A second stage from `source` with the backbone frozen, trained STEPS steps. -> (workdir, its config)."""
  workdir = str(tmp_path_factory.mktemp('stage2_frozen'))
  c = _config(source[1], init_from=source[0], freeze=('backbone',))
  trainer.train_and_evaluate(c, workdir)
  return workdir, c


def test_init_parts_loads_exactly_the_named_parts(source, tmp_path):
  src_dir, data_dir, src = source
  c = _config(data_dir, init_from=src_dir, init_parts=('pose_frontend',))
  run = trainer.setup(c, str(tmp_path))
  fresh = _flat(run.state.params)  # this run's own init (setup loads only frozen parts, and none is frozen)
  state, _ = init_from.load(c, str(tmp_path), run.state, run.rest, into='params')
  loaded = _flat(state.params)
  assert loaded.keys() == src.keys() == fresh.keys()
  for part in ('pose_frontend', 'backbone'):
    keys = [k for k in loaded if _part(k) == part]
    assert keys
    expected, other = (src, fresh) if part == 'pose_frontend' else (fresh, src)
    for k in keys:
      np.testing.assert_array_equal(loaded[k], expected[k], err_msg=k)
    assert any(not np.array_equal(loaded[k], other[k]) for k in keys), part  # the two are distinguishable


def test_default_takes_every_part_and_the_earlier_runs_tokenizer(source, tmp_path):
  src_dir, data_dir, src = source
  # Other training texts (same poses): a tokenizer trained here would have other tokens.
  with open(os.path.join(data_dir, 'train.csv'), encoding='utf-8') as f:
    lines = f.read().splitlines()
  train_csv = tmp_path / 'train.csv'
  train_csv.write_text('\n'.join([lines[0]] + [f'{line.split(",")[0]},zebra quokka {i}' for i, line in
                                                enumerate(lines[1:])]) + '\n', encoding='utf-8')
  c = _config(data_dir, init_from=src_dir)
  c.data.train_path = str(train_csv)
  workdir = str(tmp_path / 'run')
  run = trainer.setup(c, workdir)
  with open(os.path.join(src_dir, 'tokenizer', 'tokenizer.json')) as f1, \
       open(os.path.join(workdir, 'tokenizer', 'tokenizer.json')) as f2:
    assert json.load(f1)['model'] == json.load(f2)['model']  # copied, so eval / translate of this run find it
  assert 'zebra' not in run.tokenizer._tok.get_vocab()  # pylint: disable=protected-access
  state, _ = init_from.load(c, workdir, run.state, run.rest, into='params')
  loaded = _flat(state.params)
  assert loaded.keys() == src.keys()
  for k in loaded:
    np.testing.assert_array_equal(loaded[k], src[k], err_msg=k)


def test_mismatched_part_is_an_error_naming_it_unless_left_out(source, tmp_path):
  src_dir, data_dir, src = source
  c = _config(data_dir, init_from=src_dir)
  c.data.keypoints = 'youtube_asl'  # 85 points instead of 50: the front end's input layer has another shape
  with pytest.raises(checkpoint_lib.CheckpointMismatchError,
                     match=r"part 'pose_frontend' does not match.*frontend/proj/kernel is \[150, 32\] there but "
                           r"\[255, 32\] here.*\(training.init_parts=backbone\)"):
    trainer.train_and_evaluate(c, str(tmp_path / 'a'))
  assert not os.path.exists(tmp_path / 'a' / 'checkpoints') or not os.listdir(tmp_path / 'a' / 'checkpoints')
  c.training.init_parts = ('backbone',)
  run = trainer.setup(c, str(tmp_path / 'b'))
  state, _ = init_from.load(c, str(tmp_path / 'b'), run.state, run.rest, into='params')
  loaded = _flat(state.params)
  for k in loaded:
    if _part(k) == 'backbone':
      np.testing.assert_array_equal(loaded[k], src[k], err_msg=k)
  c.training.init_parts = ('backbone',)
  c.model.arch.d_model = 48  # another width: the backbone itself differs
  run = trainer.setup(c, str(tmp_path / 'c'))
  with pytest.raises(checkpoint_lib.CheckpointMismatchError, match=r"part 'backbone' does not match"):
    init_from.load(c, str(tmp_path / 'c'), run.state, run.rest, into='params')
  c.training.freeze = ('backbone',)  # frozen, it is loaded (so checked) by setup itself, in every mode
  with pytest.raises(checkpoint_lib.CheckpointMismatchError, match=r"part 'backbone' does not match"):
    trainer.setup(c, str(tmp_path / 'd'))


def test_frozen_parts_stay_bit_identical_over_steps(source, tmp_path):
  """freeze=pose_frontend: three optimizer steps change the backbone and leave the front end exactly as it was."""
  c = _config(source[1], freeze=('pose_frontend',))
  run = trainer.setup(c, str(tmp_path))
  assert {_part(k) for k in _flat(run.state.params)} == {'backbone'}  # the optimizer never sees the front end
  before = _flat(nnx.state(nnx.merge(run.graphdef, run.state.params, run.rest), nnx.Param))
  train = sharding_lib.jit_train_step(
      functools.partial(step_lib.train_step, graphdef=run.graphdef, tx=run.tx, label_smoothing=0.1),
      run.state_shardings, run.rest, run.mesh)
  state, batches = run.state, run.splits['train'].iterator()
  for _ in range(STEPS):
    batch = sharding_lib.global_batch(next(batches), sharding_lib.batch_sharding(run.mesh),
                                      keys=inputs.DEVICE_KEYS)
    state, _ = train(state, batch)
  after = _flat(nnx.state(nnx.merge(run.graphdef, state.params, run.rest), nnx.Param))
  assert before.keys() == after.keys()
  for k in before:
    if _part(k) == 'pose_frontend':
      np.testing.assert_array_equal(after[k], before[k], err_msg=k)
  assert all(not np.array_equal(after[k], before[k]) for k in before if _part(k) == 'backbone')


def test_frozen_run_checkpoints_hold_the_trained_parts_and_its_model_the_frozen_ones(source, frozen_run):
  src = source[2]
  workdir, c = frozen_run
  ckpt = checkpoint_lib.Checkpoints(workdir, read_only=True)
  manager, step = ckpt.find()
  stored = init_from.ocp_flat(ckpt.stored_tree(manager, step)['params'])
  assert {_part(k) for k in stored} == {'pose_frontend'}  # the frozen backbone is not in its checkpoints
  # As eval / translate build it: the backbone from init_from (bit-identical), the front end its own (trained).
  model = inference.restore(c, workdir, tokenizer_lib.load_tokenizer(os.path.join(workdir, 'tokenizer')),
                            pose_dim=150)
  rest = _flat(model.rest)
  assert {_part(k) for k in rest} == {'backbone'}
  for k in rest:
    np.testing.assert_array_equal(rest[k], src[k], err_msg=k)
  trained = _flat(model.params)
  assert all(not np.array_equal(trained[k], src[k]) for k in trained)
  assert os.path.exists(os.path.join(workdir, 'metrics.json'))


def test_chained_stage_takes_a_part_frozen_in_its_source_from_upstream(source, frozen_run, tmp_path):
  """stage 3 <- stage 2 (backbone frozen, so not in its checkpoints) <- stage 1: the backbone is stage 1's."""
  src = source[2]
  stage2, stage2_config = frozen_run
  c = _config(source[1], init_from=stage2)
  run = trainer.setup(c, str(tmp_path))
  state, _ = init_from.load(c, str(tmp_path), run.state, run.rest, into='params')
  loaded = _flat(state.params)
  stage2_run = trainer.setup(stage2_config, stage2)
  stage2_trained = _restored_params(stage2, stage2_run.state)
  for k in loaded:
    expected = src[k] if _part(k) == 'backbone' else stage2_trained[k]
    np.testing.assert_array_equal(loaded[k], expected, err_msg=k)


def test_resumed_run_takes_its_trained_parts_from_its_own_checkpoint(frozen_run, monkeypatch):
  workdir, c = frozen_run
  calls = []
  load = init_from.load

  def spy(config, wd, state, rest, into):
    calls.append(into)
    return load(config, wd, state, rest, into)
  monkeypatch.setattr(init_from, 'load', spy)
  with open(os.path.join(workdir, 'metrics.json')) as f:
    before = json.load(f)['test']
  results = trainer.train_and_evaluate(c, workdir)  # all STEPS done: resumes at STEPS, evaluates the best
  assert calls == ['rest']  # the frozen backbone from init_from; the front end from its own checkpoint
  assert results['test']['bleu'] == before['bleu'] and results['test']['step'] == before['step']


def test_a_run_that_trained_every_part_evaluates_without_its_init_from(source, tmp_path):
  """Nothing of it lives outside its checkpoints; its tokenizer was copied into its workdir."""
  earlier = str(tmp_path / 'earlier')
  shutil.copytree(source[0], earlier)
  workdir = str(tmp_path / 'run')
  c = _config(source[1], init_from=earlier, num_train_steps=1)
  trained = trainer.train_and_evaluate(c, workdir)
  shutil.rmtree(earlier)
  assert trainer.evaluate(c, workdir, 'test')['bleu'] == pytest.approx(trained['test']['bleu'])


def test_config_errors_and_part_lists():
  c = default_config.get_config()
  c.data.train_path = 'x.csv'
  c.training.freeze = ('backbone,adapters',)  # --config.training.freeze=backbone,adapters
  default_config.validate(c)
  assert c.training.freeze == ('backbone', 'adapters')
  c.training.freeze = ('encoder',)
  with pytest.raises(ConfigError, match=r"training.freeze: \['encoder'\] not a part; the parts are"):
    default_config.validate(c)
  c.training.freeze = ()
  c.training.init_parts = ('backbone',)
  with pytest.raises(ConfigError, match='training.init_from, which is not set'):
    default_config.validate(c)
  c.training.init_from = '/nonexistent/run'
  with pytest.raises(ConfigError, match="init_from='/nonexistent/run': no config.json there"):
    default_config.validate(c)


def test_freezing_a_part_the_model_lacks_or_everything_is_an_error(source, tmp_path):
  c = _config(source[1], freeze=('projector',))  # a T5 has no projector (decoder-only models do)
  with pytest.raises(ConfigError, match=r"training.freeze names \['projector'\], which this model does not have"):
    trainer.setup(c, str(tmp_path / 'a'))
  c.training.freeze = ('pose_frontend', 'backbone')
  with pytest.raises(ConfigError, match='leaves nothing to train'):
    trainer.setup(c, str(tmp_path / 'b'))


def test_check_mode_counts_only_the_unfrozen_parameters_as_trained(tmp_path):
  from slt_jax import check  # pylint: disable=g-import-not-at-top
  c = tiny_demo.config()
  c.training.freeze = ('backbone',)
  default_config.validate(c, require_data=False)
  report = check.check(c, str(tmp_path), memory=False)
  assert report['trainable_params'] == report['total_params'] - report['backbone_params'] > 0


@pytest.mark.parametrize('family', ['t5', 'llama'])
def test_every_parameter_has_a_part_and_freeze_removes_it_from_training(family):
  """Built abstractly with LoRA: each parameter path maps to a part; freeze drops exactly that part from the
  trained set (LoRA trains adapters + what lies outside the backbone)."""
  c = default_config.get_config()
  c.model.family = family
  c.model.use_lora = True
  c.model.pose.update(hidden=32, conv_layers=1)
  if family == 't5':
    c.model.arch.update(d_model=32, d_kv=8, num_heads=2, d_ff=64, num_layers=1, num_decoder_layers=1)
    c.model.lora_config.target_modules = ('q', 'v')
    expected = {'pose_frontend', 'backbone', 'adapters'}
  else:
    c.model.arch = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1, bos_token_id=1, eos_token_id=2)
    c.model.pose_encoder.update(num_layers=1, num_heads=2)
    expected = set(init_from.PARTS)
  model = nnx.eval_shape(lambda: slt.build_model(c, 64, 12, rngs=nnx.Rngs(0)))
  parts = {init_from.part_of(p) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  assert parts == expected
  for frozen in sorted(expected - {'backbone'}):
    c.training.freeze = (frozen,)
    trained = {init_from.part_of(p) for p, _ in nnx.to_flat_state(nnx.state(model, init_from.trainable_filter(c)))}
    assert trained == expected - {'backbone', frozen}
