"""Model FLOPs and utilisation (MFU).

FLOPs of a train step = 3 x the forward pass (backward ~ 2 x forward), MaxText's convention. The forward count
comes from XLA's cost analysis of the compiled forward pass, so every matmul (attention scores and mixing
included) of whichever family is counted exactly as it runs; elementwise work is a small extra. Rematerialised
recomputation is not counted (MFU, not hardware utilisation).

The count is of the work the step executes: a padding-free step (model.padding_free) is counted on its token
rows (model.token_logits with the step's TokenCounts), not on the padded batch it skips part of, and a step of
`grad_accum` micro-batches as that many forward passes of one.
"""
import jax
from flax import nnx

from slt_jax.models import contract

# Dense bf16 peak TFLOP/s per device (no sparsity), by a substring of `device.device_kind`.
PEAK_TFLOPS = {
    'H200': 989.0,
    'H100': 989.0,   # SXM; the PCIe card peaks at 756.
    'A100': 312.0,
    'A10G': 125.0,
    'L4': 121.0,
    'V100': 125.0,
    'TPU v4': 275.0,
    'TPU v5 lite': 197.0,
    'TPU v5': 459.0,
}


def device_peak_flops(device, override_tflops: float = 0.0) -> float | None:
  """Peak FLOP/s of one device: `override_tflops` if set, else the table above, else None (unknown)."""
  if override_tflops:
    return override_tflops * 1e12
  kind = getattr(device, 'device_kind', '')
  for name, tflops in PEAK_TFLOPS.items():
    if name.lower() in kind.lower():
      return tflops * 1e12
  return None


def forward_flops(graphdef, params, rest, batch, counts=None) -> float:
  """FLOPs of one forward pass of the model on `batch` (XLA's cost analysis of the lowered program: nothing is
  compiled or executed, so this costs one trace).

  counts: padding-free, the step's TokenCounts (slt_jax.train.step.padding_free_counts): the forward of the token
  rows (model.token_logits), as the train step runs it. None: the padded forward.
  """
  def forward(params, rest, batch):
    model = nnx.merge(graphdef, params, rest)
    return model(batch, rngs=None) if counts is None else model.token_logits(batch, counts, rngs=None)
  model_batch = contract.model_batch(batch)
  cost = jax.jit(forward).lower(params, rest, model_batch).cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get('flops', 0.0))


def train_step_flops(graphdef, params, rest, batch, counts=None, grad_accum: int = 1) -> float:
  """3 x forward: the FLOPs a train step on `batch` executes (forward + backward).

  counts, grad_accum: the step's (slt_jax.train.step.train_step): padding-free TokenCounts bound each
  micro-batch, so the count is grad_accum x the forward of one micro-batch of B / grad_accum rows.
  """
  micro = jax.tree.map(lambda x: x[:x.shape[0] // grad_accum], contract.model_batch(batch))
  return 3.0 * grad_accum * forward_flops(graphdef, params, rest, micro, counts)
