"""HF checkpoint files, below the families (a leaf: numpy / jax / safetensors): safetensors reading and writing,
config.json, and the tensor-mapping record each family's `hf_table` is made of.

A family maps its parameters to HF tensors with a list of TensorMapping (t5.hf_table, bart.hf_table,
decoder.hf_table); slt_jax.models.hf walks such a table to load or save a whole checkpoint of any family.

Reading is tensor by tensor (safetensors.safe_open), so a checkpoint is never in memory twice.
pytorch_model.bin is never unpickled.
"""
import dataclasses
import json
import os
import re
from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

SAFE = 'model.safetensors'
SAFE_INDEX = 'model.safetensors.index.json'


@dataclasses.dataclass(frozen=True)
class TensorMapping:
  """One HF tensor <-> one of our parameters.

  hf: the HF name; alternatives (older checkpoints' names for the same tensor) in `aliases`.
  path: our parameter path in nnx.state (e.g. ('encoder', 'layers', 'self_attn', 'q_proj', 'kernel')).
  layer: index on the leading 'layers' axis of a scanned (stacked) parameter; None if not stacked.
  transform: key of TRANSFORMS (None = as is).
  optional: HF may leave it out of a file (a buffer such as BART's final_logits_bias); zeros then.
  """
  hf: str
  path: tuple
  layer: Optional[int] = None
  transform: Optional[str] = None
  aliases: tuple = ()
  optional: bool = False


# name -> (hf array -> ours, ours -> hf array). HF Linear weights are (out, in); our kernels are [in, out].
TRANSFORMS = {
    None: (lambda a: a, lambda a: a),
    'T': (lambda a: a.T, lambda a: a.T),
    'row': (lambda a: a.reshape(a.shape[-1]), lambda a: a[None]),   # HF [1, N] <-> ours [N]
}


def layer_mappings(num_layers: int, scan: bool, hf_prefix: str, our_prefix: tuple,
                   entries: Sequence[tuple]) -> list[TensorMapping]:
  """The TensorMappings of a stack of layers.

  hf_prefix: e.g. 'encoder.block.{i}.'; our_prefix: e.g. ('encoder', 'layers').
  entries: (hf_suffix, our_suffix tuple, transform) for one layer.
  Scanned stacks map layer i to index i of the stacked parameter; unrolled ones to path our_prefix + (i,).
  """
  mappings = []
  for i in range(num_layers):
    for hf_suffix, ours, transform in entries:
      hf = hf_prefix.format(i=i) + hf_suffix
      if scan:
        mappings.append(TensorMapping(hf, our_prefix + tuple(ours), i, transform))
      else:
        mappings.append(TensorMapping(hf, our_prefix + (i,) + tuple(ours), None, transform))
  return mappings


# --- reading ---------------------------------------------------------------------------------------

class Checkpoint:
  """Tensor name -> file of a single or sharded safetensors checkpoint, read one tensor at a time."""

  def __init__(self, path: str):
    index = os.path.join(path, SAFE_INDEX)
    if os.path.exists(index):
      with open(index) as f:
        weight_map = json.load(f)['weight_map']
      self.files = {k: os.path.join(path, v) for k, v in weight_map.items()}
    elif os.path.exists(os.path.join(path, SAFE)):
      with safe_open(os.path.join(path, SAFE), 'np') as f:
        self.files = {k: os.path.join(path, SAFE) for k in f.keys()}
    elif os.path.exists(os.path.join(path, 'pytorch_model.bin')):
      raise ValueError(f'{path} has only pytorch_model.bin; convert it to safetensors (we never unpickle). '
                       'e.g. transformers: AutoModelForSeq2SeqLM.from_pretrained(p).save_pretrained(p)')
    else:
      raise FileNotFoundError(f'no {SAFE} or {SAFE_INDEX} in {path}')
    self._handles = {}

  def names(self) -> set:
    return set(self.files)

  def _handle(self, file, framework):
    if (file, framework) not in self._handles:
      self._handles[file, framework] = safe_open(file, framework)
    return self._handles[file, framework]

  def shape(self, name):
    return tuple(self._handle(self.files[name], 'np').get_slice(name).get_shape())

  def read(self, name) -> np.ndarray:
    f = self._handle(self.files[name], 'np')
    if f.get_slice(name).get_dtype() == 'BF16':  # numpy cannot read bf16; go through jax (ml_dtypes).
      return np.asarray(self._handle(self.files[name], 'flax').get_tensor(name))
    return f.get_tensor(name)


# Generation settings that decide the decoder's first tokens; transformers 5 keeps them in
# generation_config.json (older checkpoints in config.json).
GENERATION_KEYS = ('decoder_start_token_id', 'forced_bos_token_id')


def read_config(path: str) -> dict:
  """config.json, plus GENERATION_KEYS from generation_config.json where config.json lacks them."""
  with open(os.path.join(path, 'config.json')) as f:
    cfg = json.load(f)
  gen = os.path.join(path, 'generation_config.json')
  if os.path.exists(gen):
    with open(gen) as f:
      gen = json.load(f)
    cfg.update({k: gen[k] for k in GENERATION_KEYS if cfg.get(k) is None and gen.get(k) is not None})
  return cfg


