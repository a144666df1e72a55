"""Tokenizers behind one small interface.

  tok = get_tokenizer(config, workdir)      # pretrained dir, or trained on the training texts
  ids = tok.encode('a sentence')           # list[int], no special tokens
  tok.decode(ids)                          # str up to the first EOS, special tokens skipped
  tok.pad_id, tok.eos_id, tok.bos_id, tok.decoder_start_id, tok.vocab_size
  tok.save(directory)

Two implementations:
- `TrainedTokenizer`: a HF `tokenizers` WordLevel or BPE model trained on the fly from the training
  texts, with specials <pad>=0 </s>=1 <unk>=2 <s>=3 (T5-like ids; decoder start = <s>). Saved as
  `dir/tokenizer.json` + a `tokenizer_config.json` that transformers' AutoTokenizer also reads.
  Text is split on spaces (kept as '▁', SentencePiece style) and punctuation, so decode(encode(s))
  gives `s` back up to whitespace runs and (NFKC) normalisation.
- `PretrainedTokenizer`: a checkpoint directory through transformers' AutoTokenizer (T5: pad is the
  decoder start; the decoder start comes from the directory's config.json when it has one).
"""
import json
import os
import string
from typing import Iterable, Protocol

from absl import logging
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from slt_jax import run_config

PAD, EOS, UNK, BOS = '<pad>', '</s>', '<unk>', '<s>'
SPECIALS = (PAD, EOS, UNK, BOS)
_MARKER = 'slt_jax_tokenizer'  # key in tokenizer_config.json marking our own tokenizers
# Printable ASCII in the BPE alphabet: unseen letters and signs in new text still encode.
_BPE_ALPHABET = sorted(set(string.ascii_letters + string.digits + string.punctuation + '▁'))


class Tokenizer(Protocol):
  pad_id: int
  eos_id: int
  bos_id: int | None
  decoder_start_id: int
  vocab_size: int

  def encode(self, text: str) -> list[int]: ...
  def decode(self, ids: Iterable[int]) -> str: ...
  def save(self, directory: str) -> None: ...


def until_eos(ids: Iterable[int], eos_id: int) -> list[int]:
  """ids (a decoded row, labels) up to the first EOS, without it: what follows EOS is not text (the decoder's
  pad filler, or whatever a model that missed its stop token went on with). Every Tokenizer.decode cuts here,
  so the trainer's evaluation, translate and the logged examples all see the same text."""
  out = []
  for i in ids:
    if int(i) == eos_id:
      break
    out.append(int(i))
  return out


