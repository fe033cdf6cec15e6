"""HF `config.json` <-> `ModelConfig`: `gemma2`, `gemma3_text`, `gemma4_text`,
`gemma4_unified_text` (the 12B), and the `text_config` of a multimodal `gemma3`, `gemma4` or
`gemma4_unified`, so a checkpoint directory fully describes its model."""
from __future__ import annotations

from typing import Any

from xling_jax.model.config import AttentionKind, ModelConfig


def config_from_hf(hf: dict[str, Any], **overrides: Any) -> ModelConfig:
  """An HF `config.json` dict of a Gemma 2 or Gemma 3 model (multimodal: its text_config)."""
  model_type = hf.get("model_type")
  if model_type in _MULTIMODAL:
    if not isinstance(hf.get("text_config"), dict):
      raise ValueError(f"a multimodal {model_type} config.json without a text_config (no "
                       "language model to load)")
    hf = {"model_type": _MULTIMODAL[model_type], **hf["text_config"]}
    model_type = hf["model_type"]
  if model_type in ("gemma4_text", "gemma4_unified_text"):
    return _gemma4_from_hf(hf, model_type == "gemma4_unified_text", overrides)
  family = {"gemma2": "gemma2", "gemma2_text": "gemma2", "gemma3_text": "gemma3"}.get(model_type)
  if family is None:
    raise ValueError(f"model_type={model_type!r}; expected gemma2, gemma3_text, gemma3, "
                     "gemma4_text, gemma4, gemma4_unified_text or gemma4_unified")
  if hf.get("hidden_activation", "gelu_pytorch_tanh") not in ("gelu_pytorch_tanh", "gelu_tanh"):
    raise ValueError(f"unsupported hidden_activation {hf.get('hidden_activation')!r}")
  defaults = FAMILY_DEFAULTS[family]
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
  return ModelConfig(**kwargs)

_MULTIMODAL = {"gemma3": "gemma3_text", "gemma4": "gemma4_text",
               "gemma4_unified": "gemma4_unified_text"}


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
  """An HF config.json dict (`Gemma2ForCausalLM`, `Gemma3ForCausalLM` or
  `Gemma4ForCausalLM`)."""
  if config.family == "gemma4":
    return _gemma4_to_hf(config)
  local = [k for k in config.attention_kinds if k.window is not None]
  glob = [k for k in config.attention_kinds if k.window is None]
  if len(local) > 1 or len(glob) > 1:
    raise ValueError("HF configs hold one sliding and one full attention kind; this config "
                     f"has {len(local)} and {len(glob)}")
  hf: dict[str, Any] = {
      "num_hidden_layers": config.n_layers, "hidden_size": config.d_model,
      "intermediate_size": config.mlp_hidden, "num_attention_heads": config.n_heads,
      "num_key_value_heads": config.n_kv_heads, "head_dim": config.head_dim,
      "vocab_size": config.vocab_size, "attn_logit_softcapping": config.attn_logit_softcap,
      "final_logit_softcapping": config.final_logit_softcap,
      "query_pre_attn_scalar": int(config.query_pre_attn_scalar),  # HF validates it as int
      "rms_norm_eps": config.rms_norm_eps, "max_position_embeddings": config.max_seq_len,
      "pad_token_id": config.pad_id, "eos_token_id": config.eos_id, "bos_token_id": config.bos_id,
      "sliding_window": local[0].window if local else None,
      "layer_types": ["sliding_attention" if config.is_local_layer(i) else "full_attention"
                      for i in range(config.n_layers)],
      "hidden_activation": "gelu_pytorch_tanh", "tie_word_embeddings": True,
      "attention_bias": False, "torch_dtype": config.param_dtype,
  }
  if config.family == "gemma2":
    if local and glob and local[0].rope_base != glob[0].rope_base:
      raise ValueError("Gemma 2 configs have one RoPE base for every layer")
    hf.update(model_type="gemma2", architectures=["Gemma2ForCausalLM"],
              rope_theta=config.attention_kinds[0].rope_base)
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
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
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


