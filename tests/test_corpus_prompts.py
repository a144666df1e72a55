"""Per-corpus prompts and mBART language codes (data.mixture.NAME.prompt / tgt_lang): one model, several corpora.

A row of corpus c (batch['corpus'] == c) computes what a single-prompt model with the same params and corpus
c's prompt computes: teacher forcing, padding-free token_logits and greedy decoding, for a decoder-only Llama
(prompt table before the poses) and an mBART (encoder prompt table, decoder prefix [start, language code]).
The input pipeline numbers each row's corpus; a short run trains, scores each corpus and translates --corpus.
"""
import csv
import os

import jax
import numpy as np
import pytest
from flax import nnx
from tokenizers import Tokenizer, models, pre_tokenizers
import transformers

from test_mixture import _config as _mixture_config  # pylint: disable=g-bad-import-order
from test_mixture import corpora  # pylint: disable=unused-import  (the fixture)
from slt_jax import decode, default_config, translate
from slt_jax.data import inputs
from slt_jax.models import slt
from slt_jax.train import step as step_lib
from slt_jax.train import trainer

K, C = 4, 3
WORDS = ['<pad>', '<s>', '</s>', '<unk>', '<|im_start|>', '<|im_end|>', 'user', 'assistant', 'de_DE', 'fr_XX',
         'translate', 'this', 'into', 'german', 'french'] + [f'w{i}' for i in range(17)]
PAD, BOS, EOS = 0, 1, 2
V = len(WORDS)  # 32
CORPUS = np.array([0, 1, 1], np.int32)  # the rows' corpora


def _tokenizer(directory, chat_template=False) -> str:
  """A word-level HF tokenizer with mBART language codes (and a Qwen-like chat template) in `directory`."""
  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token='<unk>'))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token='<pad>', bos_token='<s>',
                                              eos_token='</s>', unk_token='<unk>')
  if chat_template:
    fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|>"
                          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant{% endif %}")
  fast.save_pretrained(directory)
  return str(directory)


