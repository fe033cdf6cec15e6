"""Input normalisation by one fixed scalar per layer, and its folding into the saved weights.

Training sees x' = s x with s = 1 / sqrt(E ||x||^2), so E ||x'||^2 = 1: the bandwidth ε = 0.001
and the threshold init are tuned for that scale (dictionary_learning's `get_norm_factor`, after
Gemma Scope's section 3.1). s is estimated once, from the first batches, and then fixed.

Folding (dictionary_learning's `scale_biases(1/s)`): with n = 1/s, the raw-input SAE is

    W_enc, W_dec unchanged;  b_enc <- n b_enc;  θ <- n θ;  b_dec <- n b_dec

because, for raw x,  pre = x W_enc + n b_enc = n (x' W_enc + b_enc) = n pre', and n > 0, so
pre > n θ  <=>  pre' > θ: the same features fire, with codes f = n f', and
x_hat = f W_dec + n b_dec = n (f' W_dec + b_dec) = n x_hat'. The saved SAE therefore reads raw
residuals and reproduces the trained model exactly, scaled back: same L0, same FVU, codes and
reconstruction in raw units (as Gemma Scope's released SAEs are).
"""
from __future__ import annotations

from typing import Iterable

import jax.numpy as jnp
import numpy as np

from sae.jumprelu import JumpReLUParams


def estimate_scale(batches: Iterable[np.ndarray]) -> np.ndarray:
  """Batches [L, B, d] -> s [L] float32 with mean_tokens ||s_l x||^2 = 1 (float64 sums)."""
  total, count = None, 0
  for batch in batches:
    sq = np.einsum("lbd,lbd->l", batch, batch, dtype=np.float64)
    total = sq if total is None else total + sq
    count += batch.shape[1]
  if total is None:
    raise ValueError("estimate_scale needs at least one batch")
  mean_sq = total / count
  if not np.all(np.isfinite(mean_sq) & (mean_sq > 0)):
    raise ValueError(f"cannot normalise activations whose mean squared norm is {mean_sq}")
  return (1.0 / np.sqrt(mean_sq)).astype(np.float32)


def fold(params: JumpReLUParams, scale) -> JumpReLUParams:
  """The SAE trained on s x, as an SAE on raw x (see the module docstring). `scale` is s: a
  scalar for one SAE, [L] for a stack."""
  n = 1.0 / jnp.asarray(scale, jnp.float32)
  per_feature = n[..., None] if n.ndim else n  # [L, 1] against [L, W] / [L, d]
  return params.replace(b_enc=params.b_enc * per_feature, threshold=params.threshold * per_feature,
                        b_dec=params.b_dec * per_feature)
