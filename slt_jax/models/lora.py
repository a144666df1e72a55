"""LoRA / QLoRA adapters on the HF-family backbones, in HF PEFT's file format.

  apply_lora(lm, LoraConfig(r=16, lora_alpha=32, target_modules=('q_proj', 'v_proj')), quantize='nf4', rngs=..)
  save_adapter(model, dir)        # adapter_config.json + adapter_model.safetensors: peft.PeftModel loads it
  load_adapter(model, dir)        # a PEFT adapter (ours, or one trained in PyTorch)
  merge_adapter(model)            # folds the adapters in: save_pretrained then writes a plain HF checkpoint
  from_pretrained(base_dir, adapter=peft_dir)

Targets are HF module names, matched with PEFT's rules (a list: the name or its last dotted parts; a string:
a regex over the whole name) against the family's HF name table, so only the backbone's Linear layers can be
adapted (never the pose encoder's own attention). Each targeted nnx.Linear becomes a LoRALinear that keeps
the Linear's parameter names (kernel, bias), so the HF table still maps it. Scanned layer stacks keep their
leading 'layers' axis on the adapters too (lora_a [L, in, r]).

QLoRA: with `quantize`, every Linear of the backbone except lm_head (bitsandbytes' choice) gets a frozen
qwix QArray kernel (NF4 or int8, one scale per `block_size` inputs of each output column), dequantized to
the compute dtype inside the layer; the other frozen weights are stored in `base_dtype`.

Why qwix only quantizes here (qwix.LoraProvider / apply_lora_to_model do not serve this model):
- they crash on nnx.scan'd layer stacks (qwix puts an nnx.Rngs on every module, which nnx.scan then tries to
  slice, and it creates the adapters inside the scan body);
- they intercept one method (`__call__`): start_decode / decode_step would run silently without adapters;
- their LoRA dropout needs rngs stored in the modules, which a pure jitted train step cannot advance.

Dropout: active inside `dropout_rngs(lm, rngs)` (the SLT models enter it for teacher forcing); each adapted kernel
and layer draws its own mask from one key per call.
"""
import contextlib
import contextvars
import dataclasses
import functools
import json
import math
import os
import re
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import qwix
from flax import nnx
from flax.nnx.nn import dtypes as nnx_dtypes
from safetensors import safe_open
from safetensors.numpy import save_file

from slt_jax.models import hf, registry
from slt_jax.models import layers as L

CONFIG_FILE = 'adapter_config.json'
WEIGHTS_FILE = 'adapter_model.safetensors'
POSE_FILE = 'slt_pose_encoder.safetensors'  # our addition: the SLT model's trained parameters outside `lm`
PREFIX = 'base_model.model.'                # PEFT's prefix of the wrapped model's module names
QTYPES = {'nf4': 'nf4', 'int8': jnp.int8}


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """The LoRA fields of PEFT's adapter_config.json. target_modules: HF module names (tuple) or a regex."""
  r: int
  lora_alpha: float
  target_modules: Union[tuple, str]
  lora_dropout: float = 0.0
  use_rslora: bool = False  # scaling alpha / sqrt(r) instead of alpha / r

  @property
  def scaling(self) -> float:
    return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

  @classmethod
  def from_config(cls, lora_config) -> 'LoraConfig':
    """From config.model.lora_config (r, lora_alpha, lora_dropout, target_modules)."""
    t = lora_config.target_modules
    return cls(r=int(lora_config.r), lora_alpha=float(lora_config.lora_alpha),
               target_modules=t if isinstance(t, str) else tuple(sorted(t)),
               lora_dropout=float(lora_config.get('lora_dropout', 0.0)))

  @classmethod
  def from_peft(cls, d: dict) -> 'LoraConfig':
    """From a PEFT adapter_config.json dict; raises on the options we do not implement."""
    if d.get('peft_type', 'LORA') != 'LORA':
      raise ValueError(f"adapter peft_type {d.get('peft_type')!r}: only LORA is supported")
    unsupported = {k: d[k] for k in ('rank_pattern', 'alpha_pattern', 'layers_to_transform', 'modules_to_save',
                                     'use_dora', 'layers_pattern') if d.get(k)}
    if d.get('bias', 'none') != 'none':
      unsupported['bias'] = d['bias']
    if unsupported:
      raise NotImplementedError(f'PEFT adapter options not supported: {unsupported}')
    t = d['target_modules']
    return cls(r=int(d['r']), lora_alpha=float(d['lora_alpha']),
               target_modules=t if isinstance(t, str) else tuple(sorted(t)),
               lora_dropout=float(d.get('lora_dropout', 0.0)), use_rslora=bool(d.get('use_rslora', False)))

  def to_peft(self, task_type: str, base_model_name_or_path: Optional[str] = None) -> dict:
    t = self.target_modules
    return dict(peft_type='LORA', task_type=task_type, r=self.r, lora_alpha=self.lora_alpha,
                lora_dropout=self.lora_dropout, target_modules=t if isinstance(t, str) else list(t),
                bias='none', fan_in_fan_out=False, use_rslora=self.use_rslora, use_dora=False,
                init_lora_weights=True, modules_to_save=None, layers_to_transform=None, rank_pattern={},
                alpha_pattern={}, inference_mode=True, base_model_name_or_path=base_model_name_or_path)


