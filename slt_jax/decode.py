"""Autoregressive decoding over the models' incremental interface, jitted with `lax.while_loop`.

A model exposes `start_decode(poses, pose_mask, max_new_tokens) -> (logits f32[B, V], state)` and
`decode_step(state, tokens i32[B]) -> (logits, state)`; the state's leaves are batch-first. No tensorflow here.
"""
import jax
import jax.numpy as jnp
from flax import nnx


def greedy(model, poses, pose_mask, max_new_tokens: int):
  """Greedy decoding.

  Args:
    model: an SLT model (see the model contract).
    poses: f32[B, T, K, C]; pose_mask: bool[B, T].
    max_new_tokens: tokens generated at most (EOS included).
  Returns:
    i32[B, max_new_tokens]: generated ids; positions after EOS hold the pad id.
  """
  logits, state = model.start_decode(poses, pose_mask, max_new_tokens)
  # NNX modules must not be closed over by JAX control flow (an nnx.scan inside would see variables of a
  # foreign trace level): the model's variables travel in the loop carry and are merged inside the body.
  graphdef, variables = nnx.split(model)
  batch = poses.shape[0]
  eos, pad = model.eos_id, model.pad_id
  tokens = jnp.full((batch, max_new_tokens), pad, jnp.int32)

  def cond(carry):
    i, _, _, _, done, _ = carry
    return (i < max_new_tokens) & ~jnp.all(done)

  def step(variables, state, token):
    return nnx.merge(graphdef, variables).decode_step(state, token)

  def body(carry):
    i, logits, state, tokens, done, variables = carry
    next_token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    next_token = jnp.where(done, pad, next_token)
    tokens = tokens.at[:, i].set(next_token)
    done = done | (next_token == eos)
    logits, state = jax.lax.cond(i + 1 < max_new_tokens, step, lambda v, s, t: (logits, s),
                                 variables, state, next_token)
    return i + 1, logits, state, tokens, done, variables

  carry = (jnp.int32(0), logits, state, tokens, jnp.zeros((batch,), bool), variables)
  return jax.lax.while_loop(cond, body, carry)[3]
