"""SAE statistics in plain JAX: the definition every fused kernel is tested against.

XLA writes the float32 pre-activations [B, T, W] and reads them again in the reductions (three
kernels on an H100: BENCHMARKS.md).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sae import jumprelu


def sae_stats(x: jax.Array, params: jumprelu.JumpReLUParams,
              weights: jax.Array) -> tuple[jax.Array, jax.Array]:
  """x [B, T, D], weights [B, T] -> (mass, fired), each [B, W] float32: mass = sum_t w_t f_t
  (code mass per row and feature), fired = sum_t w_t [f_t > 0] (tokens where a feature fires),
  with f = jumprelu.encode(params, x) in the params' dtype."""
  codes = jumprelu.encode(params, x).astype(jnp.float32)  # [B, T, W]
  active = (codes > 0).astype(jnp.float32)
  w = weights[..., None]
  return jnp.sum(w * codes, axis=1), jnp.sum(w * active, axis=1)
