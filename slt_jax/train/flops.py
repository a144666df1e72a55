"""Model FLOPs and utilisation (MFU).

FLOPs of a train step = 3 x the forward pass (backward ~ 2 x forward), MaxText's convention. The forward count
comes from XLA's cost analysis of the compiled forward pass, so every matmul (attention scores and mixing
included) of whichever family is counted exactly as it runs; elementwise work is a small extra. Rematerialised
recomputation is not counted (MFU, not hardware utilisation).
"""
import jax
from flax import nnx

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


def forward_flops(graphdef, params, rest, batch) -> float:
  """FLOPs of one forward pass of the model on `batch` (XLA's cost analysis of the lowered program: nothing is
  compiled or executed, so this costs one trace)."""
  def forward(params, rest, batch):
    return nnx.merge(graphdef, params, rest)(batch, rngs=None)
  model_batch = {k: batch[k] for k in ('poses', 'pose_mask', 'labels', 'label_mask')}
  cost = jax.jit(forward).lower(params, rest, model_batch).cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get('flops', 0.0))


def train_step_flops(graphdef, params, rest, batch) -> float:
  """3 x forward: the FLOPs a train step on `batch` must do (forward + backward)."""
  return 3.0 * forward_flops(graphdef, params, rest, batch)
