"""Corpus statistics on the host: per-sentence sums streamed over a corpus, and every
corpus-level metric as a ratio of those sums.

The host keeps only per-sentence sums ([sentences, layers]) and per-feature counts ([layers, W]):
device memory does not grow with the corpus (see `CorpusStats` and `weighted_metric`).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from xling_jax.analysis.sae_stats import ROW_SUMS, batch_stats
from xling_jax.model.config import ModelConfig
from xling_jax.runtime import batching, errors
from xling_jax.runtime.progress import Progress

METRICS = ("activation", "l0", "mean_active", "resid_norm", "sentence_activation",
           "sentence_distinct_features")


@dataclasses.dataclass
class LanguageSums:
  """Host-side sums for one language. Row arrays are [n_sentences, L] in corpus order."""
  rows: dict[str, np.ndarray]
  n_tokens: np.ndarray  # [n_sentences]
  feature_counts: np.ndarray  # [L, W] token firing counts
  truncated: tuple[int, ...] = ()


@dataclasses.dataclass
class CorpusStats:
  """Statistics of a parallel corpus, languages x layers. `per_language[lang]` holds the sums."""
  languages: tuple[str, ...]
  layers: tuple[int, ...]
  per_language: dict[str, LanguageSums]

  def n_tokens(self, lang: str) -> int:
    return int(self.per_language[lang].n_tokens.sum())

  def n_sentences(self, lang: str) -> int:
    return int(self.per_language[lang].n_tokens.shape[0])

  def metric(self, name: str, lang: str) -> np.ndarray:
    """Corpus-level metric [L] of one language (see `weighted_metric`)."""
    s = self.per_language[lang]
    return weighted_metric(s, name, np.ones((1, len(s.n_tokens))))[0]

  def metrics(self, name: str) -> dict[str, list[float]]:
    return {lang: self.metric(name, lang).tolist() for lang in self.languages}


def weighted_metric(sums: LanguageSums, name: str, weights: np.ndarray) -> np.ndarray:
  """Metric [R, L] under R weightings of the sentences, `weights` [R, S]: how many times each
  sentence counts (ones: the corpus itself; multinomial counts: a bootstrap resample).

  activation = sum f / tokens; l0 = active count / tokens; mean_active = sum f / active count;
  resid_norm = sum ||x|| / tokens; sentence_activation = mean over sentences of the sentence's
  mean-pooled code mass; sentence_distinct_features = mean over sentences of the number of
  features that fire in the sentence. Sentences without statistic tokens do not count in the
  two sentence means.
  """
  w, n, rows = np.asarray(weights, np.float64), sums.n_tokens, sums.rows
  if name in ("activation", "l0", "resid_norm"):
    return (w @ rows[name]) / np.maximum(w @ n, 1.0)[:, None]
  if name == "mean_active":
    return (w @ rows["activation"]) / np.maximum(w @ rows["l0"], 1.0)
  has = (n > 0).astype(np.float64)
  n_sentences = np.maximum(w @ has, 1.0)[:, None]
  if name == "sentence_activation":
    per_sentence = rows["activation"] / np.maximum(n, 1.0)[:, None]
    return (w @ (per_sentence * has[:, None])) / n_sentences
  if name == "sentence_distinct_features":
    return (w @ (rows["distinct_features"] * has[:, None])) / n_sentences
  raise ValueError(f"unknown metric {name!r}; choose one of {METRICS}")


def check_finite(sums: LanguageSums, lang: str, layers: Sequence[int] | None = None) -> None:
  """NaN/inf statistics mean NaN/inf residuals or SAE codes: an error, never a report of them
  (NaN compares false, so codes would silently count as inactive). `layers` names the sums'
  columns (default 0, 1, ...)."""
  bad = sorted({int(l) for key in ROW_SUMS for l in np.nonzero(~np.isfinite(sums.rows[key]))[1]}
               | {int(l) for l in np.nonzero(~np.isfinite(sums.feature_counts).all(-1))[0]})
  if layers is not None:
    bad = [layers[i] for i in bad]
  if bad:
    raise errors.NonFiniteError(
        f"{lang!r}: the residuals or SAE codes hold NaN/inf at layer(s) {bad[:10]}: the "
        "checkpoint's weights or the SAEs are damaged (or the dtype overflows)")


def language_sums(params, config: ModelConfig, saes, tokenizer, sentences: Sequence[str], *,
                  batch_size: int = 16, bucket: int | None = 64, max_len: int | None = None,
                  hook=None, mesh=None, progress: Progress | None = None,
                  fused: bool = True, layers: tuple[int, ...] | None = None) -> LanguageSums:
  """Stream one language's sentences through `batch_stats`.

  Sentences are sorted by length so batches pad little, each batch is padded with empty rows to
  `batch_size` (one compiled shape per length bucket; `batching.batch_rows` caps it at the
  number of sentences and rounds it to the mesh), and results return to corpus order. The next
  batch is dispatched before the previous one is fetched, so tokenisation and the host copy
  overlap device work. With a `mesh`, the batch axis is split over its `data` axis.
  """
  if not sentences:
    raise ValueError("no sentences to analyse")
  batch_size = batching.batch_rows(batch_size, len(sentences), mesh)
  place = batching.placer(mesh)
  max_len = max_len or config.max_seq_len
  lengths = np.array([len(tokenizer.encode(s)) for s in sentences])
  order = np.argsort(lengths, kind="stable")
  n = len(sentences)
  rows = {k: None for k in ROW_SUMS}
  n_tokens = np.zeros(n, np.float64)
  feature_counts = None
  truncated: list[int] = []

  def dispatch(idx):
    texts = [sentences[i] for i in idx] + [""] * (batch_size - len(idx))
    enc = tokenizer.encode_batch(texts, add_bos=True, max_len=max_len, bucket=bucket)
    truncated.extend(int(idx[r]) for r in enc.truncated if r < len(idx))
    mask = np.asarray(enc.mask).copy()
    mask[len(idx):] = 0  # filler rows contribute nothing
    return batch_stats(params, config, saes, place(np.asarray(enc.tokens)), place(mask), hook,
                       fused=fused, layers=layers)

  def collect(idx, out):
    nonlocal feature_counts
    out = batching.fetch(out)
    k = len(idx)
    for key in ROW_SUMS:
      if rows[key] is None:
        rows[key] = np.zeros((n, out[key].shape[0]), np.float64)
      rows[key][idx] = out[key][:, :k].T
    n_tokens[idx] = out["n_tokens"][:k]
    counts = out["feature_counts"].astype(np.float64)
    feature_counts = counts if feature_counts is None else feature_counts + counts
    if progress is not None:
      progress.update(k)

  batching.pipelined((order[i:i + batch_size] for i in range(0, n, batch_size)), dispatch,
                     collect)
  return LanguageSums(rows=rows, n_tokens=n_tokens, feature_counts=feature_counts,
                      truncated=tuple(sorted(truncated)))


def corpus_stats(params, config: ModelConfig, saes, tokenizer,
                 texts_by_lang: Mapping[str, Sequence[str]], *, batch_size: int = 16,
                 bucket: int | None = 64, max_len: int | None = None, hook=None, mesh=None,
                 show_progress: bool = True, fused: bool = True,
                 layers: Sequence[int] | None = None) -> CorpusStats:
  """Statistics for every language of a corpus (`{lang: sentences}`) at `layers` (default every
  model layer; `saes` stacked over them in that order)."""
  layers = tuple(range(config.n_layers)) if layers is None else tuple(int(l) for l in layers)
  bad = [l for l in layers if not 0 <= l < config.n_layers]
  if bad or not layers or list(layers) != sorted(set(layers)):
    raise ValueError(f"layers {list(layers)}: expected increasing layers of 0..{config.n_layers - 1}")
  per_language = {}
  total = sum(len(v) for v in texts_by_lang.values())
  progress = Progress(total, "analysing", enabled=show_progress)
  for lang, sentences in texts_by_lang.items():
    progress.label = f"analysing [{lang}]"
    per_language[lang] = language_sums(
        params, config, saes, tokenizer, sentences, batch_size=batch_size, bucket=bucket,
        max_len=max_len, hook=hook, mesh=mesh, progress=progress, fused=fused, layers=layers)
    check_finite(per_language[lang], lang, layers)
  return CorpusStats(languages=tuple(texts_by_lang), layers=layers, per_language=per_language)
