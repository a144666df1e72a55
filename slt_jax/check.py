"""--mode=check: what a config resolves to, and whether it fits, without allocating a single weight.

  python -m slt_jax.main --config=configs/qwen7b.py --workdir=runs/check --mode=check

Builds the model abstractly (nnx.eval_shape), counts parameters, shows the sharding plan on the current devices,
compiles the train step on abstract shapes and reads XLA's memory analysis (per device), and validates the data
paths when they exist. Prints a report and writes WORKDIR/check.json.
"""
import collections
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from slt_jax import default_config
from slt_jax.models import contract, lora, slt
from slt_jax.train import optim
from slt_jax.train import sharding as sharding_lib
from slt_jax.train import state as state_lib
from slt_jax.train import step as step_lib


def _nbytes(shape, dtype) -> int:
  # XLA packs 4-bit types (NF4 codes are uint4) two to a byte; numpy's itemsize says 1.
  bits = 4 if jnp.dtype(dtype) in (jnp.dtype(jnp.int4), jnp.dtype(jnp.uint4)) else 8 * jnp.dtype(dtype).itemsize
  return int(np.prod(shape, dtype=np.int64)) * bits // 8


def _per_device_bytes(abstract_tree) -> int:
  """Bytes one device holds of a tree of ShapeDtypeStructs with shardings (its shard of each array)."""
  total = 0
  for leaf in jax.tree.leaves(abstract_tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if getattr(leaf, 'sharding', None) is not None else leaf.shape
    total += _nbytes(shape, leaf.dtype)
  return total


def _data_report(config) -> dict:
  """Rows and missing pose files of each CSV split whose path exists (nothing is parsed)."""
  from slt_jax.data import sources  # pylint: disable=g-import-not-at-top  (pose-format; optional on GPU hosts)
  report = {}
  for split in ('train', 'val', 'test'):
    path = config.data.get(f'{split}_path', '')
    if not path:
      continue
    if not os.path.exists(path):
      report[split] = {'error': f'{path} does not exist'}
      continue
    rows, skipped = sources.read_csv(path, config.data.pose_dir, config.data.get('text_column', 'text'))
    report[split] = {'rows': len(rows) + sum(len(v) for v in skipped.values()), 'usable_rows': len(rows),
                     **{reason: len(uids) for reason, uids in skipped.items() if uids}}
  return report


def _vocab_size(config, workdir: str = '') -> tuple[int, str]:
  """(embedding rows of the model training builds, where that number comes from).

  A checkpoint's and a decoder-only arch's are fixed; an encoder-decoder from random init has one row per
  tokenizer id (slt.build_lm), whatever model.arch.vocab_size says: the tokenizer training will use
  (model.tokenizer, else WORKDIR/tokenizer of an earlier run), or, before one is trained,
  data.trained_tokenizer.vocab_size (an upper bound: a small corpus yields fewer ids).
  """
  fixed = default_config.model_vocab_size(config)
  if fixed is not None:
    return int(fixed), 'the checkpoint' if config.model.name else 'model.arch.vocab_size'
  for directory in (config.model.tokenizer, os.path.join(workdir, 'tokenizer') if workdir else ''):
    if directory and os.path.exists(directory):
      from slt_jax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
      return int(tokenizer_lib.load_tokenizer(directory).vocab_size), f'the tokenizer in {directory}'
  return (int(config.data.trained_tokenizer.vocab_size),
          'data.trained_tokenizer.vocab_size (upper bound: the tokenizer is trained on the texts)')


# The pretrained model alone, as HF counts it: LoRA adapters are not part of it, quantized kernels are.
_BASE_PARAMS = nnx.Any(nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam)), lora.QuantizedWeight)


def _backbone_params(model):
  """Parameters of an (abstract) SLT model's text model `lm`, as HF counts them; None without one."""
  return lora.count_weights(nnx.state(model.lm, _BASE_PARAMS)) if hasattr(model, 'lm') else None


