"""Decoding (slt_jax/decode.py) against transformers' PyTorch `generate` on tiny random checkpoints (CPU).

Greedy must give HF's tokens exactly (a T5 and two decoder-only LMs); beam search (4 beams, several length
penalties / early_stopping values) must return HF's 4 hypotheses token for token with HF's scores on every
random input, except where HF's stop decision was a tie at float32 resolution (tests/hf_beam.py); sampling
must keep to top-k / the nucleus and be reproducible for a key. The SLT models (poses in) decode through the
same functions under jit.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

import hf_beam
import tiny_decoders
import tiny_t5
from slt_jax import decode, default_config
from slt_jax.models import from_pretrained, slt

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

V, ROWS, SRC, NEW = 96, 20, 9, 20   # vocab, random inputs, source length, max_new_tokens
PAD, EOS, START = 0, 1, 0


def _strip(row, eos=EOS):
  """Tokens up to and including the first EOS (HF and we pad differently after it)."""
  row = [int(t) for t in row]
  return row[:row.index(eos) + 1] if eos in row else row


def _t5_checkpoint(path, seed=0):
  """A tiny T5 v1.1 whose outputs depend on the input and end at varied lengths.

  Default init gives near-constant outputs that never stop; larger weights make them input-dependent (the
  layer norms are randomised too, tiny_t5.perturb_norms), and the EOS row of the lm_head is set along the
  mean decoder state so EOS becomes likely after a few tokens (lengths 1..20 on the test inputs, so the
  beam-stopping rules all come into play).
  """
  torch.manual_seed(seed)
  cfg = transformers.T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                              num_heads=4, dropout_rate=0.0, feed_forward_proj='gated-gelu',
                              tie_word_embeddings=False, decoder_start_token_id=START, pad_token_id=PAD,
                              eos_token_id=EOS)
  model = transformers.T5ForConditionalGeneration(cfg).eval()
  with torch.no_grad():
    for p in model.parameters():
      if p.ndim == 2:
        p.normal_(0, 0.5)
    tiny_t5.perturb_norms(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x, y = torch.randint(2, V, (32, SRC), generator=g), torch.randint(2, V, (32, 12), generator=g)
    h = model(input_ids=x, decoder_input_ids=y, output_hidden_states=True).decoder_hidden_states[-1]
    h = h.reshape(-1, cfg.d_model)
    mu = h.mean(0)
    top = (h @ model.lm_head.weight.T).max(-1).values.mean()
    model.lm_head.weight[EOS] = mu / (h @ mu).mean() * (top - 4.5)
  model.save_pretrained(path)
  return model


@pytest.fixture(scope='module')
def t5(tmp_path_factory):
  """(HF model, our TextSeq2Seq) of the same tiny checkpoint."""
  path = str(tmp_path_factory.mktemp('decode') / 't5')
  hf = _t5_checkpoint(path)
  return hf, decode.TextSeq2Seq(from_pretrained(path))


@pytest.fixture(scope='module')
def inputs():
  """ROWS random sources, some right-padded: ids i32[ROWS, SRC], mask bool[ROWS, SRC]."""
  rs = np.random.RandomState(1)
  ids = rs.randint(2, V, (ROWS, SRC))
  mask = np.ones((ROWS, SRC), bool)
  for i, n in ((1, 4), (5, 6), (8, 2), (13, 7)):
    mask[i, n:] = False
  ids[~mask] = PAD
  return ids, mask


def _hf_generate(model, ids, mask, prompt_len=1, eos=EOS, **kw):
  with torch.no_grad():
    out = model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask).long(), **kw)
  return [_strip(r[prompt_len:], eos) for r in out.numpy()]


def _decode_config(**fields):
  """config.decode with these fields changed."""
  config = default_config.get_config().decode
  config.update(**fields)
  return config


@nnx.jit(static_argnames=('num_beams', 'length_penalty', 'early_stopping'))
def _beam(model, ids, mask, num_beams, length_penalty, early_stopping):
  return decode.beam_search(model, ids, mask, NEW, num_beams, length_penalty=length_penalty,
                            early_stopping=early_stopping, return_all=True)


@nnx.jit
def _greedy(model, ids, mask):
  return decode.generate(model, ids, mask, _decode_config(max_new_tokens=NEW))


@nnx.jit
def _teacher_forced(lm, ids, mask, tokens):
  """Logits f32[B, NEW, V] of the text model fed [START] + tokens[:, :-1]."""
  dec_in = jnp.concatenate([jnp.full((tokens.shape[0], 1), START), tokens[:, :-1]], axis=1)
  return lm(input_ids=ids, attention_mask=mask, decoder_input_ids=dec_in)


@nnx.jit(static_argnames=('temperature', 'top_k', 'top_p'))
def _sample(model, ids, mask, key, temperature=1.0, top_k=0, top_p=1.0):
  config = _decode_config(max_new_tokens=NEW, do_sample=True, temperature=temperature, top_k=top_k,
                          top_p=top_p)
  return decode.generate(model, ids, mask, config, key)


# --- greedy -----------------------------------------------------------------------------------------

def test_greedy_t5_equals_hf(t5, inputs):
  hf_model, ours = t5
  ids, mask = inputs
  want = _hf_generate(hf_model, ids, mask, do_sample=False, max_new_tokens=NEW)
  got = [_strip(r) for r in np.asarray(_greedy(ours, ids, mask))]
  assert got == want
  assert len({len(r) for r in want}) > 3  # the outputs end at varied lengths (the test means something)


@pytest.mark.parametrize('family', ['llama3', 'qwen2'])
def test_decoder_only_equals_hf(family, tmp_path):
  path = tiny_decoders.make_checkpoint(family, str(tmp_path))
  hf_model = tiny_decoders.load_hf(path)
  ours = decode.TextCausal(from_pretrained(path))
  rs = np.random.RandomState(0)
  ids = rs.randint(3, tiny_decoders.VOCAB, (4, 10))
  mask = np.ones_like(ids, bool)
  mask[1, :4] = mask[3, :7] = False  # left padding, as HF's generate wants for decoder-only models
  ids[~mask] = 0
  want = _hf_generate(hf_model, ids, mask, prompt_len=10, eos=2, do_sample=False, max_new_tokens=12)
  got = [_strip(r, eos=2) for r in np.asarray(nnx.jit(decode.greedy, static_argnums=3)(ours, ids, mask, 12))]
  assert got == want
  if family == 'qwen2':  # beam search on one decoder-only family (the prompt length is not counted)
    want = _hf_generate(hf_model, ids, mask, prompt_len=10, eos=2, do_sample=False, num_beams=4,
                        length_penalty=0.6, max_new_tokens=12)
    beam = nnx.jit(lambda m, x, y: decode.beam_search(m, x, y, 12, 4, length_penalty=0.6))
    assert [_strip(r, eos=2) for r in np.asarray(beam(ours, ids, mask))] == want


# --- beam search ------------------------------------------------------------------------------------

@pytest.mark.parametrize('length_penalty,early_stopping', [(1.0, False), (0.6, False), (1.0, True),
                                                           (2.0, 'never')])
def test_beam_search_agrees_with_hf(t5, inputs, length_penalty, early_stopping):
  """All 4 hypotheses of every row and their scores, except where HF's stop decision was a float32 tie."""
  hf_model, ours = t5
  ids, mask = inputs
  want, want_scores, margins = hf_beam.generate(hf_model, ids, mask, 4, length_penalty=length_penalty,
                                                early_stopping=early_stopping, max_new_tokens=NEW)
  seqs, scores = _beam(ours, ids, mask, 4, length_penalty, early_stopping)
  want = [[_strip(h[1:]) for h in row] for row in want]
  got = [[_strip(h) for h in row] for row in np.asarray(seqs)]
  # (length_penalty=1.0, early_stopping=False: HF stops row 2 by a 1e-7 tie, hf_beam's docstring.)
  hf_beam.assert_agree(want, want_scores, margins, got, np.asarray(scores))
  assert len({len(row[0]) for row in want}) > 3


