#!/usr/bin/env bash
# One short GPU check (< 5 min on an H100): bf16 train-step throughput, MFU and memory of a T5-base-shaped SLT
# model and a ~1B decoder (Llama-3.2-1B shape) with LoRA, padded and padding-free (model.padding_free: the same
# first loss, fewer FLOPs), and the persistent compilation cache (compile s of a cold and a warm run), on
# synthetic batches. Needs no tensorflow, pose-format or clu; ml_collections / qwix / absl wheels are installed
# from .gpu_wheels/ when missing (scripts/gpu_check.sh --fetch-wheels on a machine with the package index).
#   scripts/gpu_check.sh [OUT_DIR]      -> a table on stdout, JSON lines in OUT_DIR/gpu_check.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then sed -n 2,6p "$0"; exit 0; fi
if [[ "${1:-}" == "--fetch-wheels" ]]; then
  pip download --no-deps -d .gpu_wheels ml-collections qwix absl-py
  exit 0
fi
out=${1:-${OUT:-/tmp/gpu_check}}; mkdir -p "$out"
PY=${PYTHON:-python3}
for mod in ml_collections qwix absl; do
  $PY -c "import $mod" 2>/dev/null || $PY -m pip install --no-deps --no-index --find-links .gpu_wheels "${mod/_/-}" \
    || $PY -m pip install --no-deps --no-index --find-links .gpu_wheels "$mod"
done
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
run() {  # name, config, extra flags
  local name=$1; shift
  timeout 150 $PY scripts/bench_train.py --json --steps=10 "$@" 2>"$out/$name.stderr" | tee "$out/$name.txt" \
    | tail -n 1 | sed "s/^/{\"name\": \"$name\", \"result\": /; s/$/}/" >> "$out/gpu_check.jsonl" \
    || echo "{\"name\": \"$name\", \"error\": \"see $name.stderr\"}" >> "$out/gpu_check.jsonl"
}
: > "$out/gpu_check.jsonl"
run t5_base_bf16 --config=configs/t5_base.py --config.training.mixed_precision=bf16 --batch_size=64 \
  --frames=256 --target_len=64 --vocab_size=32128
run llama1b_lora_bf16 --config=configs/llama3_1b.py --batch_size=16 --frames=256 --target_len=64 \
  --vocab_size=128256
run llama1b_lora_bf16_padfree --config=configs/llama3_1b.py --batch_size=16 --frames=256 --target_len=64 \
  --vocab_size=128256 --config.model.padding_free=64   # decoder-only padding-free (token rows)
run demo_causal_padded --config=configs/demo_causal.py --frames=96 --target_len=24 --vocab_size=576
run demo_causal_padfree --config=configs/demo_causal.py --frames=96 --target_len=24 --vocab_size=576 \
  --config.model.padding_free=16   # the demo-sized Llama, padded vs padding-free: same first loss
rm -rf "$out/jax_compile"  # the persistent compilation cache: a first run fills it, a rerun reads it back
run demo_causal_cache_cold --config=configs/demo_causal.py --frames=96 --target_len=24 --vocab_size=576 \
  --compile_cache_dir="$out/jax_compile"
run demo_causal_cache_warm --config=configs/demo_causal.py --frames=96 --target_len=24 --vocab_size=576 \
  --compile_cache_dir="$out/jax_compile"   # compile s: reading the programs back
run llama1b_lora_bf16_cudnn --config=configs/llama3_1b.py --batch_size=16 --frames=256 --target_len=64 \
  --vocab_size=128256 --config.model.attention=auto   # cuDNN flash attention (model.attention=auto)
$PY - "$out/gpu_check.jsonl" <<'PY'
import json, sys
print(f"{'model':<28} {'ex/s':>8} {'tok/s':>10} {'TFLOP/s':>8} {'MFU':>6} {'peak GiB':>9} {'compile s':>9} "
      f"{'first loss':>10}")
for line in open(sys.argv[1]):
  r = json.loads(line)
  if 'error' in r:
    print(f"{r['name']:<28} ERROR ({r['error']})"); continue
  x = r['result']
  mfu = f"{100 * x['mfu']:.1f}%" if x.get('mfu') else '-'
  mem = f"{x['peak_memory_gib']:.1f}" if x.get('peak_memory_gib') else '-'
  loss = f"{x['first_loss']:.4f}" if x.get('first_loss') is not None else '-'
  print(f"{r['name']:<28} {x['examples_per_s']:8.1f} {x['tokens_per_s']:10.0f} {x['tflops_per_s']:8.1f} {mfu:>6} "
        f"{mem:>9} {x['compile_s']:9.1f} {loss:>10}")
PY