class TrainedTokenizer:
  """A `tokenizers.Tokenizer` with our four specials."""

  def __init__(self, tok: HFTokenizer, kind: str = 'bpe'):
    self._tok = tok
    self.kind = kind
    ids = [tok.token_to_id(t) for t in SPECIALS]
    if None in ids:
      raise ValueError(f'tokenizer lacks special tokens {SPECIALS}: got ids {ids}')
    self.pad_id, self.eos_id, self.unk_id, self.bos_id = ids
    self.decoder_start_id = self.bos_id
    self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
    self._special_ids = frozenset(ids)

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Iterable[int]) -> str:
    ids = [i for i in until_eos(ids, self.eos_id) if i not in self._special_ids]
    return self._tok.decode(ids, skip_special_tokens=True).strip()

  def save(self, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    self._tok.save(os.path.join(directory, 'tokenizer.json'))
    cfg = {'tokenizer_class': 'PreTrainedTokenizerFast', 'pad_token': PAD, 'eos_token': EOS,
           'unk_token': UNK, 'bos_token': BOS, 'model_max_length': 1 << 30,
           _MARKER: {'kind': self.kind}}
    with open(os.path.join(directory, 'tokenizer_config.json'), 'w') as f:
      json.dump(cfg, f, indent=1)

  def learned_nothing(self) -> bool:
    """True for a tokenizer trained on no text: only the specials (and BPE's initial alphabet), no merge."""
    model = json.loads(self._tok.to_str())['model']
    return not model.get('merges') and set(model['vocab']) <= {*SPECIALS, *_BPE_ALPHABET}

  @classmethod
  def load(cls, directory: str) -> 'TrainedTokenizer':
    with open(os.path.join(directory, 'tokenizer_config.json')) as f:
      kind = json.load(f).get(_MARKER, {}).get('kind', 'bpe')
    return cls(HFTokenizer.from_file(os.path.join(directory, 'tokenizer.json')), kind)


def train_tokenizer(texts: Iterable[str], kind: str = 'bpe', vocab_size: int = 2000,
                    lowercase: bool = False, min_frequency: int = 1) -> TrainedTokenizer:
  """Trains a WordLevel ('wordlevel') or BPE ('bpe') tokenizer on `texts`."""
  if kind == 'wordlevel':
    tok = HFTokenizer(models.WordLevel(unk_token=UNK))
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=list(SPECIALS))
  elif kind == 'bpe':
    tok = HFTokenizer(models.BPE(unk_token=UNK))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIALS), initial_alphabet=_BPE_ALPHABET,
                                  show_progress=False)
  else:
    raise ValueError(f"tokenizer kind must be 'wordlevel' or 'bpe', got {kind!r}")
  norms = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
  tok.normalizer = normalizers.Sequence(norms)
  # Metaspace keeps word starts as '▁' so decoding restores spaces exactly; Punctuation splits
  # "word," into "▁word" + "," (a smaller vocabulary for the same text).
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Metaspace(replacement='▁', prepend_scheme='always'),
      pre_tokenizers.Punctuation()])
  tok.decoder = decoders.Metaspace(replacement='▁', prepend_scheme='always')
  tok.train_from_iterator(list(texts), trainer=trainer)
  return TrainedTokenizer(tok, kind)


class PretrainedTokenizer:
  """transformers' AutoTokenizer of a checkpoint directory."""

  def __init__(self, directory: str):
    from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
    self._tok = AutoTokenizer.from_pretrained(directory)
    self.directory = directory
    self.pad_id = self._tok.pad_token_id
    self.eos_id = self._tok.eos_token_id
    self.bos_id = self._tok.bos_token_id
    if self.pad_id is None:  # decoder-only checkpoints often lack a pad token: pad with EOS
      self.pad_id = self.eos_id
    start = None
    config_path = os.path.join(directory, 'config.json')
    if os.path.exists(config_path):
      with open(config_path) as f:
        start = json.load(f).get('decoder_start_token_id')
    # T5 has no BOS and starts decoding with pad; BART-like models start with their config's id.
    self.decoder_start_id = start if start is not None else (
        self.bos_id if self.bos_id is not None else self.pad_id)
    self.vocab_size = len(self._tok)

  @property
  def hf_tokenizer(self):
    return self._tok

  def encode(self, text: str) -> list[int]:
    return list(self._tok(text, add_special_tokens=False)['input_ids'])

  def decode(self, ids: Iterable[int]) -> str:
    return self._tok.decode(until_eos(ids, self.eos_id), skip_special_tokens=True).strip()

  def save(self, directory: str) -> None:
    self._tok.save_pretrained(directory)


def load_tokenizer(directory: str) -> Tokenizer:
  """Our saved tokenizer (fast path, no transformers import) or any HF tokenizer directory."""
  cfg_path = os.path.join(directory, 'tokenizer_config.json')
  if os.path.exists(cfg_path):
    with open(cfg_path) as f:
      if _MARKER in json.load(f):
        return TrainedTokenizer.load(directory)
  return PretrainedTokenizer(directory)


