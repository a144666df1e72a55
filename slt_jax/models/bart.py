"""BART / mBART in Flax NNX, loading HF checkpoints and matching HF's PyTorch logits.

BART: post-LN layers, learned positions with HF's offset of 2, layernorm_embedding, tied lm_head plus the
final_logits_bias buffer. mBART: the same with pre-LN layers, a final layer norm on each stack and
scale_embedding (sqrt(d_model)). Same call / encode / decode / init_cache API as t5.T5.
"""
import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from slt_jax.models import layers as L
from slt_jax.models.hf_io import TensorMapping, layer_mappings

POS_OFFSET = 2  # HF BartLearnedPositionalEmbedding: position p uses row p + 2.


@dataclasses.dataclass(frozen=True)
class BartConfig:
  """HF BartConfig / MBartConfig fields (same names) + how we build the stack."""
  vocab_size: int = 50265
  max_position_embeddings: int = 1024
  d_model: int = 1024
  encoder_layers: int = 12
  decoder_layers: int = 12
  encoder_attention_heads: int = 16
  decoder_attention_heads: int = 16
  encoder_ffn_dim: int = 4096
  decoder_ffn_dim: int = 4096
  activation_function: str = 'gelu'
  dropout: float = 0.1
  attention_dropout: float = 0.0
  activation_dropout: float = 0.0
  init_std: float = 0.02
  scale_embedding: bool = False
  tie_word_embeddings: bool = True
  pad_token_id: int = 1
  bos_token_id: int = 0
  eos_token_id: int = 2
  decoder_start_token_id: int = 2
  forced_bos_token_id: Optional[int] = None
  model_type: str = 'bart'          # bart (post-LN) | mbart (pre-LN + final layer norms)
  scan_layers: bool = True
  remat: str = 'none'

  @property
  def pre_norm(self) -> bool:
    return self.model_type == 'mbart'


_HF_FIELDS = tuple(f.name for f in dataclasses.fields(BartConfig)
                   if f.name not in ('model_type', 'scan_layers', 'remat', 'tie_word_embeddings'))


def config_from_hf(hf: dict, tensor_names: Optional[set] = None) -> BartConfig:
  """HF config.json dict -> BartConfig. The lm_head is separate only when the file has one."""
  kw = {k: hf[k] for k in _HF_FIELDS if hf.get(k) is not None}
  if isinstance(kw.get('eos_token_id'), (list, tuple)):
    kw['eos_token_id'] = kw['eos_token_id'][0]
  if tensor_names is None:
    tie = hf.get('tie_word_embeddings', True) is not False
  else:
    tie = 'lm_head.weight' not in tensor_names
  extra = {k: hf[k] for k in ('scan_layers', 'remat') if k in hf}
  return BartConfig(**kw, tie_word_embeddings=tie, model_type=hf.get('model_type', 'bart'), **extra)


def arch_keys(hf: dict) -> tuple[frozenset, dict]:
  """The model.arch keys (HF config.json names) of BART / mBART that slt_jax builds -> (read, fixed).

  read: the keys `config_from_hf` reads. fixed: HF BartConfig keys it does not read -> the values they may have
  in `hf` (those with which HF builds the same model; None: any value).
  """
  read = frozenset(_HF_FIELDS) | {'model_type', 'tie_word_embeddings', 'scan_layers', 'remat'}
  eos = hf.get('eos_token_id', BartConfig.eos_token_id)
  fixed = {'encoder_layerdrop': (0, 0.0), 'decoder_layerdrop': (0, 0.0),  # no LayerDrop here
           'num_hidden_layers': (hf.get('encoder_layers', BartConfig.encoder_layers),),  # HF: = encoder_layers
           'forced_eos_token_id': (eos, None),  # generation forces EOS (eos_token_id) at the length limit
           'is_decoder': (False,)}
  return read, fixed


def config_to_hf(cfg: BartConfig) -> dict:
  hf = {k: getattr(cfg, k) for k in _HF_FIELDS}
  arch = 'MBartForConditionalGeneration' if cfg.model_type == 'mbart' else 'BartForConditionalGeneration'
  hf.update(model_type=cfg.model_type, architectures=[arch], is_encoder_decoder=True,
            tie_word_embeddings=cfg.tie_word_embeddings, num_hidden_layers=cfg.encoder_layers,
            forced_eos_token_id=cfg.eos_token_id, dtype='float32')
  return hf


