"""Train-step throughput: ours (JAX/Flax, jitted) vs the seed's way (transformers + PyTorch), same model and batch.

  python scripts/bench_vs_torch.py [--runs=3] [--steps=10] [--json]

The model is the same tiny T5-shaped SLT model on both sides: a pose front end (linear -> GELU -> one residual
strided temporal conv block -> linear) feeding T5 v1.1 (gated GELU) through `inputs_embeds`, AdamW, gradient
clipping, float32. Both sides use all CPU cores, and they take turns run by run. Ours runs with
model.scan_layers=False (as configs/demo.py), padding-free compute (--padding_free, model.padding_free: the
position-wise layers on the real tokens only, where PyTorch computes the padded batch) and the other defaults.
The process tunes glibc malloc first as slt_jax.main does (--host_malloc, slt_jax/host_malloc.py), which both
sides then run with. Reports the median examples/s over --runs
runs of --steps timed steps each (after warm-up / compilation). With --json the last line is a JSON object:
{"ours_examples_per_s", "torch_examples_per_s", "ratio", the runs, the shapes and the figures below}.

How close to the hardware: the step's model FLOPs on the padded batch (3 x the forward's, from XLA's cost
analysis, as the trainer's MFU counts them; the work PyTorch does) times each side's steps/s, against the rate each side's matmul library reaches on
this CPU for the model's largest product ([B*T', d_model] x [d_model, d_ff], the MLP's up-projection). A CPU
has no datasheet peak that its GEMMs reach, so the measured GEMM rate is the ceiling both sides share.
"""
import json
import statistics
import time

from absl import app, flags
import numpy as np

from slt_jax import host_malloc

_RUNS = flags.DEFINE_integer('runs', 3, 'Timed runs per side (the median is reported).')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps per run.')
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Batch size.')
_FRAMES = flags.DEFINE_integer('frames', 96, 'Pose frames.')
_TARGET = flags.DEFINE_integer('target_len', 24, 'Target tokens.')
_PADDING_FREE = flags.DEFINE_integer('padding_free', 64, "Ours: model.padding_free (0 = the padded computation).")
_HOST_MALLOC = flags.DEFINE_enum('host_malloc', 'auto', ['auto', 'on', 'off'],
                                 'glibc malloc tuning of slt_jax/host_malloc.py, for both sides (one process).')
_JSON = flags.DEFINE_bool('json', False, 'Print a JSON object as the last line.')

ARCH = dict(d_model=256, d_kv=32, d_ff=1024, num_layers=3, num_decoder_layers=3, num_heads=8,
            feed_forward_proj='gated-gelu', dropout_rate=0.1, relative_attention_num_buckets=32,
            relative_attention_max_distance=128, tie_word_embeddings=False)
VOCAB, KEYPOINTS, COORDS, HIDDEN = 2000, 50, 3, 256


