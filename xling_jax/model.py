"""Gemma-2 forward pass over a plain parameter pytree, with the residual stream of every block.

Parameter layout (`L` layers, `D` d_model, `N` heads, `K` kv heads, `H` head_dim, `F` MLP width,
`V` vocab); per-layer weights are stacked on a leading axis so one `lax.scan` runs every block:

    embed       [V, D]            tied: logits = final_norm(x) @ embed.T
    final_norm  [D]
    layers/
      pre_attn_norm, post_attn_norm, pre_ffw_norm, post_ffw_norm   [L, D]   (applied as 1 + w)
      q [L, N, D, H]   k, v [L, K, D, H]   o [L, N, H, D]
      gate, up [L, D, F]   down [L, F, D]

The math follows DESIGN.md s.2 exactly (softcap before the mask, post-norms before the residual
add, GELU-tanh, RoPE rotate-half, embedding x sqrt(D)). Norms, softmax, RoPE and softcaps run in
float32 whatever the compute dtype, matching HF's numerics.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp

from xling_jax.config import Gemma2Config

Params = dict[str, Any]
# Large finite negative: a fully masked row (a padding query) yields a uniform softmax, not NaN.
_MASK_VALUE = -2.3819763e38
LAYER_KEYS = ("pre_attn_norm", "post_attn_norm", "pre_ffw_norm", "post_ffw_norm",
              "q", "k", "v", "o", "gate", "up", "down")
LORA_MODULES = ("q", "k", "v", "o", "gate", "up", "down")


@flax.struct.dataclass
class ForwardOutput:
  """logits [B, T, V] float32 (or None); residuals [L, B, T, D] = raw output of each block
  (Gemma Scope `blocks.{i}.hook_resid_post`), or None; embeddings [B, T, D] = input to block 0."""
  logits: jax.Array | None
  residuals: jax.Array | None
  embeddings: jax.Array


def param_shapes(config: Gemma2Config) -> Params:
  """The shape of every parameter, in the layout above."""
  c = config
  L, D, N, K, H, F = (c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.mlp_hidden)
  return {
      "embed": (c.vocab_size, D),
      "final_norm": (D,),
      "layers": {
          "pre_attn_norm": (L, D), "post_attn_norm": (L, D),
          "pre_ffw_norm": (L, D), "post_ffw_norm": (L, D),
          "q": (L, N, D, H), "k": (L, K, D, H), "v": (L, K, D, H), "o": (L, N, H, D),
          "gate": (L, D, F), "up": (L, D, F), "down": (L, F, D),
      },
  }


def init_params(config: Gemma2Config, key: jax.Array, scale: float = 0.02,
                on_device: bool = False) -> Params:
  """Random parameters (normal * scale; norm weights normal * 0.1 so `1 + w` is exercised).

  Drawn with numpy from the key's bits by default: compiling JAX's threefry for every leaf shape
  costs tens of seconds on a small CPU, numpy costs milliseconds. Same key, same params.
  `on_device=True` draws with `jax.random` on the default device instead (other values): numpy
  needs about a minute for Gemma-2-2B's 2.6B weights, an accelerator a second.
  """
  import numpy as np
  shapes = param_shapes(config)
  dtype = jnp.dtype(config.param_dtype)
  is_leaf = lambda s: isinstance(s, tuple)

  def std(shape):
    is_norm = len(shape) <= 2 and shape[-1] == config.d_model and shape != shapes["embed"]
    return 0.1 if is_norm else scale

  if on_device:
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=is_leaf)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [
        jax.random.normal(k, shape, dtype) * jnp.asarray(std(shape), dtype)
        for k, shape in zip(keys, leaves)])
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key)
                                         if jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
                                         else key).ravel().tolist())
  return jax.tree.map(
      lambda shape: jnp.asarray(rng.standard_normal(shape, dtype=np.float32) * std(shape), dtype),
      shapes, is_leaf=is_leaf)


def check_params(params: Params, config: Gemma2Config) -> None:
  """Raise ValueError naming every parameter whose shape disagrees with `config`."""
  expected = param_shapes(config)
  problems = []
  for path, shape in jax.tree_util.tree_flatten_with_path(
      expected, is_leaf=lambda s: isinstance(s, tuple))[0]:
    name = "/".join(str(getattr(p, "key", p)) for p in path)
    node = params
    try:
      for p in path:
        node = node[p.key]
    except (KeyError, TypeError):
      problems.append(f"{name}: missing (expected shape {shape})")
      continue
    if tuple(node.shape) != tuple(shape):
      problems.append(f"{name}: shape {tuple(node.shape)}, expected {shape}")
  if problems:
    raise ValueError("parameters do not match the config:\n  " + "\n  ".join(problems))


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
  """Gemma RMSNorm in float32: x * rsqrt(mean(x^2) + eps) * (1 + w), cast back to x.dtype."""
  x32 = x.astype(jnp.float32)
  normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return (normed * (1.0 + weight.astype(jnp.float32))).astype(x.dtype)


def softcap(x: jax.Array, cap: float | None) -> jax.Array:
  return x if cap is None else jnp.tanh(x / cap) * cap


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
  """[B, T] 0/1 mask -> [B, T] int32 positions counting real tokens only (left or right padding)."""
  return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotate-half RoPE over the full head dim. x [B, T, n, H], positions [B, T]."""
  head_dim = x.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
  cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
  x1, x2 = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return x * cos + rotated * sin