# ----------------------------------------------------------------------------- Gemma 4

_SLIDING, _FULL = "sliding_attention", "full_attention"
# Gemma4TextConfig's defaults (transformers 5.24); Gemma4UnifiedTextConfig (the 12B) differs in
# the window and context, and has no per-layer-embedding or expert fields.
GEMMA4_DEFAULTS: dict[str, Any] = dict(
    vocab_size=262144, hidden_size=2304, intermediate_size=9216, num_hidden_layers=30,
    num_attention_heads=8, num_key_value_heads=4, head_dim=256, global_head_dim=512,
    rms_norm_eps=1e-6, sliding_window=512, max_position_embeddings=131072,
    hidden_size_per_layer_input=256, vocab_size_per_layer_input=262144, num_kv_shared_layers=0,
    final_logit_softcapping=None)
GEMMA4_UNIFIED_DEFAULTS = {**GEMMA4_DEFAULTS, "sliding_window": 1024,
                           "max_position_embeddings": 262144, "hidden_size_per_layer_input": 0}
_GEMMA4_ROPE = {_SLIDING: {"rope_type": "default", "rope_theta": 10000.0},
                _FULL: {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                        "rope_theta": 1_000_000.0}}


def _gemma4_from_hf(hf: dict[str, Any], unified: bool, overrides: dict[str, Any]) -> ModelConfig:
  """Gemma4TextConfig's own defaulting rules: the last layer global, `global_head_dim` 512 when
  absent, `num_global_key_value_heads` only with `attention_k_eq_v`, per-layer embeddings of
  width 256 when the key is absent (not on the 12B); transformers >= 5.2x writes the global
  layers' head width and KV heads as `per_layer_config` instead."""
  defaults = GEMMA4_UNIFIED_DEFAULTS if unified else GEMMA4_DEFAULTS
  get = lambda key: hf[key] if hf.get(key) is not None else defaults[key]
  if hf.get("hidden_activation", "gelu_pytorch_tanh") not in ("gelu_pytorch_tanh", "gelu_tanh"):
    raise ValueError(f"unsupported hidden_activation {hf.get('hidden_activation')!r}")
  if hf.get("use_bidirectional_attention") == "all":
    raise ValueError("use_bidirectional_attention='all' (non-causal Gemma 4) is not supported")
  if hf.get("attention_bias"):
    raise ValueError("attention_bias=True is not supported (no released Gemma has biases)")
  if hf.get("tie_word_embeddings") is False:
    raise ValueError("tie_word_embeddings=False is not supported (Gemma ties its LM head)")
  n_layers = int(get("num_hidden_layers"))
  layer_types = list(hf.get("layer_types") or [
      _SLIDING if (i + 1) % 6 else _FULL for i in range(n_layers)])
  if len(layer_types) != n_layers or set(layer_types) - {_SLIDING, _FULL}:
    raise ValueError(f"layer_types {layer_types!r} is not {n_layers} entries of "
                     "sliding_attention / full_attention")
  layer_types[-1] = _FULL  # as HF forces it
  head_dim, kv_heads = int(get("head_dim")), int(get("num_key_value_heads"))
  k_eq_v = bool(hf.get("attention_k_eq_v"))
  global_shape = (int(get("global_head_dim")),
                  int(hf.get("num_global_key_value_heads") or kv_heads) if k_eq_v else kv_heads)
  shapes = {i: (head_dim, kv_heads) if t == _SLIDING else global_shape
            for i, t in enumerate(layer_types)}
  if hf.get("per_layer_config") is not None:  # {"05": {"head_dim": 512, ...}, ...}, sparse
    shapes = {i: (head_dim, kv_heads) for i in range(n_layers)}
    for key, layer in hf["per_layer_config"].items():
      shapes[int(key)] = (int(layer.get("head_dim") or head_dim),
                          int(layer.get("num_key_value_heads") or kv_heads))
  rope = hf.get("rope_parameters") or _GEMMA4_ROPE
  kinds, index = [], {}
  for name in (_SLIDING, _FULL):
    layers = [i for i, t in enumerate(layer_types) if t == name]
    if not layers:
      continue
    kind_shapes = {shapes[i] for i in layers}
    if len(kind_shapes) != 1:
      raise ValueError(f"per_layer_config gives the {name} layers different head shapes "
                       f"{sorted(kind_shapes)}; each attention kind has one")
    (kind_head_dim, kind_kv_heads), = kind_shapes
    if name == _SLIDING and (kind_head_dim, kind_kv_heads) != (head_dim, kv_heads):
      raise ValueError("per_layer_config overrides the sliding layers' head shape")
    index[name] = len(kinds)
    kinds.append(AttentionKind(
        window=int(get("sliding_window")) if name == _SLIDING else None,
        **_gemma4_rope(rope.get(name) or _GEMMA4_ROPE[name], name),
        head_dim=kind_head_dim if kind_head_dim != head_dim else None,
        n_kv_heads=kind_kv_heads if kind_kv_heads != kv_heads else None,
        k_eq_v=k_eq_v and name == _FULL))
  mlp_hidden = int(get("intermediate_size"))
  n_shared = int(get("num_kv_shared_layers"))
  if n_shared >= n_layers:
    raise ValueError(f"num_kv_shared_layers={n_shared} of {n_layers} layers: no layer computes "
                     "keys and values")
  ple_dim = 0 if unified else int(get("hidden_size_per_layer_input") or 0)
  moe = not unified and bool(hf.get("enable_moe_block"))
  kwargs: dict[str, Any] = dict(
      family="gemma4", n_layers=n_layers, d_model=int(get("hidden_size")), mlp_hidden=mlp_hidden,
      n_heads=int(get("num_attention_heads")), n_kv_heads=kv_heads, head_dim=head_dim,
      vocab_size=int(get("vocab_size")), attention_kinds=tuple(kinds),
      layer_kinds=tuple(index[t] for t in layer_types), qk_norm=True, attn_logit_softcap=None,
      final_logit_softcap=hf.get("final_logit_softcapping"), query_pre_attn_scalar=1.0,
      rms_norm_eps=float(get("rms_norm_eps")), max_seq_len=int(get("max_position_embeddings")),
      kaggle_gating_transposed=True, norm_offset=0.0, v_norm=True, layer_scalar=True,
      kv_shared_layers=n_shared,
      kv_shared_mlp_hidden=2 * mlp_hidden if n_shared and hf.get("use_double_wide_mlp") else None,
      ple_dim=ple_dim, ple_vocab_size=int(get("vocab_size_per_layer_input")) if ple_dim else 0,
      n_experts=int(hf["num_experts"]) if moe else 0,
      top_k_experts=int(hf["top_k_experts"]) if moe else 0,
      moe_hidden=int(hf["moe_intermediate_size"]) if moe else 0)
  for ours, hf_key in (("pad_id", "pad_token_id"), ("eos_id", "eos_token_id"),
                       ("bos_id", "bos_token_id")):
    value = hf.get(hf_key)
    if value is not None:
      kwargs[ours] = value[0] if isinstance(value, list) else value
  kwargs.update(overrides)
  return ModelConfig(**kwargs)