def _config(family, tokenizer, corpora=None, **model):
  """A tiny random-init model config; corpora: {name: mixture_corpus fields} (prompt / tgt_lang)."""
  config = default_config.get_config()
  config.model.family = family
  if family == 'llama':
    config.model.arch = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=8)
  else:
    config.model.arch = dict(vocab_size=V, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                             decoder_attention_heads=4, encoder_ffn_dim=32, decoder_ffn_dim=32,
                             max_position_embeddings=64, scale_embedding=True, decoder_start_token_id=EOS,
                             bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
  config.model.tokenizer = tokenizer
  config.model.pose.update(hidden=32, conv_layers=1, conv_stride=2, dropout=0.0)
  config.model.pose_encoder.update(num_layers=1, num_heads=2)
  config.model.update(model)
  for name, fields in (corpora or {}).items():
    config.data.mixture[name] = default_config.mixture_corpus(**fields)
  return config


def _build(config):
  return slt.build_model(config, V, K * C, nnx.Rngs(0))


def _batch(seed=0, frames=(20, 13, 7), labels=((16, 17, 18, EOS), (19, 20, EOS), (EOS,))):
  rng = np.random.default_rng(seed)
  t, l = max(frames), max(map(len, labels))
  ids = np.full((len(labels), l), PAD, np.int32)
  for i, row in enumerate(labels):
    ids[i, :len(row)] = row
  return dict(poses=rng.normal(size=(len(frames), t, K, C)).astype(np.float32),
              pose_mask=np.arange(t)[None] < np.asarray(frames)[:, None], labels=ids, label_mask=ids != PAD)


def _same_params(model, single):
  """single with model's params (the per-corpus tables are not params: the two have the same ones)."""
  nnx.update(single, nnx.state(model, nnx.Param))
  return single


def _check_rows_equal_single_prompt_models(model, singles, max_new=6):
  """model's rows of corpus c == singles[c]'s: teacher forcing, token_logits, greedy decoding."""
  batch = _batch()
  logits = np.asarray(model({**batch, 'corpus': CORPUS}))
  tokens = np.asarray(decode.greedy(model, batch['poses'], batch['pose_mask'], max_new, corpus=CORPUS))
  for c, single in enumerate(singles):
    rows = CORPUS == c
    single = _same_params(model, single)
    np.testing.assert_allclose(logits[rows], np.asarray(single(batch))[rows], atol=2e-5, rtol=1e-5)
    np.testing.assert_array_equal(tokens[rows], np.asarray(decode.greedy(single, batch['poses'],
                                                                         batch['pose_mask'], max_new))[rows])
  # Padding-free: the target rows are the padded forward's real label positions, in row order.
  counts = step_lib.padding_free_counts(batch, 4)
  free, labels, mask = model.token_logits({**batch, 'corpus': CORPUS}, counts)
  mask = np.asarray(mask)
  np.testing.assert_allclose(np.asarray(free)[mask], logits[batch['label_mask']], atol=2e-5, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(labels)[mask], batch['labels'][batch['label_mask']])


@pytest.mark.parametrize('chat_template', [False, True])
def test_causal_rows_compute_their_corpus_prompt(tmp_path, chat_template):
  tok = _tokenizer(tmp_path / 'tok', chat_template)
  prompts = ['translate into german', 'french']  # different lengths: the shorter is left-padded
  model = _build(_config('llama', tok, {'de': dict(prompt=prompts[0]), 'fr': dict(prompt=prompts[1])},
                         chat_template=chat_template))
  assert model.prefix_table is not None and model.prefix_table.width == len(model.prefix_table.rows[0])
  assert model.suffix_table is None  # the same text after the poses in both: no table
  singles = [_build(_config('llama', tok, prompt=p, chat_template=chat_template)) for p in prompts]
  _check_rows_equal_single_prompt_models(model, singles)


def test_mbart_rows_get_their_language_code_and_prompt(tmp_path):
  tok = _tokenizer(tmp_path / 'tok')
  corpora = {'de': dict(tgt_lang='de_DE', prompt='translate into german'), 'fr': dict(tgt_lang='fr_XX')}
  model = _build(_config('mbart', tok, corpora))
  assert model.prefix_table.rows == ((EOS, WORDS.index('de_DE')), (EOS, WORDS.index('fr_XX')))
  assert model.prompt_table.rows == ((10, 12, 13), ())
  singles = [_build(_config('mbart', tok, tgt_lang='de_DE', prompt='translate into german')),
             _build(_config('mbart', tok, tgt_lang='fr_XX'))]
  _check_rows_equal_single_prompt_models(model, singles)


def test_one_shared_prompt_keeps_the_single_prompt_model(tmp_path):
  """Corpora with the same prompt (the demo's signer groups): no table, the plain tuple path."""
  tok = _tokenizer(tmp_path / 'tok')
  model = _build(_config('llama', tok, {'a': {}, 'b': {}}, prompt='translate this'))
  assert model.prefix_table is None and model.prefix_ids == (BOS, 10, 11)
  model(_batch())  # a hand-made batch without 'corpus'


# --- errors ----------------------------------------------------------------------------------------------

def test_errors(tmp_path):
  tok = _tokenizer(tmp_path / 'tok')
  model = _build(_config('llama', tok, {'de': dict(prompt='german'), 'fr': dict(prompt='french')}))
  with pytest.raises(ValueError, match=r"differs between the corpora \(2 of them\): each row needs its corpus"):
    model(_batch())
  with pytest.raises(ValueError, match='differ in length'):  # [start, de_DE] and [start]
    _build(_config('mbart', tok, {'de': dict(tgt_lang='de_DE'), 'fr': {}}))
  with pytest.raises(ValueError, match=r"data.mixture.fr.tgt_lang='xx_YY' is not a token of the tokenizer"):
    _build(_config('mbart', tok, {'de': dict(tgt_lang='de_DE'), 'fr': dict(tgt_lang='xx_YY')}))
  config = _config('t5', tok, {'de': dict(tgt_lang='de_DE'), 'fr': {}})
  with pytest.raises(default_config.ConfigError, match=r"data.mixture.de.tgt_lang='de_DE'.*the model is 't5'"):
    default_config._validate_corpus_langs(config)  # pylint: disable=protected-access
  config = _config('llama', tok, {'de': dict(prompt='german'), 'fr': dict(prompt='french')})
  with pytest.raises(ValueError, match=r"--corpus='it' is not a corpus of this run: its corpora are \['de', 'fr'\]"):
    translate.corpus_number(config, 'it')
  with pytest.raises(ValueError, match='different prompts: say which one the inputs are with --corpus=NAME'):
    translate.corpus_number(config, None)
  assert translate.corpus_number(config, 'fr') == 1
  assert translate.corpus_number(_config('llama', tok, {'a': {}, 'b': {}}), None) == 0


# --- the pipeline and a run -------------------------------------------------------------------------------

def test_pipeline_batches_carry_each_rows_corpus(corpora, tmp_path):
  config = _mixture_config(corpora)
  _, splits = inputs.make_inputs(config, str(tmp_path), splits=['train', 'val'])
  names = sorted(corpora)
  seen = set()
  for split, count in (('train', 12), ('val', None)):
    data = splits[split]
    it = data.iterator()
    for _ in range(count or data.num_batches):
      batch = next(it)
      real = batch['index'] >= 0
      want = [names.index(data.rows[i].uid.split('/')[0]) for i in batch['index'][real]]
      np.testing.assert_array_equal(batch['corpus'][real], want)
      assert (batch['corpus'][~real] == 0).all() and batch['corpus'].dtype == np.int32
      seen.update(want)
  assert seen == {0, 1}


def test_run_with_per_corpus_prompts_trains_scores_and_translates(corpora, tmp_path):
  workdir = str(tmp_path / 'run')
  config = _mixture_config(corpora)
  config.model.family = 'llama'
  config.model.arch = dict(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=2, head_dim=16)
  config.model.pose_encoder.update(num_layers=1, num_heads=2)
  config.data.mixture.a.prompt = 'one'
  config.data.mixture.b.prompt = 'two words'
  default_config.validate(config)
  results = trainer.train_and_evaluate(config, workdir)
  assert set(results['test']['corpora']) == {'a', 'b'}
  pose_dir = corpora['b']['pose_dir']
  with open(corpora['b']['test'], encoding='utf-8', newline='') as f:
    uid = next(csv.DictReader(f))['uid']
  pose = os.path.join(pose_dir, f'{uid}.pose')
  with pytest.raises(ValueError, match='--corpus=NAME'):
    translate.translate(config, workdir, [pose])
  out = {c: translate.translate(config, workdir, [pose], corpus=c)[0][1] for c in ('a', 'b')}
  with open(os.path.join(workdir, 'predictions_test.tsv'), encoding='utf-8', newline='') as f:
    predicted = {r['uid']: r['hypothesis'] for r in csv.DictReader(f, delimiter='\t')}
  assert out['b'] == predicted[f'b/{uid}']  # translate as corpus b == the run's decoding of b's row