class BartLayer(nnx.Module):
  """Self-attention, (decoder) cross-attention, feed-forward; post-LN (BART) or pre-LN (mBART)."""

  def __init__(self, cfg: BartConfig, *, decoder: bool, dtype, param_dtype, rngs: nnx.Rngs):
    d = cfg.d_model
    heads = cfg.decoder_attention_heads if decoder else cfg.encoder_attention_heads
    ffn = cfg.decoder_ffn_dim if decoder else cfg.encoder_ffn_dim
    init = L.normal(cfg.init_std)
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    attn = lambda: L.Attention(d, heads, d // heads, use_bias=True, dropout=cfg.attention_dropout,
                               kernel_init=init, **kw)
    self.pre_norm, self.cross = cfg.pre_norm, decoder
    self.self_attn, self.self_norm = attn(), L.LayerNorm(d, **kw)
    if decoder:
      self.cross_attn, self.cross_norm = attn(), L.LayerNorm(d, **kw)
    self.mlp = L.MLP(d, ffn, activation=cfg.activation_function, use_bias=True, names=('fc1', 'fc2'),
                     dropout=cfg.activation_dropout, kernel_init=init, **kw)
    self.mlp_norm = L.LayerNorm(d, **kw)
    self.dropout = L.Dropout(cfg.dropout)

  def __call__(self, x, *, mask=None, enc=None, enc_mask=None, cache=None, rngs=None, rows=None, enc_rows=None):
    """x: [B, T, d]; enc: encoder states [B, S, d] or their (k, v); cache: KVCache -> (x, cache).

    Padding-free: with `rows` (token_rows.TokenRows) x is the token rows [N, d]; with `enc_rows`, enc is.
    """
    drop = lambda y: self.dropout(y, rngs)

    def sublayer(x, norm, f):
      if self.pre_norm:
        return x + drop(f(norm(x)))
      return norm(x + drop(f(x)))

    def self_attn(h):
      nonlocal cache
      y = self.self_attn(h, mask=mask, cache=cache, rngs=rngs, rows=rows)
      if cache is not None:
        y, cache = y
      return y

    x = sublayer(x, self.self_norm, self_attn)
    if self.cross:
      x = sublayer(x, self.cross_norm,
                   lambda h: self.cross_attn(h, enc, mask=enc_mask, rngs=rngs, rows=rows, kv_rows=enc_rows))
    x = sublayer(x, self.mlp_norm, lambda h: self.mlp(h, rngs=rngs))
    return x, cache


class BartStack(nnx.Module):
  """Encoder or decoder: + learned positions -> layernorm_embedding -> layers (-> layer_norm, mBART)."""

  def __init__(self, cfg: BartConfig, *, decoder: bool, dtype, param_dtype, rngs: nnx.Rngs):
    self.cfg, self.decoder = cfg, decoder
    self.num_layers = cfg.decoder_layers if decoder else cfg.encoder_layers
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.positions = L.Embed(cfg.max_position_embeddings + POS_OFFSET, cfg.d_model, names=(None, 'embed'),
                             std=cfg.init_std, **kw)
    self.embed_norm = L.LayerNorm(cfg.d_model, **kw)
    self.layers = L.make_layers(lambda r: BartLayer(cfg, decoder=decoder, dtype=dtype, param_dtype=param_dtype,
                                                    rngs=r), self.num_layers, rngs, cfg.scan_layers)
    if cfg.pre_norm:
      self.final_norm = L.LayerNorm(cfg.d_model, **kw)
    self.dropout = L.Dropout(cfg.dropout)

  def __call__(self, x, positions, *, mask=None, enc=None, enc_mask=None, caches=None, index=None, rngs=None,
               rows=None, enc_rows=None):
    """x: [B, T, d] token embeddings, positions: i32[B|1, T] -> ([B, T, d], new (k, v) layer-major | None).

    caches: (k, v, cross_k, cross_v) layer-major [L, B, ...] for cached decoding at index i32[B].
    rows: padding-free (token_rows.TokenRows): the layers run on x's token rows and return them, [N, d];
    enc_rows: enc is the encoder's token rows.
    """
    x = x + self.positions(positions + POS_OFFSET).astype(x.dtype)
    if rows is not None:
      x = rows.gather(x)
    x = self.dropout(self.embed_norm(x), rngs)
    if caches is None:
      def body(layer, h, _, r):
        return layer(h, mask=mask, enc=enc, enc_mask=enc_mask, rngs=r, rows=rows, enc_rows=enc_rows)[0], None
      x, new = L.apply_layers(self.layers, body, x, num_layers=self.num_layers, scan=self.cfg.scan_layers,
                              remat=self.cfg.remat, rngs=rngs)
    else:
      def body(layer, h, xs, r):
        k, v, ck, cv = xs
        h, c = layer(h, enc=(ck, cv), enc_mask=enc_mask, cache=L.KVCache(k, v, index), rngs=r)
        return h, (c.k, c.v)
      x, new = L.apply_layers(self.layers, body, x, caches, num_layers=self.num_layers,
                              scan=self.cfg.scan_layers, rngs=rngs)
    if self.cfg.pre_norm:
      x = self.final_norm(x)
    return x, new


