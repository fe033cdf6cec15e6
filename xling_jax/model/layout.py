"""The parameter layout, written once: every weight's shape, role and name in each format.

One `Param` row per weight says, with axis letters, how it is laid out in our stacked pytree
and in each checkpoint format (HF safetensors, the gemma library's Kaggle/orbax tree, GGUF).
Shapes, random init, shape checks, tensor-parallel shardings, LoRA feature dims, PEFT key
names and both directions of every format are derived from these rows, so a layout is stated
once and a writer cannot hold the mirror image of its reader's bug.

Axis letters: `v` vocab, `d` d_model, `n` heads, `k` kv heads, `h` head_dim, `f` MLP width,
`e` experts, `i` expert MLP width, `p` per-layer-embedding width, `u` its vocabulary, `l`
layers, `1` a unit axis; `(n h)` is one axis of n * h features, n-major. `h`, `k` and `f` are
the layer's own (Gemma 4's global layers have wider heads and fewer KV heads, its KV-shared
layers a wider MLP). Per-layer weights carry a leading layer axis in our pytree: `[L]` in
`params["layers"][name]` when the weight has one shape on every layer (always on Gemma 2/3),
else `[L_g]` per layer group in `params["groups"][group][name]` (`ModelConfig.layer_groups`);
`stacks` says which. The format names hold `{i}` for the layer index. Rows exist only when
their `when` holds for the config (qk-norm, Gemma 4's additions), per-layer rows only on the
layers where `present` holds (no K/V weights on KV-shared layers, no V weight where K = V).
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
  `axes`, and `part` when several of our weights share one tensor: stacked on a new axis
  `part_axis` (Kaggle's kv_einsum [2, K, D, H] holds k and v), or with `merged` concatenated
  along that axis (HF's Gemma 4 experts.gate_up_proj [E, 2I, D] holds gate and up)."""
  name: str
  axes: str | Callable[[ModelConfig], str]
  part: int | None = None
  part_axis: int = 0
  merged: bool = False

  def axes_for(self, config: ModelConfig) -> str:
    return self.axes(config) if callable(self.axes) else self.axes


def _always(config: ModelConfig, layer: int) -> bool:
  return True


@dataclasses.dataclass(frozen=True)
class Param:
  """One weight. `axes`: our per-layer layout. `norm`: a learned scale applied as
  `config.norm_offset + w` (RMSNorm weights; Gemma 4's layer, router and expert scales), so
  random init draws it near multiplier 1 and GGUF stores the multiplier. `lora`: (input,
  output) feature axes of a linear map (the LoRA-adaptable modules). `tensor_axis`: the letter
  split over the mesh's model axis under tensor parallelism (whole heads / MLP columns per
  device); `expert_axis`: the letter split over the mesh's expert axis."""
  name: str
  axes: str
  per_layer: bool
  stored: dict[str, Stored]
  norm: bool = False
  lora: tuple[str, str] | None = None
  tensor_axis: str | None = None
  expert_axis: str | None = None
  when: Callable[[ModelConfig], bool] = lambda config: True
  present: Callable[[ModelConfig, int], bool] = _always


def _norm(name: str, hf: str, kaggle: str | None = None, gguf: str | None = None,
          axes: str = "d", when=lambda config: True) -> Param:
  stored = {"hf": Stored(f"model.layers.{{i}}.{hf}.weight", axes)}
  if kaggle:
    stored["kaggle"] = Stored(f"transformer/layer_{{i}}/{kaggle}/scale", axes)
  if gguf:
    stored["gguf"] = Stored(f"blk.{{i}}.{gguf}.weight", axes)
  return Param(name, axes, True, norm=True, stored=stored, when=when)


_KAGGLE_GATING = lambda config: "f d" if config.kaggle_gating_transposed else "d f"
_PLE = lambda config: config.ple_dim > 0
_MOE = lambda config: config.n_experts > 0
_OWN_KV = lambda config, layer: not config.is_kv_shared(layer)
_OWN_V = lambda config, layer: (not config.is_kv_shared(layer)
                                and not config.layer_kind(layer).k_eq_v)

