"""Layers written once and shared by every model family (T5, BART, Llama-style decoders).

Conventions:
- Linear kernels are [in, out] (HF stores (out, in); the family's mapping table transposes).
- Attention heads are batch-first: q/k/v [B, T, H, D]; KV caches [B, S_max, H_kv, D].
- Parameters carry logical axis names (see `partitioned`); the rule table mapping them to mesh axes is
  config.sharding.logical_rules (slt_jax/default_config.py), applied by slt_jax/train/sharding.py.
- `dtype` is the compute dtype, `param_dtype` the storage dtype (`dtypes(config)`); norms and softmax compute in
  float32.
- Dropout (`Dropout`, hash-based masks) is active only when `rngs` (an nnx.Rngs with a 'dropout' stream) is
  passed at call time.
"""
import functools
import math
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
from flax import nnx

Initializer = Callable[..., jax.Array]
Dtype = Any

LOGICAL_AXES = ('vocab', 'embed', 'mlp', 'heads', 'kv_heads', 'head_dim', 'layers', 'relpos', 'pose_in',
                'norm', None)


def dtypes(config) -> tuple[Dtype, Dtype]:
  """(compute, parameter) dtypes of a config: parameters (the masters) in model.dtype; bf16 mixed precision
  (training.mixed_precision='bf16') computes in bfloat16 and keeps them."""
  param_dtype = jnp.dtype(config.model.dtype)
  return (jnp.bfloat16 if config.training.mixed_precision == 'bf16' else param_dtype), param_dtype


class Buffer(nnx.Variable):
  """A loaded, never trained array (HF buffers such as BART's final_logits_bias): not an nnx.Param, so
  optimizers built with wrt=nnx.Param leave it alone."""


def partitioned(init: Initializer, names: Sequence[Optional[str]]) -> Initializer:
  """Attaches logical axis names to an initializer (the one place that decides how).

  Eager sharding is off: models are built abstractly (nnx.eval_shape) and placed by the trainer, which
  reads these names through nnx.get_partition_spec and the rule table.
  """
  assert all(n in LOGICAL_AXES for n in names), names
  return nnx.with_partitioning(init, tuple(names), eager_sharding=False)


def normal(std: float) -> Initializer:
  return nnx.initializers.normal(stddev=std)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def matmul(x: jax.Array, w: jax.Array, precision=None) -> jax.Array:
  """x [..., I] @ w [I, O] -> [..., O], whose weight gradient transposes the narrower of x and g.

  The weight gradient contracts x and the output gradient g over their leading (token) axes, so one of
  them is transposed first. Autodiff always transposes g, and XLA's CPU backend fuses g's elementwise
  producers (a gated GELU's gradient, dropout masks) into that transpose: a strided loop several times
  slower than the same work unfused. Transposing the narrower operand moves fewer bytes and, for an
  MLP's up-projections, transposes x, a plain saved input (measured: README, Speed).
  """
  return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), precision=precision)


def _matmul_fwd(x, w, precision):
  return matmul(x, w, precision), (x, w)


def _matmul_bwd(precision, res, g):
  x, w = res
  dx = jax.lax.dot_general(g, w, (((g.ndim - 1,), (1,)), ((), ())), precision=precision)
  lead = tuple(range(x.ndim - 1))
  if x.shape[-1] <= g.shape[-1]:
    dw = jax.lax.dot_general(x, g, ((lead, lead), ((), ())), precision=precision)
  else:
    dw = jax.lax.dot_general(g, x, ((lead, lead), ((), ())), precision=precision).T
  return dx.astype(x.dtype), dw.astype(w.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, out_sharding=None):
  """jax.lax.dot_general for nnx.Linear: its plain [..., I] x [I, O] products go through `matmul`."""
  plain = (((lhs.ndim - 1,), (0,)), ((), ()))
  dims = tuple(tuple(tuple(axes) for axes in pair) for pair in dimension_numbers)
  if (rhs.ndim == 2 and dims == plain
      and preferred_element_type is None and out_sharding is None and lhs.dtype == rhs.dtype):
    return matmul(lhs, rhs, precision)
  return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                             preferred_element_type=preferred_element_type, out_sharding=out_sharding)


