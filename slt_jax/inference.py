"""A trained run's model for inference: its best (or a given) checkpoint restored, and the jitted decoder.

  model = inference.restore(config, workdir, tokenizer, pose_dim)          # config: run_config.for_inference
  ids = inference.make_decode_fn(model.graphdef, config.decode)(model.params, model.rest, poses, pose_mask)

Used by --mode=translate and --mode=eval (trainer.evaluate); nothing here imports the training loop.
"""
import dataclasses
from typing import Any

import jax
from flax import nnx

from slt_jax import decode as decode_lib
from slt_jax import default_config
from slt_jax.train import checkpoint as checkpoint_lib
from slt_jax.train import state as state_lib


@dataclasses.dataclass
class Restored:
  """A run's model with a checkpoint's trained parameters: nnx.merge(graphdef, params, rest) is the model."""
  mesh: jax.sharding.Mesh
  graphdef: Any
  params: Any                         # the checkpoint's trained variables (TrainState.params)
  rest: Any                           # the frozen ones (a LoRA base, training.freeze's parts from init_from)
  step: int                           # the checkpoint's step


def restore_checkpoint(config, workdir: str, target: Any, step: int | None = None):
  """(TrainState, step) of WORKDIR's best checkpoint (or `step`'s) read onto `target`'s shardings.

  Raises FileNotFoundError when WORKDIR holds none.
  """
  ckpt = checkpoint_lib.Checkpoints(workdir, keep=config.training.keep_checkpoints,
                                    best_metric=config.training.best_metric)
  restored = ckpt.restore_best(target, step)
  ckpt.close()
  if restored is None:
    raise FileNotFoundError(f'no checkpoint in {workdir}/best or {workdir}/checkpoints: train first')
  state, meta = restored
  return state, int(meta['step'])


def restore(config, workdir: str, tokenizer, pose_dim: int, step: int | None = None) -> Restored:
  """The model of `config` (the run's: run_config.for_inference) with WORKDIR's best checkpoint, or `step`'s.

  tokenizer: the run's (tokenizer.get_tokenizer(config, workdir, texts=[])); pose_dim: K * C.
  """
  default_config.validate_devices(config, jax.device_count(), jax.process_count())
  model = state_lib.build(config, workdir, tokenizer, pose_dim)
  state, restored_step = restore_checkpoint(config, workdir, model.state, step)
  return Restored(model.mesh, model.graphdef, state.params, model.rest, restored_step)


def make_decode_fn(graphdef, decode_config, seed: int = 0):
  """jit of `(params, rest, poses, pose_mask, corpus=None) -> ids i32[B, max_new_tokens]` decoding with
  config.decode; corpus i32[B]: the rows' corpora (batch['corpus'], for per-corpus prompts)."""
  decode_config = decode_config.to_dict()  # plain values, closed over as compile-time constants
  rng = jax.random.PRNGKey(seed) if decode_config.get('do_sample') else None

  @jax.jit
  def decode_fn(params, rest, poses, pose_mask, corpus=None):
    return decode_lib.generate(nnx.merge(graphdef, params, rest), poses, pose_mask, decode_config, rng,
                               corpus=corpus)
  return decode_fn