def _gemma4_rope(params: dict[str, Any], name: str) -> dict[str, float]:
  rope_type = params.get("rope_type", "default")
  if rope_type not in ("default", "linear", "proportional"):
    raise ValueError(f"rope_type {rope_type!r} for {name} is not supported "
                     "(default, linear, proportional)")
  return dict(rope_base=float(params["rope_theta"]),
              rope_scale=float(params.get("factor") or 1.0) if rope_type != "default" else 1.0,
              rope_fraction=(float(params.get("partial_rotary_factor") or 1.0)
                             if rope_type == "proportional" else 1.0))


def _gemma4_rope_to_hf(kind: AttentionKind) -> dict[str, Any]:
  rope: dict[str, Any] = {"rope_type": "default", "rope_theta": kind.rope_base}
  if kind.rope_fraction != 1.0:
    rope.update(rope_type="proportional", partial_rotary_factor=kind.rope_fraction)
  elif kind.rope_scale != 1.0:
    rope["rope_type"] = "linear"
  if kind.rope_scale != 1.0:
    rope["factor"] = kind.rope_scale
  return rope


def _gemma4_to_hf(config: ModelConfig) -> dict[str, Any]:
  """A `gemma4_text` config.json dict, in the hub's spelling (`global_head_dim`,
  `num_global_key_value_heads`) that every transformers with Gemma 4 reads."""
  c = config
  local = [i for i, k in enumerate(c.attention_kinds) if k.window is not None]
  glob = [i for i, k in enumerate(c.attention_kinds) if k.window is None]
  problems = []
  if len(local) > 1 or len(glob) > 1:
    problems.append("more than one sliding or full attention kind")
  if (c.norm_offset, c.v_norm, c.layer_scalar, c.qk_norm, c.query_pre_attn_scalar,
      c.attn_logit_softcap) != (0.0, True, True, True, 1.0, None):
    problems.append("norms, scales or softcaps other than Gemma 4's")
  if local and (c.kind_head_dim(local[0]), c.kind_kv_heads(local[0]),
                c.attention_kinds[local[0]].k_eq_v) != (c.head_dim, c.n_kv_heads, False):
    problems.append("sliding layers with their own head shape or K = V")
  if glob and not c.attention_kinds[glob[0]].k_eq_v and c.kind_kv_heads(glob[0]) != c.n_kv_heads:
    problems.append("fewer global KV heads without K = V (HF ignores them then)")
  if c.kv_shared_mlp_hidden not in (None, 2 * c.mlp_hidden) or (
      c.kv_shared_mlp_hidden and not c.kv_shared_layers):
    problems.append(f"kv_shared_mlp_hidden={c.kv_shared_mlp_hidden} (HF: 2 x mlp_hidden or none)")
  if problems:
    raise ValueError("not expressible as an HF Gemma 4 config: " + "; ".join(problems))
  rope = {name: _gemma4_rope_to_hf(c.attention_kinds[kinds[0]])
          for name, kinds in ((_SLIDING, local), (_FULL, glob)) if kinds}
  full = c.attention_kinds[glob[0]] if glob else None
  hf: dict[str, Any] = {
      "model_type": "gemma4_text", "architectures": ["Gemma4ForCausalLM"],
      "num_hidden_layers": c.n_layers, "hidden_size": c.d_model,
      "intermediate_size": c.mlp_hidden, "num_attention_heads": c.n_heads,
      "num_key_value_heads": c.n_kv_heads, "head_dim": c.head_dim,
      "global_head_dim": c.kind_head_dim(glob[0]) if glob else c.head_dim,
      "attention_k_eq_v": bool(full and full.k_eq_v),
      "vocab_size": c.vocab_size, "final_logit_softcapping": c.final_logit_softcap,
      "rms_norm_eps": c.rms_norm_eps, "max_position_embeddings": c.max_seq_len,
      "pad_token_id": c.pad_id, "eos_token_id": c.eos_id, "bos_token_id": c.bos_id,
      "sliding_window": c.attention_kinds[local[0]].window if local else None,
      "layer_types": [_SLIDING if c.is_local_layer(i) else _FULL for i in range(c.n_layers)],
      "rope_parameters": rope, "hidden_activation": "gelu_pytorch_tanh",
      "tie_word_embeddings": True, "attention_bias": False,
      "hidden_size_per_layer_input": c.ple_dim, "num_kv_shared_layers": c.kv_shared_layers,
      "use_double_wide_mlp": bool(c.kv_shared_mlp_hidden),
      "enable_moe_block": bool(c.n_experts), "torch_dtype": c.param_dtype,
  }
  if full and full.k_eq_v:
    hf["num_global_key_value_heads"] = c.kind_kv_heads(glob[0])
  if c.ple_dim:
    hf["vocab_size_per_layer_input"] = c.ple_vocab_size
  if c.n_experts:
    hf.update(num_experts=c.n_experts, top_k_experts=c.top_k_experts,
              moe_intermediate_size=c.moe_hidden)
  return hf
