"""Seq2SeqSLT: the model contract (shapes, padding, incremental decoding) and short training runs from random
init and from tiny pretrained T5 / BART / mBART checkpoints."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from slt_jax import default_config
from slt_jax.models import slt
from slt_jax.models.pose_frontend import PoseFrontEnd
from slt_jax.train import step as step_lib

K, C, V = 5, 3, 48
B, T, L = 3, 12, 6


def _config(family='t5', name='', **model):
  config = default_config.get_config()
  config.model.family = family
  config.model.name = name
  if family == 't5':
    config.model.arch.update(d_model=16, d_kv=4, d_ff=32, num_layers=2, num_decoder_layers=1, num_heads=4)
  config.model.pose.update(hidden=16, conv_layers=1, conv_stride=2)
  config.model.update(**model)
  return config


def _batch(seed=0, eos=1, pad=0):
  rs = np.random.RandomState(seed)
  lengths = np.array([T, 7, 4])
  labels = rs.randint(4, V, (B, L)).astype(np.int32)
  tgt_len = np.array([L, 4, 2])
  for i, n in enumerate(tgt_len):
    labels[i, n - 1] = eos
    labels[i, n:] = pad
  return dict(poses=rs.randn(B, T, K, C).astype(np.float32), pose_mask=np.arange(T)[None] < lengths[:, None],
              labels=labels, label_mask=np.arange(L)[None] < tgt_len[:, None])


def _build(config):
  return nnx.jit(lambda: slt.build_model(config, V, K * C, rngs=nnx.Rngs(params=0)))()


@pytest.fixture(scope='module')
def model():
  return _build(_config())


@nnx.jit
def _forward(model, batch):
  return model(batch)


def test_forward_shapes_and_attributes(model):
  batch = _batch()
  logits = _forward(model, batch)
  assert logits.shape == (B, L, V) and logits.dtype == jnp.float32
  assert (model.eos_id, model.pad_id, model.vocab_size) == (1, 0, V)


def test_padding_frames_do_not_change_output(model):
  batch = _batch()
  rs = np.random.RandomState(1)
  extra = rs.randn(B, 5, K, C).astype(np.float32) * 10  # garbage in the padding frames
  padded = dict(batch, poses=np.concatenate([batch['poses'], extra], 1),
                pose_mask=np.concatenate([batch['pose_mask'], np.zeros((B, 5), bool)], 1))
  noisy = dict(batch, poses=np.where(batch['pose_mask'][:, :, None, None], batch['poses'], 7.0))
  ref = _forward(model, batch)
  np.testing.assert_allclose(np.asarray(_forward(model, padded)), np.asarray(ref), atol=1e-5)
  np.testing.assert_allclose(np.asarray(_forward(model, noisy)), np.asarray(ref), atol=1e-5)


def test_frontend_downsamples_mask():
  # Two residual blocks; only the first strides, so the front end downsamples time by conv_stride.
  fe = PoseFrontEnd(K * C, 8, hidden=8, conv_layers=2, conv_stride=4, positions=True, rngs=nnx.Rngs(0))
  poses = jnp.ones((2, 11, K, C))
  mask = jnp.arange(11)[None] < jnp.array([[11], [5]])
  x, m = fe(poses, mask)
  assert x.shape == (2, 3, 8)
  np.testing.assert_array_equal(np.asarray(m), [[1, 1, 1], [1, 1, 0]])
  assert float(jnp.abs(x[1, 2]).max()) == 0.0


def _check_decode_matches_forward(model, batch):
  """Feeding the labels through start_decode/decode_step reproduces the teacher-forcing logits."""
  full = np.asarray(_forward(model, batch))
  start = nnx.jit(lambda m, p, pm: m.start_decode(p, pm, L))
  step = nnx.jit(lambda m, s, t: m.decode_step(s, t))
  logits, state = start(model, batch['poses'], batch['pose_mask'])
  assert all(leaf.shape[0] == B for leaf in jax.tree.leaves(state))  # batch-first for beam search
  outs = [logits]
  for i in range(L - 1):
    logits, state = step(model, state, jnp.asarray(batch['labels'][:, i]))
    outs.append(logits)
  np.testing.assert_allclose(np.stack([np.asarray(o) for o in outs], 1), full, atol=1e-4)


def test_incremental_decode_matches_teacher_forcing(model):
  _check_decode_matches_forward(model, _batch())


def _train(model, batch, steps=10, lr=1e-2):
  """A plain optax loop with dropout on; returns the losses."""
  opt = nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, batch, key):
    def loss_fn(model):
      logits = model(batch, rngs=nnx.Rngs(dropout=key))
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch['labels'])
      return (ce * batch['label_mask']).sum() / batch['label_mask'].sum()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return loss

  return [float(step(model, opt, batch, jax.random.key(i))) for i in range(steps)]


def test_training_from_random_init_lowers_loss(model):
  losses = _train(nnx.clone(model), _batch())  # a copy: the fixture stays as built
  assert losses[-1] < 0.5 * losses[0], losses


# --- from tiny pretrained checkpoints ---------------------------------------------------------------

@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
  """Tiny HF checkpoints (+ a word-level tokenizer with an mBART language code) written by transformers."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  from tokenizers import Tokenizer, models
  torch.manual_seed(0)
  root = tmp_path_factory.mktemp('pretrained')
  words = ['<s>', '<pad>', '</s>', '<unk>', 'de_DE', 'translate', 'signs'] + [f'w{i}' for i in range(V - 7)]
  tok = transformers.PreTrainedTokenizerFast(
      tokenizer_object=Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token='<unk>')),
      bos_token='<s>', pad_token='<pad>', eos_token='</s>', unk_token='<unk>')
  tok._tokenizer.pre_tokenizer = __import__('tokenizers').pre_tokenizers.WhitespaceSplit()
  bart_kw = dict(vocab_size=V, d_model=16, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
                 decoder_attention_heads=4, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64)
  dirs = {}
  for name, model in (
      ('t5', transformers.T5ForConditionalGeneration(transformers.T5Config(
          vocab_size=V, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_decoder_layers=1, num_heads=4))),
      ('bart', transformers.BartForConditionalGeneration(transformers.BartConfig(**bart_kw, forced_bos_token_id=0))),
      ('mbart', transformers.MBartForConditionalGeneration(transformers.MBartConfig(**bart_kw, scale_embedding=True)))):
    if name == 'bart':
      model.generation_config.forced_bos_token_id = 0  # as facebook/bart-large has it
    model.save_pretrained(root / name)
    tok.save_pretrained(root / name)
    dirs[name] = str(root / name)
  return dirs


