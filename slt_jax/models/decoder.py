"""Llama-style decoder-only LMs: Llama 3.x, Mistral, Qwen2/2.5 and Gemma as one model, HF-compatible.

The families differ only in configuration (`DecoderConfig`, translated from HF config.json by
`config_from_hf`):
- GQA (num_kv_heads <= num_heads), RoPE with rope_theta and `rope_scaling` (llama3, linear);
- Mistral: a sliding attention window; Qwen2: q/k/v biases, tied embeddings at the small sizes, and an
  optional sliding window on the layers >= max_window_layers;
- Gemma: (1 + w) RMSNorm, embeddings scaled by sqrt(hidden) (in the compute dtype, as HF), GeGLU MLP,
  head_dim independent of hidden / heads, tied embeddings.
Layers are stacked with nnx.scan (`scan_layers`), rematerialised per `remat` (none | full | dots).

Padding: any layout works (left, right, or holes in the middle, as the causal SLT model's pose frames make).
RoPE positions are counted over the real tokens only (`positions_from_mask`), padding keys are masked,
and the sliding window is measured in those positions, so a row's real-token logits do not depend on its
padding. For left- or right-padded batches this equals HF with `attention_mask` (left padding shifts HF's
positions by a constant, which RoPE does not see).
"""
import dataclasses
import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from slt_jax.models import hf_io, layers

_ARCHITECTURES = {'llama': 'LlamaForCausalLM', 'mistral': 'MistralForCausalLM', 'qwen2': 'Qwen2ForCausalLM',
                  'gemma': 'GemmaForCausalLM'}


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Architecture of a Llama-style decoder (HF field names in the comments)."""
  model_type: str                      # llama | mistral | qwen2 | gemma
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int                      # num_hidden_layers
  num_heads: int                       # num_attention_heads
  num_kv_heads: int                    # num_key_value_heads (GQA)
  head_dim: int                        # head_dim, else hidden_size // num_heads
  hidden_act: str = 'silu'             # HF activation name (Gemma: gelu_pytorch_tanh)
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_scaling: Optional[tuple] = None  # HF rope_scaling as sorted (key, value) pairs (hashable); None = plain
  max_position_embeddings: int = 2048
  sliding_window: Optional[int] = None  # keys within this many positions of the query (itself included)
  sliding_layers: tuple = ()           # bool per layer: does it use the window (Qwen2 layer_types)
  qkv_bias: bool = False               # Qwen2 (always), Llama attention_bias
  o_bias: bool = False                 # Llama attention_bias
  mlp_bias: bool = False               # Llama mlp_bias
  norm_unit_offset: bool = False       # Gemma: x * (1 + w)
  scale_embeddings: bool = False       # Gemma: embeddings * sqrt(hidden_size)
  tie_word_embeddings: bool = False
  initializer_range: float = 0.02
  bos_token_id: Optional[int] = None
  eos_token_id: Any = None             # int or tuple of ints
  pad_token_id: Optional[int] = None
  # Not HF fields (HF's LMs have none of these): for training a small LM from scratch (causal_slt).
  dropout: float = 0.0                 # on the input embeddings and each sublayer's output (training only)
  # Not architecture: how our implementation runs it (from_pretrained(..., scan_layers=False) overrides).
  scan_layers: bool = True             # stack the layers with nnx.scan (fast compiles of 28-48 layers)
  remat: str = 'none'                  # none | full | dots: rematerialisation of each layer

  @property
  def rope_scaling_dict(self) -> Optional[dict]:
    return None if self.rope_scaling is None else dict(self.rope_scaling)


# HF config defaults (transformers 5) for keys a config.json may leave out.
_HF_DEFAULTS = {
    'llama': dict(rms_norm_eps=1e-6, max_position_embeddings=2048, tie_word_embeddings=False, bos_token_id=1,
                  eos_token_id=2, hidden_act='silu'),
    'mistral': dict(rms_norm_eps=1e-6, max_position_embeddings=4096 * 32, tie_word_embeddings=False,
                    bos_token_id=1, eos_token_id=2, hidden_act='silu', sliding_window=4096),
    'qwen2': dict(rms_norm_eps=1e-6, max_position_embeddings=32768, tie_word_embeddings=False, hidden_act='silu',
                  use_sliding_window=False, sliding_window=4096, max_window_layers=28),
    'gemma': dict(rms_norm_eps=1e-6, max_position_embeddings=8192, tie_word_embeddings=True, bos_token_id=2,
                  eos_token_id=1, pad_token_id=0, hidden_act='gelu_pytorch_tanh', head_dim=256),
}


def _rope_from_hf(hf: dict) -> tuple[float, Optional[tuple]]:
  """(rope_theta, rope_scaling) from either transformers 5's `rope_parameters` or the legacy fields."""
  params = dict(hf.get('rope_parameters') or {})
  legacy = dict(hf.get('rope_scaling') or {})
  theta = float(params.pop('rope_theta', hf.get('rope_theta', 10000.0)) or 10000.0)
  scaling = {**legacy, **params}
  scaling.pop('partial_rotary_factor', None)
  if 'type' in scaling:
    scaling.setdefault('rope_type', scaling.pop('type'))
  rope_type = scaling.get('rope_type', 'default')
  if rope_type == 'default':
    return theta, None
  if rope_type not in ('linear', 'llama3'):
    raise NotImplementedError(f'rope_type {rope_type!r} (supported: default, linear, llama3)')
  if rope_type == 'llama3':
    scaling.setdefault('original_max_position_embeddings', hf.get('max_position_embeddings'))
  return theta, tuple(sorted(scaling.items()))


