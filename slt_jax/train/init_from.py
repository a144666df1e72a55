"""Warm start from an earlier run (training.init_from) and frozen parts (training.freeze): two-stage training.

  trainable = init_from.trainable_filter(config)   # what the optimizer trains: slt.trainable_filter minus freeze
  state, rest = init_from.load(config, workdir, state, rest, into='rest')    # setup, every mode
  state, rest = init_from.load(config, workdir, state, rest, into='params')  # a fresh (not resumed) training run

The parts of an SLT model, by parameter path (`part_of`):
  pose_frontend  Seq2SeqSLT `frontend/...`, CausalSLT `encoder/frontend/...`: keypoints -> frame features
  pose_encoder   CausalSLT `encoder/layers/...`, `encoder/norm`: the transformer layers over the frames
  projector      CausalSLT `encoder/proj_in`, `proj_out`, `out_norm`, `answer_start`: into the LLM's input space
  backbone       `lm/...` except the adapters: the text model (T5 / BART / the LLM)
  adapters       `lm/.../lora_a`, `lora_b`: the LoRA adapters (model.use_lora)

What a checkpoint holds is what its run trained (its TrainState params): a part frozen there (training.freeze, or
the backbone under LoRA) stayed what that run's own init gave it. So a part is taken from the run that trained it:
the one named in init_from, else the run *it* was initialised from (its config.json), and so on. A part that no
run trained kept the init of its model's build: with the same model.name (a pretrained checkpoint) this run's
build already has those weights, so it stays at this run's init.

Parameters this run freezes or does not train (LoRA's base) live in `rest`, outside the checkpoints, so they are
loaded from init_from again by every mode (train, resume, eval, translate): keep the earlier workdir. The trained
parameters come from init_from only on a fresh run; a resumed run takes them from its own latest checkpoint.
"""
import dataclasses
import os

import jax
from absl import logging
from flax import nnx

from slt_jax import default_config
from slt_jax import run_config
from slt_jax.default_config import ConfigError
from slt_jax.models import slt
from slt_jax.train import checkpoint as checkpoint_lib

PARTS = default_config.MODEL_PARTS
part_names = default_config.part_names
_ADAPTER_LEAVES = ('lora_a', 'lora_b')  # lora.LoRALinear's nnx.LoRAParam attributes


def part_of(path) -> str:
  """The part (one of PARTS) of a parameter at `path` (nnx path parts, or a checkpoint key's parts) of an SLT model
  (slt.Seq2SeqSLT / causal_slt.CausalSLT). A parameter of no part is a ValueError: a new module must be assigned."""
  keys = tuple(str(k) for k in path)
  if keys[0] == 'lm':
    return 'adapters' if keys[-1] in _ADAPTER_LEAVES else 'backbone'
  if keys[0] == 'frontend':  # Seq2SeqSLT: the front end projects straight into the encoder's width
    return 'pose_frontend'
  if keys[0] == 'encoder' and len(keys) > 1:  # CausalSLT's PoseEncoder
    if keys[1] == 'frontend':
      return 'pose_frontend'
    if keys[1] in ('layers', 'norm'):
      return 'pose_encoder'
    if keys[1] in ('proj_in', 'proj_out', 'out_norm'):
      return 'projector'
  if keys == ('answer_start',):  # CausalSLT's learned embedding after the poses, in the LLM's input space
    return 'projector'
  raise ValueError(f'parameter {"/".join(keys)} belongs to none of the parts {PARTS}: assign it in '
                   'slt_jax/train/init_from.py part_of')


def _is_frozen(frozen):
  return lambda path, x: isinstance(x, nnx.Param) and part_of(path) in frozen


def trainable_filter(config):
  """slt.trainable_filter (everything, or LoRA's adapters + what lies outside the backbone) minus the parts of
  training.freeze: those stay in the `rest` of the model, which the optimizer never sees."""
  base = slt.trainable_filter(config)
  frozen = part_names(config.training.get('freeze', ()))
  return nnx.All(base, nnx.Not(_is_frozen(frozen))) if frozen else base


def check_trainable(config, params, rest) -> None:
  """Before any compile: every part named in training.freeze / init_parts exists in this model, and something is
  left to train. params, rest: the (abstract or real) nnx.States of the trained and the other variables."""
  present = {part_of(p) for state in (params, rest) for p, v in nnx.to_flat_state(state) if isinstance(v, nnx.Param)}
  t = config.training
  for field in ('freeze', 'init_parts'):
    absent = [p for p in part_names(t.get(field, ())) if p not in present]
    if absent:
      raise ConfigError(
          f'training.{field} names {absent}, which this model does not have (its parts: '
          f'{[p for p in PARTS if p in present]}; adapters need model.use_lora, pose_encoder and projector a '
          'decoder-only model.family)')
  if not jax.tree.leaves(params):
    raise ConfigError(
        f'training.freeze={part_names(t.freeze)} leaves nothing to train (the trained parts would be '
        f'{[p for p in PARTS if p in present and p not in part_names(t.freeze)]}): unfreeze one')


