"""Autoregressive decoding over the models' incremental interface, jitted with `lax.while_loop`.

A model (slt_jax.models.contract.DecodingModel) exposes `start_decode(poses, pose_mask, max_new_tokens) -> (logits f32[B, V], state)` and
`decode_step(state, tokens i32[B]) -> (logits, state)`; the state's leaves are batch-first (beam search
repeats and gathers them along axis 0), plus `eos_id`, `pad_id`, `vocab_size`. No tensorflow here.

Forced tokens, counted the way HF `generate` counts them (optional attributes of the model):
  decoder_prefix: an encoder-decoder's tokens fed before the first generated one. Those after the first (the
    decoder start token) are forced tokens (BART's <s>, mBART's language code: HF's forced_bos_token_id):
    HF generates them, so they count towards max_new_tokens and towards the length in the length penalty.
    Our outputs leave them out (they are known), so K forced tokens leave max_new_tokens - K to generate.
  forced_eos: HF's forced_eos_token_id (set in (m)BART checkpoints): the last token max_new_tokens allows
    is EOS (log-probability 0 in beam scores) unless the row ended before.

  tokens = generate(model, poses, pose_mask, config.decode, rng)   # i32[B, max_new_tokens], pad after EOS
  tokens = generate(model, poses, pose_mask, config.decode, corpus=batch['corpus'])  # per-corpus prompts

greedy / sample / beam_search are the pieces generate picks from; they trace inside the caller's jit (the
trainer's decode_fn) or run eagerly. Beam search follows transformers' (5.x, vectorised) `_beam_search` step
for step, including its length penalty and `early_stopping` heuristics.
TextSeq2Seq / TextCausal wrap the text models (t5.T5, bart.Bart, decoder.Decoder) into the same interface
with input_ids in place of poses, so the same code decodes HF checkpoints (tests, benchmarks).
"""
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from slt_jax.models import registry

_NEG = -1.0e9  # HF's "impossible" score; added (not assigned) the way HF does so float32 rounding matches.


# --- the entry point -----------------------------------------------------------------------------

def generate(model, poses, pose_mask, decode_config, rng: Optional[jax.Array] = None,
             corpus: Optional[jax.Array] = None) -> jax.Array:
  """Decodes with config.decode: greedy, sampling, beam search or beam sampling.

  Args:
    model: a contract.DecodingModel (start_decode / decode_step / eos_id / pad_id / forced_eos).
    poses: f32[B, T, K, C] (or i32[B, S] input_ids for the Text* adapters); pose_mask: bool[B, T].
    decode_config: config.decode (max_new_tokens, num_beams, length_penalty, early_stopping, do_sample,
      temperature, top_k, top_p); missing fields take their defaults.
    rng: PRNG key, required when do_sample.
    corpus: i32[B], the rows' corpora (contract.Batch), passed to start_decode when given (an SLT model with
      per-corpus prompts needs it; the Text* adapters take none).
  Returns:
    i32[B, max_new_tokens]: generated ids (EOS included); positions after EOS hold the pad id (and so do the
    last K columns when the model has K forced prefix tokens, see the module docstring).
  """
  c = decode_config
  get = lambda name, default: c.get(name, default) if hasattr(c, 'get') else getattr(c, name, default)
  max_new = int(get('max_new_tokens', 64))
  num_beams = int(get('num_beams', 1))
  do_sample = bool(get('do_sample', False))
  warp = dict(temperature=float(get('temperature', 1.0)), top_k=int(get('top_k', 0)),
              top_p=float(get('top_p', 1.0)))
  if do_sample and rng is None:
    raise ValueError('config.decode.do_sample=True needs a PRNG key (rng)')
  if num_beams > 1:
    return beam_search(model, poses, pose_mask, max_new, num_beams,
                       length_penalty=float(get('length_penalty', 1.0)),
                       early_stopping=get('early_stopping', False),
                       rng=rng if do_sample else None, corpus=corpus, **(warp if do_sample else {}))
  if do_sample:
    return sample(model, poses, pose_mask, max_new, rng, corpus=corpus, **warp)
  return greedy(model, poses, pose_mask, max_new, corpus=corpus)


# --- logits warpers (HF's Temperature / TopK / TopP logits processors, in that order) --------------

