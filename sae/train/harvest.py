"""Training activations harvested from a model over a corpus, through a shuffling buffer.

Tokens. Every sentence of every requested language is tokenised once, with BOS (the model
needs it), up front; the statistic tokens (real tokens that are not BOS, as in the analysis)
of each sentence are what the SAEs train on. Each epoch visits the sentences in a fresh random
order, so the token stream is the concatenation, epoch after epoch, of those sentences'
statistic tokens; its length per epoch is `n_tokens` (known before any compute, hence the
"corpus too small" check).

Buffer. The stream is cut into chunks of C = `buffer_tokens` tokens (rounded down to whole
batches). Chunk c is harvested in one go (the sentences overlapping it, `sentences_per_forward`
at a time, length-sorted to limit padding) into a host buffer [C, L, d], shuffled by a
permutation seeded by (seed, c), and served as C / B consecutive batches. Batch i is thus a pure
function of i: a resumed run re-harvests the chunk it stopped in and continues bit-exactly.
Each batch mixes the tokens of ~C / (tokens per sentence) random sentences of all languages.

Memory. Host: the buffer, C * L * d * 4 bytes (2^17 tokens x 6 layers x 640 = 2 GB). Device,
per forward: the model's layer scan stacks its observed residuals over all n_layers, so a
forward of S sentences of T tokens holds n_layers * S * T * d activations (in the compute
dtype) before the requested L are gathered and copied out; `sentences_per_forward` bounds it
(16 x 128 tokens x 18 layers x 640 x 4 B = 94 MB for Gemma 3 270M).
"""
from __future__ import annotations

import functools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sae.train.sources import epoch_permutation
from xling_jax.data.tokenizer import bucket_length
from xling_jax.model import transformer as model_lib
from xling_jax.runtime.progress import Progress


def tokenize(sentences: Mapping[str, Sequence[str]], tokenizer, max_len: int | None) -> list[
    np.ndarray]:
  """Every sentence of every language (in mapping order) as int32 ids with BOS, truncated to
  `max_len` tokens (the tokenizer warns when it truncates)."""
  texts = [text for lang in sentences for text in sentences[lang]]
  enc = tokenizer.encode_batch(texts, add_bos=True, max_len=max_len, bucket=None)
  return [enc.tokens[i, :n].astype(np.int32) for i, n in enumerate(enc.lengths)]


@functools.partial(jax.jit, static_argnames=("config", "layers"))
def layer_residuals(params, config, tokens: jax.Array, mask: jax.Array,
                    layers: tuple[int, ...]) -> jax.Array:
  """tokens, mask [S, T] -> the raw outputs of blocks `layers` [len(layers), S, T, d]."""
  x = model_lib.embed(params, config, tokens)
  _, residuals = model_lib.scan_blocks(params, config, x, mask, observe=lambda resid, _: resid,
                                       tokens=tokens)
  return residuals[jnp.asarray(layers)]


