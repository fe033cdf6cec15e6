"""Model configuration: one frozen dataclass for Gemma 2 and Gemma 3, and a preset per model.

The two families differ only in data: which attention kind each layer uses (sliding window,
RoPE base and linear RoPE scaling), whether queries and keys are RMS-normed, the softcaps and
the query scalar. `from_hf_dict`/`to_hf_dict` translate to and from an HF `config.json`
(`gemma2`, `gemma3_text`, and the `text_config` of a multimodal `gemma3`), so a checkpoint
directory fully describes its model.
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

  # ------------------------------------------------------------------ HF config.json
  @classmethod
  def from_hf_dict(cls, hf: dict[str, Any], **overrides: Any) -> "ModelConfig":
    """An HF `config.json` dict of a Gemma 2 or Gemma 3 model (multimodal: its text_config)."""
    model_type = hf.get("model_type")
    if model_type == "gemma3":
      if not isinstance(hf.get("text_config"), dict):
        raise ValueError("a multimodal gemma3 config.json without a text_config (no language "
                         "model to load)")
      hf = {"model_type": "gemma3_text", **hf["text_config"]}
      model_type = "gemma3_text"
    family = {"gemma2": "gemma2", "gemma2_text": "gemma2", "gemma3_text": "gemma3"}.get(model_type)
    if family is None:
      raise ValueError(f"model_type={model_type!r}; expected gemma2, gemma3_text or gemma3")
    if hf.get("hidden_activation", "gelu_pytorch_tanh") not in ("gelu_pytorch_tanh", "gelu_tanh"):
      raise ValueError(f"unsupported hidden_activation {hf.get('hidden_activation')!r}")
    defaults = _FAMILY_DEFAULTS[family]
    get = lambda key: hf[key] if hf.get(key) is not None else defaults[key]
    n_layers = int(get("num_hidden_layers"))
    kwargs: dict[str, Any] = dict(
        family=family, n_layers=n_layers, d_model=get("hidden_size"),
        mlp_hidden=get("intermediate_size"), n_heads=get("num_attention_heads"),
        n_kv_heads=get("num_key_value_heads"), head_dim=get("head_dim"),
        vocab_size=get("vocab_size"), qk_norm=family == "gemma3",
        attn_logit_softcap=hf.get("attn_logit_softcapping", defaults["attn_logit_softcapping"]),
        final_logit_softcap=hf.get("final_logit_softcapping",
                                   defaults["final_logit_softcapping"]),
        query_pre_attn_scalar=get("query_pre_attn_scalar"), rms_norm_eps=get("rms_norm_eps"),
        max_seq_len=get("max_position_embeddings"))
    for ours, hf_key in (("pad_id", "pad_token_id"), ("eos_id", "eos_token_id"),
                         ("bos_id", "bos_token_id")):
      value = hf.get(hf_key)
      if value is not None:
        kwargs[ours] = value[0] if isinstance(value, list) else value
    kinds, layer_kinds = _hf_attention(hf, family, n_layers, defaults)
    kwargs.update(attention_kinds=kinds, layer_kinds=layer_kinds,
                  kaggle_gating_transposed=family == "gemma3" or int(kwargs["d_model"]) > 2304)
    kwargs.update(overrides)
    return cls(**kwargs)

  def to_hf_dict(self) -> dict[str, Any]:
    """An HF config.json dict (`Gemma2ForCausalLM` or `Gemma3ForCausalLM`)."""
    local = [k for k in self.attention_kinds if k.window is not None]
    glob = [k for k in self.attention_kinds if k.window is None]
    if len(local) > 1 or len(glob) > 1:
      raise ValueError("HF configs hold one sliding and one full attention kind; this config "
                       f"has {len(local)} and {len(glob)}")
    hf: dict[str, Any] = {
        "num_hidden_layers": self.n_layers, "hidden_size": self.d_model,
        "intermediate_size": self.mlp_hidden, "num_attention_heads": self.n_heads,
        "num_key_value_heads": self.n_kv_heads, "head_dim": self.head_dim,
        "vocab_size": self.vocab_size, "attn_logit_softcapping": self.attn_logit_softcap,
        "final_logit_softcapping": self.final_logit_softcap,
        "query_pre_attn_scalar": int(self.query_pre_attn_scalar),  # HF validates it as int
        "rms_norm_eps": self.rms_norm_eps, "max_position_embeddings": self.max_seq_len,
        "pad_token_id": self.pad_id, "eos_token_id": self.eos_id, "bos_token_id": self.bos_id,
        "sliding_window": local[0].window if local else None,
        "layer_types": ["sliding_attention" if self.is_local_layer(i) else "full_attention"
                        for i in range(self.n_layers)],
        "hidden_activation": "gelu_pytorch_tanh", "tie_word_embeddings": True,
        "attention_bias": False, "torch_dtype": self.param_dtype,
    }
    if self.family == "gemma2":
      if local and glob and local[0].rope_base != glob[0].rope_base:
        raise ValueError("Gemma 2 configs have one RoPE base for every layer")
      hf.update(model_type="gemma2", architectures=["Gemma2ForCausalLM"],
                rope_theta=self.attention_kinds[0].rope_base)
      return hf
    rope = {}
    for name, kind in (("sliding_attention", local), ("full_attention", glob)):
      if kind:
        k = kind[0]
        rope[name] = ({"rope_type": "default", "rope_theta": k.rope_base} if k.rope_scale == 1.0
                      else {"rope_type": "linear", "factor": k.rope_scale,
                            "rope_theta": k.rope_base})
    hf.update(model_type="gemma3_text", architectures=["Gemma3ForCausalLM"],
              rope_parameters=rope,
              rope_theta=(glob or local)[0].rope_base,
              rope_local_base_freq=(local or glob)[0].rope_base,
              rope_scaling=rope.get("full_attention") if glob and glob[0].rope_scale != 1.0
              else None,
              use_bidirectional_attention=False)
    return hf


# What HF's config classes assume when a key is absent (Gemma2Config / Gemma3TextConfig of
# transformers 5.x); the GGUF reader relies on the same defaults for what GGUF omits.
_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma2": dict(num_hidden_layers=26, hidden_size=2304, intermediate_size=9216,
                   num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=256000,
                   attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                   query_pre_attn_scalar=256, rms_norm_eps=1e-6, max_position_embeddings=8192,
                   sliding_window=4096, rope_theta=10000.0),
    "gemma3": dict(num_hidden_layers=26, hidden_size=2304, intermediate_size=9216,
                   num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=262208,
                   attn_logit_softcapping=None, final_logit_softcapping=None,
                   query_pre_attn_scalar=256, rms_norm_eps=1e-6, max_position_embeddings=131072,
                   sliding_window=4096, rope_theta=1_000_000.0, rope_local_base_freq=10000.0,
                   sliding_window_pattern=6),
}


def _hf_attention(hf: dict, family: str, n_layers: int, defaults: dict):
  """(attention_kinds, layer_kinds) from HF's layer_types / sliding_window(_pattern) and rope
  keys (`rope_parameters` per layer type, or the legacy rope_theta / rope_local_base_freq /
  rope_scaling, where scaling applies to full-attention layers only)."""
  window = hf.get("sliding_window") or defaults["sliding_window"]
  layer_types = hf.get("layer_types")
  if layer_types is None:
    if family == "gemma2":
      layer_types = ["sliding_attention" if i % 2 == 0 else "full_attention"
                     for i in range(n_layers)]
    else:
      pattern = hf.get("sliding_window_pattern") or defaults["sliding_window_pattern"]
      layer_types = ["sliding_attention" if (i + 1) % pattern else "full_attention"
                     for i in range(n_layers)]
  if len(layer_types) != n_layers or set(layer_types) - {"sliding_attention", "full_attention"}:
    raise ValueError(f"layer_types {layer_types!r} is not {n_layers} entries of "
                     "sliding_attention / full_attention")
  rope_params = hf.get("rope_parameters")
  if not (isinstance(rope_params, dict)
          and set(rope_params) & {"sliding_attention", "full_attention"}):
    theta = hf.get("rope_theta") or (rope_params or {}).get("rope_theta") or defaults["rope_theta"]
    local_theta = (hf.get("rope_local_base_freq") or defaults.get("rope_local_base_freq")
                   if family == "gemma3" else theta)
    scaling = hf.get("rope_scaling") or {}
    rope_params = {"sliding_attention": {"rope_type": "default", "rope_theta": local_theta},
                   "full_attention": {**scaling, "rope_theta": theta}}
  kinds, index = [], {}
  for name in ("sliding_attention", "full_attention"):
    if name not in layer_types:
      continue
    params = rope_params.get(name) or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", "linear"):
      raise ValueError(f"rope_type {rope_type!r} for {name} is not supported (default, linear)")
    index[name] = len(kinds)
    kinds.append(AttentionKind(
        window=window if name == "sliding_attention" else None,
        rope_base=float(params.get("rope_theta", defaults["rope_theta"])),
        rope_scale=float(params.get("factor", 1.0)) if rope_type == "linear" else 1.0))
  return tuple(kinds), tuple(index[t] for t in layer_types)


# ----------------------------------------------------------------------------- presets

def gemma2_layout(n_layers: int, window: int = 4096) -> dict[str, Any]:
  """Gemma 2 attention: sliding-window (even layers) and global (odd layers), RoPE base 10k."""
  return dict(attention_kinds=(AttentionKind(window, 10000.0), AttentionKind(None, 10000.0)),
              layer_kinds=tuple(i % 2 for i in range(n_layers)))


def gemma3_layout(n_layers: int, window: int, global_rope_scale: float = 1.0,
                  pattern: int = 6) -> dict[str, Any]:
  """Gemma 3 attention: five sliding-window layers (RoPE base 10k) then one global layer
  (RoPE base 1M, linear scaling on 4B and larger)."""
  return dict(attention_kinds=(AttentionKind(window, 10000.0),
                               AttentionKind(None, 1_000_000.0, global_rope_scale)),
              layer_kinds=tuple(0 if (i + 1) % pattern else 1 for i in range(n_layers)))


def _preset(family: str, layout, fields: dict[str, Any], overrides: dict[str, Any]) -> ModelConfig:
  """A config from a size's fields and the caller's overrides; the attention layout follows the
  final layer count, for whatever part of it the overrides do not give."""
  fields = {**fields, **overrides}
  fields.update({k: v for k, v in layout(fields["n_layers"]).items() if k not in overrides})
  return ModelConfig(family=family, **fields)


def _gemma2(overrides: dict[str, Any], *, window: int = 4096, **size: Any) -> ModelConfig:
  base = {**dict(vocab_size=256000, qk_norm=False, attn_logit_softcap=50.0,
                  final_logit_softcap=30.0, max_seq_len=8192,
                  kaggle_gating_transposed=size["d_model"] > 2304), **size}
  return _preset("gemma2", lambda n: gemma2_layout(n, window), base, overrides)


def _gemma3(overrides: dict[str, Any], *, window: int, global_rope_scale: float,
            **size: Any) -> ModelConfig:
  base = dict(qk_norm=True, attn_logit_softcap=None, final_logit_softcap=None,
              kaggle_gating_transposed=True, **size)
  return _preset("gemma3", lambda n: gemma3_layout(n, window, global_rope_scale), base,
                 overrides)


def gemma2_2b(**overrides: Any) -> ModelConfig:
  return _gemma2(overrides, n_layers=26, d_model=2304, mlp_hidden=9216, n_heads=8,
                 n_kv_heads=4, head_dim=256, query_pre_attn_scalar=256)


def gemma2_9b(**overrides: Any) -> ModelConfig:
  return _gemma2(overrides, n_layers=42, d_model=3584, mlp_hidden=14336, n_heads=16,
                 n_kv_heads=8, head_dim=256, query_pre_attn_scalar=256)


def gemma2_27b(**overrides: Any) -> ModelConfig:
  # The one Gemma 2 whose query scalar is d_model / n_heads (= 144), not head_dim.
  return _gemma2(overrides, n_layers=46, d_model=4608, mlp_hidden=36864, n_heads=32,
                 n_kv_heads=16, head_dim=128, query_pre_attn_scalar=144)


_GEMMA3_SMALL = dict(vocab_size=262144, max_seq_len=32768, window=512, global_rope_scale=1.0)
_GEMMA3_LARGE = dict(vocab_size=262208, max_seq_len=131072, window=1024, global_rope_scale=8.0)


def gemma3_270m(**overrides: Any) -> ModelConfig:
  return _gemma3(overrides, n_layers=18, d_model=640, mlp_hidden=2048, n_heads=4, n_kv_heads=1,
                 head_dim=256, query_pre_attn_scalar=256, **_GEMMA3_SMALL)


def gemma3_1b(**overrides: Any) -> ModelConfig:
  return _gemma3(overrides, n_layers=26, d_model=1152, mlp_hidden=6912, n_heads=4,
                 n_kv_heads=1, head_dim=256, query_pre_attn_scalar=256, **_GEMMA3_SMALL)


def gemma3_4b(**overrides: Any) -> ModelConfig:
  return _gemma3(overrides, n_layers=34, d_model=2560, mlp_hidden=10240, n_heads=8,
                 n_kv_heads=4, head_dim=256, query_pre_attn_scalar=256, **_GEMMA3_LARGE)


def gemma3_12b(**overrides: Any) -> ModelConfig:
  return _gemma3(overrides, n_layers=48, d_model=3840, mlp_hidden=15360, n_heads=16,
                 n_kv_heads=8, head_dim=256, query_pre_attn_scalar=256, **_GEMMA3_LARGE)


def gemma3_27b(**overrides: Any) -> ModelConfig:
  # head_dim 128 and query scalar d_model / n_heads = 168, as Gemma 2 27B.
  return _gemma3(overrides, n_layers=62, d_model=5376, mlp_hidden=21504, n_heads=32,
                 n_kv_heads=16, head_dim=128, query_pre_attn_scalar=168, **_GEMMA3_LARGE)


def toy(**overrides: Any) -> ModelConfig:
  """A tiny Gemma 2 for CPU tests: same math, small widths.

  The sliding window (8) is shorter than the test sequences so local attention really drops keys,
  and the layer count is even so both attention kinds appear in equal number, as in the real model.
  """
  return _gemma2(overrides, window=8, n_layers=4, d_model=64, mlp_hidden=128, n_heads=4,
                 n_kv_heads=2, head_dim=16, vocab_size=512, query_pre_attn_scalar=16,
                 max_seq_len=512)


def toy_gemma3(**overrides: Any) -> ModelConfig:
  """A tiny Gemma 3 for CPU tests: the 5:1 pattern over 7 layers (global at index 5), qk-norm,
  GQA, linear RoPE scaling on the global layer, a query scalar unlike head_dim, a window of 8."""
  return _gemma3(overrides, window=8, global_rope_scale=8.0, n_layers=7, d_model=64,
                 mlp_hidden=128, n_heads=4, n_kv_heads=2, head_dim=16, query_pre_attn_scalar=24,
                 vocab_size=512, max_seq_len=512)


def small(**overrides: Any) -> ModelConfig:
  """A mid-size Gemma 2 for CPU benchmarks: Gemma-2-2B's shape scaled down ~40x in FLOPs."""
  return _gemma2(overrides, window=128, n_layers=8, d_model=512, mlp_hidden=2048, n_heads=8,
                 n_kv_heads=4, head_dim=64, vocab_size=16384, query_pre_attn_scalar=64,
                 max_seq_len=2048)