def get_tokenizer(config, workdir: str, texts: Iterable[str] | None = None) -> Tokenizer:
  """The run's tokenizer, in this order of precedence:

  1. `config.model.tokenizer` (a directory), then with `config.training.init_from` the earlier run's (whose
     embeddings were trained on its ids), 2. `config.model.name` (the checkpoint's),
  3. `workdir/tokenizer` (trained by an earlier run of this workdir: resuming keeps the ids), unless it
     learnt nothing (left by a run whose data had no usable row, before that was checked up front),
  4. trained now on `texts` (default: the text column of `config.data.train_path`) with
     `config.data.trained_tokenizer` (kind, vocab_size, lowercase) and saved to `workdir/tokenizer`;
     no texts is an error, and nothing is saved.
  """
  init_from = config.training.get('init_from', '') if 'training' in config else ''
  if init_from and not config.model.get('tokenizer', ''):
    return _earlier_run_tokenizer(init_from, workdir)
  for directory in (config.model.get('tokenizer', ''), config.model.get('name', '')):
    if directory:
      return load_tokenizer(directory)
  saved = os.path.join(workdir, 'tokenizer')
  if os.path.exists(os.path.join(saved, 'tokenizer.json')):
    tok = load_tokenizer(saved)
    if not (isinstance(tok, TrainedTokenizer) and tok.learned_nothing()):
      return tok
    # Left by a run whose data had no usable row: no model was trained with it (that run stopped), so
    # training it again on the texts at hand loses nothing.
    logging.warning('%s has learnt no token from any text (a run that found no usable rows wrote it): '
                    'training it again.', saved)
  if texts is None:
    from slt_jax.data import sources  # pylint: disable=g-import-not-at-top
    rows, _ = sources.read_csv(config.data.train_path, config.data.pose_dir,
                               config.data.get('text_column', 'text'))
    texts = [r.text for r in rows]
  texts = list(texts)
  if not texts:  # never write a tokenizer of nothing: a corrected rerun would reuse it
    raise ValueError(f'no training texts to train a tokenizer on (data.train_path={config.data.train_path!r}, '
                     f'data.pose_dir={config.data.pose_dir!r}) and no usable tokenizer in {saved} from an earlier '
                     'run: check the data paths or give model.tokenizer (to translate, train in this workdir '
                     'first). Nothing was written.')
  tcfg = config.data.get('trained_tokenizer', None)
  tok = train_tokenizer(texts, kind=tcfg.kind if tcfg else 'bpe',
                        vocab_size=tcfg.vocab_size if tcfg else 2000,
                        lowercase=tcfg.lowercase if tcfg else False)
  tok.save(saved)
  return tok


def tokenizer_dir(workdir: str) -> str:
  """The tokenizer directory of an earlier run (training.init_from): WORKDIR/tokenizer (trained on its texts), else its config's
  model.tokenizer or model.name (a pretrained one), else that of the run it was initialised from."""
  saved = os.path.join(workdir, 'tokenizer')
  if os.path.exists(os.path.join(saved, 'tokenizer.json')):
    return saved
  config = run_config.load(workdir)
  if config is None:
    raise FileNotFoundError(f'training.init_from={workdir}: no {run_config.FILE} there; init_from names the workdir '
                            'of an earlier slt_jax training run')
  m, t = config.get('model', {}), config.get('training', {})
  if m.get('tokenizer') or m.get('name'):
    return m.get('tokenizer') or m.get('name')
  if t.get('init_from'):
    return tokenizer_dir(t['init_from'])
  raise FileNotFoundError(f'training.init_from={workdir}: that run has no tokenizer ({saved} is missing); give '
                          'model.tokenizer')


def _earlier_run_tokenizer(init_from: str, workdir: str) -> Tokenizer:
  """training.init_from's tokenizer (tokenizer_dir: the one trained there, or its pretrained one). A trained one is
  also saved to WORKDIR/tokenizer, which this run falls back to once the earlier workdir is gone."""
  saved = os.path.join(workdir, 'tokenizer')
  try:
    tok = load_tokenizer(tokenizer_dir(init_from))
  except FileNotFoundError:
    if not os.path.exists(os.path.join(saved, 'tokenizer.json')):
      raise
    logging.warning('training.init_from=%s is gone: using its tokenizer as copied to %s', init_from, saved)
    return load_tokenizer(saved)
  if isinstance(tok, TrainedTokenizer) and not os.path.exists(os.path.join(saved, 'tokenizer.json')):
    tok.save(saved)
  logging.info('Tokenizer of training.init_from=%s (%d ids)', init_from, tok.vocab_size)
  return tok
