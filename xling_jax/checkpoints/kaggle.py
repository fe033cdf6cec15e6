"""The gemma library's Kaggle/orbax checkpoints (flat or nested): load, save, and the config
inferred from tensor shapes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

from xling_jax.checkpoints.stacked import layer_count, read_params, resolve_sharding
from xling_jax.model import layout
from xling_jax.model.config import ModelConfig
from xling_jax.model.transformer import Params
from xling_jax.runtime.errors import CheckpointError


class FlatSource:
  """Tensors of an in-memory flat dict (a restored Kaggle/orbax tree). The nested layout of
  the gemma library drops the MLP's `w` level, so `.../w` also finds `...`."""

  def __init__(self, flat: dict[str, Any], where: Path):
    self.flat, self.path = flat, where

  def names(self) -> set[str]:
    return set(self.flat)

  def get(self, name: str, expected_shape=None) -> np.ndarray:
    key = name if name in self.flat or not name.endswith("/w") else name[:-2]
    if key not in self.flat:
      raise CheckpointError(f"{self.path}: tensor {name} is missing (expected shape "
                            f"{expected_shape})")
    value = np.asarray(self.flat[key])
    if expected_shape is not None and tuple(value.shape) != tuple(expected_shape):
      raise CheckpointError(f"{self.path}: tensor {name} has shape {tuple(value.shape)}, "
                            f"expected {tuple(expected_shape)}")
    return value


# ----------------------------------------------------------------------------- Kaggle / orbax

def flatten_kaggle(tree: dict, prefix: str = "") -> dict[str, Any]:
  """Nested or flat Kaggle params -> {'transformer/layer_0/attn/q_einsum/w': array}."""
  out = {}
  for key, value in tree.items():
    path = f"{prefix}/{key}" if prefix else str(key)
    if isinstance(value, dict):
      out.update(flatten_kaggle(value, path))
    else:
      out[path] = value
  return out


def restore_orbax(directory: Path) -> dict:
  import orbax.checkpoint as ocp
  try:
    with ocp.PyTreeCheckpointer() as ckptr:
      meta = ckptr.metadata(directory)
      tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta
      restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
      return ckptr.restore(directory, restore_args=restore_args)
  except Exception as e:
    raise CheckpointError(f"{directory}: cannot restore orbax checkpoint ({e})") from e


def infer_config_from_kaggle(source: FlatSource, **overrides: Any) -> ModelConfig:
  """The config of a Kaggle checkpoint: the released model of the same family, depth and width
  when there is one (its attention layout and query scalar cannot be read off shapes), else
  the shapes on that family's defaults."""
  from xling_jax.model.presets import PRESETS
  get = source.get
  family = "gemma3" if any("/_query_norm/" in n for n in source.names()) else "gemma2"
  n_layers = layer_count(source, "kaggle")
  q = get("transformer/layer_0/attn/q_einsum/w").shape  # [N, D, H]
  kv = get("transformer/layer_0/attn/kv_einsum/w").shape  # [2, K, D, H]
  gating = get("transformer/layer_0/mlp/gating_einsum/w").shape
  transposed = gating[1] != q[1]  # [2, F, D] rather than [2, D, F]
  vocab = get("transformer/embedder/input_embedding").shape[0]
  fields = dict(n_layers=n_layers, n_heads=q[0], d_model=q[1], head_dim=q[2], n_kv_heads=kv[1],
                mlp_hidden=gating[1] if transposed else gating[2],
                kaggle_gating_transposed=bool(transposed))
  for make in PRESETS.values():
    preset = make()
    if (preset.family, preset.n_layers, preset.d_model) == (family, n_layers, q[1]):
      return preset.replace(**fields, **overrides)
  base = PRESETS["gemma3_1b" if family == "gemma3" else "gemma2_2b"]
  fields.update(query_pre_attn_scalar=q[2],
                vocab_size=256000 if vocab == 256128 else vocab)
  return base(**fields, **overrides)


# Names only the gemma library's Gemma 4 checkpoints hold (google-deepmind/gemma gm.nn.gemma4).
_GEMMA4_MARKERS = ("/skip_scale", "/per_layer_embeddings", "stacked_layers/")


def load_kaggle(directory: str | os.PathLike, config: ModelConfig | None = None, *,
                dtype=None, sharding=None) -> tuple[Params, ModelConfig]:
  """The gemma library's Kaggle/orbax checkpoint (flat or nested), Gemma 2 or Gemma 3."""
  directory = Path(directory)
  flat = flatten_kaggle(restore_orbax(directory))
  if "params" in {k.split("/")[0] for k in flat}:
    flat = {k[len("params/"):]: v for k, v in flat.items() if k.startswith("params/")}
  if any(marker in name for name in flat for marker in _GEMMA4_MARKERS):
    raise CheckpointError(f"{directory}: a Gemma 4 Kaggle/orbax checkpoint, which is not "
                          "supported; convert it with transformers' convert_gemma4_weights.py "
                          "and load the HF directory")
  if "transformer/embedder/input_embedding" not in flat:
    raise CheckpointError(f"{directory}: tensor transformer/embedder/input_embedding is missing; "
                          f"not a Gemma Flax checkpoint (found {sorted(flat)[:5]} ...)")
  source = FlatSource(flat, directory)
  config = config or infer_config_from_kaggle(source)
  params = read_params(source, "kaggle", config, dtype, resolve_sharding(sharding, config),
                        padded_vocab=True)
  return params, config


def save_kaggle(directory: str | os.PathLike, params: Params, config: ModelConfig,
                pad_vocab_to: int | None = None) -> None:
  """Write params in the released gemma-library flat layout (used by tests and converters)."""
  import orbax.checkpoint as ocp
  if config.family not in ("gemma2", "gemma3"):
    raise ValueError(f"save_kaggle writes Gemma 2 and Gemma 3, not {config.family}")
  flat: dict[str, dict[str, np.ndarray]] = {}
  for name, tensor in layout.to_stored(params, config, "kaggle"):
    if name == "transformer/embedder/input_embedding" and pad_vocab_to:
      tensor = np.concatenate([tensor, np.zeros((pad_vocab_to - tensor.shape[0],
                                                 tensor.shape[1]), tensor.dtype)])
    head, leaf = name.rsplit("/", 1)
    flat.setdefault(head, {})[leaf] = tensor
  with ocp.PyTreeCheckpointer() as ckptr:
    ckptr.save(Path(directory).absolute(), flat)