def test_beam_scores_are_length_penalised_log_probs(t5, inputs):
  """Each returned hypothesis' score = sum of its token log-probs (teacher forced) / len ** length_penalty."""
  _, ours = t5
  ids, mask = inputs
  lp = 0.6
  seqs, scores = _beam(ours, ids, mask, 4, lp, False)
  seqs, scores = np.asarray(seqs), np.asarray(scores)
  assert np.all(np.diff(scores, axis=1) <= 0)  # best first
  flat = seqs.reshape(-1, NEW)
  logp = jax.nn.log_softmax(_teacher_forced(ours.lm, np.repeat(ids, 4, 0), np.repeat(mask, 4, 0), flat))
  tok_logp = np.take_along_axis(np.asarray(logp), flat[..., None], -1)[..., 0]
  for row, lps, score in zip(flat, tok_logp, scores.reshape(-1)):
    n = len(_strip(row))
    np.testing.assert_allclose(lps[:n].sum() / n ** lp, score, rtol=1e-4, atol=1e-4)


# --- sampling ---------------------------------------------------------------------------------------

def test_warp_logits_top_k_top_p():
  logits = jnp.log(jnp.asarray([[0.05, 0.4, 0.1, 0.3, 0.15]]))
  kept = lambda **kw: np.isfinite(np.asarray(decode.warp_logits(logits, **kw)))[0].tolist()
  assert kept(top_k=2) == [False, True, False, True, False]
  assert kept(top_p=0.7) == [False, True, False, True, False]    # 0.4 + 0.3 reaches 0.7
  assert kept(top_p=0.71) == [False, True, False, True, True]    # needs the 0.15 as well
  assert kept(top_p=0.1) == [False, True, False, False, False]   # at least the most likely token
  assert kept(top_k=3, top_p=0.6) == [False, True, False, True, False]
  assert sum(kept(temperature=0.5)) == 5


