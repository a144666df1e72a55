"""slt_jax.models.contract: both SLT models (and the text-only decode adapters) have the Protocol's names, and a
batch made by contract.abstract / zeros is one the models take (logits f32[B, L, V])."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from slt_jax import decode, default_config
from slt_jax.data import pipeline
from slt_jax.models import contract, slt

K, C, V = 5, 3, 48
B, T, L = 2, 12, 6


def _config(family: str):
  config = default_config.get_config()
  config.model.family = family
  if family == 't5':
    config.model.arch.update(d_model=16, d_kv=4, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=4)
  else:
    config.model.arch = dict(model_type=family, vocab_size=V, hidden_size=32, intermediate_size=32,
                             num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)
    config.model.pose_encoder.update(num_layers=1, num_heads=2)
  config.model.pose.update(hidden=16, conv_layers=1, conv_stride=2, dropout=0.0)
  return config


@pytest.fixture(scope='module', params=['t5', 'llama'])
def model(request):
  return slt.build_model(_config(request.param), V, K * C, rngs=nnx.Rngs(params=0))


def test_models_follow_the_protocol(model):
  assert isinstance(model, contract.DecodingModel)
  assert isinstance(model, contract.SLTModel) == hasattr(model, 'token_logits')
  assert model.vocab_size == V and isinstance(model.forced_eos, bool)
  assert isinstance(decode.TextSeq2Seq(model.lm) if hasattr(model.lm, 'encode') else decode.TextCausal(model.lm),
                    contract.DecodingModel)


def test_protocol_rejects_a_model_without_decoding():
  class NoDecoding:
    eos_id, pad_id, vocab_size, forced_eos = 1, 0, 8, False

    def __call__(self, batch, rngs=None):
      return batch
  assert not isinstance(NoDecoding(), contract.DecodingModel)
  assert not isinstance(NoDecoding(), contract.SLTModel)


def test_abstract_and_zeros_batches(model):
  abstract = contract.abstract(B, T, K, C, L)
  zeros = contract.zeros(B, T, K, C, L)
  assert tuple(abstract) == tuple(zeros) == contract.DEVICE_KEYS == pipeline.DEVICE_KEYS
  for k in contract.DEVICE_KEYS:
    assert (abstract[k].shape, abstract[k].dtype) == (zeros[k].shape, zeros[k].dtype), k
  assert abstract['poses'].shape == (B, T, K, C) and abstract['labels'].dtype == jnp.int32
  assert abstract['pose_mask'].dtype == abstract['label_mask'].dtype == abstract['example_mask'].dtype == bool
  assert set(contract.model_batch(zeros)) == set(contract.MODEL_KEYS)
  graphdef, state = nnx.split(model)
  out = jax.eval_shape(lambda s, b: nnx.merge(graphdef, s)(contract.model_batch(b)), state, abstract)
  assert out.shape == (B, L, V) and out.dtype == jnp.float32
  batch = {**zeros, 'pose_mask': np.ones((B, T), bool), 'label_mask': np.ones((B, L), bool)}
  logits = model(contract.model_batch(batch))
  assert logits.shape == (B, L, V) and bool(jnp.all(jnp.isfinite(logits)))
