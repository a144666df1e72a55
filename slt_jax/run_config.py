"""The config a workdir was trained with (WORKDIR/config.json), for the modes that reuse its model.

  config = run_config.for_inference(config, workdir)   # --mode=eval / translate

A trained model only means something with the model and the preprocessing it was trained with: another keypoint
preset or normalisation of the same shapes would restore and score without a word, wrongly. So those fields come
from the run, and a --config that sets one of them differently is an error listing each difference. What may
differ: the data's location (scoring a trained model on another corpus is a use), decoding, evaluation, and the
training fields.
"""
import json
import os

import ml_collections
from absl import logging

from slt_jax.default_config import ConfigError

FILE = 'config.json'
# What the checkpoint's numbers depend on: every model field, and the data fields that shape a pose tensor.
MODEL_EXEMPT = ('attention', 'remat', 'padding_free', 'scan_layers')  # same function, other kernels / layout
_ARCH = 'model.arch.'
PREPROCESSING = ('keypoints', 'coords', 'normalize', 'max_frames', 'frame_stride', 'hand_normalize',
                 'visibility_channel', 'trained_tokenizer', 'dominant_hand')
# Where the run's weights come from (slt_jax/train/init_from.py): its frozen parts are not in its checkpoints but
# loaded from init_from each time, and what its checkpoints hold depends on freeze. Facts of the run: always its own.
WEIGHTS = ('init_from', 'init_step', 'init_parts', 'freeze')


def _flat(tree, prefix: str) -> dict:
  """{'model.arch.d_model': 192, ...} of a nested dict; lists become tuples (JSON has no tuples)."""
  flat = {}
  for key, value in tree.items():
    path = f'{prefix}.{key}'
    if isinstance(value, dict):
      flat.update(_flat(value, path))
    else:
      flat[path] = tuple(value) if isinstance(value, list) else value
  return flat


def _run_fields(config_dict: dict) -> dict:
  """The fields of a config (as a plain dict) that must match the run's."""
  model = {k: v for k, v in config_dict.get('model', {}).items() if k not in MODEL_EXEMPT}
  data = {k: v for k, v in config_dict.get('data', {}).items() if k in PREPROCESSING}
  return {**_flat(model, 'model'), **_flat(data, 'data')}


def load(workdir: str) -> dict | None:
  """WORKDIR/config.json as a plain dict, or None when the workdir has none."""
  path = os.path.join(workdir, FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def for_inference(config, workdir: str, strict: bool = True):
  """`config` with the run's model and preprocessing fields.

  strict: a --config that sets one of them differently is a ConfigError listing the differences (--mode=eval:
  its numbers end up in papers); else they are logged and the run's values used (--mode=translate). A workdir
  without config.json (written since the first release) keeps --config as given, with a warning.
  """
  stored = load(workdir)
  if stored is None:
    logging.warning('%s not found: using --config as given for the model and preprocessing.',
                    os.path.join(workdir, FILE))
    return config
  ours = _run_fields(json.loads(config.to_json_best_effort()))
  theirs = _run_fields(stored)  # (fields this version no longer has are left out: nothing could use them)
  # model.arch is free-form: a key on one side only is a difference too. Elsewhere a field on one side only is
  # one this version added (the run predates it) or removed (nothing could use it).
  compared = (ours.keys() & theirs.keys()) | {p for p in ours.keys() | theirs.keys() if p.startswith(_ARCH)}
  missing = '(not set)'
  differences = [f'  {path}: --config has {ours.get(path, missing)!r}, the run was trained with '
                 f'{theirs.get(path, missing)!r}' for path in sorted(compared)
                 if ours.get(path, missing) != theirs.get(path, missing)]
  if differences and strict:
    raise ConfigError(
        f'--config does not match the model that {workdir} was trained with ({os.path.join(workdir, FILE)}):\n'
        + '\n'.join(differences) + '\nPass the config and overrides the run was trained with (data paths, '
        'decode.* and evaluation.* may differ).')
  if differences:
    logging.warning('Using the model and preprocessing %s was trained with, not --config\'s:\n%s', workdir,
                    '\n'.join(differences))
  config = config.copy_and_resolve_references()
  with config.unlocked():
    if 'arch' in stored.get('model', {}):  # free-form: the run's keys, not ours
      config.model.arch = ml_collections.ConfigDict(stored['model']['arch'])
    for path in compared & theirs.keys() - {p for p in compared if p.startswith(_ARCH)}:
      *parents, leaf = path.split('.')
      node = config
      for parent in parents:
        node = node[parent]
      node[leaf] = theirs[path]
    for field in WEIGHTS:
      if field in stored.get('training', {}) and field in config.training:
        value = stored['training'][field]
        config.training[field] = tuple(value) if isinstance(value, list) else value
  return config