PRESETS = {"gemma2_2b": gemma2_2b, "gemma2_9b": gemma2_9b, "gemma2_27b": gemma2_27b,
           "gemma3_270m": gemma3_270m, "gemma3_1b": gemma3_1b, "gemma3_4b": gemma3_4b,
           "gemma3_12b": gemma3_12b, "gemma3_27b": gemma3_27b,
           "toy": toy, "toy_gemma3": toy_gemma3, "small": small}


def preset(name: str, **overrides: Any) -> ModelConfig:
  if name not in PRESETS:
    raise ValueError(f"unknown config preset {name!r}; choose one of {sorted(PRESETS)}")
  return PRESETS[name](**overrides)


def load_config(spec: str, **overrides: Any) -> ModelConfig:
  """A preset name (see PRESETS) or a path to a Python file whose `get_config()` returns a
  ModelConfig (the `configs/` directory holds examples)."""
  if spec in PRESETS:
    return preset(spec, **overrides)
  import importlib.util
  from pathlib import Path
  path = Path(spec)
  if path.suffix != ".py" or not path.is_file():
    raise ValueError(f"--config={spec!r}: not a preset ({', '.join(sorted(PRESETS))}) "
                     "nor a Python config file")
  module_spec = importlib.util.spec_from_file_location(f"xling_config_{path.stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"{path}: defines no get_config()")
  config = module.get_config(**overrides)
  if not isinstance(config, ModelConfig):
    raise ValueError(f"{path}: get_config() returned {type(config).__name__}, not ModelConfig")
  return config
