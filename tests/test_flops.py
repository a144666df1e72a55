"""Model FLOPs (slt_jax/train/flops.py) count the work a step executes: a padding-free step's token rows, not the
padded batch it skips part of; the trainer's MFU uses that count. The padding-free step shapes come from a fixed
ladder (step.padding_free_rung)."""
import logging

import numpy as np
import pytest
from flax import nnx

import tiny_demo
from slt_jax.models import slt
from slt_jax.train import flops as flops_lib
from slt_jax.train import step as step_lib
from slt_jax.train import trainer

VOCAB, KEYPOINTS, COORDS = 512, 10, 3
D_MODEL, HEADS, D_KV, D_FF, DEC_LAYERS = 32, 2, 16, 64, 2


def _model():
  config = tiny_demo.config()
  config.model.arch.update(dict(d_model=D_MODEL, num_heads=HEADS, d_kv=D_KV, d_ff=D_FF, num_layers=1,
                                num_decoder_layers=DEC_LAYERS, feed_forward_proj='gated-gelu',
                                tie_word_embeddings=False))
  model = slt.build_model(config, VOCAB, KEYPOINTS * COORDS, rngs=nnx.Rngs(params=0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return graphdef, params, rest


def _batch(frame_lengths, label_lengths, frames=16, label_len=8):
  rng = np.random.RandomState(0)
  b = len(frame_lengths)
  return {'poses': rng.randn(b, frames, KEYPOINTS, COORDS).astype(np.float32),
          'pose_mask': np.arange(frames)[None] < np.asarray(frame_lengths)[:, None],
          'labels': rng.randint(2, VOCAB, (b, label_len)).astype(np.int32),
          'label_mask': np.arange(label_len)[None] < np.asarray(label_lengths)[:, None],
          'example_mask': np.ones((b,), bool)}


def _decoder_row_flops():
  """Forward matmul FLOPs of one decoder token through the position-wise layers (2 x each kernel's size):
  per layer self-attention q, k, v, o, cross-attention q, o (its k, v run on encoder rows), the gated MLP's
  wi_0, wi_1, wo; then the LM head."""
  inner = HEADS * D_KV
  per_layer = 4 * D_MODEL * inner + 2 * D_MODEL * inner + 3 * D_MODEL * D_FF
  return 2 * (DEC_LAYERS * per_layer + D_MODEL * VOCAB)


def test_padding_free_flops_are_the_real_tokens_work():
  """Frames unpadded, labels 19 of 32 real: the padding-free count is below the padded one by the decoder's
  position-wise work on the 13 padding tokens (within the elementwise ops' share)."""
  graphdef, params, rest = _model()
  batch = _batch([16, 16, 16, 16], [8, 6, 3, 2])
  counts = step_lib.padding_free_counts(batch, 1)
  assert counts.labels == 19
  padded = flops_lib.forward_flops(graphdef, params, rest, batch)
  executed = flops_lib.forward_flops(graphdef, params, rest, batch, counts)
  assert executed < padded
  skipped_rows = batch['label_mask'].size - 19
  assert padded - executed == pytest.approx(skipped_rows * _decoder_row_flops(), rel=0.05)
  # The train step's count is 3 x that forward, padding-free as executed.
  assert flops_lib.train_step_flops(graphdef, params, rest, batch, counts) == pytest.approx(3 * executed)


def test_padding_free_flops_with_padded_frames_and_micro_batches():
  graphdef, params, rest = _model()
  batch = _batch([16, 9, 5, 12], [8, 6, 3, 2])
  padded = flops_lib.train_step_flops(graphdef, params, rest, batch)
  counts = step_lib.padding_free_counts(batch, 1)
  assert flops_lib.train_step_flops(graphdef, params, rest, batch, counts) < padded
  # Two micro-batches of 2 rows do the padded batch's work (attention and rows both scale with B) ...
  assert flops_lib.train_step_flops(graphdef, params, rest, batch, grad_accum=2) == pytest.approx(padded, rel=1e-3)
  # ... and padding-free, each micro-batch computes the rows of the larger one's counts.
  counts2 = step_lib.padding_free_counts(batch, 1, grad_accum=2)
  half = {k: v[:2] for k, v in batch.items()}
  assert flops_lib.train_step_flops(graphdef, params, rest, batch, counts2, grad_accum=2) == pytest.approx(
      2 * flops_lib.train_step_flops(graphdef, params, rest, half, counts2))


def test_padding_free_rungs_are_a_fixed_ladder():
  rung = step_lib.padding_free_rung
  # Multiples of 64 up to 16 of them, then 16 rungs per octave (steps of 128 in [1024, 2048), ...), capped at
  # the padded size: 48 rungs for every count of a 32 x 128 batch, where multiples of 64 gave 64.
  assert [rung(n, 64, 4096) for n in (1, 64, 65, 1024, 1025, 2048, 2049, 4000, 4096)] == [
      64, 64, 128, 1024, 1088, 2048, 2176, 4096, 4096]
  ladder = {rung(n, 64, 4096) for n in range(1, 4097)}
  assert len(ladder) == 48 and max(ladder) == 4096
  assert all(n <= rung(n, 64, 4096) < n * 17 / 16 + 64 for n in range(1, 4097))
  # A million-token batch: ~170 rungs, not 15,625 multiples.
  assert len({rung(n, 64, 10 ** 6) for n in range(1, 10 ** 6, 7)}) < 180


def test_trainer_counts_the_executed_flops_and_logs_the_compiled_steps(tmp_path, monkeypatch, caplog):
  """The trainer's MFU takes each step's FLOPs with its padding-free counts, once per compiled step."""
  calls = []
  flops_fn = flops_lib.train_step_flops

  def spy(graphdef, params, rest, batch, counts=None, grad_accum=1):
    calls.append((counts, step_lib.padding_free_counts(batch, 128), batch['poses'].shape))
    return flops_fn(graphdef, params, rest, batch, counts, grad_accum)
  monkeypatch.setattr(flops_lib, 'train_step_flops', spy)
  caplog.set_level(logging.INFO)
  config = tiny_demo.config(num_train_steps=3, peak_tflops=1.0)
  config.model.padding_free = 128
  trainer.train_and_evaluate(config, str(tmp_path))
  assert calls and all(counts is not None and counts == expected for counts, expected, _ in calls), calls
  assert len(set(calls)) == len(calls)  # once per (shape, counts)
  assert f'{len(calls)} distinct train steps compiled so far (batch shape x padding-free counts).' in caplog.messages
  assert tiny_demo.scalars(str(tmp_path), 'train/mfu')
