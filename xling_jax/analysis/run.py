"""The disparity analysis as one call: a model, SAEs and a parallel corpus in; the record
(stats.json) with its report, table and figures out. `bin.analyze` is this call with flags; a
notebook makes it directly:

    import xling_jax as xj
    model = xj.load_model()                         # the toy; or "gemma3-270m", an HF dir, ...
    corpus = xj.load_corpus("embedded", ["en", "hi", "ml"])
    saes = xj.load_saes(model)                      # random toy SAEs; or a directory, "random"
    result = xj.analyze(model, saes, corpus)
    result.gaps["hi"]                               # [layers] % below English
    result.write("out")                             # stats.json, disparity.csv, report.md, PNGs

The statistics, gaps, bands, bootstrap and top features are the functions of `activations`
and `disparity`; this module only orders them, checks the settings before any compute and
names what it ran with.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from sae import random_saes, releases
from xling_jax.analysis import disparity
from xling_jax.data.languages import LOW_RESOURCE
from xling_jax.runtime import validate


@dataclasses.dataclass(frozen=True)
class AnalysisConfig:
  """How to analyse. `layers`: those the SAEs cover (default every layer of the model);
  `bands`: {name: (first, last)} inclusive (default `disparity.default_bands`); `low_resource`:
  the group whose band max/mean the summary reports (those of the corpus's languages in it);
  `bootstrap`: paired resamples over sentences for the intervals (0: none); `batch_size`
  sentences per batch (capped at the corpus size), padded to a multiple of `bucket` tokens and
  cut at `max_len`; `neuronpedia`: the Neuronpedia set for feature links, overriding the one
  the SAEs carry (`SAESetup.neuronpedia`): a set id some release in `sae.releases` lists
  (e.g. 'gemmascope-res-16k') or 'model/set_id'; `quality_sentences`: the first N sentences per
  language on which each SAE's reconstruction (FVU) and the LM loss with it spliced in are
  measured (0: all; None: up to DEFAULT_QUALITY_SENTENCES; `sae_quality`), the LM loss only
  with `quality_lm_loss` (it runs the model and its vocabulary once more per layer)."""
  ref_lang: str = "en"
  layers: tuple[int, ...] | None = None
  bands: Mapping[str, tuple[int, int]] | None = None
  low_resource: tuple[str, ...] = LOW_RESOURCE
  bootstrap: int = 1000
  top_k: int = 20
  batch_size: int = 16
  bucket: int | None = 64
  max_len: int | None = None
  seed: int = 0
  neuronpedia: str | None = None
  quality_sentences: int | None = None
  quality_lm_loss: bool = True

  def __post_init__(self):
    validate.fields(self, minimum={"bootstrap": 0, "top_k": 1, "batch_size": 1, "bucket": 1,
                                   "max_len": 2, "quality_sentences": 0})
    disparity.check_resamples(self.bootstrap, "AnalysisConfig.bootstrap")


# The quality pass runs the model once per analysed layer more: 100 sentences per language
# keep it to a few minutes for the 270M on a 2-core CPU.
DEFAULT_QUALITY_SENTENCES = 100
# The controls every gap is reported beside (their gaps are also bootstrapped).
CONTROLS = ("resid_norm", "direction_activation", "sentence_mass")


@dataclasses.dataclass(frozen=True)
class Plan:
  """What `check` resolved: the analysed layers, the bands, the low-resource group and the
  Neuronpedia set `config.neuronpedia` names (a `sae.releases.NeuronpediaSet`, or None) and the
  sentences per language of the quality pass (0: all)."""
  layers: tuple[int, ...]
  bands: dict[str, tuple[int, int]]
  group: tuple[str, ...]
  neuronpedia: releases.NeuronpediaSet | None = None
  quality_sentences: int = 0


def check(config: AnalysisConfig, n_layers: int, languages,
          n_sentences: int | None = None) -> Plan:
  """Resolve and check the settings against the model's depth and the corpus's languages (and
  its sentences per language, when given); ValueError names the first setting that cannot work.
  Costs nothing: call it before loading SAEs or computing anything."""
  from xling_jax.data.languages import validate_languages
  languages = tuple(languages)
  if config.ref_lang not in languages:
    raise ValueError(f"ref_lang={config.ref_lang} must be one of the corpus's languages "
                     f"({','.join(languages)})")
  low_resource = validate_languages(config.low_resource)
  layers = (tuple(range(n_layers)) if config.layers is None
            else tuple(sorted({int(l) for l in config.layers})))
  bad = [l for l in layers if not 0 <= l < n_layers]
  if not layers or bad:
    raise ValueError(f"layers={list(config.layers)}: layers must lie in 0..{n_layers - 1}")
  bands = dict(config.bands or disparity.default_bands(n_layers))
  if max(hi for _, hi in bands.values()) >= n_layers:
    raise ValueError(f"bands {bands} reach past the model's last layer ({n_layers - 1})")
  if not disparity.band_columns(layers, bands):
    raise ValueError(f"layers={list(layers)}: none of them lies in a band of {bands}")
  quality = config.quality_sentences  # its bounds are AnalysisConfig's own check
  if quality is None:
    quality = (DEFAULT_QUALITY_SENTENCES if n_sentences is None
               else min(DEFAULT_QUALITY_SENTENCES, n_sentences))
  elif n_sentences is not None and quality > n_sentences:
    raise ValueError(f"quality_sentences={quality}: the corpus has {n_sentences} sentences per "
                     "language (0 = all of them)")
  group = tuple(l for l in low_resource if l in languages and l != config.ref_lang)
  neuronpedia = (None if config.neuronpedia is None
                 else releases.neuronpedia_set(config.neuronpedia))
  return Plan(layers, bands, group, neuronpedia, quality)


@dataclasses.dataclass(frozen=True)
class Analysis:
  """One analysis: `record` is stats.json (every number, the settings and the provenance),
  `stats` the per-sentence sums it came from (`corpus_stats.CorpusStats`, for further metrics
  or bootstraps). In a notebook the object shows as its summary table."""
  record: dict
  stats: Any
  corpus_name: str
  toy: bool
  notes: tuple[str, ...] = ()

  @property
  def ref_lang(self) -> str:
    return self.record["reference_language"]

  @property
  def gaps(self) -> dict[str, np.ndarray]:
    """{language: [analysed layers] gap (%) below the reference}; NaN where it is undefined."""
    gaps = self.record[f"gap_vs_{self.ref_lang}"]
    return {lang: np.array([np.nan if v is None else v for v in values], np.float64)
            for lang, values in gaps.items()}

  @property
  def band_summary(self) -> dict:
    return self.record["band_summary"]

  def warnings(self) -> list[str]:
    from xling_jax.analysis import report
    return report.warnings(self.record)

  def markdown(self) -> str:
    """report.md: the summary table, bands and notes."""
    from xling_jax.analysis import report
    title = report.titles(self.record, self.corpus_name, self.toy)["gap"]
    return report.summary_markdown(self.record, title, list(self.notes))

  def write(self, out_dir: str | Path) -> dict[str, Path]:
    """stats.json, disparity.csv, report.md, heatmap.png and layers.png under `out_dir`, each
    rendered before any is written and written atomically (a failure leaves earlier results)."""
    from xling_jax.analysis import report
    from xling_jax.runtime import io
    out_dir = io.check_output_dir(out_dir, "out_dir")
    paths, _ = report.write_report(out_dir, self.record, corpus=self.corpus_name, toy=self.toy,
                                   notes=self.notes)
    return paths

  def _repr_markdown_(self) -> str:
    return self.markdown()


def _versions() -> dict:
  import importlib.metadata as md
  out = {}
  for pkg in ("jax", "jaxlib", "flax", "numpy", "xling-jax"):
    try:
      out[pkg] = md.version(pkg)
    except md.PackageNotFoundError:
      out[pkg] = None
  return out


def check_arguments(setup, saes, corpus, config) -> None:
  """`analyze`'s arguments are what it reads (TypeError naming the first that is not)."""
  from xling_jax.data.corpora import ParallelCorpus
  validate.model(setup, "analyze: setup")
  validate.saes(saes, "analyze: saes")
  validate.instance(corpus, ParallelCorpus, "analyze: corpus",
                    f"corpus = xj.load_corpus({corpus!r}, langs)" if isinstance(corpus, str)
                    else "corpus = xj.load_corpus(...)")
  validate.instance(config, AnalysisConfig, "analyze: config",
                    "xj.AnalysisConfig(**settings)" if isinstance(config, Mapping) else "")


def analyze(setup, saes, corpus, config: AnalysisConfig = AnalysisConfig(), *,
            show_progress: bool = True, run_config: Mapping | None = None) -> Analysis:
  """SAE activation statistics of every language of `corpus` (a `corpora.ParallelCorpus`) at
  the layers `saes` cover (a `model_setup.SAESetup`), the gap of each language to
  `config.ref_lang` per layer, band summaries with bootstrap intervals and top features.

  `setup` is a `model_setup.ModelSetup`. `run_config` is what the record stores as the run's
  settings (the tools pass every flag; default this config). Everything is checked before the
  first batch runs (ValueError).
  """
  from xling_jax.analysis import corpus_stats, report, sae_quality
  from xling_jax.runtime import batching, platform
  check_arguments(setup, saes, corpus, config)
  start = time.perf_counter()
  model_config = setup.config
  plan = check(config if config.layers is not None
               else dataclasses.replace(config, layers=saes.layers),
               model_config.n_layers, corpus.languages, corpus.n_sentences)
  if plan.layers != tuple(saes.layers):
    raise ValueError(f"the SAEs cover layers {list(saes.layers)}, the analysis asks for "
                     f"{list(plan.layers)}")
  if saes.params.d_in != model_config.d_model:
    raise ValueError(f"the SAEs read {saes.params.d_in}-wide residuals, the model writes "
                     f"{model_config.d_model}")
  ref = config.ref_lang
  batch_size = batching.batch_rows(config.batch_size, corpus.n_sentences, setup.mesh)
  batching_kw = dict(batch_size=batch_size, bucket=config.bucket, max_len=config.max_len,
                     mesh=setup.mesh, show_progress=show_progress)
  stats = corpus_stats.corpus_stats(
      setup.params, model_config, saes.params, setup.tokenizer, corpus.sentences,
      layers=plan.layers, direction_ref=ref, **batching_kw)
  quality = sae_quality.corpus_quality(
      setup.params, model_config, saes.params, setup.tokenizer, corpus.sentences,
      layers=plan.layers, sentences=plan.quality_sentences, lm_loss=config.quality_lm_loss,
      **batching_kw)
  gap_by_metric = {
      name: disparity.gap_pct({lang: stats.metric(name, lang) for lang in corpus.languages}, ref)
      for name in stats.metric_names}
  gaps = gap_by_metric["activation"]
  summary = disparity.band_summary({l: g for l, g in gaps.items() if l != ref}, plan.bands,
                                   plan.group, plan.layers)
  ci = (disparity.bootstrap(stats, ref=ref, bands=plan.bands, group=plan.group,
                            n_resamples=config.bootstrap, seed=config.seed, controls=CONTROLS,
                            show_progress=show_progress)
        if config.bootstrap > 0 else None)
  others = {name: {l: g for l, g in by_lang.items() if l != ref}
            for name, by_lang in gap_by_metric.items()}
  top = disparity.top_features(stats, k=min(config.top_k, saes.params.d_sae), ref=ref,
                               neuronpedia=plan.neuronpedia or saes.neuronpedia)
  if run_config is None:
    run_config = dict(dataclasses.asdict(config), langs=list(corpus.languages))
  provenance = dict(setup.provenance, saes=saes.description, corpus=corpus.source,
                    devices=platform.describe_devices(), versions=_versions(), toy=setup.is_toy,
                    random_saes=saes.random,
                    seconds=round(time.perf_counter() - start, 2))
  record = report.build_stats_json(stats, gaps=gaps, ref=ref, bands=plan.bands,
                                   band_summary=summary, group=plan.group, ci=ci, top=top,
                                   config=run_config, provenance=provenance,
                                   gap_by_metric=others,
                                   norm_control=disparity.norm_control(others, ci),
                                   sae_quality=quality,
                                   top_null=disparity.top_overlap_null(
                                       stats, min(config.top_k, saes.params.d_sae)))
  return Analysis(record, stats, corpus.name, setup.is_toy, random_saes.notes(setup, saes))
