"""Gemma Scope JumpReLU sparse autoencoders as a plain pytree, one layer or all layers stacked.

Shapes: `d` the residual width (d_model), `W` the SAE width (d_sae), `L` layers.

    W_enc [d, W]   b_enc [W]   threshold [W]   W_dec [W, d]   b_dec [d]

    encode:  pre = x @ W_enc + b_enc;  f = relu(pre) * (pre > threshold)     (strict >)
    decode:  x_hat = f @ W_dec + b_dec

There is no `b_dec` subtraction and no input normalisation (Gemma Scope's convention; SAELens
files that subtract `b_dec` are folded into `b_enc` on load, see `formats`).

The stacked form is the same class with a leading `[L, ...]` axis on every leaf. Because it is a
pytree, `lax.scan` slices it per layer, so it can be passed as `observe_xs` to
`xling_jax.model.transformer.scan_blocks` and encoded inside the layer scan, never materialising
`[L, batch, seq, W]`.
"""
from __future__ import annotations

import functools
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp

from xling_jax.kernels.sae_stats import reference

PARAM_NAMES = ("W_enc", "b_enc", "threshold", "W_dec", "b_dec")


@flax.struct.dataclass
class JumpReLUParams:
  """One SAE (`W_enc [d, W]` ...) or a stack of them (`W_enc [L, d, W]` ...)."""
  W_enc: jax.Array
  b_enc: jax.Array
  threshold: jax.Array
  W_dec: jax.Array
  b_dec: jax.Array

  @property
  def d_in(self) -> int:
    return self.W_enc.shape[-2]

  @property
  def d_sae(self) -> int:
    return self.W_enc.shape[-1]

  @property
  def dtype(self) -> jnp.dtype:
    return self.W_enc.dtype


@flax.struct.dataclass
class ReconstructionMetrics:
  """Scalars over the (masked) tokens, SAELens's conventions:
  mse = mean_tokens ||x - x_hat||^2 (summed over d); explained_variance =
  1 - mse / mean_tokens ||x - mean(x)||^2; l0 = mean_tokens count(f != 0)."""
  mse: jax.Array
  explained_variance: jax.Array
  l0: jax.Array


# The formulas live in the kernel seam's reference, which every fused kernel is tested against.

def pre_activations(params: JumpReLUParams, x: jax.Array) -> jax.Array:
  """x [..., d] -> float32 pre-activations [..., W] (`reference.pre_activations`)."""
  return reference.pre_activations(x, params.W_enc, params.b_enc)


def encode(params: JumpReLUParams, x: jax.Array) -> jax.Array:
  """x [..., d] -> codes f [..., W] in the params' dtype: relu(pre) * (pre > threshold)."""
  return reference.codes(x, params.W_enc, params.b_enc, params.threshold)


def decode(params: JumpReLUParams, f: jax.Array) -> jax.Array:
  """codes f [..., W] -> reconstruction [..., d] = f @ W_dec + b_dec (params' dtype)."""
  return f.astype(params.W_dec.dtype) @ params.W_dec + params.b_dec


def reconstruction_metrics(params: JumpReLUParams, x: jax.Array,
                           mask: jax.Array | None = None) -> ReconstructionMetrics:
  """Encode and decode x [..., d]; metrics over the tokens where mask [...] is nonzero (all when
  None). Computed in float32."""
  f = encode(params, x)
  x32 = x.astype(jnp.float32)
  x_hat = decode(params, f).astype(jnp.float32)
  w = jnp.ones(x.shape[:-1], jnp.float32) if mask is None else mask.astype(jnp.float32)
  n = jnp.maximum(w.sum(), 1.0)

  def token_mean(per_token):
    return jnp.sum(per_token * w) / n

  mse = token_mean(jnp.sum((x32 - x_hat) ** 2, axis=-1))
  mean_x = jnp.sum(x32 * w[..., None], axis=tuple(range(x.ndim - 1))) / n
  variance = token_mean(jnp.sum((x32 - mean_x) ** 2, axis=-1))
  l0 = token_mean(jnp.sum(f != 0, axis=-1).astype(jnp.float32))
  return ReconstructionMetrics(mse=mse, explained_variance=1.0 - mse / variance, l0=l0)


@functools.partial(jax.jit, static_argnames=("d_in", "d_sae", "n_layers", "input_std", "dtype"))
def random_params(key: jax.Array, d_in: int, d_sae: int, n_layers: int | None = None,
                  input_std: float = 1.0, dtype=jnp.float32) -> JumpReLUParams:
  """Random JumpReLU weights (tests, benchmarks). Pre-activations have std ~1 for inputs of
  per-element std `input_std`, and thresholds are U(0.8, 1.6), so about 5-20% of features fire
  on Gaussian inputs, as in real SAEs. Stacked when `n_layers` is given."""
  lead = () if n_layers is None else (n_layers,)
  # Drawn in `dtype` itself: Gemma-2-2B-sized float32 temporaries would be 8 GB.
  k_enc, k_benc, k_thr, k_dec, k_bdec = jax.random.split(key, 5)
  normal = lambda k, shape, std: jax.random.normal(k, lead + shape, dtype) * std
  return JumpReLUParams(
      W_enc=normal(k_enc, (d_in, d_sae), 1.0 / (input_std * d_in ** 0.5)),
      b_enc=normal(k_benc, (d_sae,), 0.1),
      threshold=jax.random.uniform(k_thr, lead + (d_sae,), dtype, 0.8, 1.6),
      W_dec=normal(k_dec, (d_sae, d_in), input_std / d_sae ** 0.5),
      b_dec=normal(k_bdec, (d_in,), 0.1 * input_std))


def astype(params: JumpReLUParams, dtype) -> JumpReLUParams:
  """Every leaf cast to `dtype` (single or stacked)."""
  dtype = jnp.dtype(dtype)
  return jax.tree.map(lambda p: p if p.dtype == dtype else p.astype(dtype), params)


def stack(layers: Sequence[JumpReLUParams]) -> JumpReLUParams:
  """[JumpReLUParams per layer] -> one JumpReLUParams with a leading [L] axis."""
  if not layers:
    raise ValueError("stack needs at least one SAE")
  shapes = {jax.tree.map(jnp.shape, p) for p in layers}
  if len(shapes) > 1:
    raise ValueError(f"cannot stack SAEs of different shapes: {sorted(map(str, shapes))}")
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *layers)


def unstack(stacked: JumpReLUParams) -> list[JumpReLUParams]:
  """Inverse of `stack`: a list of L single-layer params."""
  n_layers = stacked.W_enc.shape[0]
  return [jax.tree.map(lambda p, i=i: p[i], stacked) for i in range(n_layers)]


def encode_stacked(stacked: JumpReLUParams, xs: jax.Array) -> jax.Array:
  """xs [L, ..., d] (layer l's residuals) -> codes [L, ..., W], layer l through SAE l."""
  return jax.vmap(encode)(stacked, xs)


def decode_stacked(stacked: JumpReLUParams, fs: jax.Array) -> jax.Array:
  """fs [L, ..., W] -> reconstructions [L, ..., d]."""
  return jax.vmap(decode)(stacked, fs)
