"""T5 / T5 v1.1 / mT5 in Flax NNX, loading HF checkpoints and matching HF's PyTorch logits.

Variants (all from config.json): v1.0 (relu, tied embeddings, logits rescaled by d_model**-0.5), v1.1
(gated-gelu, untied lm_head, no rescaling), mT5 (as v1.1; transformers 5 never rescales mT5 logits),
num_decoder_layers != num_layers. Relative position bias: one table per stack, computed once outside
the layer scan (HF keeps it in layer 0 and passes it on).

  model = T5(cfg, rngs=nnx.Rngs(0))
  logits = model(input_ids=..., attention_mask=..., decoder_input_ids=..., decoder_attention_mask=...)
"""
import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from slt_jax.models import layers as L
from slt_jax.models.hf_io import TensorMapping, layer_mappings


@dataclasses.dataclass(frozen=True)
class T5Config:
  """HF T5Config fields (same names) + how we build the stack (scan_layers, remat)."""
  vocab_size: int = 32128
  d_model: int = 512
  d_kv: int = 64
  d_ff: int = 2048
  num_layers: int = 6
  num_decoder_layers: int = 6
  num_heads: int = 8
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dropout_rate: float = 0.1
  layer_norm_epsilon: float = 1e-6
  initializer_factor: float = 1.0
  feed_forward_proj: str = 'relu'       # relu | gated-gelu | gated-silu ...
  tie_word_embeddings: bool = True      # True: logits from `shared`; False: separate lm_head.
  scale_decoder_outputs: bool = True    # multiply decoder output by d_model**-0.5 before the logits.
  pad_token_id: int = 0
  eos_token_id: int = 1
  decoder_start_token_id: int = 0
  model_type: str = 't5'                # t5 | mt5
  scan_layers: bool = True              # stack layers with nnx.scan.
  remat: str = 'none'                   # none | full | dots

  @property
  def gated(self) -> bool:
    return self.feed_forward_proj.startswith('gated-')

  @property
  def activation(self) -> str:
    act = self.feed_forward_proj.split('-')[-1]
    return 'gelu_new' if self.feed_forward_proj == 'gated-gelu' else act


_HF_FIELDS = ('vocab_size', 'd_model', 'd_kv', 'd_ff', 'num_layers', 'num_decoder_layers', 'num_heads',
              'relative_attention_num_buckets', 'relative_attention_max_distance', 'dropout_rate',
              'layer_norm_epsilon', 'initializer_factor', 'feed_forward_proj', 'pad_token_id', 'eos_token_id',
              'decoder_start_token_id')


def config_from_hf(hf: dict, tensor_names: Optional[set] = None) -> T5Config:
  """HF config.json dict (or any dict of T5Config fields) -> T5Config.

  Tying follows transformers 5: the lm_head is separate when the checkpoint has `lm_head.weight`
  (tensor_names given) or, without a checkpoint, when tie_word_embeddings is False. Logit rescaling:
  `scale_decoder_outputs` if present, else T5's tie_word_embeddings; mT5 never rescales.
  """
  model_type = hf.get('model_type', 't5')
  kw = {k: hf[k] for k in _HF_FIELDS if hf.get(k) is not None}
  if isinstance(kw.get('eos_token_id'), (list, tuple)):
    kw['eos_token_id'] = kw['eos_token_id'][0]
  kw.setdefault('num_decoder_layers', kw.get('num_layers', T5Config.num_layers))
  tie_cfg = hf.get('tie_word_embeddings', True) is not False
  tie = tie_cfg if tensor_names is None else 'lm_head.weight' not in tensor_names
  if model_type == 'mt5':
    scale = bool(hf.get('scale_decoder_outputs', False))
  else:
    scale = bool(hf.get('scale_decoder_outputs', tie_cfg))
  extra = {k: hf[k] for k in ('scan_layers', 'remat') if k in hf}
  return T5Config(**kw, tie_word_embeddings=tie, scale_decoder_outputs=scale, model_type=model_type, **extra)


