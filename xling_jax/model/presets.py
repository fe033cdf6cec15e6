"""A `ModelConfig` per released Gemma text model, plus the toy and `small` configs of tests and
benchmarks, and `load_config` (a preset name or a Python config file)."""
from __future__ import annotations

from typing import Any

from xling_jax.model.config import AttentionKind, ModelConfig


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


def gemma4_layout(n_layers: int, window: int, pattern: int = 6,
                  **global_kind: Any) -> dict[str, Any]:
  """Gemma 4 attention: `pattern - 1` sliding-window layers (RoPE base 10k) then one global
  layer (by default RoPE base 1M rotating a quarter of its frequencies and heads of width 512;
  `global_kind` overrides these and adds fewer KV heads, K = V); the last layer is global
  whatever the pattern (as HF forces it)."""
  kinds = (AttentionKind(window, 10000.0),
           AttentionKind(**{**dict(window=None, rope_base=1_000_000.0, rope_fraction=0.25,
                                   head_dim=512), **global_kind}))
  layer_kinds = [0 if (i + 1) % pattern else 1 for i in range(n_layers)]
  layer_kinds[-1] = 1
  return dict(attention_kinds=kinds, layer_kinds=tuple(layer_kinds))


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


def _gemma4(overrides: dict[str, Any], *, window: int, pattern: int = 6,
            global_kind: dict[str, Any] | None = None, **size: Any) -> ModelConfig:
  base = {**dict(vocab_size=262144, head_dim=256, qk_norm=True, attn_logit_softcap=None,
                 final_logit_softcap=30.0, query_pre_attn_scalar=1.0, norm_offset=0.0,
                 v_norm=True, layer_scalar=True, max_seq_len=262144,
                 kaggle_gating_transposed=True), **size}
  return _preset("gemma4", lambda n: gemma4_layout(n, window, pattern, **(global_kind or {})),
                 base, overrides)


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


# Gemma 4 (SPEC sources: transformers' convert_gemma4_weights.py `_VARIANTS`, the gemma
# library's `gm.nn.gemma4`, the hub config.json files; the 12B's only from its config.json).
_GEMMA4_PLE = dict(ple_dim=256, ple_vocab_size=262144, max_seq_len=131072)
_KEQV = lambda kv_heads: dict(n_kv_heads=kv_heads, k_eq_v=True)  # global layers: fewer KV heads, K = V


def gemma4_e2b(**overrides: Any) -> ModelConfig:
  return _gemma4(overrides, window=512, pattern=5, n_layers=35, d_model=1536, mlp_hidden=6144,
                 kv_shared_mlp_hidden=12288, n_heads=8, n_kv_heads=1, kv_shared_layers=20,
                 **_GEMMA4_PLE)


def gemma4_e4b(**overrides: Any) -> ModelConfig:
  return _gemma4(overrides, window=512, n_layers=42, d_model=2560, mlp_hidden=10240, n_heads=8,
                 n_kv_heads=2, kv_shared_layers=18, **_GEMMA4_PLE)


def gemma4_26b_a4b(**overrides: Any) -> ModelConfig:
  return _gemma4(overrides, window=1024, global_kind=_KEQV(2), n_layers=30,
                 d_model=2816, mlp_hidden=2112, n_heads=16, n_kv_heads=8, n_experts=128,
                 top_k_experts=8, moe_hidden=704)


def gemma4_31b(**overrides: Any) -> ModelConfig:
  return _gemma4(overrides, window=1024, global_kind=_KEQV(4), n_layers=60,
                 d_model=5376, mlp_hidden=21504, n_heads=32, n_kv_heads=16)


def gemma4_12b(**overrides: Any) -> ModelConfig:
  """The 12B (HF `gemma4_unified`): the same decoder without per-layer embeddings or experts."""
  return _gemma4(overrides, window=1024, global_kind=_KEQV(1), n_layers=48,
                 d_model=3840, mlp_hidden=15360, n_heads=16, n_kv_heads=8)


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


def toy_gemma4(**overrides: Any) -> ModelConfig:
  """A tiny dense Gemma 4 for CPU tests, every way its layers differ at once: per-layer
  embeddings (with a smaller PLE vocabulary), the last 3 of 8 layers KV-shared with a
  double-wide MLP (one of them global), global layers with twice the head width, one KV head
  instead of two and K = V, RoPE rotating half the global frequencies, a window of 8."""
  return _gemma4(overrides, window=8, pattern=3,
                 global_kind=dict(rope_base=10000.0, rope_fraction=0.5, head_dim=32,
                                  **_KEQV(1)),
                 n_layers=8, d_model=64, mlp_hidden=96, kv_shared_mlp_hidden=192, n_heads=4,
                 n_kv_heads=2, head_dim=16, vocab_size=512, ple_dim=8, ple_vocab_size=384,
                 kv_shared_layers=3, max_seq_len=512)


def toy_gemma4_moe(**overrides: Any) -> ModelConfig:
  """A tiny Gemma 4 with routed experts (26B-A4B's shape: here 6 experts, top 2, beside a
  dense MLP; global layers with wider heads, one KV head and K = V) for CPU tests."""
  return _gemma4(overrides, window=8, pattern=3, global_kind=dict(head_dim=32, **_KEQV(1)),
                 n_layers=5, d_model=64, mlp_hidden=48, n_heads=4, n_kv_heads=2, head_dim=16,
                 vocab_size=512, n_experts=6, top_k_experts=2, moe_hidden=32, max_seq_len=512)


def small(**overrides: Any) -> ModelConfig:
  """A mid-size Gemma 2 for CPU benchmarks: Gemma-2-2B's shape scaled down ~40x in FLOPs."""
  return _gemma2(overrides, window=128, n_layers=8, d_model=512, mlp_hidden=2048, n_heads=8,
                 n_kv_heads=4, head_dim=64, vocab_size=16384, query_pre_attn_scalar=64,
                 max_seq_len=2048)


PRESETS = {"gemma2_2b": gemma2_2b, "gemma2_9b": gemma2_9b, "gemma2_27b": gemma2_27b,
           "gemma3_270m": gemma3_270m, "gemma3_1b": gemma3_1b, "gemma3_4b": gemma3_4b,
           "gemma3_12b": gemma3_12b, "gemma3_27b": gemma3_27b,
           "gemma4_e2b": gemma4_e2b, "gemma4_e4b": gemma4_e4b, "gemma4_26b_a4b": gemma4_26b_a4b,
           "gemma4_31b": gemma4_31b, "gemma4_12b": gemma4_12b,
           "toy": toy, "toy_gemma3": toy_gemma3, "toy_gemma4": toy_gemma4,
           "toy_gemma4_moe": toy_gemma4_moe, "small": small}


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


TOY_NOTE = ("TOY RUN: a randomly initialised {family} ({layers} layers, d_model {d_model}), a toy "
            "tokenizer and random SAEs. The numbers exercise the pipeline; they say nothing about "
            "a released Gemma.")


def toy_note(config) -> str:
  family = {"gemma2": "Gemma 2", "gemma3": "Gemma 3", "gemma4": "Gemma 4"}[config.family]
  return TOY_NOTE.format(family=family, layers=config.n_layers, d_model=config.d_model)