def _batch():
  """A random contract.Batch: 0-25% padding frames, 0-50% padding tokens, no filler rows."""
  from slt_jax.models import contract  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(0)
  b, t, l = _BATCH.value, _FRAMES.value, _TARGET.value
  batch = contract.zeros(b, t, KEYPOINTS, COORDS, l)
  batch['poses'][:] = rng.randn(b, t, KEYPOINTS, COORDS)
  batch['pose_mask'][:] = np.arange(t)[None] < rng.randint(t * 3 // 4, t + 1, b)[:, None]
  batch['labels'][:] = rng.randint(4, VOCAB, (b, l))
  batch['label_mask'][:] = np.arange(l)[None] < rng.randint(l // 2, l + 1, b)[:, None]
  batch['example_mask'][:] = True
  batch['index'][:] = np.arange(b)
  return batch


def _time_interleaved(steps_by_side, runs, steps):
  """examples/s of each side's step: --runs runs of --steps steps, the sides taking turns run by run.

  Taking turns keeps a drift in the machine's speed (a shared, virtualised CPU changes pace over minutes) from
  landing on one side only. Returns {side: [rate of each run]}.
  """
  for step in steps_by_side.values():
    step()  # warm-up / compilation
  rates = {side: [] for side in steps_by_side}
  for _ in range(runs):
    for side, step in steps_by_side.items():
      rates[side].append(_BATCH.value * steps / _seconds(step, steps))
  return rates


def bench_ours(batch):
  import jax  # pylint: disable=g-import-not-at-top
  from slt_jax import default_config  # pylint: disable=g-import-not-at-top
  from slt_jax.train import flops as flops_lib  # pylint: disable=g-import-not-at-top
  from slt_jax.train import optim, sharding, state as state_lib, step as step_lib  # pylint: disable=g-import-not-at-top

  config = default_config.get_config()
  config.model.arch.update(ARCH)
  config.model.pose.update(dict(hidden=HIDDEN, conv_layers=1, conv_stride=2, dropout=0.1))
  config.training.label_smoothing = 0.0
  # Unrolled layers: a 3-layer stack gains nothing from the scan's shorter compile, and on a CPU the scan's
  # stacked activations and per-layer slices cost ~15-25% of the step (what configs/demo.py uses too).
  config.model.scan_layers = False
  config.model.padding_free = _PADDING_FREE.value
  mesh = sharding.make_mesh(config.mesh)
  tx = optim.make_optimizer(config, 1000)
  graphdef, state, rest, shardings = state_lib.from_config(config, tx, mesh, VOCAB, KEYPOINTS * COORDS)
  # The trainer's jitted step (step.TrainStep: dropout PRNG rbg on CPU, padding-free counts, shardings).
  train = step_lib.TrainStep(config, graphdef, tx, shardings, rest, mesh)
  device_batch = sharding.global_batch(batch, sharding.batch_sharding(mesh, sharding.logical_rules(config)))
  step_flops = flops_lib.train_step_flops(graphdef, state.params, rest, device_batch)
  holder = {'state': state}

  def step():
    holder['state'], metrics = train(holder['state'], batch, device_batch)
    jax.block_until_ready(metrics['loss'])
  return step, step_flops


def bench_torch(batch):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  model = transformers.T5ForConditionalGeneration(transformers.T5Config(
      vocab_size=VOCAB, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, **ARCH))

  class Frontend(torch.nn.Module):
    """Our PoseFrontEnd with one conv block: linear -> GELU -> RMSNorm(skip + GELU(strided conv)) -> linear."""

    def __init__(self):
      super().__init__()
      self.proj = torch.nn.Linear(KEYPOINTS * COORDS, HIDDEN)
      self.conv = torch.nn.Conv1d(HIDDEN, HIDDEN, 5, stride=2, padding=2)
      self.norm = torch.nn.RMSNorm(HIDDEN, eps=1e-6)
      self.out = torch.nn.Linear(HIDDEN, ARCH['d_model'])
      self.dropout = torch.nn.Dropout(0.1)

    def forward(self, poses, mask):
      b, t = poses.shape[:2]
      x = torch.nn.functional.gelu(self.proj(poses.reshape(b, t, -1))) * mask[..., None]
      x = self.norm(x[:, ::2] + torch.nn.functional.gelu(self.conv(x.transpose(1, 2)).transpose(1, 2)))
      return self.dropout(self.out(x)), mask[:, ::2]

  frontend = Frontend()
  params = list(model.parameters()) + list(frontend.parameters())
  opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
  poses = torch.from_numpy(batch['poses'])
  mask = torch.from_numpy(batch['pose_mask']).float()
  labels = torch.from_numpy(batch['labels']).long()
  labels = labels.masked_fill(~torch.from_numpy(batch['label_mask']), -100)
  model.train()

  def step():
    embeds, enc_mask = frontend(poses, mask)
    loss = model(inputs_embeds=embeds, attention_mask=enc_mask, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
  return step


def gemm_gflops():
  """GFLOP/s of the model's largest matmul, f32, on each side's library (best of 3 x 50 calls)."""
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  m, k, n = _BATCH.value * _FRAMES.value // 2, ARCH['d_model'], ARCH['d_ff']
  rng = np.random.RandomState(0)
  x, w = rng.randn(m, k).astype(np.float32), rng.randn(k, n).astype(np.float32)
  jax_mm = jax.jit(lambda a, b: a @ b)
  jax_x, jax_w, torch_x, torch_w = jax.device_put(x), jax.device_put(w), torch.from_numpy(x), torch.from_numpy(w)
  runs = {'jax': lambda: jax_mm(jax_x, jax_w).block_until_ready(), 'torch': lambda: torch.mm(torch_x, torch_w)}
  rates = {}
  for name, fn in runs.items():
    fn()
    best = min(_seconds(fn, 50) for _ in range(3))
    rates[name] = 2 * m * k * n * 50 / best / 1e9
  return rates


def _seconds(fn, calls):
  t0 = time.perf_counter()
  for _ in range(calls):
    fn()
  return time.perf_counter() - t0


def main(argv):
  del argv
  # As slt_jax.main does (training.host_malloc=auto) before JAX starts. One process: PyTorch runs with it too.
  host_malloc.configure(_HOST_MALLOC.value)
  batch = _batch()
  ours_step, step_flops = bench_ours(batch)
  runs = _time_interleaved({'ours': ours_step, 'torch': bench_torch(batch)}, _RUNS.value, _STEPS.value)
  ours_runs, torch_runs = runs['ours'], runs['torch']
  ours, torch_rate = statistics.median(ours_runs), statistics.median(torch_runs)
  gemm = gemm_gflops()
  per_example = step_flops / _BATCH.value / 1e9  # model GFLOP per example (same model on both sides)
  result = {'ours_examples_per_s': ours, 'torch_examples_per_s': torch_rate, 'ratio': ours / torch_rate,
            'ours_runs': ours_runs, 'torch_runs': torch_runs, 'batch_size': _BATCH.value,
            'frames': _FRAMES.value, 'target_len': _TARGET.value, 'step_gflop': step_flops / 1e9,
            'ours_gflops': ours * per_example, 'torch_gflops': torch_rate * per_example,
            'gemm_gflops_jax': gemm['jax'], 'gemm_gflops_torch': gemm['torch']}
  print(f"ours  {ours:8.2f} examples/s  (runs: {', '.join(f'{r:.2f}' for r in ours_runs)})")
  print(f"torch {torch_rate:8.2f} examples/s  (runs: {', '.join(f'{r:.2f}' for r in torch_runs)})")
  print(f'ratio {result["ratio"]:.2f}x')
  print(f'model {step_flops / 1e9:.1f} GFLOP per step: ours {result["ours_gflops"]:.1f} GFLOP/s '
        f'({result["ours_gflops"] / gemm["jax"]:.0%} of XLA\'s {gemm["jax"]:.0f} GFLOP/s on the largest matmul), '
        f'torch {result["torch_gflops"]:.1f} ({result["torch_gflops"] / gemm["torch"]:.0%} of its '
        f'{gemm["torch"]:.0f} GFLOP/s)')
  if _JSON.value:
    print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