def arch_keys(hf: dict) -> tuple[frozenset, dict]:
  """The model.arch keys (HF config.json names) of T5 / mT5 that slt_jax builds -> (read, fixed).

  read: the keys `config_from_hf` reads. fixed: HF T5Config keys it does not read -> the values they may have
  in `hf` (those with which HF builds the same model; None: any value, HF ignores it too).
  """
  ff = T5Config(feed_forward_proj=hf.get('feed_forward_proj', T5Config.feed_forward_proj))
  read = frozenset(_HF_FIELDS) | {'model_type', 'tie_word_embeddings', 'scale_decoder_outputs', 'scan_layers',
                                  'remat'}
  # HF derives the activation from feed_forward_proj, but a config.json's own dense_act_fn / is_gated_act win.
  fixed = {'dense_act_fn': (ff.activation,), 'is_gated_act': (ff.gated,), 'is_decoder': (False,),
           'bos_token_id': None}
  return read, fixed


def config_to_hf(cfg: T5Config) -> dict:
  hf = {k: getattr(cfg, k) for k in _HF_FIELDS}
  arch = 'MT5ForConditionalGeneration' if cfg.model_type == 'mt5' else 'T5ForConditionalGeneration'
  hf.update(model_type=cfg.model_type, architectures=[arch], is_encoder_decoder=True,
            tie_word_embeddings=cfg.tie_word_embeddings, scale_decoder_outputs=cfg.scale_decoder_outputs,
            dense_act_fn=cfg.activation, is_gated_act=cfg.gated, dtype='float32')
  return hf


# --- relative position buckets ---------------------------------------------------------------------

def _bucket_table(bidirectional: bool, num_buckets: int, max_distance: int) -> np.ndarray:
  """Bucket of |relative distance| n for n in [0, max_distance], computed in float32 like HF/torch so the
  log-spaced bucket boundaries land exactly where HF's do (beyond max_distance all share the last)."""
  if bidirectional:
    num_buckets //= 2
  max_exact = num_buckets // 2
  n = np.arange(max_distance + 1)
  with np.errstate(divide='ignore'):
    large = max_exact + (np.log(n.astype(np.float32) / np.float32(max_exact))
                         / np.float32(math.log(max_distance / max_exact))
                         * np.float32(num_buckets - max_exact))
  large = np.minimum(np.nan_to_num(large, neginf=0).astype(np.int64), num_buckets - 1)
  return np.where(n < max_exact, n, large).astype(np.int32)


