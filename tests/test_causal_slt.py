"""Decoder-only SLT (CausalSLT) on tiny random Llama / Mistral / Qwen2 / Gemma checkpoints: the prompt from a
chat template, pose padding that changes nothing, cached decoding equal to teacher forcing, a few training
steps per family with falling loss (plain optax loop, the trainer's loss), and greedy translation from poses.
"""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from tokenizers import Tokenizer, models, pre_tokenizers
import transformers

import tiny_decoders
from test_slt import _check_padding_free_matches_padded  # pylint: disable=g-bad-import-order
from slt_jax import decode, default_config
from slt_jax.models import causal_slt, layers, slt
from slt_jax.train import init_from
from slt_jax.train import step as step_lib

FAMILIES = ('llama3', 'mistral', 'qwen2', 'gemma')
K, C = 4, 3  # keypoints, coordinates
PAD, BOS, EOS = 0, 1, 2


@pytest.fixture(scope='module')
def ckpts(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp('causal'))
  return {name: tiny_decoders.make_checkpoint(name, directory) for name in FAMILIES}


def _config(path='', **model):
  config = default_config.get_config()
  config.model.name = path
  config.model.pose.update(hidden=32, conv_layers=1, conv_stride=2, dropout=0.0)
  config.model.pose_encoder.update(num_layers=1, num_heads=2)
  config.model.update(model)
  return config


def _build(config, seed=0):
  return slt.build_model(config, tiny_decoders.VOCAB, K * C, nnx.Rngs(seed))


def _batch(seed=0, frames=(20, 13), labels=((5, 6, 7, 8, EOS), (9, 10, EOS))):
  """Two pose sequences padded to 20 frames, labels padded with PAD (as the data pipeline makes them)."""
  rng = np.random.default_rng(seed)
  t, l = max(frames), max(map(len, labels))
  poses = rng.normal(size=(len(frames), t, K, C)).astype(np.float32)
  pose_mask = np.arange(t)[None] < np.asarray(frames)[:, None]
  ids = np.full((len(labels), l + 1), PAD, np.int32)
  for i, row in enumerate(labels):
    ids[i, :len(row)] = row
  return dict(poses=jnp.asarray(poses), pose_mask=jnp.asarray(pose_mask), labels=jnp.asarray(ids),
              label_mask=jnp.asarray(ids != PAD))


@nnx.jit
def _logits(model, batch):
  return model(batch)


# --- the prompt -----------------------------------------------------------------------------------------

def _chat_tokenizer(directory):
  """A word-level HF tokenizer with a Qwen-like chat template (config.model.tokenizer points at it)."""
  words = ['<pad>', '<s>', '</s>', '<|im_start|>', '<|im_end|>', 'user', 'assistant', 'translate', 'this']
  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token='<pad>'))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token='<pad>', bos_token='<s>',
                                              eos_token='<|im_end|>', additional_special_tokens=words[3:5])
  fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|>"
                        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant{% endif %}")
  fast.save_pretrained(directory)


def test_chat_template_prompt_and_eos(ckpts, tmp_path):
  _chat_tokenizer(str(tmp_path / 'tok'))
  # The tokenizer's EOS (<|im_end|>, 4) must be one the checkpoint stops on: listed in its generation_config.json
  # beside config.json's 2, as Qwen2.5-Instruct lists <|im_end|> and <|endoftext|>.
  ckpt = shutil.copytree(ckpts['qwen2'], tmp_path / 'qwen2')
  (ckpt / 'generation_config.json').write_text(json.dumps({'eos_token_id': [2, 4]}))
  model = _build(_config(str(ckpt), tokenizer=str(tmp_path / 'tok'), prompt='translate this'))
  # <|im_start|> user translate this [poses] <|im_end|> <|im_start|> assistant -> target
  assert model.prefix_ids == (3, 5, 7, 8) and model.suffix_ids == (4, 3, 6)
  assert model.eos_id == 4 and model.pad_id == 0 and not hasattr(model, 'answer_start')


def test_prompt_without_template_is_bos_and_learned_answer_start(ckpts):
  model = _build(_config(ckpts['llama3']))
  assert model.prefix_ids == (BOS,) and model.suffix_ids == () and model.answer_start.shape == (64,)
  assert (model.eos_id, model.pad_id) == (EOS, PAD)
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):  # logical axis names for sharding
    names = var.get_metadata().get('out_sharding')
    assert names is not None and len(names) == len(var.shape) and set(names) <= set(layers.LOGICAL_AXES), path


def test_build_model_dispatches_offline_arch():
  """No checkpoint: slt.build_model builds the CausalSLT from config.model.arch (HF config.json fields)."""
  arch = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16, bos_token_id=1, eos_token_id=2)
  config = _config(family='gemma')
  config.model.arch = arch
  model = _build(config)
  assert isinstance(model, causal_slt.CausalSLT) and model.vocab_size == 300
  assert model.lm.config.norm_unit_offset and model.lm.config.tie_word_embeddings


