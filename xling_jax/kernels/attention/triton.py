"""Flash attention for GPUs: Pallas lowered through Triton.

One program per (query block, batch row, query head) keeps its q tile, running max, running sum
and float32 output tile on chip and walks the key blocks [kmin, kmax) of its query block (see
`blocks`), so the [T, S] scores never reach memory. Grouped-query heads read their shared kv head
in place (column n // G of the [B, S, K*H] view).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from xling_jax.kernels.attention import blocks


def supports(head_dim: int) -> bool:
  """Triton tiles need power-of-two sizes; q.k and p.v need at least 16 along H; the float32
  output tile [block_q, H] lives in registers, which Gemma 4's 512-wide global heads would
  spill (those layers take the reference)."""
  return 16 <= head_dim <= 256 and head_dim & (head_dim - 1) == 0


def default_blocks(head_dim: int) -> tuple[int, int]:
  """(block_q, block_k): the float32 output tile [block_q, H] lives in registers, so wide heads
  take shorter query blocks."""
  return (128, 64) if head_dim <= 64 else (64, 64)


def _kernel(kmin_ref, kmax_ref, q_ref, k_ref, v_ref, mask_ref, o_ref, *, block_k: int,
            logit_softcap: float | None):
  q = q_ref[...]
  block_q, head_dim = q.shape

  def body(kb, carry):
    keys = pl.ds(pl.multiple_of(kb * block_k, block_k), block_k)
    return blocks.online_step(q, k_ref[keys, :], v_ref[keys, :], mask_ref[:, keys] != 0,
                              carry, logit_softcap)

  carry = (jnp.full((block_q, 1), -jnp.inf, jnp.float32), jnp.zeros((block_q, 1), jnp.float32),
           jnp.zeros((block_q, head_dim), jnp.float32))
  _, l, acc = jax.lax.fori_loop(kmin_ref[...], kmax_ref[...], body, carry)
  o_ref[...] = blocks.finish(l, acc).astype(o_ref.dtype)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
              logit_softcap: float | None, *, block_q: int | None = None,
              block_k: int | None = None, interpret: bool = False) -> jax.Array:
  """Same contract as `reference.attention`: q [B, T, K, G, H], k, v [B, S, K, H],
  mask [B, 1, 1, T, S] -> [B, T, K, G, H]. `interpret` runs the kernel in Pallas's interpreter
  (any backend: how the tests check it on CPU)."""
  B, T, K, G, H = q.shape
  if not supports(H):
    raise ValueError(f"pallas_triton attention needs a power-of-two head_dim in [16, 256], "
                     f"got {H}")
  default_q, default_k = default_blocks(H)
  block_q, block_k = block_q or default_q, block_k or default_k
  q3, k3, v3, mask8, kmin, kmax = blocks.tile(q, k, v, mask, block_q, block_k)
  Tp, Sp = q3.shape[1], k3.shape[1]
  row = pl.BlockSpec((None, None), lambda i, b, n: (b, i))
  kv = pl.BlockSpec((None, Sp, H), lambda i, b, n: (b, 0, jax.lax.div(n, G)))
  out = pl.pallas_call(
      functools.partial(_kernel, block_k=block_k, logit_softcap=logit_softcap),
      grid=(Tp // block_q, B, K * G),
      in_specs=[row, row, pl.BlockSpec((None, block_q, H), lambda i, b, n: (b, i, n)), kv, kv,
                pl.BlockSpec((None, block_q, Sp), lambda i, b, n: (b, i, 0))],
      out_specs=pl.BlockSpec((None, block_q, H), lambda i, b, n: (b, i, n)),
      out_shape=jax.ShapeDtypeStruct(q3.shape, q.dtype),
      compiler_params=pltriton.CompilerParams(num_warps=4 if H <= 64 else 8, num_stages=2),
      interpret=interpret, name="xling_flash_attention",
  )(kmin, kmax, q3, k3, v3, mask8)
  return blocks.untile(out, q.shape)
