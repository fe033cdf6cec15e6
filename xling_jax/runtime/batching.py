"""Host-side batch loops shared by the analysis and the scoring: one rounding policy for batch
rows on a mesh, one placement, and one dispatch-next-then-collect loop."""
from __future__ import annotations

from functools import partial
from typing import Callable, Iterable, TypeVar

import jax
import numpy as np

Batch = TypeVar("Batch")


def data_axis(mesh) -> int:
  from xling_jax.runtime import sharding as sharding_lib
  return 1 if mesh is None else sharding_lib.data_shards(mesh)


def batch_rows(requested: int, n_items: int, mesh=None) -> int:
  """Rows per batch: `requested`, but no more than the `n_items` there are (more rows would only
  pad, and could run out of memory for nothing), rounded up to a multiple of the mesh's data
  axis so that every device gets the same number of rows (the extra rows are padding)."""
  if requested < 1:
    raise ValueError(f"batch_size must be >= 1, got {requested}")
  n_data = data_axis(mesh)
  rows = max(1, min(requested, n_items))
  return -(-rows // n_data) * n_data


def placer(mesh) -> Callable[[np.ndarray], jax.Array]:
  """Host array -> device array; with a mesh, its leading (batch) axis split over `data`."""
  if mesh is None:
    return jax.numpy.asarray
  from xling_jax.runtime import sharding as sharding_lib
  return partial(jax.device_put, device=sharding_lib.batch_sharding(mesh))


def fetch(tree):
  """Device results as numpy, including batch rows that live on other hosts' devices."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    tree = multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


def pipelined(batches: Iterable[Batch], dispatch: Callable[[Batch], object],
              collect: Callable[[Batch, object], None]) -> None:
  """dispatch(batch k + 1) before collect(batch k, its result): JAX dispatches asynchronously,
  so the host prepares the next batch and copies results back while the device computes."""
  pending = None
  for batch in batches:
    out = dispatch(batch)
    if pending is not None:
      collect(*pending)
    pending = (batch, out)
  if pending is not None:
    collect(*pending)
