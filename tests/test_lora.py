"""LoRA / QLoRA (slt_jax.models.lora) against HF PEFT on tiny random checkpoints, and training with adapters.

- a PEFT adapter made in PyTorch (random non-zero A and B) loads into ours: same logits (<= 1e-4, float32);
- our adapter (random non-zero A and B) loads with peft.PeftModel.from_pretrained: same logits;
- merge_adapter + save_pretrained gives a plain HF checkpoint with the same logits;
  for a decoder (Qwen2, scanned layers, regex targets) and an encoder-decoder (T5 v1.1, unrolled layers);
- a train step through the trainer's path (state.create_sharded_state with the LoRA filter, jit_train_step with
  `rest` as an argument) changes the adapters and the pose encoder and leaves every base weight bit-identical;
  save_adapter / load_adapter carry a trained SLT model over;
- NF4 and int8 bases train with falling loss; their forward (adapters included) equals that of HF's model
  holding the dequantised kernels (decoded here in numpy from the stored codes), and each stored kernel is
  its float weight rounded to the nearest level of its block (int8: half a step; NF4: the nearest of
  bitsandbytes' 16 levels).
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import tiny_decoders
import tiny_t5
from slt_jax import default_config
from slt_jax.models import from_pretrained, lora, merge_adapter, save_adapter, save_pretrained, slt
from slt_jax.train import optim
from slt_jax.train import sharding as sharding_lib
from slt_jax.train import state as state_lib
from slt_jax.train import step as step_lib

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
peft = pytest.importorskip('peft')

TOL = 1e-4
T5_TINY = dict(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_decoder_layers=2, num_heads=4,
               dropout_rate=0.0, feed_forward_proj='gated-gelu', tie_word_embeddings=False)
CASES = {
    # name: (target_modules, our from_pretrained overrides)
    'qwen2': (r'.*\.(q_proj|v_proj|o_proj|down_proj)', {}),
    't5': (['q', 'k', 'v', 'o', 'wi_0', 'wo'], dict(scan_layers=False)),
}


@pytest.fixture(scope='module')
def ckpts(tmp_path_factory):
  root = tmp_path_factory.mktemp('lora')
  torch.manual_seed(0)
  t5 = tiny_t5.perturb_norms(transformers.T5ForConditionalGeneration(transformers.T5Config(**T5_TINY)).eval())
  t5.save_pretrained(root / 't5')
  return {'qwen2': tiny_decoders.make_checkpoint('qwen2', str(root)), 't5': str(root / 't5')}


def _hf_base(name, path):
  if name == 't5':
    return transformers.T5ForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
  return tiny_decoders.load_hf(path)


def _ids(name, seed=0):
  rng = np.random.default_rng(seed)
  vocab = T5_TINY['vocab_size'] if name == 't5' else tiny_decoders.VOCAB
  return rng.integers(3, vocab, (2, 9)).astype(np.int64), rng.integers(3, vocab, (2, 6)).astype(np.int64)


def _torch_logits(name, model, seed=0):
  ids, dec = _ids(name, seed)
  with torch.no_grad():
    if name == 't5':
      out = model(input_ids=torch.tensor(ids), decoder_input_ids=torch.tensor(dec))
    else:
      out = model(input_ids=torch.tensor(ids))
  return out.logits.float().numpy()


def _our_logits(name, lm, seed=0):
  ids, dec = _ids(name, seed)
  if name == 't5':
    return np.asarray(lm(input_ids=jnp.asarray(ids, jnp.int32), decoder_input_ids=jnp.asarray(dec, jnp.int32)))
  return np.asarray(lm(input_ids=jnp.asarray(ids, jnp.int32)))


def _randomize_adapters(lm, seed):
  """Non-zero A and B (B starts at zero, which would hide a wrong orientation)."""
  rng = np.random.default_rng(seed)
  for _, m in lora.lora_layers(lm):
    if m.lora_a is not None:
      for v in (m.lora_a, m.lora_b):
        v[...] = jnp.asarray(0.1 * rng.standard_normal(v.shape), v.dtype)


@pytest.mark.parametrize('name', sorted(CASES))
def test_peft_adapter_from_pytorch_loads(ckpts, name, tmp_path):
  targets, overrides = CASES[name]
  torch.manual_seed(1)
  model = peft.get_peft_model(_hf_base(name, ckpts[name]), peft.LoraConfig(
      r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.1, init_lora_weights=False)).eval()
  assert all(p.abs().sum() > 0 for n, p in model.named_parameters() if 'lora_B' in n)
  model.save_pretrained(tmp_path)
  ours = from_pretrained(ckpts[name], adapter=str(tmp_path), **overrides)
  assert ours.lora.r == 4 and ours.lora.scaling == 2.0
  ref, got = _torch_logits(name, model), _our_logits(name, ours)
  print(f'{name}: PEFT adapter from PyTorch, max |logit diff| {np.abs(got - ref).max():.2e}')
  np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)
  base = _torch_logits(name, _hf_base(name, ckpts[name]))
  assert np.abs(ref - base).max() > 100 * TOL  # the adapter does change the logits


@pytest.mark.parametrize('name', sorted(CASES))
def test_our_adapter_loads_in_peft_and_merges(ckpts, name, tmp_path):
  targets, overrides = CASES[name]
  ours = from_pretrained(ckpts[name], **overrides)
  base = _our_logits(name, ours)
  lora.apply_lora(ours, lora.LoraConfig(r=3, lora_alpha=6, target_modules=targets if isinstance(targets, str)
                                        else tuple(targets)), rngs=nnx.Rngs(0))
  _randomize_adapters(ours, seed=2)
  save_adapter(ours, str(tmp_path / 'adapter'), base_model_name_or_path=ckpts[name])
  logits = _our_logits(name, ours)
  assert np.abs(logits - base).max() > 100 * TOL
  model = peft.PeftModel.from_pretrained(_hf_base(name, ckpts[name]), str(tmp_path / 'adapter')).eval()
  ref = _torch_logits(name, model)
  print(f'{name}: our adapter in PEFT, max |logit diff| {np.abs(ref - logits).max():.2e}')
  np.testing.assert_allclose(ref, logits, atol=TOL, rtol=0)

  merge_adapter(ours)
  assert not nnx.state(ours, nnx.LoRAParam) and ours.lora is None
  save_pretrained(ours, str(tmp_path / 'merged'))
  merged = _torch_logits(name, _hf_base(name, str(tmp_path / 'merged')))
  print(f'{name}: merged HF checkpoint, max |logit diff| {np.abs(merged - logits).max():.2e}')
  np.testing.assert_allclose(merged, logits, atol=TOL, rtol=0)


# --- training ------------------------------------------------------------------------------------------

K, C = 4, 3


def _slt_config(**model):
  config = default_config.get_config()
  config.model.family = 'llama'
  config.model.arch = dict(model_type='llama', vocab_size=64, hidden_size=64, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
  config.model.pose.update(hidden=32, conv_layers=1, conv_stride=2, dropout=0.0)
  config.model.pose_encoder.update(num_layers=1, num_heads=2)
  config.model.use_lora = True
  config.model.lora_config.update(r=4, lora_alpha=8, lora_dropout=0.1,
                                  target_modules=('q_proj', 'k_proj', 'v_proj', 'o_proj'))
  config.model.quant_block_size = 32
  config.model.update(model)
  config.training.update(learning_rate=1e-2, warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0)
  return config


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(3, 64, (2, 6)).astype(np.int32)
  return dict(poses=jnp.asarray(rng.standard_normal((2, 12, K, C)), jnp.float32),
              pose_mask=jnp.asarray(np.arange(12)[None] < np.array([[12], [9]])),
              labels=jnp.asarray(labels), label_mask=jnp.ones((2, 6), bool))


def _flat(tree):
  return {'/'.join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(tree)}


def test_train_step_changes_adapters_only(tmp_path):
  config = _slt_config()
  build = lambda: slt.build_model(config, 64, K * C, nnx.Rngs(params=0))
  tx = optim.make_optimizer(config, 10)
  mesh = sharding_lib.make_mesh(config.mesh)
  graphdef, state, rest, shardings = state_lib.create_sharded_state(
      build, tx, mesh, seed=1, trainable=slt.trainable_filter(config))
  trained, frozen = _flat(state.params), _flat(rest)
  assert any('lora_b' in k for k in trained) and any(k.startswith('encoder/') for k in trained)
  assert not any(k.startswith('lm/') and 'lora_' not in k for k in trained)  # the base is in `rest` only
  assert not any(k.startswith('encoder/') and 'lora_' in k for k in trained)  # pose attention: no adapters
  assert any(k.endswith('q_proj/kernel') for k in frozen)

  def step_fn(s, b, rest):
    return step_lib.train_step(s, b, graphdef=graphdef, rest=rest, tx=tx, label_smoothing=0.0)
  train = sharding_lib.jit_train_step(step_fn, shardings, rest, mesh)
  batch = {**_batch(), 'example_mask': jnp.ones((2,), bool)}
  for _ in range(2):  # B starts at 0, so A moves from the second step on
    state, metrics = train(state, batch)
  assert np.isfinite(float(metrics['loss']))
  after = _flat(state.params)
  for k, v in trained.items():
    if 'lora_' in k or k.endswith('kernel'):
      assert not np.array_equal(v, after[k]), k
  for k, v in _flat(rest).items():
    assert np.array_equal(v, frozen[k]) and v.dtype == frozen[k].dtype, k

  # The trained adapters + pose encoder travel in PEFT files to a freshly built model (same random base).
  forward = jax.jit(lambda p, r, key: nnx.merge(graphdef, p, r)(
      _batch(), rngs=None if key is None else nnx.Rngs(dropout=key)))
  logits = np.asarray(forward(state.params, rest, None))
  save_adapter(nnx.merge(graphdef, state.params, rest), str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ['adapter_config.json', 'adapter_model.safetensors',
                                          lora.POSE_FILE]
  fresh = build()
  _, fresh_params, fresh_rest = nnx.split(fresh, slt.trainable_filter(config), ...)
  assert not np.allclose(np.asarray(forward(fresh_params, fresh_rest, None)), logits, atol=1e-3)
  lora.load_adapter(fresh, str(tmp_path))
  _, fresh_params, fresh_rest = nnx.split(fresh, slt.trainable_filter(config), ...)
  np.testing.assert_allclose(np.asarray(forward(fresh_params, fresh_rest, None)), logits, atol=1e-5)
  # Cached decoding runs through the adapters too: its first logits equal teacher forcing's.
  b = _batch()
  first = jax.jit(lambda p, r: nnx.merge(graphdef, p, r).start_decode(b['poses'], b['pose_mask'], 4)[0])
  np.testing.assert_allclose(np.asarray(first(state.params, rest)), logits[:, 0], atol=1e-4)
  # Adapter dropout acts only when rngs are passed.
  assert not np.allclose(np.asarray(forward(state.params, rest, jax.random.key(0))), logits, atol=1e-4)


@pytest.mark.parametrize('bits', ['load_in_4bit', 'load_in_8bit'])
def test_quantized_base_trains(bits):
  config = _slt_config(**{bits: True})
  config.training.mixed_precision = 'bf16'
  model = slt.build_model(config, 64, K * C, nnx.Rngs(params=0))
  lm = model.lm
  q = lm.layers.mlp.down_proj
  assert q.kernel is None and q.kernel_q.dtype == (jnp.uint8 if bits == "load_in_4bit" else jnp.int8)
  assert lora.count_weights(nnx.state(q, lora.QuantizedWeight)) == 64 * 64 * 2  # [layers, in, out]
  assert lm.embed_tokens.embedding.dtype == jnp.bfloat16  # the frozen float weights in the compute dtype
  graphdef, params, rest = nnx.split(model, slt.trainable_filter(config), ...)
  tx = optax.adam(1e-2)
  opt_state = tx.init(params)
  batch = _batch()

  @jax.jit
  def step(params, opt_state, rest, key):
    def loss_fn(p):
      logits = nnx.merge(graphdef, p, rest, copy=True)(batch, rngs=nnx.Rngs(dropout=key))
      loss, n = step_lib.cross_entropy(logits, batch['labels'], batch['label_mask'])
      return loss / n
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for i in range(20):
    params, opt_state, loss = step(params, opt_state, rest, jax.random.key(i))
    losses.append(float(loss))
  assert losses[-1] < 0.9 * losses[0] and np.mean(losses[-5:]) < np.mean(losses[:5]), losses


# --- QLoRA numerics ---------------------------------------------------------------------------------------

# bitsandbytes' NF4 code book (functional.get_4bit_type('nf4'); QLoRA, arXiv:2305.14314, appendix E).
NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], np.float32)


def _dequantize(codes, scales, qtype):
  """Our stored codes + scales -> f32 kernel [..., in, out], in numpy (not through lora / qwix).

  NF4: uint8 bytes [..., in / 2, out], input row 2i in the low nibble and 2i + 1 in the high one, indexing
  NF4; int8: the codes. Times one scale per block of in / scales.shape[-2] inputs of each output column.
  """
  codes, scales = np.asarray(codes), np.asarray(scales, np.float32)
  if qtype == 'nf4':
    nibbles = np.stack([codes & 0xF, codes >> 4], axis=-2)
    values = NF4[nibbles.reshape(*codes.shape[:-2], 2 * codes.shape[-2], codes.shape[-1])]
  else:
    values = codes.astype(np.float32)
  return values * np.repeat(scales, values.shape[-2] // scales.shape[-2], axis=-2)


def _check_quantization_error(w, codes, scales, qtype, block):
  """The stored kernel of w f32[..., in, out] is w rounded to the nearest level of each block's grid.

  int8: levels scale * {-128..127} with absmax / 128 <= scale <= absmax / 127 (the block's largest weight
  fits), so |error| <= scale / 2. NF4: levels absmax * NF4, so |error| = absmax * the distance from
  w / absmax to the nearest NF4 value (<= absmax * 0.152, half the widest gap, -1 to -0.696).
  """
  w = np.asarray(w, np.float32)
  blocks = w.reshape(*w.shape[:-2], w.shape[-2] // block, block, w.shape[-1])
  absmax = np.abs(blocks).max(axis=-2)
  scales = np.asarray(scales, np.float32)
  assert scales.shape == absmax.shape, (scales.shape, absmax.shape)
  per_weight = lambda x: np.repeat(x, block, axis=-2)
  if qtype == 'int8':
    assert np.all(scales >= absmax / 128) and np.all(scales <= absmax / 127 * (1 + 1e-6))
    bound = per_weight(scales) / 2
  else:
    np.testing.assert_allclose(scales, absmax, rtol=1e-6)
    normed = w / per_weight(absmax)
    bound = per_weight(absmax) * np.abs(normed[..., None] - NF4).min(axis=-1)
    assert np.all(bound <= per_weight(absmax) * np.diff(NF4).max() / 2)
  err = np.abs(_dequantize(codes, scales, qtype) - w)
  assert np.all(err <= bound + 1e-6 * per_weight(absmax)), float((err - bound).max())


@pytest.mark.parametrize('qtype', ['nf4', 'int8'])
def test_quantize_kernel_rounds_to_nearest_level(qtype):
  w = jax.random.normal(jax.random.key(0), (2, 64, 1024)) * 0.02
  codes, scales = lora.quantize_kernel(w, qtype, 32, jnp.float32)
  assert codes.shape == ((2, 32, 1024) if qtype == 'nf4' else (2, 64, 1024)) and scales.shape == (2, 2, 1024)
  assert codes.dtype == (jnp.uint8 if qtype == 'nf4' else jnp.int8)
  if qtype == 'nf4':
    np.testing.assert_array_equal(lora.pack_nf4(lora.unpack_nf4(codes)), codes)
  _check_quantization_error(w, codes, scales, qtype, 32)


@pytest.mark.parametrize('name', sorted(CASES))
@pytest.mark.parametrize('qtype', ['nf4', 'int8'])
def test_qlora_forward_equals_dequantized_model(ckpts, name, qtype, tmp_path):
  """A quantized base with adapters gives the logits of HF's model (PyTorch, PEFT) holding the dequantised
  kernels and the same adapters; each stored kernel is its float weight rounded to the nearest level."""
  targets, overrides = CASES[name]
  ours = from_pretrained(ckpts[name], **overrides)
  floats = {path: np.asarray(m.kernel[...]) for path, m in nnx.iter_modules(ours) if isinstance(m, nnx.Linear)}
  lora.apply_lora(ours, lora.LoraConfig(r=3, lora_alpha=6, target_modules=targets if isinstance(targets, str)
                                        else tuple(targets)), quantize=qtype, block_size=8, rngs=nnx.Rngs(0))
  _randomize_adapters(ours, seed=3)
  save_adapter(ours, str(tmp_path), base_model_name_or_path=ckpts[name])

  hf_model = _hf_base(name, ckpts[name])
  quantized = 0
  for path, entries in lora.linear_modules(ours).items():
    module = dict(lora.lora_layers(ours)).get(path)
    if module is None or module.qtype is None:
      assert all(n.endswith('lm_head') for _, n in entries), entries  # bitsandbytes leaves lm_head in float
      continue
    assert module.qtype == qtype
    codes, scales = module.kernel_q[...], module.kernel_scale[...]
    _check_quantization_error(floats[path], codes, scales, qtype, 8)
    kernel = _dequantize(codes, scales, qtype)
    for layer, hf_name in entries:
      weight = hf_model.get_submodule(hf_name).weight
      with torch.no_grad():
        weight.copy_(torch.from_numpy(np.ascontiguousarray((kernel if layer is None else kernel[layer]).T)))
      quantized += 1
  assert quantized == sum(isinstance(m, torch.nn.Linear) and not n.endswith('lm_head')
                          for n, m in hf_model.named_modules())
  with_adapter = lambda base: _torch_logits(name, peft.PeftModel.from_pretrained(base, str(tmp_path)).eval())
  ref, got = with_adapter(hf_model), _our_logits(name, ours)
  float_ref = with_adapter(_hf_base(name, ckpts[name]))
  print(f'{name} {qtype}: max |logit diff| vs the dequantised PyTorch model {np.abs(got - ref).max():.2e} '
        f'(quantisation moves them by {np.abs(float_ref - ref).max():.2e})')
  np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)
  assert np.abs(float_ref - ref).max() > 100 * TOL
