"""Pose front end: keypoint sequences -> encoder input embeddings.

poses f32[B, T, K, C] -> flatten [B, T, K*C] -> linear (hidden) -> GELU -> n x (strided temporal conv,
kernel 5, GELU) -> linear (d_model) -> dropout. Each conv downsamples time by `conv_stride`.

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


class PoseFrontEnd(nnx.Module):

  def __init__(self, pose_dim: int, d_model: int, *, hidden: int = 256, conv_layers: int = 1,
               conv_stride: int = 2, dropout: float = 0.1, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.proj = L.dense(pose_dim, hidden, ('pose_in', None), use_bias=True, **kw)
    self.convs = nnx.List([
        nnx.Conv(hidden, hidden, kernel_size=(KERNEL,), strides=(conv_stride,),
                 padding=(((KERNEL - 1) // 2, KERNEL - 1 - (KERNEL - 1) // 2),),
                 kernel_init=L.partitioned(nnx.initializers.lecun_normal(), (None, None, None)),
                 bias_init=L.partitioned(nnx.initializers.zeros_init(), (None,)), **kw)
        for _ in range(conv_layers)])
    self.stride = conv_stride
    self.out = L.dense(hidden, d_model, (None, 'embed'), use_bias=True, **kw)
    self.dropout = nnx.Dropout(dropout)

  def __call__(self, poses: jax.Array, pose_mask: jax.Array,
               rngs: Optional[nnx.Rngs] = None) -> tuple[jax.Array, jax.Array]:
    """poses: f32[B, T, K, C], pose_mask: bool[B, T] -> (x [B, T', d_model], mask bool[B, T']).

    T' = ceil(T / stride**conv_layers). Padding positions of x are zero.
    """
    b, t = poses.shape[:2]
    mask = pose_mask.astype(bool)
    x = jax.nn.gelu(self.proj(poses.reshape(b, t, -1)))
    for conv in self.convs:
      x = conv(jnp.where(mask[..., None], x, 0))
      mask = mask[:, ::self.stride]
      x = jax.nn.gelu(x)
    x = self.out(x)
    x = self.dropout(x, rngs=rngs, deterministic=rngs is None)
    return jnp.where(mask[..., None], x, 0), mask
