"""Tokenizers: trained on the fly (WordLevel, BPE), save/load, HF AutoTokenizer compatibility."""
import ml_collections
import pytest

from slt_jax.data import tokenizer as tok_lib

TEXTS = ['On Lanzarote for example, there is a bad water shortage.',
         'I thought about all the pressured people standing at the boarder.',
         "The cat had problems with it's kidneys and heart.",
         'Why am I deaf?', 'Oh I don’t know.', 'Chicken soup/']


@pytest.mark.parametrize('kind', ['wordlevel', 'bpe'])
def test_round_trip_and_specials(kind, tmp_path):
  tok = tok_lib.train_tokenizer(TEXTS, kind=kind, vocab_size=200)
  assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.decoder_start_id) == (0, 1, 3, 3)
  for text in TEXTS:
    ids = tok.encode(text)
    assert ids and all(i > 3 for i in ids)  # no special tokens added
    assert tok.decode(ids) == text
    assert tok.decode(ids + [tok.eos_id, tok.pad_id, tok.pad_id]) == text
  assert max(max(tok.encode(t)) for t in TEXTS) < tok.vocab_size
  tok.save(str(tmp_path))
  again = tok_lib.load_tokenizer(str(tmp_path))
  assert isinstance(again, tok_lib.TrainedTokenizer)
  assert [again.encode(t) for t in TEXTS] == [tok.encode(t) for t in TEXTS]
  assert again.vocab_size == tok.vocab_size


def test_bpe_encodes_unseen_words():
  tok = tok_lib.train_tokenizer(TEXTS, kind='bpe', vocab_size=200)
  assert tok.decode(tok.encode('Zebras quickly jump!')) == 'Zebras quickly jump!'


def test_saved_tokenizer_loads_with_transformers(tmp_path):
  tok = tok_lib.train_tokenizer(TEXTS, kind='bpe', vocab_size=200)
  tok.save(str(tmp_path))
  hf = tok_lib.PretrainedTokenizer(str(tmp_path))
  assert (hf.pad_id, hf.eos_id, hf.bos_id) == (tok.pad_id, tok.eos_id, tok.bos_id)
  assert hf.decoder_start_id == tok.bos_id
  for text in TEXTS:
    assert hf.encode(text) == tok.encode(text)
    assert hf.decode(tok.encode(text) + [tok.eos_id]) == text


def test_get_tokenizer_trains_once_then_reloads(tmp_path):
  config = ml_collections.ConfigDict({
      'model': {'tokenizer': '', 'name': ''},
      'data': {'trained_tokenizer': {'kind': 'wordlevel', 'vocab_size': 100, 'lowercase': True}}})
  tok = tok_lib.get_tokenizer(config, str(tmp_path), texts=TEXTS)
  assert (tmp_path / 'tokenizer' / 'tokenizer.json').exists()
  assert tok.decode(tok.encode('Why am I deaf?')) == 'why am i deaf?'
  again = tok_lib.get_tokenizer(config, str(tmp_path), texts=['other texts entirely'])
  assert again.encode('why am i deaf?') == tok.encode('why am i deaf?')
