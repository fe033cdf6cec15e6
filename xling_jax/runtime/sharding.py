"""Device meshes and shardings: data parallel over `data`, parameters over `model`, the routed
experts of a Gemma 4 MoE over `expert`.

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

DATA, MODEL, EXPERT = "data", "model", "expert"
PARAM_MODES = ("replicated", "fsdp", "tensor")


def make_mesh(shape: tuple[int, ...] | None = None, devices=None) -> Mesh:
  """A (data, model, expert) mesh from `shape` = (data, model) or (data, model, expert); the
  expert axis defaults to 1, and the default shape puts every device on the data axis."""
  devices = list(devices if devices is not None else jax.devices())
  if shape is None:
    shape = (len(devices), 1)
  shape = tuple(shape)
  if len(shape) not in (2, 3):
    raise ValueError(f"mesh shape {shape}: expected (data, model) or (data, model, expert)")
  if math.prod(shape) != len(devices):
    raise ValueError(f"mesh shape {shape} needs {math.prod(shape)} devices; {len(devices)} available")
  shape = shape + (1,) * (3 - len(shape))
  return Mesh(np.asarray(devices).reshape(shape), (DATA, MODEL, EXPERT))


def _expert_size(mesh: Mesh) -> int:
  return mesh.shape.get(EXPERT, 1)


def data_shards(mesh: Mesh) -> int:
  """How many parts a batch is split into: the data axis, times the expert axis (whose devices
  each hold a part of the experts and their own rows, as expert parallelism does)."""
  return mesh.shape[DATA] * _expert_size(mesh)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `data` (and `expert` when it has more than one device);
  the rest replicated."""
  return NamedSharding(mesh, P((DATA, EXPERT) if _expert_size(mesh) > 1 else DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _fsdp_axis(shape: tuple[int, ...], n: int, skip: set[int]) -> int | None:
  """The largest axis divisible by `n`, outside `skip` (the layer axis, which the scan walks,
  and an expert axis)."""
  axes = [a for a in range(len(shape)) if a not in skip and shape[a] % n == 0]
  return max(axes, key=lambda a: shape[a], default=None)


def param_shardings(params: Any, mesh: Mesh, mode: str = "replicated") -> Any:
  """A params-shaped pytree of NamedShardings for `mode` in PARAM_MODES (over `model`), with
  the experts' axis split over `expert` in every mode. `params` may hold arrays or shape
  tuples (see `model.param_shapes`)."""
  if mode not in PARAM_MODES:
    raise ValueError(f"unknown parameter sharding {mode!r}; choose one of {PARAM_MODES}")
  n, n_expert = mesh.shape[MODEL], _expert_size(mesh)

  def spec(path, leaf) -> NamedSharding:
    keys = [getattr(p, "key", None) for p in path]
    shape = tuple(leaf) if isinstance(leaf, tuple) else tuple(np.shape(leaf))
    in_layers = keys[0] in ("layers", "groups")  # stacked per layer: [L, ...] or [L_g, ...]
    axes: list[str | None] = [None] * len(shape)
    expert = layout.expert_parallel_axis(keys[-1]) if in_layers else None
    if expert is not None and n_expert > 1 and shape[expert] % n_expert == 0:
      axes[expert] = EXPERT
    if mode == "tensor" and n > 1:
      # Megatron layout: whole heads and MLP columns per device (layout.Param.tensor_axis);
      # norms and the embedding table stay replicated.
      axis = layout.tensor_parallel_axis(keys[-1]) if in_layers else None
      if axis is not None and shape[axis] % n == 0:
        axes[axis] = MODEL
    elif mode == "fsdp" and n > 1:
      skip = ({0} if in_layers else set()) | ({expert} if EXPERT in axes else set())
      axis = _fsdp_axis(shape, n, skip)
      if axis is not None:
        axes[axis] = MODEL
    if not any(axes) and (mode == "replicated" or n == 1):
      return NamedSharding(mesh, P())
    return NamedSharding(mesh, P(*axes))

  return jax.tree_util.tree_map_with_path(
      spec, params, is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(d, int) for d in x))


def config_param_shardings(config, mesh: Mesh, mode: str = "replicated") -> Any:
  """Shardings for a config's params before any weight is loaded (pass to load_params)."""
  return param_shardings(layout.param_shapes(config), mesh, mode)


def shard_params(params: Any, mesh: Mesh, mode: str = "replicated") -> Any:
  return jax.device_put(params, param_shardings(params, mesh, mode))