def memory_plan(config, graphdef, state, rest, state_shardings, tx, mesh, batch_size: int, frames: int,
                target_len: int, pose_shape) -> dict:
  """Per-device bytes of the jitted train step, from XLA's compiled memory analysis on abstract inputs.

  `state` and `rest` are ShapeDtypeStructs carrying their shardings (create_sharded_state(abstract=True)).
  With model.padding_free the plan is of the largest step the trainer compiles for these shapes: its
  TokenCounts (counted as the trainer counts them) of a batch whose every frame and token is real.
  """
  k, c = pose_shape
  batch = contract.abstract(batch_size, frames, k, c, target_len,
                            sharding=sharding_lib.batch_sharding(mesh, sharding_lib.logical_rules(config)))
  # The trainer's step (step.TrainStep), lowered here on abstract inputs instead of called.
  train = step_lib.TrainStep(config, graphdef, tx, state_shardings, rest, mesh)
  all_real = {name: np.ones(x.shape, x.dtype) for name, x in batch.items()}
  stats = train.jitted(train.counts(all_real)).lower(state, batch).compile().memory_analysis()
  plan = {
      'trained_params_bytes': _per_device_bytes(state.params),
      'optimizer_state_bytes': _per_device_bytes(state.opt_state),
      'frozen_params_bytes': _per_device_bytes(rest),
      'batch_bytes': _per_device_bytes(batch),
      'temporaries_bytes': int(stats.temp_size_in_bytes) if stats else None,
      'arguments_bytes': int(stats.argument_size_in_bytes) if stats else None,
  }
  if stats is not None:
    # Donated state aliases the outputs, so the peak is the arguments plus XLA's temporaries.
    plan['total_bytes'] = int(stats.argument_size_in_bytes + stats.temp_size_in_bytes
                              + stats.output_size_in_bytes - stats.alias_size_in_bytes)
  plan['batch'] = {'batch_size': batch_size, 'frames': frames, 'target_len': target_len}
  return plan


# Memory-plan variants (slt_jax.check.memory_variants): config.model fields each one sets.
MEMORY_VARIANTS = {
    'full_bf16': dict(use_lora=False, load_in_4bit=False, load_in_8bit=False, dtype='bfloat16'),
    'lora_bf16': dict(use_lora=True, load_in_4bit=False, load_in_8bit=False),
    'qlora_nf4': dict(use_lora=True, load_in_4bit=True, load_in_8bit=False),
}


def memory_variants(config, batch_size: int, frames: int, variants=tuple(MEMORY_VARIANTS)) -> dict:
  """{variant: memory_plan} of `config`'s train step at batch_size x frames, under bf16 mixed precision, as
  full fine-tuning with bf16 weights and AdamW state, LoRA on a bf16 base and LoRA on an NF4 base (the
  frozen base stored in the compute dtype). Abstract shapes only: nothing is allocated."""
  from slt_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  mesh = sharding_lib.make_mesh(config.mesh)
  pose_shape = pipeline.pose_feature_shape(config)
  vocab, _ = _vocab_size(config)
  plans = {}
  for name in variants:
    cfg = config.copy_and_resolve_references()
    cfg.model.update(MEMORY_VARIANTS[name])
    cfg.training.mixed_precision = 'bf16'
    tx = optim.make_optimizer(cfg, 1000)
    graphdef, state, rest, shardings = state_lib.from_config(cfg, tx, mesh, vocab, int(np.prod(pose_shape)),
                                                             abstract=True)
    plans[name] = memory_plan(cfg, graphdef, state, rest, shardings, tx, mesh, batch_size, frames,
                              int(cfg.data.max_target_length), pose_shape)
    plans[name]['trainable_params'] = lora.count_weights(state.params)
  return plans


