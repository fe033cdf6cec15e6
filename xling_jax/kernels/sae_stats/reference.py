"""SAE statistics in plain JAX: the definition every fused kernel is tested against.

XLA writes the float32 pre-activations [B, T, W] and reads them again in the sums over tokens
(three reduction kernels on an H100: BENCHMARKS.md). The sums are written as weighted
contractions: XLA's CPU backend runs those as dots reading the codes in place, where
`sum(w[..., None] * codes, 1)` first wrote the broadcast weights out as another [B, T, W]
array (the analysis pass 4-7% faster on the 2-core CPU). HIGHEST precision: an accelerator
must not round the codes to bf16 in a float32 contraction.
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
  sum_tokens = lambda a: jnp.einsum("bt,btw->bw", weights.astype(jnp.float32), a,
                                    precision=jax.lax.Precision.HIGHEST)
  return sum_tokens(codes), sum_tokens(active)
