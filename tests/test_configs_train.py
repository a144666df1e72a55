"""Special token ids and EOS in decoding, for every config in configs/ (encoder-decoder and decoder-only) shrunk to
tiny widths, on one tiny demo corpus:

- every config from random init builds a model whose EOS / pad / decoder start / BOS are the trained
  tokenizer's (model.arch's ids, copied from checkpoints, name other tokens: bart_large / mbart have pad 1, EOS 2);
- one config per id layout trains a few steps through the trainer and decodes: the ids after the first EOS are
  pad and the hypotheses are the text before it;
- from a tiny random HF checkpoint (config.model.name, with the config's LoRA) the same, and a checkpoint whose
  EOS is not the tokenizer's is an error naming both ids;
- Tokenizer.decode, the one place every caller's text comes from, cuts at the first EOS.

The targets are cut to 2 tokens + EOS (data.max_target_length=3) and the learning rate is high, so a few steps
teach the model to emit EOS early in its 8 generated tokens: what comes after it is then what the test checks
(a model that stops on another id than the labels' EOS goes on generating there).
"""
import importlib.util
import json
import os
import pathlib

import numpy as np
import pytest
from flax import nnx

from slt_jax import default_config
from slt_jax import inference
from slt_jax.data import tokenizer as tokenizer_lib
from slt_jax.models import causal_slt, registry, slt
from slt_jax.train import sharding as sharding_lib
from slt_jax.train import step as step_lib
from slt_jax.train import trainer

CONFIGS = sorted((pathlib.Path(__file__).resolve().parents[1] / 'configs').glob('*.py'))
STEPS = 6
LLM_VOCAB = 384  # decoder-only embedding rows (fixed by model.arch; the trained tokenizer must fit in them)

COMMON = {
    'data.synthetic.enabled': True, 'data.synthetic.vocab_size': 20, 'data.synthetic.num_signers': 2,
    'data.synthetic.num_heldout_signers': 0, 'data.synthetic.num_train': 16, 'data.synthetic.num_val': 8,
    'data.synthetic.num_test': 2,
    'data.keypoints': 'hands_body', 'data.max_frames': 64, 'data.bucket_boundaries': (64,),
    'data.max_target_length': 3, 'data.augment': False,
    'model.pose.hidden': 32, 'model.pose.conv_layers': 1, 'model.pose.conv_stride': 2,
    'model.pose_encoder.num_layers': 1, 'model.pose_encoder.num_heads': 2,
    'model.scan_layers': False,  # 2 layers unrolled compile faster than scanned (how, not what, is computed)
    'training.batch_size': 8, 'training.eval_batch_size': 8, 'training.learning_rate': 1e-2,
    'training.warmup_steps': 0, 'training.label_smoothing': 0.0, 'training.num_train_steps': STEPS,
    'decode.max_new_tokens': 8,
}
SHRINK = {  # 2 layers, width 32, a few heads
    't5': dict(d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2, num_decoder_layers=2, dropout_rate=0.0),
    'bart': dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                 decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128,
                 dropout=0.0),
    'decoder': dict(vocab_size=LLM_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256),
}


