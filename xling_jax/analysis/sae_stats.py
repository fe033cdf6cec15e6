"""SAE statistics on the device, per batch: the jitted step the analysis and the LoRA objective
share.

For every layer l and sentence s the step returns row sums over the sentence's statistic
tokens (real tokens minus BOS, whose residual norm dwarfs the others'): activation mass
sum_t sum_i f_i, active count sum_t #{f_i > 0}, residual norm sum_t ||x||, the number of
distinct features that fire anywhere in the sentence, per-feature token firing counts [W], and,
given the reference norms R_l, the direction-only control: the code mass of x R_l / ||x|| (every
token rescaled to the reference language's mean norm at that layer, so only its direction
differs).
The SAE encode happens inside the model's layer scan, so the [layers, batch, seq, W] codes
never exist at once.
"""
from __future__ import annotations

from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp

from xling_jax.kernels import sae_stats as sae_stats_seam
from xling_jax.model import transformer as model_lib
from xling_jax.model.config import ModelConfig

ROW_SUMS = ("activation", "l0", "resid_norm", "distinct_features")


def stat_mask(tokens: jax.Array, mask: jax.Array, bos_id: int) -> jax.Array:
  """[B, T] float32: 1 at real tokens that are not BOS (BOS's residual norm is tens of times
  the others': it would dominate every statistic)."""
  return (mask.astype(bool) & (tokens != bos_id)).astype(jnp.float32)


def rescaled_to_norm(resid: jax.Array, norm: jax.Array) -> jax.Array:
  """resid [B, T, D] with every token's vector scaled to length `norm` (a scalar): its direction
  kept, its size the same for all. Zero vectors (padding) stay zero."""
  length = jnp.linalg.norm(resid.astype(jnp.float32), axis=-1, keepdims=True)
  scale = jnp.where(length > 0, norm / jnp.where(length > 0, length, 1.0), 0.0)
  return (resid.astype(jnp.float32) * scale).astype(resid.dtype)


def layer_row_sums(resid: jax.Array, sae_params, weights: jax.Array,
                   direction_norm: jax.Array | None = None) -> dict[str, jax.Array]:
  """One layer's statistics. resid [B, T, D], weights [B, T] (0/1) -> row sums [B] and
  feature firing counts [W], all float32; with `direction_norm` (a scalar R) also
  direction_activation [B], the code mass of `rescaled_to_norm(resid, R)`. Every statistic of the codes derives from two [B, W]
  weighted sums over tokens. (On an H100, XLA reads the float32 pre-activations in three
  reduction kernels that take half as long as the SAE GEMM itself: BENCHMARKS.md; the fused
  kernels of the seam `xling_jax.kernels.sae_stats` never write them.)"""
  # summed: code mass per row and feature; fired: tokens per row where feature w fires.
  summed, fired = sae_stats_seam.sae_stats(resid, sae_params.W_enc, sae_params.b_enc,
                                          sae_params.threshold, weights)  # [B, W] each
  out = {
      "activation": summed.sum(-1),
      "l0": fired.sum(-1),
      "resid_norm": jnp.einsum(
          "bt,bt->b", weights, jnp.linalg.norm(resid.astype(jnp.float32), axis=-1)),
      "distinct_features": (fired > 0).sum(-1).astype(jnp.float32),
      "feature_counts": fired.sum(0),
  }
  if direction_norm is not None:
    mass, _ = sae_stats_seam.sae_stats(rescaled_to_norm(resid, direction_norm), sae_params.W_enc,
                                       sae_params.b_enc, sae_params.threshold, weights)
    out["direction_activation"] = mass.sum(-1)
  return out


@partial(jax.jit, static_argnames=("config", "fused", "layers"))
def batch_stats(params, config: ModelConfig, saes, tokens: jax.Array, mask: jax.Array,
                hook=None, *, fused: bool = True, layers: tuple[int, ...] | None = None,
                direction_norms: jax.Array | None = None) -> dict[str, jax.Array]:
  """Statistics of one batch for each of `layers` (default every model layer): row sums [n, B]
  and feature_counts [n, W], plus n_tokens [B]. `saes` is a stacked JumpReLU pytree with one
  SAE per analysed layer, in `layers` order; `direction_norms` [n] (the reference language's
  mean residual norm per analysed layer) adds direction_activation [n, B].

  With every layer and fused=True the SAEs encode inside the layer scan; otherwise the
  residuals [L, B, T, D] exist first and the analysed layers' are encoded (same numbers:
  fused=False exists to check the fused path; a subset of layers, for SAEs trained on a few
  layers, costs that batch's residuals in memory).
  """
  weights = stat_mask(tokens, mask, config.bos_id)
  if fused and layers in (None, tuple(range(config.n_layers))):
    x = model_lib.embed(params, config, tokens)
    _, out = model_lib.scan_blocks(
        params, config, x, mask, hook=hook, tokens=tokens,
        observe=lambda resid, xs: layer_row_sums(resid, *xs[:1], weights, *xs[1:]),
        observe_xs=(saes,) if direction_norms is None else (saes, direction_norms))
  else:
    residuals = model_lib.forward(params, config, tokens, mask, return_logits=False,
                                  hook=hook).residuals
    if layers is not None:
      residuals = residuals[jnp.asarray(layers)]
    out = jax.vmap(layer_row_sums, in_axes=(0, 0, None, 0))(residuals, saes, weights,
                                                             direction_norms)
  out["n_tokens"] = weights.sum(-1)
  return out


@partial(jax.jit, static_argnames=("config", "layers"))
def norm_stats(params, config: ModelConfig, tokens: jax.Array, mask: jax.Array, hook=None, *,
               layers: tuple[int, ...]) -> dict[str, jax.Array]:
  """The residual norm row sums [n, B] of `layers` and n_tokens [B], without any SAE: what the
  direction control needs of the reference language before its own pass."""
  weights = stat_mask(tokens, mask, config.bos_id)
  _, sums = model_lib.scan_blocks(
      params, config, model_lib.embed(params, config, tokens), mask, hook=hook, tokens=tokens,
      observe=lambda resid, _: jnp.einsum(
          "bt,bt->b", weights, jnp.linalg.norm(resid.astype(jnp.float32), axis=-1)))
  return {"resid_norm": sums[jnp.asarray(layers)], "n_tokens": weights.sum(-1)}


def layer_activations(params, config: ModelConfig, saes, tokens: jax.Array, mask: jax.Array,
                      *, hook=None, layers: Sequence[int] | None = None,
                      remat: bool | str = False) -> jax.Array:
  """Differentiable activation per layer: mean over statistic tokens of sum_i f_i.

  `saes` is stacked over `layers` (default: every model layer). Returns [len(layers)] float32.
  Used as the LoRA objective; residuals of unlisted layers are never encoded.
  """
  layers = tuple(range(config.n_layers)) if layers is None else tuple(layers)
  residuals = model_lib.forward(params, config, tokens, mask, return_logits=False, hook=hook,
                                remat=remat).residuals[jnp.asarray(layers)]
  return activation_from_residuals(residuals, saes, stat_mask(tokens, mask, config.bos_id))


def activation_from_residuals(residuals: jax.Array, saes, weights: jax.Array) -> jax.Array:
  """residuals [n, B, T, D] with `saes` stacked over the same n layers, weights [B, T] ->
  activation [n] = sum over weighted tokens of sum_i f_i / weighted token count."""
  sums = jax.vmap(lambda r, s: layer_row_sums(r, s, weights)["activation"].sum())(residuals, saes)
  return sums / jnp.maximum(weights.sum(), 1.0)
