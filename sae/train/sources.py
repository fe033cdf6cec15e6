"""Where training activations come from: the interface, a `.npy` file, and the size check.

A source hands out batch number i as a pure function of i (`batch(i) -> [L, B, d]` float32,
one row per layer being trained, the same tokens in every row), so a resumed run sees exactly
the batches the uninterrupted one saw, without saving any data position but the step.
`sae.train.harvest.HarvestSource` is the other source (residuals of a model over a corpus).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np

FLOAT_DTYPES = (np.float16, np.float32, np.float64)


class ActivationSource(Protocol):
  layers: tuple[int, ...]  # the model layer of each row of a batch
  d_in: int
  batch_size: int  # tokens per batch
  n_tokens: int  # tokens in one pass over the data
  epochs: int  # passes the source may make

  def batch(self, index: int) -> np.ndarray:
    """Batch `index` [len(layers), batch_size, d_in] float32."""

  def describe(self) -> dict:
    """JSON-able identity of the data (recorded with each checkpoint; a resume must match)."""


def check_enough(source: ActivationSource, batches: int, what: str) -> None:
  """Raise ValueError, before any compute, when `source` cannot hand out `batches` batches."""
  needed = batches * source.batch_size
  available = source.n_tokens * source.epochs
  if needed > available:
    passes = -(-needed // source.n_tokens)
    raise ValueError(
        f"{source.describe()['name']} has {source.n_tokens:,} tokens"
        + (f" ({source.epochs} passes: {available:,})" if source.epochs > 1 else "")
        + f", but {what} needs {batches:,} batches x {source.batch_size:,} = {needed:,} tokens; "
        f"train fewer steps, use smaller batches, allow {passes} passes (epochs) or bring more "
        "data")


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The order items are visited in during `epoch`: a fresh permutation per (seed, epoch)."""
  return np.random.default_rng([seed, epoch]).permutation(n)


class NpyActivations:
  """A `[N, d]` float array in a `.npy` file (memory-mapped, never read whole), as one layer.

  Rows are visited in a fresh random order each epoch; batch i holds stream positions
  [i B, (i + 1) B) of that order. `layer` only labels the output (the file says nothing about
  where its activations came from)."""

  def __init__(self, path: str | os.PathLike, batch_size: int, *, layer: int = 0, seed: int = 0,
               epochs: int = 1):
    self.path = Path(path)
    self.array = load_npy(self.path)
    self.n_tokens, self.d_in = self.array.shape
    self.layers, self.batch_size, self.seed, self.epochs = (int(layer),), batch_size, seed, epochs
    self._orders: dict[int, np.ndarray] = {}

  def _order(self, epoch: int) -> np.ndarray:
    if epoch not in self._orders:
      self._orders = {epoch: epoch_permutation(self.seed, epoch, self.n_tokens)}
    return self._orders[epoch]

  def batch(self, index: int) -> np.ndarray:
    positions = np.arange(index * self.batch_size, (index + 1) * self.batch_size)
    epochs, offsets = np.divmod(positions, self.n_tokens)
    rows = np.concatenate([self._order(int(e))[offsets[epochs == e]] for e in np.unique(epochs)])
    # Sorted rows read the memory map front to back; the order within a batch is immaterial.
    return np.asarray(self.array[np.sort(rows)], np.float32)[None]

  def describe(self) -> dict:
    return {"name": str(self.path), "kind": "npy", "path": str(self.path.resolve()),
            "shape": [self.n_tokens, self.d_in], "dtype": self.array.dtype.name,
            "layers": list(self.layers), "epochs": self.epochs}


def load_npy(path: Path) -> np.ndarray:
  """The memory-mapped [N, d] finite float array in `path`; one ValueError naming the file
  otherwise."""
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such activations file")
  try:
    array = np.load(path, mmap_mode="r", allow_pickle=False)
  except ValueError as e:  # not .npy, or object arrays under allow_pickle=False
    raise ValueError(f"{path}: not a plain .npy array ({e}); expected a [N, d] float array "
                     "saved with numpy.save") from e
  if not isinstance(array, np.ndarray):
    raise ValueError(f"{path}: an .npz archive, expected a single [N, d] float array (.npy)")
  if array.ndim != 2:
    raise ValueError(f"{path}: shape {array.shape} (rank {array.ndim}), expected a [N, d] array "
                     "(one activation vector per row)")
  if array.dtype.type not in FLOAT_DTYPES:
    raise ValueError(f"{path}: dtype {array.dtype}, expected float16, float32 or float64")
  if min(array.shape) == 0:
    raise ValueError(f"{path}: shape {array.shape} holds no activations")
  check_finite(array, path)
  return array


def check_finite(array: np.ndarray, path: Path, chunk_bytes: int = 1 << 26) -> None:
  """One ValueError naming `path` and the first row holding a NaN or an infinity. Reads the
  (memory-mapped) array once, in chunks of about `chunk_bytes`, so a large file is never held
  whole; a NaN would otherwise train an SAE whose report says FVU nan, or stop it mid-run."""
  rows = max(1, chunk_bytes // max(1, array.shape[1] * array.itemsize))
  for start in range(0, array.shape[0], rows):
    bad = ~np.isfinite(array[start:start + rows]).all(axis=1)
    if bad.any():
      row = start + int(np.argmax(bad))
      values = np.asarray(array[row])
      column = int(np.argmax(~np.isfinite(values)))
      raise ValueError(f"{path}: row {row} holds {values[column]} (column {column}); activations "
                       "must be finite: drop or repair that row")
