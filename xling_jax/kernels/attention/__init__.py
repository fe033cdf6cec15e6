"""The attention seam: one signature, an implementation chosen per call (see `select`).

    attention(q, k, v, mask, logit_softcap, impl=None) -> [B, T, K, G, H]

`reference` is plain JAX; `pallas_triton` (GPU) and `pallas_mosaic` (TPU) are flash-attention
kernels over the same inputs (any head width the kernel's `supports` takes: Gemma 4's layers
call the seam with their own, 256 or 512; its K = V layers pass values that are the normed raw
keys, to the seam just another v) (`blocks` says how they tile and where their numbers differ from
the reference: float rounding on real rows, padding rows finite but not the reference's).

Gradients: a fused forward differentiates through the reference (custom VJP: the backward
recomputes the reference's scores from q, k, v), so training gets the fused forward and
today's backward; a fused backward is future work.
"""
from __future__ import annotations

import functools

import jax
import numpy as np

from xling_jax.kernels import select
from xling_jax.kernels.attention import mosaic, reference, triton

_FUSED = {"pallas_triton": triton, "pallas_mosaic": mosaic}


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
              logit_softcap: float | None, *, impl: str | None = None,
              block_q: int | None = None, block_k: int | None = None) -> jax.Array:
  """Grouped-query attention. q [B, T, K, G, H] (already scaled), k, v [B, S, K, H],
  mask [B, 1, 1, T, S] boolean -> [B, T, K, G, H]. Scores and softmax in float32.

  `impl` (None: `select`'s process-wide choice) names the implementation; `block_q`,
  `block_k` (fused only; None: the kernel's defaults) set its tiles. On CPU a fused kernel runs
  in Pallas's interpreter (how the tests check it).
  """
  impl = select.resolve("attention", impl, lambda name: _FUSED[name].supports(q.shape[-1]))
  if impl == "reference":
    return reference.attention(q, k, v, mask, logit_softcap)
  kernel = functools.partial(_FUSED[impl].attention, logit_softcap=logit_softcap,
                             block_q=block_q, block_k=block_k,
                             interpret=select.interpret())
  return _with_reference_grad(kernel, logit_softcap, q, k, v, mask)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _with_reference_grad(kernel, logit_softcap, q, k, v, mask):
  return kernel(q, k, v, mask)


def _forward(kernel, logit_softcap, q, k, v, mask):
  return kernel(q, k, v, mask), (q, k, v, mask)


def _backward(kernel, logit_softcap, saved, grad):
  q, k, v, mask = saved
  _, vjp = jax.vjp(lambda q, k, v: reference.attention(q, k, v, mask, logit_softcap), q, k, v)
  return (*vjp(grad), np.zeros(mask.shape, jax.dtypes.float0))


_with_reference_grad.defvjp(_forward, _backward)