class QuantizedWeight(nnx.Variable):
  """The integer codes of a frozen quantized kernel (int8, or NF4 indices two per byte). Never trained."""


class QuantScale(nnx.Variable):
  """Per-block scales of a QuantizedWeight [..., in // block, out]. Never trained."""


class LoRAIndex(nnx.Variable):
  """Layer number of an adapted kernel (a [L] vector in a scanned stack): decorrelates dropout masks."""


# --- dropout -----------------------------------------------------------------------------------------

_DROPOUT_KEY = contextvars.ContextVar('slt_lora_dropout_key', default=None)


@contextlib.contextmanager
def dropout_rngs(lm, rngs: Optional[nnx.Rngs]):
  """Adapter dropout is on inside this block when `rngs` (a 'dropout' stream) is given and `lm` has adapters
  with lora_dropout > 0; one key is drawn then, nothing otherwise."""
  cfg = getattr(lm, 'lora', None)
  key = rngs.dropout() if rngs is not None and cfg is not None and cfg.lora_dropout > 0 else None
  token = _DROPOUT_KEY.set(key)
  try:
    yield
  finally:
    _DROPOUT_KEY.reset(token)


# --- the layer -----------------------------------------------------------------------------------------

def _names(var) -> Optional[tuple]:
  return var.get_metadata().get('out_sharding') if var is not None else None


def _variable(cls, value, names):
  return cls(value, out_sharding=tuple(names), eager_sharding=False) if names else cls(value)


@functools.partial(jax.jit, static_argnames=('qtype', 'block_size', 'scale_dtype'))
def quantize_kernel(w: jax.Array, qtype: str, block_size: int, scale_dtype) -> tuple[jax.Array, jax.Array]:
  """w [..., in, out] -> (codes, scales [..., in // block, out]) with qwix.quantize.

  codes: int8 [..., in, out], or NF4 indices packed two per byte, uint8 [..., in / 2, out] (pack_nf4; uint4
  [..., in, out] when `in` is odd). One absmax scale per block of `block_size` inputs (its gcd with `in` when
  it does not divide) per output column. Runs over slices of at most 512 columns (lax.map), so NF4's
  per-element bucket search never needs more than a slice's worth of temporaries.
  """
  *lead, n_in, n_out = w.shape
  block, chunk = math.gcd(n_in, block_size), math.gcd(n_out, 512)
  n = n_out // chunk
  cols = w.reshape(-1, n_in, n, chunk).transpose(0, 2, 1, 3).reshape(-1, n_in, chunk)

  def one(x):
    q = qwix.quantize(x.astype(jnp.float32), QTYPES[qtype], channelwise_axes=(1,), tiled_axes={0: block})
    return q.qvalue, q.scale.astype(scale_dtype)
  codes, scales = jax.lax.map(one, cols)
  back = lambda a: a.reshape(-1, n, a.shape[1], chunk).transpose(0, 2, 1, 3).reshape(*lead, a.shape[1], n_out)
  codes, scales = back(codes), back(scales)
  if qtype == 'nf4' and n_in % 2 == 0:
    codes = pack_nf4(codes)
  return codes, scales


