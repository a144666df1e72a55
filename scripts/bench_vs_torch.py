"""Train-step throughput: ours (JAX/Flax, jitted) vs the seed's way (transformers + PyTorch), same model and batch.

  python scripts/bench_vs_torch.py [--runs=3] [--steps=10] [--torch_sides=loop,fused,compile]
                                   [--mixed_precision=no,bf16] [--json]

The model is the same tiny T5-shaped SLT model on every side: a pose front end (linear -> GELU -> one residual
strided temporal conv block -> linear) feeding T5 v1.1 (gated GELU) through `inputs_embeds`, AdamW, gradient
clipping. Every side uses all CPU cores, and they take turns run by run. Ours runs with model.scan_layers=False
(as configs/demo.py), padding-free compute (--padding_free, model.padding_free: the position-wise layers on the
real tokens only, where PyTorch computes the padded batch) and the other defaults. PyTorch, at its best
(--torch_sides, each its own copy of the model from the same seed):
  torch_loop     torch.optim.AdamW(foreach=False), the single-tensor loop (the seed's way);
  torch_fused    AdamW(fused=True), HF Trainer's default optimizer (`adamw_torch_fused`) since torch 2.8;
  torch_compile  torch.compile of the forward + loss (inductor: its backward too), then fused AdamW. Needs a C++
                 compiler for inductor's CPU kernels; without one the side is skipped with the reason.
--mixed_precision: float32 ('no') and/or bf16 on every side: ours with training.mixed_precision=bf16 (bf16
compute, float32 master weights), PyTorch under torch.autocast('cpu', dtype=torch.bfloat16). A side's name
carries '_bf16' for bf16.
The process tunes glibc malloc first as slt_jax.main does (--host_malloc, slt_jax/host_malloc.py), which every
side then runs with. Reports the median examples/s over --runs runs of --steps timed steps each (after warm-up /
compilation). With --json the last line is a JSON object: {"ours_examples_per_s", "torch_examples_per_s" (the
strongest PyTorch side at the first precision, named by "torch_side"), "ratio" (ours over it), "ratio_bf16"
(with bf16 in the list), "<side>_examples_per_s", "<side>_runs", "<side>_gflops" for every side, the shapes
and the figures below}.

How close to the hardware: each side's executed model FLOPs per step (3 x the forward's, from XLA's cost
analysis, as the trainer's MFU counts them) times its steps/s, against the rate each side's matmul library
reaches on this CPU for the model's largest product ([B*T', d_model] x [d_model, d_ff], the MLP's
up-projection). PyTorch executes the padded batch ("step_gflop"); ours padding-free executes its token rows
only ("ours_step_gflop", less). A CPU has no datasheet peak that its GEMMs reach, so the measured GEMM rate is
the ceiling the sides share.
"""
import json
import os
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
_TORCH_SIDES = flags.DEFINE_list('torch_sides', ['loop', 'fused', 'compile'],
                                 'PyTorch sides: loop (single-tensor AdamW), fused (AdamW fused=True), compile '
                                 '(torch.compile + fused AdamW).')
_PRECISIONS = flags.DEFINE_list('mixed_precision', ['no'], "Precisions, each on every side: no (float32), bf16.")
TORCH_SIDES = ('loop', 'fused', 'compile')
PRECISIONS = ('no', 'bf16')

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


def _side(name: str, precision: str) -> str:
  return name if precision == 'no' else f'{name}_bf16'