def config_from_hf(hf: dict, tensor_names=None) -> DecoderConfig:
  """DecoderConfig from an HF config.json dict (`model_type` llama | mistral | qwen2 | gemma)."""
  del tensor_names  # the config says everything (a tied checkpoint's stray lm_head.weight is IGNORED).
  model_type = hf.get('model_type')
  if model_type not in _HF_DEFAULTS:
    raise ValueError(f'decoder: unsupported model_type {model_type!r} (supported: {tuple(_HF_DEFAULTS)})')
  hf = {**_HF_DEFAULTS[model_type], **hf}
  heads = int(hf['num_attention_heads'])
  num_layers = int(hf['num_hidden_layers'])
  head_dim = hf.get('head_dim') or hf['hidden_size'] // heads
  act = hf.get('hidden_activation') or hf.get('hidden_act') or 'silu'
  if model_type == 'gemma' and act == 'gelu':
    act = 'gelu_pytorch_tanh'  # Gemma's released configs say "gelu" but mean the tanh approximation (as HF).
  if act not in layers.ACTIVATIONS:
    raise ValueError(f'decoder: unsupported hidden_act {act!r}')

  window = hf.get('sliding_window')
  if model_type == 'qwen2':
    if not hf.get('use_sliding_window'):
      window = None
    layer_types = hf.get('layer_types') or [
        'sliding_attention' if window is not None and i >= hf['max_window_layers'] else 'full_attention'
        for i in range(num_layers)]
    sliding = tuple(t == 'sliding_attention' for t in layer_types) if window is not None else ()
  elif model_type == 'mistral':
    sliding = (True,) * num_layers if window is not None else ()
  else:
    window, sliding = None, ()
  if window is not None and not any(sliding):
    window, sliding = None, ()

  theta, scaling = _rope_from_hf(hf)
  attention_bias = bool(hf.get('attention_bias', False))
  eos = hf.get('eos_token_id')
  return DecoderConfig(
      model_type=model_type, vocab_size=int(hf['vocab_size']), hidden_size=int(hf['hidden_size']),
      intermediate_size=int(hf['intermediate_size']), num_layers=num_layers, num_heads=heads,
      num_kv_heads=int(hf.get('num_key_value_heads') or heads), head_dim=int(head_dim), hidden_act=act,
      rms_norm_eps=float(hf['rms_norm_eps']), rope_theta=theta, rope_scaling=scaling,
      max_position_embeddings=int(hf['max_position_embeddings']),
      sliding_window=None if window is None else int(window), sliding_layers=sliding,
      qkv_bias=True if model_type == 'qwen2' else (attention_bias and model_type != 'mistral'),
      o_bias=attention_bias and model_type in ('llama', 'gemma'),
      mlp_bias=bool(hf.get('mlp_bias', False)) and model_type == 'llama',
      norm_unit_offset=model_type == 'gemma', scale_embeddings=model_type == 'gemma',
      tie_word_embeddings=bool(hf['tie_word_embeddings']),
      initializer_range=float(hf.get('initializer_range', 0.02)),
      bos_token_id=hf.get('bos_token_id'), eos_token_id=tuple(eos) if isinstance(eos, (list, tuple)) else eos,
      pad_token_id=hf.get('pad_token_id'), **{k: hf[k] for k in ('scan_layers', 'remat') if k in hf})


