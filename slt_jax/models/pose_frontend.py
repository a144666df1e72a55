"""Pose front end: keypoint sequences -> encoder input embeddings.

poses f32[B, T, K, C] -> flatten [B, T, K*C] -> linear (hidden) -> GELU -> conv_layers x residual temporal
conv blocks -> linear (d_model) -> + sinusoidal positions (optional) -> dropout. A block is h <- RMSNorm(skip(h) + GELU(conv(h))) with kernel 5;
the first block's conv has stride `conv_stride` (its skip takes every stride-th frame), the rest stride 1,
so the whole front end downsamples time by `conv_stride`.

Why residual, normalised convs: the sign-level features the encoder needs are local in time (a sign is
~10-20 frames). A stack of convs learns them far faster than the encoder's attention does from per-frame
projections, and the residual + norm keep a deeper stack trainable at a high learning rate.

Why absolute positions: T5's relative position bias lives in self-attention only, so without them the
encoder output does not say which sign came first, and the decoder's cross-attention cannot tell a
subject from an object when the sign order (not the sign) carries it.

Padding frames never leak into real ones: the hidden states of padding frames are zeroed before every conv,
and the conv pads explicitly by (k-1)//2 on the left, so output frame j always covers input frames
[j*s - 2, j*s + 2] whatever the padded length; the new mask is the input mask at j*s.
"""
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from slt_jax.models import layers as L

KERNEL = 5


class ConvBlock(nnx.Module):
  """Residual temporal conv: h [B, T, H] -> RMSNorm(h[:, ::stride] + GELU(conv(h))) [B, ceil(T/stride), H]."""

  def __init__(self, hidden: int, stride: int, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.conv = nnx.Conv(hidden, hidden, kernel_size=(KERNEL,), strides=(stride,),
                         padding=(((KERNEL - 1) // 2, KERNEL - 1 - (KERNEL - 1) // 2),),
                         kernel_init=L.partitioned(nnx.initializers.lecun_normal(), (None, None, None)),
                         bias_init=L.partitioned(nnx.initializers.zeros_init(), (None,)),
                         dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm = L.RMSNorm(hidden, dtype=dtype, param_dtype=param_dtype)
    self.stride = stride

  def __call__(self, h: jax.Array) -> jax.Array:
    return self.norm(h[:, ::self.stride] + jax.nn.gelu(self.conv(h)))


class PoseFrontEnd(nnx.Module):

  def __init__(self, pose_dim: int, d_model: int, *, hidden: int = 256, conv_layers: int = 1,
               conv_stride: int = 2, positions: bool = False, dropout: float = 0.1, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.proj = L.dense(pose_dim, hidden, ('pose_in', None), use_bias=True, rngs=rngs, **kw)
    self.blocks = nnx.List([ConvBlock(hidden, conv_stride if i == 0 else 1, rngs=rngs, **kw)
                            for i in range(conv_layers)])
    self.out = L.dense(hidden, d_model, (None, 'embed'), use_bias=True, rngs=rngs, **kw)
    self.positions = positions
    self.dropout = L.Dropout(dropout)

  def max_outputs(self, num_frames: int, batch_size: int) -> int:
    """A bound on the real output positions of a batch with num_frames real frames over batch_size rows whose
    masks are prefixes (frames, then padding): a block of stride s keeps ceil(n_b / s) of row b's n_b, and
    the sum of those is at most (num_frames + batch_size * (s - 1)) // s."""
    for block in self.blocks:
      num_frames = (num_frames + batch_size * (block.stride - 1)) // block.stride
    return num_frames

  def __call__(self, poses: jax.Array, pose_mask: jax.Array,
               rngs: Optional[nnx.Rngs] = None) -> tuple[jax.Array, jax.Array]:
    """poses: f32[B, T, K, C], pose_mask: bool[B, T] -> (x [B, T', d_model], mask bool[B, T']).

    T' = ceil(T / conv_stride) (T when conv_layers == 0). Padding positions of x are zero.
    """
    b, t = poses.shape[:2]
    mask = pose_mask.astype(bool)
    x = jax.nn.gelu(self.proj(poses.reshape(b, t, -1)))
    for block in self.blocks:
      x = block(jnp.where(mask[..., None], x, 0))
      mask = mask[:, ::block.stride]
    x = self.out(x)
    if self.positions:
      x = x + L.sinusoid_positions(x.shape[1], x.shape[-1]).astype(x.dtype)[None]
    x = self.dropout(x, rngs)
    return jnp.where(mask[..., None], x, 0), mask
