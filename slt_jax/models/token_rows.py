"""Padding-free compute: the valid tokens of a padded [B, T] batch as compact rows [N, ...].

A transformer's position-wise layers (the q/k/v/o projections, the MLP, the norms, the LM head) do the same
work for a padding position as for a token. With model.padding_free they run on the valid tokens only,
gathered into N rows (N a static bound on their count, from the host); only the attention core goes back to
the padded [B, T, H, D] layout, where the masks live. This is the idea of "varlen" training and of HF's
DataCollatorWithFlattening, with the batch kept rectangular for attention.

The two maps between the layouts are partial permutations, each the transpose of the other, so each is the
other's gradient: both directions are gathers and no scatter-add appears in the backward pass.

  rows = TokenRows.from_mask(mask, n)     # mask bool[B, T], n >= mask.sum() (static)
  h = rows.gather(x)                      # [B, T, ...] -> [N, ...]; rows past the count are zero
  x = rows.scatter(h)                     # [N, ...] -> [B, T, ...]; padding positions are zero
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp


def _take(x: jax.Array, index: jax.Array) -> jax.Array:
  """x[index] along axis 0, zero where index is out of range (the filler / padding slots)."""
  return jnp.take(x, index, axis=0, mode='fill', fill_value=0)


@jax.custom_vjp
def _permute(x: jax.Array, index: jax.Array, inverse: jax.Array) -> jax.Array:
  """x[index] (zero where out of range), whose gradient is g[inverse]: `inverse` is `index`'s transpose."""
  return _take(x, index)


def _permute_fwd(x, index, inverse):
  return _take(x, index), inverse


def _permute_bwd(inverse, g):
  return _take(g, inverse), None, None  # the integer index arrays get no cotangent


_permute.defvjp(_permute_fwd, _permute_bwd)


class TokenCounts(NamedTuple):
  """Static bounds (Python ints, part of the compiled step's signature) on a batch's real pose frames and
  label tokens, from which a model derives its row counts N (slt_jax.train.step.padding_free_counts)."""
  frames: int
  labels: int


class TokenRows(NamedTuple):
  """Where the valid tokens of a [B, T] batch sit among N compact rows (row order: row-major positions).

  take: i32[N], the flat position b * T + t of each row; B * T (out of range: a zero row) past the count.
  put: i32[B, T], the row of each position; N (out of range: a zero position) at padding.
  """
  take: jax.Array
  put: jax.Array

  @classmethod
  def from_mask(cls, mask: jax.Array, num_rows: int) -> 'TokenRows':
    """mask: bool[B, T] (True = a token), num_rows: static N >= the number of tokens.

    N is a bound the caller guarantees (the count itself is data, not a shape); tokens past it would be
    dropped, so callers derive N from the host batch (slt_jax.train.step.padding_free_counts).
    """
    flat = mask.reshape(-1)
    put = jnp.where(flat, jnp.cumsum(flat.astype(jnp.int32)) - 1, num_rows).astype(jnp.int32)
    take = jnp.full((num_rows,), flat.size, jnp.int32).at[put].set(
        jnp.arange(flat.size, dtype=jnp.int32), mode='drop')
    return cls(take, put.reshape(mask.shape))

  def gather(self, x: jax.Array) -> jax.Array:
    """[B, T, ...] -> [N, ...]: the tokens' rows, then zero rows."""
    b, t = self.put.shape
    return _permute(x.reshape((b * t,) + x.shape[2:]), self.take, self.put.reshape(-1))

  def scatter(self, rows: jax.Array) -> jax.Array:
    """[N, ...] -> [B, T, ...]: each token's row at its position, zeros at padding."""
    out = _permute(rows, self.put.reshape(-1), self.take)
    return out.reshape(self.put.shape + rows.shape[1:])
