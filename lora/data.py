"""The adapters' training data: line-aligned target and reference sentences, a seeded held-out
split, and batches by data position (a resumed run sees the same batches)."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Sequence

import jax.numpy as jnp
import numpy as np

from lora import objectives

if TYPE_CHECKING:
  from lora.train import TrainConfig


@dataclasses.dataclass(frozen=True)
class ParallelSplit:
  """Line-aligned target-language and reference (English) sentences."""
  target: tuple[str, ...]
  ref: tuple[str, ...]

  def __post_init__(self):
    if len(self.target) != len(self.ref):
      raise ValueError(f"parallel split: {len(self.target)} target vs {len(self.ref)} "
                       "reference sentences; line i must be the same sentence in both")

  def __len__(self) -> int:
    return len(self.target)


def heldout_rows(n: int, eval_fraction: float, seed: int) -> tuple[int, ...]:
  """The held-out line numbers of an n-line corpus, in corpus order: a seeded random
  `eval_fraction` of the lines, at least one, leaving at least one to train on."""
  n_eval = max(1, int(round(n * eval_fraction)))
  if n - n_eval < 1:
    raise ValueError(f"a corpus of {n} parallel lines cannot be split into train and held-out "
                     f"parts (eval_fraction={eval_fraction})")
  return tuple(sorted(np.random.default_rng(seed).permutation(n)[:n_eval].tolist()))


def split_parallel(target: Sequence[str], ref: Sequence[str], eval_fraction: float,
                   seed: int) -> tuple[ParallelSplit, ParallelSplit]:
  """(train, held-out) by `heldout_rows`; both keep corpus order."""
  whole = ParallelSplit(tuple(target), tuple(ref))
  n = len(whole)
  held = set(heldout_rows(n, eval_fraction, seed))

  def take(keep):
    rows = [i for i in range(n) if (i in held) == keep]
    return ParallelSplit(tuple(whole.target[i] for i in rows), tuple(whole.ref[i] for i in rows))

  return take(False), take(True)


class BatchStream:
  """Batches of the training split by data position: lines are visited in a fresh permutation
  each epoch, the permutation of epoch e seeded by (rng key, e). `batch(p)` is pure in p."""

  def __init__(self, split: ParallelSplit, tokenizer, train_config: TrainConfig):
    self.split, self.tokenizer, self.tc = split, tokenizer, train_config
    self._perms: dict[tuple, np.ndarray] = {}

  def _perm(self, rng: np.ndarray, epoch: int) -> np.ndarray:
    key = (tuple(np.asarray(rng).ravel().tolist()), epoch)
    if key not in self._perms:
      self._perms[key] = np.random.default_rng(list(key[0]) + [epoch]).permutation(len(self.split))
    return self._perms[key]

  def indices(self, rng: np.ndarray, position: int) -> np.ndarray:
    n = len(self.split)
    pos = np.arange(position, position + self.tc.batch_size)
    return np.array([self._perm(rng, int(p // n))[p % n] for p in pos])

  def batch(self, rng: np.ndarray, position: int) -> objectives.Batch:
    """Target and English rows of the same lines, padded to one common width."""
    idx = self.indices(rng, position)
    enc = [self.tokenizer.encode_batch([texts[i] for i in idx], add_bos=True,
                                       max_len=self.tc.max_len, bucket=self.tc.bucket)
           for texts in (self.split.target, self.split.ref)]
    width = max(e.tokens.shape[1] for e in enc)
    pad = lambda x, fill: np.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=fill)
    (tt, tm), (rt, rm) = [(pad(e.tokens, self.tokenizer.pad_id), pad(e.mask, 0)) for e in enc]
    return objectives.Batch(*map(jnp.asarray, (tt, tm, rt, rm)))
