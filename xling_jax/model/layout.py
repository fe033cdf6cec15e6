"""The parameter layout, written once: every weight's shape, role and name in each format.

One `Param` row per weight says, with axis letters, how it is laid out in our stacked pytree
and in each checkpoint format (HF safetensors, the gemma library's Kaggle/orbax tree, GGUF).
Shapes, random init, shape checks, tensor-parallel shardings, LoRA feature dims, PEFT key
names and both directions of every format are derived from these rows, so a layout is stated
once and a writer cannot hold the mirror image of its reader's bug.

Axis letters: `v` vocab, `d` d_model, `n` heads, `k` kv heads, `h` head_dim, `f` MLP width;
`(n h)` is one axis of n * h features, n-major. Per-layer weights carry a leading `[L]` axis in
our pytree (`params["layers"][name]`); the format names hold `{i}` for the layer index.
Qk-norm rows exist only when `config.qk_norm`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterator

import numpy as np

from xling_jax.model.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Stored:
  """Where a weight lives in one format: the tensor `name` (with `{i}` for the layer), its
  `axes`, and `part` when several of our weights are stacked on a leading axis of one tensor
  (Kaggle's kv_einsum [2, K, D, H] holds k and v)."""
  name: str
  axes: str | Callable[[ModelConfig], str]
  part: int | None = None

  def axes_for(self, config: ModelConfig) -> str:
    return self.axes(config) if callable(self.axes) else self.axes


@dataclasses.dataclass(frozen=True)
class Param:
  """One weight. `axes`: our per-layer layout. `norm`: an RMSNorm scale applied as (1 + w),
  so random init draws it near 0 and GGUF stores it as 1 + w. `lora`: (input, output) feature
  axes of a linear map (the LoRA-adaptable modules). `tensor_axis`: the letter split over the
  mesh's model axis under tensor parallelism (whole heads / MLP columns per device)."""
  name: str
  axes: str
  per_layer: bool
  stored: dict[str, Stored]
  norm: bool = False
  lora: tuple[str, str] | None = None
  tensor_axis: str | None = None
  when: Callable[[ModelConfig], bool] = lambda config: True


def _norm(name: str, hf: str, kaggle: str, gguf: str, **kw) -> Param:
  return Param(name, kw.pop("axes", "d"), True, norm=True, stored={
      "hf": Stored(f"model.layers.{{i}}.{hf}.weight", kw.get("stored_axes", "d")),
      "kaggle": Stored(f"transformer/layer_{{i}}/{kaggle}/scale", kw.get("stored_axes", "d")),
      "gguf": Stored(f"blk.{{i}}.{gguf}.weight", kw.get("stored_axes", "d"))},
      when=kw.get("when", lambda config: True))


_KAGGLE_GATING = lambda config: "f d" if config.kaggle_gating_transposed else "d f"

PARAMS: tuple[Param, ...] = (
    Param("embed", "v d", False, stored={
        "hf": Stored("model.embed_tokens.weight", "v d"),
        "kaggle": Stored("transformer/embedder/input_embedding", "v d"),
        "gguf": Stored("token_embd.weight", "v d")}),
    Param("final_norm", "d", False, norm=True, stored={
        "hf": Stored("model.norm.weight", "d"),
        "kaggle": Stored("transformer/final_norm/scale", "d"),
        "gguf": Stored("output_norm.weight", "d")}),
    _norm("pre_attn_norm", "input_layernorm", "pre_attention_norm", "attn_norm"),
    _norm("post_attn_norm", "post_attention_layernorm", "post_attention_norm",
          "post_attention_norm"),
    _norm("pre_ffw_norm", "pre_feedforward_layernorm", "pre_ffw_norm", "ffn_norm"),
    _norm("post_ffw_norm", "post_feedforward_layernorm", "post_ffw_norm", "post_ffw_norm"),
    _norm("q_norm", "self_attn.q_norm", "attn/_query_norm", "attn_q_norm", axes="h",
          stored_axes="h", when=lambda config: config.qk_norm),
    _norm("k_norm", "self_attn.k_norm", "attn/_key_norm", "attn_k_norm", axes="h",
          stored_axes="h", when=lambda config: config.qk_norm),
    Param("q", "n d h", True, lora=("d", "(n h)"), tensor_axis="n", stored={
        "hf": Stored("model.layers.{i}.self_attn.q_proj.weight", "(n h) d"),
        "kaggle": Stored("transformer/layer_{i}/attn/q_einsum/w", "n d h"),
        "gguf": Stored("blk.{i}.attn_q.weight", "(n h) d")}),
    Param("k", "k d h", True, lora=("d", "(k h)"), tensor_axis="k", stored={
        "hf": Stored("model.layers.{i}.self_attn.k_proj.weight", "(k h) d"),
        "kaggle": Stored("transformer/layer_{i}/attn/kv_einsum/w", "k d h", part=0),
        "gguf": Stored("blk.{i}.attn_k.weight", "(k h) d")}),
    Param("v", "k d h", True, lora=("d", "(k h)"), tensor_axis="k", stored={
        "hf": Stored("model.layers.{i}.self_attn.v_proj.weight", "(k h) d"),
        "kaggle": Stored("transformer/layer_{i}/attn/kv_einsum/w", "k d h", part=1),
        "gguf": Stored("blk.{i}.attn_v.weight", "(k h) d")}),
    Param("o", "n h d", True, lora=("(n h)", "d"), tensor_axis="n", stored={
        "hf": Stored("model.layers.{i}.self_attn.o_proj.weight", "d (n h)"),
        "kaggle": Stored("transformer/layer_{i}/attn/attn_vec_einsum/w", "n h d"),
        "gguf": Stored("blk.{i}.attn_output.weight", "d (n h)")}),
    Param("gate", "d f", True, lora=("d", "f"), tensor_axis="f", stored={
        "hf": Stored("model.layers.{i}.mlp.gate_proj.weight", "f d"),
        "kaggle": Stored("transformer/layer_{i}/mlp/gating_einsum/w", _KAGGLE_GATING, part=0),
        "gguf": Stored("blk.{i}.ffn_gate.weight", "f d")}),
    Param("up", "d f", True, lora=("d", "f"), tensor_axis="f", stored={
        "hf": Stored("model.layers.{i}.mlp.up_proj.weight", "f d"),
        "kaggle": Stored("transformer/layer_{i}/mlp/gating_einsum/w", _KAGGLE_GATING, part=1),
        "gguf": Stored("blk.{i}.ffn_up.weight", "f d")}),
    Param("down", "f d", True, lora=("f", "d"), tensor_axis="f", stored={
        "hf": Stored("model.layers.{i}.mlp.down_proj.weight", "d f"),
        "kaggle": Stored("transformer/layer_{i}/mlp/linear/w", "f d"),
        "gguf": Stored("blk.{i}.ffn_down.weight", "d f")}),
)

# The linear maps a LoRA adapter may target, in canonical order.
LINEAR_MODULES: tuple[str, ...] = tuple(p.name for p in PARAMS if p.lora is not None)


def params_for(config: ModelConfig) -> tuple[Param, ...]:
  return tuple(p for p in PARAMS if p.when(config))


def param(name: str) -> Param:
  for p in PARAMS:
    if p.name == name:
      return p
  raise KeyError(name)


# ----------------------------------------------------------------------------- axis algebra

def dim_sizes(config: ModelConfig) -> dict[str, int]:
  c = config
  return {"v": c.vocab_size, "d": c.d_model, "n": c.n_heads, "k": c.n_kv_heads,
          "h": c.head_dim, "f": c.mlp_hidden, "l": c.n_layers}


def _groups(axes: str) -> list[tuple[str, ...]]:
  """'(n h) d' -> [('n', 'h'), ('d',)]."""
  groups, i, tokens = [], 0, axes.replace("(", " ( ").replace(")", " ) ").split()
  while i < len(tokens):
    if tokens[i] == "(":
      j = tokens.index(")", i)
      groups.append(tuple(tokens[i + 1:j]))
      i = j + 1
    else:
      groups.append((tokens[i],))
      i += 1
  return groups


def shape_of(axes: str, config: ModelConfig) -> tuple[int, ...]:
  sizes = dim_sizes(config)
  return tuple(math.prod(sizes[a] for a in g) for g in _groups(axes))


def rearrange(x, src: str, dst: str, config: ModelConfig):
  """Re-lay `x` from axes `src` to axes `dst` (same letters, any grouping); numpy or jax."""
  sizes = dim_sizes(config)
  src_letters = [a for g in _groups(src) for a in g]
  dst_letters = [a for g in _groups(dst) for a in g]
  if sorted(src_letters) != sorted(dst_letters):
    raise ValueError(f"cannot rearrange {src!r} to {dst!r}")
  x = x.reshape(tuple(sizes[a] for a in src_letters))
  x = x.transpose(tuple(src_letters.index(a) for a in dst_letters))
  return x.reshape(shape_of(dst, config))


# ----------------------------------------------------------------------------- derived facts

def our_shape(p: Param, config: ModelConfig) -> tuple[int, ...]:
  shape = shape_of(p.axes, config)
  return (config.n_layers, *shape) if p.per_layer else shape


def param_shapes(config: ModelConfig) -> dict[str, Any]:
  """The shape of every parameter: {embed, final_norm, layers: {name: [L, ...]}}."""
  shapes: dict[str, Any] = {"layers": {}}
  for p in params_for(config):
    (shapes["layers"] if p.per_layer else shapes)[p.name] = our_shape(p, config)
  return shapes


def norm_paths(config: ModelConfig) -> set[tuple[str, ...]]:
  return {("layers", p.name) if p.per_layer else (p.name,) for p in params_for(config) if p.norm}


def tensor_parallel_axis(name: str) -> int | None:
  """The axis of a stacked per-layer weight that tensor parallelism splits (None: replicate)."""
  for p in PARAMS:
    if p.per_layer and p.name == name and p.tensor_axis is not None:
      return 1 + [a for g in _groups(p.axes) for a in g].index(p.tensor_axis)
  return None


def lora_dims(config: ModelConfig, module: str) -> tuple[int, int]:
  """(in, out) flattened feature counts of a linear module."""
  p = param(module) if module in LINEAR_MODULES else None
  if p is None:
    raise ValueError(f"unknown LoRA module {module!r}; expected one of {LINEAR_MODULES}")
  return shape_of(p.lora[0], config)[0], shape_of(p.lora[1], config)[0]


def einsum_spec(module: str) -> str:
  """The einsum of a linear module on [B, T, ...] activations, e.g. q: 'btd,ndh->btnh'."""
  p = param(module)
  letters = lambda axes: "".join(a for g in _groups(axes) for a in g)
  return f"bt{letters(p.lora[0])},{letters(p.axes)}->bt{letters(p.lora[1])}"


def linear_from_features(flat, module: str, config: ModelConfig):
  """[L, in, out] feature-space matrices -> the module's stacked weight layout."""
  p = param(module)
  return rearrange(flat, f"l {p.lora[0]} {p.lora[1]}", f"l {p.axes}", config)


# ----------------------------------------------------------------------------- formats

def stored_name(p: Param, fmt: str, layer: int | None = None) -> str:
  return p.stored[fmt].name.format(i=layer)


def stored_shape(p: Param, fmt: str, config: ModelConfig) -> tuple[int, ...]:
  """The full shape of the tensor that holds `p` in `fmt` (with the stacking axis of parts)."""
  s = p.stored[fmt]
  shape = shape_of(s.axes_for(config), config)
  if s.part is None:
    return shape
  n_parts = sum(1 for q in params_for(config) if q.stored[fmt].name == s.name)
  return (n_parts, *shape)


def from_stored(p: Param, fmt: str, tensor: np.ndarray, config: ModelConfig) -> np.ndarray:
  """One layer's tensor as stored in `fmt` (the whole stacked tensor for parts) -> ours."""
  s = p.stored[fmt]
  if s.part is not None:
    tensor = tensor[s.part]
  return rearrange(tensor, s.axes_for(config), p.axes, config)


def to_stored(params: dict[str, Any], config: ModelConfig, fmt: str
              ) -> Iterator[tuple[str, np.ndarray]]:
  """(name, tensor) of every tensor of `fmt` for these params, parts stacked, in table order."""
  tensors: dict[str, Any] = {}  # name -> array, or {part: array} for stacked tensors
  for p in params_for(config):
    value = np.asarray(params["layers"][p.name] if p.per_layer else params[p.name])
    s = p.stored[fmt]
    for layer in range(config.n_layers) if p.per_layer else (None,):
      tensor = rearrange(value[layer] if p.per_layer else value, p.axes, s.axes_for(config),
                         config)
      name = stored_name(p, fmt, layer)
      if s.part is None:
        tensors[name] = tensor
      else:
        tensors.setdefault(name, {})[s.part] = tensor
  for name, tensor in tensors.items():
    if isinstance(tensor, dict):
      tensor = np.stack([tensor[k] for k in sorted(tensor)])
    yield name, np.ascontiguousarray(tensor)
