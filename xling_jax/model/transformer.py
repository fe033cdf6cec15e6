"""The Gemma 2 / 3 / 4 forward pass over a plain parameter pytree, with every block's residual.

Parameter layout (`L` layers, `D` d_model, `N` heads, `K` kv heads, `H` head_dim, `F` MLP width,
`V` vocab; the table in `layout.py` is the one place it is written):

    embed       [V, D]            tied: logits = final_norm(x) @ embed.T
    final_norm  [D]
    layers/
      pre_attn_norm, post_attn_norm, pre_ffw_norm, post_ffw_norm   [L, D]   (applied as 1 + w;
                                  Gemma 4: as w, `config.norm_offset`)
      q_norm, k_norm [L, H]       (qk-norm, only when config.qk_norm)
      q [L, N, D, H]   k, v [L, K, D, H]   o [L, N, H, D]
      gate, up [L, D, F]   down [L, F, D]
    groups/{group}/...            Gemma 4: the weights whose shape differs between layers, stacked
                                  per layer group (`ModelConfig.layer_groups`, `layout.stacks`)

plus Gemma 4's per-layer embeddings (`ple_embed [U, L, P]`, `ple_model_proj [L, D, P]`,
`ple_proj_norm [P]`; per layer `ple_gate [D, P]`, `ple_proj [P, D]`, `ple_post_norm [D]`), routed
experts (per layer `router [D, E]`, `router_scale [D]`, `expert_scale [E]`, `expert_gate`,
`expert_up [E, D, I]`, `expert_down [E, I, D]`, three more norms) and `layer_scalar [L, 1]`.

One block serves every family; what differs is config data: each layer's attention kind
(window, RoPE base, scaling and rotated fraction, head width, KV heads, K = V), qk-norm, the
norm offset, the optional softcaps and the query scalar, and Gemma 4's optional parts. Per-layer
weights are stacked so one `lax.scan` runs every block; when layers differ in shape (Gemma 4),
the scan switches per layer to its group's block, which indexes that group's stacks, and KV-shared
layers read the keys and values their producer layer left in the scan's carry. Numerics follow
HF: norms, softmax, RoPE tables and softcaps in float32 whatever the compute dtype, softcap before
the mask, post-norms before the residual add, GELU-tanh, rotate-half RoPE, the embedding scale
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
from xling_jax.model.config import LayerGroup, ModelConfig

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
  (part of the compiled program); `xs` and `consts` are traced. On Gemma 4 a module's features
  differ between layers (wider global heads, a wider MLP on KV-shared layers), and KV-shared
  layers have no k, v: `apply` gets each layer's own x and y.
  """
  apply: Callable = flax.struct.field(pytree_node=False)
  xs: Any = None
  consts: Any = None


def param_shapes(config: ModelConfig) -> Params:
  """The shape of every parameter, in the layout above."""
  return layout.param_shapes(config)


