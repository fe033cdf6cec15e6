"""PEFT interop: our adapter <-> `adapter_model.safetensors` + `adapter_config.json`.

PEFT (HF `peft`) stores, for Gemma2ForCausalLM / Gemma3ForCausalLM, one pair per adapted
linear layer, named after the module's HF weight (`layout.py`):

    base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight   [r, in]
    base_model.model.model.layers.{i}.self_attn.q_proj.lora_B.weight   [out, r]
    ... k_proj, v_proj, o_proj; mlp.gate_proj, up_proj, down_proj

with `lora_A.weight = A[i].T` and `lora_B.weight = B[i].T` in our layout (HF's head features are
n-major, as ours). The `base_model.model.` prefix matters: without it PEFT only warns and loads
zeros, so the round trip is tested against PEFT itself. Gemma4ForCausalLM adds
`per_layer_input_gate` / `per_layer_projection`; its layers differ in width, so each layer's
pair is cut to that layer's features, and its KV-shared layers, which have no k_proj / v_proj,
hold none.
"""
from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from lora.lora import (ALL_LORA_MODULES, Adapter, LoraConfig, check_adapter, module_dims,
                       module_layers)
from xling_jax.checkpoints import read_safetensors
from xling_jax.model import layout
from xling_jax.model.config import ModelConfig
from xling_jax.runtime import io

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"


def hf_module(module: str) -> str:
  """'q' -> 'q_proj', the name PEFT's target_modules uses."""
  return layout.stored_name(layout.param(module), "hf", 0).split(".")[-2]


def peft_key(layer: int, module: str, which: str) -> str:
  """The safetensors key of lora_A / lora_B for block `layer`, module `module`."""
  weight = layout.stored_name(layout.param(module), "hf", layer)
  return f"base_model.model.{weight.removesuffix('.weight')}.lora_{which}.weight"


def save_peft(directory: str | Path, adapter: Adapter, lora_config: LoraConfig,
              config: ModelConfig, base_model_name_or_path: str) -> Path:
  """Write `directory/adapter_model.safetensors` and `adapter_config.json` (float32 tensors,
  only the adapted layers) as one set. `base_model_name_or_path`: the model the adapter
  belongs to (its hub id or path; the caller knows it, `config` does not). Returns the
  directory."""
  io.write_set(directory, peft_files(adapter, lora_config, config, base_model_name_or_path))
  return Path(directory)


def peft_files(adapter: Adapter, lora_config: LoraConfig, config: ModelConfig,
               base_model_name_or_path: str) -> dict[str, bytes | str]:
  """What `save_peft` writes, {file name: contents}, for a caller writing it in a larger set."""
  check_adapter(adapter, config)
  if not np.isclose(float(adapter["scale"]), lora_config.scale, rtol=1e-6):
    raise ValueError(f"adapter scale {adapter['scale']} disagrees with lora_config alpha/rank "
                     f"= {lora_config.scale}")
  if set(adapter["layers"]) != set(lora_config.modules):
    raise ValueError(f"adapter modules {sorted(adapter['layers'])} disagree with lora_config "
                     f"modules {list(lora_config.modules)}")
  tensors = {}
  for module, ab in adapter["layers"].items():
    a, b = np.asarray(ab["a"], np.float32), np.asarray(ab["b"], np.float32)
    for layer in module_layers(config, lora_config, module):
      d_in, d_out = module_dims(config, module, layer)
      tensors[peft_key(layer, module, "A")] = np.ascontiguousarray(a[layer, :d_in].T)
      tensors[peft_key(layer, module, "B")] = np.ascontiguousarray(b[layer, :, :d_out].T)
  weights = safetensors.numpy.save(tensors, metadata={"format": "pt"})
  peft_config = {
      "peft_type": "LORA",
      "task_type": "CAUSAL_LM",
      "base_model_name_or_path": base_model_name_or_path,
      "r": lora_config.rank,
      "lora_alpha": lora_config.alpha,
      "target_modules": [hf_module(m) for m in lora_config.modules],
      "layers_to_transform": None if lora_config.layers is None else list(lora_config.layers),
      "layers_pattern": None,
      "lora_dropout": 0.0,
      "bias": "none",
      "fan_in_fan_out": False,
      "use_rslora": False,
      "use_dora": False,
      "init_lora_weights": True,
      "modules_to_save": None,
      "rank_pattern": {},
      "alpha_pattern": {},
      "inference_mode": True,
  }
  return {WEIGHTS_NAME: weights, CONFIG_NAME: json.dumps(peft_config, indent=2) + "\n"}


# Options whose non-default values change the math in ways our forward does not implement.
_UNSUPPORTED = {
    "use_rslora": (False, "rank-stabilised scaling alpha/sqrt(r)"),
    "use_dora": (False, "DoRA magnitude vectors"),
    "bias": ("none", "trainable biases"),
    "fan_in_fan_out": (False, "transposed (Conv1D) weights"),
    "lora_bias": (False, "a bias on lora_B"),
}