class HarvestSource:
  """`ActivationSource` over a model's residuals (`resid_post` of `layers`) on `rows`, the
  tokenised sentences (`tokenize`). `name` identifies the corpus, `model` the weights, in the
  run's recorded settings."""

  def __init__(self, params, config, rows: Sequence[np.ndarray], layers: Sequence[int],
               batch_size: int, *, name: str, model: str, buffer_tokens: int = 1 << 17,
               sentences_per_forward: int = 16, bucket: int = 16, seed: int = 0,
               epochs: int = 1, progress: bool = False):
    layers = tuple(int(i) for i in layers)
    bad = [i for i in layers if not 0 <= i < config.n_layers]
    if bad or not layers or len(set(layers)) != len(layers):
      raise ValueError(f"layers {list(layers)}: the model has {config.n_layers} layers "
                       f"(0..{config.n_layers - 1}); give each requested layer once")
    if buffer_tokens < batch_size:
      raise ValueError(f"buffer_tokens={buffer_tokens} must hold at least one batch of "
                       f"{batch_size} tokens")
    self.params, self.config, self.rows = params, config, list(rows)
    self.layers, self.d_in, self.batch_size = layers, config.d_model, batch_size
    self.name, self.model, self.seed, self.epochs = name, model, seed, epochs
    self.sentences_per_forward, self.bucket = sentences_per_forward, bucket
    self.progress = progress  # a line per buffer fill: the first step waits for one
    self.chunk_tokens = buffer_tokens // batch_size * batch_size
    self.counts = np.array([int(np.sum(r != config.bos_id)) for r in self.rows], np.int64)
    self.n_tokens = int(self.counts.sum())
    if not self.n_tokens:
      raise ValueError(f"{name}: no tokens besides BOS to train on")
    self._chunk: int | None = None
    self._buffer = np.empty((0,), np.float32)
    self._order = np.empty((0,), np.int64)

  def describe(self) -> dict:
    return {"name": self.name, "kind": "harvest", "model": self.model, "layers": list(self.layers),
            "sentences": len(self.rows), "tokens": self.n_tokens, "epochs": self.epochs,
            "buffer_tokens": self.chunk_tokens, "seed": self.seed}

  def batch(self, index: int) -> np.ndarray:
    chunk, offset = divmod(index * self.batch_size, self.chunk_tokens)
    if chunk != self._chunk:
      self._fill(chunk)
    rows = self._order[offset:offset + self.batch_size]
    if rows.size != self.batch_size:
      raise IndexError(f"batch {index} lies past the end of {self.name}'s token stream")
    return np.ascontiguousarray(self._buffer[rows].transpose(1, 0, 2))

  # ---- one chunk ------------------------------------------------------------------------------

  def _pieces(self, start: int, stop: int) -> list[tuple[int, int, int, int]]:
    """(row, first, end, buffer offset): statistic tokens [first, end) of sentence `row` fill
    buffer rows from `buffer offset`, for stream positions [start, stop)."""
    pieces = []
    for epoch in range(start // self.n_tokens, (stop - 1) // self.n_tokens + 1):
      base = epoch * self.n_tokens
      lo, hi = max(start, base) - base, min(stop, base + self.n_tokens) - base
      order = epoch_permutation(self.seed, epoch, len(self.rows))
      ends = np.cumsum(self.counts[order])
      for rank in range(int(np.searchsorted(ends, lo, side="right")),
                        int(np.searchsorted(ends, hi - 1, side="right")) + 1):
        row = int(order[rank])
        row_start = int(ends[rank] - self.counts[row])
        first, end = max(lo - row_start, 0), min(hi - row_start, int(self.counts[row]))
        if end > first:
          pieces.append((row, first, end, base + row_start + first - start))
    return pieces

  def _fill(self, chunk: int) -> None:
    start = chunk * self.chunk_tokens
    stop = min(start + self.chunk_tokens, self.n_tokens * self.epochs)
    if stop <= start:
      raise IndexError(f"chunk {chunk} lies past the end of {self.name}'s token stream")
    pieces = self._pieces(start, stop)
    acts = self._harvest(sorted({row for row, *_ in pieces}),
                         Progress(len({row for row, *_ in pieces}),
                                  f"harvesting buffer {chunk + 1}/{self.n_chunks}",
                                  enabled=self.progress))
    if self._buffer.shape != (self.chunk_tokens, len(self.layers), self.d_in):
      self._buffer = np.empty((self.chunk_tokens, len(self.layers), self.d_in), np.float32)
    for row, first, end, at in pieces:
      self._buffer[at:at + end - first] = acts[row][first:end]
    self._order = np.random.default_rng([self.seed, 1, chunk]).permutation(stop - start)
    self._chunk = chunk

  @property
  def n_chunks(self) -> int:
    return -(-self.n_tokens * self.epochs // self.chunk_tokens)

  def _harvest(self, rows: list[int], progress: Progress) -> dict[int, np.ndarray]:
    """{row: statistic-token residuals [n_row, L, d]} for sentences `rows`."""
    out: dict[int, np.ndarray] = {}
    by_length = sorted(rows, key=lambda r: len(self.rows[r]))
    n = self.sentences_per_forward
    pad_id, bos_id = self.config.pad_id, self.config.bos_id
    for group in (by_length[i:i + n] for i in range(0, len(by_length), n)):
      width = bucket_length(max(len(self.rows[r]) for r in group), self.bucket)
      # Fully masked filler rows keep one compiled batch shape per width.
      tokens = np.full((n, width), pad_id, np.int32)
      mask = np.zeros((n, width), np.int32)
      for b, r in enumerate(group):
        tokens[b, :len(self.rows[r])], mask[b, :len(self.rows[r])] = self.rows[r], 1
      resid = np.asarray(layer_residuals(self.params, self.config, jnp.asarray(tokens),
                                         jnp.asarray(mask), self.layers), np.float32)
      for b, r in enumerate(group):
        keep = np.flatnonzero(self.rows[r] != bos_id)
        out[r] = resid[:, b, keep].transpose(1, 0, 2)
      progress.update(len(group))
    return out