def _load(path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _shrink_key(family):
  return registry.family(family).name


def _tiny(path):
  """The config file `path` with COMMON and its family's SHRINK."""
  config = _load(path)
  for key, value in COMMON.items():
    *parents, leaf = key.split('.')
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  config.model.arch.update(SHRINK[_shrink_key(config.model.family)])
  return config


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """One workdir for every run: the corpus, its cache and the trained tokenizer are made once."""
  return str(tmp_path_factory.mktemp('configs_train'))


@pytest.fixture(scope='module')
def trained_tokenizer(workdir):
  """The tokenizer trainer.setup trains on the corpus and keeps in workdir/tokenizer (made once)."""
  from slt_jax.data import inputs  # pylint: disable=g-import-not-at-top
  config = inputs.resolve_data_paths(_tiny(CONFIGS[0]), workdir)
  return tokenizer_lib.get_tokenizer(config, workdir)


def _until_eos(row, eos):
  hits = np.flatnonzero(row == eos)
  return row[:hits[0]] if hits.size else row


def _train_and_decode(config, workdir):
  """trainer.setup, STEPS train steps, greedy decoding of the val split: (run, model, ids, hyps)."""
  run = trainer.setup(config, workdir)
  train = step_lib.TrainStep(config, run.graphdef, run.tx, run.state_shardings, run.rest, run.mesh)  # the trainer's
  state, batches = run.state, run.splits['train'].iterator()
  for _ in range(STEPS):
    batch = next(batches)
    state, metrics = train(state, batch, trainer._device_batch(batch, sharding_lib.batch_sharding(run.mesh)))
  assert np.isfinite(float(metrics['loss']))
  decode_fn = inference.make_decode_fn(run.graphdef, config.decode)
  batch = next(run.splits['val'].iterator())  # the whole val split (8 rows), as decode_split sees it
  device = trainer._device_batch(batch, sharding_lib.batch_sharding(run.mesh))
  ids = np.asarray(decode_fn(state.params, run.rest, device['poses'], device['pose_mask']))
  keep = batch['example_mask'].astype(bool)
  ids = ids[keep][np.argsort(batch['index'][keep])]
  _, _, hyps = trainer.decode_split(run, 'val', state.params, decode_fn)  # the trainer's text, in row order
  assert len(hyps) == len(ids) == config.data.synthetic.num_val
  return run, nnx.merge(run.graphdef, state.params, run.rest), ids, hyps


def _check_ids_and_decoding(run, model, ids, hyps):
  """The decoded ids i32[N, max_new_tokens] hold only pad after the first EOS (the labels' EOS: the
  tokenizer's), and the trainer's hypotheses are the text before it; at least one row reached EOS."""
  tok = run.tokenizer
  assert (model.eos_id, model.pad_id) == (tok.eos_id, tok.pad_id)
  ended = 0
  for row, hyp in zip(ids, hyps):
    text_ids = _until_eos(row, tok.eos_id)
    ended += len(text_ids) < len(row)
    assert (row[len(text_ids) + 1:] == tok.pad_id).all(), (row.tolist(), tok.eos_id, tok.pad_id)
    assert hyp == tok.decode(text_ids.tolist()) == tok.decode(row.tolist())
  assert ended, f'no row reached EOS {tok.eos_id} (the check above saw nothing): {ids.tolist()}'


def _ids_are_the_tokenizers(model, tok):
  """A model from random init: its EOS / pad / decoder start / BOS and its text model's config (what
  save_pretrained writes to config.json) are the tokenizer's."""
  cfg = model.lm.config
  assert (model.eos_id, model.pad_id, cfg.eos_token_id, cfg.pad_token_id) == (tok.eos_id, tok.pad_id) * 2
  if isinstance(model, causal_slt.CausalSLT):
    assert model.prefix_ids[:1] == (tok.bos_id,) == (cfg.bos_token_id,)
  else:
    assert model.decoder_prefix[0] == cfg.decoder_start_token_id == tok.decoder_start_id
    assert model.decoder_prefix[1:] in ((), (tok.bos_id,))  # BART's forced BOS is the tokenizer's <s>


@pytest.mark.parametrize('path', CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_from_random_init_has_the_tokenizers_ids(path, workdir, trained_tokenizer):
  """Every config builds (abstractly, as the trainer would: slt.build_model with the run's tokenizer) a model
  whose special ids are the tokenizer's, whatever its model.arch copied from a checkpoint says."""
  from slt_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  config = _tiny(path)
  default_config.validate(config)
  tok = trained_tokenizer
  pose_dim = int(np.prod(pipeline.pose_feature_shape(config)))
  model = nnx.eval_shape(lambda: slt.build_model(config, tok.vocab_size, pose_dim, nnx.Rngs(0), tokenizer=tok))
  _ids_are_the_tokenizers(model, tok)


def test_random_t5_takes_a_model_tokenizer_whose_eos_is_not_1():
  """model.tokenizer with BART-like ids (pad 1, EOS 2, BOS 0, decoder start 2) on a T5 from random init (whose
  model.arch says pad 0, EOS 1, start 0): the model follows the tokenizer."""
  import types  # pylint: disable=g-import-not-at-top
  tok = types.SimpleNamespace(pad_id=1, eos_id=2, bos_id=0, decoder_start_id=2, vocab_size=64)
  config = _tiny(CONFIGS[[p.stem for p in CONFIGS].index('t5_small')])
  model = nnx.eval_shape(lambda: slt.build_model(config, tok.vocab_size, 12, nnx.Rngs(0), tokenizer=tok))
  _ids_are_the_tokenizers(model, tok)
  assert model.decoder_prefix == (2,)


# One config per special-id layout trains and decodes through the trainer (each run compiles for ~20 s of
# CPU, so not all 13): T5 (decoder start = pad in model.arch), BART (pad 1 / EOS 2 and a forced BOS in
# model.arch), Llama 3 (a list of EOS ids, none of them the tokenizer's) with QLoRA.
TRAINED = ('t5_small', 'bart_large', 'llama3_8b')


@pytest.mark.parametrize('name', TRAINED)
def test_config_from_random_init_trains_and_stops_at_the_tokenizers_eos(name, workdir):
  config = _tiny(CONFIGS[[p.stem for p in CONFIGS].index(name)])
  default_config.validate(config)
  run, model, ids, hyps = _train_and_decode(config, workdir)
  assert isinstance(run.tokenizer, tokenizer_lib.TrainedTokenizer)
  _ids_are_the_tokenizers(model, run.tokenizer)
  _check_ids_and_decoding(run, model, ids, hyps)


# --- from a tiny pretrained checkpoint: the tokenizer's EOS is checked against the checkpoint's -------------

PRETRAINED = ('bart_large', 'llama3_1b')  # seq2seq (BART's decoder start and forced BOS), Llama with LoRA


def _hf_ids(family, tok, eos):
  """HF config fields of the special ids, the way each family's checkpoints set them (eos: the checkpoint's)."""
  if family in ('t5', 'mt5'):
    return dict(pad_token_id=tok.pad_id, eos_token_id=eos, decoder_start_token_id=tok.pad_id)
  if family in ('bart', 'mbart'):  # decoder start = EOS, then the forced BOS (facebook/bart-large's layout)
    return dict(pad_token_id=tok.pad_id, eos_token_id=eos, bos_token_id=tok.bos_id, decoder_start_token_id=eos,
                forced_bos_token_id=tok.bos_id, forced_eos_token_id=eos)
  # Llama 3 style: no pad id, a list of EOS ids (the tokenizer's among them when they match).
  return dict(pad_token_id=None, bos_token_id=tok.bos_id, eos_token_id=[eos, 5], tie_word_embeddings=False)


def _checkpoint(directory, config, tok, eos):
  """A random transformers model of `config`'s family and shrunk arch, with `tok` saved beside it the way a
  hub checkpoint carries its tokenizer (transformers' tokenizer files, read back as a PretrainedTokenizer)."""
  import transformers  # pylint: disable=g-import-not-at-top
  family = config.model.family
  arch = {k: v for k, v in config.model.arch.to_dict().items() if k != 'model_type'}
  arch.update(vocab_size=LLM_VOCAB, **_hf_ids(family, tok, eos))
  hf_config = transformers.AutoConfig.for_model(family, **arch)
  auto = getattr(transformers, registry.family(family).hf_auto_class)
  auto.from_config(hf_config).save_pretrained(directory)
  gen = os.path.join(directory, 'generation_config.json')
  if os.path.exists(gen):
    os.remove(gen)  # the EOS ids in config.json only (test_eos_mismatch adds one)
  tok.save(directory)  # its tokenizer.json, then transformers' files (the marker of ours overwritten)
  fast = transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(directory, 'tokenizer.json'),
                                              pad_token='<pad>', eos_token='</s>', unk_token='<unk>',
                                              bos_token='<s>')
  fast.save_pretrained(directory)
  return directory


@pytest.mark.parametrize('name', PRETRAINED)
def test_config_from_checkpoint_stops_at_the_tokenizers_eos(name, workdir, trained_tokenizer, tmp_path):
  config = _tiny(CONFIGS[[p.stem for p in CONFIGS].index(name)])
  config.model.name = _checkpoint(str(tmp_path / name), config, trained_tokenizer, eos=trained_tokenizer.eos_id)
  default_config.validate(config)
  run, model, ids, hyps = _train_and_decode(config, workdir)
  assert isinstance(run.tokenizer, tokenizer_lib.PretrainedTokenizer)
  with open(os.path.join(config.model.name, 'config.json')) as f:
    hf_config = json.load(f)
  if isinstance(model, causal_slt.CausalSLT):
    assert model.prefix_ids[:1] == (run.tokenizer.bos_id,)
  else:  # the checkpoint's own decoder start and forced BOS
    forced = hf_config.get('forced_bos_token_id')
    assert model.decoder_prefix == (hf_config['decoder_start_token_id'],) + (() if forced is None else (forced,))
  assert bool(config.model.use_lora) == (name == 'llama3_1b')
  _check_ids_and_decoding(run, model, ids, hyps)


@pytest.mark.parametrize('name', ('t5_small', 'bart_large', 'llama3_1b'))
def test_eos_mismatch_is_an_error_naming_both_ids(name, workdir, trained_tokenizer, tmp_path):
  """A checkpoint whose EOS is not the tokenizer's: setup fails before loading weights, naming both ids; the
  id listed in generation_config.json (a new stop token taught by fine-tuning) is accepted."""
  config = _tiny(CONFIGS[[p.stem for p in CONFIGS].index(name)])
  tok = trained_tokenizer
  wrong = tok.unk_id  # the id model.arch's eos_token_id=2 names in the trained tokenizer
  config.model.name = _checkpoint(str(tmp_path / name), config, tok, eos=wrong)
  with pytest.raises(ValueError, match=rf'EOS id {tok.eos_id} but the checkpoint .* eos_token_id \[?{wrong}\b'):
    trainer.setup(config, workdir)
  with open(os.path.join(config.model.name, 'generation_config.json'), 'w') as f:
    json.dump({'eos_token_id': [wrong, tok.eos_id]}, f)
  pretrained = tokenizer_lib.load_tokenizer(config.model.name)
  from slt_jax.models import hf  # pylint: disable=g-import-not-at-top
  hf.check_tokenizer_eos(config.model.name, pretrained, 'the checkpoint\'s')  # no error


def test_decode_cuts_at_the_first_eos(trained_tokenizer, tmp_path):
  """What follows EOS is not text, for our tokenizer and transformers' (the text of evaluation, translate and
  the logged examples): ids after it, special or not, are dropped, not decoded."""
  import transformers  # pylint: disable=g-import-not-at-top
  tok = trained_tokenizer
  tok.save(str(tmp_path))
  transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / 'tokenizer.json'), pad_token='<pad>',
                                       eos_token='</s>', unk_token='<unk>', bos_token='<s>').save_pretrained(tmp_path)
  pretrained = tokenizer_lib.load_tokenizer(str(tmp_path))
  assert isinstance(pretrained, tokenizer_lib.PretrainedTokenizer) and pretrained.eos_id == tok.eos_id
  text, junk = tok.encode('They will not cough'), tok.encode('next week.')
  for t in (tok, pretrained):
    assert t.decode(text) == 'They will not cough'
    assert t.decode(text + [tok.eos_id] + junk + [tok.pad_id]) == 'They will not cough'
    assert t.decode(text + [tok.eos_id] + [tok.pad_id] * 3) == 'They will not cough'
    assert t.decode([tok.eos_id] + junk) == ''
