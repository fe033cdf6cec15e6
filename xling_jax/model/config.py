"""The model's architecture as data: one frozen dataclass for every Gemma family.

The families differ only in data: which attention kind each layer uses (sliding window,
RoPE base and linear RoPE scaling), whether queries and keys are RMS-normed, the softcaps and
the query scalar. Presets live in `presets`; the HF `config.json` translation in
`xling_jax.checkpoints.hf_config`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

FAMILIES = ("gemma2", "gemma3")


@dataclasses.dataclass(frozen=True)
class AttentionKind:
  """How one kind of layer attends: a query at position q sees keys q - window + 1 .. q
  (`window=None`: every earlier key); RoPE uses `rope_base` and divides positions by
  `rope_scale` (HF's "linear" rope scaling; 1.0 = none)."""
  window: int | None
  rope_base: float
  rope_scale: float = 1.0


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

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise ValueError(f"family={self.family!r}; expected one of {FAMILIES}")
    if self.n_heads % self.n_kv_heads:
      raise ValueError(
          f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
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

  def replace(self, **changes: Any) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
      raise ValueError(f"unknown ModelConfig fields: {sorted(unknown)}")
    return cls(**d)
