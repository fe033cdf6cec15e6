"""Corpus statistics on the host: per-sentence sums streamed over a corpus, and every
corpus-level metric as a ratio of those sums.

The host keeps only per-sentence sums ([sentences, layers]) and per-feature counts ([layers, W]):
device memory does not grow with the corpus (see `CorpusStats` and `weighted_metric`).
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Mapping, Sequence

import numpy as np

from xling_jax.analysis.sae_stats import batch_stats, norm_stats
from xling_jax.data.tokenizer import TruncationWarning
from xling_jax.model.config import ModelConfig
from xling_jax.runtime import batching, errors
from xling_jax.runtime.progress import Progress

METRICS = ("activation", "l0", "mean_active", "resid_norm", "sentence_activation",
           "sentence_distinct_features", "sentence_mass", "direction_activation")
# Metrics that exist only when their sums were computed (the direction control).
_NEEDS_ROWS = {"direction_activation": "direction_activation"}


# Batch outputs summed over batches rather than kept per sentence: [n layers, X] each.
POOLED = ("feature_counts", "sum_x")


@dataclasses.dataclass
class LanguageSums:
  """Host-side sums for one language. Row arrays are [n_sentences, L] in corpus order."""
  rows: dict[str, np.ndarray]
  n_tokens: np.ndarray  # [n_sentences]
  feature_counts: np.ndarray  # [L, W] token firing counts
  truncated: tuple[int, ...] = ()
  pooled: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # other POOLED sums


@dataclasses.dataclass
class CorpusStats:
  """Statistics of a parallel corpus, languages x layers. `per_language[lang]` holds the sums."""
  languages: tuple[str, ...]
  layers: tuple[int, ...]
  per_language: dict[str, LanguageSums]
  direction_norms: tuple[float, ...] | None = None  # R_l of the direction control, per layer
  # The reference language's feature counts [L, W] of its first and second half of sentences
  # (the null of the top-k overlap: two disjoint samples of one language).
  half_counts: tuple[np.ndarray, np.ndarray] | None = None

  @property
  def metric_names(self) -> tuple[str, ...]:
    """The METRICS these sums give (the direction control only when it was computed)."""
    rows = next(iter(self.per_language.values())).rows
    return tuple(m for m in METRICS if _NEEDS_ROWS.get(m, "activation") in rows)

  def n_tokens(self, lang: str) -> int:
    return int(self.per_language[lang].n_tokens.sum())

  def n_sentences(self, lang: str) -> int:
    return int(self.per_language[lang].n_tokens.shape[0])

  def metric(self, name: str, lang: str) -> np.ndarray:
    """Corpus-level metric [L] of one language (see `weighted_metric`)."""
    s = self.per_language[lang]
    return weighted_metric(s, name, np.ones((1, len(s.n_tokens))))[0]

  def metrics(self, name: str) -> dict[str, list[float]]:
    """{lang: [L]} of one metric."""
    return {lang: self.metric(name, lang).tolist() for lang in self.languages}


def weighted_metric(sums: LanguageSums, name: str, weights: np.ndarray) -> np.ndarray:
  """Metric [R, L] under R weightings of the sentences, `weights` [R, S]: how many times each
  sentence counts (ones: the corpus itself; multinomial counts: a bootstrap resample).

  activation = sum f / tokens; l0 = active count / tokens; mean_active = sum f / active count;
  resid_norm = sum ||x|| / tokens; direction_activation = the code mass of every token rescaled
  to the reference's mean norm R_l / tokens; sentence_activation = mean over sentences of the
  sentence's mean-pooled code mass; sentence_mass = mean over sentences of the sentence's summed
  code mass (content-matched on a parallel corpus: no division by the language's token count);
  sentence_distinct_features = mean over sentences of the number of features that fire in the
  sentence. Sentences without statistic tokens do not count in the sentence means.
  """
  w, n, rows = np.asarray(weights, np.float64), sums.n_tokens, sums.rows
  if name in ("activation", "l0", "resid_norm", "direction_activation"):
    if name not in rows:
      raise ValueError(f"metric {name!r} was not computed in this pass")
    return (w @ rows[name]) / np.maximum(w @ n, 1.0)[:, None]
  if name == "mean_active":
    return (w @ rows["activation"]) / np.maximum(w @ rows["l0"], 1.0)
  has = (n > 0).astype(np.float64)
  n_sentences = np.maximum(w @ has, 1.0)[:, None]
  if name == "sentence_activation":
    per_sentence = rows["activation"] / np.maximum(n, 1.0)[:, None]
    return (w @ (per_sentence * has[:, None])) / n_sentences
  if name == "sentence_mass":
    return (w @ (rows["activation"] * has[:, None])) / n_sentences
  if name == "sentence_distinct_features":
    return (w @ (rows["distinct_features"] * has[:, None])) / n_sentences
  raise ValueError(f"unknown metric {name!r}; choose one of {METRICS}")


def check_finite(sums: LanguageSums, lang: str, layers: Sequence[int] | None = None) -> None:
  """NaN/inf statistics mean NaN/inf residuals or SAE codes: an error, never a report of them
  (NaN compares false, so codes would silently count as inactive). `layers` names the sums'
  columns (default 0, 1, ...)."""
  bad = sorted({int(l) for row in sums.rows.values() for l in np.nonzero(~np.isfinite(row))[1]}
               | {int(l) for l in np.nonzero(~np.isfinite(sums.feature_counts).all(-1))[0]})
  if layers is not None:
    bad = [layers[i] for i in bad]
  if bad:
    raise errors.NonFiniteError(
        f"{lang!r}: the residuals or SAE codes hold NaN/inf at layer(s) {bad[:10]}: the "
        "checkpoint's weights or the SAEs are damaged (or the dtype overflows)")


def stream_sentences(config: ModelConfig, tokenizer, sentences: Sequence[str], step, *,
                     batch_size: int = 16, bucket: int | None = 64, max_len: int | None = None,
                     mesh=None, progress: Progress | None = None) -> LanguageSums:
  """Stream one language's sentences through `step(tokens, mask)`, a jitted batch statistic
  returning row sums [n, B] per key, n_tokens [B], and `POOLED` sums [n, X] that add up over
  batches (feature_counts [n, W]; sum_x [n, D]).

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
  rows: dict[str, np.ndarray] = {}
  n_tokens = np.zeros(n, np.float64)
  pooled: dict[str, np.ndarray] = {}
  truncated: list[int] = []

  def dispatch(idx):
    texts = [sentences[i] for i in idx] + [""] * (batch_size - len(idx))
    with warnings.catch_warnings():  # cut rows are reported by corpus line below, not batch row
      warnings.simplefilter("ignore", TruncationWarning)
      enc = tokenizer.encode_batch(texts, add_bos=True, max_len=max_len, bucket=bucket)
    truncated.extend(int(idx[r]) for r in enc.truncated if r < len(idx))
    mask = np.asarray(enc.mask).copy()
    mask[len(idx):] = 0  # filler rows contribute nothing
    return step(place(np.asarray(enc.tokens)), place(mask))

  def collect(idx, out):
    out = batching.fetch(out)
    k = len(idx)
    for key, value in out.items():
      if key in POOLED:
        pooled[key] = pooled.get(key, 0.0) + np.asarray(value, np.float64)
      elif key != "n_tokens":
        if key not in rows:
          rows[key] = np.zeros((n, value.shape[0]), np.float64)
        rows[key][idx] = value[:, :k].T
    n_tokens[idx] = out["n_tokens"][:k]
    if progress is not None:
      progress.update(k)

  batching.pipelined((order[i:i + batch_size] for i in range(0, n, batch_size)), dispatch,
                     collect)
  return LanguageSums(rows=rows, n_tokens=n_tokens, feature_counts=pooled.pop("feature_counts", None),
                      truncated=tuple(sorted(truncated)), pooled=pooled)


def language_sums(params, config: ModelConfig, saes, tokenizer, sentences: Sequence[str], *,
                  batch_size: int = 16, bucket: int | None = 64, max_len: int | None = None,
                  hook=None, mesh=None, progress: Progress | None = None,
                  fused: bool = True, layers: tuple[int, ...] | None = None,
                  direction_norms: np.ndarray | None = None) -> LanguageSums:
  """One language's sums from `batch_stats` (see `stream_sentences` for the batching);
  `direction_norms` [n layers] adds the direction-only control."""
  norms = None if direction_norms is None else np.asarray(direction_norms, np.float32)
  step = lambda tokens, mask: batch_stats(params, config, saes, tokens, mask, hook, fused=fused,
                                          layers=layers, direction_norms=norms)
  return stream_sentences(config, tokenizer, sentences, step, batch_size=batch_size,
                          bucket=bucket, max_len=max_len, mesh=mesh, progress=progress)


def joined(first: LanguageSums, second: LanguageSums) -> LanguageSums:
  """The sums of two consecutive runs of one language's sentences as one."""
  offset = len(first.n_tokens)
  return LanguageSums(
      rows={k: np.concatenate([first.rows[k], second.rows[k]]) for k in first.rows},
      n_tokens=np.concatenate([first.n_tokens, second.n_tokens]),
      feature_counts=first.feature_counts + second.feature_counts,
      truncated=first.truncated + tuple(i + offset for i in second.truncated),
      pooled={k: first.pooled[k] + second.pooled[k] for k in first.pooled})


def reference_norms(params, config: ModelConfig, tokenizer, sentences: Sequence[str], *,
                    layers: tuple[int, ...], batch_size: int = 16, bucket: int | None = 64,
                    max_len: int | None = None, hook=None, mesh=None,
                    progress: Progress | None = None) -> np.ndarray:
  """R_l [n layers]: the mean residual norm per statistic token of `sentences` (the reference
  language's `resid_norm`), from a pass without SAEs."""
  step = lambda tokens, mask: norm_stats(params, config, tokens, mask, hook, layers=layers)
  sums = stream_sentences(config, tokenizer, sentences, step, batch_size=batch_size,
                          bucket=bucket, max_len=max_len, mesh=mesh, progress=progress)
  return sums.rows["resid_norm"].sum(0) / max(float(sums.n_tokens.sum()), 1.0)


def corpus_stats(params, config: ModelConfig, saes, tokenizer,
                 texts_by_lang: Mapping[str, Sequence[str]], *, batch_size: int = 16,
                 bucket: int | None = 64, max_len: int | None = None, hook=None, mesh=None,
                 show_progress: bool = True, fused: bool = True,
                 layers: Sequence[int] | None = None,
                 direction_ref: str | None = None) -> CorpusStats:
  """Statistics for every language of a corpus (`{lang: sentences}`) at `layers` (default every
  model layer; `saes` stacked over them in that order). `direction_ref` (a language of the
  corpus) adds the direction-only control: its mean residual norms R_l come from a first pass
  without SAEs, then every language's tokens are also encoded at norm R_l; that language's
  sentences also run as two halves whose feature counts are kept apart (`half_counts`)."""
  layers = tuple(range(config.n_layers)) if layers is None else tuple(int(l) for l in layers)
  bad = [l for l in layers if not 0 <= l < config.n_layers]
  if bad or not layers or list(layers) != sorted(set(layers)):
    raise ValueError(f"layers {list(layers)}: expected increasing layers of 0..{config.n_layers - 1}")
  if direction_ref is not None and direction_ref not in texts_by_lang:
    raise ValueError(f"direction_ref={direction_ref} is not one of the corpus's languages")
  per_language = {}
  total = sum(len(v) for v in texts_by_lang.values())
  if direction_ref is not None:
    total += len(texts_by_lang[direction_ref])
  progress = Progress(total, "analysing", enabled=show_progress)
  batching_kw = dict(batch_size=batch_size, bucket=bucket, max_len=max_len, hook=hook, mesh=mesh,
                     progress=progress)
  norms = None
  if direction_ref is not None:
    progress.label = f"reference norms [{direction_ref}]"
    norms = reference_norms(params, config, tokenizer, texts_by_lang[direction_ref],
                            layers=layers, **batching_kw)
  halves = None
  for lang, sentences in texts_by_lang.items():
    progress.label = f"analysing [{lang}]"
    sums = lambda part: language_sums(params, config, saes, tokenizer, part, fused=fused,
                                      layers=layers, direction_norms=norms, **batching_kw)
    if lang == direction_ref and len(sentences) >= 2:
      first, second = sums(sentences[:len(sentences) // 2]), sums(sentences[len(sentences) // 2:])
      halves = (first.feature_counts, second.feature_counts)
      per_language[lang] = joined(first, second)
    else:
      per_language[lang] = sums(sentences)
    check_finite(per_language[lang], lang, layers)
    cut = per_language[lang].truncated
    if cut:
      shown = ", ".join(str(i + 1) for i in cut[:10]) + (", ..." if len(cut) > 10 else "")
      warnings.warn(f"{lang}: {len(cut)} sentence(s) longer than max_len="
                    f"{max_len or config.max_seq_len} tokens were cut to it (corpus lines "
                    f"{shown})", TruncationWarning, stacklevel=2)
  return CorpusStats(languages=tuple(texts_by_lang), layers=layers, per_language=per_language,
                     direction_norms=None if norms is None else tuple(norms.tolist()),
                     half_counts=halves)
