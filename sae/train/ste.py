"""Straight-through estimators for the JumpReLU threshold, as `jax.custom_vjp`s.

The forward passes are exact (strict `>`, as in `sae.jumprelu.encode`):

    jumprelu(z, θ) = z · H(z − θ)          step(z, θ) = H(z − θ)

H has no useful derivative, so the backward pass replaces the jump's delta by a rectangle kernel
K(u) = 1[−½ < u < ½] (strict both sides) of bandwidth ε (JumpReLU paper, arXiv 2407.14435,
eqs. 11-12; SAELens 6.54 `JumpReLU` / `Step`, which follow dictionary_learning's):

    ∂jumprelu/∂θ = −(θ/ε) · K((z − θ)/ε)      ∂step/∂θ = −(1/ε) · K((z − θ)/ε)
    ∂jumprelu/∂z = H(z − θ)                   ∂step/∂z = 0

so the estimator's gradient reaches only the threshold (DeepMind: "we don't apply STE to x").
With `ste_to_input` (Anthropic's variant, SAELens `jumprelu_ste_to_input`) it also reaches z,
with the opposite sign: the jump depends on z only through z − θ.

Shapes: z [..., W], θ [W]; the θ gradient sums over z's leading axes.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _window(z: jax.Array, threshold: jax.Array, bandwidth: float) -> jax.Array:
  """K((z − θ)/ε) as z's dtype."""
  u = (z - threshold) / bandwidth
  return ((u > -0.5) & (u < 0.5)).astype(z.dtype)


def _sum_leading(g: jax.Array, threshold: jax.Array) -> jax.Array:
  return jnp.sum(g, axis=tuple(range(g.ndim - threshold.ndim)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def jumprelu(z: jax.Array, threshold: jax.Array, bandwidth: float,
             ste_to_input: bool = False) -> jax.Array:
  """z · H(z − θ), with the threshold STE above."""
  return jnp.where(z > threshold, z, 0.0).astype(z.dtype)


def _jumprelu_fwd(z, threshold, bandwidth, ste_to_input):
  return jumprelu(z, threshold, bandwidth, ste_to_input), (z, threshold)


def _jumprelu_bwd(bandwidth, ste_to_input, residuals, g):
  z, threshold = residuals
  ste = (threshold / bandwidth) * _window(z, threshold, bandwidth) * g
  dz = jnp.where(z > threshold, g, 0.0).astype(g.dtype)
  return (dz + ste if ste_to_input else dz), -_sum_leading(ste, threshold)


jumprelu.defvjp(_jumprelu_fwd, _jumprelu_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def step(z: jax.Array, threshold: jax.Array, bandwidth: float,
         ste_to_input: bool = False) -> jax.Array:
  """H(z − θ) as z's dtype (the L0 count's summand), with the threshold STE above."""
  return (z > threshold).astype(z.dtype)


def _step_fwd(z, threshold, bandwidth, ste_to_input):
  return step(z, threshold, bandwidth, ste_to_input), (z, threshold)


def _step_bwd(bandwidth, ste_to_input, residuals, g):
  z, threshold = residuals
  ste = _window(z, threshold, bandwidth) * g / bandwidth
  return (ste if ste_to_input else jnp.zeros_like(z)), -_sum_leading(ste, threshold)


step.defvjp(_step_fwd, _step_bwd)