# model.arch keys of each model_type beyond the common ones that config_from_hf reads for it.
_OWN_KEYS = {
    'llama': ('attention_bias', 'mlp_bias'),
    'mistral': ('sliding_window',),
    'qwen2': ('sliding_window', 'use_sliding_window', 'max_window_layers', 'layer_types'),
    'gemma': ('attention_bias', 'hidden_activation'),
}


def arch_keys(hf: dict) -> tuple[frozenset, dict]:
  """The model.arch keys (HF config.json names) of hf's model_type that slt_jax builds -> (read, fixed).

  read: the keys `config_from_hf` reads for that model_type. fixed: HF config keys it does not read -> the values
  they may have in `hf` (those with which HF builds the same model; None: any value, HF 5 ignores it too).
  """
  read = frozenset({
      'model_type', 'vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads',
      'num_key_value_heads', 'head_dim', 'hidden_act', 'rms_norm_eps', 'rope_theta', 'rope_scaling',
      'rope_parameters', 'max_position_embeddings', 'tie_word_embeddings', 'initializer_range', 'bos_token_id',
      'eos_token_id', 'pad_token_id', 'scan_layers', 'remat'}) | set(_OWN_KEYS.get(hf.get('model_type'), ()))
  fixed = {'attention_dropout': (0, 0.0),  # no attention dropout in this decoder
           'pretraining_tp': None}
  if hf.get('model_type') == 'gemma':
    fixed['use_bidirectional_attention'] = (None, False)
  return read, fixed


def config_to_hf(cfg: DecoderConfig) -> dict:
  """HF config.json dict that transformers (4.4x and 5.x) loads into the same architecture."""
  eos = list(cfg.eos_token_id) if isinstance(cfg.eos_token_id, tuple) else cfg.eos_token_id
  hf = dict(
      architectures=[_ARCHITECTURES[cfg.model_type]], model_type=cfg.model_type, vocab_size=cfg.vocab_size,
      hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
      num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
      hidden_act=cfg.hidden_act, rms_norm_eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta,
      rope_scaling=cfg.rope_scaling_dict, max_position_embeddings=cfg.max_position_embeddings,
      tie_word_embeddings=cfg.tie_word_embeddings, initializer_range=cfg.initializer_range,
      bos_token_id=cfg.bos_token_id, eos_token_id=eos, pad_token_id=cfg.pad_token_id,
      attention_dropout=0.0, use_cache=True)
  if cfg.model_type in ('llama', 'gemma'):
    hf['attention_bias'] = cfg.o_bias
  if cfg.model_type == 'llama':
    hf['mlp_bias'] = cfg.mlp_bias
  if cfg.model_type == 'mistral':
    hf['sliding_window'] = cfg.sliding_window
  if cfg.model_type == 'qwen2':
    sliding = cfg.sliding_layers or (False,) * cfg.num_layers
    hf['use_sliding_window'] = cfg.sliding_window is not None
    hf['sliding_window'] = cfg.sliding_window
    hf['max_window_layers'] = sliding.index(True) if any(sliding) else cfg.num_layers
    hf['layer_types'] = ['sliding_attention' if s else 'full_attention' for s in sliding]
  return hf


# --- the model -------------------------------------------------------------------------------------

def positions_from_mask(mask: jax.Array, start: Optional[jax.Array] = None) -> jax.Array:
  """RoPE positions counted over real tokens: bool[B, T] -> i32[B, T] (start i32[B] is added).

  Padding slots get the position of the next real token; they are masked as keys, so it never matters.
  """
  pos = jnp.cumsum(mask.astype(jnp.int32), axis=1) - mask.astype(jnp.int32)
  return pos if start is None else pos + start[:, None]


def prefix_causal_mask(t: int, prefix_len: int = 0) -> jax.Array:
  """bool[1, 1, T, T]: causal, except that every query sees the first prefix_len keys (a prefix LM)."""
  causal = layers.causal_mask(t)
  return causal | (jnp.arange(t) < prefix_len)[None, None, None, :] if prefix_len else causal


