"""Per-device memory of the jitted train step: full bf16 fine-tuning vs LoRA (bf16 base) vs QLoRA (NF4 base).

  JAX_PLATFORMS=cpu python scripts/bench_memory.py --config=configs/qwen7b.py --batch_size=4 --frames=256

Compiles the train step on abstract shapes (nnx.eval_shape: no weight is allocated) and reads XLA's compiled
memory analysis (slt_jax.check.memory_variants); runs on a CPU host in a few minutes for a 7B model. Figures
are per device of the config's mesh on the current devices; temporaries are what the backend compiling it
plans (CPU's plan approximates a GPU's).
"""
import json

from absl import app, flags
from ml_collections import config_flags

from slt_jax import check

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/qwen7b.py', 'Config file.')
_BATCH = flags.DEFINE_integer('batch_size', 4, 'Global batch size of one step.')
_FRAMES = flags.DEFINE_integer('frames', 256, 'Pose frames per example.')
_VARIANTS = flags.DEFINE_list('variants', list(check.MEMORY_VARIANTS), 'Which of check.MEMORY_VARIANTS.')
_JSON = flags.DEFINE_string('json', '', 'Also write the figures to this JSON file.')

ROWS = ('trained_params_bytes', 'optimizer_state_bytes', 'frozen_params_bytes', 'batch_bytes',
        'temporaries_bytes', 'total_bytes')


def main(argv):
  del argv
  plans = check.memory_variants(_CONFIG.value, _BATCH.value, _FRAMES.value, tuple(_VARIANTS.value))
  names = list(plans)
  lines = [f'{"GiB per device":<24}' + ''.join(f'{n:>12}' for n in names)]
  for row in ROWS:
    lines.append(f'{row.replace("_bytes", ""):<24}' + ''.join(
        f'{plans[n][row] / 2**30:12.2f}' if plans[n].get(row) is not None else f'{"-":>12}' for n in names))
  lines.append(f'{"trainable params":<24}' + ''.join(f'{plans[n]["trainable_params"]:>12,}' for n in names))
  print('\n'.join(lines))
  if _JSON.value:
    with open(_JSON.value, 'w', encoding='utf-8') as f:
      json.dump(plans, f, indent=2)


if __name__ == '__main__':
  app.run(main)