def attention_masks(attention_mask: jax.Array, positions: jax.Array, window: int,
                    pair_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(global, local) boolean masks [B, 1, 1, T, S]: causal, real keys only, and `pair_mask`
  [B, T, S] when given (packed layouts); local also keeps a key only if q_pos - window < k_pos."""
  T = attention_mask.shape[-1]
  idx = jnp.arange(T)
  causal = idx[None, :] <= idx[:, None]  # [T, S]
  real_key = attention_mask.astype(bool)[:, None, :]  # [B, 1, S]
  global_mask = causal[None] & real_key
  if pair_mask is not None:
    global_mask = global_mask & pair_mask.astype(bool)
  in_window = positions[:, :, None] - positions[:, None, :] < window  # [B, T, S]
  local_mask = global_mask & in_window
  return global_mask[:, None, None], local_mask[:, None, None]


def _project(x, w, lora_ab, lora_scale, spec: str, out_shape_tail):
  """x @ w (einsum `spec`), plus the LoRA path scale * B(A x) when this module is adapted.
  LoRA A [in, r], B [r, out] act on the flattened in/out features."""
  y = jnp.einsum(spec, x, w)
  if lora_ab is not None:
    a, b = lora_ab["a"].astype(x.dtype), lora_ab["b"].astype(x.dtype)
    x_flat = x.reshape(x.shape[:2] + (-1,))
    delta = (x_flat @ a) @ b * jnp.asarray(lora_scale, x.dtype)
    y = y + delta.reshape(y.shape[:2] + tuple(out_shape_tail))
  return y


def block(config: Gemma2Config, layer: Params, x: jax.Array, positions: jax.Array,
          mask: jax.Array, lora_layer: Params | None = None,
          lora_scale: float = 1.0) -> jax.Array:
  """One Gemma-2 decoder block. x [B, T, D] -> [B, T, D]; mask [B, 1, 1, T, S] boolean."""
  c = config
  lora_layer = lora_layer or {}
  B, T, D = x.shape
  G = c.n_heads // c.n_kv_heads

  h = rms_norm(x, layer["pre_attn_norm"], c.rms_norm_eps)
  q = _project(h, layer["q"], lora_layer.get("q"), lora_scale, "btd,ndh->btnh",
               (c.n_heads, c.head_dim))
  k = _project(h, layer["k"], lora_layer.get("k"), lora_scale, "btd,kdh->btkh",
               (c.n_kv_heads, c.head_dim))
  v = _project(h, layer["v"], lora_layer.get("v"), lora_scale, "btd,kdh->btkh",
               (c.n_kv_heads, c.head_dim))
  q = rope(q, positions, c.rope_theta) * jnp.asarray(c.query_pre_attn_scalar ** -0.5, q.dtype)
  k = rope(k, positions, c.rope_theta)
  q = q.reshape(B, T, c.n_kv_heads, G, c.head_dim)
  logits = jnp.einsum("btkgh,bskh->bkgts", q, k).astype(jnp.float32)
  logits = softcap(logits, c.attn_logit_softcap)
  logits = jnp.where(mask, logits, _MASK_VALUE)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  attn = jnp.einsum("bkgts,bskh->btkgh", probs, v).reshape(B, T, c.n_heads, c.head_dim)
  attn_out = _project(attn, layer["o"], lora_layer.get("o"), lora_scale, "btnh,nhd->btd", (D,))
  x = x + rms_norm(attn_out, layer["post_attn_norm"], c.rms_norm_eps)

  h = rms_norm(x, layer["pre_ffw_norm"], c.rms_norm_eps)
  gate = _project(h, layer["gate"], lora_layer.get("gate"), lora_scale, "btd,df->btf",
                  (c.mlp_hidden,))
  up = _project(h, layer["up"], lora_layer.get("up"), lora_scale, "btd,df->btf",
                (c.mlp_hidden,))
  act = jax.nn.gelu(gate, approximate=True) * up
  ffw_out = _project(act, layer["down"], lora_layer.get("down"), lora_scale, "btf,fd->btd", (D,))
  return x + rms_norm(ffw_out, layer["post_ffw_norm"], c.rms_norm_eps)


def cast_params(params: Params, dtype) -> Params:
  dtype = jnp.dtype(dtype)
  return jax.tree.map(lambda p: p if p.dtype == dtype else p.astype(dtype), params)


def embed(params: Params, config: Gemma2Config, tokens: jax.Array) -> jax.Array:
  """tokens [B, T] -> scaled embeddings [B, T, D] in the compute dtype."""
  table = params["embed"]
  x = jnp.take(table, tokens, axis=0).astype(jnp.dtype(config.compute_dtype))
  return x * jnp.asarray(config.embed_scale, x.dtype)


def unembed(params: Params, config: Gemma2Config, x: jax.Array) -> jax.Array:
  """Final norm, tied unembedding and final softcap. x [..., D] raw last-block output ->
  float32 logits [..., V]."""
  h = rms_norm(x, params["final_norm"], config.rms_norm_eps)
  logits = jnp.einsum("...d,vd->...v", h, params["embed"].astype(h.dtype))
  return softcap(logits.astype(jnp.float32), config.final_logit_softcap)


# jax.checkpoint policy per `remat` setting (None: save nothing but the inputs). The weight
# matmuls are the einsums without batch dimensions; attention's score/value products have them.
REMAT_POLICIES = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def scan_blocks(params: Params, config: Gemma2Config, x: jax.Array,
                attention_mask: jax.Array, *,
                observe: Callable[[jax.Array, Any], Any] | None = None,
                observe_xs: Any = None, lora: Params | None = None,
                positions: jax.Array | None = None, pair_mask: jax.Array | None = None,
                remat: bool | str = False) -> tuple[jax.Array, Any]:
  """Run every block with one `lax.scan`.

  x [B, T, D] embeddings; attention_mask [B, T]. After each block, `observe(resid, xs_l)` is
  called inside the scan with the block's raw output [B, T, D] and layer l's slice of
  `observe_xs` (a pytree with leading axis L); its results are stacked to a leading L axis.
  This is how residuals are captured, and how the analysis fuses per-layer SAE statistics
  without materialising every layer's activations. Returns (last block output, stacked results).
  `positions` [B, T] default to `positions_from_mask`; `pair_mask` [B, T, S] restricts which
  keys each query sees on top of causality (for packing several continuations after one context).
  `remat` (what autodiff keeps of each block for the backward pass): False or "none" keeps
  everything; True or "full" keeps only the block's input and recomputes the block; "dots" keeps
  the outputs of the weight matmuls and recomputes the rest (norms, attention, GELU): most of
  the memory saving at a fraction of the recompute (REMAT_POLICIES).
  """
  c = config
  remat = {False: "none", True: "full"}.get(remat, remat)
  if remat != "none" and remat not in REMAT_POLICIES:
    raise ValueError(f"remat={remat!r}; choose one of none, {', '.join(REMAT_POLICIES)}")
  compute = jnp.dtype(c.compute_dtype)
  if positions is None:
    positions = positions_from_mask(attention_mask)
  global_mask, local_mask = attention_masks(attention_mask, positions, c.sliding_window, pair_mask)
  is_local = jnp.array([c.is_local_layer(i) for i in range(c.n_layers)])
  layers = cast_params(params["layers"], compute)
  lora_layers = None if lora is None else lora["layers"]
  lora_scale = 1.0 if lora is None else lora["scale"]

  def body(carry, xs):
    layer, local, lora_l, obs_x = xs
    mask = jnp.where(local, local_mask, global_mask)
    out = block(c, layer, carry, positions, mask, lora_l, lora_scale)
    return out, (None if observe is None else observe(out, obs_x))

  if remat != "none":
    body = jax.checkpoint(body, policy=REMAT_POLICIES[remat])
  last, observed = jax.lax.scan(body, x, (layers, is_local, lora_layers, observe_xs))
  return last, observed


def forward(params: Params, config: Gemma2Config, tokens: jax.Array,
            attention_mask: jax.Array | None = None, *, return_logits: bool = True,
            return_residuals: bool = True, lora: Params | None = None,
            positions: jax.Array | None = None, pair_mask: jax.Array | None = None,
            remat: bool | str = False) -> ForwardOutput:
  """Full forward pass.

  tokens [B, T] int; attention_mask [B, T] (1 = real token; default all ones). Positions come
  from the mask, so left- and right-padded batches agree at real tokens. `lora` is an adapter
  from `lora.lora` ({"scale", "layers": {module: {"a" [L, in, r], "b" [L, r, out]}}}).
  `positions` and `pair_mask` are as in `scan_blocks` (explicit positions / packed layouts).
  Jittable with `config` static: `jax.jit(forward, static_argnames=("config", ...))`.
  """
  if attention_mask is None:
    attention_mask = jnp.ones(tokens.shape, jnp.int32)
  x = embed(params, config, tokens)
  last, residuals = scan_blocks(
      params, config, x, attention_mask,
      observe=(lambda r, _: r) if return_residuals else None, lora=lora,
      positions=positions, pair_mask=pair_mask, remat=remat)
  logits = unembed(params, config, last) if return_logits else None
  return ForwardOutput(logits=logits, residuals=residuals, embeddings=x)


jit_forward = jax.jit(
    forward, static_argnames=("config", "return_logits", "return_residuals", "remat"))