def check(config, workdir: str, *, memory: bool = True) -> dict:
  """Resolves `config` offline and returns (and writes to WORKDIR/check.json) its report."""
  from slt_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  mesh = sharding_lib.make_mesh(config.mesh)
  pose_shape = pipeline.pose_feature_shape(config)
  vocab, vocab_source = _vocab_size(config, workdir)
  tx = optim.make_optimizer(config, 1000)
  graphdef, state, rest, state_shardings = state_lib.from_config(config, tx, mesh, vocab, int(np.prod(pose_shape)),
                                                                 abstract=True)
  build = lambda: slt.build_model(config, vocab, int(np.prod(pose_shape)), rngs=nnx.Rngs(params=0))

  abstract_model = nnx.eval_shape(build)
  family = getattr(abstract_model, 'family', config.model.family)
  report = {
      'family': family,
      'backbone_params': _backbone_params(abstract_model),
      'total_params': lora.count_weights(nnx.state(abstract_model, nnx.Any(nnx.Param, lora.QuantizedWeight))),
      'trainable_params': lora.count_weights(state.params),
      'devices': [str(d) for d in jax.devices()],
      'mesh': dict(mesh.shape),
      'vocab_size': vocab,
      'vocab_source': vocab_source,
  }
  # An encoder-decoder from random init replaces model.arch.vocab_size (the pretrained model's) by the
  # tokenizer's: report the pretrained size beside the one that will be built.
  arch_vocab = int(config.model.arch.get('vocab_size', 0) or 0)
  if not config.model.name and arch_vocab and arch_vocab != vocab and hasattr(abstract_model, 'lm'):
    report['pretrained_vocab_size'] = arch_vocab
    report['pretrained_backbone_params'] = _backbone_params(nnx.eval_shape(
        lambda: slt.build_model(config, arch_vocab, int(np.prod(pose_shape)), rngs=nnx.Rngs(params=0))))
  # Sharding plan: every trained tensor's PartitionSpec (in check.json) and the parameters per spec (printed).
  plan, by_spec = {}, collections.Counter()
  for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]:
    name = '/'.join(str(getattr(p, 'key', getattr(p, 'idx', p))) for p in path)
    plan[name] = str(leaf.sharding.spec)
    by_spec[plan[name]] += int(np.prod(leaf.shape, dtype=np.int64))
  report['sharding_summary'] = dict(by_spec)
  report['sharding_plan'] = plan
  if memory:
    t, d = config.training, config.data
    report['memory_per_device'] = memory_plan(
        config, graphdef, state, rest, state_shardings, tx, mesh, t.batch_size, int(d.max_frames),
        int(d.max_target_length), pose_shape)
  try:
    report['data'] = _data_report(config)
  except ImportError as e:
    report['data'] = {'skipped': f'data libraries unavailable ({e})'}

  _print(report)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'check.json'), 'w', encoding='utf-8') as f:
    json.dump(report, f, indent=2)
  logging.info('Wrote %s', os.path.join(workdir, 'check.json'))
  return report


def _gib(x):
  return f'{x / 2**30:8.2f} GiB' if isinstance(x, (int, float)) else str(x)


def _print(report: dict) -> None:
  lines = [f"family            {report['family']}",
           f"backbone params   {report['backbone_params']:,}" if report['backbone_params'] else 'backbone params   -']
  if 'pretrained_backbone_params' in report:
    lines.append(f"  (pretrained, with model.arch's vocab of {report['pretrained_vocab_size']:,}: "
                 f"{report['pretrained_backbone_params']:,}; training builds the one above)")
  lines += [f"total params      {report['total_params']:,}",
            f"vocab size        {report['vocab_size']:,} from {report['vocab_source']}",
            f"trainable params  {report['trainable_params']:,}",
            f"mesh              {report['mesh']} on {len(report['devices'])} device(s)",
            'sharding (params per PartitionSpec):']
  lines += [f'  {spec:<40} {n:,}' for spec, n in report['sharding_summary'].items()]
  if 'memory_per_device' in report:
    lines.append('memory per device (train step, XLA memory analysis):')
    lines += [f'  {k:<24} {_gib(v)}' for k, v in report['memory_per_device'].items() if k != 'batch']
  for split, info in report.get('data', {}).items():
    lines.append(f'data {split:<6} {info}')
  print('\n'.join(lines))
