"""BART / mBART against transformers' PyTorch models on tiny random checkpoints (CPU)."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from slt_jax.models import from_pretrained, save_pretrained

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

TINY = dict(vocab_size=64, d_model=16, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
            decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=24, max_position_embeddings=40,
            dropout=0.0)
TOL = 1e-4


@pytest.fixture(scope='module')
def ckpts(tmp_path_factory):
  """name -> (checkpoint dir, HF model). Norm parameters and final_logits_bias are randomised so that a
  mapping mistake on them shows in the logits."""
  torch.manual_seed(0)
  root = tmp_path_factory.mktemp('bart')
  out = {}
  for name, cls, cfg in (
      ('bart', transformers.BartForConditionalGeneration, transformers.BartConfig(**TINY, forced_bos_token_id=0)),
      ('mbart', transformers.MBartForConditionalGeneration, transformers.MBartConfig(**TINY, scale_embedding=True))):
    m = cls(cfg).eval()
    with torch.no_grad():
      m.final_logits_bias.normal_()
      for p in m.parameters():
        if p.dim() == 1:
          p.normal_(0.5, 0.5)
    m.save_pretrained(root / name)
    out[name] = (str(root / name), m)
  return out


def _inputs(b=2, s=7, t=5, seed=0):
  rs = np.random.RandomState(seed)
  am = np.ones((b, s), np.int64)
  am[1, s // 2:] = 0
  dam = np.ones((b, t), np.int64)
  dam[0, t // 2 + 1:] = 0
  return dict(input_ids=rs.randint(3, TINY['vocab_size'], (b, s)), attention_mask=am,
              decoder_input_ids=rs.randint(3, TINY['vocab_size'], (b, t)), decoder_attention_mask=dam)


def _hf_logits(m, inputs):
  with torch.no_grad():
    return m(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits.numpy()


@nnx.jit
def _forward(model, inputs):
  return model(**inputs)


def _ours(model, inputs):
  return np.asarray(_forward(model, {k: jnp.asarray(v) for k, v in inputs.items()}))


def _max_diff(a, b, dec_mask):
  return float(np.abs(a - b)[dec_mask.astype(bool)].max())


@pytest.mark.parametrize('name,scan', [('bart', True), ('mbart', True), ('mbart', False)])
def test_logits_match_hf(ckpts, name, scan):
  path, hf_model = ckpts[name]
  model = from_pretrained(path, scan_layers=scan)
  assert model.config.pre_norm == (name == 'mbart')
  inputs = _inputs()
  diff = _max_diff(_ours(model, inputs), _hf_logits(hf_model, inputs), inputs['decoder_attention_mask'])
  assert diff <= TOL, diff


def test_longest_positions(ckpts):
  """Encoder and decoder at max_position_embeddings: the +2 offset rows are all used."""
  path, hf_model = ckpts['bart']
  inputs = _inputs(s=TINY['max_position_embeddings'], t=TINY['max_position_embeddings'], seed=1)
  diff = _max_diff(_ours(from_pretrained(path), inputs), _hf_logits(hf_model, inputs),
                   inputs['decoder_attention_mask'])
  assert diff <= TOL, diff


@pytest.mark.parametrize('name', ['bart', 'mbart'])
def test_save_pretrained_round_trip(ckpts, name, tmp_path):
  model = from_pretrained(ckpts[name][0])
  save_pretrained(model, str(tmp_path), max_shard_size=20_000)
  assert os.path.exists(tmp_path / 'model.safetensors.index.json')
  back = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(tmp_path)).eval()
  assert type(back).__name__.lower().startswith(name)
  inputs = _inputs(seed=2)
  diff = _max_diff(_ours(model, inputs), _hf_logits(back, inputs), inputs['decoder_attention_mask'])
  assert diff <= TOL, diff


def test_bf16_within_tolerance(ckpts):
  path = ckpts['bart'][0]
  inputs = _inputs()
  ref = _ours(from_pretrained(path), inputs)
  model = from_pretrained(path, dtype=jnp.bfloat16)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(nnx.state(model)))
  got = _ours(model, inputs)
  assert _max_diff(got, ref, inputs['decoder_attention_mask']) <= 0.02 * np.abs(ref).max() + 0.02


def test_wrong_shape_names_tensor(ckpts, tmp_path):
  path = str(tmp_path / 'c')
  shutil.copytree(ckpts['mbart'][0], path)
  with open(os.path.join(path, 'config.json')) as f:
    cfg = json.load(f)
  cfg['max_position_embeddings'] = 50
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(cfg, f)
  with pytest.raises(ValueError, match=r'embed_positions\.weight.*shape'):
    from_pretrained(path)


def test_cached_decode_equals_full_forward(ckpts):
  model = from_pretrained(ckpts['mbart'][0])
  inputs = _inputs(t=6, seed=5)
  ids, am, dids = (jnp.asarray(inputs[k]) for k in ('input_ids', 'attention_mask', 'decoder_input_ids'))

  @nnx.jit
  def start(model, ids, am, dids):
    enc = model.encode(ids, am)
    full, _ = model.decode(dids, enc, am)
    cache = model.init_cache(enc, am, max_len=8)
    logits, cache = model.decode(dids[:, :2], cache=cache)
    return full, logits, cache

  step = nnx.jit(lambda model, ids, cache: model.decode(ids, cache=cache))
  full, logits, cache = start(model, ids, am, dids)
  outs = [logits]
  for i in range(2, dids.shape[1]):
    logits, cache = step(model, dids[:, i:i + 1], cache)
    outs.append(logits)
  np.testing.assert_allclose(np.concatenate(outs, axis=1), np.asarray(full), atol=1e-5)
