"""Sign language translation models behind one interface (contract.SLTModel; batches: contract.Batch).

Seq2SeqSLT: pose front end -> encoder (through inputs_embeds) -> decoder, for T5 / mT5 / BART / mBART,
from random init (config.model.arch, HF config field names) or a pretrained HF checkpoint (config.model.name).

  model = build_model(config, vocab_size, pose_dim, rngs=nnx.Rngs(params=0), tokenizer=tok)
  logits = model(batch)                                  # f32[B, L, V], logits[:, i] predicts labels[:, i]
  logits, state = model.start_decode(poses, pose_mask, max_new_tokens)
  logits, state = model.decode_step(state, tokens)

The decoder is fed a fixed prefix before the labels: the family's decoder start token, then a forced first
token when the checkpoint has one (BART's <s>, mBART's target-language code from config.model.tgt_lang).
Labels therefore carry only the text + EOS, and so do the generated tokens. The EOS and pad ids are the
tokenizer's (it makes the labels); a model from random init takes its decoder start and BOS from it too.
"""
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from slt_jax.models import causal_slt, contract, hf, lora, registry
from slt_jax.models import layers as L
from slt_jax.models.corpus_prompts import PromptTable
from slt_jax.models.pose_frontend import PoseFrontEnd
from slt_jax.models.token_rows import TokenCounts, TokenRows