def warp_logits(logits: jax.Array, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """f32[..., V] -> the same with the tokens outside top-k / the nucleus set to -inf (0 / 1.0 = off).

  Top-p keeps the smallest set of most likely tokens whose probability reaches top_p (at least one); ties
  at the threshold are kept. Shift-invariant, so it can be applied to logits or log-probabilities alike.
  """
  if temperature != 1.0:
    if temperature <= 0:
      raise ValueError(f'temperature must be > 0, got {temperature} (use do_sample=False for greedy)')
    logits = logits / temperature
  if top_k and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_logits = -jnp.sort(-logits, axis=-1)                     # descending
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs                       # mass of the more likely tokens
    keep = (before < top_p).at[..., 0].set(True)
    count = keep.sum(axis=-1, keepdims=True)
    threshold = jnp.take_along_axis(sorted_logits, count - 1, axis=-1)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return logits


# --- forced tokens (HF's forced_bos_token_id / forced_eos_token_id) -------------------------------------

def _forced(model, max_new_tokens: int) -> tuple[int, int, bool]:
  """-> (tokens to generate, forced prefix tokens K, forced_eos); see the module docstring."""
  num_forced = max(len(getattr(model, 'decoder_prefix', ())) - 1, 0)
  if max_new_tokens <= num_forced:
    raise ValueError(f'max_new_tokens={max_new_tokens} leaves nothing to generate after the {num_forced} '
                     f'forced decoder prefix token(s) (HF counts them as generated)')
  return max_new_tokens - num_forced, num_forced, bool(getattr(model, 'forced_eos', False))


def _pad_columns(tokens: jax.Array, width: int, pad: int) -> jax.Array:
  """i32[..., n] -> i32[..., width], pad on the right (the columns of the forced tokens)."""
  extra = width - tokens.shape[-1]
  if not extra:
    return tokens
  return jnp.pad(tokens, [(0, 0)] * (tokens.ndim - 1) + [(0, extra)], constant_values=pad)


# --- one token per row: greedy and sampling --------------------------------------------------------

def _start(model, poses, pose_mask, n: int, corpus):
  """model.start_decode, with the rows' corpora only when given (the Text* adapters take none)."""
  if corpus is None:
    return model.start_decode(poses, pose_mask, n)
  return model.start_decode(poses, pose_mask, n, corpus=corpus)


def _token_loop(model, poses, pose_mask, max_new_tokens: int, choose, rng=None, corpus=None):
  """Shared loop of greedy / sampling. choose(logits f32[B, V], key) -> i32[B]."""
  n, _, forced_eos = _forced(model, max_new_tokens)
  logits, state = _start(model, poses, pose_mask, n, corpus)
  # NNX modules must not be closed over by JAX control flow (an nnx.scan inside would see variables of a
  # foreign trace level): the model's variables travel in the loop carry and are merged inside the body.
  graphdef, variables = nnx.split(model)
  batch = logits.shape[0]
  eos, pad = model.eos_id, model.pad_id
  tokens = jnp.full((batch, n), pad, jnp.int32)
  key = jax.random.key(0) if rng is None else rng

  def cond(carry):
    i, _, _, _, done, _ = carry
    return (i < n) & ~jnp.all(done)

  def step(variables, state, token):
    return nnx.merge(graphdef, variables).decode_step(state, token)

  def body(carry):
    i, logits, state, tokens, done, variables = carry
    next_token = choose(logits, jax.random.fold_in(key, i)).astype(jnp.int32)
    if forced_eos:
      next_token = jnp.where(i + 1 == n, eos, next_token)
    next_token = jnp.where(done, pad, next_token)
    tokens = tokens.at[:, i].set(next_token)
    done = done | (next_token == eos)
    # No model step after the last token (its cache slot does not exist).
    logits, state = jax.lax.cond(i + 1 < n, step, lambda v, s, t: (logits, s),
                                 variables, state, next_token)
    return i + 1, logits, state, tokens, done, variables

  carry = (jnp.int32(0), logits, state, tokens, jnp.zeros((batch,), bool), variables)
  return _pad_columns(jax.lax.while_loop(cond, body, carry)[3], max_new_tokens, pad)


def greedy(model, poses, pose_mask, max_new_tokens: int, corpus=None):
  """Greedy decoding (HF `generate(do_sample=False, num_beams=1)`).

  Args:
    model: a contract.DecodingModel (an SLT model, or a Text* adapter below).
    poses: f32[B, T, K, C]; pose_mask: bool[B, T].
    max_new_tokens: tokens generated at most (EOS and forced prefix tokens included, as HF counts).
    corpus: i32[B], the rows' corpora (per-corpus prompts; see generate).
  Returns:
    i32[B, max_new_tokens]: generated ids; positions after EOS hold the pad id.
  """
  return _token_loop(model, poses, pose_mask, max_new_tokens, lambda logits, _: jnp.argmax(logits, axis=-1),
                     corpus=corpus)


def sample(model, poses, pose_mask, max_new_tokens: int, rng: jax.Array, *, temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, corpus=None):
  """Ancestral sampling with temperature / top-k / top-p; the same key gives the same tokens.

  The draw of step i uses fold_in(rng, i), so a row's tokens depend on the key and the batch's shape.
  Returns i32[B, max_new_tokens] like `greedy`.
  """
  def choose(logits, key):
    return jax.random.categorical(key, warp_logits(logits, temperature, top_k, top_p), axis=-1)
  return _token_loop(model, poses, pose_mask, max_new_tokens, choose, rng, corpus)


# --- beam search -----------------------------------------------------------------------------------

def _early_stopping(value) -> Union[bool, str]:
  """HF's early_stopping values: True, False or 'never' (the config may hold them as strings)."""
  if isinstance(value, str):
    v = value.strip().lower()
    if v in ('true', 'false'):
      return v == 'true'
    if v == 'never':
      return 'never'
    raise ValueError(f"early_stopping must be true, false or 'never', got {value!r}")
  return bool(value)


def _take_beams(x: jax.Array, idx: jax.Array) -> jax.Array:
  """x [B, N, ...], idx i32[B, M] -> [B, M, ...] (HF's _gather_beams)."""
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def beam_search(model, poses, pose_mask, max_new_tokens: int, num_beams: int, *, length_penalty: float = 1.0,
                early_stopping: Union[bool, str] = False, rng: Optional[jax.Array] = None,
                temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, return_all: bool = False,
                corpus=None):
  """Beam search as transformers' `generate(num_beams=K)` (beam sampling when rng is given).

  Each step takes the top 2K continuations of all beams by accumulated log-probability; those ending in
  EOS (or reaching max_new_tokens) among the first K become finished hypotheses with score
  sum_logprob / n ** length_penalty, n = generated tokens including the EOS and any forced prefix tokens
  (module docstring; their log-probability is 0, as HF's forcing makes it); the best K unfinished ones go
  on. Stopping (early_stopping): True stops a row when K hypotheses are finished; False (HF's default)
  when the best running beam, scored at its current length, cannot beat the worst finished one; 'never'
  scores it at max_new_tokens when length_penalty > 0 (the canonical beam search with length_penalty=0).
  With rng, the 2K candidates are drawn without replacement (Gumbel top-k) from the warped
  (temperature / top_k / top_p) log-probabilities plus beam scores, like HF's beam sampling.

  Returns i32[B, max_new_tokens] (the best hypothesis, pad after EOS), or with return_all
  (tokens i32[B, K, max_new_tokens], scores f32[B, K]) sorted best first.
  """
  early_stopping = _early_stopping(early_stopping)
  n, num_forced, forced_eos = _forced(model, max_new_tokens)
  k = num_beams
  cands = 2 * k  # HF keeps max(2, 1 + number of EOS ids) * K candidates; we have one EOS id.
  eos, pad = model.eos_id, model.pad_id
  logits, state = _start(model, poses, pose_mask, n, corpus)  # corpus i32[B]: as greedy's
  b, vocab = logits.shape
  # Decode the source once, then give every beam its copy (rows b*K .. b*K+K-1).
  logits, state = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), (logits, state))
  graphdef, variables = nnx.split(model)  # carried through the loop, see _token_loop.
  # Length-penalty denominators len ** lp for the lengths after steps 0..n-1 (forced tokens counted), in
  # float64 then float32, as HF's Python-float power then float32 tensor division.
  lengths = np.arange(1, n + 1, dtype=np.float64) + num_forced
  denom = jnp.asarray((lengths ** length_penalty).astype(np.float32))
  # HF's ForcedEOSTokenLogitsProcessor on the log-probabilities of the last step.
  eos_only = jnp.where(jnp.arange(vocab) == eos, 0.0, -jnp.inf).astype(jnp.float32)
  heuristic_at_max = early_stopping == 'never' and length_penalty > 0.0
  top_mask = jnp.arange(cands) < k
  key = jax.random.key(0) if rng is None else rng

  def step(variables, state, tokens):
    return nnx.merge(graphdef, variables).decode_step(state, tokens)

  def body(carry):
    (t, logits, state, run_seqs, run_scores, fin_seqs, fin_scores, fin_done, open_, _, variables) = carry
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    if rng is not None:
      logp = warp_logits(logp, temperature, top_k, top_p)
    if forced_eos:
      logp = jnp.where(t + 1 >= n, eos_only, logp)
    flat = (logp.reshape(b, k, vocab) + run_scores[:, :, None]).reshape(b, k * vocab)
    if rng is None:
      cand_scores, cand_idx = jax.lax.top_k(flat, cands)
    else:
      gumbel = jax.random.gumbel(jax.random.fold_in(key, t), flat.shape)
      cand_idx = jax.lax.top_k(flat + gumbel, cands)[1]
      cand_scores = jnp.take_along_axis(flat, cand_idx, axis=1)
      order = jnp.argsort(-cand_scores, axis=1, stable=True)
      cand_scores, cand_idx = (jnp.take_along_axis(a, order, axis=1) for a in (cand_scores, cand_idx))
    cand_beam, cand_tok = cand_idx // vocab, (cand_idx % vocab).astype(jnp.int32)
    cand_seqs = _take_beams(run_seqs, cand_beam).at[:, :, t].set(cand_tok)
    hits = (cand_tok == eos) | (t + 1 >= n)

    # Running beams: the best K candidates that did not finish.
    run_cand = cand_scores + hits.astype(jnp.float32) * _NEG
    sel = jax.lax.top_k(run_cand, k)[1]
    run_seqs, run_scores, parent = (_take_beams(a, sel) for a in (cand_seqs, run_cand, cand_beam))

    # Finished hypotheses: the top-K candidates that just finished, merged with the kept ones.
    just = hits & top_mask[None]
    fin_cand = cand_scores / denom[t]
    if early_stopping is True:
      fin_cand = fin_cand + (jnp.all(fin_done, axis=1, keepdims=True)).astype(jnp.float32) * _NEG
    fin_cand = fin_cand + (~open_).astype(jnp.float32) * _NEG
    fin_cand = fin_cand + (~just).astype(jnp.float32) * _NEG
    merged_scores = jnp.concatenate([fin_scores, fin_cand], axis=1)
    sel = jax.lax.top_k(merged_scores, k)[1]
    fin_seqs = _take_beams(jnp.concatenate([fin_seqs, cand_seqs], axis=1), sel)
    fin_done = _take_beams(jnp.concatenate([fin_done, just], axis=1), sel)
    fin_scores = _take_beams(merged_scores, sel)

    # Can a running beam still beat the worst finished hypothesis? (HF's _check_early_stop_heuristic)
    best = run_scores[:, :1] / (denom[n - 1] if heuristic_at_max else denom[t])
    worst = jnp.where(fin_done, jnp.min(fin_scores, axis=1, keepdims=True), _NEG)
    open_ = open_ & jnp.any(best > worst, axis=1, keepdims=True)
    go = jnp.any(open_) & ~jnp.all(hits)
    if early_stopping is True:
      go = go & ~jnp.all(fin_done)

    def advance(variables, state, tokens):
      rows = (jnp.arange(b)[:, None] * k + parent).reshape(-1)
      state = jax.tree.map(lambda x: jnp.take(x, rows, axis=0), state)
      return step(variables, state, tokens)

    logits, state = jax.lax.cond(go, advance, lambda v, s, _: (logits, s), variables, state,
                                 run_seqs[:, :, t].reshape(-1))
    return (t + 1, logits, state, run_seqs, run_scores, fin_seqs, fin_scores, fin_done, open_, go, variables)

  seqs0 = jnp.full((b, k, n), pad, jnp.int32)
  # Only beam 0 is live at first, so the K beams do not all pick the same tokens.
  run_scores0 = jnp.zeros((b, k), jnp.float32).at[:, 1:].set(_NEG)
  carry = (jnp.int32(0), logits, state, seqs0, run_scores0, seqs0, jnp.full((b, k), _NEG, jnp.float32),
           jnp.zeros((b, k), bool), jnp.ones((b, 1), bool), jnp.bool_(True), variables)
  carry = jax.lax.while_loop(lambda c: c[9], body, carry)
  fin_seqs, fin_scores = carry[5], carry[6]
  # Positions after EOS hold pad already (sequences start as pad); a hypothesis cut by max_new_tokens
  # has no EOS.
  fin_seqs = _pad_columns(fin_seqs, max_new_tokens, pad)
  if return_all:
    return fin_seqs, fin_scores
  return fin_seqs[:, 0]


