"""HF checkpoints <-> our NNX models: config.json translation and safetensors loading/saving.

A family module (t5.py, bart.py, decoder.py) provides:
  config_from_hf(hf: dict, tensor_names: set[str] | None) -> cfg   (a frozen dataclass with `model_type`)
  config_to_hf(cfg) -> dict                                      (what goes into config.json)
  build(cfg, dtype, param_dtype, rngs) -> nnx.Module              (the module keeps `.config = cfg`)
  hf_table(cfg) -> list[Row]                                     (HF tensor <-> our parameter path)
  IGNORED: tuple of regexes of HF tensors that may be in a file and are not loaded (tied copies, buffers)
  arch_keys(hf: dict) -> (read, fixed)                           (the config.json keys it builds; arch_problems)
The registry FAMILIES maps HF `model_type` to its family module.

Loading is tensor by tensor (safetensors.safe_open): the model is built abstractly (nnx.eval_shape) and each
parameter is filled from the file, so a checkpoint is never in memory twice. pytorch_model.bin is never
unpickled.
"""
import dataclasses
import difflib
import json
import os
import re
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

SAFE = 'model.safetensors'
SAFE_INDEX = 'model.safetensors.index.json'


@dataclasses.dataclass(frozen=True)
class Row:
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


def layer_rows(num_layers: int, scan: bool, hf_prefix: str, our_prefix: tuple,
               entries: Sequence[tuple]) -> list[Row]:
  """Rows for a stack of layers.

  hf_prefix: e.g. 'encoder.block.{i}.'; our_prefix: e.g. ('encoder', 'layers').
  entries: (hf_suffix, our_suffix tuple, transform) for one layer.
  Scanned stacks map layer i to index i of the stacked parameter; unrolled ones to path our_prefix + (i,).
  """
  rows = []
  for i in range(num_layers):
    for hf_suffix, ours, transform in entries:
      hf = hf_prefix.format(i=i) + hf_suffix
      if scan:
        rows.append(Row(hf, our_prefix + tuple(ours), i, transform))
      else:
        rows.append(Row(hf, our_prefix + (i,) + tuple(ours), None, transform))
  return rows


def family(model_type: str):
  if model_type not in FAMILIES:
    raise ValueError(f'unsupported model_type {model_type!r}; known: {sorted(FAMILIES)}')
  return FAMILIES[model_type]


# config.json keys that change nothing in the models we build (transformers' bookkeeping, settings of outputs and
# heads we never build): accepted in model.arch for every family, with any value.
CONFIG_BOOKKEEPING = frozenset({
    '_name_or_path', 'architectures', 'transformers_version', 'dtype', 'torch_dtype', 'use_cache',
    'is_encoder_decoder', 'output_attentions', 'output_hidden_states', 'return_dict', 'chunk_size_feed_forward',
    'id2label', 'label2id', 'problem_type', 'classifier_dropout'})


def arch_problems(arch: dict) -> list[str]:
  """What of `arch` (HF config.json fields with `model_type`, e.g. model.arch) its family would not build as HF
  does: keys it does not know (with close matches) and known keys with a value it does not implement.

  config_from_hf takes the keys it knows and drops the rest (a real config.json has many it need not read), so a
  misspelt key would silently leave the family's default in place; this finds them. [] = nothing wrong.
  """
  read, fixed = family(arch.get('model_type', '')).arch_keys(arch)
  known = sorted(read | set(fixed) | CONFIG_BOOKKEEPING)
  problems = []
  for key, value in arch.items():
    if key in read or key in CONFIG_BOOKKEEPING or (key in fixed and fixed[key] is None):
      continue
    if key in fixed:
      if value not in fixed[key]:
        problems.append(f'`{key}`={value!r} is not implemented (it may only be '
                        f'{" or ".join(map(repr, fixed[key]))} here)')
      continue
    close = difflib.get_close_matches(key, known, n=3)
    problems.append(f'unknown key `{key}`' + (f' (did you mean {" / ".join(close)}?)' if close else ''))
  return problems


# --- reading ---------------------------------------------------------------------------------------

class _Checkpoint:
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


# --- special token ids: the tokenizer's, or checked against the checkpoint's -------------------------

def _ids(value) -> list:
  """An HF id field (None, an int or a list of ints) -> list[int]."""
  if value is None:
    return []
  return [int(i) for i in value] if isinstance(value, (list, tuple)) else [int(value)]