class Seq2SeqSLT(nnx.Module):
  """Poses -> text with an encoder-decoder `lm` (t5.T5 or bart.Bart).

  prompt_ids: text tokens embedded with the lm's own embedding and put before the pose embeddings
  (Uni-Sign style); decoder_prefix: token ids fed to the decoder before the first label. forced_eos: decoding
  ends a row that reaches max_new_tokens with EOS (HF's forced_eos_token_id, set by (m)BART checkpoints).
  Per-corpus prompts / language codes (data.mixture.NAME.prompt / tgt_lang): prompt_table / prefix_table
  (corpus_prompts.PromptTable) in place of prompt_ids / decoder_prefix (then corpus 0's), read by each row's
  batch['corpus']; every corpus's decoder prefix has the same length.
  """

  def __init__(self, lm: nnx.Module, frontend: PoseFrontEnd, *, eos_id: int, pad_id: int,
               decoder_prefix: Sequence[int], prompt_ids: Sequence[int] = (), forced_eos: bool = False,
               prompt_table: Optional[PromptTable] = None, prefix_table: Optional[PromptTable] = None):
    self.lm, self.frontend = lm, frontend
    self.eos_id, self.pad_id = int(eos_id), int(pad_id)
    self.vocab_size = int(lm.config.vocab_size)
    self.decoder_prefix = tuple(int(i) for i in decoder_prefix)
    self.prompt_ids = tuple(int(i) for i in prompt_ids)
    self.forced_eos = bool(forced_eos)
    self.prompt_table, self.prefix_table = prompt_table, prefix_table
    if prefix_table is not None and len({len(r) for r in prefix_table.rows}) > 1:
      raise ValueError(f'the corpora\'s decoder prefixes (decoder start, then the forced language code of '
                       f'data.mixture.NAME.tgt_lang / model.tgt_lang) differ in length: {list(prefix_table.rows)}; '
                       'give every corpus a tgt_lang, or none')

  def _corpus_prompts(self, x: jax.Array, mask: jax.Array, corpus) -> tuple[jax.Array, jax.Array]:
    """x [B, T, d], mask bool[B, T] -> ([B, W + T, d], bool[B, W + T]): each row's corpus's prompt, then its
    pose embeddings right after it, then padding: a row's real tokens sit where a single-prompt model puts them
    (learned absolute positions, BART; relative ones, T5)."""
    ids, prompt_mask = self.prompt_table.take(corpus, left=False)                  # right-padded [B, W]
    w, t = ids.shape[1], x.shape[1]
    n = jnp.sum(prompt_mask, axis=1, keepdims=True)                               # [B, 1]
    j = jnp.arange(w + t)[None]
    src = jnp.where(j < n, j, j - n + w)   # position j: prompt token j, else pose frame j - n (at w + j - n)
    both = jnp.concatenate([self.lm.embed(ids).astype(x.dtype), x], axis=1)
    both_mask = jnp.concatenate([prompt_mask, mask], axis=1)
    keep = src < w + t
    src = jnp.minimum(src, w + t - 1)
    x = jnp.take_along_axis(both, src[..., None], axis=1)
    return jnp.where(keep[..., None], x, 0), jnp.take_along_axis(both_mask, src, axis=1) & keep

  def encode(self, poses: jax.Array, pose_mask: jax.Array, rngs=None,
             num_frames: Optional[int] = None,
             shards: int = 1, blocks=None, corpus=None) -> tuple[jax.Array, jax.Array, Optional[TokenRows]]:
    """poses f32[B, T, K, C], pose_mask bool[B, T] -> encoder states [B, S, d], mask bool[B, S], None.

    Padding-free, with num_frames (a static bound on the real frames of each of `shards` blocks of the batch,
    placed by `blocks`: TokenCounts):
    the encoder runs on its tokens' rows, gathered within each block, and returns (their rows [N, d], mask,
    their TokenRows). corpus i32[B]: the rows' corpora (per-corpus prompts, prompt_table).
    """
    x, mask = self.frontend(poses, pose_mask, rngs=rngs)
    b = x.shape[0]
    prompt_len = self.prompt_table.width if self.prompt_table else len(self.prompt_ids)
    if self.prompt_table is not None:
      x, mask = self._corpus_prompts(x, mask, corpus)
    elif self.prompt_ids:
      p = self.lm.embed(jnp.asarray(self.prompt_ids, jnp.int32)[None]).astype(x.dtype)
      x = jnp.concatenate([jnp.broadcast_to(p, (b,) + p.shape[1:]), x], axis=1)
      mask = jnp.concatenate([jnp.ones((b, len(self.prompt_ids)), bool), mask], axis=1)
    rows = None
    if num_frames is not None:
      block = b // shards
      bound = self.frontend.max_outputs(num_frames, block) + block * prompt_len
      rows = TokenRows.from_mask(mask, min(bound, mask.size // shards), shards, blocks)
    return self.lm.encode(inputs_embeds=x, attention_mask=mask, rngs=rngs, rows=rows), mask, rows

  def _prefix(self, b: int, corpus=None) -> jax.Array:
    """-> i32[B, P]: the decoder's tokens before the first label (each row's corpus's with prefix_table)."""
    if self.prefix_table is not None:
      return self.prefix_table.take(corpus)[0]
    return jnp.broadcast_to(jnp.asarray(self.decoder_prefix, jnp.int32)[None], (b, len(self.decoder_prefix)))

  def _teacher_forced(self, batch: dict, rngs, counts: Optional[TokenCounts]):
    """-> (logits f32[B, P - 1 + L, V] over the decoder's positions, None), or padding-free with counts:
    (logits f32[N, V] of the decoder's token rows, their TokenRows)."""
    with lora.dropout_rngs(self.lm, rngs):  # adapter dropout (a no-op without adapters)
      enc, mask, enc_rows = self.encode(batch['poses'], batch['pose_mask'], rngs=rngs,
                                        num_frames=None if counts is None else counts.frames,
                                        shards=1 if counts is None else counts.shards,
                                        blocks=None if counts is None else counts.blocks,
                                        corpus=batch.get('corpus'))
      labels = batch['labels']
      b, p = labels.shape[0], len(self.decoder_prefix)
      dec_in = jnp.concatenate([self._prefix(b, batch.get('corpus')), labels[:, :-1]], axis=1)
      dec_rows = None
      if counts is not None:  # the decoder's tokens: the prefix after the start token, then the labels
        dec_mask = jnp.concatenate([jnp.ones((b, p - 1), bool), batch['label_mask'].astype(bool)], axis=1)
        shards = counts.shards
        bound = counts.labels + b // shards * (p - 1)
        dec_rows = TokenRows.from_mask(dec_mask, min(bound, dec_mask.size // shards), shards, counts.blocks)
      # Positions after EOS are padding; the causal mask keeps them out of the real positions.
      logits, _ = self.lm.decode(dec_in, enc, mask, rngs=rngs, rows=dec_rows, encoder_rows=enc_rows)
    return logits, dec_rows

  def __call__(self, batch: dict, rngs: Optional[nnx.Rngs] = None) -> jax.Array:
    """Teacher forcing: batch (a contract.Batch: poses, pose_mask, labels i32[B, L]) -> logits f32[B, L, V]."""
    logits, _ = self._teacher_forced(batch, rngs, None)
    return logits[:, len(self.decoder_prefix) - 1:]

  def token_logits(self, batch: dict, counts: TokenCounts, rngs: Optional[nnx.Rngs] = None):
    """Padding-free teacher forcing (token_rows): the position-wise layers run on the real tokens only.

    counts: static bounds on the batch's real frames and label tokens (slt_jax.train.step.padding_free_counts;
    prefix masks, as the input pipeline makes them). Returns the decoder's token rows: (logits f32[N, V],
    labels i32[N], label_mask bool[N]); the prefix rows and the filler rows past the count have mask False.
    """
    logits, rows = self._teacher_forced(batch, rngs, counts)
    b, p = batch['labels'].shape[0], len(self.decoder_prefix)
    labels = jnp.concatenate([jnp.zeros((b, p - 1), jnp.int32), batch['labels'].astype(jnp.int32)], axis=1)
    mask = jnp.concatenate([jnp.zeros((b, p - 1), bool), batch['label_mask'].astype(bool)], axis=1)
    return logits, rows.gather(labels), rows.gather(mask)

  def start_decode(self, poses: jax.Array, pose_mask: jax.Array, max_new_tokens: int, corpus=None):
    """-> (logits f32[B, V] of the first generated token, state: Seq2SeqCache, every leaf batch-first).
    corpus i32[B]: the rows' corpora (per-corpus prompts / language codes)."""
    enc, mask, _ = self.encode(poses, pose_mask, corpus=corpus)
    state = self.lm.init_cache(enc, mask, len(self.decoder_prefix) + max_new_tokens)
    logits, state = self.lm.decode(self._prefix(enc.shape[0], corpus), cache=state)
    return logits[:, -1], state

  def decode_step(self, state: L.Seq2SeqCache, tokens: jax.Array):
    """tokens i32[B] (just chosen) -> (logits f32[B, V] for the next token, new state)."""
    logits, state = self.lm.decode(tokens[:, None].astype(jnp.int32), cache=state)
    return logits[:, 0], state


# --- building from the config ----------------------------------------------------------------------

def _tokenizer(config):
  from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top  (only for prompts/lang codes)
  return AutoTokenizer.from_pretrained(config.model.tokenizer or config.model.name)


def build_lm(config, vocab_size: int, rngs: nnx.Rngs, tokenizer=None):
  """The text model: pretrained (config.model.name) or random from config.model.arch. -> (lm, family).

  From random init the embedding has the tokenizer's vocab_size ids and, given the tokenizer, its special ids
  (hf.with_tokenizer_ids: pad, EOS, decoder start, forced BOS); without one, model.arch's.
  """
  mc = config.model
  dtype, param_dtype = L.dtypes(config)
  if mc.name:
    family = hf.read_config(mc.name)['model_type']
    if not registry.is_seq2seq(family):
      raise ValueError(f'{mc.name}: model_type {family!r} is not an encoder-decoder '
                       f'({registry.model_types(registry.SEQ2SEQ)})')
    lm = hf.from_pretrained(mc.name, dtype, param_dtype, scan_layers=mc.scan_layers, remat=mc.remat)
    if vocab_size > lm.config.vocab_size:
      raise ValueError(f'tokenizer has {vocab_size} ids, {mc.name} only {lm.config.vocab_size} embeddings')
    return lm, family
  family = mc.family
  if not registry.is_seq2seq(family):
    raise ValueError(f'config.model.family={family!r}: Seq2SeqSLT takes {registry.model_types(registry.SEQ2SEQ)}')
  fam = registry.family(family).module
  arch = dict(mc.arch.to_dict() if hasattr(mc.arch, 'to_dict') else mc.arch)
  arch.update(vocab_size=vocab_size, model_type=family, scan_layers=mc.scan_layers, remat=mc.remat)
  cfg = fam.config_from_hf(arch)
  if tokenizer is not None:
    cfg = hf.with_tokenizer_ids(cfg, tokenizer)
  return fam.build(cfg, dtype, param_dtype, rngs), family


def trainable_filter(config):
  """The nnx filter of what the optimizer trains (and checkpoints hold): everything, or with model.use_lora
  the adapters plus all that lies outside the backbone `lm` (pose front end / encoder / projector)."""
  if not config.model.use_lora:
    return nnx.Param
  return nnx.Any(nnx.LoRAParam, nnx.All(nnx.Param, nnx.Not(nnx.PathContains('lm'))))


def build_model(config, vocab_size: int, pose_dim: int, rngs: nnx.Rngs, tokenizer=None) -> nnx.Module:
  """The SLT model (a contract.SLTModel); pose_dim = K * C. Decoder-only families go to causal_slt.CausalSLT.
  With model.use_lora the backbone gets (Q)LoRA adapters (lora.apply_from_config).

  tokenizer (slt_jax.data.tokenizer's interface; the trainer passes the run's): the model's EOS / pad ids are
  its own, as the labels are made with it. From random init the decoder start and BOS are the tokenizer's too;
  a pretrained checkpoint keeps its own and must stop on the tokenizer's EOS (hf.check_tokenizer_eos). Without
  a tokenizer the ids are model.arch's or the checkpoint's.
  """
  model = _build_model(config, vocab_size, pose_dim, rngs, tokenizer)
  L.set_attention_impl(model, config.model.attention)
  if config.model.use_lora:
    lora.apply_from_config(model.lm, config, rngs)
  return model


def _family(config) -> str:
  """The model family: the checkpoint's model_type (config.model.name), else config.model.family."""
  return hf.read_config(config.model.name)['model_type'] if config.model.name else config.model.family


def _build_model(config, vocab_size: int, pose_dim: int, rngs: nnx.Rngs, tokenizer=None) -> nnx.Module:
  mc = config.model
  if not registry.is_seq2seq(_family(config)):
    return causal_slt.build_causal_model(config, vocab_size, pose_dim, rngs, tokenizer=tokenizer)
  if mc.get('projector_norm', False):
    raise ValueError(f'model.projector_norm=True normalises the projector of a decoder-only model, and '
                     f'{_family(config)!r} is an encoder-decoder (no projector): set it to False')
  if mc.name and tokenizer is not None:  # before loading the weights
    hf.check_tokenizer_eos(mc.name, tokenizer, mc.tokenizer or 'the checkpoint\'s')
  lm, family = build_lm(config, vocab_size, rngs, tokenizer)
  cfg = lm.config
  eos, pad = (cfg.eos_token_id, cfg.pad_token_id) if tokenizer is None else (tokenizer.eos_id, tokenizer.pad_id)
  dtype, param_dtype = L.dtypes(config)
  frontend = PoseFrontEnd(pose_dim, cfg.d_model, hidden=mc.pose.hidden, conv_layers=mc.pose.conv_layers,
                          conv_stride=mc.pose.conv_stride, positions=mc.pose.positions, dropout=mc.pose.dropout,
                          dtype=dtype, param_dtype=param_dtype, rngs=rngs)
  # Per corpus (data.mixture.NAME.prompt / tgt_lang, else model.*); a table only where the corpora's ids differ.
  prompts, langs = contract.per_corpus(config, 'prompt'), contract.per_corpus(config, 'tgt_lang')
  tok = _tokenizer(config) if any(prompts) or any(langs) else None
  names = contract.corpus_names(config)
  prefixes = [_decoder_prefix(cfg, tok, lang, _lang_field(config, name)) for name, lang in zip(names, langs)]
  prompt_ids = [tok(p, add_special_tokens=False)['input_ids'] if p else () for p in prompts]
  return Seq2SeqSLT(lm, frontend, eos_id=eos, pad_id=pad, decoder_prefix=prefixes[0], prompt_ids=prompt_ids[0],
                    forced_eos=registry.family(family).forced_eos,
                    prompt_table=PromptTable.of(prompt_ids, 'the encoder prompt (model.prompt)'),
                    prefix_table=PromptTable.of(prefixes, 'the decoder prefix (model.tgt_lang)'))


def _lang_field(config, corpus: str) -> str:
  """The config field a corpus's tgt_lang comes from (for errors)."""
  if corpus and config.data.mixture[corpus].get('tgt_lang', ''):
    return f'data.mixture.{corpus}.tgt_lang'
  return 'config.model.tgt_lang'


def _decoder_prefix(cfg, tok, tgt_lang: str, field: str) -> list:
  """The decoder start token, then the forced first token: tgt_lang's code, else the checkpoint's forced BOS."""
  forced = getattr(cfg, 'forced_bos_token_id', None)
  if tgt_lang:
    forced = tok.convert_tokens_to_ids(tgt_lang)
    if forced is None or forced == tok.unk_token_id:
      raise ValueError(f'{field}={tgt_lang!r} is not a token of the tokenizer')
  return [cfg.decoder_start_token_id] + ([forced] if forced is not None else [])
