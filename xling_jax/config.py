"""Model configuration: one frozen dataclass and its presets.

The field names follow DESIGN.md s.2; `from_hf_dict`/`to_hf_dict` translate to and from an HF
`config.json` so a checkpoint directory fully describes its model.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Gemma2Config:
  """Gemma-2 architecture and numeric policy.

  `param_dtype` is the dtype weights are stored in once loaded; `compute_dtype` is what matmuls
  run in. Norms, softmax, softcaps and RoPE tables always run in float32 (as HF does), so float32
  here gives bit-for-bit comparable numbers with HF, and bfloat16 is the accelerator setting.
  """

  n_layers: int = 26
  d_model: int = 2304
  mlp_hidden: int = 9216
  n_heads: int = 8
  n_kv_heads: int = 4
  head_dim: int = 256
  vocab_size: int = 256000
  sliding_window: int = 4096
  attn_logit_softcap: float | None = 50.0
  final_logit_softcap: float | None = 30.0
  query_pre_attn_scalar: int = 256
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  max_seq_len: int = 8192
  pad_id: int = 0
  eos_id: int = 1
  bos_id: int = 2
  unk_id: int = 3
  param_dtype: str = "float32"
  compute_dtype: str = "float32"

  def __post_init__(self):
    if self.n_heads % self.n_kv_heads:
      raise ValueError(
          f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
    for name in ("param_dtype", "compute_dtype"):
      jnp.dtype(getattr(self, name))  # raises on an unknown dtype name

  @property
  def q_width(self) -> int:
    return self.n_heads * self.head_dim

  @property
  def kv_width(self) -> int:
    return self.n_kv_heads * self.head_dim

  @property
  def embed_scale(self) -> float:
    return self.d_model ** 0.5

  def is_local_layer(self, layer: int) -> bool:
    """Gemma-2 alternates sliding-window (even layers) and global (odd layers) attention."""
    return layer % 2 == 0

  def replace(self, **changes: Any) -> "Gemma2Config":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "Gemma2Config":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
      raise ValueError(f"unknown Gemma2Config fields: {sorted(unknown)}")
    return cls(**d)

  # HF `config.json` translation. Only Gemma2 is accepted: other model types have other math.
  _HF_KEYS = {
      "num_hidden_layers": "n_layers",
      "hidden_size": "d_model",
      "intermediate_size": "mlp_hidden",
      "num_attention_heads": "n_heads",
      "num_key_value_heads": "n_kv_heads",
      "head_dim": "head_dim",
      "vocab_size": "vocab_size",
      "sliding_window": "sliding_window",
      "attn_logit_softcapping": "attn_logit_softcap",
      "final_logit_softcapping": "final_logit_softcap",
      "query_pre_attn_scalar": "query_pre_attn_scalar",
      "rms_norm_eps": "rms_norm_eps",
      "rope_theta": "rope_theta",
      "max_position_embeddings": "max_seq_len",
      "pad_token_id": "pad_id",
      "eos_token_id": "eos_id",
      "bos_token_id": "bos_id",
  }

  @classmethod
  def from_hf_dict(cls, hf: dict[str, Any], **overrides: Any) -> "Gemma2Config":
    model_type = hf.get("model_type")
    if model_type not in ("gemma2", "gemma2_text"):
      raise ValueError(f"config.json has model_type={model_type!r}; expected 'gemma2'")
    if hf.get("hidden_activation", "gelu_pytorch_tanh") not in ("gelu_pytorch_tanh", "gelu_tanh"):
      raise ValueError(f"unsupported hidden_activation {hf.get('hidden_activation')!r}")
    kwargs: dict[str, Any] = {}
    for hf_key, ours in cls._HF_KEYS.items():
      if hf_key in hf and hf[hf_key] is not None:
        value = hf[hf_key]
        if isinstance(value, list):  # eos_token_id may be a list
          value = value[0]
        kwargs[ours] = value
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if isinstance(rope, dict) and "rope_theta" in rope and "rope_theta" not in hf:
      kwargs["rope_theta"] = rope["rope_theta"]
    kwargs.update(overrides)
    return cls(**kwargs)

  def to_hf_dict(self) -> dict[str, Any]:
    hf = {hf_key: getattr(self, ours) for hf_key, ours in self._HF_KEYS.items()}
    hf["query_pre_attn_scalar"] = int(self.query_pre_attn_scalar)  # HF validates it as int
    hf.update({
        "model_type": "gemma2",
        "architectures": ["Gemma2ForCausalLM"],
        "hidden_activation": "gelu_pytorch_tanh",
        "tie_word_embeddings": True,
        "attention_bias": False,
        "torch_dtype": self.param_dtype,
    })
    return hf


def gemma2_2b(**overrides: Any) -> Gemma2Config:
  """Gemma-2-2B exactly as released (DESIGN.md s.2)."""
  return Gemma2Config(**overrides)


def toy(**overrides: Any) -> Gemma2Config:
  """A tiny Gemma-2 for CPU tests: same math, small widths.

  The sliding window (8) is shorter than the test sequences so local attention really drops keys,
  and the layer count is even so both attention kinds appear in equal number, as in the real model.
  """
  base = dict(
      n_layers=4, d_model=64, mlp_hidden=128, n_heads=4, n_kv_heads=2, head_dim=16,
      vocab_size=512, sliding_window=8, query_pre_attn_scalar=16, max_seq_len=512)
  base.update(overrides)
  return Gemma2Config(**base)


def small(**overrides: Any) -> Gemma2Config:
  """A mid-size config for CPU benchmarks: Gemma-2-2B's shape scaled down ~40x in FLOPs."""
  base = dict(
      n_layers=8, d_model=512, mlp_hidden=2048, n_heads=8, n_kv_heads=4, head_dim=64,
      vocab_size=16384, sliding_window=128, query_pre_attn_scalar=64, max_seq_len=2048)
  base.update(overrides)
  return Gemma2Config(**base)


PRESETS = {"gemma2_2b": gemma2_2b, "toy": toy, "small": small}


def preset(name: str, **overrides: Any) -> Gemma2Config:
  if name not in PRESETS:
    raise ValueError(f"unknown config preset {name!r}; choose one of {sorted(PRESETS)}")
  return PRESETS[name](**overrides)


def load_config(spec: str, **overrides: Any) -> Gemma2Config:
  """A preset name (`toy`, `small`, `gemma2_2b`) or a path to a Python file whose
  `get_config()` returns a Gemma2Config (the `configs/` directory holds one per preset)."""
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
  if not isinstance(config, Gemma2Config):
    raise ValueError(f"{path}: get_config() returned {type(config).__name__}, not Gemma2Config")
  return config