# Options that add weights or change the forward when set (truthy).
_UNSUPPORTED_IF_SET = ("modules_to_save", "target_parameters", "exclude_modules",
                       "layer_replication", "trainable_token_indices", "use_qalora",
                       "alora_invocation_tokens", "use_bdlora", "kasa_config", "arrow_config",
                       "velora_config", "monteclora_config")


def _config_error(path: Path, message: str) -> ValueError:
  return ValueError(f"{path}: {message}")


def _lora_config_from_peft(path: Path, cfg: dict, config: ModelConfig) -> LoraConfig:
  if cfg.get("peft_type") != "LORA":
    raise _config_error(path, f"peft_type={cfg.get('peft_type')!r}; only 'LORA' is supported")
  for key, (default, what) in _UNSUPPORTED.items():
    if cfg.get(key, default) not in (default, None):
      raise _config_error(path, f"{key}={cfg[key]!r} ({what}) is not supported; "
                                f"expected {default!r}")
  for key in ("rank_pattern", "alpha_pattern"):
    if cfg.get(key):
      raise _config_error(path, f"{key}={cfg[key]!r}: per-module ranks/alphas are not supported")
  for key in _UNSUPPORTED_IF_SET:
    if cfg.get(key):
      raise _config_error(path, f"{key}={cfg[key]!r} is not supported (plain LoRA on Gemma's "
                                "linear layers only)")
  targets = cfg.get("target_modules")
  available = tuple(m for m in ALL_LORA_MODULES if layout.param(m).when(config))
  if targets == "all-linear":  # PEFT's shorthand; it excludes lm_head
    modules = available
  elif isinstance(targets, list):
    by_name = {hf_module(m): m for m in available}
    unknown = [t for t in targets if t.split(".")[-1] not in by_name]
    if unknown:
      raise _config_error(path, f"target_modules {unknown} are not Gemma linear layers "
                                f"{sorted(by_name)}")
    modules = tuple(by_name[t.split(".")[-1]] for t in targets)
  else:
    raise _config_error(path, f"target_modules={targets!r}: expected a list of module names or "
                              "'all-linear' (regex strings are not supported)")
  layers = cfg.get("layers_to_transform")
  if isinstance(layers, int):
    layers = [layers]
  return LoraConfig(rank=int(cfg["r"]), alpha=float(cfg["lora_alpha"]),
                    modules=tuple(dict.fromkeys(modules)),
                    layers=None if layers in (None, []) else tuple(layers))


def load_peft_with_config(directory: str | Path,
                          config: ModelConfig) -> tuple[Adapter, LoraConfig]:
  """Read a PEFT LoRA directory into (adapter, lora_config); the adapter plugs into
  `forward(..., hook=lora.project_hook(adapter))`. Raises ValueError on options we do not
  implement, missing or unexpected keys, and shape mismatches."""
  directory = Path(directory)
  cfg_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
  for p in (cfg_path, weights_path):
    if not p.exists():
      raise FileNotFoundError(f"{p} not found: a PEFT adapter directory holds {CONFIG_NAME} and "
                              f"{WEIGHTS_NAME}")
  lora_config = _lora_config_from_peft(cfg_path, json.loads(cfg_path.read_text()), config)
  tensors = {k: np.asarray(v, np.float32) for k, v in read_safetensors(weights_path).items()}
  r, L = lora_config.rank, config.n_layers
  expected, problems, layers = set(), [], {}
  for module in lora_config.modules:
    a = np.zeros((L, module_dims(config, module)[0], r), np.float32)
    b = np.zeros((L, r, module_dims(config, module)[1]), np.float32)
    for layer in module_layers(config, lora_config, module):
      d_in, d_out = module_dims(config, module, layer)
      for which, dest, shape in (("A", a[layer, :d_in], (r, d_in)),
                                 ("B", b[layer, :, :d_out], (d_out, r))):
        key = peft_key(layer, module, which)
        expected.add(key)
        if key not in tensors:
          problems.append(f"missing {key} (expected shape {list(shape)})")
        elif tensors[key].shape != shape:
          problems.append(f"{key}: shape {list(tensors[key].shape)}, expected {list(shape)}")
        else:
          dest[...] = tensors[key].astype(np.float32).T
    layers[module] = {"a": jnp.asarray(a), "b": jnp.asarray(b)}
  unexpected = sorted(set(tensors) - expected)
  if unexpected:
    problems.append(f"unexpected keys (not in target_modules/layers_to_transform, or an "
                    f"unsupported LoRA variant): {unexpected[:8]}"
                    + (f" and {len(unexpected) - 8} more" if len(unexpected) > 8 else ""))
  if problems:
    raise ValueError(f"{weights_path} does not fit the config (r={r}, {L} layers):\n  "
                     + "\n  ".join(problems))
  return {"scale": lora_config.scale, "layers": layers}, lora_config


def load_peft(directory: str | Path, config: ModelConfig) -> Adapter:
  """The adapter of a PEFT LoRA directory, (see `lora.lora.project_hook`)."""
  return load_peft_with_config(directory, config)[0]
