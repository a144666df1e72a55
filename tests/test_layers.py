"""Shared layers: norms, attention (GQA, masks, bias, KV cache), MLPs, layer stacks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from slt_jax.models import layers as L


def _x(shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape)


@pytest.mark.parametrize('unit_offset', [False, True])
def test_rms_norm(unit_offset):
  norm = L.RMSNorm(8, eps=1e-6, unit_offset=unit_offset)
  norm.scale[...] = jnp.arange(8.0) / 8
  x = np.asarray(_x((2, 3, 8)))
  w = np.arange(8.0) / 8 + (1.0 if unit_offset else 0.0)
  want = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-6) * w
  np.testing.assert_allclose(np.asarray(norm(jnp.asarray(x))), want, rtol=1e-5, atol=1e-6)
  assert norm(jnp.asarray(x, jnp.bfloat16)).dtype == jnp.bfloat16


def test_layer_norm_names():
  ln = L.LayerNorm(8, rngs=nnx.Rngs(0))
  assert ln.scale.get_metadata()['out_sharding'] == ('norm',)
  x = _x((2, 8))
  np.testing.assert_allclose(np.asarray(ln(x)).mean(-1), 0, atol=1e-5)


def _reference_attention(q, k, v, mask=None, bias=None, scale=1.0):
  """Plain multi-head attention on [B, T, H, D] with k/v already repeated to H heads."""
  logits = jnp.einsum('bthd,bshd->bhts', q, k) * scale
  if bias is not None:
    logits = logits + bias
  if mask is not None:
    logits = jnp.where(mask, logits, -1e30)
  return jnp.einsum('bhts,bshd->bthd', jax.nn.softmax(logits, -1), v)


@pytest.mark.parametrize('impl', ['einsum', 'xla', 'auto'])
def test_gqa_matches_repeated_kv_reference(impl):
  got, want = jax.jit(lambda: _gqa(impl))()
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


def _gqa(impl):
  b, t, d, h, hk, hd = 2, 5, 16, 4, 2, 8
  attn = L.set_attention_impl(L.Attention(d, h, hd, num_kv_heads=hk, rngs=nnx.Rngs(0)), impl)
  x = _x((b, t, d))
  bias = _x((1, h, t, t), seed=1)
  mask = L.causal_mask(t)
  q = attn.q_proj(x).reshape(b, t, h, hd)
  k, v = attn.project_kv(x)
  rep = lambda a: jnp.repeat(a, h // hk, axis=2)  # kv head j serves query heads j*G .. j*G+G-1 (HF repeat_kv)
  want = _reference_attention(q, rep(k), rep(v), mask, bias, scale=hd ** -0.5)
  want = attn.o_proj(want.reshape(b, t, h * hd))
  return attn(x, mask=mask, bias=bias), want


def test_cross_attention_precomputed_kv():
  attn = L.Attention(16, 4, 4, use_bias=True, rngs=nnx.Rngs(0))
  x, src = _x((2, 3, 16)), _x((2, 6, 16), seed=1)
  mask = L.key_mask(jnp.array([[1, 1, 1, 1, 0, 0], [1] * 6]))
  np.testing.assert_allclose(np.asarray(attn(x, src, mask=mask)),
                             np.asarray(attn(x, attn.project_kv(src), mask=mask)), atol=1e-6)
  # Masked source positions do not matter.
  src2 = src.at[0, 4:].set(100.0)
  np.testing.assert_allclose(np.asarray(attn(x, src2, mask=mask))[0], np.asarray(attn(x, src, mask=mask))[0],
                             atol=1e-5)


def test_attention_impls_agree_with_padding_mask_and_dropout_fallback():
  b, t, s, d, h = 2, 4, 6, 16, 4
  attn = L.Attention(d, h, 4, dropout=0.5, rngs=nnx.Rngs(0))
  x, src = _x((b, t, d)), _x((b, s, d), seed=1)
  mask = L.key_mask(jnp.array([[1] * 6, [1] * 3 + [0] * 3]))  # row 1 has 3 padded source positions
  bias = _x((1, h, t, s), seed=2)
  outs = {impl: L.set_attention_impl(attn, impl)(x, src, mask=mask, bias=bias) for impl in ('einsum', 'xla')}
  np.testing.assert_allclose(np.asarray(outs['xla']), np.asarray(outs['einsum']), atol=1e-5)
  # Training with attention dropout needs the weights: 'xla' then takes the einsum path (same dropout mask).
  train = {impl: L.set_attention_impl(attn, impl)(x, src, mask=mask, rngs=nnx.Rngs(dropout=3))
           for impl in ('einsum', 'xla')}
  np.testing.assert_array_equal(np.asarray(train['xla']), np.asarray(train['einsum']))
  with pytest.raises(ValueError, match='not one of'):
    L.set_attention_impl(attn, 'flash')


def test_kv_cache_incremental_equals_causal():
  got, full, index = jax.jit(_incremental)()
  np.testing.assert_allclose(np.asarray(got), np.asarray(full), atol=1e-5)
  np.testing.assert_array_equal(np.asarray(index), [6, 6])


def _incremental():
  b, t, d = 2, 6, 16
  attn = L.Attention(d, 4, 4, num_kv_heads=1, rngs=nnx.Rngs(0))
  rotary = lambda q, k: (q * 1.5, k * 0.5)  # any (q, k) -> (q, k) map goes through the same path
  x = _x((b, t, d))
  full = attn(x, mask=L.causal_mask(t), rotary=rotary)
  cache = L.KVCache.zeros(b, 8, 1, 4)
  y, cache = attn(x[:, :2], cache=cache, rotary=rotary)
  outs = [y]
  for i in range(2, t):
    y, cache = attn(x[:, i:i + 1], cache=cache, rotary=rotary)
    outs.append(y)
  return jnp.concatenate(outs, 1), full, cache.index


@pytest.mark.parametrize('kind', ['t5_v1_0', 't5_v1_1', 'bart', 'llama', 'gemma'])
def test_mlp_variants(kind):
  spec = {'t5_v1_0': dict(activation='relu', names=('wi', 'wo')),
          't5_v1_1': dict(activation='gelu_new', gated=True, names=('wi_0', 'wi_1', 'wo')),
          'bart': dict(activation='gelu', use_bias=True, names=('fc1', 'fc2')),
          'llama': dict(activation='silu', gated=True, names=('gate_proj', 'up_proj', 'down_proj')),
          'gemma': dict(activation='gelu_pytorch_tanh', gated=True, names=('gate_proj', 'up_proj', 'down_proj'))}
  mlp = L.MLP(8, 12, rngs=nnx.Rngs(0), **spec[kind])
  x = _x((2, 3, 8))
  names = spec[kind]['names']
  act = L.ACTIVATIONS[spec[kind]['activation']]
  if len(names) == 3:
    g, u, dn = (getattr(mlp, n) for n in names)
    want = dn(act(g(x)) * u(x))
  else:
    u, dn = (getattr(mlp, n) for n in names)
    want = dn(act(u(x)))
  np.testing.assert_allclose(np.asarray(mlp(x)), np.asarray(want), atol=1e-6)
  assert getattr(mlp, names[0]).kernel.get_metadata()['out_sharding'] == ('embed', 'mlp')


class _Block(nnx.Module):

  def __init__(self, rngs):
    self.mlp = L.MLP(8, 16, dropout=0.5, rngs=rngs)

  def __call__(self, x, rngs=None):
    return x + self.mlp(x, rngs=rngs)


def _stack(scan):
  # Built under jit: eager nnx.vmap initialisation compiles op by op (slow on a busy CPU).
  return nnx.jit(lambda: L.make_layers(_Block, 3, nnx.Rngs(0), scan=scan))()


def test_scanned_stack_logical_axes_and_remat():
  layers = _stack(scan=True)
  kernel = layers.mlp.wi.kernel
  assert kernel.shape == (3, 8, 16)
  assert kernel.get_metadata()['out_sharding'] == ('layers', 'embed', 'mlp')
  x = _x((2, 4, 8))
  body = lambda layer, h, _, r: (layer(h, rngs=r), None)

  def grads(remat):
    def loss(layers):
      rngs = nnx.Rngs(dropout=1)  # made inside the transform, as a train step does
      out, _ = L.apply_layers(layers, body, x, num_layers=3, scan=True, remat=remat, rngs=rngs)
      return (out ** 2).sum()
    return nnx.jit(nnx.grad(loss))(layers)

  ref = grads('none')
  for remat in ('full', 'dots'):
    got = grads(remat)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6),
                 ref, got)


def test_unrolled_stack_matches_scanned_with_same_weights():
  scanned, unrolled = _stack(scan=True), _stack(scan=False)
  for i, layer in enumerate(unrolled):
    for name in ('wi', 'wo'):
      getattr(layer.mlp, name).kernel[...] = getattr(scanned.mlp, name).kernel[...][i]
  x = _x((2, 4, 8))
  body = lambda layer, h, _, r: (layer(h, rngs=r), None)
  a, _ = L.apply_layers(scanned, body, x, num_layers=3, scan=True)
  b, _ = L.apply_layers(unrolled, body, x, num_layers=3, scan=False)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_shift_right_and_masks():
  labels = jnp.array([[5, 6, 1, 0], [7, 1, 0, 0]])
  np.testing.assert_array_equal(np.asarray(L.shift_right(labels, 0, 0)), [[0, 5, 6, 1], [0, 7, 1, 0]])
  np.testing.assert_array_equal(np.asarray(L.causal_mask(2, 3))[0, 0], [[1, 1, 0], [1, 1, 1]])
  assert L.combine_masks(None, None) is None


def test_dropout_masks_are_bernoulli_independent_and_keyed():
  shape = (16, 64, 256)
  keep = np.asarray(L.dropout_keep(jax.random.key(0), shape, 0.1))
  assert keep.shape == shape and abs(keep.mean() - 0.9) < 0.003
  # neighbours along each axis are independent (correlation ~ 0, a bad hash shows stripes)
  for axis in range(3):
    a, b = np.moveaxis(keep, axis, 0)[:-1].ravel(), np.moveaxis(keep, axis, 0)[1:].ravel()
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.01, axis
  again = np.asarray(L.dropout_keep(jax.random.key(0), shape, 0.1))
  other = np.asarray(L.dropout_keep(jax.random.key(1), shape, 0.1))
  np.testing.assert_array_equal(again, keep)
  assert abs((other == keep).mean() - (0.9 ** 2 + 0.1 ** 2)) < 0.003  # independent of the first mask

  drop = L.Dropout(0.25)
  x = jnp.ones(shape)
  np.testing.assert_array_equal(drop(x), x)  # no rngs: the identity
  y = np.asarray(drop(x, nnx.Rngs(dropout=3)))
  assert set(np.unique(y)) == {0.0, np.float32(1 / 0.75)} and abs(y.mean() - 1.0) < 0.01
  assert not np.asarray(L.Dropout(1.0)(x, nnx.Rngs(dropout=3))).any()


def test_matmul_gradients_equal_autodiff():
  rng = np.random.default_rng(0)
  w_up, w_down = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((8, 32), (32, 8)))
  x = jnp.asarray(rng.normal(size=(3, 5, 8)), jnp.float32)

  def loss(mm, x, w_up, w_down):  # both branches of the weight gradient: I < O, then I > O
    return jnp.sum(jnp.tanh(mm(jax.nn.gelu(mm(x, w_up)), w_down)) ** 2)

  plain = lambda a, b: a @ b
  ours = jax.jit(jax.grad(lambda *a: loss(L.matmul, *a), argnums=(0, 1, 2)))(x, w_up, w_down)
  ref = jax.grad(lambda *a: loss(plain, *a), argnums=(0, 1, 2))(x, w_up, w_down)
  for a, b in zip(ours, ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('bias_shape', [(1, 3, 5, 6), (4, 3, 5, 6), (1, 1, 5, 6), (3, 5, 6), (4, 1, 1, 6)])
def test_add_bias_gradient_matches_autodiff(bias_shape):
  """add_bias sums a batch-shared bias's gradient as a GEMV; any broadcast shape gets autodiff's gradient."""
  rs = np.random.RandomState(0)
  logits, bias, w = rs.randn(4, 3, 5, 6), rs.randn(*bias_shape), rs.randn(4, 3, 5, 6)
  grads = lambda add: jax.grad(lambda l, b: jnp.sum(add(l, b) * w), argnums=(0, 1))(logits, bias)
  ours, plain = grads(L.add_bias), grads(lambda l, b: l + b)
  for a, b in zip(ours, plain):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
