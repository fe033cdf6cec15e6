"""Disparity versus a reference language: per-layer gaps, layer bands, bootstrap CIs, top features.

Definitions (the paper does not publish its formulas; these are ours):
  gap(l, L) % = 100 * (A[l, ref] - A[l, L]) / A[l, ref]   (positive = L activates less than ref)
  band summary: per language, the mean and the max of the gap over the band's layers; for the
  low-resource group, the max and the mean of those per-language numbers.
  excess over the norm (l, L) = gap(l, L) of the activation - gap(l, L) of resid_norm: how much
  more (or less) the SAE codes differ than the plain residual norm does. Its verdict per cell:
  "exceeds_norm" when its bootstrap interval lies above 0, "below_norm" below 0, otherwise
  "norm_explained" (the SAE gap is what the norm alone predicts).
Confidence intervals come from a paired bootstrap over sentences: a parallel corpus has the same
sentence i in every language, so one resample of sentence indices serves all languages. They
hold the model and the SAEs fixed: they say nothing about SAE retraining.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from sae.releases import NeuronpediaSet
from xling_jax.analysis.corpus_stats import CorpusStats, weighted_metric
from xling_jax.runtime.progress import Progress

_BOOTSTRAP_CHUNK = 100
# The resamples' values are kept until the percentiles are taken ([R, layers] per language and
# metric): 100k resamples of 26 layers and 10 languages take about 1 GB, and a 95% interval has
# long stopped moving.
MAX_RESAMPLES = 100_000


def check_resamples(n: int, name: str) -> None:
  """ValueError naming `name` when `n` bootstrap resamples are more than MAX_RESAMPLES."""
  if n > MAX_RESAMPLES:
    raise ValueError(f"{name}={n}: at most {MAX_RESAMPLES} resamples (their values are kept in "
                     "memory until the intervals are taken; 1000-10000 settle a 95% interval)")


def default_bands(n_layers: int) -> dict[str, tuple[int, int]]:
  """Inclusive layer ranges: three near-equal contiguous thirds of the model's depth, the first
  ones a layer longer where the depth does not divide (Gemma-2-2B's 26 layers give the paper's
  early 0-8, middle 9-17, deep 18-25)."""
  if n_layers < 3:
    return {"all": (0, n_layers - 1)}
  cuts = np.array_split(np.arange(n_layers), 3)
  return {name: (int(c[0]), int(c[-1])) for name, c in zip(("early", "middle", "deep"), cuts)}


def parse_bands(spec: str) -> dict[str, tuple[int, int]]:
  """'early:0-8,middle:9-17,deep:18-25' -> {'early': (0, 8), ...}."""
  bands = {}
  for part in spec.split(","):
    try:
      name, rng = part.split(":")
      lo, hi = (int(v) for v in rng.split("-"))
    except ValueError:
      raise ValueError(f"bad band {part!r}: expected NAME:FIRST-LAST, e.g. early:0-8") from None
    if lo > hi:
      raise ValueError(f"band {name}: first layer {lo} > last layer {hi}")
    bands[name] = (lo, hi)
  return bands


def gap_pct(values: Mapping[str, np.ndarray], ref: str) -> dict[str, np.ndarray]:
  """Per-layer gap (%) of every language against `ref`; values are {lang: [L]}."""
  base = np.asarray(values[ref], np.float64)
  safe = np.where(base == 0, np.nan, base)
  return {lang: 100.0 * (base - np.asarray(v, np.float64)) / safe for lang, v in values.items()}


def band_columns(layers: Sequence[int], bands: Mapping[str, tuple[int, int]]
                 ) -> dict[str, np.ndarray]:
  """{band: indices into `layers` (the analysed layers, in order) that lie in the band}; bands
  holding none of them are left out."""
  layers = np.asarray(layers)
  cols = {band: np.flatnonzero((layers >= lo) & (layers <= hi)) for band, (lo, hi) in bands.items()}
  return {band: c for band, c in cols.items() if c.size}


def band_summary(gaps: Mapping[str, np.ndarray], bands: Mapping[str, tuple[int, int]],
                 group: Sequence[str], layers: Sequence[int] | None = None) -> dict[str, dict]:
  """{band: {"layers", "analysed_layers", "per_language": {lang: {"mean", "max"}}, "group_max",
  "group_mean"}}: mean and max over the band's analysed layers. `layers` names the gaps'
  columns (default 0, 1, ...); a band without an analysed layer is left out."""
  if layers is None:
    layers = range(len(next(iter(gaps.values()))))
  layers = list(layers)
  out = {}
  for band, cols in band_columns(layers, bands).items():
    lo, hi = bands[band]
    per_lang = {lang: {"mean": float(np.mean(g[cols])), "max": float(np.max(g[cols]))}
                for lang, g in gaps.items()}
    members = [lang for lang in group if lang in per_lang]
    out[band] = {
        "layers": [lo, hi],
        "analysed_layers": [layers[i] for i in cols],
        "per_language": per_lang,
        "group_max": max((per_lang[lang]["max"] for lang in members), default=float("nan")),
        "group_mean": (float(np.mean([per_lang[lang]["mean"] for lang in members]))
                       if members else float("nan")),
    }
  return out


@dataclasses.dataclass(frozen=True)
class BootstrapCI:
  """2.5/97.5 percentiles (or `level`) of each quantity, from `n_resamples` resamples.
  `gap_by_metric`: the gaps of the control metrics; `excess_over_norm`: of the activation gap
  minus the resid_norm gap (both only when those metrics were resampled)."""
  metric: dict[str, dict[str, list[float]]]  # lang -> {"lo": [L], "hi": [L]}
  gap: dict[str, dict[str, list[float]]]
  band_group: dict[str, dict[str, list[float]]]  # band -> {"group_max": [lo, hi], "group_mean": [...]}
  n_resamples: int
  level: float
  gap_by_metric: dict[str, dict[str, dict[str, list[float]]]] = dataclasses.field(
      default_factory=dict)
  excess_over_norm: dict[str, dict[str, list[float]]] = dataclasses.field(default_factory=dict)


def bootstrap(stats: CorpusStats, *, metric: str = "activation", ref: str = "en",
              bands: Mapping[str, tuple[int, int]], group: Sequence[str],
              n_resamples: int = 1000, level: float = 0.95, seed: int = 0,
              controls: Sequence[str] = (), show_progress: bool = False) -> BootstrapCI:
  """Paired bootstrap over sentences for the metric, the gaps and the band summaries; the gaps
  of the `controls` metrics and, with resid_norm among them, the excess over the norm, from the
  same resamples. `show_progress`: resamples per second and an ETA on stderr."""
  n = {stats.n_sentences(lang) for lang in stats.languages}
  if len(n) != 1:
    raise ValueError(f"paired bootstrap needs a parallel corpus; sentence counts differ: {n}")
  n_sent = n.pop()
  rng = np.random.default_rng(seed)
  progress = Progress(n_resamples, "bootstrap", unit="resamples", enabled=show_progress)
  names = (metric, *[m for m in controls if m != metric])
  chunks = {name: {lang: [] for lang in stats.languages} for name in names}
  # Resamples are drawn in chunks so the [chunk, sentences] count matrix stays small.
  for start in range(0, n_resamples, _BOOTSTRAP_CHUNK):
    size = min(_BOOTSTRAP_CHUNK, n_resamples - start)
    counts = rng.multinomial(n_sent, np.full(n_sent, 1.0 / n_sent), size=size).astype(np.float64)
    for name in names:
      for lang in stats.languages:
        chunks[name][lang].append(weighted_metric(stats.per_language[lang], name, counts))
    progress.update(size)
  gaps_of = {name: gap_pct({lang: np.concatenate(parts) for lang, parts in by_lang.items()}, ref)
             for name, by_lang in chunks.items()}  # each [R, L]
  values = {lang: np.concatenate(parts) for lang, parts in chunks[metric].items()}
  gaps = gaps_of[metric]
  q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]

  def interval(a):
    lo, hi = np.nanpercentile(a, q, axis=0)
    return {"lo": np.atleast_1d(lo).tolist(), "hi": np.atleast_1d(hi).tolist()}

  band_group = {}
  members = [lang for lang in group if lang in gaps]
  for band, cols in band_columns(stats.layers, bands).items():
    if not members:
      continue
    per_lang_max = np.stack([gaps[lang][:, cols].max(1) for lang in members])  # [G, R]
    per_lang_mean = np.stack([gaps[lang][:, cols].mean(1) for lang in members])
    band_group[band] = {
        "group_max": np.nanpercentile(per_lang_max.max(0), q).tolist(),
        "group_mean": np.nanpercentile(per_lang_mean.mean(0), q).tolist(),
    }
  others = [lang for lang in stats.languages if lang != ref]
  excess = ({lang: interval(gaps[lang] - gaps_of["resid_norm"][lang]) for lang in others}
            if "resid_norm" in gaps_of and metric != "resid_norm" else {})
  return BootstrapCI(
      metric={lang: interval(v) for lang, v in values.items()},
      gap={lang: interval(g) for lang, g in gaps.items() if lang != ref},
      band_group=band_group, n_resamples=n_resamples, level=level,
      gap_by_metric={name: {lang: interval(gaps_of[name][lang]) for lang in others}
                     for name in names if name != metric},
      excess_over_norm=excess)


def norm_control(gap_by_metric: Mapping[str, Mapping[str, np.ndarray]],
                 ci: BootstrapCI | None) -> dict:
  """{"excess": {lang: [L]}, "excess_ci": {lang: {"lo", "hi"}} | None, "verdict": {lang: [L]}
  | None}: the activation gap minus the resid_norm gap per cell, and (with a bootstrap) whether
  it survives the norm control (see the module docstring)."""
  act, norm = gap_by_metric["activation"], gap_by_metric["resid_norm"]
  excess = {lang: np.asarray(act[lang]) - np.asarray(norm[lang]) for lang in act}
  if ci is None or not ci.excess_over_norm:
    return {"excess": excess, "excess_ci": None, "verdict": None}

  def verdict(lo, hi):
    return "exceeds_norm" if lo > 0 else "below_norm" if hi < 0 else "norm_explained"

  return {"excess": excess, "excess_ci": ci.excess_over_norm,
          "verdict": {lang: [verdict(lo, hi) for lo, hi in zip(c["lo"], c["hi"])]
                      for lang, c in ci.excess_over_norm.items()}}


def firing_rates(stats: CorpusStats, lang: str) -> np.ndarray:
  """[n_layers analysed, W] fraction of statistic tokens on which each feature fires."""
  s = stats.per_language[lang]
  return s.feature_counts / max(float(s.n_tokens.sum()), 1.0)


def top_overlap_null(stats: CorpusStats, k: int) -> list[float] | None:
  """Per layer, the top-k overlap of the reference language's two halves of sentences: what
  the overlap of two samples of one language is, against which a language's overlap with the
  reference reads (None without the halves)."""
  if stats.half_counts is None:
    return None
  a, b = (np.argsort(-c, axis=1, kind="stable")[:, :k] for c in stats.half_counts)
  return [len(set(x.tolist()) & set(y.tolist())) / k for x, y in zip(a, b)]


def top_features(stats: CorpusStats, *, k: int = 20, ref: str = "en",
                 neuronpedia: NeuronpediaSet | None = None) -> dict[str, list[dict]]:
  """Per language and layer: the k most frequently firing features, and the overlap of that set
  with the reference language's (|A & B| / k). `neuronpedia` names the SAE set for links, e.g.
  NeuronpediaSet('gemma-2-2b', 'gemmascope-res-16k') gives ids
  'gemma-2-2b/{layer}-gemmascope-res-16k/{idx}'."""
  rates = {lang: firing_rates(stats, lang) for lang in stats.languages}
  top = {lang: np.argsort(-r, axis=1, kind="stable")[:, :k] for lang, r in rates.items()}
  out = {}
  for lang in stats.languages:
    rows = []
    for col, layer in enumerate(stats.layers):
      idx = top[lang][col]
      entry = {
          "layer": layer,
          "features": idx.tolist(),
          "rates": rates[lang][col, idx].tolist(),
          "overlap_with_ref": (len(set(idx.tolist()) & set(top[ref][col].tolist())) / k
                               if ref in top else None),
      }
      if neuronpedia:
        entry["neuronpedia"] = [neuronpedia.feature(layer, i) for i in idx.tolist()]
      rows.append(entry)
    out[lang] = rows
  return out