class Bart(nnx.Module):
  """(M)BartForConditionalGeneration. Logits are float32 whatever the compute dtype."""

  def __init__(self, cfg: BartConfig, dtype=jnp.float32, param_dtype=None, *, rngs: nnx.Rngs):
    param_dtype = dtype if param_dtype is None else param_dtype
    self.config, self.dtype = cfg, dtype
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.embed_scale = math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0
    self.shared = L.Embed(cfg.vocab_size, cfg.d_model, std=cfg.init_std, **kw)
    self.encoder = BartStack(cfg, decoder=False, **kw)
    self.decoder = BartStack(cfg, decoder=True, **kw)
    if not cfg.tie_word_embeddings:
      self.lm_head = L.dense(cfg.d_model, cfg.vocab_size, ('embed', 'vocab'), kernel_init=L.normal(cfg.init_std),
                             **kw)
    self.final_logits_bias = L.Buffer(jnp.zeros((cfg.vocab_size,), param_dtype))

  def embed(self, ids: jax.Array) -> jax.Array:
    """i32[B, T] -> [B, T, d] token embeddings, scaled like HF's (for prompts next to pose embeddings)."""
    return self.shared(ids) * jnp.asarray(self.embed_scale, self.dtype)

  def encode(self, input_ids=None, attention_mask=None, inputs_embeds=None, rngs=None, rows=None) -> jax.Array:
    """input_ids i32[B, S] or inputs_embeds [B, S, d] (used as given, like HF); mask [B, S] -> [B, S, d].

    rows: padding-free (token_rows.TokenRows of attention_mask): returns the tokens' rows [N, d] instead.
    """
    x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds.astype(self.dtype)
    pos = jnp.arange(x.shape[1])[None]
    return self.encoder(x, pos, mask=L.key_mask(attention_mask), rngs=rngs, rows=rows)[0]

  def logits(self, x: jax.Array) -> jax.Array:
    out = self.shared.attend(x) if self.config.tie_word_embeddings else self.lm_head(x)
    return out.astype(jnp.float32) + self.final_logits_bias[...].astype(jnp.float32)

  def decode(self, decoder_input_ids, encoder_hidden=None, encoder_mask=None, decoder_attention_mask=None,
             cache: Optional[L.Seq2SeqCache] = None, rngs=None, rows=None, encoder_rows=None):
    """Decoder pass -> (logits f32[B, T, V], cache); see t5.T5.decode (padding-free `rows` included)."""
    x = self.embed(decoder_input_ids)
    t = x.shape[1]
    if cache is None:
      mask = L.combine_masks(L.causal_mask(t), L.key_mask(decoder_attention_mask))
      x, _ = self.decoder(x, jnp.arange(t)[None], mask=mask, enc=encoder_hidden,
                          enc_mask=L.key_mask(encoder_mask), rngs=rngs, rows=rows, enc_rows=encoder_rows)
      return self.logits(x), None
    pos = cache.index[:, None] + jnp.arange(t)[None]
    x, (k, v) = self.decoder(x, pos, enc_mask=L.key_mask(cache.enc_mask), caches=cache.layer_major(),
                             index=cache.index, rngs=rngs)
    cache = cache._replace(k=jnp.moveaxis(k, 0, 1), v=jnp.moveaxis(v, 0, 1), index=cache.index + t)
    return self.logits(x), cache

  def init_cache(self, encoder_hidden: jax.Array, encoder_mask: jax.Array, max_len: int) -> L.Seq2SeqCache:
    heads = self.config.decoder_attention_heads
    return L.init_seq2seq_cache(self.decoder.layers, self.decoder.num_layers, self.config.scan_layers,
                                encoder_hidden, encoder_mask, max_len, heads, self.config.d_model // heads,
                                self.dtype)

  def __call__(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
               inputs_embeds=None, rngs=None) -> jax.Array:
    """HF-style forward -> logits f32[B, T_dec, V]."""
    enc = self.encode(input_ids, attention_mask, inputs_embeds, rngs=rngs)
    mask = attention_mask if attention_mask is not None else jnp.ones(enc.shape[:2], bool)
    return self.decode(decoder_input_ids, enc, mask, decoder_attention_mask, rngs=rngs)[0]


