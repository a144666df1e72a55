#!/usr/bin/env bash
# Train on N GPUs of one host: scripts/train_multi_gpu.sh CONFIG N [WORKDIR] [extra flags...]
set -euo pipefail
if [[ $# -lt 2 || "$1" == "-h" || "$1" == "--help" ]]; then
  cat <<'HELP'
Usage: scripts/train_multi_gpu.sh CONFIG N [WORKDIR] [--config.x.y=value ...]

Trains CONFIG on the first N GPUs of this host. One process drives all N devices (JAX's single-controller
model): parameters, optimizer state and batches are sharded over a (data, fsdp, tensor) mesh set by
config.mesh (defaults: data=-1, i.e. plain data parallel; set --config.mesh.fsdp=N for FSDP).
training.batch_size is the global batch and must be divisible by the data-parallel size.
HELP
  exit 0
fi
config=$1; n=$2; shift 2
workdir=${1:-runs/$(basename "$config" .py)}; [[ $# -gt 0 ]] && shift
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-$(seq -s, 0 $((n - 1)))}
exec python -m slt_jax.main --config="$config" --workdir="$workdir" "$@"
