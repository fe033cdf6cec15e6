"""Flash attention for TPUs: Pallas lowered through Mosaic.

Why not JAX's splash attention: its masks are numpy arrays fixed at trace time plus segment
equality, while ours are data (padding, packed-scoring pair masks, windows counted in positions
that restart per packed choice). This kernel reads the mask itself, one int8 tile per step.

The grid is (batch row, query head, query block, key block); the key axis runs innermost and in
order, carrying the running max, sum and float32 output of the query block in VMEM scratch. The
key-block range [kmin, kmax) of each query block (see `blocks`) arrives by scalar prefetch:
steps outside it skip the arithmetic, and their block indices are clamped into the range, so
the pipeline re-uses the tile it already holds instead of copying a new one.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from xling_jax.kernels.attention import blocks

LANES = 128  # TPU vector width: m and l are kept replicated across lanes


def supports(head_dim: int) -> bool:
  """A [block, H] tile needs H to fill whole 128-lane vectors."""
  return head_dim % LANES == 0


def _kernel(kmin_ref, kmax_ref, q_ref, k_ref, v_ref, mask_ref, o_ref, m_ref, l_ref, acc_ref, *,
            n_q: int, logit_softcap: float | None):
  row = pl.program_id(0) * n_q + pl.program_id(2)
  kb = pl.program_id(3)

  @pl.when(kb == 0)
  def _start():
    m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, jnp.float32)
    l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  @pl.when((kb >= kmin_ref[row]) & (kb < kmax_ref[row]))
  def _step():
    carry = (m_ref[:, :1], l_ref[:, :1], acc_ref[...])
    m, l, acc = blocks.online_step(q_ref[...], k_ref[...], v_ref[...], mask_ref[...] != 0,
                                   carry, logit_softcap)
    m_ref[...] = jnp.broadcast_to(m, m_ref.shape)
    l_ref[...] = jnp.broadcast_to(l, l_ref.shape)
    acc_ref[...] = acc

  @pl.when(kb == pl.num_programs(3) - 1)
  def _end():
    o_ref[...] = blocks.finish(l_ref[:, :1], acc_ref[...]).astype(o_ref.dtype)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
              logit_softcap: float | None, *, block_q: int | None = None,
              block_k: int | None = None, interpret: bool = False) -> jax.Array:
  """Same contract as `reference.attention`: q [B, T, K, G, H], k, v [B, S, K, H],
  mask [B, 1, 1, T, S] -> [B, T, K, G, H]. Blocks default to 128 x 128 (a multiple of the int8
  mask's (32, 128) tiling). `interpret` runs the kernel in Pallas's interpreter (any backend)."""
  B, T, K, G, H = q.shape
  if not (supports(H) or interpret):
    raise ValueError(f"pallas_mosaic attention needs head_dim % {LANES} == 0, got {H}")
  block_q, block_k = block_q or 128, block_k or 128
  q3, k3, v3, mask8, kmin, kmax = blocks.tile(q, k, v, mask, block_q, block_k)
  n_q, n_k = q3.shape[1] // block_q, k3.shape[1] // block_k

  def live(b, i, kb, kmin_ref, kmax_ref):
    """kb clamped into query block i's range: skipped steps keep the previous tile."""
    row = b * n_q + i
    return jnp.clip(kb, kmin_ref[row], jnp.maximum(kmax_ref[row] - 1, kmin_ref[row]))

  def kv_block(b, n, i, kb, kmin_ref, kmax_ref):
    # lax.div, not //: jnp's floor division lowers through `sign`, which Mosaic lowers only
    # when it can query the TPU it runs on (not when exporting from another host).
    return b, live(b, i, kb, kmin_ref, kmax_ref), jax.lax.div(n, G)

  def q_block(b, n, i, kb, *_):
    return b, i, n

  def mask_block(b, n, i, kb, kmin_ref, kmax_ref):
    return b, i, live(b, i, kb, kmin_ref, kmax_ref)

  out = pl.pallas_call(
      functools.partial(_kernel, n_q=n_q, logit_softcap=logit_softcap),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=2, grid=(B, K * G, n_q, n_k),
          in_specs=[pl.BlockSpec((None, block_q, H), q_block),
                    pl.BlockSpec((None, block_k, H), kv_block),
                    pl.BlockSpec((None, block_k, H), kv_block),
                    pl.BlockSpec((None, block_q, block_k), mask_block)],
          out_specs=pl.BlockSpec((None, block_q, H), q_block),
          scratch_shapes=[pltpu.VMEM((block_q, LANES), jnp.float32),
                          pltpu.VMEM((block_q, LANES), jnp.float32),
                          pltpu.VMEM((block_q, H), jnp.float32)]),
      out_shape=jax.ShapeDtypeStruct(q3.shape, q.dtype),
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      interpret=interpret, name="xling_flash_attention",
  )(kmin.reshape(-1), kmax.reshape(-1), q3, k3, v3, mask8)
  return blocks.untile(out, q.shape)