# --- text-only adapters (HF parity tests, benchmarks) ------------------------------------------------

class TextSeq2Seq(nnx.Module):
  """An encoder-decoder text model (t5.T5 / bart.Bart) behind the decode interface, input_ids for poses.

    model = TextSeq2Seq(from_pretrained(path))
    tokens = generate(model, input_ids i32[B, S], attention_mask bool[B, S], config.decode)

  decoder_prefix: ids fed before the first generated token (default, like HF: the decoder start token, then
  the checkpoint's forced_bos_token_id when it has one). forced_eos: HF's forced_eos_token_id (default: on
  for (m)BART, whose HF configs set it to the EOS id, off for T5).
  """

  def __init__(self, lm: nnx.Module, decoder_prefix: Optional[Sequence[int]] = None,
               forced_eos: Optional[bool] = None):
    cfg = lm.config
    self.lm = lm
    self.eos_id, self.pad_id = int(cfg.eos_token_id), int(cfg.pad_token_id)
    self.vocab_size = int(cfg.vocab_size)
    if decoder_prefix is None:
      forced_bos = getattr(cfg, 'forced_bos_token_id', None)
      decoder_prefix = (cfg.decoder_start_token_id,) + (() if forced_bos is None else (forced_bos,))
    self.decoder_prefix = tuple(int(i) for i in decoder_prefix)
    if forced_eos is None:
      forced_eos = registry.family(cfg.model_type).forced_eos
    self.forced_eos = bool(forced_eos)

  def start_decode(self, input_ids: jax.Array, attention_mask: jax.Array, max_new_tokens: int):
    enc = self.lm.encode(input_ids=input_ids, attention_mask=attention_mask)
    state = self.lm.init_cache(enc, attention_mask, len(self.decoder_prefix) + max_new_tokens)
    prefix = jnp.broadcast_to(jnp.asarray(self.decoder_prefix, jnp.int32)[None],
                              (enc.shape[0], len(self.decoder_prefix)))
    logits, state = self.lm.decode(prefix, cache=state)
    return logits[:, -1], state

  def decode_step(self, state, tokens: jax.Array):
    logits, state = self.lm.decode(tokens[:, None].astype(jnp.int32), cache=state)
    return logits[:, 0], state


