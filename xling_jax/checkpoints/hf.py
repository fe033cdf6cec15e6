"""HF safetensors directories (text-only, or the language model of a multimodal checkpoint):
load and save through the layout table.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from xling_jax.checkpoints import hf_config
from xling_jax.checkpoints.safetensors_io import SafetensorsReader, tensor_files
from xling_jax.checkpoints.stacked import read_json, read_params, resolve_sharding
from xling_jax.model import layout
from xling_jax.model.config import ModelConfig
from xling_jax.model.transformer import Params
from xling_jax.runtime.errors import CheckpointError


class HFSource:
  """The tensors of an HF directory by their text-model names (`model.layers.0...`), whichever
  prefix the checkpoint uses: text-only `model.`, or a multimodal Gemma 3's language model
  under `language_model.model.` (as released) or `model.language_model.` (current converter,
  and every multimodal Gemma 4)."""

  PREFIXES = ("model.", "model.language_model.", "language_model.model.")

  def __init__(self, directory: Path):
    self.path = directory
    files = tensor_files(directory)
    prefix = next((p for p in self.PREFIXES if p + "embed_tokens.weight" in files), None)
    if prefix is None:
      raise CheckpointError(
          f"{directory}: no language model in the checkpoint (none of "
          f"{', '.join(p + 'embed_tokens.weight' for p in self.PREFIXES)}; found "
          f"{sorted(files)[:4]} ...)")
    ours = {"model." + n[len(prefix):]: n for n in files if n.startswith(prefix)}
    self.files = {name: files[stored] for name, stored in ours.items()}
    self._reader = SafetensorsReader(self.files, ours)

  def names(self) -> set[str]:
    return set(self.files)

  def get(self, name: str, expected_shape=None) -> np.ndarray:
    return self._reader.get(name, expected_shape)


def read_hf_config(directory: Path) -> ModelConfig:
  config_file = directory / "config.json"
  if not config_file.exists():
    raise CheckpointError(f"{directory}: no config.json and no config given")
  try:
    return hf_config.config_from_hf(read_json(config_file))
  except CheckpointError:
    raise
  except (ValueError, TypeError) as e:
    raise CheckpointError(f"{config_file}: {e}") from e


def load_hf(directory: str | os.PathLike, config: ModelConfig | None = None, *,
            dtype=None, sharding=None) -> tuple[Params, ModelConfig]:
  """An HF Gemma 2 / 3 / 4 directory (text-only, or the language model of a multimodal one;
  a released Gemma 4's unused K/V weights on its KV-shared layers are not read)."""
  directory = Path(directory)
  config = config or read_hf_config(directory)
  source = HFSource(directory)
  return read_params(source, "hf", config, dtype, resolve_sharding(sharding, config)), config


def save_hf(directory: str | os.PathLike, params: Params, config: ModelConfig,
            max_shard_bytes: int | None = None) -> None:
  """Write params as an HF directory (config.json + safetensors, sharded with an index when
  `max_shard_bytes` is set) that `Gemma2ForCausalLM` / `Gemma3ForCausalLM` /
  `Gemma4ForCausalLM.from_pretrained` reads."""
  from safetensors.numpy import save_file

  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  tensors = dict(layout.to_stored(params, config, "hf"))
  (directory / "config.json").write_text(json.dumps(hf_config.config_to_hf(config), indent=2))
  if max_shard_bytes is None:
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name, t in tensors.items():
    if shards[-1] and size + t.nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = t
    size += t.nbytes
  weight_map = {}
  for k, shard in enumerate(shards):
    fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file(shard, str(directory / fname), metadata={"format": "pt"})
    weight_map.update({name: fname for name in shard})
  index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
           "weight_map": weight_map}
  (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
