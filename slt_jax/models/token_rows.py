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

On a mesh the batch axis is split over S devices (data x fsdp): with `shards=S` each block of B / S batch rows
gathers its own n rows (n >= the tokens of any block), rows [s * n, (s + 1) * n) of the N = S * n. Both maps
are then batched over the blocks (a gather with a batch dimension, which XLA partitions along it), so no
token row moves between devices; the row layout stays split over the batch's axes for the layers after it.
"""
from typing import Any, NamedTuple, Optional

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


def _pin(x: jax.Array, blocks) -> jax.Array:
  """x [S, ...] with its block axis on the devices of `blocks` (a sharding of the leading axis; None: as is)."""
  return x if blocks is None else jax.lax.with_sharding_constraint(x, blocks)


class TokenCounts(NamedTuple):
  """Static bounds (Python ints, part of the compiled step's signature) on a batch's real pose frames and
  label tokens, from which a model derives its row counts N (slt_jax.train.step.padding_free_counts).

  shards: the blocks the batch is split into (the devices of its mesh axes); frames and labels then bound
  each block's tokens (B / shards batch rows), and the models gather rows within each block.
  blocks: where the blocks live (the batch's NamedSharding; it places an array's leading axis), or None: the
  gathers pin each block's positions and rows to its devices, so XLA never moves rows between them.
  """
  frames: int
  labels: int
  shards: int = 1
  blocks: Optional[Any] = None


class TokenRows(NamedTuple):
  """Where the valid tokens of a [B, T] batch sit among N = S * n compact rows: S blocks of B / S batch rows
  (S = 1 without a mesh), each with n rows (row order: row-major positions within the block).

  take: i32[S, n], the flat position (b mod B / S) * T + t of each row within its block; B / S * T (out of
    range: a zero row) past the block's count.
  put: i32[B, T], the row of each position within its block; n (out of range: a zero position) at padding.
  """
  take: jax.Array
  put: jax.Array
  blocks: Optional[Any] = None  # TokenCounts.blocks: the sharding of the block axis (None: no constraint)

  @classmethod
  def from_mask(cls, mask: jax.Array, num_rows: int, shards: int = 1, blocks=None) -> 'TokenRows':
    """mask: bool[B, T] (True = a token), num_rows: static n >= the number of tokens in each of the `shards`
    blocks of B / shards batch rows (shards divides B); blocks: TokenCounts.blocks.

    n is a bound the caller guarantees (the count itself is data, not a shape); tokens past it would be
    dropped, so callers derive it from the host batch (slt_jax.train.step.padding_free_counts).
    """
    if mask.shape[0] % shards:
      raise ValueError(f'TokenRows: {shards} shards do not divide the batch of {mask.shape[0]} rows')
    flat = _pin(mask.reshape(shards, -1), blocks)
    put = jnp.where(flat, jnp.cumsum(flat.astype(jnp.int32), axis=1) - 1, num_rows).astype(jnp.int32)
    positions = jnp.arange(flat.shape[1], dtype=jnp.int32)
    take = jax.vmap(lambda p: jnp.full((num_rows,), flat.shape[1], jnp.int32).at[p].set(positions, mode='drop'))
    return cls(_pin(take(put), blocks), put.reshape(mask.shape), blocks)

  def gather(self, x: jax.Array) -> jax.Array:
    """[B, T, ...] -> [N, ...]: each block's tokens' rows, then its zero rows."""
    shards, n = self.take.shape
    blocks = _pin(x.reshape((shards, -1) + x.shape[2:]), self.blocks)
    rows = _pin(jax.vmap(_permute)(blocks, self.take, self.put.reshape(shards, -1)), self.blocks)
    return rows.reshape((shards * n,) + x.shape[2:])

  def scatter(self, rows: jax.Array) -> jax.Array:
    """[N, ...] -> [B, T, ...]: each token's row at its position, zeros at padding."""
    shards, n = self.take.shape
    blocks = _pin(rows.reshape((shards, n) + rows.shape[1:]), self.blocks)
    out = _pin(jax.vmap(_permute)(blocks, self.put.reshape(shards, -1), self.take), self.blocks)
    return out.reshape(self.put.shape + rows.shape[1:])