class DecoderLayer(nnx.Module):
  """Pre-norm block: x + attn(norm(x)); x + mlp(norm(x)). Attribute names follow HF."""

  def __init__(self, cfg: DecoderConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    init = layers.normal(cfg.initializer_range)
    norm = dict(eps=cfg.rms_norm_eps, unit_offset=cfg.norm_unit_offset, dtype=dtype, param_dtype=param_dtype)
    self.input_layernorm = layers.RMSNorm(cfg.hidden_size, **norm)
    self.self_attn = layers.Attention(
        cfg.hidden_size, cfg.num_heads, cfg.head_dim, num_kv_heads=cfg.num_kv_heads, qkv_bias=cfg.qkv_bias,
        out_bias=cfg.o_bias, kernel_init=init, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.post_attention_layernorm = layers.RMSNorm(cfg.hidden_size, **norm)
    self.mlp = layers.MLP(
        cfg.hidden_size, cfg.intermediate_size, activation=cfg.hidden_act, gated=True, use_bias=cfg.mlp_bias,
        names=('gate_proj', 'up_proj', 'down_proj'), kernel_init=init, dtype=dtype, param_dtype=param_dtype,
        rngs=rngs)
    self.dropout = layers.Dropout(cfg.dropout)

  def __call__(self, x, mask, rotary, cache=None, rngs=None, causal=True, rows=None):
    """x: [B, T, hidden]; mask: bool[B, 1, T, S]; cache: layers.KVCache or None -> (x, cache).

    causal=False (with a cache): `mask` alone says what each new token sees (a bidirectional prompt).
    Padding-free: with `rows` (token_rows.TokenRows) x is the token rows [N, hidden] and so is the output.
    """
    h = self.self_attn(self.input_layernorm(x), mask=mask, rotary=rotary, cache=cache, causal=causal, rows=rows)
    if cache is not None:
      h, cache = h
    x = x + self.dropout(h, rngs)
    x = x + self.dropout(self.mlp(self.post_attention_layernorm(x)), rngs)
    return x, cache


class DecodeState(NamedTuple):
  """KV cache of the whole stack. Every leaf is batch-first (beam search gathers them with jax.tree.map).

  k, v: [B, L, S, H_kv, D]; index: i32[B] the next slot written (equal across rows); kv_mask: bool[B, S]
  slots that hold real tokens; kv_pos: i32[B, S] their RoPE positions; next_pos: i32[B] the position of the
  next real token.
  """
  k: jax.Array
  v: jax.Array
  index: jax.Array
  kv_mask: jax.Array
  kv_pos: jax.Array
  next_pos: jax.Array


class Decoder(nnx.Module):
  """A Llama-style causal LM (HF `*ForCausalLM`); parameter names follow HF's (`model.` dropped).

  Call: `logits = model(input_ids=i32[B, T] | inputs_embeds=[B, T, hidden], attention_mask=bool[B, T])`
  -> f32[B, T, V]. Incremental: `init_state` then `extend` (prefill with T tokens, steps with 1).
  """

  def __init__(self, cfg: DecoderConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.config, self.dtype = cfg, dtype
    self.embed_tokens = layers.Embed(cfg.vocab_size, cfg.hidden_size, std=cfg.initializer_range, dtype=dtype,
                                     param_dtype=param_dtype, rngs=rngs)
    self.layers = layers.make_layers(
        lambda r: DecoderLayer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=r), cfg.num_layers, rngs,
        cfg.scan_layers)
    self.norm = layers.RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, unit_offset=cfg.norm_unit_offset,
                               dtype=dtype, param_dtype=param_dtype)
    if not cfg.tie_word_embeddings:
      self.lm_head = layers.dense(cfg.hidden_size, cfg.vocab_size, ('embed', 'vocab'),
                                  kernel_init=layers.normal(cfg.initializer_range), dtype=dtype,
                                  param_dtype=param_dtype, rngs=rngs)

  # -- pieces -----------------------------------------------------------------------------------------
  def embed(self, input_ids: jax.Array) -> jax.Array:
    """i32[B, T] -> [B, T, hidden] in the compute dtype (Gemma: times sqrt(hidden), in that dtype)."""
    x = self.embed_tokens(input_ids).astype(self.dtype)
    if self.config.scale_embeddings:
      x = x * jnp.asarray(math.sqrt(self.config.hidden_size), self.dtype)
    return x

  def head(self, x: jax.Array) -> jax.Array:
    """Final norm + LM head: [B, T, hidden] -> f32[B, T, V]."""
    x = self.norm(x)
    logits = self.embed_tokens.attend(x) if self.config.tie_word_embeddings else self.lm_head(x)
    return logits.astype(jnp.float32)

  def _window(self, q_pos, k_pos):
    """bool[B, 1, T, S]: key within the sliding window of the query (positions over real tokens)."""
    return (q_pos[:, :, None] - k_pos[:, None, :] < self.config.sliding_window)[:, None]

  def _run(self, x, positions, full_mask, sliding_mask, caches=None, rngs=None, causal=True, rows=None):
    """Runs the layer stack. Per-layer caches are layer-first here (KVCache leaves [L, B, ...]).

    rows: padding-free (token_rows.TokenRows): x is the token rows [N, hidden]; masks and positions [B, T].
    """
    c = self.config
    rot = layers.rotary(positions, layers.rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling_dict))
    flags = jnp.asarray(self.config.sliding_layers or (False,) * self.config.num_layers)
    mixed = sliding_mask is not None and not all(self.config.sliding_layers)

    def body(layer, h, xs, layer_rngs):
      flag, cache = xs
      if sliding_mask is None:
        mask = full_mask
      elif mixed:
        mask = jnp.where(flag, sliding_mask, full_mask)
      else:
        mask = sliding_mask
      return layer(h, mask, rot, cache, layer_rngs, causal, rows)

    rngs = rngs if c.dropout else None
    return layers.apply_layers(self.layers, body, x, (flags, caches), num_layers=c.num_layers,
                               scan=c.scan_layers, remat=c.remat, rngs=rngs)

  def _inputs(self, input_ids, inputs_embeds):
    if (input_ids is None) == (inputs_embeds is None):
      raise ValueError('pass exactly one of input_ids and inputs_embeds')
    return self.embed(input_ids) if inputs_embeds is None else inputs_embeds.astype(self.dtype)

  # -- full forward -----------------------------------------------------------------------------------
  def __call__(self, input_ids: Optional[jax.Array] = None, *, inputs_embeds: Optional[jax.Array] = None,
               attention_mask: Optional[jax.Array] = None, positions: Optional[jax.Array] = None,
               rngs: Optional[nnx.Rngs] = None, return_hidden: bool = False,
               prefix_len: int = 0, rows=None) -> jax.Array:
    """Teacher-forced logits f32[B, T, V] (or the final hidden states [B, T, hidden] before the norm).

    attention_mask: bool[B, T] (True = real token; default all real); positions: i32[B, T] (default
    counted over the real tokens). prefix_len: the first prefix_len positions attend to each other both
    ways (a prefix LM: every position sees the whole prefix); 0 = causal throughout, as HF.
    rngs: dropout (config.dropout; HF's LMs have none, LoRA adapters bring their own).
    rows: padding-free (token_rows.TokenRows of the real tokens, within attention_mask): the position-wise
    layers run on those tokens' rows only and the result is theirs, [N, V] (or [N, hidden]); the attention
    core, its masks and the RoPE positions stay in the [B, T] layout.
    """
    x = self._inputs(input_ids, inputs_embeds)
    b, t = x.shape[:2]
    mask = jnp.ones((b, t), bool) if attention_mask is None else attention_mask.astype(bool)
    positions = positions_from_mask(mask) if positions is None else positions
    full = layers.combine_masks(prefix_causal_mask(t, prefix_len), layers.key_mask(mask))
    sliding = None if self.config.sliding_window is None else full & self._window(positions, positions)
    if self.config.dropout and rngs is not None:
      x = layers.Dropout(self.config.dropout)(x, rngs)
    if rows is not None:
      x = rows.gather(x)
    x, _ = self._run(x, positions, full, sliding, rngs=rngs, rows=rows)
    return x if return_hidden else self.head(x)

  # -- incremental decoding ---------------------------------------------------------------------------
  def init_state(self, batch: int, max_len: int, dtype=None) -> DecodeState:
    """An empty cache of `max_len` slots (prompt + generated tokens)."""
    c = self.config
    shape = (batch, c.num_layers, max_len, c.num_kv_heads, c.head_dim)
    zeros = jnp.zeros(shape, dtype or self.dtype)
    return DecodeState(zeros, zeros, jnp.zeros((batch,), jnp.int32), jnp.zeros((batch, max_len), bool),
                       jnp.zeros((batch, max_len), jnp.int32), jnp.zeros((batch,), jnp.int32))

  def extend(self, state: DecodeState, input_ids: Optional[jax.Array] = None, *,
             inputs_embeds: Optional[jax.Array] = None, attention_mask: Optional[jax.Array] = None,
             last_only: bool = False, bidirectional: bool = False):
    """Appends T tokens (prefill: the prompt; a step: T = 1) to the cache.

    attention_mask: bool[B, T] of the new tokens (False = padding: cached but never attended to).
    bidirectional: the new tokens see each other both ways (the prefix of `__call__(prefix_len=T)`).
    Returns (logits f32[B, T, V], or f32[B, V] of the last token when last_only; the new state).
    """
    x = self._inputs(input_ids, inputs_embeds)
    b, t = x.shape[:2]
    new_mask = jnp.ones((b, t), bool) if attention_mask is None else attention_mask.astype(bool)
    positions = positions_from_mask(new_mask, state.next_pos)
    write = lambda buf, new: layers._write_rows(buf, new, state.index)  # pylint: disable=protected-access
    kv_mask, kv_pos = write(state.kv_mask, new_mask), write(state.kv_pos, positions)
    full = kv_mask[:, None, None, :]   # causal order over the slots is added by Attention from the index
    sliding = None if self.config.sliding_window is None else full & self._window(positions, kv_pos)
    layer_first = lambda a: jnp.swapaxes(a, 0, 1)
    caches = layers.KVCache(layer_first(state.k), layer_first(state.v),
                            jnp.broadcast_to(state.index, (self.config.num_layers, b)))
    x, caches = self._run(x, positions, full, sliding, caches, causal=not bidirectional)
    state = DecodeState(layer_first(caches.k), layer_first(caches.v), state.index + t, kv_mask, kv_pos,
                        state.next_pos + new_mask.sum(axis=1, dtype=jnp.int32))
    logits = self.head(x[:, -1:])[:, 0] if last_only else self.head(x)
    return logits, state


