"""Fused JumpReLU encode + statistics for TPUs: Pallas lowered through Mosaic.

The grid is (batch row, feature block, token block) with the token axis innermost and in
order: each step multiplies the [block_t, D] token tile by the [D, block_w] W_enc tile on the
MXU into a float32 VMEM tile, runs the epilogue and adds into the row's output block, which
stays resident in VMEM across the token steps.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from xling_jax.kernels.sae_stats import epilogue

BLOCK_T, BLOCK_W = 256, 256


def supports(d: int, width: int, block_w: int = BLOCK_W) -> bool:
  """Whole blocks of whole 128-lane vectors along W; D is one block (any size: a block
  spanning the whole axis needs no alignment)."""
  return width % block_w == 0 and block_w % 128 == 0


def _kernel(x_ref, w_ref, b_ref, thr_ref, wt_ref, mass_ref, fired_ref, *, codes_dtype):
  @pl.when(pl.program_id(2) == 0)
  def _start():
    mass_ref[...] = jnp.zeros(mass_ref.shape, jnp.float32)
    fired_ref[...] = jnp.zeros(fired_ref.shape, jnp.float32)

  pre = jax.lax.dot_general(x_ref[...], w_ref[...], (((1,), (0,)), ((), ())),
                            preferred_element_type=jnp.float32) + b_ref[...]
  mass_ref[...], fired_ref[...] = epilogue.accumulate(
      pre, thr_ref[...], wt_ref[...], codes_dtype, (mass_ref[...], fired_ref[...]))


def sae_stats(x: jax.Array, W_enc: jax.Array, b_enc: jax.Array, threshold: jax.Array,
              weights: jax.Array, *,
              block_t: int = BLOCK_T, block_w: int = BLOCK_W,
              interpret: bool = False) -> tuple[jax.Array, jax.Array]:
  """Same contract as `reference.sae_stats`: x [B, T, D], weights [B, T] -> (mass, fired)
  [B, W] float32. `interpret` runs the kernel in Pallas's interpreter (any backend)."""
  B, T, D = x.shape
  W = W_enc.shape[-1]
  if not (supports(D, W, block_w) or interpret):
    raise ValueError(f"pallas_mosaic sae_stats needs W % {block_w} == 0 with block_w a "
                     f"multiple of 128, got W={W}")
  Tp = -(-T // block_t) * block_t
  # Padded tokens weigh 0: whatever they encode to adds nothing.
  x = jnp.pad(x.astype(W_enc.dtype), ((0, 0), (0, Tp - T), (0, 0)))
  weights = jnp.pad(weights.astype(jnp.float32), ((0, 0), (0, Tp - T)))[..., None]
  features = pl.BlockSpec((1, block_w), lambda b, w, t: (0, w))
  sums = pl.BlockSpec((None, 1, block_w), lambda b, w, t: (b, 0, w))
  mass, fired = pl.pallas_call(
      functools.partial(_kernel, codes_dtype=W_enc.dtype),
      grid=(B, W // block_w, Tp // block_t),
      in_specs=[pl.BlockSpec((None, block_t, D), lambda b, w, t: (b, t, 0)),
                pl.BlockSpec((D, block_w), lambda b, w, t: (0, w)), features, features,
                pl.BlockSpec((None, block_t, 1), lambda b, w, t: (b, t, 0))],
      out_specs=[sums, sums],
      out_shape=[jax.ShapeDtypeStruct((B, 1, W), jnp.float32)] * 2,
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "arbitrary")),
      interpret=interpret, name="xling_sae_stats",
  )(x, W_enc, b_enc.astype(jnp.float32).reshape(1, W),
    threshold.astype(jnp.float32).reshape(1, W), weights)
  return mass[:, 0], fired[:, 0]
