"""The SAE-statistics seam: JumpReLU encode and the per-row sums of the codes.

    sae_stats(x, W_enc, b_enc, threshold, weights, impl=None) -> (mass [B, W], fired [B, W])

Every statistic `analysis.sae_stats.layer_row_sums` reports derives from these two token-weighted
sums. `reference` is plain JAX; `pallas_triton` (GPU) and `pallas_mosaic` (TPU) compute the
[tokens, W] float32 pre-activations tile by tile and reduce each tile where it was computed,
so they never reach memory (`epilogue` holds the shared step and what may differ: the order
of float additions only).

Gradients: a fused forward differentiates through the reference (custom VJP), so the LoRA
objective, which differentiates the code mass, gets today's backward. The encoder enters as
plain arrays (W_enc, b_enc, threshold), so the kernels know no SAE type.
"""
from __future__ import annotations

import functools

import jax

from xling_jax.kernels import select
from xling_jax.kernels.sae_stats import mosaic, reference, triton

_FUSED = {"pallas_triton": triton, "pallas_mosaic": mosaic}


def sae_stats(x: jax.Array, W_enc: jax.Array, b_enc: jax.Array, threshold: jax.Array,
              weights: jax.Array, *, impl: str | None = None,
              **blocks: int) -> tuple[jax.Array, jax.Array]:
  """x [B, T, D] residuals, one JumpReLU encoder (W_enc [D, W], b_enc [W], threshold [W]),
  weights [B, T] per-token weights -> (mass, fired) [B, W] float32: mass = sum_t w_t f_t,
  fired = sum_t w_t [f_t > 0], f = reference.codes(x, W_enc, b_enc, threshold).

  `impl` (None: `select`'s process-wide choice) names the implementation; `blocks` (fused
  only: block_t, block_w, and block_d for Triton) set its tiles. On CPU a fused kernel runs in
  Pallas's interpreter (how the tests check it).
  """
  impl = select.resolve("sae_stats", impl,
                        lambda name: _FUSED[name].supports(x.shape[-1], W_enc.shape[-1]))
  if impl == "reference":
    return reference.sae_stats(x, W_enc, b_enc, threshold, weights)
  kernel = functools.partial(_FUSED[impl].sae_stats, interpret=select.interpret(), **blocks)
  return _with_reference_grad(kernel, x, W_enc, b_enc, threshold, weights)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _with_reference_grad(kernel, *arrays):
  return kernel(*arrays)


def _forward(kernel, *arrays):
  return kernel(*arrays), arrays


def _backward(kernel, saved, grads):
  return jax.vjp(reference.sae_stats, *saved)[1](grads)


_with_reference_grad.defvjp(_forward, _backward)
