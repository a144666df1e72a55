"""T5 / mT5 against transformers' PyTorch models on tiny random checkpoints (CPU)."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import tiny_t5
from slt_jax.models import from_pretrained, save_pretrained, t5

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

TINY = dict(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_decoder_layers=3, num_heads=4,
            dropout_rate=0.0)  # relative buckets: HF defaults (32 buckets, max distance 128).
TOL = 1e-4


def _untie(path, model_cls):
  """Adds a distinct lm_head.weight and tie_word_embeddings=false, like the hub's T5 v1.1 / mT5 files."""
  from safetensors.numpy import load_file, save_file
  file = os.path.join(path, 'model.safetensors')
  tensors = load_file(file)
  tensors['lm_head.weight'] = np.random.RandomState(0).randn(*tensors['shared.weight'].shape).astype(np.float32)
  save_file(tensors, file, metadata={'format': 'pt'})
  with open(os.path.join(path, 'config.json')) as f:
    cfg = json.load(f)
  cfg['tie_word_embeddings'] = False
  cfg.pop('scale_decoder_outputs', None)
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(cfg, f)
  return model_cls.from_pretrained(path).eval()


@pytest.fixture(scope='module')
def ckpts(tmp_path_factory):
  """name -> (checkpoint dir, HF model): T5 v1.0, v1.1 (untied, sharded with an index), mT5 tied/untied.
  Layer-norm weights are randomised (tiny_t5.perturb_norms) so that a mapping mistake on them shows."""
  torch.manual_seed(0)
  root = tmp_path_factory.mktemp('t5')
  out = {}
  T5, MT5 = transformers.T5ForConditionalGeneration, transformers.MT5ForConditionalGeneration
  new = lambda cls, cfg, seed: tiny_t5.perturb_norms(cls(cfg).eval(), seed)
  m = new(T5, transformers.T5Config(**TINY, feed_forward_proj='relu'), 0)
  m.save_pretrained(root / 'v1_0')
  out['t5_v1_0'] = (str(root / 'v1_0'), m)

  new(T5, transformers.T5Config(**TINY, feed_forward_proj='gated-gelu'), 1).save_pretrained(root / 'v1_1_single')
  m = _untie(str(root / 'v1_1_single'), T5)
  m.save_pretrained(root / 'v1_1', max_shard_size='20KB')
  out['t5_v1_1'] = (str(root / 'v1_1'), m)

  m = new(MT5, transformers.MT5Config(**TINY), 2)
  m.save_pretrained(root / 'mt5_tied')
  out['mt5_tied'] = (str(root / 'mt5_tied'), m)
  new(MT5, transformers.MT5Config(**TINY), 3).save_pretrained(root / 'mt5_untied')
  out['mt5_untied'] = (str(root / 'mt5_untied'), _untie(str(root / 'mt5_untied'), MT5))
  return out