def bench_ours(batch, precision: str = 'no'):
  """-> (step(), FLOPs the step executes, FLOPs of the padded step)."""
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
  config.training.mixed_precision = precision
  mesh = sharding.make_mesh(config.mesh)
  tx = optim.make_optimizer(config, 1000)
  graphdef, state, rest, shardings = state_lib.from_config(config, tx, mesh, VOCAB, KEYPOINTS * COORDS)
  # The trainer's jitted step (step.TrainStep: dropout PRNG rbg on CPU, padding-free counts, shardings).
  train = step_lib.TrainStep(config, graphdef, tx, shardings, rest, mesh)
  device_batch = sharding.global_batch(batch, sharding.batch_sharding(mesh, sharding.logical_rules(config)))
  padded_flops = flops_lib.train_step_flops(graphdef, state.params, rest, device_batch)
  executed_flops = flops_lib.train_step_flops(graphdef, state.params, rest, device_batch, train.counts(batch))
  holder = {'state': state}

  def step():
    holder['state'], metrics = train(holder['state'], batch, device_batch)
    jax.block_until_ready(metrics['loss'])
  return step, executed_flops, padded_flops


def torch_skip_reason(side: str):
  """Why a PyTorch side cannot run here (None: it can): fused AdamW needs a torch with a CPU kernel for it,
  torch.compile's inductor a C++ compiler for its CPU kernels."""
  import shutil  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  if side in ('fused', 'compile'):
    try:
      p = torch.nn.Parameter(torch.zeros(2))
      p.grad = torch.ones(2)
      torch.optim.AdamW([p], fused=True).step()
    except (RuntimeError, TypeError) as e:
      return f'torch {torch.__version__} has no fused AdamW on CPU ({e})'
  if side == 'compile':
    compiler = os.environ.get('CXX') or shutil.which('g++') or shutil.which('clang++')
    if not compiler:
      return 'torch.compile (inductor) needs a C++ compiler for its CPU kernels: none on PATH (g++ / clang++ / $CXX)'
  return None


def bench_torch(batch, side: str = 'loop', precision: str = 'no'):
  """The same model in transformers + PyTorch; side: loop | fused | compile (see the module docstring)."""
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
  if side == 'loop':  # the single-tensor loop, spelled out (foreach defaults on only on CUDA)
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, foreach=False)
  else:
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, fused=True)
  poses = torch.from_numpy(batch['poses'])
  mask = torch.from_numpy(batch['pose_mask']).float()
  labels = torch.from_numpy(batch['labels']).long()
  labels = labels.masked_fill(~torch.from_numpy(batch['label_mask']), -100)
  model.train()

  def loss_fn(poses, mask, labels):
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=precision == 'bf16'):
      embeds, enc_mask = frontend(poses, mask)
      return model(inputs_embeds=embeds, attention_mask=enc_mask, labels=labels).loss
  if side == 'compile':
    loss_fn = torch.compile(loss_fn)

  def step():
    loss = loss_fn(poses, mask, labels)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
  return step