def pack_nf4(codes: jax.Array) -> jax.Array:
  """uint4 codes [..., in, out] -> uint8 [..., in / 2, out]: rows 2i (low nibble) and 2i + 1 (high nibble).

  We pack ourselves rather than keep uint4 arrays: XLA's CPU backend unpacks a whole stacked uint4 parameter
  to bytes before the layer loop (1 byte per weight), whereas unpacking a uint8 slice stays inside the loop.
  """
  c = codes.astype(jnp.uint8)
  return c[..., 0::2, :] | (c[..., 1::2, :] << 4)


def unpack_nf4(packed: jax.Array) -> jax.Array:
  """uint8 [..., in / 2, out] -> uint8 codes [..., in, out] (the inverse of pack_nf4)."""
  codes = jnp.stack([packed & 0xF, packed >> 4], axis=-2)
  return codes.reshape(*packed.shape[:-2], 2 * packed.shape[-2], packed.shape[-1])


class LoRALinear(nnx.Module):
  """An nnx.Linear with a frozen kernel (float, or a qwix NF4 / int8 QArray) and an optional adapter:

    y = x W + b + dropout(x) A B * scaling         A = lora_a [in, r], B = lora_b [r, out]

  (PEFT's lora_A.weight is A.T, lora_B.weight is B.T.) Built from an nnx.Linear by `apply_lora`; without
  quantization or adapter it computes exactly what the Linear did. Leading axes of the kernel (a scanned
  stack, [L, in, out]) carry over to every parameter here. `hf_names`: ((layer or None, HF module name),
  ...) of the adapted kernels, for the PEFT files.
  """

  def __init__(self, linear: nnx.Linear):
    self.kernel, self.bias = linear.kernel, linear.bias
    self.kernel_shape = tuple(linear.kernel.shape)  # [..., in, out], whatever storage the kernel gets later
    self.dtype, self.precision = linear.dtype, linear.precision
    self.qtype = None
    # Filled later with Variables (or left None): declared as data for NNX.
    self.kernel_q, self.kernel_scale = nnx.data(None), nnx.data(None)
    self.lora_a, self.lora_b, self.lora_index = nnx.data(None), nnx.data(None), nnx.data(None)
    self.scaling, self.dropout, self.uid, self.hf_names = 0.0, 0.0, 0, ()

  # -- building ---------------------------------------------------------------------------------------
  def quantize(self, qtype: str, block_size: int, scale_dtype):
    """Replaces the float kernel by qwix codes + scales (dequantized to scale_dtype in the forward pass)."""
    names = _names(self.kernel)
    codes, scales = quantize_kernel(self.kernel[...], qtype, block_size, jnp.dtype(scale_dtype))
    self.kernel_q, self.kernel_scale = _variable(QuantizedWeight, codes, names), _variable(QuantScale, scales, names)
    self.kernel, self.qtype = None, qtype

  def add_adapter(self, rank: int, scaling: float, dropout: float, *, uid: int, hf_names: Sequence[tuple],
                  layer_index, param_dtype, rngs: nnx.Rngs):
    """A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming_uniform(a=sqrt(5))), B = 0: the delta starts at 0."""
    *lead, n_in, n_out = self.kernel_shape
    names = _names(self.kernel if self.kernel is not None else self.kernel_q)
    lead_names, in_name, out_name = (names[:-2], names[-2], names[-1]) if names else ((), None, None)
    bound = 1.0 / math.sqrt(n_in)
    a = jax.random.uniform(rngs.params(), (*lead, n_in, rank), param_dtype, -bound, bound)
    self.lora_a = _variable(nnx.LoRAParam, a, names and (*lead_names, in_name, None))
    self.lora_b = _variable(nnx.LoRAParam, jnp.zeros((*lead, rank, n_out), param_dtype),
                            names and (*lead_names, None, out_name))
    self.lora_index = _variable(LoRAIndex, jnp.asarray(layer_index, jnp.uint32), names and lead_names)
    self.scaling, self.dropout, self.uid, self.hf_names = float(scaling), float(dropout), int(uid), tuple(hf_names)

  def merge(self):
    """Folds the adapter into a float kernel (dequantized first) and drops the adapter: a plain Linear."""
    w = self.base_kernel()
    dtype = w.dtype
    if self.lora_a is not None:
      delta = jnp.matmul(self.lora_a[...].astype(jnp.float32), self.lora_b[...].astype(jnp.float32))
      w = (w.astype(jnp.float32) + delta * self.scaling).astype(dtype)
    names = _names(self.kernel if self.kernel is not None else self.kernel_q)
    self.kernel = _variable(nnx.Param, w, names)
    self.kernel_q = self.kernel_scale = self.qtype = None
    self.lora_a = self.lora_b = self.lora_index = None
    self.scaling, self.dropout, self.hf_names = 0.0, 0.0, ()

  # -- forward ----------------------------------------------------------------------------------------
  def base_kernel(self) -> jax.Array:
    if self.qtype is None:
      return self.kernel[...]
    codes, scales = self.kernel_q[...], self.kernel_scale[...]
    if codes.dtype == jnp.uint8:  # packed NF4
      codes = unpack_nf4(codes)
    return qwix.dequantize(qwix.QArray(codes, scales, None, QTYPES[self.qtype]))

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., in] -> [..., out]."""
    bias = self.bias[...] if self.bias is not None else None
    x, kernel, bias = nnx_dtypes.promote_dtype((x, self.base_kernel(), bias), dtype=self.dtype)
    dims = (((x.ndim - 1,), (0,)), ((), ()))
    y = jax.lax.dot_general(x, kernel, dims, precision=self.precision)
    if bias is not None:
      y += jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
    if self.lora_a is None:
      return y
    h = x
    key = _DROPOUT_KEY.get()
    if key is not None and self.dropout > 0:
      key = jax.random.fold_in(jax.random.fold_in(key, self.uid), self.lora_index[...])
      keep = L.dropout_keep(key, h.shape, self.dropout)
      h = jnp.where(keep, h / (1.0 - self.dropout), 0).astype(h.dtype)
    a, b = self.lora_a[...].astype(h.dtype), self.lora_b[...].astype(h.dtype)
    hd = jax.lax.dot_general(h, a, dims, precision=self.precision)
    delta = jax.lax.dot_general(hd, b, dims, precision=self.precision)
    return y + delta * jnp.asarray(self.scaling, y.dtype)


def count_weights(state) -> int:
  """Number of weights in an nnx.State (or abstract one): packed NF4 codes (uint8 QuantizedWeight) hold two."""
  total = 0
  for _, v in nnx.to_flat_state(state):
    n = int(np.prod(v.shape, dtype=np.int64))
    total += 2 * n if isinstance(v, QuantizedWeight) and v.dtype == jnp.uint8 else n
  return total


# --- finding the backbone's Linear layers by HF name ---------------------------------------------------

def linear_modules(lm) -> dict:
  """Our module path -> ((layer index or None, HF module name), ...) of every HF Linear of the backbone."""
  out = {}
  for row in hf.family(lm.config.model_type).hf_table(lm.config):
    if row.path[-1] == 'kernel' and row.transform == 'T' and row.hf.endswith('.weight'):
      out.setdefault(row.path[:-1], []).append((row.layer, row.hf[:-len('.weight')]))
  return {p: tuple(v) for p, v in out.items()}


def matches(name: str, target_modules) -> bool:
  """PEFT's rule: a regex string matches the whole name; a list matches a name or its dotted suffix."""
  if isinstance(target_modules, str):
    if target_modules == 'all-linear':
      return name.split('.')[-1] != 'lm_head'
    return re.fullmatch(target_modules, name) is not None
  return any(name == t or name.endswith('.' + t) for t in target_modules)