PARAMS: tuple[Param, ...] = (
    Param("embed", "v d", False, stored={
        "hf": Stored("model.embed_tokens.weight", "v d"),
        "kaggle": Stored("transformer/embedder/input_embedding", "v d"),
        "gguf": Stored("token_embd.weight", "v d")}),
    Param("final_norm", "d", False, norm=True, stored={
        "hf": Stored("model.norm.weight", "d"),
        "kaggle": Stored("transformer/final_norm/scale", "d"),
        "gguf": Stored("output_norm.weight", "d")}),
    Param("ple_embed", "u l p", False, when=_PLE, stored={
        "hf": Stored("model.embed_tokens_per_layer.weight", "u (l p)")}),
    Param("ple_model_proj", "l d p", False, when=_PLE, stored={
        "hf": Stored("model.per_layer_model_projection.weight", "(l p) d")}),
    Param("ple_proj_norm", "p", False, norm=True, when=_PLE, stored={
        "hf": Stored("model.per_layer_projection_norm.weight", "p")}),
    _norm("pre_attn_norm", "input_layernorm", "pre_attention_norm", "attn_norm"),
    _norm("post_attn_norm", "post_attention_layernorm", "post_attention_norm",
          "post_attention_norm"),
    _norm("pre_ffw_norm", "pre_feedforward_layernorm", "pre_ffw_norm", "ffn_norm"),
    _norm("post_ffw_norm", "post_feedforward_layernorm", "post_ffw_norm", "post_ffw_norm"),
    _norm("q_norm", "self_attn.q_norm", "attn/_query_norm", "attn_q_norm", axes="h",
          when=lambda config: config.qk_norm),
    dataclasses.replace(
        _norm("k_norm", "self_attn.k_norm", "attn/_key_norm", "attn_k_norm", axes="h",
              when=lambda config: config.qk_norm), present=_OWN_KV),
    Param("q", "n d h", True, lora=("d", "(n h)"), tensor_axis="n", stored={
        "hf": Stored("model.layers.{i}.self_attn.q_proj.weight", "(n h) d"),
        "kaggle": Stored("transformer/layer_{i}/attn/q_einsum/w", "n d h"),
        "gguf": Stored("blk.{i}.attn_q.weight", "(n h) d")}),
    Param("k", "k d h", True, lora=("d", "(k h)"), tensor_axis="k", present=_OWN_KV, stored={
        "hf": Stored("model.layers.{i}.self_attn.k_proj.weight", "(k h) d"),
        "kaggle": Stored("transformer/layer_{i}/attn/kv_einsum/w", "k d h", part=0),
        "gguf": Stored("blk.{i}.attn_k.weight", "(k h) d")}),
    Param("v", "k d h", True, lora=("d", "(k h)"), tensor_axis="k", present=_OWN_V, stored={
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
    # Gemma 4's routed experts beside the dense MLP (26B-A4B), each block:
    Param("router", "d e", True, when=_MOE, stored={
        "hf": Stored("model.layers.{i}.router.proj.weight", "e d")}),
    Param("router_scale", "d", True, norm=True, when=_MOE, stored={
        "hf": Stored("model.layers.{i}.router.scale", "d")}),
    Param("expert_scale", "e", True, norm=True, when=_MOE, stored={
        "hf": Stored("model.layers.{i}.router.per_expert_scale", "e")}),
    Param("expert_gate", "e d i", True, when=_MOE, expert_axis="e", tensor_axis="i", stored={
        "hf": Stored("model.layers.{i}.experts.gate_up_proj", "e i d", part=0, part_axis=1,
                     merged=True)}),
    Param("expert_up", "e d i", True, when=_MOE, expert_axis="e", tensor_axis="i", stored={
        "hf": Stored("model.layers.{i}.experts.gate_up_proj", "e i d", part=1, part_axis=1,
                     merged=True)}),
    Param("expert_down", "e i d", True, when=_MOE, expert_axis="e", tensor_axis="i", stored={
        "hf": Stored("model.layers.{i}.experts.down_proj", "e d i")}),
    _norm("pre_ffw_norm_2", "pre_feedforward_layernorm_2", when=_MOE),
    _norm("post_ffw_norm_1", "post_feedforward_layernorm_1", when=_MOE),
    _norm("post_ffw_norm_2", "post_feedforward_layernorm_2", when=_MOE),
    # Gemma 4's per-layer embeddings (E2B, E4B), injected after the MLP of each block:
    Param("ple_gate", "d p", True, lora=("d", "p"), when=_PLE, stored={
        "hf": Stored("model.layers.{i}.per_layer_input_gate.weight", "p d")}),
    Param("ple_proj", "p d", True, lora=("p", "d"), when=_PLE, stored={
        "hf": Stored("model.layers.{i}.per_layer_projection.weight", "d p")}),
    _norm("ple_post_norm", "post_per_layer_input_norm", when=_PLE),
    Param("layer_scalar", "1", True, norm=True, when=lambda config: config.layer_scalar,
          stored={"hf": Stored("model.layers.{i}.layer_scalar", "1")}),
)

# The linear maps a LoRA adapter may target, in canonical order; CORE_LINEAR_MODULES are
# those of every Gemma (attention and MLP), the default.
LINEAR_MODULES: tuple[str, ...] = tuple(p.name for p in PARAMS if p.lora is not None)
CORE_LINEAR_MODULES: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")


def params_for(config: ModelConfig) -> tuple[Param, ...]:
  return tuple(p for p in PARAMS if p.when(config))


def param(name: str) -> Param:
  for p in PARAMS:
    if p.name == name:
      return p
  raise KeyError(name)


# ----------------------------------------------------------------------------- axis algebra

def dim_sizes(config: ModelConfig, layer: int | None = None) -> dict[str, int]:
  """Axis sizes; `h`, `k` and `f` are layer `layer`'s (None: the config's base values)."""
  c = config
  sizes = {"v": c.vocab_size, "d": c.d_model, "n": c.n_heads, "k": c.n_kv_heads,
           "h": c.head_dim, "f": c.mlp_hidden, "l": c.n_layers, "e": c.n_experts,
           "i": c.moe_hidden, "p": c.ple_dim, "u": c.ple_vocab_size, "1": 1}
  if layer is not None:
    kind = c.layer_kinds[layer]
    sizes.update(h=c.kind_head_dim(kind), k=c.kind_kv_heads(kind), f=c.layer_mlp_hidden(layer))
  return sizes


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


def shape_of(axes: str, config: ModelConfig, layer: int | None = None) -> tuple[int, ...]:
  sizes = dim_sizes(config, layer)
  return tuple(math.prod(sizes[a] for a in g) for g in _groups(axes))


def rearrange(x, src: str, dst: str, config: ModelConfig, layer: int | None = None,
              stack: int | None = None):
  """Re-lay `x` from axes `src` to axes `dst` (same letters, any grouping); numpy or jax.
  `layer`: whose `h`, `k`, `f` sizes to use; `stack`: the size of a letter `s`."""
  sizes = dim_sizes(config, layer)
  if stack is not None:
    sizes["s"] = stack
  src_letters = [a for g in _groups(src) for a in g]
  dst_letters = [a for g in _groups(dst) for a in g]
  if sorted(src_letters) != sorted(dst_letters):
    raise ValueError(f"cannot rearrange {src!r} to {dst!r}")
  x = x.reshape(tuple(sizes[a] for a in src_letters))
  x = x.transpose(tuple(src_letters.index(a) for a in dst_letters))
  return x.reshape(tuple(math.prod(sizes[a] for a in g) for g in _groups(dst)))


# ----------------------------------------------------------------------------- derived facts

def has(p: Param, config: ModelConfig, layer: int) -> bool:
  """Whether layer `layer` has per-layer weight `p`."""
  return p.when(config) and p.present(config, layer)


def is_grouped(p: Param, config: ModelConfig) -> bool:
  """Whether `p` is stacked per layer group: its shape, or whether a layer has it, varies."""
  if not config.grouped:
    return False
  shapes = {shape_of(p.axes, config, i) if has(p, config, i) else None
            for i in range(config.n_layers)}
  return len(shapes) > 1


def stacks(p: Param, config: ModelConfig) -> tuple[tuple[tuple[str, ...], tuple[int, ...]], ...]:
  """Where per-layer weight `p` lives: (pytree path, the layers stacked there, in order).
  One stack `("layers", name)` of every layer, or one `("groups", group, name)` per group
  whose layers have it."""
  if not is_grouped(p, config):
    return ((("layers", p.name), tuple(range(config.n_layers))),)
  return tuple((("groups", g.name, p.name), g.layers) for g in config.layer_groups
               if has(p, config, g.layers[0]))


def stack_shape(p: Param, config: ModelConfig, layers: tuple[int, ...]) -> tuple[int, ...]:
  return (len(layers), *shape_of(p.axes, config, layers[0]))


def get_path(tree: Any, path: tuple[str, ...]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def set_path(tree: dict, path: tuple[str, ...], value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def param_shapes(config: ModelConfig) -> dict[str, Any]:
  """The shape of every parameter: {embed, final_norm, ..., layers: {name: [L, ...]}} plus,
  when layers differ in shape, groups: {group: {name: [L_g, ...]}}."""
  shapes: dict[str, Any] = {"layers": {}}
  for p in params_for(config):
    if not p.per_layer:
      shapes[p.name] = shape_of(p.axes, config)
      continue
    for path, layers in stacks(p, config):
      set_path(shapes, path, stack_shape(p, config, layers))
  return shapes


def norm_paths(config: ModelConfig) -> set[tuple[str, ...]]:
  paths = set()
  for p in params_for(config):
    if p.norm and p.per_layer:
      paths.update(path for path, _ in stacks(p, config))
    elif p.norm:
      paths.add((p.name,))
  return paths


def _axis_of(name: str, letter_of: Callable[[Param], str | None]) -> int | None:
  for p in PARAMS:
    if p.per_layer and p.name == name and letter_of(p) is not None:
      return 1 + [a for g in _groups(p.axes) for a in g].index(letter_of(p))
  return None


def tensor_parallel_axis(name: str) -> int | None:
  """The axis of a stacked per-layer weight that tensor parallelism splits (None: replicate)."""
  return _axis_of(name, lambda p: p.tensor_axis)


def expert_parallel_axis(name: str) -> int | None:
  """The expert axis of a stacked per-layer weight (None: not an expert weight)."""
  return _axis_of(name, lambda p: p.expert_axis)


def has_module(config: ModelConfig, module: str, layer: int) -> bool:
  """Whether layer `layer` has linear module `module` (KV-shared layers have no k, v)."""
  return has(param(module), config, layer)


def lora_dims(config: ModelConfig, module: str, layer: int | None = None) -> tuple[int, int]:
  """(in, out) flattened feature counts of a linear module on layer `layer`; None: the widest
  over the layers that have it (what a LoRA adapter stacks over layers)."""
  p = param(module) if module in LINEAR_MODULES else None
  if p is None or not p.when(config):
    raise ValueError(f"unknown LoRA module {module!r} for this model; expected one of "
                     f"{tuple(m for m in LINEAR_MODULES if param(m).when(config))}")
  layers = [layer] if layer is not None else [
      i for i in range(config.n_layers) if has(p, config, i)]
  dims = [(shape_of(p.lora[0], config, i)[0], shape_of(p.lora[1], config, i)[0]) for i in layers]
  return max(d[0] for d in dims), max(d[1] for d in dims)


def einsum_spec(module: str) -> str:
  """The einsum of a linear module on [B, T, ...] activations, e.g. q: 'btd,ndh->btnh'."""
  p = param(module)
  letters = lambda axes: "".join(a for g in _groups(axes) for a in g)
  return f"bt{letters(p.lora[0])},{letters(p.axes)}->bt{letters(p.lora[1])}"


def linear_from_features(flat, module: str, config: ModelConfig, layer: int | None = None):
  """[n, in, out] feature-space matrices of n layers shaped like `layer` -> the module's
  stacked weight layout [n, ...]."""
  p = param(module)
  return rearrange(flat, f"s {p.lora[0]} {p.lora[1]}", f"s {p.axes}", config, layer,
                   stack=flat.shape[0])


# ----------------------------------------------------------------------------- formats

def stored_name(p: Param, fmt: str, layer: int | None = None) -> str:
  return p.stored[fmt].name.format(i=layer)


def _n_parts(p: Param, fmt: str, config: ModelConfig) -> int:
  name = p.stored[fmt].name
  return sum(1 for q in params_for(config) if fmt in q.stored and q.stored[fmt].name == name)


def stored_shape(p: Param, fmt: str, config: ModelConfig,
                 layer: int | None = None) -> tuple[int, ...]:
  """The full shape of the tensor that holds `p` in `fmt` (with all its parts)."""
  s = p.stored[fmt]
  shape = list(shape_of(s.axes_for(config), config, layer))
  if s.part is None:
    return tuple(shape)
  n = _n_parts(p, fmt, config)
  if s.merged:
    shape[s.part_axis] *= n
  else:
    shape.insert(s.part_axis, n)
  return tuple(shape)


def from_stored(p: Param, fmt: str, tensor: np.ndarray, config: ModelConfig,
                layer: int | None = None) -> np.ndarray:
  """One layer's tensor as stored in `fmt` (the whole tensor for parts) -> ours."""
  s = p.stored[fmt]
  if s.part is not None:
    if s.merged:
      tensor = np.split(tensor, _n_parts(p, fmt, config), axis=s.part_axis)[s.part]
    else:
      tensor = np.take(tensor, s.part, axis=s.part_axis)
  return rearrange(tensor, s.axes_for(config), p.axes, config, layer)


def to_stored(params: dict[str, Any], config: ModelConfig, fmt: str
              ) -> Iterator[tuple[str, np.ndarray]]:
  """(name, tensor) of every tensor of `fmt` for these params, parts joined, in table order."""
  tensors: dict[str, Any] = {}  # name -> array, or {part: array} for shared tensors
  joins: dict[str, Stored] = {}
  for p in params_for(config):
    s = p.stored[fmt]
    if p.per_layer:
      values = {}
      for path, layers in stacks(p, config):
        stacked = np.asarray(get_path(params, path))
        values.update({layer: (stacked[j], layer) for j, layer in enumerate(layers)})
      items = [(stored_name(p, fmt, i), *values[i]) for i in sorted(values)]
    else:
      items = [(stored_name(p, fmt), np.asarray(params[p.name]), None)]
    for name, value, layer in items:
      tensor = rearrange(value, p.axes, s.axes_for(config), config, layer)
      if s.part is None:
        tensors[name] = tensor
      else:
        tensors.setdefault(name, {})[s.part] = tensor
        joins[name] = s
  for name, tensor in tensors.items():
    if isinstance(tensor, dict):
      s, parts = joins[name], [tensor[k] for k in sorted(tensor)]
      tensor = (np.concatenate(parts, s.part_axis) if s.merged
                else np.stack(parts, s.part_axis))
    yield name, np.ascontiguousarray(tensor)