def relative_position_bucket(rel: jax.Array, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> jax.Array:
  """rel = key_pos - query_pos (int array) -> bucket ids in [0, num_buckets)."""
  table = jnp.asarray(_bucket_table(bidirectional, num_buckets, max_distance))
  if bidirectional:
    offset = (rel > 0).astype(jnp.int32) * (num_buckets // 2)
    n = jnp.abs(rel)
  else:
    offset = 0
    n = -jnp.minimum(rel, 0)
  return offset + table[jnp.minimum(n, max_distance)]


# --- modules ---------------------------------------------------------------------------------------

class T5Block(nnx.Module):
  """Pre-norm block: self-attention, (decoder) cross-attention, feed-forward; residual dropout."""

  def __init__(self, cfg: T5Config, *, cross: bool, dtype, param_dtype, rngs: nnx.Rngs):
    d, h, dk, f = cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.initializer_factor
    # HF / Mesh TF init: T5 attention is unscaled (scale=1.0), the query init carries the 1/sqrt(d_kv).
    attn_init = {'q_proj': L.normal(f * (d * dk) ** -0.5), 'k_proj': L.normal(f * d ** -0.5),
                 'v_proj': L.normal(f * d ** -0.5), 'o_proj': L.normal(f * (h * dk) ** -0.5)}
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    attn = lambda: L.Attention(d, h, dk, scale=1.0, dropout=cfg.dropout_rate, kernel_init=attn_init,
                               rngs=rngs, **kw)
    norm = lambda: L.RMSNorm(d, cfg.layer_norm_epsilon, **kw)
    self.cross = cross
    self.self_norm, self.self_attn = norm(), attn()
    if cross:
      self.cross_norm, self.cross_attn = norm(), attn()
    names = ('wi_0', 'wi_1', 'wo') if cfg.gated else ('wi', 'wo')
    mlp_init = {n: L.normal(f * d ** -0.5) for n in names[:-1]} | {'wo': L.normal(f * cfg.d_ff ** -0.5)}
    self.mlp_norm = norm()
    self.mlp = L.MLP(d, cfg.d_ff, activation=cfg.activation, gated=cfg.gated, names=names,
                     dropout=cfg.dropout_rate, kernel_init=mlp_init, rngs=rngs, **kw)
    self.dropout = L.Dropout(cfg.dropout_rate)

  def __call__(self, x, *, mask=None, bias=None, enc=None, enc_mask=None, cache=None, rngs=None, rows=None,
               enc_rows=None):
    """x: [B, T, d]; enc: encoder states [B, S, d] or their (k, v); cache: KVCache -> (x, cache).

    Padding-free: with `rows` (token_rows.TokenRows) x is the token rows [N, d]; with `enc_rows`, enc is.
    """
    drop = lambda y: self.dropout(y, rngs)
    y = self.self_attn(self.self_norm(x), mask=mask, bias=bias, cache=cache, rngs=rngs, rows=rows)
    if cache is not None:
      y, cache = y
    x = x + drop(y)
    if self.cross:
      x = x + drop(self.cross_attn(self.cross_norm(x), enc, mask=enc_mask, rngs=rngs, rows=rows,
                                   kv_rows=enc_rows))
    x = x + drop(self.mlp(self.mlp_norm(x), rngs=rngs))
    return x, cache


class T5Stack(nnx.Module):
  """Encoder (bidirectional) or decoder (causal, with cross-attention) stack on given embeddings."""

  def __init__(self, cfg: T5Config, num_layers: int, *, decoder: bool, dtype, param_dtype, rngs):
    self.cfg, self.decoder, self.num_layers = cfg, decoder, num_layers
    self.rel_bias = L.Embed(cfg.relative_attention_num_buckets, cfg.num_heads, names=('relpos', 'heads'),
                            std=cfg.initializer_factor * cfg.d_model ** -0.5, dtype=jnp.float32,
                            param_dtype=param_dtype, rngs=rngs)
    self.layers = L.make_layers(
        lambda r: T5Block(cfg, cross=decoder, dtype=dtype, param_dtype=param_dtype, rngs=r),
        num_layers, rngs, cfg.scan_layers)
    self.final_norm = L.RMSNorm(cfg.d_model, cfg.layer_norm_epsilon, dtype=dtype, param_dtype=param_dtype)
    self.dropout = L.Dropout(cfg.dropout_rate)

  def position_bias(self, q_pos: jax.Array, k_len: int) -> jax.Array:
    """q_pos: i32[B|1, T] absolute query positions -> f32[B|1, H, T, k_len]."""
    rel = jnp.arange(k_len)[None, None, :] - q_pos[:, :, None]
    buckets = relative_position_bucket(rel, not self.decoder, self.cfg.relative_attention_num_buckets,
                                       self.cfg.relative_attention_max_distance)
    return jnp.transpose(self.rel_bias.embedding[...][buckets].astype(jnp.float32), (0, 3, 1, 2))

  def __call__(self, x, *, mask=None, bias=None, enc=None, enc_mask=None, caches=None, index=None,
               rngs=None, rows=None, enc_rows=None):
    """x: [B, T, d] embeddings -> [B, T, d] after the final norm.

    caches: (k, v, cross_k, cross_v) layer-major [L, B, ...] for cached decoding (index: i32[B]);
    returns (x, new (k, v)) then, else (x, None).
    rows: padding-free (token_rows.TokenRows): the stack runs on x's token rows and returns them, [N, d];
    enc_rows: enc is the encoder's token rows.
    """
    drop = lambda y: self.dropout(y, rngs)
    x = drop(x if rows is None else rows.gather(x))
    if caches is None:
      def body(layer, h, _, r):
        return layer(h, mask=mask, bias=bias, enc=enc, enc_mask=enc_mask, rngs=r, rows=rows,
                     enc_rows=enc_rows)[0], None
      x, new = L.apply_layers(self.layers, body, x, num_layers=self.num_layers, scan=self.cfg.scan_layers,
                              remat=self.cfg.remat, rngs=rngs)
    else:
      def body(layer, h, xs, r):
        k, v, ck, cv = xs
        h, c = layer(h, mask=mask, bias=bias, enc=(ck, cv), enc_mask=enc_mask,
                     cache=L.KVCache(k, v, index), rngs=r)
        return h, (c.k, c.v)
      x, new = L.apply_layers(self.layers, body, x, caches, num_layers=self.num_layers,
                              scan=self.cfg.scan_layers, rngs=rngs)
    return drop(self.final_norm(x)), new


class T5(nnx.Module):
  """T5ForConditionalGeneration. Logits are float32 whatever the compute dtype."""

  def __init__(self, cfg: T5Config, dtype=jnp.float32, param_dtype=None, *, rngs: nnx.Rngs):
    param_dtype = dtype if param_dtype is None else param_dtype
    self.config, self.dtype = cfg, dtype
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.shared = L.Embed(cfg.vocab_size, cfg.d_model, std=cfg.initializer_factor, **kw)
    self.encoder = T5Stack(cfg, cfg.num_layers, decoder=False, **kw)
    self.decoder = T5Stack(cfg, cfg.num_decoder_layers, decoder=True, **kw)
    if not cfg.tie_word_embeddings:
      self.lm_head = L.dense(cfg.d_model, cfg.vocab_size, ('embed', 'vocab'),
                             kernel_init=L.normal(cfg.initializer_factor * cfg.d_model ** -0.5), **kw)

  def embed(self, ids: jax.Array) -> jax.Array:
    """i32[B, T] -> [B, T, d_model] text embeddings (for prompts next to pose embeddings)."""
    return self.shared(ids)

  def encode(self, input_ids=None, attention_mask=None, inputs_embeds=None, rngs=None, rows=None) -> jax.Array:
    """input_ids i32[B, S] or inputs_embeds [B, S, d]; attention_mask [B, S] (1 = real) -> [B, S, d].

    rows: padding-free (token_rows.TokenRows of attention_mask): returns the tokens' rows [N, d] instead.
    """
    x = self.shared(input_ids) if inputs_embeds is None else inputs_embeds.astype(self.dtype)
    s = x.shape[1]
    bias = self.encoder.position_bias(jnp.arange(s)[None], s)
    return self.encoder(x, mask=L.key_mask(attention_mask), bias=bias, rngs=rngs, rows=rows)[0]

  def logits(self, x: jax.Array) -> jax.Array:
    """Decoder output [B, T, d] -> f32[B, T, V]."""
    if self.config.scale_decoder_outputs:
      x = x * self.config.d_model ** -0.5
    out = self.shared.attend(x) if self.config.tie_word_embeddings else self.lm_head(x)
    return out.astype(jnp.float32)

  def decode(self, decoder_input_ids, encoder_hidden=None, encoder_mask=None, decoder_attention_mask=None,
             cache: Optional[L.Seq2SeqCache] = None, rngs=None, rows=None, encoder_rows=None):
    """Decoder pass -> (logits f32[B, T, V], cache).

    Without cache: teacher forcing over decoder_input_ids i32[B, T] attending to encoder_hidden [B, S, d]
    (encoder_mask [B, S]). With cache (from init_cache): the T new tokens continue the cached ones;
    encoder_hidden/encoder_mask are ignored (the cache holds them) and the updated cache is returned.
    Padding-free teacher forcing (token_rows.TokenRows): the decoder and the LM head run on the token rows of
    `rows` and the logits are theirs, f32[N, V]; encoder_hidden is the token rows of `encoder_rows`.
    """
    x = self.shared(decoder_input_ids)
    t = x.shape[1]
    if cache is None:
      bias = self.decoder.position_bias(jnp.arange(t)[None], t)
      mask = L.combine_masks(L.causal_mask(t), L.key_mask(decoder_attention_mask))
      x, _ = self.decoder(x, mask=mask, bias=bias, enc=encoder_hidden, enc_mask=L.key_mask(encoder_mask),
                          rngs=rngs, rows=rows, enc_rows=encoder_rows)
      return self.logits(x), None
    q_pos = cache.index[:, None] + jnp.arange(t)[None]
    bias = self.decoder.position_bias(q_pos, cache.k.shape[2])
    x, (k, v) = self.decoder(x, bias=bias, enc_mask=L.key_mask(cache.enc_mask), caches=cache.layer_major(),
                             index=cache.index, rngs=rngs)
    cache = cache._replace(k=jnp.moveaxis(k, 0, 1), v=jnp.moveaxis(v, 0, 1), index=cache.index + t)
    return self.logits(x), cache

  def init_cache(self, encoder_hidden: jax.Array, encoder_mask: jax.Array, max_len: int) -> L.Seq2SeqCache:
    """Empty self-attention caches of max_len tokens + the encoder's cross-attention k/v, all batch-first."""
    return L.init_seq2seq_cache(self.decoder.layers, self.decoder.num_layers, self.config.scan_layers,
                              encoder_hidden, encoder_mask, max_len, self.config.num_heads,
                              self.config.d_kv, self.dtype)

  def __call__(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
               inputs_embeds=None, rngs=None) -> jax.Array:
    """HF-style forward -> logits f32[B, T_dec, V]."""
    enc = self.encode(input_ids, attention_mask, inputs_embeds, rngs=rngs)
    mask = attention_mask if attention_mask is not None else jnp.ones(enc.shape[:2], bool)
    return self.decode(decoder_input_ids, enc, mask, decoder_attention_mask, rngs=rngs)[0]


def build(cfg: T5Config, dtype=jnp.float32, param_dtype=None, rngs: Optional[nnx.Rngs] = None) -> T5:
  return T5(cfg, dtype, param_dtype, rngs=rngs or nnx.Rngs(0))


# --- HF names --------------------------------------------------------------------------------------

# Copies of `shared` in older checkpoints, and a bias HF never uses.
IGNORED = (r'encoder\.embed_tokens\.weight', r'decoder\.embed_tokens\.weight',
           r'decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight')


def hf_table(cfg: T5Config) -> list[TensorMapping]:
  """HF T5ForConditionalGeneration tensor names <-> our parameter paths."""
  table = [TensorMapping('shared.weight', ('shared', 'embedding'),
                         aliases=('encoder.embed_tokens.weight', 'decoder.embed_tokens.weight'))]
  attn = lambda hf, ours: [(f'{hf}.{p}.weight', (ours, f'{p}_proj', 'kernel'), 'T') for p in 'qkvo']
  mlp_names = ('wi_0', 'wi_1', 'wo') if cfg.gated else ('wi', 'wo')
  mlp = lambda i: [(f'layer.{i}.DenseReluDense.{n}.weight', ('mlp', n, 'kernel'), 'T') for n in mlp_names]
  enc = (attn('layer.0.SelfAttention', 'self_attn') + [('layer.0.layer_norm.weight', ('self_norm', 'scale'), None)]
         + mlp(1) + [('layer.1.layer_norm.weight', ('mlp_norm', 'scale'), None)])
  dec = (attn('layer.0.SelfAttention', 'self_attn') + [('layer.0.layer_norm.weight', ('self_norm', 'scale'), None)]
         + attn('layer.1.EncDecAttention', 'cross_attn')
         + [('layer.1.layer_norm.weight', ('cross_norm', 'scale'), None)]
         + mlp(2) + [('layer.2.layer_norm.weight', ('mlp_norm', 'scale'), None)])
  for stack, n, entries in (('encoder', cfg.num_layers, enc), ('decoder', cfg.num_decoder_layers, dec)):
    table.append(TensorMapping(f'{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight',
                               (stack, 'rel_bias', 'embedding')))
    table.append(TensorMapping(f'{stack}.final_layer_norm.weight', (stack, 'final_norm', 'scale')))
    table += layer_mappings(n, cfg.scan_layers, f'{stack}.block.{{i}}.', (stack, 'layers'), entries)
  if not cfg.tie_word_embeddings:
    table.append(TensorMapping('lm_head.weight', ('lm_head', 'kernel'), transform='T'))
  return table