WARPS = [dict(top_k=3), dict(top_p=0.6, temperature=0.7)]


@pytest.mark.parametrize('warp', WARPS)
def test_sampling_stays_inside_top_k_and_nucleus(t5, inputs, warp):
  """Every drawn token (up to EOS) is inside the top-k / nucleus of the logits that drew it."""
  _, ours = t5
  ids, mask = inputs
  for seed in range(3):
    tokens = np.asarray(_sample(ours, ids, mask, jax.random.key(seed), **warp))
    allowed = np.isfinite(np.asarray(decode.warp_logits(_teacher_forced(ours.lm, ids, mask, tokens), **warp)))
    for row, ok in zip(tokens, allowed):
      n = len(_strip(row))
      assert ok[np.arange(n), row[:n]].all()
      assert (row[n:] == PAD).all()


def test_sampling_is_reproducible_for_a_key(t5, inputs):
  _, ours = t5
  ids, mask = inputs
  a, b, c = (np.asarray(_sample(ours, ids, mask, jax.random.key(s), **WARPS[1])) for s in (7, 7, 8))
  np.testing.assert_array_equal(a, b)
  assert (a != c).any()
  # top_k=1 leaves one token: sampling is greedy decoding.
  np.testing.assert_array_equal(np.asarray(_sample(ours, ids, mask, jax.random.key(0), top_k=1)),
                                np.asarray(_greedy(ours, ids, mask)))


def test_beam_sampling_runs_and_is_reproducible(t5, inputs):
  _, ours = t5
  ids, mask = inputs
  run = nnx.jit(lambda m, key: decode.beam_search(m, ids, mask, NEW, 4, rng=key, top_k=5))
  a, b = np.asarray(run(ours, jax.random.key(3))), np.asarray(run(ours, jax.random.key(3)))
  np.testing.assert_array_equal(a, b)
  assert ((a >= 0) & (a < V)).all()


# --- the entry point on SLT models (poses in) -----------------------------------------------------

def test_generate_on_seq2seq_slt_under_jit():
  config = default_config.get_config()
  config.model.arch.update(d_model=16, d_kv=4, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=4)
  config.model.pose.update(hidden=16, conv_layers=1, conv_stride=2)
  config.decode.max_new_tokens = 8
  model = slt.build_model(config, 40, 5 * 3, rngs=nnx.Rngs(params=0))
  rs = np.random.RandomState(0)
  poses = jnp.asarray(rs.randn(3, 12, 5, 3), jnp.float32)
  pose_mask = jnp.asarray(np.arange(12)[None] < np.array([12, 7, 4])[:, None])
  run = lambda dc: nnx.jit(lambda m, p, pm, key: decode.generate(m, p, pm, dc, key))(
      model, poses, pose_mask, jax.random.key(0))
  # (sampling goes through generate in the tests above)
  for dc in (config.decode, _decode_config(max_new_tokens=8, num_beams=3, length_penalty=0.6)):
    out = np.asarray(run(dc))
    assert out.shape == (3, 8) and out.dtype == np.int32 and ((out >= 0) & (out < 40)).all()
    for row in out:  # pad after the first EOS
      n = len(_strip(row, model.eos_id))
      assert (row[n:] == model.pad_id).all()
  with pytest.raises(ValueError, match='PRNG'):
    decode.generate(model, poses, pose_mask, _decode_config(max_new_tokens=8, do_sample=True))
  with pytest.raises(ValueError, match='early_stopping'):
    decode.generate(model, poses, pose_mask, _decode_config(max_new_tokens=8, num_beams=2,
                                                            early_stopping='sometimes'))


def test_decode_config_fields_exist():
  dc = default_config.get_config().decode
  assert isinstance(dc, ml_collections.ConfigDict)
  assert {'max_new_tokens', 'num_beams', 'length_penalty', 'early_stopping', 'do_sample', 'temperature',
          'top_k', 'top_p'} <= set(dc.keys())