def gemm_gflops(precision: str = 'no'):
  """GFLOP/s of the model's largest matmul, float32 (or bf16), on each side's library (best of 3 x 50 calls)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  m, k, n = _BATCH.value * _FRAMES.value // 2, ARCH['d_model'], ARCH['d_ff']
  rng = np.random.RandomState(0)
  x, w = rng.randn(m, k).astype(np.float32), rng.randn(k, n).astype(np.float32)
  jax_dtype, torch_dtype = (jnp.bfloat16, torch.bfloat16) if precision == 'bf16' else (jnp.float32, torch.float32)
  jax_mm = jax.jit(lambda a, b: a @ b)
  jax_x, jax_w = jax.device_put(x.astype(jax_dtype)), jax.device_put(w.astype(jax_dtype))
  torch_x, torch_w = torch.from_numpy(x).to(torch_dtype), torch.from_numpy(w).to(torch_dtype)
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


def _check_flags():
  """Unknown side or precision names are errors before any work."""
  for flag, values, known in ((_TORCH_SIDES, _TORCH_SIDES.value, TORCH_SIDES),
                              (_PRECISIONS, _PRECISIONS.value, PRECISIONS)):
    unknown = [v for v in values if v not in known]
    if unknown or not values:
      raise app.UsageError(f'--{flag.name}={",".join(values)}: takes a non-empty list of {", ".join(known)}')


def main(argv):
  del argv
  _check_flags()
  # As slt_jax.main does (training.host_malloc=auto) before JAX starts. One process: PyTorch runs with it too.
  host_malloc.configure(_HOST_MALLOC.value)
  batch = _batch()
  steps, executed, skipped = {}, {}, {}
  ours_flops = padded_flops = None
  for precision in _PRECISIONS.value:
    name = _side('ours', precision)
    steps[name], *flops = bench_ours(batch, precision)
    # One count per model for every precision (XLA's count of a bf16 program adds its dtype conversions).
    ours_flops, padded_flops = (ours_flops, padded_flops) if ours_flops else flops
    executed[name] = ours_flops
    for side in _TORCH_SIDES.value:
      name = _side(f'torch_{side}', precision)
      reason = torch_skip_reason(side)
      if reason:
        skipped[name] = reason
        print(f'{name}: skipped: {reason}')
        continue
      steps[name], executed[name] = bench_torch(batch, side, precision), padded_flops
  runs = _time_interleaved(steps, _RUNS.value, _STEPS.value)
  rates = {name: statistics.median(r) for name, r in runs.items()}
  result = {'batch_size': _BATCH.value, 'frames': _FRAMES.value, 'target_len': _TARGET.value,
            'padding_free': _PADDING_FREE.value, 'step_gflop': padded_flops / 1e9,
            'ours_step_gflop': ours_flops / 1e9,
            'skipped': skipped}
  for name, rate in rates.items():
    result[f'{name}_examples_per_s'] = rate
    result[f'{name}_runs'] = runs[name]
    result[f'{name}_gflops'] = rate * executed[name] / _BATCH.value / 1e9  # executed GFLOP per example x rate
  for i, precision in enumerate(_PRECISIONS.value):
    torch_names = [n for n in rates if n.startswith('torch_') and n.endswith('_bf16') == (precision == 'bf16')]
    if not torch_names:
      continue
    best = max(torch_names, key=rates.get)
    ratio = rates[_side('ours', precision)] / rates[best]
    result[f'ratio_{precision}'], result[f'torch_side_{precision}'] = ratio, best
    if i == 0:  # the headline figures: ours vs the strongest PyTorch side at the first precision
      result.update(ours_examples_per_s=rates[_side('ours', precision)], torch_examples_per_s=rates[best],
                    torch_side=best, ratio=ratio, ours_runs=runs[_side('ours', precision)], torch_runs=runs[best],
                    torch_gflops=result[f'{best}_gflops'])
  for precision in _PRECISIONS.value:
    gemm = gemm_gflops(precision)
    suffix = '' if precision == 'no' else '_bf16'
    result[f'gemm_gflops_jax{suffix}'], result[f'gemm_gflops_torch{suffix}'] = gemm['jax'], gemm['torch']
  for name, rate in rates.items():
    suffix = '_bf16' if name.endswith('_bf16') else ''
    lib = 'jax' if name.startswith('ours') else 'torch'
    ceiling = result[f'gemm_gflops_{lib}{suffix}']
    gflops = result[f'{name}_gflops']
    print(f"{name:18s} {rate:8.2f} examples/s  {gflops:6.1f} GFLOP/s ({gflops / ceiling:.0%} of its {ceiling:.0f} on "
          f"the largest matmul)  runs: {', '.join(f'{r:.2f}' for r in runs[name])}")
  for precision in _PRECISIONS.value:
    if f'ratio_{precision}' in result:
      print(f"ratio ({precision}) ours / {result[f'torch_side_{precision}']}: {result[f'ratio_{precision}']:.2f}x")
  print(f'model {padded_flops / 1e9:.1f} GFLOP per padded step (PyTorch executes it); ours padding-free executes '
        f"{result['ours_step_gflop']:.1f}")
  if _JSON.value:
    print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
