"""The model's architecture as data: one frozen dataclass for every Gemma family.

The families differ only in data: which attention kind each layer uses (sliding window, RoPE
base, linear scaling and rotated fraction, and on Gemma 4 the kind's own head width, KV heads
and K = V), whether queries and keys are RMS-normed, the softcaps and the query scalar, and
Gemma 4's additions (norm scales applied as `w` rather than `1 + w`, a scale-free value norm,
per-layer embeddings, KV sharing, routed experts, a learned scalar per layer). Presets live in
`presets`; the HF `config.json` translation in `xling_jax.checkpoints.hf_config`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

FAMILIES = ("gemma2", "gemma3", "gemma4")


@dataclasses.dataclass(frozen=True)
class AttentionKind:
  """How one kind of layer attends: a query at position q sees keys q - window + 1 .. q
  (`window=None`: every earlier key); RoPE uses `rope_base`, divides positions by `rope_scale`
  (HF's "linear" rope scaling; 1.0 = none) and rotates the first `rope_fraction` of the
  frequency pairs (HF's "proportional" RoPE of Gemma 4's global layers: the exponent's
  denominator stays the whole head width, the other pairs pass through unrotated).
  `head_dim` / `n_kv_heads` (None: the config's) give the kind its own head width and KV head
  count; `k_eq_v`: no value projection, the values are the raw key projection."""
  window: int | None
  rope_base: float
  rope_scale: float = 1.0
  rope_fraction: float = 1.0
  head_dim: int | None = None
  n_kv_heads: int | None = None
  k_eq_v: bool = False


@dataclasses.dataclass(frozen=True)
class LayerGroup:
  """Layers whose weights share their shapes, stacked together (see `ModelConfig.layer_groups`).
  `kinds`: the attention kinds among them. `own_kv`: the layers compute keys and values (False:
  KV-shared layers, which attend with the stored K/V of `kv_slot`). `has_v`: a value projection
  exists (else V is the key projection). `kv_slot`: index of the K/V this group stores (own_kv)
  or reads, in `ModelConfig.kv_slots`; None when the model shares no K/V."""
  name: str
  kinds: tuple[int, ...]
  layers: tuple[int, ...]
  head_dim: int
  n_kv_heads: int
  own_kv: bool
  has_v: bool
  mlp_hidden: int
  kv_slot: int | None


# Fields that describe a feature a model may lack; `to_dict` leaves them out while they hold
# the value meaning "absent", so configs without the feature serialise as they always have.
_FEATURE_DEFAULTS = dict(norm_offset=1.0, v_norm=False, layer_scalar=False, kv_shared_layers=0,
                         kv_shared_mlp_hidden=None, ple_dim=0, ple_vocab_size=0, n_experts=0,
                         top_k_experts=0, moe_hidden=0)
_KIND_DEFAULTS = dict(rope_fraction=1.0, head_dim=None, n_kv_heads=None, k_eq_v=False)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A Gemma architecture and its numeric policy.

  `attention_kinds` lists the distinct kinds; `layer_kinds[i]` indexes layer i's kind.
  `family` names the checkpoint conventions (HF model type, Kaggle names), never the math.
  `param_dtype` is the dtype weights are stored in once loaded; `compute_dtype` is what matmuls
  run in. Norms, softmax, softcaps and RoPE tables always run in float32 (as HF does), so float32
  gives numbers comparable with HF, and bfloat16 is the accelerator setting.
  `kaggle_gating_transposed`: the gemma library stores `mlp/gating_einsum` as [2, F, D] for
  Gemma 2 9B/27B and Gemma 3 and as [2, D, F] for Gemma 2 2B.

  Gemma 4 (defaults mean "absent"): `norm_offset` 0 applies every norm scale as w (Gemma 2/3:
  1 + w); `v_norm` RMS-normalises values without a scale; `layer_scalar` multiplies each block's
  whole output by a learned scalar; the last `kv_shared_layers` layers have no K/V weights and
  attend with the K/V of the last earlier layer of their kind, and their MLP is
  `kv_shared_mlp_hidden` wide (None: `mlp_hidden`); `ple_dim` > 0 adds per-layer embeddings
  (a [ple_vocab_size, L, ple_dim] table plus a projection of the input embedding, injected in
  each block after the MLP); `n_experts` > 0 adds `top_k_experts` routed experts of width
  `moe_hidden` beside the dense MLP in every block.
  """

  family: str
  n_layers: int
  d_model: int
  mlp_hidden: int
  n_heads: int
  n_kv_heads: int
  head_dim: int
  vocab_size: int
  attention_kinds: tuple[AttentionKind, ...]
  layer_kinds: tuple[int, ...]
  qk_norm: bool
  attn_logit_softcap: float | None
  final_logit_softcap: float | None
  query_pre_attn_scalar: float
  rms_norm_eps: float = 1e-6
  max_seq_len: int = 8192
  kaggle_gating_transposed: bool = False
  pad_id: int = 0
  eos_id: int = 1
  bos_id: int = 2
  unk_id: int = 3
  param_dtype: str = "float32"
  compute_dtype: str = "float32"
  norm_offset: float = 1.0
  v_norm: bool = False
  layer_scalar: bool = False
  kv_shared_layers: int = 0
  kv_shared_mlp_hidden: int | None = None
  ple_dim: int = 0
  ple_vocab_size: int = 0
  n_experts: int = 0
  top_k_experts: int = 0
  moe_hidden: int = 0

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise ValueError(f"family={self.family!r}; expected one of {FAMILIES}")
    kinds = tuple(k if isinstance(k, AttentionKind) else AttentionKind(**k)
                  for k in self.attention_kinds)
    object.__setattr__(self, "attention_kinds", kinds)
    object.__setattr__(self, "layer_kinds", tuple(int(k) for k in self.layer_kinds))
    if len(self.layer_kinds) != self.n_layers:
      raise ValueError(f"layer_kinds has {len(self.layer_kinds)} entries for "
                       f"n_layers={self.n_layers}")
    if any(not 0 <= k < len(kinds) for k in self.layer_kinds):
      raise ValueError(f"layer_kinds {self.layer_kinds} index past the {len(kinds)} "
                       "attention_kinds")
    for kind in range(len(kinds)):
      if self.n_heads % self.kind_kv_heads(kind):
        raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads "
                         f"({self.kind_kv_heads(kind)})")
    if not 0 <= self.kv_shared_layers < self.n_layers:
      raise ValueError(f"kv_shared_layers={self.kv_shared_layers}: at least one layer must "
                       f"compute its own keys and values (n_layers={self.n_layers})")
    for layer in range(self.n_layers):
      self.kv_source(layer)  # raises when a shared layer's kind has no earlier producer
    if self.n_experts and not 0 < self.top_k_experts <= self.n_experts:
      raise ValueError(f"top_k_experts={self.top_k_experts} for n_experts={self.n_experts}")
    for name in ("param_dtype", "compute_dtype"):
      jnp.dtype(getattr(self, name))  # raises on an unknown dtype name

  @property
  def q_width(self) -> int:
    return self.n_heads * self.head_dim

  @property
  def kv_width(self) -> int:
    return self.n_kv_heads * self.head_dim

  def layer_kind(self, layer: int) -> AttentionKind:
    return self.attention_kinds[self.layer_kinds[layer]]

  def is_local_layer(self, layer: int) -> bool:
    return self.layer_kind(layer).window is not None

  @property
  def sliding_window(self) -> int | None:
    """The shortest window of any layer (None when every layer is global)."""
    windows = [k.window for k in self.attention_kinds if k.window is not None]
    return min(windows) if windows else None

  # ---- per-layer shapes (Gemma 4's layers differ; Gemma 2/3's do not) ------------------------

  def kind_head_dim(self, kind: int) -> int:
    return self.attention_kinds[kind].head_dim or self.head_dim

  def kind_kv_heads(self, kind: int) -> int:
    return self.attention_kinds[kind].n_kv_heads or self.n_kv_heads

  def is_kv_shared(self, layer: int) -> bool:
    """Whether `layer` has no K/V weights and attends with another layer's K/V."""
    return layer >= self.n_layers - self.kv_shared_layers

  def kv_source(self, layer: int) -> int:
    """The layer whose keys and values `layer` attends with: itself, or for a KV-shared layer
    the last non-shared layer of the same attention kind (HF's `kv_sharing_modes`)."""
    if not self.is_kv_shared(layer):
      return layer
    first_shared = self.n_layers - self.kv_shared_layers
    producers = [i for i in range(first_shared) if self.layer_kinds[i] == self.layer_kinds[layer]]
    if not producers:
      raise ValueError(f"KV-shared layer {layer} has no earlier layer of its attention kind "
                       f"({self.layer_kinds[layer]}) to take keys and values from")
    return producers[-1]

  def layer_mlp_hidden(self, layer: int) -> int:
    if self.is_kv_shared(layer) and self.kv_shared_mlp_hidden:
      return self.kv_shared_mlp_hidden
    return self.mlp_hidden

  def _layer_shape(self, layer: int) -> tuple:
    kind = self.layer_kinds[layer]
    own_kv = not self.is_kv_shared(layer)
    return (self.kind_head_dim(kind), self.kind_kv_heads(kind), own_kv,
            own_kv and not self.attention_kinds[kind].k_eq_v, self.layer_mlp_hidden(layer))

  @property
  def kv_slots(self) -> tuple[int, ...]:
    """The layers whose K/V KV-shared layers read (one per attention kind they use)."""
    return tuple(sorted({self.kv_source(i) for i in range(self.n_layers) if self.is_kv_shared(i)}))

  @property
  def layer_groups(self) -> tuple[LayerGroup, ...]:
    """Layers grouped by weight shapes. One group of every layer when all layers look alike
    (Gemma 2/3); otherwise one group per (attention kind, KV-shared) pair in order of first
    appearance, so a group's kind and K/V role are fixed. Weights whose shape differs between
    layers are stacked per group (`layout`); the rest over all layers."""
    shapes = [self._layer_shape(i) for i in range(self.n_layers)]
    if len(set(shapes)) == 1:
      keys = [()] * self.n_layers
    else:
      keys = [(self.layer_kinds[i], self.is_kv_shared(i)) for i in range(self.n_layers)]
    slots = self.kv_slots
    groups = []
    for key in dict.fromkeys(keys):
      layers = tuple(i for i in range(self.n_layers) if keys[i] == key)
      head_dim, kv_heads, own_kv, has_v, mlp_hidden = shapes[layers[0]]
      # The K/V this group reads (shared layers) or stores (the producer among its layers);
      # groups are per (kind, shared) whenever K/V is shared, so there is at most one.
      producers = {self.kv_source(i) for i in layers if self.is_kv_shared(i)} | {
          i for i in layers if i in slots}
      slot = slots.index(producers.pop()) if producers else None
      groups.append(LayerGroup(self._group_name(key), tuple(dict.fromkeys(
          self.layer_kinds[i] for i in layers)), layers, head_dim, kv_heads, own_kv, has_v,
          mlp_hidden, slot))
    return tuple(groups)

  def _group_name(self, key: tuple) -> str:
    if not key:
      return "all"
    kind, shared = key
    local = self.attention_kinds[kind].window is not None
    same = [k for k in self.attention_kinds if (k.window is not None) == local]
    name = ("local" if local else "global") + (str(kind) if len(same) > 1 else "")
    return name + ("_kv_shared" if shared else "")

  @property
  def grouped(self) -> bool:
    """Whether layers differ in weight shapes (some weights are then stacked per group)."""
    return len(self.layer_groups) > 1

  def replace(self, **changes: Any) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    for name, default in _FEATURE_DEFAULTS.items():
      if d[name] == default:
        del d[name]
    for kind in d["attention_kinds"]:
      for name, default in _KIND_DEFAULTS.items():
        if kind[name] == default:
          del kind[name]
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
      raise ValueError(f"unknown ModelConfig fields: {sorted(unknown)}")
    return cls(**d)
