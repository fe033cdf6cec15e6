"""HF `config.json` <-> `ModelConfig`: `gemma2`, `gemma3_text`, and the `text_config` of a
multimodal `gemma3`, so a checkpoint directory fully describes its model."""
from __future__ import annotations

from typing import Any

from xling_jax.model.config import AttentionKind, ModelConfig


def config_from_hf(hf: dict[str, Any], **overrides: Any) -> ModelConfig:
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

def config_to_hf(config: ModelConfig) -> dict[str, Any]:
  """An HF config.json dict (`Gemma2ForCausalLM` or `Gemma3ForCausalLM`)."""
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
