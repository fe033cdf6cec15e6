"""The one safetensors reader: tensors by name over one file or an index of shards, bfloat16
through ml_dtypes, every error naming the file and tensor (checkpoints, PEFT adapters, SAEs).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from xling_jax.runtime.errors import CheckpointError

# ----------------------------------------------------------------------------- HF safetensors

FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")  # safetensors' names of the dtypes read

def tensor_files(directory: Path) -> dict[str, Path]:
  """Map every tensor name to the safetensors file holding it (single file or sharded)."""
  from safetensors import safe_open

  index_file = directory / "model.safetensors.index.json"
  if index_file.exists():
    try:
      weight_map = json.loads(index_file.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError) as e:
      raise CheckpointError(f"{index_file}: not a valid safetensors index ({e})") from e
    missing = sorted({f for f in weight_map.values() if not (directory / f).exists()})
    if missing:
      names = [n for n, f in weight_map.items() if f == missing[0]][:3]
      raise CheckpointError(
          f"{index_file} lists shard(s) that are missing from {directory}: {missing} "
          f"(e.g. {missing[0]} should hold {names})")
    return {name: directory / f for name, f in weight_map.items()}
  files = sorted(directory.glob("*.safetensors"))
  if not files:
    raise CheckpointError(f"{directory}: no model.safetensors or model.safetensors.index.json")
  mapping = {}
  for f in files:
    try:
      with safe_open(str(f), framework="numpy") as handle:
        for name in handle.keys():
          mapping[name] = f
    except Exception as e:  # safetensors raises its own error types for corrupt headers
      raise CheckpointError(f"{f}: cannot read safetensors header ({e})") from e
  return mapping


class SafetensorsReader:
  """Reads tensors by name, keeping one open handle per shard. `stored_names` maps a name to
  the one in the file when they differ."""

  def __init__(self, files: dict[str, Path], stored_names: dict[str, str] | None = None):
    self.files = files
    self.stored_names = stored_names or {}
    self._handles: dict[Path, Any] = {}

  def _handle(self, path: Path):
    from safetensors import safe_open
    if path not in self._handles:
      try:
        self._handles[path] = safe_open(str(path), framework="numpy")
      except Exception as e:
        raise CheckpointError(f"{path}: cannot open safetensors file ({e})") from e
    return self._handles[path]

  def get(self, name: str, expected_shape: tuple[int, ...] | None = None) -> np.ndarray:
    if name not in self.files:
      raise CheckpointError(f"tensor {name} is missing from the checkpoint "
                            f"(expected shape {expected_shape})")
    path = self.files[name]
    handle = self._handle(path)
    stored = self.stored_names.get(name, name)
    try:
      sl = handle.get_slice(stored)
      shape = tuple(sl.get_shape())
      if expected_shape is not None and shape != tuple(expected_shape):
        raise CheckpointError(
            f"{path}: tensor {name} has shape {shape}, expected {tuple(expected_shape)}")
      dtype = sl.get_dtype()
      if dtype not in FLOAT_DTYPES:
        # Quantised or integer tensors would be cast to float silently, changing every
        # activation: weights, adapters and SAEs are all stored as floats.
        raise CheckpointError(f"{path}: tensor {name} is stored as {dtype}; only "
                              f"{', '.join(FLOAT_DTYPES)} tensors are read (a quantised "
                              "export? use the float checkpoint)")
      if dtype == "BF16":
        # numpy has no bfloat16: reinterpret the raw bits through ml_dtypes.
        import ml_dtypes
        raw = _read_raw(path, stored)
        return np.frombuffer(raw, ml_dtypes.bfloat16).reshape(shape)
      return handle.get_tensor(stored)
    except CheckpointError:
      raise
    except Exception as e:
      raise CheckpointError(f"{path}: cannot read tensor {name} ({e}); "
                            "the file may be truncated or corrupt") from e


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Every tensor of one safetensors file as numpy (bfloat16 via ml_dtypes), with errors that
  name the file."""
  from safetensors import safe_open
  path = Path(path)
  try:
    with safe_open(str(path), framework="numpy") as handle:
      names = list(handle.keys())
  except Exception as e:
    raise CheckpointError(f"{path}: cannot read safetensors header ({e})") from e
  reader = SafetensorsReader({name: path for name in names})
  return {name: reader.get(name) for name in names}


def _read_raw(path: Path, name: str) -> bytes:
  with open(path, "rb") as f:
    header_len = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(header_len))
    start, end = header[name]["data_offsets"]
    f.seek(8 + header_len + start)
    data = f.read(end - start)
  if len(data) != end - start:
    raise CheckpointError(f"{path}: tensor {name} is truncated")
  return data