def build(cfg: BartConfig, dtype=jnp.float32, param_dtype=None, rngs: Optional[nnx.Rngs] = None) -> Bart:
  return Bart(cfg, dtype, param_dtype, rngs=rngs or nnx.Rngs(0))


# --- HF names --------------------------------------------------------------------------------------

IGNORED = (r'model\.encoder\.embed_tokens\.weight', r'model\.decoder\.embed_tokens\.weight')


def hf_table(cfg: BartConfig) -> list[TensorMapping]:
  """HF (M)BartForConditionalGeneration tensor names <-> our parameter paths."""
  table = [TensorMapping('model.shared.weight', ('shared', 'embedding'),
                         aliases=('model.encoder.embed_tokens.weight', 'model.decoder.embed_tokens.weight')),
           TensorMapping('final_logits_bias', ('final_logits_bias',), transform='row', optional=True)]
  lin = lambda hf, ours: [(f'{hf}.weight', ours + ('kernel',), 'T'), (f'{hf}.bias', ours + ('bias',), None)]
  ln = lambda hf, ours: [(f'{hf}.weight', (ours, 'scale'), None), (f'{hf}.bias', (ours, 'bias'), None)]
  attn = lambda hf, ours: sum((lin(f'{hf}.{p}_proj', (ours, f'{o}_proj')) for p, o in
                               (('q', 'q'), ('k', 'k'), ('v', 'v'), ('out', 'o'))), [])
  common = (attn('self_attn', 'self_attn') + ln('self_attn_layer_norm', 'self_norm')
            + lin('fc1', ('mlp', 'fc1')) + lin('fc2', ('mlp', 'fc2')) + ln('final_layer_norm', 'mlp_norm'))
  cross = attn('encoder_attn', 'cross_attn') + ln('encoder_attn_layer_norm', 'cross_norm')
  for stack, n, entries in (('encoder', cfg.encoder_layers, common),
                            ('decoder', cfg.decoder_layers, common + cross)):
    table.append(TensorMapping(f'model.{stack}.embed_positions.weight', (stack, 'positions', 'embedding')))
    table += [TensorMapping(h, (stack,) + o) for h, o, _ in ln(f'model.{stack}.layernorm_embedding', 'embed_norm')]
    if cfg.pre_norm:
      table += [TensorMapping(h, (stack,) + o) for h, o, _ in ln(f'model.{stack}.layer_norm', 'final_norm')]
    table += layer_mappings(n, cfg.scan_layers, f'model.{stack}.layers.{{i}}.', (stack, 'layers'), entries)
  if not cfg.tie_word_embeddings:
    table.append(TensorMapping('lm_head.weight', ('lm_head', 'kernel'), transform='T'))
  return table