def _inputs(b=2, s=7, t=5, seed=0):
  rs = np.random.RandomState(seed)
  ids = rs.randint(2, TINY['vocab_size'], (b, s))
  am = np.ones((b, s), np.int64)
  am[1, s // 2:] = 0
  dids = rs.randint(2, TINY['vocab_size'], (b, t))
  dam = np.ones((b, t), np.int64)
  dam[0, t // 2 + 1:] = 0
  return dict(input_ids=ids, attention_mask=am, decoder_input_ids=dids, decoder_attention_mask=dam)


def _hf_logits(m, inputs):
  with torch.no_grad():
    return m(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits.float().numpy()


@nnx.jit
def _forward(model, inputs):
  return model(**inputs)


def _ours(model, inputs):
  """Jitted: one compilation per (config, shapes), shared by every model loaded with that config."""
  return np.asarray(_forward(model, {k: jnp.asarray(v) for k, v in inputs.items()}))


def _max_diff(a, b, dec_mask):
  return float(np.abs(a - b)[dec_mask.astype(bool)].max())


def test_sharded_checkpoint_has_index(ckpts):
  path = ckpts['t5_v1_1'][0]
  assert os.path.exists(os.path.join(path, 'model.safetensors.index.json'))
  assert len([f for f in os.listdir(path) if f.endswith('.safetensors')]) > 1


@pytest.mark.parametrize('name,scan', [('t5_v1_0', True), ('t5_v1_0', False), ('t5_v1_1', True),
                                       ('mt5_tied', True), ('mt5_untied', True)])
def test_logits_match_hf(ckpts, name, scan):
  path, hf_model = ckpts[name]
  model = from_pretrained(path, scan_layers=scan)
  cfg = model.config
  assert cfg.tie_word_embeddings == (name in ('t5_v1_0', 'mt5_tied'))
  assert cfg.scale_decoder_outputs == (name == 't5_v1_0')
  inputs = _inputs()
  diff = _max_diff(_ours(model, inputs), _hf_logits(hf_model, inputs), inputs['decoder_attention_mask'])
  assert diff <= TOL, diff


def test_long_sequence_buckets(ckpts):
  """>= 300 tokens: relative distances past max_distance (128) and every log-spaced bucket."""
  path, hf_model = ckpts['t5_v1_0']
  inputs = _inputs(b=2, s=320, t=300, seed=1)
  diff = _max_diff(_ours(from_pretrained(path), inputs), _hf_logits(hf_model, inputs),
                   inputs['decoder_attention_mask'])
  assert diff <= TOL, diff


@pytest.mark.parametrize('bidirectional', [True, False])
@pytest.mark.parametrize('buckets,max_distance', [(32, 128), (8, 20)])
def test_relative_position_bucket(bidirectional, buckets, max_distance):
  rel = np.arange(-600, 600)[None, :]
  want = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
      torch.from_numpy(rel), bidirectional=bidirectional, num_buckets=buckets, max_distance=max_distance).numpy()
  got = np.asarray(t5.relative_position_bucket(jnp.asarray(rel), bidirectional, buckets, max_distance))
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize('name', ['t5_v1_0', 't5_v1_1', 'mt5_untied'])
def test_save_pretrained_round_trip(ckpts, name, tmp_path):
  model = from_pretrained(ckpts[name][0])
  save_pretrained(model, str(tmp_path))
  back = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(tmp_path)).eval()
  inputs = _inputs(seed=2)
  diff = _max_diff(_ours(model, inputs), _hf_logits(back, inputs), inputs['decoder_attention_mask'])
  assert diff <= TOL, diff
  again = from_pretrained(str(tmp_path), scan_layers=False)  # and back into JAX, unrolled this time
  assert _max_diff(_ours(again, inputs), _ours(model, inputs), inputs['decoder_attention_mask']) <= 1e-5


def test_bf16_within_tolerance(ckpts, param_dtype=jnp.bfloat16):
  """bf16 weights and compute (mixed precision, bf16 compute on float32 weights: tests/test_slt.py) are no
  further from float32 than HF's own bf16 model is (x 1.5): bf16 rounding alone moves these logits by up to 3%."""
  path, hf_model = ckpts['t5_v1_1']
  inputs = _inputs()
  ref = _ours(from_pretrained(path), inputs)
  model = from_pretrained(path, dtype=jnp.bfloat16, param_dtype=param_dtype)
  assert all(x.dtype == param_dtype for x in jax.tree.leaves(nnx.state(model)))
  got = _ours(model, inputs)
  hf_bf16 = _hf_logits(type(hf_model).from_pretrained(path, dtype=torch.bfloat16).eval(), inputs)
  mask = inputs['decoder_attention_mask']
  ours_err, hf_err = _max_diff(got, ref, mask), _max_diff(hf_bf16, ref, mask)
  assert ours_err <= 1.5 * hf_err + 0.01, (ours_err, hf_err)


def _copy(src, dst):
  shutil.copytree(src, dst)
  return str(dst)


def test_wrong_shape_names_tensor(ckpts, tmp_path):
  path = _copy(ckpts['t5_v1_0'][0], tmp_path / 'c')
  with open(os.path.join(path, 'config.json')) as f:
    cfg = json.load(f)
  cfg['d_ff'] = 48
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(cfg, f)
  with pytest.raises(ValueError, match=r"DenseReluDense\.wi\.weight.*shape"):
    from_pretrained(path)


def test_unexpected_and_missing_tensors_named(ckpts, tmp_path):
  from safetensors.numpy import load_file, save_file
  path = _copy(ckpts['t5_v1_0'][0], tmp_path / 'c')
  file = os.path.join(path, 'model.safetensors')
  tensors = load_file(file)
  save_file(dict(tensors, **{'encoder.block.0.layer.0.SelfAttention.extra.weight': np.zeros(3, np.float32)}),
            file, metadata={'format': 'pt'})
  with pytest.raises(ValueError, match=r'SelfAttention\.extra\.weight'):
    from_pretrained(path)
  del tensors['decoder.final_layer_norm.weight']
  save_file(tensors, file, metadata={'format': 'pt'})
  with pytest.raises(ValueError, match=r'decoder\.final_layer_norm\.weight'):
    from_pretrained(path)


def test_refuses_pickle_only_checkpoint(tmp_path):
  (tmp_path / 'config.json').write_text(json.dumps({'model_type': 't5'}))
  (tmp_path / 'pytorch_model.bin').write_bytes(b'not unpickled')
  with pytest.raises(ValueError, match='safetensors'):
    from_pretrained(str(tmp_path))


def test_cached_decode_equals_full_forward(ckpts):
  model = from_pretrained(ckpts['t5_v1_1'][0])
  inputs = _inputs(t=6, seed=5)
  ids, am, dids = (jnp.asarray(inputs[k]) for k in ('input_ids', 'attention_mask', 'decoder_input_ids'))

  @nnx.jit
  def start(model, ids, am, dids):
    enc = model.encode(ids, am)
    full, _ = model.decode(dids, enc, am)
    cache = model.init_cache(enc, am, max_len=8)
    logits, cache = model.decode(dids[:, :2], cache=cache)  # a 2-token chunk, then one at a time
    return full, logits, cache

  step = nnx.jit(lambda model, ids, cache: model.decode(ids, cache=cache))
  full, step_logits, cache = start(model, ids, am, dids)
  outs = [step_logits]
  for i in range(2, dids.shape[1]):
    step_logits, cache = step(model, dids[:, i:i + 1], cache)
    outs.append(step_logits)
  np.testing.assert_allclose(np.concatenate(outs, axis=1), np.asarray(full), atol=1e-5)
  assert (np.asarray(cache.index) == dids.shape[1]).all()
