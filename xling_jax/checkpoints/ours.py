"""Our own orbax format: `params/` (the stacked layout) + `xling_config.json`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np

from xling_jax.checkpoints.stacked import resolve_sharding, sharding_for
from xling_jax.model import transformer as model_lib
from xling_jax.model.config import ModelConfig
from xling_jax.model.transformer import Params
from xling_jax.runtime.errors import CheckpointError

OUR_CONFIG_FILE = "xling_config.json"
OUR_PARAMS_DIR = "params"


# ----------------------------------------------------------------------------- our own format

def save_params(directory: str | os.PathLike, params: Params, config: ModelConfig) -> None:
  """Our orbax format: `params/` (stacked layout) + `xling_config.json`."""
  import orbax.checkpoint as ocp
  directory = Path(directory).absolute()
  directory.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(directory / OUR_PARAMS_DIR, params, force=True)
  (directory / OUR_CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2))


def load_ours(directory: str | os.PathLike, config: ModelConfig | None = None, *,
              dtype=None, sharding=None) -> tuple[Params, ModelConfig]:
  import orbax.checkpoint as ocp
  directory = Path(directory).absolute()
  stored = ModelConfig.from_dict(json.loads((directory / OUR_CONFIG_FILE).read_text()))
  if config is not None and config.n_layers != stored.n_layers:
    raise CheckpointError(f"{directory / OUR_CONFIG_FILE}: checkpoint has n_layers="
                          f"{stored.n_layers} but the config expects {config.n_layers}")
  config = config or stored
  sharding = resolve_sharding(sharding, config)
  dtype = np.dtype(dtype or config.param_dtype)
  shapes = model_lib.param_shapes(config)
  abstract = jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s, dtype), shapes, is_leaf=lambda s: isinstance(s, tuple))
  if sharding is not None:
    abstract = jax.tree_util.tree_map_with_path(
        lambda path, a: jax.ShapeDtypeStruct(
            a.shape, a.dtype, sharding=sharding_for(sharding, tuple(p.key for p in path))),
        abstract)
  try:
    with ocp.StandardCheckpointer() as ckptr:
      params = ckptr.restore(directory / OUR_PARAMS_DIR, abstract)
  except Exception as e:
    raise CheckpointError(f"{directory / OUR_PARAMS_DIR}: cannot restore params ({e})") from e
  return params, config
