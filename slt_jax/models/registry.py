"""The model families: one record per family, the one place that lists them and what each one is.

  fam = registry.family(model_type)          # e.g. 'mbart' -> the BART family; ValueError naming the known ones
  lm = fam.module.build(fam.module.config_from_hf(hf_config), dtype, param_dtype, rngs)

A family module (t5.py, bart.py, decoder.py; it imports layers and hf_io, never this registry) provides:
  config_from_hf(hf: dict, tensor_names: set[str] | None) -> cfg   (a frozen dataclass with `model_type`)
  config_to_hf(cfg) -> dict                                      (what goes into config.json)
  build(cfg, dtype, param_dtype, rngs) -> nnx.Module              (the module keeps `.config = cfg`)
  hf_table(cfg) -> list[hf_io.TensorMapping]                     (HF tensor <-> our parameter path)
  IGNORED: tuple of regexes of HF tensors that may be in a file and are not loaded (tied copies, buffers)
  arch_keys(hf: dict) -> (read, fixed)                           (the config.json keys it builds; hf.arch_problems)

Adding a family: its module, and one Family record in FAMILIES below.
"""
import dataclasses
import types

from slt_jax.models import bart, decoder, t5

SEQ2SEQ, CAUSAL = 'seq2seq', 'causal'


@dataclasses.dataclass(frozen=True)
class Family:
  """One family of HF checkpoints that one of our modules builds.

  name: the family (its module's name); module: the family module (the interface in the module docstring).
  kind: SEQ2SEQ (encoder-decoder: slt.Seq2SeqSLT) or CAUSAL (decoder-only: causal_slt.CausalSLT).
  model_types: the HF config.json `model_type`s it builds (config.model.family takes these).
  forced_eos: HF's generation forces EOS at the length limit (forced_eos_token_id, set by (m)BART
    checkpoints); decoding does the same.
  peft_task_type: the `task_type` of a PEFT adapter_config.json for it.
  hf_auto_class: the transformers Auto class of its checkpoints (the tests' oracles).
  """
  name: str
  module: types.ModuleType
  kind: str
  model_types: tuple
  forced_eos: bool
  peft_task_type: str
  hf_auto_class: str


FAMILIES = (
    Family('t5', t5, SEQ2SEQ, ('t5', 'mt5'), forced_eos=False, peft_task_type='SEQ_2_SEQ_LM',
           hf_auto_class='AutoModelForSeq2SeqLM'),
    Family('bart', bart, SEQ2SEQ, ('bart', 'mbart'), forced_eos=True, peft_task_type='SEQ_2_SEQ_LM',
           hf_auto_class='AutoModelForSeq2SeqLM'),
    Family('decoder', decoder, CAUSAL, ('llama', 'mistral', 'qwen2', 'gemma'), forced_eos=False,
           peft_task_type='CAUSAL_LM', hf_auto_class='AutoModelForCausalLM'),
)
_BY_MODEL_TYPE = {model_type: fam for fam in FAMILIES for model_type in fam.model_types}


def model_types(kind: str = '') -> list:
  """The HF model_types we build (sorted); only those of `kind` (SEQ2SEQ | CAUSAL) when given."""
  return sorted(t for t, fam in _BY_MODEL_TYPE.items() if not kind or fam.kind == kind)


def family(model_type: str) -> Family:
  """The Family that builds HF `model_type`; ValueError naming the known ones otherwise."""
  if model_type not in _BY_MODEL_TYPE:
    raise ValueError(f'unsupported model_type {model_type!r}; known: {model_types()}')
  return _BY_MODEL_TYPE[model_type]


def is_seq2seq(model_type: str) -> bool:
  """True for an encoder-decoder model_type, False for any other (decoder-only or unknown)."""
  fam = _BY_MODEL_TYPE.get(model_type)
  return fam is not None and fam.kind == SEQ2SEQ
