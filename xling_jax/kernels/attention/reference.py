"""Attention in plain JAX: the definition every fused kernel is tested against.

Scores [B, K, G, T, S] and their softmax are materialised in float32 (three passes over them
on a GPU: softcap + mask + max, sum, normalise).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# Large finite negative: a fully masked row (a padding query) yields a uniform softmax, not NaN.
MASK_VALUE = -2.3819763e38


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
              logit_softcap: float | None) -> jax.Array:
  """Grouped-query attention. q [B, T, K, G, H] (already scaled), k, v [B, S, K, H],
  mask [B, 1, 1, T, S] -> [B, T, K, G, H]. Scores and softmax in float32."""
  logits = jnp.einsum("btkgh,bskh->bkgts", q, k).astype(jnp.float32)
  if logit_softcap is not None:
    logits = jnp.tanh(logits / logit_softcap) * logit_softcap
  logits = jnp.where(mask, logits, MASK_VALUE)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bkgts,bskh->btkgh", probs, v)