def with_tokenizer_ids(cfg, tokenizer, where: str = 'config.model.arch'):
  """A family config (t5.T5Config, bart.BartConfig, decoder.DecoderConfig) with the special ids of `tokenizer`.

  A model from random init has no ids of its own: the labels end with the tokenizer's EOS and are padded with
  its pad, so decoding must stop on that EOS and the decoder start on the tokenizer's decoder start. The ids
  of `model.arch` (copied from a checkpoint's config.json) name tokens of another vocabulary. A forced BOS
  (BART's `forced_bos_token_id`, equal to its `bos_token_id`) becomes the tokenizer's BOS; any other forced id
  names a token of the checkpoint's vocabulary (mBART's language codes) and is an error here.
  """
  fields = {f.name for f in dataclasses.fields(cfg)}
  ids = dict(pad_token_id=tokenizer.pad_id, eos_token_id=tokenizer.eos_id, bos_token_id=tokenizer.bos_id,
             decoder_start_token_id=tokenizer.decoder_start_id)
  forced = getattr(cfg, 'forced_bos_token_id', None)
  if forced is not None:
    if forced != getattr(cfg, 'bos_token_id', None) or tokenizer.bos_id is None:
      raise ValueError(
          f'{where}.forced_bos_token_id={forced} is an id of the pretrained vocabulary (its bos_token_id is '
          f'{getattr(cfg, "bos_token_id", None)}), meaningless for a model from random init with the tokenizer\'s '
          f'ids (BOS {tokenizer.bos_id}): set it to None, or set model.tgt_lang with a tokenizer that has it')
    ids['forced_bos_token_id'] = tokenizer.bos_id
  ids = {k: v for k, v in ids.items() if k in fields}
  replaced = {k: (getattr(cfg, k), v) for k, v in ids.items() if getattr(cfg, k) != v}
  if replaced:  # the run's log says which ids the model really has
    logging.info('%s: a model from random init takes the tokenizer\'s special ids: %s', where,
                 ', '.join(f'{k} {old} -> {new}' for k, (old, new) in replaced.items()))
  return dataclasses.replace(cfg, **ids)


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


def check_tokenizer_eos(path: str, tokenizer, tokenizer_name: str) -> None:
  """Raises ValueError when the tokenizer's EOS (what the labels end with and decoding stops on) is not an EOS
  of the checkpoint at `path`: the two do not share a vocabulary. The pad id is not checked: padded label
  positions are masked out of the loss and the decoded ids are cut at EOS, so the tokenizer's pad (or its
  EOS, when it has none, as HF pads Llama) is used whatever the checkpoint says."""
  ckpt = checkpoint_eos_ids(path)
  if ckpt and tokenizer.eos_id not in ckpt:
    raise ValueError(
        f'the tokenizer ({tokenizer_name}) has EOS id {tokenizer.eos_id} but the checkpoint {path} has '
        f'eos_token_id {ckpt[0] if len(ckpt) == 1 else ckpt} (config.json / generation_config.json): labels would '
        'end in a token the model was not trained to stop on. Use the checkpoint\'s own tokenizer '
        f'(model.tokenizer=\'\'), or, to teach the model a new stop token (a chat template on a base model), '
        f'add {tokenizer.eos_id} to eos_token_id in {path}/generation_config.json')


def from_pretrained(path: str, dtype=jnp.float32, param_dtype=None, **overrides):
  """Builds our model from an HF checkpoint directory.

  dtype: compute dtype; param_dtype: storage dtype (default = dtype). overrides: fields of the family
  config to change (e.g. scan_layers=False, remat='full', dropout_rate=0.0).
  Raises ValueError naming the tensor on a missing, unexpected or wrong-shape tensor.
  """
  param_dtype = dtype if param_dtype is None else param_dtype
  hf_cfg = read_config(path)
  fam = family(hf_cfg.get('model_type', ''))
  ckpt = _Checkpoint(path)
  cfg = fam.config_from_hf(hf_cfg, ckpt.names())
  if overrides:
    cfg = dataclasses.replace(cfg, **overrides)
  abstract = nnx.eval_shape(lambda: fam.build(cfg, dtype, param_dtype, nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  flat = dict(nnx.to_flat_state(state))
  values = load_params(ckpt, fam.hf_table(cfg), flat, getattr(fam, 'IGNORED', ()))
  new = nnx.from_flat_state([(p, v.replace(values[p]) if p in values else v) for p, v in flat.items()])
  return nnx.merge(graphdef, new)


def load_params(ckpt: _Checkpoint, table: Sequence[Row], flat: dict, ignored=()) -> dict:
  """Reads every Row of `table` into arrays shaped like `flat` (our path -> abstract Variable)."""
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

def save_pretrained(model, path: str, *, max_shard_size: Optional[int] = None, dtype=None):
  """Writes config.json + model.safetensors (or shards + index) that transformers loads.

  max_shard_size: bytes per shard (None = one file). dtype: numpy dtype to write (default: the params').
  """
  cfg = model.config
  fam = family(cfg.model_type)
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(fam.config_to_hf(cfg), f, indent=2, sort_keys=True)
  flat = {p: v for p, v in nnx.to_flat_state(nnx.state(model))}
  tensors = {}
  for row in fam.hf_table(cfg):
    arr = np.asarray(jax.device_get(flat[row.path][...]))
    if row.layer is not None:
      arr = arr[row.layer]
    arr = np.ascontiguousarray(TRANSFORMS[row.transform][1](arr))
    tensors[row.hf] = arr.astype(dtype) if dtype is not None else arr
  _write(tensors, path, max_shard_size)


def _write(tensors: dict, path: str, max_shard_size: Optional[int]):
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


# --- the registry: HF model_type -> family module --------------------------------------------------
# At the bottom because the families import Row / layer_rows from here.
from slt_jax.models import bart, decoder, t5  # noqa: E402

FAMILIES = {
    't5': t5, 'mt5': t5,
    'bart': bart, 'mbart': bart,
    'llama': decoder, 'mistral': decoder, 'qwen2': decoder, 'gemma': decoder,
}
