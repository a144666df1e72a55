"""Decoder-only SLT: a pose prefix in the embedding space of an LLM (Llama / Mistral / Qwen2 / Gemma).

  poses -> PoseFrontEnd -> pose encoder (a few bidirectional transformer layers) -> projector (2-layer MLP
  into the LLM's hidden size) -> the LLM sees   [prefix tokens][pose embeddings][suffix][target tokens]

prefix / suffix: the prompt. With an instruct tokenizer it is its chat template around the poses (e.g. Qwen:
`<|im_start|>system ...<|im_end|>\n<|im_start|>user\n{prompt}\n` + poses + `<|im_end|>\n<|im_start|>assistant\n`),
otherwise BOS + the prompt before the poses and, after them, a learned "answer start" embedding (so the
position predicting the first target token is never a padding frame). A data.mixture whose corpora have their own
prompts (data.mixture.NAME.prompt) gives each row its corpus's (batch['corpus']; corpus_prompts.PromptTable).

Attention: causal throughout (LLaVA-style, as the LLM was pretrained), or with model.bidirectional_prompt a
prefix LM: the prompt (poses included) sees itself both ways, the targets stay causal; cached decoding
prefills the prompt the same way. model.llm_dropout: dropout inside an LLM built from model.arch.

Padding: pose frames are padded in the middle of the sequence. They are masked as keys and skipped by the
RoPE positions (`decoder.positions_from_mask`), so a row computes exactly what it would unpadded. The
logits returned are those of the target positions only, aligned with the labels (logits[:, i] predicts
labels[:, i]), so the trainer's masked loss covers the target tokens and nothing else.

  model = build_causal_model(config, vocab_size, pose_dim, rngs, tokenizer=None)
  logits = model(batch)                                             # f32[B, L, V]
  logits, state = model.start_decode(poses, pose_mask, max_new_tokens)
  logits, state = model.decode_step(state, tokens)                  # state: decoder.DecodeState, batch-first
"""
import dataclasses
import math
import os
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from slt_jax.models import contract, decoder, hf, lora
from slt_jax.models.corpus_prompts import PromptTable
from slt_jax.models import layers as L
from slt_jax.models.pose_frontend import PoseFrontEnd
from slt_jax.models.token_rows import TokenCounts, TokenRows

_POSES = '<|slt_poses|>'  # placeholder where the poses go when rendering a chat template
_TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'tokenizer.model')