# --- padding --------------------------------------------------------------------------------------------

@pytest.mark.parametrize('bidirectional', [False, True])
def test_pose_padding_does_not_leak(ckpts, bidirectional):
  """More padding frames, whatever they hold, leave every row's logits unchanged."""
  model = _build(_config(ckpts['mistral'], bidirectional_prompt=bidirectional))
  batch = _batch()
  ref = np.asarray(_logits(model, batch))
  padded = dict(batch)
  junk = 100 * np.random.default_rng(1).normal(size=(2, 12, K, C)).astype(np.float32)
  padded['poses'] = jnp.concatenate([batch['poses'], jnp.asarray(junk)], axis=1)
  padded['pose_mask'] = jnp.concatenate([batch['pose_mask'], jnp.zeros((2, 12), bool)], axis=1)
  padded['poses'] = jnp.where(padded['pose_mask'][..., None, None], padded['poses'], 100.0)
  np.testing.assert_allclose(np.asarray(_logits(model, padded)), ref, atol=2e-5)


@pytest.mark.parametrize('bidirectional', [False, True])
def test_cached_decoding_matches_teacher_forcing(ckpts, bidirectional):
  """start_decode + decode_step over the labels give model(batch)'s logits (padded poses, batch-first state);
  with model.bidirectional_prompt, in both the prompt attends to itself both ways."""
  model = _build(_config(ckpts['gemma'], bidirectional_prompt=bidirectional))
  batch = _batch()
  ref = np.asarray(_logits(model, batch))
  start = nnx.jit(lambda m, p, pm: m.start_decode(p, pm, 6))
  step = nnx.jit(lambda m, s, t: m.decode_step(s, t))
  logits, state = start(model, batch['poses'], batch['pose_mask'])
  got = [logits]
  for i in range(batch['labels'].shape[1] - 1):
    logits, state = step(model, state, batch['labels'][:, i])
    got.append(logits)
  np.testing.assert_allclose(np.stack(got, axis=1), ref, atol=1e-4)
  assert all(leaf.shape[0] == 2 for leaf in jax.tree.leaves(state))


def test_bidirectional_prompt_lets_poses_see_later_poses(ckpts):
  """A prefix LM: changing the last pose frames changes the LLM's output at the first pose position, which
  a causal LLM never lets happen (checked on its hidden states, with the pose encoder's output held fixed)."""
  model = _build(_config(ckpts['llama3'], bidirectional_prompt=True))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 8, 64)).astype(np.float32))
  y = x.at[:, 5:].set(3.0)
  first = lambda e, p: np.asarray(model.lm(inputs_embeds=e, return_hidden=True, prefix_len=p)[0, 0])
  np.testing.assert_array_equal(first(x, 0), first(y, 0))
  assert np.abs(first(x, 8) - first(y, 8)).max() > 1e-3
  # the tokens after the prefix stay causal: nothing after position 6 reaches it
  late = lambda e: np.asarray(model.lm(inputs_embeds=e, return_hidden=True, prefix_len=4)[0, 6])
  np.testing.assert_array_equal(late(x), late(x.at[:, 7:].set(3.0)))


# --- padding-free training (model.padding_free) ------------------------------------------------------------

_RAGGED = dict(frames=(20, 13, 7), labels=((5, 6, 7, 8, EOS), (9, 10, EOS), (EOS,)))  # poses padded mid-prompt


@pytest.mark.parametrize('use_lora', [False, True])
@pytest.mark.parametrize('name', FAMILIES)
def test_padding_free_matches_padded(ckpts, tmp_path, name, use_lora):
  """token_logits (the LLM on the real tokens' rows, the LM head on the target rows) gives the padded forward's
  loss and gradients, with LoRA adapters on every projection too. The variants ride along: scan over layers
  (llama3, gemma), the prefix LM (model.bidirectional_prompt, mistral) and a chat-template prompt with text
  on both sides of the poses (qwen2; else BOS before and the learned answer start after them)."""
  path, extra = ckpts[name], {}
  if name == 'qwen2':
    _chat_tokenizer(str(tmp_path / 'tok'))
    path = shutil.copytree(ckpts['qwen2'], tmp_path / 'qwen2')
    (path / 'generation_config.json').write_text(json.dumps({'eos_token_id': [2, 4]}))
    extra = dict(tokenizer=str(tmp_path / 'tok'), prompt='translate this')
  config = _config(str(path), use_lora=use_lora, scan_layers=name in ('llama3', 'gemma'),
                   bidirectional_prompt=name == 'mistral', **extra)
  config.model.lora_config.update(r=4, lora_alpha=8, lora_dropout=0.0)
  model = _build(config)
  assert (model.suffix_ids == (4, 3, 6)) == (name == 'qwen2')
  if use_lora:  # PEFT's zero init of B would give A no gradient: perturb the adapters
    adapters = nnx.to_flat_state(nnx.state(model, nnx.LoRAParam))
    assert adapters
    for i, (_, var) in enumerate(adapters):
      var[...] = 0.1 * jax.random.normal(jax.random.key(i), var.shape, var.dtype)
  _check_padding_free_matches_padded(model, _batch(**_RAGGED))


