"""What both fused SAE-statistics kernels share: the step after one [tokens, features] tile of
pre-activations is ready, done where the tile is (registers or VMEM), never in memory.

It repeats `reference.codes` and `reference.sae_stats` operation for operation on the tile: the
strict float32 threshold test, the codes rounded to W_enc's dtype and back, then the
weighted sums. Only the order of the float additions differs (along D inside the matmul, along
T across tiles), so active sets agree wherever the pre-activations agree bit for bit.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def accumulate(pre: jax.Array, threshold: jax.Array, weights: jax.Array, codes_dtype,
               sums: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
  """pre [bt, bw] float32, threshold [1, bw] float32, weights [bt, 1]; sums = (mass, fired),
  each [1, bw] float32 -> the sums with this tile's tokens added."""
  f = jnp.where(pre > threshold, jnp.maximum(pre, 0.0), 0.0)
  f = f.astype(codes_dtype).astype(jnp.float32)
  active = (f > 0).astype(jnp.float32)
  mass, fired = sums
  return (mass + jnp.sum(weights * f, axis=0, keepdims=True),
          fired + jnp.sum(weights * active, axis=0, keepdims=True))