class PoseEncoderLayer(nnx.Module):
  """Pre-norm bidirectional transformer layer over pose frames (RoPE over the real frames)."""

  def __init__(self, dim: int, num_heads: int, *, dropout: float, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.attn_norm = L.RMSNorm(dim, **kw)
    self.attn = L.Attention(dim, num_heads, dim // num_heads, rngs=rngs, **kw)
    self.mlp_norm = L.RMSNorm(dim, **kw)
    self.mlp = L.MLP(dim, 4 * dim, activation='gelu', dropout=dropout, rngs=rngs, **kw)
    self.dropout = L.Dropout(dropout)

  def __call__(self, x, mask, rotary, rngs=None):
    """x: [B, T, dim], mask: bool[B, 1, 1, T] -> [B, T, dim]."""
    drop = lambda h: self.dropout(h, rngs)
    x = x + drop(self.attn(self.attn_norm(x), mask=mask, rotary=rotary))
    return x + drop(self.mlp(self.mlp_norm(x), rngs=rngs))


class PoseEncoder(nnx.Module):
  """Front end -> transformer layers -> projector: poses -> embeddings in the LLM's input space.

  positions (model.pose.positions): sinusoidal frame positions on the front end's output, as for T5. The LLM
  sees the poses through RoPE only, which gives a target token its distance to each frame; that distance
  depends on the row's number of pose positions, so without absolute positions no fixed offset lines up the
  k-th word with the k-th sign (issue #23: the demo's training loss fell far slower without them).
  """

  def __init__(self, pose_dim: int, llm_dim: int, *, hidden: int, conv_layers: int, conv_stride: int,
               num_layers: int, num_heads: int, dropout: float, dtype, param_dtype, rngs: nnx.Rngs,
               out_rms=None, positions: bool = False):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    if hidden % num_heads:
      raise ValueError(f'model.pose.hidden={hidden} is not a multiple of model.pose_encoder.num_heads={num_heads}')
    self.frontend = PoseFrontEnd(pose_dim, hidden, hidden=hidden, conv_layers=conv_layers,
                                 conv_stride=conv_stride, positions=positions, dropout=dropout, rngs=rngs, **kw)
    self.num_layers, self.head_dim = num_layers, hidden // num_heads
    self.layers = L.make_layers(
        lambda r: PoseEncoderLayer(hidden, num_heads, dropout=dropout, rngs=r, **kw), num_layers, rngs,
        scan=False)
    self.norm = L.RMSNorm(hidden, **kw)
    # LLaVA-style projector; logical names as an MLP so the big (llm_dim) side shards like the LLM's.
    self.proj_in = L.dense(hidden, llm_dim, ('embed', 'mlp'), use_bias=True, rngs=rngs, **kw)
    self.proj_out = L.dense(llm_dim, llm_dim, ('mlp', 'embed'), use_bias=True, rngs=rngs, **kw)
    # model.projector_norm (out_rms = embedding_rms(lm)): the pose embeddings start at the RMS of the LLM's token
    # embeddings, not ~30x above them (a random LLM's are initializer_range-small), and learn their scale.
    self.out_norm = None if out_rms is None else L.RMSNorm(llm_dim, **kw)
    if out_rms is not None:
      self.out_norm.scale[...] = jnp.broadcast_to(jnp.asarray(out_rms, param_dtype), (llm_dim,))

  def __call__(self, poses, pose_mask, rngs=None):
    """poses f32[B, T, K, C], pose_mask bool[B, T] -> (x [B, T', llm_dim], mask bool[B, T'])."""
    x, mask = self.frontend(poses, pose_mask, rngs=rngs)
    rot = L.rotary(decoder.positions_from_mask(mask), L.rope_inv_freq(self.head_dim))
    body = lambda layer, h, _, r: (layer(h, L.key_mask(mask), rot, r), None)
    x, _ = L.apply_layers(self.layers, body, x, num_layers=self.num_layers, scan=False, rngs=rngs)
    x = self.proj_out(jax.nn.gelu(self.proj_in(self.norm(x))))
    if self.out_norm is not None:
      x = self.out_norm(x)
    return jnp.where(mask[..., None], x, 0), mask


class CausalSLT(nnx.Module):
  """Poses -> text with a decoder-only LLM `lm` (decoder.Decoder), behind contract.SLTModel."""

  forced_eos = False  # contract.DecodingModel: a decoder-only LLM has no forced EOS

  def __init__(self, lm: decoder.Decoder, encoder: PoseEncoder, *, eos_id: int, pad_id: int,
               prefix_ids: Sequence[int] = (), suffix_ids: Sequence[int] = (), bidirectional_prompt: bool = False,
               prefix_table: Optional[PromptTable] = None, suffix_table: Optional[PromptTable] = None,
               rngs: nnx.Rngs):
    """prefix_table / suffix_table: per-corpus prompts (corpus_prompts.PromptTable, left-padded so the last
    position still predicts the first target), in place of prefix_ids / suffix_ids (then corpus 0's)."""
    self.lm, self.encoder = lm, encoder
    # A prefix LM (as prefix-LM SLT models): the prompt (poses included) attends to itself both ways.
    self.bidirectional_prompt = bool(bidirectional_prompt)
    self.eos_id, self.pad_id = int(eos_id), int(pad_id)
    self.vocab_size = int(lm.config.vocab_size)
    self.prefix_ids = tuple(int(i) for i in prefix_ids)
    self.suffix_ids = tuple(int(i) for i in suffix_ids)
    self.prefix_table, self.suffix_table = prefix_table, suffix_table
    if suffix_table is not None and not all(suffix_table.rows):
      raise ValueError('the corpora\'s prompts have text after the poses in some corpora only (model.chat_template '
                       'with some tokenizers): give every corpus the same model.chat_template setting')
    if not (self.suffix_ids or suffix_table):
      dim = lm.config.hidden_size
      init = L.normal(1 / math.sqrt(dim))(rngs.params(), (dim,), lm.embed_tokens.embedding[...].dtype)
      self.answer_start = nnx.Param(init, out_sharding=('embed',), eager_sharding=False)

  # -- the prompt: [prefix][poses][suffix] --------------------------------------------------------------
  def _tokens(self, ids, batch):
    x = self.lm.embed(jnp.asarray(ids, jnp.int32)[None])
    return jnp.broadcast_to(x, (batch,) + x.shape[1:])

  def _text(self, ids, table: Optional[PromptTable], corpus, b: int):
    """A text part of the prompt -> (embeddings [B, n, hidden], mask bool[B, n]): the ids, or with a table each
    row's corpus's (left-padded: the masked positions are skipped as pose padding is)."""
    if table is None:
      return self._tokens(ids, b), jnp.ones((b, len(ids)), bool)
    tokens, mask = table.take(corpus)
    return self.lm.embed(tokens), mask

  def _text_width(self) -> int:
    """The prompt's positions around the poses (the tables' widths)."""
    pre = self.prefix_table.width if self.prefix_table else len(self.prefix_ids)
    post = self.suffix_table.width if self.suffix_table else len(self.suffix_ids) or 1
    return pre + post

  def prompt(self, poses, pose_mask, rngs=None, corpus=None):
    """-> (embeddings [B, P, hidden], mask bool[B, P]); the last position predicts the first target.
    corpus i32[B]: the rows' corpora, needed with per-corpus prompts (prefix_table / suffix_table)."""
    pose, mask = self.encoder(poses, pose_mask, rngs=rngs)
    b = pose.shape[0]
    parts, masks = [pose.astype(self.lm.dtype)], [mask]
    if self.prefix_ids or self.prefix_table:
      x, m = self._text(self.prefix_ids, self.prefix_table, corpus, b)
      parts.insert(0, x)
      masks.insert(0, m)
    if self.suffix_ids or self.suffix_table:
      x, m = self._text(self.suffix_ids, self.suffix_table, corpus, b)
      parts.append(x)
      masks.append(m)
    else:
      parts.append(jnp.broadcast_to(self.answer_start[...].astype(self.lm.dtype), (b, 1, pose.shape[-1])))
      masks.append(jnp.ones((b, 1), bool))
    return jnp.concatenate(parts, axis=1), jnp.concatenate(masks, axis=1)

  # -- contract.SLTModel -----------------------------------------------------------------------------
  def _sequence(self, batch: dict, rngs):
    """-> (the LLM's input [B, P + L - 1, hidden]: the prompt, then the labels shifted right; the prompt's
    mask bool[B, P]; P). The prompt's last position predicts labels[:, 0]."""
    x, mask = self.prompt(batch['poses'], batch['pose_mask'], rngs=rngs, corpus=batch.get('corpus'))
    targets = self.lm.embed(batch['labels'][:, :-1].astype(jnp.int32))
    return jnp.concatenate([x, targets], axis=1), mask, x.shape[1]

  def __call__(self, batch: dict, rngs: Optional[nnx.Rngs] = None) -> jax.Array:
    """Teacher forcing: batch (a contract.Batch: poses, pose_mask, labels i32[B, L]) -> logits f32[B, L, V]."""
    x, mask, p = self._sequence(batch, rngs)
    l = batch['labels'].shape[1]
    # The padding after EOS only feeds positions after it (causal), whose loss is masked.
    mask = jnp.concatenate([mask, jnp.ones((x.shape[0], l - 1), bool)], axis=1)
    with lora.dropout_rngs(self.lm, rngs):  # LoRA adapter dropout (a no-op without adapters)
      h = self.lm(inputs_embeds=x, attention_mask=mask, return_hidden=True, rngs=rngs,
                  prefix_len=p if self.bidirectional_prompt else 0)
      return self.lm.head(h[:, p - 1:p - 1 + l])

  def token_logits(self, batch: dict, counts: TokenCounts, rngs: Optional[nnx.Rngs] = None):
    """Padding-free teacher forcing (token_rows): the LLM's position-wise layers run on the real tokens only
    (the prompt's real positions and the target inputs before each row's last label) and the LM head on
    the target rows only.

    counts: static bounds on the batch's real frames and label tokens (slt_jax.train.step.padding_free_counts;
    prefix masks). Returns the target rows: (logits f32[M, V], labels i32[M], label_mask bool[M]); the filler
    rows past the count have mask False.
    """
    x, prompt_mask, p = self._sequence(batch, rngs)
    b, l = batch['labels'].shape
    label_mask = batch['label_mask'].astype(bool)
    # Position p + i holds labels[:, i] and predicts labels[:, i + 1]: a token only if that label is one.
    mask = jnp.concatenate([prompt_mask, label_mask[:, 1:]], axis=1)
    text = self._text_width()  # the prompt's positions around the poses
    shards, block = counts.shards, b // counts.shards  # rows gathered within each block of the batch (a mesh)
    num_prompt = self.encoder.frontend.max_outputs(counts.frames, block) + block * text
    rows = TokenRows.from_mask(mask, min(num_prompt + counts.labels, mask.size // shards), shards, counts.blocks)
    with lora.dropout_rngs(self.lm, rngs):
      h = self.lm(inputs_embeds=x, attention_mask=mask, return_hidden=True, rngs=rngs,
                  prefix_len=p if self.bidirectional_prompt else 0, rows=rows)          # [N, hidden]
      # The target rows among the token rows: position p - 1 + i predicts labels[:, i].
      before = jnp.zeros((b, p - 1), label_mask.dtype)
      by_block = lambda r: r.reshape((shards, -1) + r.shape[1:])  # token rows [N, ...] -> [S, N / S, ...]
      is_target = by_block(rows.gather(jnp.concatenate([before, label_mask], axis=1)))    # bool[S, N / S]
      labels = by_block(rows.gather(jnp.concatenate([before.astype(jnp.int32),
                                                     batch['labels'].astype(jnp.int32)], axis=1)))
      targets = TokenRows.from_mask(is_target, min(counts.labels, is_target.shape[1]), shards, counts.blocks)
      logits = self.lm.head(targets.gather(by_block(h)))
    return logits, targets.gather(labels), targets.gather(is_target)

  def start_decode(self, poses: jax.Array, pose_mask: jax.Array, max_new_tokens: int, corpus=None):
    """-> (logits f32[B, V] of the first generated token, state: decoder.DecodeState, batch-first).
    corpus i32[B]: the rows' corpora (per-corpus prompts)."""
    x, mask = self.prompt(poses, pose_mask, corpus=corpus)
    state = self.lm.init_state(x.shape[0], x.shape[1] + max_new_tokens)
    return self.lm.extend(state, inputs_embeds=x, attention_mask=mask, last_only=True,
                          bidirectional=self.bidirectional_prompt)

  def decode_step(self, state: decoder.DecodeState, tokens: jax.Array):
    """tokens i32[B] (just chosen) -> (logits f32[B, V] for the next token, new state)."""
    return self.lm.extend(state, tokens[:, None].astype(jnp.int32), last_only=True)


# --- prompts -------------------------------------------------------------------------------------------

def prompt_ids(tokenizer, prompt: str = '', *, chat_template: bool = True, bos_id: Optional[int] = None):
  """(prefix_ids, suffix_ids) around the poses.

  tokenizer: slt_jax.data.tokenizer's interface (encode, bos_id; `hf_tokenizer` for a pretrained one), or
  None. With a chat template: the user turn holds the prompt then the poses, and the suffix ends with the
  assistant turn's opening. Otherwise: BOS + prompt before the poses, nothing after (the model's learned
  answer-start embedding follows them).
  """
  hf_tok = getattr(tokenizer, 'hf_tokenizer', None)
  if chat_template and hf_tok is not None and getattr(hf_tok, 'chat_template', None):
    content = f'{prompt}\n{_POSES}' if prompt else _POSES
    text = hf_tok.apply_chat_template([{'role': 'user', 'content': content}], tokenize=False,
                                      add_generation_prompt=True)
    before, after = text.split(_POSES)
    encode = lambda s: list(hf_tok(s, add_special_tokens=False)['input_ids']) if s else []
    return tuple(encode(before)), tuple(encode(after))
  bos = getattr(tokenizer, 'bos_id', None) if tokenizer is not None else None
  bos = bos if bos is not None else bos_id
  prefix = ([bos] if bos is not None else []) + (list(tokenizer.encode(prompt)) if prompt and tokenizer else [])
  return tuple(prefix), ()


# --- building from the config ------------------------------------------------------------------------

def lm_config(config, tokenizer=None) -> decoder.DecoderConfig:
  """The LLM's DecoderConfig: the checkpoint's config.json (model.name) or model.arch, whose special ids are
  then the tokenizer's when one is given (a random model learns the tokenizer's ids: hf.with_tokenizer_ids)."""
  mc = config.model
  if mc.name:
    arch = hf.read_config(mc.name)
  else:
    arch = dict(mc.arch.to_dict() if hasattr(mc.arch, 'to_dict') else mc.arch)
    arch.setdefault('model_type', mc.family)
  arch.update(scan_layers=mc.scan_layers, remat=mc.remat)
  cfg = dataclasses.replace(decoder.config_from_hf(arch), dropout=float(mc.get('llm_dropout', 0.0)))
  return hf.with_tokenizer_ids(cfg, tokenizer) if tokenizer is not None and not mc.name else cfg


def embedding_rms(lm: decoder.Decoder) -> jax.Array:
  """f32[]: the RMS of the LLM's input token embeddings (Gemma's sqrt(hidden) scaling included)."""
  e = lm.embed_tokens.embedding[...].astype(jnp.float32)
  rms = jnp.sqrt(jnp.mean(jnp.square(e)))
  return rms * math.sqrt(lm.config.hidden_size) if lm.config.scale_embeddings else rms


def _first(ids):
  return ids[0] if isinstance(ids, (tuple, list)) else ids


def build_causal_model(config, vocab_size: int, pose_dim: int, rngs: nnx.Rngs, tokenizer=None) -> CausalSLT:
  """The decoder-only SLT model, a contract.SLTModel (pose_dim = K * C).

  The LLM is pretrained (config.model.name) or random from config.model.arch (its vocab_size, which must
  cover the tokenizer's). tokenizer: for the prompt and the EOS / pad / BOS ids (a random LLM gets its ids
  from it; a checkpoint must stop on its EOS: hf.check_tokenizer_eos); default: loaded from
  config.model.tokenizer or config.model.name when set, else none (BOS-only prompt, ids from config.json).
  """
  mc = config.model
  dtype, param_dtype = L.dtypes(config)
  tok_dir = mc.tokenizer or mc.name
  if tokenizer is None and tok_dir and any(os.path.exists(os.path.join(tok_dir, f)) for f in _TOKENIZER_FILES):
    from slt_jax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
    tokenizer = tokenizer_lib.load_tokenizer(tok_dir)
  if mc.name and mc.get('llm_dropout', 0.0):
    raise ValueError(f'model.llm_dropout={mc.llm_dropout} applies to an LLM built from model.arch; a checkpoint '
                     f'(model.name={mc.name!r}) has no dropout layers: set it to 0 (LoRA: lora_config.lora_dropout)')
  if mc.name:
    if tokenizer is not None:  # before loading the weights
      hf.check_tokenizer_eos(mc.name, tokenizer, mc.tokenizer or 'the checkpoint\'s')
    lm = hf.from_pretrained(mc.name, dtype, param_dtype, scan_layers=mc.scan_layers, remat=mc.remat)
  else:
    lm = decoder.build(lm_config(config, tokenizer), dtype, param_dtype, rngs)
  cfg = lm.config
  if vocab_size > cfg.vocab_size:
    raise ValueError(f'the tokenizer has {vocab_size} ids but the LLM only {cfg.vocab_size} embeddings')
  # Per corpus (data.mixture.NAME.prompt, else model.prompt); a table only where the corpora's ids differ.
  prompts = [prompt_ids(tokenizer, p, chat_template=mc.chat_template, bos_id=cfg.bos_token_id)
             for p in contract.per_corpus(config, 'prompt')]
  prefix, suffix = prompts[0]
  prefix_table = PromptTable.of([p for p, _ in prompts], 'the prompt before the poses (model.prompt)')
  suffix_table = PromptTable.of([s for _, s in prompts], 'the prompt after the poses (model.prompt)')
  eos = tokenizer.eos_id if tokenizer is not None else _first(cfg.eos_token_id)
  pad = tokenizer.pad_id if tokenizer is not None else cfg.pad_token_id
  if eos is None:
    raise ValueError('no EOS id: neither the tokenizer nor the LLM config.json (eos_token_id) has one')
  encoder = PoseEncoder(
      pose_dim, cfg.hidden_size, hidden=mc.pose.hidden, conv_layers=mc.pose.conv_layers,
      conv_stride=mc.pose.conv_stride, num_layers=mc.pose_encoder.num_layers,
      num_heads=mc.pose_encoder.num_heads, dropout=mc.pose.dropout, dtype=dtype, param_dtype=param_dtype,
      rngs=rngs, out_rms=embedding_rms(lm) if mc.get('projector_norm', False) else None,
      positions=mc.pose.positions)
  return CausalSLT(lm, encoder, eos_id=eos, pad_id=eos if pad is None else pad, prefix_ids=prefix,
                   suffix_ids=suffix, bidirectional_prompt=mc.get('bidirectional_prompt', False),
                   prefix_table=prefix_table, suffix_table=suffix_table, rngs=rngs)


def count_params_abstract(config, pose_dim: int = 1) -> dict:
  """Parameter counts of the configured model, built abstractly (nnx.eval_shape: no weights allocated).

  Returns {'llm': ..., 'pose_encoder': ..., 'total': ...}; 'llm' is what HF counts for the checkpoint
  (Qwen2.5-7B-Instruct: 7,615,616,512). pose_dim: K * C of the data (the front end's input layer).
  """
  mc = config.model
  cfg = lm_config(config)
  dtype, param_dtype = L.dtypes(config)
  count = lambda m: sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
  n_lm = count(nnx.eval_shape(lambda: decoder.build(cfg, dtype, param_dtype, nnx.Rngs(0))))
  n_enc = count(nnx.eval_shape(lambda: PoseEncoder(
      pose_dim, cfg.hidden_size, hidden=mc.pose.hidden, conv_layers=mc.pose.conv_layers,
      conv_stride=mc.pose.conv_stride, num_layers=mc.pose_encoder.num_layers,
      num_heads=mc.pose_encoder.num_heads, dropout=mc.pose.dropout, dtype=dtype, param_dtype=param_dtype,
      rngs=nnx.Rngs(0))))
  return {'llm': n_lm, 'pose_encoder': n_enc, 'total': n_lm + n_enc}
