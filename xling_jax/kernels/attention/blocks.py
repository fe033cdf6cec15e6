"""What both fused attention kernels share: the tiled layout and one online-softmax step.

Layout: heads stay where the model puts them. q [B, T, K, G, H] is viewed as [B, T, N*H] (a
free reshape: N = K*G query heads, head n = k*G + g) and k, v [B, S, K, H] as [B, S, K*H], so a
kernel reads head n's [block, H] tile at column block n (query) or n // G (key/value) and no
transpose surrounds the kernel. T and S are padded up to whole blocks (padded keys are masked,
padded query rows are cut off again); the boolean mask [B, 1, 1, T, S] travels as int8 tiles.

Which key blocks a query block visits: [kmin, kmax), the blocks holding at least one visible key
of any query in the block, computed from the mask. Causality, sliding windows and right padding
all shrink that range; blocks inside it that a query cannot see are masked like any other key.

Numerics (flash attention, online softmax): per query row a running max m, a running sum l of
exp(s - m) and an unnormalised float32 output, rescaled by exp(m_old - m_new) as each key block
arrives. On a row with at least one visible key this is the reference's softmax up to float
rounding: masked keys carry the reference's finite mask value, so they add exp(mask - m) = 0
once a visible key has set m. Rows without any visible key (padding queries) differ from the
reference, which averages v over every key: here they average v over the keys of the blocks
they visit, or are 0 when the range is empty; finite either way, and no real token attends to a
padding query's output. Scores stay float32 from the q.k product on (the reference rounds them
to the compute dtype first), and the probabilities meet v in v's dtype, as in the reference.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from xling_jax.kernels.attention.reference import MASK_VALUE


def _round_up(n: int, block: int) -> int:
  return -(-n // block) * block


def tile(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, block_q: int,
         block_k: int) -> tuple[jax.Array, ...]:
  """q [B, T, K, G, H], k, v [B, S, K, H], mask [B, 1, 1, T, S] (or broadcastable) ->
  q [B, Tp, N*H], k, v [B, Sp, K*H], mask int8 [B, Tp, Sp], kmin, kmax int32 [B, Tp/block_q]
  with Tp, Sp the lengths rounded up to whole blocks."""
  B, T, K, G, H = q.shape
  S = k.shape[1]
  Tp, Sp = _round_up(T, block_q), _round_up(S, block_k)
  mask = jnp.broadcast_to(mask, (B, 1, 1, T, S))[:, 0, 0]
  mask = jnp.pad(mask, ((0, 0), (0, Tp - T), (0, Sp - S)))
  q = jnp.pad(q.reshape(B, T, K * G * H), ((0, 0), (0, Tp - T), (0, 0)))
  k, v = (jnp.pad(x.reshape(B, S, K * H), ((0, 0), (0, Sp - S), (0, 0))) for x in (k, v))
  n_q, n_k = Tp // block_q, Sp // block_k
  live = mask.reshape(B, n_q, block_q, n_k, block_k).any(axis=(2, 4))  # [B, n_q, n_k]
  any_live = live.any(-1)
  kmin = jnp.where(any_live, jnp.argmax(live, -1), 0).astype(jnp.int32)
  kmax = jnp.where(any_live, n_k - jnp.argmax(live[..., ::-1], -1), 0).astype(jnp.int32)
  return q, k, v, mask.astype(jnp.int8), kmin, kmax


def untile(out: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """[B, Tp, N*H] kernel output -> [B, T, K, G, H] (`shape`, the query's)."""
  B, T = shape[:2]
  return out[:, :T].reshape(shape)


def online_step(q: jax.Array, k: jax.Array, v: jax.Array, visible: jax.Array,
                carry: tuple[jax.Array, jax.Array, jax.Array],
                logit_softcap: float | None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One key block. q [bq, H], k, v [bk, H], visible [bq, bk] bool; carry = (m [bq, 1] running
  max, l [bq, 1] running sum, acc [bq, H] unnormalised output), all float32."""
  m, l, acc = carry
  s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
  if logit_softcap is not None:
    s = jnp.tanh(s / logit_softcap) * logit_softcap
  s = jnp.where(visible, s, MASK_VALUE)
  m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
  rescale = jnp.exp(m - m_new)
  p = jnp.exp(s - m_new)
  l = rescale * l + jnp.sum(p, axis=1, keepdims=True)
  pv = jax.lax.dot_general(p.astype(v.dtype), v, (((1,), (0,)), ((), ())),
                           preferred_element_type=jnp.float32)
  return m_new, l, rescale * acc + pv


def finish(l: jax.Array, acc: jax.Array) -> jax.Array:
  """Normalised output [bq, H] float32; a row that visited no key block (l = 0) is 0."""
  return acc / jnp.where(l == 0.0, 1.0, l)
