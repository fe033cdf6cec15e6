"""Device meshes and shardings: data parallel over `data`, parameters over `model`.

We rely on JAX's SPMD partitioner (jit + NamedSharding) for all communication; this module only
says where arrays live.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from xling_jax.model import layout

DATA, MODEL = "data", "model"
PARAM_MODES = ("replicated", "fsdp", "tensor")


def make_mesh(shape: tuple[int, int] | None = None, devices=None) -> Mesh:
  """A (data, model) mesh; default puts every device on the data axis."""
  devices = list(devices if devices is not None else jax.devices())
  if shape is None:
    shape = (len(devices), 1)
  if math.prod(shape) != len(devices):
    raise ValueError(f"mesh shape {shape} needs {math.prod(shape)} devices; {len(devices)} available")
  return Mesh(np.asarray(devices).reshape(shape), (DATA, MODEL))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `data`; the rest replicated."""
  return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _fsdp_spec(shape: tuple[int, ...], n: int, skip_leading: bool) -> P:
  """Shard the largest axis divisible by `n` (never the layer axis, which the scan walks)."""
  axes = range(1 if skip_leading else 0, len(shape))
  best = max((a for a in axes if shape[a] % n == 0), key=lambda a: shape[a], default=None)
  spec = [None] * len(shape)
  if best is not None:
    spec[best] = MODEL
  return P(*spec)


def param_shardings(params: Any, mesh: Mesh, mode: str = "replicated") -> Any:
  """A params-shaped pytree of NamedShardings for `mode` in PARAM_MODES. `params` may hold
  arrays or shape tuples (see `model.param_shapes`)."""
  if mode not in PARAM_MODES:
    raise ValueError(f"unknown parameter sharding {mode!r}; choose one of {PARAM_MODES}")
  n = mesh.shape[MODEL]

  def spec(path, leaf) -> NamedSharding:
    keys = [getattr(p, "key", None) for p in path]
    shape = tuple(leaf) if isinstance(leaf, tuple) else tuple(np.shape(leaf))
    if mode == "replicated" or n == 1:
      return NamedSharding(mesh, P())
    in_layers = "layers" in keys
    if mode == "tensor":
      # Megatron layout: whole heads and MLP columns per device (layout.Param.tensor_axis);
      # norms and the embedding table stay replicated.
      axis = layout.tensor_parallel_axis(keys[-1]) if in_layers else None
      if axis is not None and shape[axis] % n == 0:
        return NamedSharding(mesh, P(*[MODEL if i == axis else None for i in range(len(shape))]))
      return NamedSharding(mesh, P())
    return NamedSharding(mesh, _fsdp_spec(shape, n, skip_leading=in_layers))

  return jax.tree_util.tree_map_with_path(
      spec, params, is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(d, int) for d in x))


def config_param_shardings(config, mesh: Mesh, mode: str = "replicated") -> Any:
  """Shardings for a config's params before any weight is loaded (pass to load_params)."""
  return param_shardings(layout.param_shapes(config), mesh, mode)


def shard_params(params: Any, mesh: Mesh, mode: str = "replicated") -> Any:
  return jax.device_put(params, param_shardings(params, mesh, mode))
