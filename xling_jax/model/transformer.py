"""The Gemma 2 / Gemma 3 forward pass over a plain parameter pytree, with every block's residual.

Parameter layout (`L` layers, `D` d_model, `N` heads, `K` kv heads, `H` head_dim, `F` MLP width,
`V` vocab; the table in `layout.py` is the one place it is written):

    embed       [V, D]            tied: logits = final_norm(x) @ embed.T
    final_norm  [D]
    layers/
      pre_attn_norm, post_attn_norm, pre_ffw_norm, post_ffw_norm   [L, D]   (applied as 1 + w)
      q_norm, k_norm [L, H]       (Gemma 3's qk-norm, only when config.qk_norm)
      q [L, N, D, H]   k, v [L, K, D, H]   o [L, N, H, D]
      gate, up [L, D, F]   down [L, F, D]

One block serves both families; what differs is config data: each layer's attention kind
(window, RoPE base and linear scaling), qk-norm, the optional softcaps and the query scalar.
Per-layer weights are stacked so one `lax.scan` runs every block. Numerics follow HF: norms,
softmax, RoPE tables and softcaps in float32 whatever the compute dtype, softcap before the
mask, post-norms before the residual add, GELU-tanh, rotate-half RoPE, the embedding scale
sqrt(D) rounded to the embedding's dtype.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from xling_jax.kernels import attention as attention_seam
from xling_jax.model import layout
from xling_jax.model.config import ModelConfig

Params = dict[str, Any]


@flax.struct.dataclass
class ForwardOutput:
  """logits [B, T, V] float32 (or None); residuals [L, B, T, D] = raw output of each block
  (Gemma Scope `blocks.{i}.hook_resid_post`), or None; embeddings [B, T, D] = input to block 0."""
  logits: jax.Array | None
  residuals: jax.Array | None
  embeddings: jax.Array


@flax.struct.dataclass
class ProjectHook:
  """A change to the block's linear maps, supplied from outside the model (LoRA is one).

  After each linear module computes y = x W, the block calls
  `apply(module, x, y, xs_l, consts) -> y'` with x [B, T, in...], y [B, T, out...], the
  module name (`layout.LINEAR_MODULES`), layer l's slice of `xs` (a pytree with leading axis
  L, scanned with the weights) and `consts` (the same for every layer). `apply` is static
  (part of the compiled program); `xs` and `consts` are traced.
  """
  apply: Callable = flax.struct.field(pytree_node=False)
  xs: Any = None
  consts: Any = None


def param_shapes(config: ModelConfig) -> Params:
  """The shape of every parameter, in the layout above."""
  return layout.param_shapes(config)


def init_params(config: ModelConfig, key: jax.Array, scale: float = 0.02,
                on_device: bool = False) -> Params:
  """Random parameters (normal * scale; norm weights normal * 0.1 so `1 + w` is exercised).

  Drawn with numpy from the key's bits by default: compiling JAX's threefry for every leaf shape
  costs tens of seconds on a small CPU, numpy costs milliseconds. Same key, same params.
  `on_device=True` draws with `jax.random` on the default device instead (other values): numpy
  needs about a minute for Gemma-2-2B's 2.6B weights, an accelerator a second.
  """
  shapes = param_shapes(config)
  dtype = jnp.dtype(config.param_dtype)
  norms = layout.norm_paths(config)
  is_leaf = lambda s: isinstance(s, tuple)
  paths, treedef = jax.tree_util.tree_flatten_with_path(shapes, is_leaf=is_leaf)
  stds = [0.1 if tuple(p.key for p in path) in norms else scale for path, _ in paths]
  leaves = [shape for _, shape in paths]
  if on_device:
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [
        jax.random.normal(k, shape, dtype) * jnp.asarray(std, dtype)
        for k, shape, std in zip(keys, leaves, stds)])
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key)
                                         if jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
                                         else key).ravel().tolist())
  return jax.tree.unflatten(treedef, [
      jnp.asarray(rng.standard_normal(shape, dtype=np.float32) * std, dtype)
      for shape, std in zip(leaves, stds)])


def check_params(params: Params, config: ModelConfig) -> None:
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
  """Gemma RMSNorm over the last axis in float32: x * rsqrt(mean(x^2) + eps) * (1 + w), cast
  back to x.dtype."""
  x32 = x.astype(jnp.float32)
  normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return (normed * (1.0 + weight.astype(jnp.float32))).astype(x.dtype)


def softcap(x: jax.Array, cap: float | None) -> jax.Array:
  return x if cap is None else jnp.tanh(x / cap) * cap


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
  """[B, T] 0/1 mask -> [B, T] int32 positions counting real tokens only (left or right padding)."""
  return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


def rope_table(positions: jax.Array, head_dim: int, base: float,
               scale: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """float32 (cos, sin) [B, T, 1, H] for rotate-half RoPE; `scale` divides the frequencies
  (HF's linear rope scaling)."""
  inv_freq = 1.0 / (base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  inv_freq = inv_freq / scale
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """x [B, T, n, H] rotated by a `rope_table`."""
  x1, x2 = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return x * cos.astype(x.dtype) + rotated * sin.astype(x.dtype)


def attention_mask_for(attention_mask: jax.Array, positions: jax.Array, window: int | None,
                       pair_mask: jax.Array | None = None) -> jax.Array:
  """Boolean [B, 1, 1, T, S]: causal, real keys only, `pair_mask` [B, T, S] when given (packed
  layouts), and with a window only keys with q_pos - window < k_pos."""
  T = attention_mask.shape[-1]
  idx = jnp.arange(T)
  mask = (idx[None, :] <= idx[:, None])[None] & attention_mask.astype(bool)[:, None, :]
  if pair_mask is not None:
    mask = mask & pair_mask.astype(bool)
  if window is not None:
    mask = mask & (positions[:, :, None] - positions[:, None, :] < window)
  return mask[:, None, None]


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
              logit_softcap: float | None) -> jax.Array:
  """Grouped-query attention. q [B, T, K, G, H] (already scaled), k, v [B, S, K, H],
  mask [B, 1, 1, T, S] -> [B, T, K, G, H]. Scores and softmax in float32. Plain JAX or a fused
  kernel, as the kernel seam chooses (`xling_jax.kernels.select`)."""
  return attention_seam.attention(q, k, v, mask, logit_softcap)


def block(config: ModelConfig, layer: Params, x: jax.Array, rope: tuple[jax.Array, jax.Array],
          mask: jax.Array, hook: ProjectHook | None = None, hook_xs: Any = None) -> jax.Array:
  """One decoder block. x [B, T, D] -> [B, T, D]; rope = (cos, sin) of this layer's kind;
  mask [B, 1, 1, T, S] boolean; `hook_xs` is this layer's slice of `hook.xs`."""
  c = config
  B, T, D = x.shape

  def linear(module: str, h: jax.Array) -> jax.Array:
    y = jnp.einsum(layout.einsum_spec(module), h, layer[module])
    return y if hook is None else hook.apply(module, h, y, hook_xs, hook.consts)

  h = rms_norm(x, layer["pre_attn_norm"], c.rms_norm_eps)
  q, k, v = linear("q", h), linear("k", h), linear("v", h)
  if c.qk_norm:
    q = rms_norm(q, layer["q_norm"], c.rms_norm_eps)
    k = rms_norm(k, layer["k_norm"], c.rms_norm_eps)
  q = apply_rope(q, *rope) * jnp.asarray(c.query_pre_attn_scalar ** -0.5, q.dtype)
  k = apply_rope(k, *rope)
  q = q.reshape(B, T, c.n_kv_heads, c.n_heads // c.n_kv_heads, c.head_dim)
  attn = attention(q, k, v, mask, c.attn_logit_softcap).reshape(B, T, c.n_heads, c.head_dim)
  x = x + rms_norm(linear("o", attn), layer["post_attn_norm"], c.rms_norm_eps)

  h = rms_norm(x, layer["pre_ffw_norm"], c.rms_norm_eps)
  act = jax.nn.gelu(linear("gate", h), approximate=True) * linear("up", h)
  return x + rms_norm(linear("down", act), layer["post_ffw_norm"], c.rms_norm_eps)


def cast_params(params: Params, dtype) -> Params:
  dtype = jnp.dtype(dtype)
  return jax.tree.map(lambda p: p if p.dtype == dtype else p.astype(dtype), params)


def embed(params: Params, config: ModelConfig, tokens: jax.Array) -> jax.Array:
  """tokens [B, T] -> scaled embeddings [B, T, D] in the compute dtype. The scale sqrt(D) is
  rounded to the table's dtype first, as HF and the gemma library do (25.25 for 640 in bf16)."""
  table = params["embed"]
  x = jnp.take(table, tokens, axis=0)
  x = x * jnp.asarray(config.d_model ** 0.5, table.dtype)
  return x.astype(jnp.dtype(config.compute_dtype))


def _logits(config: ModelConfig, h: jax.Array, rows: jax.Array) -> jax.Array:
  """Final-normed h [..., D] against embedding rows [V', D] -> softcapped float32 [..., V']."""
  logits = jnp.einsum("...d,vd->...v", h, rows.astype(h.dtype))
  return softcap(logits.astype(jnp.float32), config.final_logit_softcap)


def unembed(params: Params, config: ModelConfig, x: jax.Array) -> jax.Array:
  """Final norm, tied unembedding and final softcap. x [..., D] raw last-block output ->
  float32 logits [..., V]."""
  return _logits(config, rms_norm(x, params["final_norm"], config.rms_norm_eps), params["embed"])


# Rows of the embedding per step of `target_logprobs`: [1024 tokens, 16384] float32 logits are
# 64 MB, which a CPU's caches hold far better than the 1 GB of a 262k vocabulary at once.
VOCAB_CHUNK = 16384


def target_logprobs(params: Params, config: ModelConfig, x: jax.Array, targets: jax.Array,
                    vocab_chunk: int = VOCAB_CHUNK) -> jax.Array:
  """log softmax(unembed(x))[targets] as float32 [...], from x [..., D] raw last-block output
  and targets [...] int, without ever holding [..., V] logits: the vocabulary is walked
  `vocab_chunk` rows at a time with a running max and sum of exponentials (online logsumexp).
  On the 2-core CPU this takes 0.6x the time of the whole logits + logsumexp for Gemma's vocab."""
  h = rms_norm(x, params["final_norm"], config.rms_norm_eps)
  flat = h.reshape(-1, h.shape[-1])
  table = params["embed"]
  vocab = table.shape[0]
  n_chunks = -(-vocab // vocab_chunk)
  chunk = -(-vocab // n_chunks)

  def step(carry, i):
    running_max, total = carry
    start = jnp.minimum(i * chunk, vocab - chunk)  # the last chunk overlaps its predecessor ...
    logits = _logits(config, flat, jax.lax.dynamic_slice_in_dim(table, start, chunk))
    fresh = start + jnp.arange(chunk) >= i * chunk  # ... whose rows it must not count twice
    logits = jnp.where(fresh, logits, -jnp.inf)
    new_max = jnp.maximum(running_max, logits.max(-1))
    total = total * jnp.exp(running_max - new_max) + jnp.exp(logits - new_max[:, None]).sum(-1)
    return (new_max, total), None

  init = (jnp.full(flat.shape[:1], -jnp.inf, jnp.float32), jnp.zeros(flat.shape[:1], jnp.float32))
  (running_max, total), _ = jax.lax.scan(step, init, jnp.arange(n_chunks))
  rows = jnp.take(table, targets.reshape(-1), axis=0)  # [N, D]
  picked = jax.vmap(lambda h_i, row: _logits(config, h_i, row[None])[0])(flat, rows)
  return (picked - running_max - jnp.log(total)).reshape(targets.shape)


# jax.checkpoint policy per `remat` setting (None: save nothing but the inputs). The weight
# matmuls are the einsums without batch dimensions; attention's score/value products have them.
REMAT_POLICIES = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def scan_blocks(params: Params, config: ModelConfig, x: jax.Array,
                attention_mask: jax.Array, *,
                observe: Callable[[jax.Array, Any], Any] | None = None,
                observe_xs: Any = None, hook: ProjectHook | None = None,
                positions: jax.Array | None = None, pair_mask: jax.Array | None = None,
                remat: bool | str = False) -> tuple[jax.Array, Any]:
  """Run every block with one `lax.scan`.

  x [B, T, D] embeddings; attention_mask [B, T]. After each block, `observe(resid, xs_l)` is
  called inside the scan with the block's raw output [B, T, D] and layer l's slice of
  `observe_xs` (a pytree with leading axis L); its results are stacked to a leading L axis.
  This is how residuals are captured, and how the analysis fuses per-layer SAE statistics
  without materialising every layer's activations. Returns (last block output, stacked results).
  `hook` changes the linear maps (see ProjectHook). `positions` [B, T] default to
  `positions_from_mask`; `pair_mask` [B, T, S] restricts which keys each query sees on top of
  causality (for packing several continuations after one context).
  Each attention kind's mask and RoPE table are built once; the scan indexes them by the
  layer's kind. `remat` (what autodiff keeps of each block for the backward pass): False or
  "none" keeps everything; True or "full" keeps only the block's input and recomputes the
  block; "dots" keeps the outputs of the weight matmuls and recomputes the rest (norms,
  attention, GELU): most of the memory saving at a fraction of the recompute.
  """
  c = config
  remat = {False: "none", True: "full"}.get(remat, remat)
  if remat != "none" and remat not in REMAT_POLICIES:
    raise ValueError(f"remat={remat!r}; choose one of none, {', '.join(REMAT_POLICIES)}")
  if positions is None:
    positions = positions_from_mask(attention_mask)
  masks = jnp.stack([attention_mask_for(attention_mask, positions, kind.window, pair_mask)
                     for kind in c.attention_kinds])
  tables = [rope_table(positions, c.head_dim, kind.rope_base, kind.rope_scale)
            for kind in c.attention_kinds]
  cos, sin = jnp.stack([t[0] for t in tables]), jnp.stack([t[1] for t in tables])
  layers = cast_params(params["layers"], jnp.dtype(c.compute_dtype))
  hook_xs = None if hook is None else hook.xs

  def body(carry, xs):
    layer, kind, hook_l, obs_x = xs
    out = block(c, layer, carry, (cos[kind], sin[kind]), masks[kind], hook, hook_l)
    return out, (None if observe is None else observe(out, obs_x))

  if remat != "none":
    body = jax.checkpoint(body, policy=REMAT_POLICIES[remat])
  kinds = jnp.asarray(c.layer_kinds, jnp.int32)
  return jax.lax.scan(body, x, (layers, kinds, hook_xs, observe_xs))


def forward(params: Params, config: ModelConfig, tokens: jax.Array,
            attention_mask: jax.Array | None = None, *, return_logits: bool = True,
            return_residuals: bool = True, hook: ProjectHook | None = None,
            positions: jax.Array | None = None, pair_mask: jax.Array | None = None,
            remat: bool | str = False) -> ForwardOutput:
  """Full forward pass.

  tokens [B, T] int; attention_mask [B, T] (1 = real token; default all ones). Positions come
  from the mask, so left- and right-padded batches agree at real tokens. `hook`, `positions`,
  `pair_mask` and `remat` are as in `scan_blocks`.
  Jittable with `config` static: `jax.jit(forward, static_argnames=("config", ...))`.
  """
  if attention_mask is None:
    attention_mask = jnp.ones(tokens.shape, jnp.int32)
  x = embed(params, config, tokens)
  last, residuals = scan_blocks(
      params, config, x, attention_mask,
      observe=(lambda r, _: r) if return_residuals else None, hook=hook,
      positions=positions, pair_mask=pair_mask, remat=remat)
  logits = unembed(params, config, last) if return_logits else None
  return ForwardOutput(logits=logits, residuals=residuals, embeddings=x)


jit_forward = jax.jit(
    forward, static_argnames=("config", "return_logits", "return_residuals", "remat"))
