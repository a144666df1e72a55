"""The decoder-only SLT path uses the poses: a tiny causal model memorises 16 sentences signed as sequences
of word signs, and greedy decoding of those poses gives them back; shuffling the poses within the batch must
lose that (a model that ignored the poses would decode the same with and without shuffling: its language
prior alone). Two models: a random Llama shaped as configs/demo_causal.py's (shrunk) with the prefix-LM attention
and dropout on, and a tiny pretrained Llama (transformers) with LoRA on, where only the adapters and the new
parts (pose front end, encoder, projector, answer start) train: the pose prefix must still reach it.
"""
import os

import jax
import numpy as np
import optax
import pytest
import sacrebleu
from flax import nnx

from slt_jax import decode, default_config
from slt_jax.data import tokenizer as tokenizer_lib
from slt_jax.models import slt
from slt_jax.train import step as step_lib

import tiny_decoders
import tiny_demo

K, C = 4, 3                  # keypoints, coordinates of the toy poses
PAD, BOS, EOS = 0, 1, 2
WORDS = range(3, 27)         # 24 word ids
FRAMES_PER_WORD, MAX_WORDS = 4, 6
NUM_SENTENCES = 16
DEMO_CAUSAL = os.path.join(tiny_demo.REPO, 'configs', 'demo_causal.py')


def _demo_causal_config():
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location('demo_causal', DEMO_CAUSAL)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _tiny_config():
  """configs/demo_causal.py with the model shrunk: the same family, prompt layout, dropout and attention."""
  config = _demo_causal_config()
  config.model.arch.update(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8, bos_token_id=BOS,
                           eos_token_id=EOS, pad_token_id=PAD)
  config.model.pose.update(hidden=32, conv_layers=1, conv_stride=2)
  config.model.pose_encoder.update(num_layers=1, num_heads=4)
  return config


def _corpus(seed=0):
  """16 sentences of 3-6 words over 24 words (so words repeat across sentences), each signed as the
  concatenation of its words' fixed random signs plus noise; poses padded to the longest sentence.

  -> dict(poses f32[N, T, K, C], pose_mask bool[N, T], labels i32[N, L], label_mask bool[N, L]), texts.
  """
  rng = np.random.default_rng(seed)
  signs = {w: rng.normal(size=(FRAMES_PER_WORD, K, C)).astype(np.float32) for w in WORDS}
  sentences = [list(rng.choice(list(WORDS), size=rng.integers(3, MAX_WORDS + 1), replace=False))
               for _ in range(NUM_SENTENCES)]
  t, l = MAX_WORDS * FRAMES_PER_WORD, MAX_WORDS + 1
  poses = np.zeros((NUM_SENTENCES, t, K, C), np.float32)
  pose_mask = np.zeros((NUM_SENTENCES, t), bool)
  labels = np.full((NUM_SENTENCES, l), PAD, np.int32)
  for i, words in enumerate(sentences):
    frames = np.concatenate([signs[w] for w in words])
    poses[i, :len(frames)] = frames + 0.05 * rng.normal(size=frames.shape)
    pose_mask[i, :len(frames)] = True
    labels[i, :len(words) + 1] = words + [EOS]
  batch = dict(poses=poses, pose_mask=pose_mask, labels=labels, label_mask=labels != PAD)
  return {k: jax.numpy.asarray(v) for k, v in batch.items()}, [_text(s) for s in sentences]


def _text(ids):
  return ' '.join(f'w{int(i)}' for i in ids)


def _lora_config(checkpoint):
  """The tiny config on a pretrained checkpoint with LoRA (causal prompt, as the LLM was pretrained)."""
  config = _tiny_config()
  config.model.update(name=checkpoint, use_lora=True, llm_dropout=0.0, bidirectional_prompt=False)
  config.model.lora_config.update(r=8, lora_alpha=16)
  return config


def _train(model, batch, steps, trainable, lr=3e-3):
  """Adam on the whole batch with the trainer's masked cross-entropy, dropout on (one compile)."""
  graphdef, params, rest = nnx.split(model, trainable, ...)
  tx = optax.adam(lr)
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, opt_state, key):
    def loss_fn(params):
      logits = nnx.merge(graphdef, params, rest)(batch, rngs=nnx.Rngs(dropout=key))
      loss_sum, n = step_lib.cross_entropy(logits, batch['labels'], batch['label_mask'])
      return loss_sum / n
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  loss = None
  for i in range(steps):
    params, opt_state, loss = train_step(params, opt_state, jax.random.key(i))
  return nnx.merge(graphdef, params, rest), float(loss)


def _bleu(model, poses, pose_mask, texts):
  out = np.asarray(nnx.jit(decode.greedy, static_argnums=3)(model, poses, pose_mask, MAX_WORDS + 1))
  hyps = [_text(tokenizer_lib.until_eos(row, EOS)) for row in out]
  return sacrebleu.corpus_bleu(hyps, [texts]).score


@pytest.fixture(scope='module', params=['prefix_lm', 'lora'])
def memorised(request, tmp_path_factory):
  if request.param == 'prefix_lm':  # the scratch model with the prefix LM and dropout on
    config = _tiny_config()
    config.model.update(bidirectional_prompt=True, llm_dropout=0.1)
  else:
    config = _lora_config(tiny_decoders.make_checkpoint('llama3', str(tmp_path_factory.mktemp('llm'))))
  model = slt.build_model(config, 32, K * C, nnx.Rngs(0))
  batch, texts = _corpus()
  model, loss = _train(model, batch, steps=300, trainable=slt.trainable_filter(config))
  return model, loss, batch, texts


def test_demo_causal_config_validates():
  config = _demo_causal_config()
  default_config.validate(config)
  assert config.model.family == 'llama' and not config.model.name


def test_shuffled_poses_lose_the_memorised_sentences(memorised):
  """BLEU of the memorised sentences from their own poses ~100; from another row's poses far lower."""
  # (The LoRA model's loss stays high: its frozen tied head over 256 ids gives flat distributions; the argmax
  # is what decoding sees.)
  model, _, batch, texts = memorised
  own = _bleu(model, batch['poses'], batch['pose_mask'], texts)
  perm = np.roll(np.arange(NUM_SENTENCES), 1)  # every row gets another row's poses
  shuffled = _bleu(model, batch['poses'][perm], batch['pose_mask'][perm], texts)
  assert own > 90, own
  assert shuffled < 0.3 * own, (own, shuffled)
