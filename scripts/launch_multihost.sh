#!/usr/bin/env bash
# Start one slt_jax process of a multi-host run: scripts/launch_multihost.sh COORD NUM_PROCS PROC_ID CONFIG WORKDIR [flags]
set -euo pipefail
if [[ $# -lt 5 || "$1" == "-h" || "$1" == "--help" ]]; then
  cat <<'HELP'
Usage: scripts/launch_multihost.sh COORDINATOR_HOST:PORT NUM_PROCESSES PROCESS_ID CONFIG WORKDIR [flags...]

Run the same command on every host, with PROCESS_ID 0..NUM_PROCESSES-1; process 0's host is the coordinator.
All hosts must see the same WORKDIR (a shared filesystem): orbax writes checkpoints collectively there and
only process 0 writes logs, metrics and TensorBoard summaries. Each host reads only its share of the data.
Under SLURM use scripts/slurm_multihost.sbatch instead (jax.distributed reads SLURM's environment).
Example, two processes on one machine with two CPU devices each:
  scripts/launch_multihost.sh 127.0.0.1:12355 2 0 configs/demo.py runs/mh --num_local_cpu_devices=2 &
  scripts/launch_multihost.sh 127.0.0.1:12355 2 1 configs/demo.py runs/mh --num_local_cpu_devices=2
HELP
  exit 0
fi
coord=$1; nproc=$2; pid=$3; config=$4; workdir=$5; shift 5
exec python -m slt_jax.main --config="$config" --workdir="$workdir" --coordinator_address="$coord" \
  --num_processes="$nproc" --process_id="$pid" "$@"
