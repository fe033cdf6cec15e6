"""Fused JumpReLU encode + statistics for GPUs: Pallas lowered through Triton.

One program per (feature block, batch row) walks the row's token blocks; for each it multiplies
[block_t, D] x [D, block_w] in block_d slices into a float32 register tile and runs the
epilogue on it, so the pre-activations never leave the chip. Consecutive programs share a
feature block (the grid's fast axis is the batch row), so W_enc's tile is read from L2.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from xling_jax.kernels.sae_stats import epilogue

BLOCK_T, BLOCK_W, BLOCK_D = 64, 128, 64


def _pow2(n: int) -> bool:
  return n >= 16 and n & (n - 1) == 0


def supports(d: int, width: int, block_w: int = BLOCK_W, block_d: int = BLOCK_D) -> bool:
  """Whole power-of-two blocks along D and W (Triton tiles are powers of two; Gemma's d_model
  are multiples of 64, Gemma Scope widths powers of two)."""
  return _pow2(block_w) and _pow2(block_d) and d % block_d == 0 and width % block_w == 0


def _kernel(x_ref, w_ref, b_ref, thr_ref, wt_ref, mass_ref, fired_ref, *, block_t: int,
            block_d: int, codes_dtype):
  block_w = w_ref.shape[1]
  n_t, n_d = x_ref.shape[0] // block_t, x_ref.shape[1] // block_d
  bias, threshold = b_ref[...][None, :], thr_ref[...][None, :]

  def token_block(t, sums):
    rows = pl.ds(pl.multiple_of(t * block_t, block_t), block_t)

    def depth(d, pre):
      cols = pl.ds(pl.multiple_of(d * block_d, block_d), block_d)
      return pre + jax.lax.dot_general(x_ref[rows, cols], w_ref[cols, :],
                                       (((1,), (0,)), ((), ())),
                                       preferred_element_type=jnp.float32)

    pre = jax.lax.fori_loop(0, n_d, depth, jnp.zeros((block_t, block_w), jnp.float32)) + bias
    return epilogue.accumulate(pre, threshold, wt_ref[rows][:, None], codes_dtype, sums)

  zeros = jnp.zeros((1, block_w), jnp.float32)
  mass, fired = jax.lax.fori_loop(0, n_t, token_block, (zeros, zeros))
  mass_ref[...], fired_ref[...] = mass[0], fired[0]


def sae_stats(x: jax.Array, W_enc: jax.Array, b_enc: jax.Array, threshold: jax.Array,
              weights: jax.Array, *,
              block_t: int = BLOCK_T, block_w: int = BLOCK_W, block_d: int = BLOCK_D,
              interpret: bool = False) -> tuple[jax.Array, jax.Array]:
  """Same contract as `reference.sae_stats`: x [B, T, D], weights [B, T] -> (mass, fired)
  [B, W] float32. `interpret` runs the kernel in Pallas's interpreter (any backend)."""
  B, T, D = x.shape
  W = W_enc.shape[-1]
  if not supports(D, W, block_w, block_d):
    raise ValueError(f"pallas_triton sae_stats needs D % {block_d} == 0 and W % {block_w} == 0 "
                     f"(power-of-two blocks >= 16), got D={D}, W={W}")
  Tp = -(-T // block_t) * block_t
  # Padded tokens weigh 0: whatever they encode to adds nothing.
  x = jnp.pad(x.astype(W_enc.dtype), ((0, 0), (0, Tp - T), (0, 0)))
  weights = jnp.pad(weights.astype(jnp.float32), ((0, 0), (0, Tp - T)))
  features = pl.BlockSpec((block_w,), lambda b, w: (w,))
  sums = pl.BlockSpec((None, block_w), lambda b, w: (b, w))
  return pl.pallas_call(
      functools.partial(_kernel, block_t=block_t, block_d=block_d,
                        codes_dtype=W_enc.dtype),
      grid=(B, W // block_w),
      in_specs=[pl.BlockSpec((None, Tp, D), lambda b, w: (b, 0, 0)),
                pl.BlockSpec((D, block_w), lambda b, w: (0, w)), features, features,
                pl.BlockSpec((None, Tp), lambda b, w: (b, 0))],
      out_specs=[sums, sums],
      out_shape=[jax.ShapeDtypeStruct((B, W), jnp.float32)] * 2,
      compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=3),
      interpret=interpret, name="xling_sae_stats",
  )(x, W_enc, b_enc.astype(jnp.float32), threshold.astype(jnp.float32),
    weights)