def init_params(config: ModelConfig, key: jax.Array, scale: float = 0.02,
                on_device: bool = False) -> Params:
  """Random parameters (normal * scale; norm weights 1 - norm_offset + normal * 0.1, so the
  applied scale is near 1 and its offset is exercised).

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
  is_norm = [tuple(p.key for p in path) in norms for path, _ in paths]
  stds = [0.1 if norm else scale for norm in is_norm]
  # A norm's multiplier is norm_offset + w: draw w around 1 - norm_offset (0 on Gemma 2/3).
  means = [1.0 - config.norm_offset if norm else 0.0 for norm in is_norm]
  leaves = [shape for _, shape in paths]
  if on_device:
    keys = jax.random.split(key, len(leaves))
    draws = [jax.random.normal(k, shape, dtype) * jnp.asarray(std, dtype)
             for k, shape, std in zip(keys, leaves, stds)]
  else:
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)
                                           if jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
                                           else key).ravel().tolist())
    draws = [jnp.asarray(rng.standard_normal(shape, dtype=np.float32) * std, dtype)
             for shape, std in zip(leaves, stds)]
  return jax.tree.unflatten(treedef, [draw + jnp.asarray(mean, dtype) if mean else draw
                                      for draw, mean in zip(draws, means)])


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


def rms_norm(x: jax.Array, weight: jax.Array | None, eps: float,
             offset: float = 1.0) -> jax.Array:
  """Gemma RMSNorm over the last axis in float32: x * rsqrt(mean(x^2) + eps) * (offset + w)
  (Gemma 2/3: offset 1; Gemma 4: 0; `weight=None`: no scale), cast back to x.dtype."""
  x32 = x.astype(jnp.float32)
  normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  if weight is not None:
    normed = normed * (offset + weight.astype(jnp.float32))
  return normed.astype(x.dtype)


def softcap(x: jax.Array, cap: float | None) -> jax.Array:
  return x if cap is None else jnp.tanh(x / cap) * cap


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
  """[B, T] 0/1 mask -> [B, T] int32 positions counting real tokens only (left or right padding)."""
  return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


def rope_table(positions: jax.Array, head_dim: int, base: float, scale: float = 1.0,
               fraction: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """float32 (cos, sin) [B, T, 1, H] for rotate-half RoPE; `scale` divides the frequencies
  (HF's linear rope scaling); only the first `fraction` of the H/2 frequencies rotate, the rest
  are 0 (cos 1, sin 0: HF's "proportional" RoPE, whose exponent keeps the denominator H)."""
  inv_freq = 1.0 / (base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  rotated = int(fraction * head_dim // 2)
  if rotated < head_dim // 2:
    inv_freq = jnp.where(jnp.arange(head_dim // 2) < rotated, inv_freq, 0.0)
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
          mask: jax.Array, hook: ProjectHook | None = None, hook_xs: Any = None, *,
          group: LayerGroup | None = None, kv: tuple[jax.Array, jax.Array] | None = None,
          ple: jax.Array | None = None) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  """One decoder block. x [B, T, D] -> (output [B, T, D], (k, v) [B, S, K, H] it attended
  with); rope = (cos, sin) of this layer's kind; mask [B, 1, 1, T, S] boolean; `hook_xs` is
  this layer's slice of `hook.xs`. `group` (default: the config's only one) fixes the layer's
  head shape and K/V role; a KV-shared layer attends with `kv` instead of its own. `ple`
  [B, T, P]: this layer's per-layer input (Gemma 4 E2B/E4B)."""
  c = config
  group = group or c.layer_groups[0]
  B, T, D = x.shape
  H, K = group.head_dim, group.n_kv_heads
  eps, offset = c.rms_norm_eps, c.norm_offset
  norm = lambda y, w: rms_norm(y, w, eps, offset)

  def linear(module: str, h: jax.Array) -> jax.Array:
    y = jnp.einsum(layout.einsum_spec(module), h, layer[module])
    return y if hook is None else hook.apply(module, h, y, hook_xs, hook.consts)

  h = norm(x, layer["pre_attn_norm"])
  q = linear("q", h)
  if group.own_kv:
    k = linear("k", h)
    v = linear("v", h) if group.has_v else k  # K = V: the raw key projection
  if c.qk_norm:
    q = norm(q, layer["q_norm"])
    if group.own_kv:
      k = norm(k, layer["k_norm"])
  q = apply_rope(q, *rope) * jnp.asarray(c.query_pre_attn_scalar ** -0.5, q.dtype)
  if group.own_kv:
    k = apply_rope(k, *rope)
    if c.v_norm:
      v = rms_norm(v, None, eps)
  else:
    k, v = kv
  q = q.reshape(B, T, K, c.n_heads // K, H)
  attn = attention(q, k, v, mask, c.attn_logit_softcap).reshape(B, T, c.n_heads, H)
  x = x + norm(linear("o", attn), layer["post_attn_norm"])

  h = norm(x, layer["pre_ffw_norm"])
  act = jax.nn.gelu(linear("gate", h), approximate=True) * linear("up", h)
  ffw = linear("down", act)
  if c.n_experts:
    ffw = (norm(ffw, layer["post_ffw_norm_1"])
           + norm(experts(c, layer, x), layer["post_ffw_norm_2"]))
  x = x + norm(ffw, layer["post_ffw_norm"])
  if c.ple_dim:
    gated = jax.nn.gelu(linear("ple_gate", x), approximate=True) * ple
    x = x + norm(linear("ple_proj", gated), layer["ple_post_norm"])
  if c.layer_scalar:
    x = x * (offset + layer["layer_scalar"]).astype(x.dtype)
  return x, (k, v)


def experts(config: ModelConfig, layer: Params, r: jax.Array) -> jax.Array:
  """Gemma 4's routed experts on the post-attention residual r [B, T, D] -> [B, T, D], before
  their post-norm. The router reads r RMS-normed without a weight, times `router_scale` and
  D ** -0.5; each token's top-k experts by softmax probability get the renormalised
  probabilities times `expert_scale`. Tokens are sorted by expert and each expert's MLP runs on
  its own rows (`lax.ragged_dot`), so the work is the routed tokens', not every expert's."""
  c = config
  B, T, D = r.shape
  flat = r.reshape(B * T, D)
  scale = lambda w: (c.norm_offset + w.astype(jnp.float32)).astype(flat.dtype)
  z = rms_norm(flat, None, c.rms_norm_eps) * scale(layer["router_scale"])
  z = z * jnp.asarray(D ** -0.5, flat.dtype)
  probs = jax.nn.softmax(jnp.einsum("td,de->te", z, layer["router"]).astype(jnp.float32), -1)
  weights, chosen = jax.lax.top_k(probs, c.top_k_experts)  # [M, k]
  weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
  weights = weights * (c.norm_offset + layer["expert_scale"].astype(jnp.float32))[chosen]
  h = rms_norm(flat, layer["pre_ffw_norm_2"], c.rms_norm_eps, c.norm_offset)
  order = jnp.argsort(chosen.reshape(-1), stable=True)  # rows of [M * k] sorted by expert
  sizes = jnp.bincount(chosen.reshape(-1), length=c.n_experts).astype(jnp.int32)
  rows = jnp.take(h, order // c.top_k_experts, axis=0)
  dot = lambda a, w: jax.lax.ragged_dot(a, w.astype(a.dtype), sizes)
  act = jax.nn.gelu(dot(rows, layer["expert_gate"]), approximate=True)
  out = dot(act * dot(rows, layer["expert_up"]), layer["expert_down"])
  # HF weighs each expert's output in float32 (the router's dtype), then rounds.
  out = (out.astype(jnp.float32) * weights.reshape(-1)[order][:, None]).astype(out.dtype)
  out = jnp.take(out, jnp.argsort(order), axis=0).reshape(B * T, c.top_k_experts, D)
  return out.sum(axis=1).reshape(B, T, D)


def per_layer_input(params: Params, config: ModelConfig, tokens: jax.Array, x: jax.Array,
                    layer: jax.Array, model_proj: jax.Array) -> jax.Array:
  """Gemma 4's per-layer input of block `layer` [B, T, P]: the token's row of the per-layer
  table times sqrt(P), plus the RMS-normed projection of the embeddings x [B, T, D]
  (`model_proj` [D, P], that layer's slice, times D ** -0.5), both times 2 ** -0.5. Ids past
  the table (when it is smaller than the vocabulary) read row 0, as the gemma library does
  (HF fails on them)."""
  c = config
  table = params["ple_embed"]
  tokens = jnp.where(tokens < table.shape[0], tokens, 0)
  tok = table[tokens, layer] * jnp.asarray(c.ple_dim ** 0.5, table.dtype)
  proj = jnp.einsum("btd,dp->btp", x, model_proj.astype(x.dtype))
  proj = proj * jnp.asarray(c.d_model ** -0.5, x.dtype)
  proj = rms_norm(proj, params["ple_proj_norm"], c.rms_norm_eps, c.norm_offset)
  return (proj + tok.astype(x.dtype)) * jnp.asarray(2.0 ** -0.5, x.dtype)


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


def final_norm(params: Params, config: ModelConfig, x: jax.Array) -> jax.Array:
  return rms_norm(x, params["final_norm"], config.rms_norm_eps, config.norm_offset)


def unembed(params: Params, config: ModelConfig, x: jax.Array) -> jax.Array:
  """Final norm, tied unembedding and final softcap. x [..., D] raw last-block output ->
  float32 logits [..., V]."""
  return _logits(config, final_norm(params, config, x), params["embed"])


# Rows of the embedding per step of `target_logprobs`: [1024 tokens, 16384] float32 logits are
# 64 MB, which a CPU's caches hold far better than the 1 GB of a 262k vocabulary at once.
VOCAB_CHUNK = 16384


def target_logprobs(params: Params, config: ModelConfig, x: jax.Array, targets: jax.Array,
                    vocab_chunk: int = VOCAB_CHUNK) -> jax.Array:
  """log softmax(unembed(x))[targets] as float32 [...], from x [..., D] raw last-block output
  and targets [...] int, without ever holding [..., V] logits: the vocabulary is walked
  `vocab_chunk` rows at a time with a running max and sum of exponentials (online logsumexp).
  On the 2-core CPU this takes 0.6x the time of the whole logits + logsumexp for Gemma's vocab."""
  h = final_norm(params, config, x)
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
                remat: bool | str = False, tokens: jax.Array | None = None,
                edit: Callable[[jax.Array, Any], jax.Array] | None = None, edit_xs: Any = None
                ) -> tuple[jax.Array, Any]:
  """Run every block with one `lax.scan`.

  x [B, T, D] embeddings; attention_mask [B, T]. After each block, `observe(resid, xs_l)` is
  called inside the scan with the block's raw output [B, T, D] and layer l's slice of
  `observe_xs` (a pytree with leading axis L); its results are stacked to a leading L axis.
  This is how residuals are captured, and how the analysis fuses per-layer SAE statistics
  without materialising every layer's activations. Returns (last block output, stacked results).
  `edit(resid, edit_xs_l)`, when given, replaces each block's output before the next block (and
  `observe`) sees it: splicing an SAE reconstruction into the residual stream, for example.
  `hook` changes the linear maps (see ProjectHook). `positions` [B, T] default to
  `positions_from_mask`; `pair_mask` [B, T, S] restricts which keys each query sees on top of
  causality (for packing several continuations after one context). `tokens` [B, T]: the ids
  x embeds, needed by Gemma 4's per-layer embeddings (`config.ple_dim`).
  Each attention kind's mask and RoPE table are built once; the scan indexes them by the
  layer's kind. When layers differ in shape (`config.layer_groups`), the scan switches to the
  block of the layer's group, which takes its weights from that group's stacks, and carries the
  keys and values that KV-shared layers read (`config.kv_slots`). `remat` (what autodiff keeps
  of each block for the backward pass): False or "none" keeps everything; True or "full" keeps
  only the block's input and recomputes the block; "dots" keeps the outputs of the weight
  matmuls and recomputes the rest (norms, attention, GELU): most of the memory saving at a
  fraction of the recompute.
  """
  c = config
  remat = {False: "none", True: "full"}.get(remat, remat)
  if remat != "none" and remat not in REMAT_POLICIES:
    raise ValueError(f"remat={remat!r}; choose one of none, {', '.join(REMAT_POLICIES)}")
  if c.ple_dim and tokens is None:
    raise ValueError("this model has per-layer embeddings (Gemma 4 E2B/E4B): pass "
                     "scan_blocks(..., tokens=) the ids that x embeds")
  if positions is None:
    positions = positions_from_mask(attention_mask)
  masks = jnp.stack([attention_mask_for(attention_mask, positions, kind.window, pair_mask)
                     for kind in c.attention_kinds])
  groups = c.layer_groups
  tables = []  # per group: (cos, sin) [kinds of the group, B, T, 1, H]
  for group in groups:
    kinds = [rope_table(positions, group.head_dim, k.rope_base, k.rope_scale, k.rope_fraction)
             for k in (c.attention_kinds[i] for i in group.kinds)]
    tables.append((jnp.stack([t[0] for t in kinds]), jnp.stack([t[1] for t in kinds])))
  dtype = jnp.dtype(c.compute_dtype)
  layers = cast_params(params["layers"], dtype)
  grouped = cast_params(params.get("groups", {}), dtype)
  group_of = [next(g for g, group in enumerate(groups) if i in group.layers)
              for i in range(c.n_layers)]
  per_layer = {
      "layer": layers, "kind": jnp.asarray(c.layer_kinds, jnp.int32),
      "slot": jnp.asarray([groups[group_of[i]].kinds.index(c.layer_kinds[i])
                           for i in range(c.n_layers)], jnp.int32)}
  if len(groups) > 1:
    per_layer.update(
        group=jnp.asarray(group_of, jnp.int32),
        index=jnp.asarray([groups[group_of[i]].layers.index(i) for i in range(c.n_layers)],
                          jnp.int32),
        store=jnp.asarray([i in c.kv_slots for i in range(c.n_layers)]))
  if c.ple_dim:
    per_layer.update(number=jnp.arange(c.n_layers), ple_proj=params["ple_model_proj"])
  B, T = attention_mask.shape
  kv = tuple((jnp.zeros((B, T, c.kind_kv_heads(k), c.kind_head_dim(k)), dtype),) * 2
             for k in (c.layer_kinds[i] for i in c.kv_slots))

  def group_block(g: int):
    group = groups[g]

    def run(x, kv, xs, hook_l, ple):
      layer = dict(xs["layer"])
      if len(groups) > 1:
        layer.update({name: w[xs["index"]] for name, w in grouped.get(group.name, {}).items()})
      rope = (tables[g][0][xs["slot"]], tables[g][1][xs["slot"]])
      reads = group.kv_slot is not None and not group.own_kv
      out, new_kv = block(c, layer, x, rope, masks[xs["kind"]], hook, hook_l, group=group,
                          kv=kv[group.kv_slot] if reads else None, ple=ple)
      if group.kv_slot is not None and group.own_kv:
        kv = tuple(tuple(jnp.where(xs["store"], new, old) for new, old in zip(new_kv, slot))
                   if s == group.kv_slot else slot for s, slot in enumerate(kv))
      return out, kv

    return run

  branches = [group_block(g) for g in range(len(groups))]
  embeddings = x

  def body(carry, xs):
    x, kv = carry
    per_layer_xs, hook_l, obs_x, edit_x = xs
    ple = None
    if c.ple_dim:
      ple = per_layer_input(params, c, tokens, embeddings, per_layer_xs["number"],
                            per_layer_xs["ple_proj"])
    if len(branches) == 1:
      out, kv = branches[0](x, kv, per_layer_xs, hook_l, ple)
    else:
      out, kv = jax.lax.switch(per_layer_xs["group"], branches, x, kv, per_layer_xs, hook_l, ple)
    if edit is not None:
      out = edit(out, edit_x)
    return (out, kv), (None if observe is None else observe(out, obs_x))

  if remat != "none":
    body = jax.checkpoint(body, policy=REMAT_POLICIES[remat])
  hook_xs = None if hook is None else hook.xs
  (last, _), observed = jax.lax.scan(body, (x, kv), (per_layer, hook_xs, observe_xs, edit_xs))
  return last, observed


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
      positions=positions, pair_mask=pair_mask, remat=remat, tokens=tokens)
  logits = unembed(params, config, last) if return_logits else None
  return ForwardOutput(logits=logits, residuals=residuals, embeddings=x)


jit_forward = jax.jit(
    forward, static_argnames=("config", "return_logits", "return_residuals", "remat"))