def _get(module, key):
  return module[key] if isinstance(key, int) else getattr(module, key)


def _set(module, key, value):
  if isinstance(key, int):
    module[key] = value
  else:
    setattr(module, key, value)


def _wrap(lm, path) -> LoRALinear:
  parent = lm
  for key in path[:-1]:
    parent = _get(parent, key)
  lin = _get(parent, path[-1])
  if not isinstance(lin, LoRALinear):
    if not isinstance(lin, nnx.Linear):
      raise TypeError(f'{"/".join(map(str, path))} is a {type(lin).__name__}, not an nnx.Linear')
    lin = LoRALinear(lin)
    _set(parent, path[-1], lin)
  return lin


def lora_layers(lm) -> list:
  """(path, LoRALinear) of the backbone, adapted or not."""
  return [(p, m) for p, m in nnx.iter_modules(lm) if isinstance(m, LoRALinear)]


def apply_lora(lm, lora: Optional[LoraConfig], *, quantize: Optional[str] = None, block_size: int = 64,
               base_dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
  """Adds adapters to `lm` (a t5 / bart / decoder model with `.config`) in place; returns lm.

  lora: which Linear layers get adapters (None: none, e.g. only quantize). quantize: None | 'nf4' | 'int8',
  for every Linear except lm_head. base_dtype: storage dtype of the frozen float weights (None: unchanged).
  param_dtype: the adapters' dtype. The config is kept as `lm.lora` (static).
  """
  if getattr(lm, 'lora', None) is not None:
    raise ValueError('this model already has adapters (merge_adapter first)')
  if quantize is not None and quantize not in QTYPES:
    raise ValueError(f'quantize={quantize!r}; supported: {sorted(QTYPES)}')
  linears = linear_modules(lm)
  targets = {}
  if lora is not None:
    for path, entries in linears.items():
      hit = [(layer, name) for layer, name in entries if matches(name, lora.target_modules)]
      if hit and len(hit) != len(entries):
        raise NotImplementedError(
            f'target_modules {lora.target_modules!r} select some layers of the scanned stack at '
            f'{"/".join(map(str, path))} only; build the model with scan_layers=False for that')
      if hit:
        targets[path] = hit
    if not targets:
      names = sorted({n.split('.')[-1] for e in linears.values() for _, n in e})
      raise ValueError(f'target_modules {lora.target_modules!r} match no Linear of this {lm.config.model_type} '
                       f'model; its module names end in {names}')
  if quantize is not None:
    for path, entries in linears.items():
      if any(name.split('.')[-1] != 'lm_head' for _, name in entries):
        _wrap(lm, path).quantize(quantize, block_size, base_dtype or _kernel_dtype(lm, path))
  if base_dtype is not None:  # the other frozen float weights (after quantizing from full precision)
    frozen = nnx.state(lm, nnx.Param)
    nnx.update(lm, jax.tree.map(lambda x: x.astype(base_dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                                frozen))
  for uid, path in enumerate(sorted(targets, key=lambda p: tuple(map(str, p)))):
    hit = targets[path]
    layer_index = (np.arange(len(hit)) if hit[0][0] is not None
                   else next((k for k in path if isinstance(k, int)), 0))
    _wrap(lm, path).add_adapter(lora.r, lora.scaling, lora.lora_dropout, uid=uid, hf_names=hit,
                                layer_index=layer_index, param_dtype=param_dtype, rngs=rngs)
  lm.lora = lora
  return lm


def _kernel_dtype(lm, path):
  module = lm
  for key in path:
    module = _get(module, key)
  return module.kernel.dtype


def apply_from_config(lm, config, rngs: nnx.Rngs):
  """apply_lora as configured: model.lora_config, load_in_4bit / load_in_8bit, quant_block_size; frozen
  weights stored in the compute dtype (bf16 under mixed precision), adapters in model.dtype."""
  mc = config.model
  quantize = 'nf4' if mc.load_in_4bit else 'int8' if mc.load_in_8bit else None
  compute, param_dtype = L.dtypes(config)
  return apply_lora(lm, LoraConfig.from_config(mc.lora_config), quantize=quantize,
                    block_size=int(mc.get('quant_block_size', 64)), base_dtype=compute,
                    param_dtype=param_dtype, rngs=rngs)


# --- PEFT files ------------------------------------------------------------------------------------------

def _backbone(model):
  return model.lm if hasattr(model, 'lm') else model


def _task_type(lm) -> str:
  return registry.family(lm.config.model_type).peft_task_type


def _outside_lm(model) -> dict:
  """'a/b/c' -> array of the SLT model's trained parameters outside the backbone (the pose front end)."""
  if not hasattr(model, 'lm'):
    return {}
  state = nnx.state(model, nnx.All(nnx.Param, nnx.Not(nnx.PathContains('lm'))))
  return {'/'.join(map(str, p)): np.asarray(jax.device_get(v[...])) for p, v in nnx.to_flat_state(state)}


def save_adapter(model, path: str, base_model_name_or_path: Optional[str] = None):
  """Writes `path`/adapter_config.json + adapter_model.safetensors (float32), which
  peft.PeftModel.from_pretrained(hf_base, path) loads. An SLT model's pose front end / encoder goes to
  `path`/slt_pose_encoder.safetensors beside them (PEFT ignores it; load_adapter restores it)."""
  lm = _backbone(model)
  if getattr(lm, 'lora', None) is None:
    raise ValueError('the model has no adapters (apply_lora / load_adapter first)')
  tensors = {}
  for _, m in lora_layers(lm):
    if m.lora_a is None:
      continue
    a, b = (np.asarray(jax.device_get(v[...]), np.float32) for v in (m.lora_a, m.lora_b))
    for layer, name in m.hf_names:
      pick = (lambda x: x[layer]) if layer is not None else (lambda x: x)
      tensors[f'{PREFIX}{name}.lora_A.weight'] = np.ascontiguousarray(pick(a).T)
      tensors[f'{PREFIX}{name}.lora_B.weight'] = np.ascontiguousarray(pick(b).T)
  os.makedirs(path, exist_ok=True)
  save_file(tensors, os.path.join(path, WEIGHTS_FILE), metadata={'format': 'pt'})
  with open(os.path.join(path, CONFIG_FILE), 'w') as f:
    json.dump(lm.lora.to_peft(_task_type(lm), base_model_name_or_path), f, indent=2, sort_keys=True)
  pose = _outside_lm(model)
  if pose:
    save_file(pose, os.path.join(path, POSE_FILE))


def load_adapter(model, path: str, rngs: Optional[nnx.Rngs] = None, param_dtype=jnp.float32):
  """Loads a PEFT LoRA adapter directory into `model` (an SLT model or a bare backbone) in place; adds the
  adapters first when the backbone has none. Errors name the tensor that is missing, unused or misshapen."""
  lm = _backbone(model)
  with open(os.path.join(path, CONFIG_FILE)) as f:
    cfg = LoraConfig.from_peft(json.load(f))
  if getattr(lm, 'lora', None) is None:
    apply_lora(lm, cfg, param_dtype=param_dtype, rngs=rngs or nnx.Rngs(0))
  elif dataclasses.replace(lm.lora, lora_dropout=0.0) != dataclasses.replace(cfg, lora_dropout=0.0):
    raise ValueError(f'{path}: adapter config {cfg} differs from the model\'s {lm.lora}')
  used = set()
  with safe_open(os.path.join(path, WEIGHTS_FILE), 'np') as f:
    names = set(f.keys())

    def read(name, want):
      key = f'{PREFIX}{name}'
      if key not in names:
        raise ValueError(f'{path}: adapter file lacks tensor {key!r}')
      used.add(key)
      x = f.get_tensor(key).T
      if x.shape != tuple(want):
        raise ValueError(f'{path}: tensor {key!r} has shape {x.shape[::-1]}, expected {tuple(want)[::-1]}')
      return x

    for _, m in lora_layers(lm):
      if m.lora_a is None:
        continue
      for var, suffix in ((m.lora_a, 'lora_A.weight'), (m.lora_b, 'lora_B.weight')):
        value = np.array(jax.device_get(var[...]))
        for layer, name in m.hf_names:
          if layer is None:
            value = read(f'{name}.{suffix}', value.shape)
          else:
            value[layer] = read(f'{name}.{suffix}', value.shape[1:])
        var[...] = jnp.asarray(value, var.dtype)
  unused = sorted(names - used)
  if unused:
    raise ValueError(f'{path}: adapter tensors that match no adapted module: {unused[:5]}')
  pose_file = os.path.join(path, POSE_FILE)
  if hasattr(model, 'lm') and os.path.exists(pose_file):
    with safe_open(pose_file, 'np') as f:
      values = {k: f.get_tensor(k) for k in f.keys()}
    state = nnx.state(model, nnx.All(nnx.Param, nnx.Not(nnx.PathContains('lm'))))
    for p, v in nnx.to_flat_state(state):
      v[...] = jnp.asarray(values['/'.join(map(str, p))], v.dtype)
  return model


def merge_adapter(model):
  """Folds every adapter (and dequantizes every quantized kernel) into plain float kernels, in place; then
  hf.save_pretrained(model.lm) writes an ordinary HF checkpoint. Returns model."""
  lm = _backbone(model)
  for _, m in lora_layers(lm):
    m.merge()
  lm.lora = None
  return model


def from_pretrained(path: str, dtype=jnp.float32, param_dtype=None, *, adapter: Optional[str] = None,
                    **overrides):
  """hf.from_pretrained, plus a PEFT adapter directory loaded on top when `adapter` is given."""
  lm = hf.from_pretrained(path, dtype, param_dtype, **overrides)
  if adapter:
    load_adapter(lm, adapter, param_dtype=param_dtype or dtype)
  return lm
