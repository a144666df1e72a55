#!/usr/bin/env bash
# Train on one GPU (or the CPU): scripts/train_single_gpu.sh CONFIG [WORKDIR] [extra flags...]
set -euo pipefail
if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
  cat <<'HELP'
Usage: scripts/train_single_gpu.sh CONFIG [WORKDIR] [--config.x.y=value ...]

Trains CONFIG (e.g. configs/qwen7b.py) on this host's first GPU, then evaluates the best checkpoint.
WORKDIR defaults to runs/<config name>. A rerun with the same WORKDIR resumes.
HELP
  exit 0
fi
config=$1; shift
workdir=${1:-runs/$(basename "$config" .py)}; [[ $# -gt 0 ]] && shift
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
exec python -m slt_jax.main --config="$config" --workdir="$workdir" "$@"