# ------------------------------------------------------------------------------------------------------------
# The earlier runs: which of them holds each part.
# ------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Source:
  """A step of an earlier run's checkpoints: its stored parameters (key 'a/b/c' -> orbax ArrayMetadata)."""
  workdir: str
  config: dict            # its config.json
  manager: object         # the orbax CheckpointManager holding `step`
  step: int
  leaves: dict


def _open(workdir: str, step: int) -> _Source:
  config = run_config.load(workdir)
  if config is None:
    raise FileNotFoundError(f'training.init_from={workdir}: no {run_config.FILE} there; init_from names the workdir '
                            'of an earlier slt_jax training run')
  t = config.get('training', {})
  ckpt = checkpoint_lib.Checkpoints(workdir, best_metric=t.get('best_metric', 'bleu'), read_only=True)
  found = ckpt.find(step if step is not None and step >= 0 else None)
  if found is None:
    raise FileNotFoundError(f'training.init_from={workdir}: no checkpoint in {workdir}/best or '
                            f'{workdir}/checkpoints (has that run saved one yet?)')
  manager, step = found
  stored = ocp_flat(checkpoint_lib.Checkpoints.stored_tree(manager, step)['params'])
  return _Source(workdir, config, manager, step, stored)


def ocp_flat(tree) -> dict:
  """'a/b/c' -> leaf of a stored params tree (nnx Variables are stored as {'value': array}: that level dropped)."""
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: not isinstance(x, dict))[0]:
    keys = [str(getattr(k, 'key', k)) for k in path]
    if keys[-1] == 'value':
      keys = keys[:-1]
    flat['/'.join(keys)] = leaf
  return flat


def _frozen_in(source: _Source) -> set:
  """The parts that the source's run did not train (so not in its checkpoint): its freeze, LoRA's backbone."""
  t, m = source.config.get('training', {}), source.config.get('model', {})
  return set(part_names(t.get('freeze', ()))) | ({'backbone'} if m.get('use_lora') else set())


def _same_checkpoint(a: str, b: str) -> bool:
  return bool(a) and bool(b) and (a == b or os.path.realpath(a) == os.path.realpath(b))


def _locate(workdir: str, step, parts, explicit: bool, model_name: str) -> dict:
  """{part: _Source holding it, or None: it stays at this run's init} for `parts`, following init_from upstream."""
  source = _open(workdir, step)
  held = {part_of(k.split('/')) for k in source.leaves}
  out = {p: source for p in parts if p in held}
  missing = [p for p in parts if p not in held]
  t = source.config.get('training', {})
  upstream, upstream_parts = t.get('init_from', ''), part_names(t.get('init_parts', ())) or PARTS
  frozen = _frozen_in(source)
  via = [p for p in missing if p in frozen and upstream and p in upstream_parts]
  if via:
    out.update(_locate(upstream, t.get('init_step', -1), via, False, model_name))
  for p in missing:
    if p in via:
      continue
    # What a frozen part held there: the backbone its model.name's weights (or a random init), adapters their init.
    name = source.config.get('model', {}).get('name', '') if p == 'backbone' else ''
    if p in frozen and name and not _same_checkpoint(name, model_name):
      raise checkpoint_lib.CheckpointMismatchError(
          f'training.init_from: part {p!r} of {workdir} was not trained there (frozen) and came from its '
          f'model.name={name!r}, but this run builds it from model.name={model_name!r}: use the same model.name, '
          f'or leave {p!r} out of training.init_parts')
    if p in frozen:
      why = 'the same pretrained checkpoint as here' if name else 'its random init'
      logging.warning('init_from: part %r was not trained in %s (frozen there; it held %s): it stays at this '
                      "run's init.", p, workdir, why)
    elif explicit:
      raise checkpoint_lib.CheckpointMismatchError(
          f'training.init_parts names {p!r}, but {workdir} (step {source.step}) has no such parameters (its '
          f'checkpoint holds {sorted(held)}); leave it out of training.init_parts')
    else:
      logging.info("init_from: %s has no %s: it stays at this run's init.", workdir, p)
    out[p] = None
  return out