@pytest.mark.parametrize('name,model_kw,prefix', [
    ('t5', dict(), (0,)),
    ('bart', dict(prompt='translate signs'), (2, 0)),
    ('mbart', dict(tgt_lang='de_DE'), (2, 4)),
])
def test_pretrained_families_train_and_decode(pretrained, name, model_kw, prefix):
  config = _config(name, pretrained[name], **model_kw)
  if name == 'mbart':
    config.training.mixed_precision = 'bf16'
  model = slt.build_model(config, V, K * C, rngs=nnx.Rngs(params=0))
  assert model.decoder_prefix == prefix
  assert model.prompt_ids == ((5, 6) if 'prompt' in model_kw else ())
  batch = _batch(eos=model.eos_id, pad=model.pad_id)
  if name == 'bart':  # a 2-token decoder prefix and a prompt (T5's path: test_incremental_decode...)
    _check_decode_matches_forward(model, batch)
  losses = _train(model, batch, steps=12)
  assert losses[-1] < 0.75 * losses[0], losses


# --- padding-free training (model.padding_free) ------------------------------------------------------------

def _check_padding_free_matches_padded(model, batch, label_smoothing=0.1):
  """token_logits' loss and gradients equal the padded forward's (no dropout: its masks follow positions)."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  counts = step_lib.padding_free_counts(batch, 4)

  def loss(params, counts):
    m = nnx.merge(graphdef, params, rest, copy=True)  # as train_step (a scanned LoRA base lives in `rest`)
    if counts is None:
      logits, labels, mask = m(batch), batch['labels'], batch['label_mask']
    else:
      logits, labels, mask = m.token_logits(batch, counts)
      assert logits.ndim == 2 and logits.shape[0] < batch['labels'].size  # the token rows, not [B, L]
    loss_sum, n = step_lib.cross_entropy(logits, labels, mask, label_smoothing)
    return loss_sum / n

  loss_and_grads = jax.jit(jax.value_and_grad(loss), static_argnums=1)
  padded_loss, padded_grads = loss_and_grads(params, None)
  free_loss, free_grads = loss_and_grads(params, counts)
  np.testing.assert_allclose(free_loss, padded_loss, rtol=1e-5)
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(padded_grads))
  for a, b in zip(jax.tree.leaves(free_grads), jax.tree.leaves(padded_grads)):
    np.testing.assert_allclose(a, b, atol=1e-5 * scale)


def test_padding_free_matches_padded_t5(model):
  _check_padding_free_matches_padded(model, _batch())


def test_padding_free_matches_padded_bart_with_prompt_and_two_token_prefix(pretrained):
  model = slt.build_model(_config('bart', pretrained['bart'], prompt='translate signs'), V, K * C,
                          rngs=nnx.Rngs(params=0))
  assert model.decoder_prefix == (2, 0) and model.prompt_ids == (5, 6)
  _check_padding_free_matches_padded(model, _batch(eos=model.eos_id, pad=model.pad_id))