# --- training and translation -----------------------------------------------------------------------------

def _train(model, batch, steps, lr=3e-3):
  """Plain optax loop over the trained parameters, with the trainer's masked cross-entropy."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adam(lr)
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, opt_state, batch, key):
    def loss_fn(params):
      logits = nnx.merge(graphdef, params, rest)(batch, rngs=nnx.Rngs(dropout=key))
      loss_sum, n = step_lib.cross_entropy(logits, batch['labels'], batch['label_mask'])
      return loss_sum / n
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for i in range(steps):
    params, opt_state, loss = train_step(params, opt_state, batch, jax.random.key(i))
    losses.append(float(loss))
  return nnx.merge(graphdef, params, rest), losses


@pytest.fixture(scope='module')
def trained_qwen2(ckpts):
  """Qwen2 trained to memorise _batch()."""
  model = _build(_config(ckpts['qwen2']))
  return _train(model, _batch(), steps=60)


@pytest.mark.parametrize('name', FAMILIES)
def test_few_training_steps_lower_the_loss(name, ckpts, trained_qwen2):
  if name == 'qwen2':
    losses = trained_qwen2[1][:8]
  else:  # llama3 with per-layer remat: the gradient flows through the checkpointed scan
    model = _build(_config(ckpts[name], remat='full' if name == 'llama3' else 'none'))
    _, losses = _train(model, _batch(), steps=8)
  assert np.all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0], losses


def test_greedy_translation_from_poses(trained_qwen2):
  """After memorising two examples, decode.greedy translates their poses alone (EOS, then pad ids)."""
  model, losses = trained_qwen2
  assert losses[-1] < 0.05, losses[-5:]
  batch = _batch()
  out = np.asarray(nnx.jit(decode.greedy, static_argnums=3)(model, batch['poses'], batch['pose_mask'], 8))
  np.testing.assert_array_equal(out[0], [5, 6, 7, 8, EOS, PAD, PAD, PAD])
  np.testing.assert_array_equal(out[1], [9, 10, EOS, PAD, PAD, PAD, PAD, PAD])


# --- the projector's output scale ------------------------------------------------------------------------

_ARCH = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, bos_token_id=1, eos_token_id=2)


@pytest.mark.parametrize('family', ['llama', 'gemma'])
def test_projector_norm_puts_the_poses_at_the_token_embeddings_rms(family):
  """model.projector_norm: every real pose embedding starts at the RMS of the LLM's token embeddings (Gemma's
  sqrt(hidden) scaling included), where the bare projector's output is many times larger."""
  batch = _batch()
  rms = {}
  for norm in (False, True):
    config = _config(family=family, projector_norm=norm)
    config.model.arch = _ARCH
    model = _build(config)
    pose, mask = model.encoder(batch['poses'], batch['pose_mask'])
    rms[norm] = np.sqrt(np.mean(np.square(np.asarray(pose)[np.asarray(mask)]), axis=-1))   # per position
    tokens = np.asarray(model.lm.embed(jnp.arange(_ARCH['vocab_size'])[None]))
  token_rms = np.sqrt(np.mean(np.square(tokens)))
  np.testing.assert_allclose(rms[True], token_rms, rtol=1e-3)
  assert rms[False].mean() > 4 * token_rms
  assert init_from.part_of(('encoder', 'out_norm', 'scale')) == 'projector'  # trained / frozen as the projector


def test_projector_norm_on_an_encoder_decoder_is_an_error():
  config = _config(family='t5', projector_norm=True)
  config.model.arch = dict(d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=1, num_decoder_layers=1)
  with pytest.raises(ValueError, match='model.projector_norm'):
    _build(config)


def test_pose_positions_reach_the_decoder_only_front_end():
  """model.pose.positions adds the sinusoidal frame positions to the causal front end's output on the real
  frames, as on the encoder-decoder path; off, the output is the same model's without them."""
  batch = _batch()
  out = {}
  for positions in (False, True):
    config = _config(family='llama')
    config.model.arch = _ARCH
    config.model.pose.positions = positions
    model = _build(config)  # same seed: the same parameters either way (the positions have none)
    assert model.encoder.frontend.positions == positions
    out[positions], mask = model.encoder.frontend(batch['poses'], batch['pose_mask'])
  x, mask = np.asarray(out[False]), np.asarray(mask)
  want = x + np.asarray(layers.sinusoid_positions(x.shape[1], x.shape[-1]))[None]
  np.testing.assert_allclose(np.asarray(out[True]), np.where(mask[..., None], want, 0), rtol=1e-5, atol=1e-6)
  assert not np.allclose(out[True], out[False])
