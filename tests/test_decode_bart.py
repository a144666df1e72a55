"""Decoding BART / mBART (slt_jax/decode.py) against transformers' PyTorch `generate` on tiny random models.

(m)BART checkpoints force tokens: the first generated token is forced_bos_token_id (BART's <s>, mBART's target
language code) and the last one max_new_tokens allows is EOS (forced_eos_token_id). HF counts the forced BOS
as generated, in max_new_tokens and in the length penalty; we feed it as a decoder prefix and leave it out of
the output, so HF's tokens are [forced BOS] + ours. Greedy must give HF's tokens exactly, 4-beam search
(length penalty 1.0 and 0.6) HF's 4 hypotheses and their scores on all 20 random inputs.
"""
import numpy as np
import pytest
from flax import nnx

import hf_beam
from slt_jax import decode
from slt_jax.models import from_pretrained

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

V, ROWS, SRC, NEW = 96, 20, 9, 20   # vocab, random inputs, source length, max_new_tokens
PAD, BOS, EOS, LANG = 1, 0, 2, 5    # (m)BART's ids; LANG stands for an mBART language code
FAMILIES = ('bart', 'mbart')


def _checkpoint(family, path, seed=0):
  """A tiny (m)BART whose outputs depend on the input and end at varied lengths, with HF's forced tokens.

  Larger weights than the default init make the outputs input-dependent; final_logits_bias[EOS] puts EOS about
  one nat below the best token on average, so rows end after 1..19 tokens or run to max_new_tokens (where the
  forced EOS comes in). transformers 5 keeps forced_bos_token_id in the generation config only.
  """
  torch.manual_seed(seed)
  kw = dict(vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
            dropout=0.0, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, decoder_start_token_id=EOS)
  if family == 'bart':
    model = transformers.BartForConditionalGeneration(transformers.BartConfig(**kw))
  else:
    model = transformers.MBartForConditionalGeneration(transformers.MBartConfig(**kw, scale_embedding=True))
  model.eval()
  model.generation_config.forced_bos_token_id = BOS if family == 'bart' else LANG
  assert model.generation_config.forced_eos_token_id == EOS  # HF's (m)BART default
  with torch.no_grad():
    for p in model.parameters():
      if p.ndim == 2:
        p.normal_(0, 0.5)
    g = torch.Generator().manual_seed(seed + 1)
    x, y = torch.randint(3, V, (32, SRC), generator=g), torch.randint(3, V, (32, 12), generator=g)
    logits = model(input_ids=x, decoder_input_ids=y).logits
    model.final_logits_bias[0, EOS] += (logits.max(-1).values - logits[..., EOS]).mean() - 1.0
  model.save_pretrained(path)
  return model


@pytest.fixture(scope='module')
def models(tmp_path_factory):
  """family -> (HF model, our TextSeq2Seq) of the same tiny checkpoint."""
  root = tmp_path_factory.mktemp('decode_bart')
  out = {}
  for family in FAMILIES:
    hf = _checkpoint(family, str(root / family))
    out[family] = hf, decode.TextSeq2Seq(from_pretrained(str(root / family)))
  return out


@pytest.fixture(scope='module')
def inputs():
  """ROWS random sources, some right-padded: ids i32[ROWS, SRC], mask bool[ROWS, SRC]."""
  rs = np.random.RandomState(1)
  ids = rs.randint(3, V, (ROWS, SRC))
  mask = np.ones((ROWS, SRC), bool)
  for i, n in ((1, 4), (5, 6), (8, 2), (13, 7)):
    mask[i, n:] = False
  ids[~mask] = PAD
  return ids, mask


def _strip(row):
  """Tokens up to and including the first EOS (HF and we pad differently after it)."""
  row = [int(t) for t in row]
  return row[:row.index(EOS) + 1] if EOS in row else row


def _hf_generate(model, ids, mask, **kw):
  with torch.no_grad():
    out = model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask).long(),
                         max_new_tokens=NEW, do_sample=False, **kw)
  return [_strip(r[1:]) for r in out.numpy()]  # after the decoder start token


@nnx.jit(static_argnames=('num_beams', 'length_penalty'))
def _decode(model, ids, mask, num_beams, length_penalty):
  """Greedy tokens i32[B, NEW], or beam search's (tokens i32[B, K, NEW], scores f32[B, K])."""
  if num_beams == 1:
    return decode.greedy(model, ids, mask, NEW)
  return decode.beam_search(model, ids, mask, NEW, num_beams, length_penalty=length_penalty, return_all=True)


def _with_prefix(model, tokens):
  """Our tokens i32[..., NEW] -> (nested) lists of ids with the forced prefix put back, as HF returns them."""
  if tokens.ndim > 1:
    return [_with_prefix(model, t) for t in tokens]
  assert tokens[-1] == PAD  # the forced BOS's column stays pad
  return list(model.decoder_prefix[1:]) + _strip(tokens)


def _ours(model, ids, mask):
  """Greedy tokens, with the forced prefix put back."""
  out = np.asarray(_decode(model, ids, mask, 1, 1.0))
  assert out.shape == (ROWS, NEW)
  return _with_prefix(model, out)


@pytest.mark.parametrize('family', FAMILIES)
def test_forced_tokens_come_from_the_checkpoint(models, family):
  _, ours = models[family]
  assert ours.decoder_prefix == (EOS, BOS if family == 'bart' else LANG)
  assert ours.forced_eos


@pytest.mark.parametrize('family', FAMILIES)
def test_greedy_equals_hf(models, inputs, family):
  hf_model, ours = models[family]
  want = _hf_generate(hf_model, *inputs)
  assert _ours(ours, *inputs) == want
  lengths = [len(r) for r in want]
  assert len(set(lengths)) > 3 and NEW in lengths  # varied lengths, some cut by max_new_tokens (forced EOS)


@pytest.mark.parametrize('family', FAMILIES)
@pytest.mark.parametrize('length_penalty', [1.0, 0.6])
def test_beam_search_agrees_with_hf(models, inputs, family, length_penalty):
  """All 4 hypotheses of every row and their scores (hf_beam.assert_agree: no float32 ties on these inputs)."""
  hf_model, ours = models[family]
  want, want_scores, margins = hf_beam.generate(hf_model, *inputs, 4, length_penalty=length_penalty,
                                                max_new_tokens=NEW)
  want = [[_strip(h[1:]) for h in row] for row in want]  # after the decoder start token
  seqs, scores = _decode(ours, *inputs, 4, length_penalty)
  assert hf_beam.assert_agree(want, want_scores, margins, _with_prefix(ours, np.asarray(seqs)),
                              np.asarray(scores)) == []
  assert len({len(row[0]) for row in want}) > 2


def test_max_new_tokens_must_leave_room_after_the_forced_bos(models, inputs):
  _, ours = models['mbart']
  with pytest.raises(ValueError, match='forced'):
    decode.greedy(ours, *inputs, 1)