# ------------------------------------------------------------------------------------------------------------
# Loading.
# ------------------------------------------------------------------------------------------------------------
def _targets(state, rest) -> dict:
  """'a/b/c' -> (where: 'params' | 'rest', nnx path, Variable) of every parameter of the model."""
  out = {}
  for where, tree in (('params', state.params), ('rest', rest)):
    for path, var in nnx.to_flat_state(tree):
      if isinstance(var, nnx.Param):
        out['/'.join(map(str, path))] = (where, path, var)
  return out


def _check_part(part: str, source: _Source, targets: dict, requested) -> None:
  """CheckpointMismatchError unless the source's leaves of `part` are exactly this model's (paths and shapes)."""
  ours = {k: v for k, v in targets.items() if part_of(k.split('/')) == part}
  theirs = {k: v for k, v in source.leaves.items() if part_of(k.split('/')) == part}
  shape = lambda x: tuple(getattr(x, 'shape', ()))
  missing = [k for k in ours if k not in theirs]
  extra = [k for k in theirs if k not in ours]
  different = [k for k in ours if k in theirs and shape(ours[k][2]) != shape(theirs[k])]
  if not (missing or extra or different):
    return
  if different:
    k = different[0]
    what = f'{k} is {list(shape(theirs[k]))} there but {list(shape(ours[k][2]))} here'
  elif missing:
    what = f'{missing[0]} is in this model but not there'
  else:
    what = f'{extra[0]} is there but not in this model'
  others = [p for p in requested if p != part]
  raise checkpoint_lib.CheckpointMismatchError(
      f'training.init_from={source.workdir} (step {source.step}): part {part!r} does not match this model: {what} '
      f'({len(different)} parameters differ in shape, {len(missing)} are missing there, {len(extra)} are not '
      'here). Another keypoint preset or data.coords changes the pose front end\'s input, another tokenizer the '
      f'embeddings, another width or depth every part. Leave {part!r} out (training.init_parts='
      f'{",".join(others)}) to keep it at this run\'s init, or build this model like that run\'s '
      f'({source.workdir}/{run_config.FILE}).')


def load(config, workdir: str, state, rest, into: str):
  """(state, rest) of the run in `workdir` with the parts of training.init_from loaded into the parameters that live
  in `into`: 'rest' (frozen / LoRA base: every mode needs them) or 'params' (the trained ones: a fresh training run).

  Each part loaded is checked against its source first (CheckpointMismatchError naming the part). Float parameters
  stored in another dtype are cast (logged). No init_from, or no requested part in `into`: (state, rest) unchanged.
  """
  t = config.training
  if not t.get('init_from', ''):
    return state, rest
  if os.path.realpath(t.init_from) == os.path.realpath(workdir):
    raise ConfigError(f'training.init_from={t.init_from} is this run\'s own workdir: name the earlier run\'s '
                      '(this run resumes from its own checkpoints by itself)')
  targets = _targets(state, rest)
  present = [p for p in PARTS if any(part_of(k.split('/')) == p for k in targets)]
  explicit = part_names(t.get('init_parts', ()))
  requested = list(explicit) or present
  # Only the parts that live in `into`: eval / translate of a run that trained every part never need init_from.
  requested = [p for p in requested if any(part_of(k.split('/')) == p and where == into
                                           for k, (where, _, _) in targets.items())]
  if not requested:
    return state, rest
  sources = _locate(t.init_from, t.get('init_step', -1), requested, bool(explicit), config.model.name)
  loaded = {'params': {}, 'rest': {}}
  for source in {id(s): s for s in sources.values() if s is not None}.values():
    parts = [p for p, s in sources.items() if s is source]
    for part in parts:
      _check_part(part, source, targets, requested)
    keys = [k for k in source.leaves if part_of(k.split('/')) in parts and targets[k][0] == into]
    if not keys:
      continue
    item = {}
    for k in keys:
      node = item
      for key in k.split('/'):
        node = node.setdefault(key, {})
      var = targets[k][2]
      node['value'] = jax.ShapeDtypeStruct(var.shape, var.dtype, sharding=var[...].sharding)
      if str(source.leaves[k].dtype) != str(var.dtype):
        logging.info('init_from: %s stored as %s, cast to %s', k, source.leaves[k].dtype, var.dtype)
    restored = checkpoint_lib.Checkpoints.restore_partial(source.manager, source.step, {'params': item})
    loaded[into].update(ocp_flat(restored['params']))
    logging.info('init_from: %s (%s) from %s step %d', ', '.join(parts), into, source.workdir, source.step)

  def replaced(tree, values):
    if not values:
      return tree
    return nnx.from_flat_state([(p, v.replace(values['/'.join(map(str, p))]) if '/'.join(map(str, p)) in values
                                 else v) for p, v in nnx.to_flat_state(tree)])
  return state.replace(params=replaced(state.params, loaded['params'])), replaced(rest, loaded['rest'])