def build(cfg: DecoderConfig, dtype=jnp.float32, param_dtype=jnp.float32, rngs: Optional[nnx.Rngs] = None):
  """The family-module entry point of slt_jax.models.hf (random init; from_pretrained overwrites it)."""
  return Decoder(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs if rngs is not None else nnx.Rngs(0))


# --- HF checkpoint names ---------------------------------------------------------------------------

IGNORED = (r'lm_head\.weight',  # a tied checkpoint may still carry its copy of the embeddings
           r'model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq')  # old checkpoints' RoPE buffers


def hf_table(cfg: DecoderConfig) -> list[hf_io.TensorMapping]:
  """The HF name mapping: one TensorMapping per checkpoint tensor ('T': HF (out, in) <-> our kernel [in, out])."""
  layer = [
      ('input_layernorm.weight', ('input_layernorm', 'scale'), None),
      ('post_attention_layernorm.weight', ('post_attention_layernorm', 'scale'), None),
      *[(f'self_attn.{p}.weight', ('self_attn', p, 'kernel'), 'T') for p in ('q_proj', 'k_proj', 'v_proj', 'o_proj')],
      *[(f'mlp.{p}.weight', ('mlp', p, 'kernel'), 'T') for p in ('gate_proj', 'up_proj', 'down_proj')],
  ]
  if cfg.qkv_bias:
    layer += [(f'self_attn.{p}.bias', ('self_attn', p, 'bias'), None) for p in ('q_proj', 'k_proj', 'v_proj')]
  if cfg.o_bias:
    layer += [('self_attn.o_proj.bias', ('self_attn', 'o_proj', 'bias'), None)]
  if cfg.mlp_bias:
    layer += [(f'mlp.{p}.bias', ('mlp', p, 'bias'), None) for p in ('gate_proj', 'up_proj', 'down_proj')]
  table = [hf_io.TensorMapping('model.embed_tokens.weight', ('embed_tokens', 'embedding'))]
  table += hf_io.layer_mappings(cfg.num_layers, cfg.scan_layers, 'model.layers.{i}.', ('layers',), layer)
  table += [hf_io.TensorMapping('model.norm.weight', ('norm', 'scale'))]
  if not cfg.tie_word_embeddings:
    table += [hf_io.TensorMapping('lm_head.weight', ('lm_head', 'kernel'), transform='T')]
  return table