class TextCausal(nnx.Module):
  """A decoder-only LM (decoder.Decoder) behind the decode interface: the prompt's input_ids for poses.

  The prompt may be padded anywhere (left padding as HF's generate expects): padding is masked and skipped
  by the positions. eos_id / pad_id: default the config's (first EOS when it lists several).
  """

  forced_eos = False  # contract.DecodingModel: a decoder-only LM has no forced EOS

  def __init__(self, lm: nnx.Module, eos_id: Optional[int] = None, pad_id: Optional[int] = None):
    cfg = lm.config
    first = lambda x: x[0] if isinstance(x, (tuple, list)) else x
    self.lm = lm
    self.eos_id = int(first(cfg.eos_token_id) if eos_id is None else eos_id)
    pad = cfg.pad_token_id if pad_id is None else pad_id
    self.pad_id = int(self.eos_id if pad is None else pad)
    self.vocab_size = int(cfg.vocab_size)

  def start_decode(self, input_ids: jax.Array, attention_mask: jax.Array, max_new_tokens: int):
    b, s = input_ids.shape
    state = self.lm.init_state(b, s + max_new_tokens)
    return self.lm.extend(state, input_ids.astype(jnp.int32), attention_mask=attention_mask, last_only=True)

  def decode_step(self, state, tokens: jax.Array):
    return self.lm.extend(state, tokens[:, None].astype(jnp.int32), last_only=True)
