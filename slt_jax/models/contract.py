"""The SLT model interface and the batch it reads, as code (a leaf: jax / numpy / typing only).

A batch is a plain dict (what tf.data yields, what jit takes and shards); `Batch` names its fields:

  poses        f32[B, T, K, C]  normalised keypoints, masked points 0 (C = len(coords) + visibility channel)
  pose_mask    bool[B, T]       real frames
  labels       i32[B, L]        token ids ending with EOS, padded with the tokenizer's pad id
  label_mask   bool[B, L]       real tokens (incl. EOS)
  example_mask bool[B]          False on filler rows (the eval batches' last one)          (host-side extra)
  index        i32[B]           row of the split (SplitData.rows), -1 on filler rows        (host-side extra)
  corpus       i32[B]           the row's corpus: its number in corpus_names(config), 0 on filler rows and
                                without data.mixture (optional: the model reads it for per-corpus prompts)

The model reads MODEL_KEYS (`model_batch(batch)`); the trainer puts DEVICE_KEYS on the mesh (the extras feed
the eval masks and the predictions files).

  batch = contract.abstract(batch_size=8, frames=128, keypoints=77, channels=3, label_len=32)  # ShapeDtypeStructs
  logits = model(contract.model_batch(batch))                                              # f32[B, L, V]

`SLTModel` is what slt.build_model returns (slt.Seq2SeqSLT, causal_slt.CausalSLT); `DecodingModel` is the
part decode.generate needs, which the text-only adapters (decode.TextSeq2Seq / TextCausal) also have.
"""
from typing import Any, Optional, Protocol, TypedDict, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np


class Batch(TypedDict, total=False):
  """One batch (numpy on the host, jax.Array on the mesh); shapes in the module docstring."""
  poses: Any         # f32[B, T, K, C]
  pose_mask: Any     # bool[B, T]
  labels: Any        # i32[B, L]
  label_mask: Any    # bool[B, L]
  example_mask: Any  # bool[B]
  index: Any         # i32[B]
  corpus: Any        # i32[B]


REQUIRED_MODEL_KEYS = ('poses', 'pose_mask', 'labels', 'label_mask')
# What the model's __call__ / token_logits read; 'corpus' only where the batch has it (hand-made batches may
# lack it: a model with one prompt does not need it).
MODEL_KEYS = REQUIRED_MODEL_KEYS + ('corpus',)
HOST_KEYS = ('example_mask', 'index')                        # the extras the input pipeline adds
DEVICE_KEYS = MODEL_KEYS + HOST_KEYS                          # what goes onto the devices


def corpus_names(config) -> list:
  """The corpora of a run, in the order of their numbers (batch['corpus']): sorted data.mixture names, or ['']
  (one corpus) without a mixture."""
  mixture = config.data.get('mixture', None)
  return sorted(mixture.keys()) if mixture else ['']


def per_corpus(config, field: str) -> list:
  """model.<field> (prompt / tgt_lang) of each corpus, in corpus_names order: data.mixture.NAME.<field>, or the
  run's model.<field> where that is '' (and without a mixture)."""
  default = config.model.get(field, '')
  mixture = config.data.get('mixture', None)
  return [(mixture[name].get(field, '') if name else '') or default for name in corpus_names(config)]


def _specs(batch_size: int, frames: int, keypoints: int, channels: int, label_len: int) -> dict:
  """field -> (shape, dtype) of a batch of those sizes."""
  b = batch_size
  return {'poses': ((b, frames, keypoints, channels), jnp.float32), 'pose_mask': ((b, frames), jnp.bool_),
          'labels': ((b, label_len), jnp.int32), 'label_mask': ((b, label_len), jnp.bool_),
          'example_mask': ((b,), jnp.bool_), 'index': ((b,), jnp.int32), 'corpus': ((b,), jnp.int32)}


def abstract(batch_size: int, frames: int, keypoints: int, channels: int, label_len: int, *,
             keys=DEVICE_KEYS, sharding=None) -> dict:
  """{field: jax.ShapeDtypeStruct} of a batch [B = batch_size, T = frames, K, C, L = label_len] (for lowering
  a step without data: eval_shape, memory and FLOP analysis). keys: which fields; sharding: each field's."""
  specs = _specs(batch_size, frames, keypoints, channels, label_len)
  return {k: jax.ShapeDtypeStruct(specs[k][0], specs[k][1], sharding=sharding) for k in keys}


def zeros(batch_size: int, frames: int, keypoints: int, channels: int, label_len: int, *,
          keys=DEVICE_KEYS) -> dict:
  """A numpy batch of those sizes, all zeros / False (as the pipeline's dtypes): for init and smoke runs."""
  specs = _specs(batch_size, frames, keypoints, channels, label_len)
  return {k: np.zeros(specs[k][0], specs[k][1]) for k in keys}


def model_batch(batch) -> dict:
  """The fields the model reads (MODEL_KEYS; 'corpus' where the batch has it) of a batch that may hold more
  (the host-side extras)."""
  return {k: batch[k] for k in MODEL_KEYS if k in REQUIRED_MODEL_KEYS or k in batch}


@runtime_checkable
class DecodingModel(Protocol):
  """What decode.generate drives: a model with incremental decoding.

  start_decode(poses f32[B, T, K, C] (or input_ids i32[B, S]), pose_mask bool[B, T], max_new_tokens,
               corpus i32[B] (SLT models: the rows' corpora, for per-corpus prompts; the Text* adapters take none))
    -> (logits f32[B, V] of the first generated token, state: a pytree whose leaves are batch-first);
  decode_step(state, tokens i32[B] just chosen) -> (logits f32[B, V] of the next token, new state).
  eos_id / pad_id: decoding stops on eos_id and pads after it; vocab_size: V.
  forced_eos: HF's forced_eos_token_id ((m)BART): the last token max_new_tokens allows is EOS.
  An encoder-decoder also has decoder_prefix (its decoder's tokens before the first generated one; those after
  the start token are forced, see decode.py).
  """
  eos_id: int
  pad_id: int
  vocab_size: int
  forced_eos: bool

  def start_decode(self, poses: jax.Array, pose_mask: jax.Array, max_new_tokens: int,
                   corpus: Optional[jax.Array] = None) -> tuple[jax.Array, Any]:
    ...

  def decode_step(self, state: Any, tokens: jax.Array) -> tuple[jax.Array, Any]:
    ...


@runtime_checkable
class SLTModel(DecodingModel, Protocol):
  """Poses -> text: what slt.build_model returns and the train step, eval and decoding call.

  __call__(batch, rngs) -> logits f32[B, L, V]: teacher forcing on batch's MODEL_KEYS; logits[:, i] predicts
    labels[:, i]. rngs: nnx.Rngs with a 'dropout' stream when training, None for the deterministic model.
  token_logits(batch, counts, rngs) -> (logits f32[N, V], labels i32[N], label_mask bool[N]): padding-free
    teacher forcing (counts: token_rows.TokenCounts, static bounds on the real frames and label tokens); the
    rows past the real tokens have mask False. Only families with padding-free training implement it
    (slt.build_model refuses model.padding_free for the others).
  Plus DecodingModel's start_decode / decode_step / eos_id / pad_id / vocab_size / forced_eos.
  """

  def __call__(self, batch: Batch, rngs: Optional[Any] = None) -> jax.Array:
    ...

  def token_logits(self, batch: Batch, counts: Any, rngs: Optional[Any] = None) -> tuple[jax.Array, jax.Array,
                                                                                           jax.Array]:
    ...