def _ids(value) -> list:
  """An HF id field (None, an int or a list of ints) -> list[int]."""
  if value is None:
    return []
  return [int(i) for i in value] if isinstance(value, (list, tuple)) else [int(value)]


def checkpoint_eos_ids(path: str) -> list:
  """The EOS ids a checkpoint stops on: config.json's eos_token_id and generation_config.json's (HF's
  generate stops on any of them; instruct checkpoints list their end-of-turn token there)."""
  with open(os.path.join(path, 'config.json')) as f:
    ids = _ids(json.load(f).get('eos_token_id'))
  gen = os.path.join(path, 'generation_config.json')
  if os.path.exists(gen):
    with open(gen) as f:
      ids += [i for i in _ids(json.load(f).get('eos_token_id')) if i not in ids]
  return ids


def load_params(ckpt: Checkpoint, table: Sequence[TensorMapping], flat: dict, ignored=()) -> dict:
  """Reads every TensorMapping of `table` into arrays shaped like `flat` (our path -> abstract Variable).

  ignored: regexes of checkpoint tensors that may be present and are not loaded. Raises ValueError naming
  the tensor on a missing, unexpected or wrong-shape tensor.
  """
  buffers, used = {}, set()
  for row in table:
    if row.path not in flat:
      raise ValueError(f'mapping table names {row.path} for {row.hf}, which the model does not have')
    name = next((n for n in (row.hf,) + row.aliases if n in ckpt.files), None)
    if name is None and row.optional:
      buffers.setdefault(row.path, np.zeros(flat[row.path].shape, flat[row.path].dtype))
      continue
    if name is None:
      raise ValueError(f'checkpoint is missing tensor {row.hf!r} (for {"/".join(map(str, row.path))})')
    used.add(name)
    var = flat[row.path]
    want = var.shape[1:] if row.layer is not None else var.shape
    have = ckpt.shape(name)
    to_ours = TRANSFORMS[row.transform][0]
    # Check the shape before reading: a transform maps (have) -> (want).
    got_shape = to_ours(np.broadcast_to(np.zeros((), np.bool_), have)).shape  # no allocation
    if tuple(got_shape) != tuple(want):
      raise ValueError(f'tensor {name!r} has shape {have}, the model expects {tuple(want)} '
                       f'(after transform {row.transform}) for {"/".join(map(str, row.path))}')
    arr = np.asarray(to_ours(ckpt.read(name))).astype(var.dtype)
    if row.layer is None:
      buffers[row.path] = arr
    else:
      if row.path not in buffers:
        buffers[row.path] = np.zeros(var.shape, var.dtype)
      buffers[row.path][row.layer] = arr
  missing = [p for p in flat if p not in buffers]
  if missing:
    raise ValueError(f'no checkpoint tensor maps to parameter(s) {["/".join(map(str, p)) for p in missing]}')
  unexpected = sorted(n for n in ckpt.names() - used if not any(re.fullmatch(r, n) for r in ignored))
  if unexpected:
    raise ValueError(f'unexpected tensor(s) in checkpoint: {unexpected}')
  return {p: jnp.asarray(a) for p, a in buffers.items()}


# --- writing ---------------------------------------------------------------------------------------

def hf_tensors(table: Sequence[TensorMapping], flat: dict, dtype=None) -> dict:
  """HF name -> numpy array of each TensorMapping, from `flat` (our path -> the parameter's array, numpy or jax:
  each is brought to the host as it is written out)."""
  tensors = {}
  for row in table:
    arr = np.asarray(flat[row.path])
    if row.layer is not None:
      arr = arr[row.layer]
    arr = np.ascontiguousarray(TRANSFORMS[row.transform][1](arr))
    tensors[row.hf] = arr.astype(dtype) if dtype is not None else arr
  return tensors


def write_safetensors(tensors: dict, path: str, max_shard_size: Optional[int] = None):
  """Writes `tensors` (HF name -> array) as path/model.safetensors, or shards of at most max_shard_size bytes
  plus model.safetensors.index.json."""
  meta = {'format': 'pt'}
  if not max_shard_size:
    save_file(tensors, os.path.join(path, SAFE), metadata=meta)
    return
  shards, cur, size = [], {}, 0
  for k, a in tensors.items():
    if cur and size + a.nbytes > max_shard_size:
      shards.append(cur)
      cur, size = {}, 0
    cur[k] = a
    size += a.nbytes
  shards.append(cur)
  weight_map = {}
  for i, shard in enumerate(shards):
    name = f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors'
    save_file(shard, os.path.join(path, name), metadata=meta)
    weight_map.update({k: name for k in shard})
  index = {'metadata': {'total_size': int(sum(a.nbytes for a in tensors.values()))}, 'weight_map': weight_map}
  with open(os.path.join(path, SAFE_INDEX), 'w') as f:
    json.dump(index, f, indent=2)
