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


def pre_activations(x: jax.Array, W_enc: jax.Array, b_enc: jax.Array) -> jax.Array:
  """x [..., D] -> float32 pre-activations [..., W] = x W_enc + b_enc. The input is cast to
  W_enc's dtype and the product accumulates in float32, so bf16 weights still compare to the
  threshold in float32."""
  pre = jnp.matmul(x.astype(W_enc.dtype), W_enc, preferred_element_type=jnp.float32)
  return pre + b_enc.astype(jnp.float32)


def codes(x: jax.Array, W_enc: jax.Array, b_enc: jax.Array, threshold: jax.Array) -> jax.Array:
  """The JumpReLU encode, defined once here (`sae.jumprelu.encode` calls it): x [..., D] ->
  codes f [..., W] in W_enc's dtype, f = relu(pre) * (pre > threshold), strict >."""
  pre = pre_activations(x, W_enc, b_enc)
  f = jnp.where(pre > threshold.astype(jnp.float32), jnp.maximum(pre, 0.0), 0.0)
  return f.astype(W_enc.dtype)


def sae_stats(x: jax.Array, W_enc: jax.Array, b_enc: jax.Array, threshold: jax.Array,
              weights: jax.Array) -> tuple[jax.Array, jax.Array]:
  """x [B, T, D], W_enc [D, W], b_enc and threshold [W], weights [B, T] -> (mass, fired), each
  [B, W] float32: mass = sum_t w_t f_t (code mass per row and feature), fired = sum_t w_t
  [f_t > 0] (tokens where a feature fires), with f = codes(x, ...) in W_enc's dtype."""
  codes_f32 = codes(x, W_enc, b_enc, threshold).astype(jnp.float32)  # [B, T, W]
  active = (codes_f32 > 0).astype(jnp.float32)
  sum_tokens = lambda a: jnp.einsum("bt,btw->bw", weights.astype(jnp.float32), a,
                                    precision=jax.lax.Precision.HIGHEST)
  return sum_tokens(codes_f32), sum_tokens(active)
