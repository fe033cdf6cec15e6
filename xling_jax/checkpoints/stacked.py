"""The format-independent half of every loader: read each parameter through the layout
table into a preallocated stacked host array, check it, and hand each finished leaf to its
device (optionally sharded), so a model never needs two full copies in host memory.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from xling_jax.model import layout, transformer as model_lib
from xling_jax.model.config import ModelConfig
from xling_jax.model.transformer import Params
from xling_jax.runtime.errors import CheckpointError


def place(array: np.ndarray, sharding) -> jax.Array:
  out = jax.device_put(array, sharding) if sharding is not None else jax.device_put(array)
  return out


def resolve_sharding(sharding, config: ModelConfig):
  """A callable `sharding(config)` lets callers choose shardings once the config is known."""
  if callable(sharding) and not isinstance(sharding, jax.sharding.Sharding):
    return sharding(config)
  return sharding


def sharding_for(sharding, path: tuple[str, ...]):
  """`sharding` is None, one Sharding for every leaf, or a params-shaped pytree of them."""
  if sharding is None or isinstance(sharding, jax.sharding.Sharding):
    return sharding
  node = sharding
  for key in path:
    node = node[key]
  return node


class StackedBuilder:
  """Fills params one tensor at a time and hands each finished leaf to the device."""

  def __init__(self, config: ModelConfig, dtype, sharding):
    self.config = config
    self.dtype = np.dtype(dtype)
    self.sharding = sharding
    self.shapes = model_lib.param_shapes(config)
    self.params: Params = {"layers": {}}

  def put(self, key: str, value: np.ndarray) -> None:
    path = (key,)
    self.params[key] = place(np.asarray(value, self.dtype), sharding_for(self.sharding, path))

  def put_layers(self, path: tuple[str, ...], layers: tuple[int, ...],
                 read_layer: Callable[[int], np.ndarray]) -> None:
    """The stack at `path` (`layout.stacks`), filled with `read_layer(i)` for its `layers`."""
    stacked = np.empty(layout.get_path(self.shapes, path), self.dtype)
    for j, i in enumerate(layers):
      stacked[j] = read_layer(i)
    layout.set_path(self.params, path, place(stacked, sharding_for(self.sharding, path)))
    del stacked


def layer_count(source, fmt: str) -> int:
  """Layers in a checkpoint, from the names of its first per-layer norm."""
  import re
  template = layout.param("pre_attn_norm").stored[fmt].name
  pattern = re.compile(re.escape(template).replace(re.escape("{i}"), r"(\d+)") + "$")
  found = {int(m.group(1)) for n in source.names() if (m := pattern.match(n))}
  return max(found) + 1 if found else 0


def _check_layer_count(source, fmt: str, config: ModelConfig) -> None:
  n = layer_count(source, fmt)
  if n != config.n_layers:
    example = layout.param("pre_attn_norm").stored[fmt].name
    raise CheckpointError(
        f"{source.path}: checkpoint has {n} layers ({example.format(i=0)} .. "
        f"{example.format(i=max(n - 1, 0))}) but the config expects n_layers={config.n_layers}")


def read_params(source, fmt: str, config: ModelConfig, dtype, sharding,
                 padded_vocab: bool = False) -> Params:
  """Every parameter of `config` read from `source` in format `fmt` through the layout table.
  `padded_vocab`: the embedding may hold extra rows past the vocabulary (the released Kaggle
  Gemma 2 has 256128 for 256000 tokens), which are dropped; elsewhere its rows must match."""
  missing = [p.name for p in layout.params_for(config) if fmt not in p.stored]
  if missing:
    raise CheckpointError(f"{source.path}: {fmt} checkpoints of {config.family} are not "
                          f"supported (no {fmt} layout for {', '.join(missing)}); load the HF "
                          "safetensors checkpoint")
  _check_layer_count(source, fmt, config)
  builder = StackedBuilder(config, dtype or config.param_dtype, sharding)
  for p in layout.params_for(config):

    def read(layer, p=p):
      expected = layout.stored_shape(p, fmt, config, layer)
      name = layout.stored_name(p, fmt, layer)
      if p.name == "embed":
        tensor = source.get(name)
        rows_ok = (tensor.shape[0] >= expected[0] if padded_vocab
                   else tensor.shape[0] == expected[0])
        if tensor.ndim != 2 or tensor.shape[1] != expected[1] or not rows_ok:
          raise CheckpointError(
              f"{source.path}: tensor {name} has shape {tuple(tensor.shape)}, expected "
              f"{expected}: the config's vocab_size={config.vocab_size} and d_model="
              f"{config.d_model} must match the checkpoint")
        tensor = tensor[:expected[0]]
      else:
        tensor = source.get(name, expected)
      if not np.isfinite(np.asarray(tensor, np.float32)).all():
        raise CheckpointError(f"{source.path}: tensor {name} holds NaN or infinite values; "
                              "the checkpoint is corrupt")
      tensor = layout.from_stored(p, fmt, tensor, config, layer)
      # llama.cpp stores the multiplier of Gemma's norm scales (Gemma 2/3: 1 + w).
      return tensor - config.norm_offset if fmt == "gguf" and p.norm else tensor

    if p.per_layer:
      for path, layers in layout.stacks(p, config):
        builder.put_layers(path, layers, read)
    else:
      builder.put(p.name, read(None))
  return builder.params


def read_json(path: Path) -> dict:
  try:
    return json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{path}: not a readable JSON file ({e})") from e