def dense(in_features: int, out_features: int, names: Sequence[Optional[str]], *, use_bias: bool = False,
          kernel_init: Initializer = nnx.initializers.lecun_normal(), dtype: Dtype = None,
          param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs) -> nnx.Linear:
  """nnx.Linear with logical names: kernel [in, out] named `names`, bias named names[-1]."""
  return nnx.Linear(
      in_features, out_features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
      kernel_init=partitioned(kernel_init, names), dot_general=dot_general,
      bias_init=partitioned(nnx.initializers.zeros_init(), (names[-1],)), rngs=rngs)


def _fmix32(h: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finaliser: a bijection of uint32 whose every output bit depends on every input bit."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def dropout_keep(key: jax.Array, shape: Sequence[int], rate: float) -> jax.Array:
  """bool[shape], each entry True with probability 1 - rate (to 2^-32), from a counter-based hash.

  Entry (i, j) (i: the flattened leading axes, j: the last) is kept when
  fmix32(fmix32(i ^ k0) ^ j ^ k1) >= rate * 2^32, k = two 32-bit words drawn from `key`. The mask is a
  function of the global position, so it is the same under any sharding, and XLA computes it inside
  the fusion that applies it: no random-bit tensor is written to memory. Drawn with threefry or rbg,
  the masks' random bits took about a quarter of a small model's train step in a CPU profile.
  """
  k = jax.random.bits(key, (2,), jnp.uint32)
  rows = jax.lax.broadcasted_iota(jnp.uint32, (math.prod(shape[:-1]), shape[-1]), 0)
  cols = jax.lax.broadcasted_iota(jnp.uint32, (math.prod(shape[:-1]), shape[-1]), 1)
  h = _fmix32(_fmix32(rows ^ k[0]) ^ cols ^ k[1])
  threshold = jnp.uint32(min(round(rate * 2.0 ** 32), 2 ** 32 - 1))
  return (h >= threshold).reshape(shape)


class Dropout(nnx.Module):
  """Inverted dropout (`dropout_keep` masks), active only when called with `rngs` (a 'dropout' stream)."""

  def __init__(self, rate: float):
    self.rate = float(rate)

  def __call__(self, x: jax.Array, rngs: Optional[nnx.Rngs] = None) -> jax.Array:
    if rngs is None or self.rate == 0.0:
      return x
    if self.rate >= 1.0:
      return jnp.zeros_like(x)
    keep = dropout_keep(rngs.dropout(), x.shape, self.rate)
    return jnp.where(keep, x * jnp.asarray(1.0 / (1.0 - self.rate), x.dtype), jnp.zeros((), x.dtype))


class Embed(nnx.Embed):
  """nnx.Embed with logical names; `attend(x)` gives tied output logits."""

  def __init__(self, num_embeddings: int, features: int, *, names=('vocab', 'embed'), std: float = 1.0,
               dtype: Dtype = None, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    super().__init__(num_embeddings, features, dtype=dtype, param_dtype=param_dtype,
                     embedding_init=partitioned(normal(std), names), rngs=rngs)


class RMSNorm(nnx.Module):
  """T5 / Llama RMS norm: x / rms(x) * w, no mean subtraction, computed in float32.

  unit_offset=True is Gemma's x / rms(x) * (1 + w) (w initialised to 0).
  """

  def __init__(self, dim: int, eps: float = 1e-6, unit_offset: bool = False, *, dtype: Dtype = None,
               param_dtype: Dtype = jnp.float32, rngs: Optional[nnx.Rngs] = None):
    del rngs  # deterministic init; accepted for a uniform constructor signature.
    init = jnp.zeros if unit_offset else jnp.ones
    self.scale = nnx.Param(init((dim,), param_dtype), out_sharding=('norm',), eager_sharding=False)
    self.eps, self.unit_offset, self.dtype = eps, unit_offset, dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., dim] -> [..., dim] in self.dtype (or x's dtype)."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    w = self.scale[...].astype(jnp.float32)
    if self.unit_offset:
      w = 1.0 + w
    return (y * w).astype(self.dtype or x.dtype)


class LayerNorm(nnx.LayerNorm):
  """Standard LayerNorm (BART), statistics in float32; params `scale`, `bias` named 'norm'."""

  def __init__(self, dim: int, eps: float = 1e-5, *, dtype: Dtype = None, param_dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    super().__init__(dim, epsilon=eps, dtype=dtype, param_dtype=param_dtype,
                     scale_init=partitioned(nnx.initializers.ones_init(), ('norm',)),
                     bias_init=partitioned(nnx.initializers.zeros_init(), ('norm',)), rngs=rngs)


# --- activations (HF names) -------------------------------------------------------------------------

ACTIVATIONS = {
    'relu': jax.nn.relu,
    'gelu': functools.partial(jax.nn.gelu, approximate=False),   # HF 'gelu' is the exact erf form.
    'gelu_new': functools.partial(jax.nn.gelu, approximate=True),
    'gelu_fast': functools.partial(jax.nn.gelu, approximate=True),
    'gelu_pytorch_tanh': functools.partial(jax.nn.gelu, approximate=True),
    'silu': jax.nn.silu,
    'swish': jax.nn.silu,
}


class MLP(nnx.Module):
  """Feed-forward block: down(act(up(x))) or, gated, down(act(gate(x)) * up(x)).

  `names` are the attribute names of the projections, following HF so the mapping tables stay obvious:
  T5 v1.0 ('wi', 'wo'), T5 v1.1 ('wi_0', 'wi_1', 'wo'), BART ('fc1', 'fc2'),
  Llama ('gate_proj', 'up_proj', 'down_proj'). Gated order is (gate, up, down).
  `dropout` is applied to the hidden activations (T5 dropout_rate, BART activation_dropout).
  """

  def __init__(self, d_model: int, d_ff: int, *, activation: str = 'relu', gated: bool = False,
               use_bias: bool = False, names: Optional[Sequence[str]] = None, dropout: float = 0.0,
               kernel_init: Initializer | Mapping[str, Initializer] = nnx.initializers.lecun_normal(),
               dtype: Dtype = None, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    if names is None:
      names = ('wi_0', 'wi_1', 'wo') if gated else ('wi', 'wo')
    assert len(names) == (3 if gated else 2), names
    self.names, self.gated = tuple(names), gated
    self.act = ACTIVATIONS[activation]
    init = lambda n: kernel_init[n] if isinstance(kernel_init, Mapping) else kernel_init
    kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    for n in names[:-1]:
      setattr(self, n, dense(d_model, d_ff, ('embed', 'mlp'), kernel_init=init(n), **kw))
    setattr(self, names[-1], dense(d_ff, d_model, ('mlp', 'embed'), kernel_init=init(names[-1]), **kw))
    self.dropout = Dropout(dropout)

  def __call__(self, x: jax.Array, rngs: Optional[nnx.Rngs] = None) -> jax.Array:
    """x: [B, T, d_model] -> [B, T, d_model]."""
    if self.gated:
      gate, up, down = (getattr(self, n) for n in self.names)
      h = self.act(gate(x)) * up(x)
    else:
      up, down = (getattr(self, n) for n in self.names)
      h = self.act(up(x))
    h = self.dropout(h, rngs)
    return down(h)


# --- attention -------------------------------------------------------------------------------------

class KVCache(NamedTuple):
  """Self-attention cache of one layer. All leaves batch-first.

  k, v: [B, S_max, H_kv, D]; index: i32[B], the position the next token is written to (the number of
  tokens cached so far).
  """
  k: jax.Array
  v: jax.Array
  index: jax.Array

  @classmethod
  def zeros(cls, batch: int, max_len: int, num_kv_heads: int, head_dim: int, dtype=jnp.float32):
    shape = (batch, max_len, num_kv_heads, head_dim)
    return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch,), jnp.int32))


def _write_rows(cache: jax.Array, new: jax.Array, index: jax.Array) -> jax.Array:
  """cache [B, S, ...] <- new [B, T, ...] at per-row positions index i32[B]."""
  def one(c, n, i):
    return jax.lax.dynamic_update_slice_in_dim(c, n.astype(c.dtype), i, axis=0)
  return jax.vmap(one)(cache, new, index)


def cache_mask(index: jax.Array, q_len: int, max_len: int) -> jax.Array:
  """Causal mask of q_len new tokens written at `index` i32[B] against a cache of max_len: bool[B,1,T,S]."""
  q_pos = index[:, None] + jnp.arange(q_len)[None, :]                      # [B, T]
  return (jnp.arange(max_len)[None, None, :] <= q_pos[:, :, None])[:, None]


class Attention(nnx.Module):
  """Multi-head attention with GQA, additive bias (T5), masks, optional rotary and KV cache.

  Projections are named after HF (q_proj, k_proj, v_proj, o_proj); kernels [d_model, H*D] with logical
  names ('embed', 'heads' | 'kv_heads') and o_proj ('heads', 'embed'). The flattened H*D axis is named
  after the heads, so sharding it splits whole heads.
  """

  def __init__(self, d_model: int, num_heads: int, head_dim: int, *, num_kv_heads: Optional[int] = None,
               use_bias: bool = False, qkv_bias: Optional[bool] = None, out_bias: Optional[bool] = None,
               scale: Optional[float] = None, dropout: float = 0.0,
               kernel_init: Initializer | Mapping[str, Initializer] = nnx.initializers.lecun_normal(),
               dtype: Dtype = None, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    self.num_heads, self.head_dim = num_heads, head_dim
    self.num_kv_heads = num_kv_heads or num_heads
    assert self.num_heads % self.num_kv_heads == 0, (num_heads, num_kv_heads)
    self.scale = head_dim ** -0.5 if scale is None else scale
    qkv_bias = use_bias if qkv_bias is None else qkv_bias
    out_bias = use_bias if out_bias is None else out_bias
    init = lambda n: kernel_init[n] if isinstance(kernel_init, Mapping) else kernel_init
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    q_dim, kv_dim = num_heads * head_dim, self.num_kv_heads * head_dim
    self.q_proj = dense(d_model, q_dim, ('embed', 'heads'), use_bias=qkv_bias, kernel_init=init('q_proj'), **kw)
    self.k_proj = dense(d_model, kv_dim, ('embed', 'kv_heads'), use_bias=qkv_bias, kernel_init=init('k_proj'),
                        **kw)
    self.v_proj = dense(d_model, kv_dim, ('embed', 'kv_heads'), use_bias=qkv_bias, kernel_init=init('v_proj'),
                        **kw)
    self.o_proj = dense(q_dim, d_model, ('heads', 'embed'), use_bias=out_bias, kernel_init=init('o_proj'), **kw)
    self.dropout = Dropout(dropout)
    self.impl = 'einsum'  # see set_attention_impl

  def project_kv(self, x: jax.Array, rows=None) -> tuple[jax.Array, jax.Array]:
    """x: [B, S, d_model] -> k, v: [B, S, H_kv, D] (precompute cross-attention k/v once per source).

    With `rows` (token_rows.TokenRows), x is the source's token rows [N, d_model]: the projections run on
    the rows and k, v are scattered back to [B, S, H_kv, D].
    """
    k, v = self.k_proj(x), self.v_proj(x)
    if rows is not None:
      k, v = rows.scatter(k), rows.scatter(v)
    shape = k.shape[:2] + (self.num_kv_heads, self.head_dim)
    return k.reshape(shape), v.reshape(shape)

  def __call__(self, x: jax.Array, kv=None, *, mask: Optional[jax.Array] = None,
               bias: Optional[jax.Array] = None, rotary: Optional[Callable] = None,
               cache: Optional[KVCache] = None, rngs: Optional[nnx.Rngs] = None, rows=None, kv_rows=None,
               causal: bool = True):
    """Attends x to itself, or to `kv` (cross-attention).

    x: [B, T, d_model]. kv: None (self-attention), a source [B, S, d_model], or precomputed (k, v) from
    `project_kv`. mask: bool broadcastable to [B, H, T, S] (True = attend). bias: f32 broadcastable to
    [B, H, T, S], added to the scaled logits. rotary: (q, k) -> (q, k) on [B, T, H, D] (positions are the
    caller's business, including the cache offset). cache: self-attention KVCache; then the new k/v are
    written at cache.index, the keys are the whole cache [B, S_max] with a causal mask from the index,
    and (y, new_cache) is returned (causal=False: no causal mask, `mask` alone decides, e.g. a bidirectional
    prompt). Returns y: [B, T, d_model].

    Padding-free (token_rows): with `rows`, x is the token rows [N, d_model] of a [B, T] batch and so is y;
    the projections run on the rows and only the attention core on [B, T, H, D]. `kv_rows` does the same
    for a cross-attention source given as rows (a self-attention source is x itself, with `rows`).
    """
    q = self.q_proj(x)
    if rows is not None:
      q = rows.scatter(q)
    b, t = q.shape[:2]
    q = q.reshape(b, t, self.num_heads, self.head_dim)
    if kv is None:
      k, v = self.project_kv(x, rows)
    elif isinstance(kv, (tuple, list)):
      k, v = kv
    else:
      k, v = self.project_kv(kv, kv_rows)
    if rotary is not None:
      q, k = rotary(q, k)
    if cache is not None:
      k = _write_rows(cache.k, k, cache.index)
      v = _write_rows(cache.v, v, cache.index)
      if causal:
        order = cache_mask(cache.index, t, k.shape[1])
        mask = order if mask is None else jnp.logical_and(mask, order)
      cache = KVCache(k, v, cache.index + t)
    out = self._attend(q, k, v, mask, bias, rngs)
    out = out.reshape(b, t, self.num_heads * self.head_dim)
    y = self.o_proj(out if rows is None else rows.gather(out))
    return y if cache is None else (y, cache)

  def _attend(self, q, k, v, mask, bias, rngs):
    """q [B,T,H,D], k/v [B,S,Hkv,D] -> [B,T,H,D]; logits and softmax in float32.

    `self.impl` (set by `set_attention_impl`): 'einsum' is the explicit path below; 'xla' and 'cudnn' call
    jax.nn.dot_product_attention with that implementation (cudnn = fused flash attention on NVIDIA GPUs);
    'auto' takes cudnn where it applies (GPU, bf16/fp16, head_dim a multiple of 8 up to 128, and cuDNN
    accepts the shapes when traced) and einsum elsewhere. Dropout on the attention weights (T5/BART
    training) needs the weights, so a training call with attention dropout always takes the einsum path.
    """
    training_dropout = rngs is not None and self.dropout.rate > 0
    impl = 'einsum' if training_dropout else self.impl
    if impl == 'auto':
      impl = 'cudnn?' if _cudnn_eligible(q) else 'einsum'
    if impl != 'einsum':
      call = functools.partial(
          jax.nn.dot_product_attention, q, k, v, scale=self.scale,
          bias=None if bias is None else jnp.broadcast_to(bias, bias.shape[:4]),
          mask=None if mask is None else mask.astype(bool))
      if impl != 'cudnn?':
        return call(implementation=impl)
      try:
        return call(implementation='cudnn')
      except (ValueError, NotImplementedError, RuntimeError, TypeError) as e:  # raised while tracing
        logging.log_first_n(logging.INFO, 'cuDNN attention does not apply (%s); using einsum.', 1, e)
    b, t, h, d = q.shape
    s, hk = k.shape[1], self.num_kv_heads
    g = h // hk
    qg = q.reshape(b, t, hk, g, d)
    logits = jnp.einsum('btkgd,bskd->bkgts', qg, k, preferred_element_type=jnp.float32)
    logits = logits.reshape(b, h, t, s) * self.scale
    if bias is not None:
      logits = add_bias(logits, bias.astype(jnp.float32))
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    probs = self.dropout(probs, rngs)
    probs = probs.astype(v.dtype).reshape(b, hk, g, t, s)
    out = jnp.einsum('bkgts,bskd->btkgd', probs, v)
    return out.reshape(b, t, h, d)


@jax.custom_vjp
def add_bias(logits: jax.Array, bias: jax.Array) -> jax.Array:
  """logits [B, ...] + bias broadcastable to them; a bias shared by the batch gets its gradient by a GEMV.

  T5's relative position bias is one [1, H, T, S] table added to every example's logits, so its gradient
  sums [B, H, T, S] over the batch. XLA's CPU backend (YNNPACK) reduces over a leading axis ~8x slower than
  it multiplies by a ones vector (README, Speed), so the backward pass sums the batch as ones[1, B] @ g[B, -1].
  """
  return logits + bias


def _add_bias_fwd(logits, bias):
  return logits + bias, bias.shape


def _add_bias_bwd(bias_shape, g):
  full = (1,) * (g.ndim - len(bias_shape)) + tuple(bias_shape)  # bias's axes aligned with g's
  d_bias = g
  if full[0] == 1 and g.shape[0] > 1:
    d_bias = jnp.dot(jnp.ones((1, g.shape[0]), g.dtype), g.reshape(g.shape[0], -1),
                     preferred_element_type=jnp.float32).reshape((1,) + g.shape[1:])
  broadcast = tuple(i for i, (n, m) in enumerate(zip(full, d_bias.shape)) if n == 1 and m != 1)
  if broadcast:  # any other broadcast axes (none in our models)
    d_bias = jnp.sum(d_bias, axis=broadcast, keepdims=True)
  return g, d_bias.astype(g.dtype).reshape(bias_shape)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


ATTENTION_IMPLS = ('einsum', 'auto', 'xla', 'cudnn')


def _cudnn_eligible(q: jax.Array) -> bool:
  d = q.shape[-1]
  return (jax.default_backend() == 'gpu' and q.dtype in (jnp.bfloat16, jnp.float16) and d % 8 == 0
          and d <= 128)


def set_attention_impl(model: nnx.Module, impl: str) -> nnx.Module:
  """Selects how every Attention in `model` computes (see Attention._attend); returns the model."""
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f'attention implementation {impl!r} is not one of {ATTENTION_IMPLS}')
  for _, module in model.iter_modules():
    if isinstance(module, Attention):
      module.impl = impl
  return model


# --- masks and positions ---------------------------------------------------------------------------

def causal_mask(q_len: int, k_len: Optional[int] = None) -> jax.Array:
  """bool[1, 1, Tq, Tk]: query i sees keys <= i (+ k_len - q_len when the keys are longer)."""
  k_len = q_len if k_len is None else k_len
  return (jnp.arange(k_len)[None, :] <= jnp.arange(q_len)[:, None] + (k_len - q_len))[None, None]


def key_mask(mask: Optional[jax.Array]) -> Optional[jax.Array]:
  """Padding mask bool[B, S] (True = real) -> bool[B, 1, 1, S] over the keys."""
  return None if mask is None else mask.astype(bool)[:, None, None, :]


def combine_masks(*masks: Optional[jax.Array]) -> Optional[jax.Array]:
  """Logical AND of broadcastable masks, ignoring None."""
  masks = [m for m in masks if m is not None]
  if not masks:
    return None
  out = masks[0]
  for m in masks[1:]:
    out = jnp.logical_and(out, m)
  return out


def sinusoid_positions(num_positions: int, dim: int) -> jax.Array:
  """f32[num_positions, dim]: sin in the first half, cos in the second (Marian / fairseq layout)."""
  inv = 1.0 / (10000 ** (jnp.arange(0, dim // 2) / (dim // 2)))
  ang = jnp.arange(num_positions)[:, None] * inv[None, :]
  return jnp.concatenate([jnp.sin(ang), jnp.cos(ang)], axis=-1)


def shift_right(labels: jax.Array, start_id: int, pad_id: int, ignore_id: Optional[int] = None) -> jax.Array:
  """Teacher-forcing decoder inputs: i32[B, L] -> [start, labels[:, :-1]] (ignore_id -> pad)."""
  out = jnp.concatenate([jnp.full_like(labels[:, :1], start_id), labels[:, :-1]], axis=1)
  if ignore_id is not None:
    out = jnp.where(out == ignore_id, pad_id, out)
  return out


# --- layer stacks: nnx.scan or a plain loop, with remat --------------------------------------------

REMAT_POLICIES = {
    'full': None,  # save nothing: recompute the whole layer in the backward pass.
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs.
}


def make_layers(make_layer: Callable[[nnx.Rngs], nnx.Module], num_layers: int, rngs: nnx.Rngs,
                scan: bool):
  """num_layers copies of make_layer(rngs): one module with params stacked on a leading 'layers' axis
  (scan=True, for nnx.scan) or an nnx.List."""
  if not scan:
    return nnx.List([make_layer(rngs) for _ in range(num_layers)])

  @nnx.split_rngs(splits=num_layers)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: 'layers'})
  def stacked(r):
    return make_layer(r)
  return stacked(rngs)


def apply_layers(layers, body: Callable, carry, xs=None, *, num_layers: int, scan: bool,
                 remat: str = 'none', rngs: Optional[nnx.Rngs] = None):
  """Runs `body(layer, carry, x, rngs) -> (carry, y)` over the layers.

  xs / ys: pytrees with a leading layer axis (e.g. per-layer caches [L, B, ...]), or None.
  rngs: dropout rngs; each layer gets its own nnx.Rngs(dropout=key) (None = deterministic).
  remat: none | full | dots, applied to one layer.
  """
  keys = None if rngs is None else jax.random.split(rngs.dropout(), num_layers)

  def fn(layer, c, x, key):
    return body(layer, c, x, None if key is None else nnx.Rngs(dropout=key))
  if remat != 'none':
    fn = nnx.remat(fn, policy=REMAT_POLICIES[remat], prevent_cse=not scan)

  if scan:
    scanned = nnx.scan(lambda c, layer, x, key: fn(layer, c, x, key),
                       in_axes=(nnx.Carry, 0, 0, 0), out_axes=(nnx.Carry, 0))
    return scanned(carry, layers, xs, keys)
  ys = []
  for i, layer in enumerate(layers):
    pick = lambda tree: None if tree is None else jax.tree.map(lambda a: a[i], tree)
    carry, y = fn(layer, carry, pick(xs), pick(keys))
    ys.append(y)
  ys = None if all(y is None for y in ys) else jax.tree.map(lambda *a: jnp.stack(a), *ys)
  return carry, ys


# --- rotary position embeddings (Llama-style decoders) -----------------------------------------------

def rope_inv_freq(head_dim: int, theta: float = 10000.0, scaling: Optional[Mapping[str, Any]] = None):
  """Inverse frequencies f32[head_dim // 2] of RoPE, as HF computes them (float32 throughout).

  scaling: HF `rope_scaling` / `rope_parameters` dict, or None. rope_type 'default', 'linear' (positions /
  factor) and 'llama3' (Llama 3.1's band-wise frequency scaling) are supported.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top  (host-side constants)
  f32 = np.float32
  inv_freq = f32(1.0) / (f32(theta) ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(f32) / f32(head_dim)))
  rope_type = (scaling or {}).get('rope_type', (scaling or {}).get('type', 'default'))
  if rope_type == 'default':
    return inv_freq
  if rope_type == 'linear':
    return (inv_freq / f32(scaling['factor'])).astype(f32)
  if rope_type == 'llama3':
    factor, low, high = (f32(scaling[k]) for k in ('factor', 'low_freq_factor', 'high_freq_factor'))
    old_len = f32(scaling['original_max_position_embeddings'])
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = f32(2 * np.pi) / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq).astype(f32)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = ((1 - smooth) * scaled / factor + smooth * scaled).astype(f32)
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(f32)
  raise NotImplementedError(f'rope_type {rope_type!r} (supported: default, linear, llama3)')


def rotary(positions: jax.Array, inv_freq) -> Callable:
  """The Attention `rotary` hook for rotate-half RoPE (HF Llama layout) at per-row positions.

  positions: i32[B, T] (the caller derives them, e.g. from a padding mask or a cache offset);
  inv_freq: f32[D // 2] from `rope_inv_freq`. Returns (q, k) -> (q, k) on [B, T, H, D]; the rotation is
  computed in float32 and cast back to the inputs' dtype.
  """
  angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)   # [B, T, D/2]
  cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]                 # [B, T, 1, D/2]

  def rotate(x):
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)
  return lambda q, k: (rotate(q), rotate(k))


class Seq2SeqCache(NamedTuple):
  """Incremental-decoding state of an encoder-decoder stack; every leaf is batch-first.

  k, v: [B, L, S_max, H, D] decoder self-attention caches; cross_k, cross_v: [B, L, S_enc, H, D] the
  encoder's projected keys/values; enc_mask: bool[B, S_enc]; index: i32[B] tokens decoded so far.
  """
  k: jax.Array
  v: jax.Array
  cross_k: jax.Array
  cross_v: jax.Array
  enc_mask: jax.Array
  index: jax.Array

  def layer_major(self):
    """The per-layer leaves with the layer axis first ([L, B, ...]), as scanned layers take them."""
    return tuple(jnp.moveaxis(a, 1, 0) for a in (self.k, self.v, self.cross_k, self.cross_v))


def init_seq2seq_cache(layers, num_layers, scan, enc, enc_mask, max_len, num_heads, head_dim, dtype):
  """Seq2SeqCache for decoder `layers` (each with .cross_attn): cross k/v projected once per layer."""
  def body(layer, c, _, r):
    return c, layer.cross_attn.project_kv(enc)
  _, (ck, cv) = apply_layers(layers, body, jnp.zeros(()), num_layers=num_layers, scan=scan)
  b = enc.shape[0]
  zeros = jnp.zeros((b, num_layers, max_len, num_heads, head_dim), dtype)
  enc_mask = jnp.ones(enc.shape[:2], bool) if enc_mask is None else enc_mask.astype(bool)
  return Seq2SeqCache(k=zeros, v=zeros, cross_k=jnp.moveaxis(ck, 0, 1).astype(dtype),
                      cross_v=jnp.moveaxis(cv, 0, 1).astype(dtype), enc_mask=enc_mask,
                      index=jnp.zeros((b,), jnp.int32))
