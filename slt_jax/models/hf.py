"""Whole HF checkpoints <-> our NNX models, for every family: loading, saving, config.json checks.

Above the families: registry.family(model_type) says which module builds a checkpoint (the family interface is
in registry.py), hf_io reads and writes the files, and the family's `hf_table` (hf_io.TensorMapping records)
says which HF tensor is which of our parameters.

Loading is tensor by tensor (hf_io.Checkpoint): the model is built abstractly (nnx.eval_shape) and each
parameter is filled from the file, so a checkpoint is never in memory twice. pytorch_model.bin is never
unpickled.
"""
import dataclasses
import difflib
import json
import os
from typing import Optional

import jax.numpy as jnp
from absl import logging
from flax import nnx

from slt_jax.models import hf_io, registry
from slt_jax.models.hf_io import checkpoint_eos_ids, read_config  # noqa: F401  (hf.read_config: the public name)


def family(model_type: str):
  """The family module that builds HF `model_type` (registry.family(model_type).module)."""
  return registry.family(model_type).module


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


# --- special token ids: the tokenizer's, or checked against the checkpoint's -------------------------

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


# --- loading ---------------------------------------------------------------------------------------

def from_pretrained(path: str, dtype=jnp.float32, param_dtype=None, **overrides):
  """Builds our model from an HF checkpoint directory.

  dtype: compute dtype; param_dtype: storage dtype (default = dtype). overrides: fields of the family
  config to change (e.g. scan_layers=False, remat='full', dropout_rate=0.0).
  Raises ValueError naming the tensor on a missing, unexpected or wrong-shape tensor.
  """
  param_dtype = dtype if param_dtype is None else param_dtype
  hf_cfg = read_config(path)
  fam = family(hf_cfg.get('model_type', ''))
  ckpt = hf_io.Checkpoint(path)
  cfg = fam.config_from_hf(hf_cfg, ckpt.names())
  if overrides:
    cfg = dataclasses.replace(cfg, **overrides)
  abstract = nnx.eval_shape(lambda: fam.build(cfg, dtype, param_dtype, nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  flat = dict(nnx.to_flat_state(state))
  values = hf_io.load_params(ckpt, fam.hf_table(cfg), flat, getattr(fam, 'IGNORED', ()))
  new = nnx.from_flat_state([(p, v.replace(values[p]) if p in values else v) for p, v in flat.items()])
  return nnx.merge(graphdef, new)


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
  flat = {p: v[...] for p, v in nnx.to_flat_state(nnx.state(model))}
  hf_io.write_safetensors(hf_io.hf_tensors(fam.hf_table(cfg), flat, dtype), path, max_shard_size)
