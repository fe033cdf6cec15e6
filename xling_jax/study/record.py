"""The study's record (study.json): every number RESULTS.md shows, read from the stages' result
files (`stages.Stage.read`), with where each part came from. `page` renders it.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from xling_jax.evaluation import paired
from xling_jax.study import stages as stages_lib
from xling_jax.study.stages import Stage


def collect(stages: Sequence[Stage], settings: Mapping, timings: Mapping, command: str,
            machine: str | None = None) -> dict:
  """One record from the finished `stages`: only what RESULTS.md shows, plus where each part
  came from (`machine`: the host it ran on, `platform.describe_host`)."""
  def of(kind: str) -> list[Stage]:
    return [s for s in stages if s.kind == kind]

  intrinsic = of(stages_lib.INTRINSIC)[0].read()["record"]
  analyses = [s.read()["stats"] for s in sorted(of(stages_lib.ANALYSIS), key=lambda s: s.seed)]
  stats = analyses[0]
  ref = stats["reference_language"]
  record = {
      "command": command,
      "settings": dict(settings),
      "stages": {s.name: timings.get(s.name) for s in stages},
      "seconds": round(sum((timings.get(s.name) or {}).get("seconds", 0.0) for s in stages
                           if s.kind != stages_lib.CARD), 1),
      "model": stats["provenance"].get("model"),
      "checkpoint": settings.get("checkpoint"),
      "toy": bool(stats["provenance"].get("toy")),
      "devices": stats["provenance"].get("devices"),
      "machine": machine,
      "n_layers": stats["provenance"]["config"]["n_layers"],
      "intrinsic": {"tokenization": intrinsic["tokenization"], "bits": intrinsic["bits"],
                    "tokenization_sentences": intrinsic["tokenization_sentences"],
                    "bits_sentences": intrinsic["bits_sentences"], "corpus": intrinsic["corpus"]},
      "saes": _saes([s for s in of(stages_lib.SAES) if s.seed == 0], settings),
      "analysis": {
          "corpus": stats["config"].get("corpus"), "languages": stats["languages"],
          "reference": ref, "layers": stats["layers"],
          "activation": stats["metrics"]["activation"], "l0": stats["metrics"]["l0"],
          "gap": stats["gap_vs_en" if ref == "en" else f"gap_vs_{ref}"],
          "gap_ci": (stats.get("bootstrap") or {}).get("gap"),
          "band_summary": stats["band_summary"],
          "band_ci": (stats.get("bootstrap") or {}).get("band_group"),
          "bootstrap": None if not stats.get("bootstrap") else {
              k: stats["bootstrap"][k] for k in ("n_resamples", "level")},
          "low_resource_group": stats["low_resource_group"],
          "n_sentences": stats["n_sentences"], "n_tokens": stats["n_tokens"],
          "top_overlap": {lang: [row["overlap_with_ref"] for row in rows]
                          for lang, rows in (stats.get("top_features") or {}).items()},
          "top_k": _top_k(stats.get("top_features") or {}),
          "top_overlap_null": stats.get("top_features_null"),
          "gap_by_metric": stats.get("gap_by_metric"),
          "controls": stats.get("controls"),
          "sae_quality": stats.get("sae_quality"),
      },
      "seeds": _seeds(analyses),
      "lora": {},
      "controls": {},
      "benchmarks": None,
  }
  for stage in of(stages_lib.LORA):
    adapter = _adapter(stage.read()["report"], stage.target)
    if stage.control is None:
      record["lora"][stage.target] = adapter
    else:
      record["controls"].setdefault(stage.target, {})[stage.control] = adapter
  cards = {}
  for stage in of(stages_lib.CARD):
    files = stage.read()
    run = files["run"]["flags"]
    cards[stage.name] = {"scores": files["scores"], "num_fewshot": run["num_fewshot"],
                         "limit": run["limit"], "subsample": run.get("subsample"),
                         "seconds": timings[stage.name]["seconds"]}
  record["card"] = cards or None
  if of(stages_lib.BENCH):
    record["benchmarks"] = _benchmarks(of(stages_lib.BENCH), stats["reference_language"])
  return record


def _adapter(rep: Mapping, target: str) -> dict:
  """One adapter's report as the page reads it: the gain on held-out lines, the gap closure and
  the per-language measurements (bits_per_char, resid_norm, code_mass before and after)."""
  ref = rep["ref_lang"]
  return {
      "layers": rep["layers"], "objective_layers": rep["objective_layers"],
      "objective": rep.get("objective"),
      "gain_pct": rep["gain_pct"][target], "retention_pct": rep["retention_pct"][ref],
      "ref_gain_pct": rep["gain_pct"][ref], "before": rep["before"], "after": rep["after"],
      "gap_closure_pct": rep.get("gap_closure_pct"), "measured": rep.get("measured"),
      **{name: rep.get(name) for name in ("bits_per_char", "resid_norm", "code_mass")},
      "steps": rep["steps"], "train_lines": rep["train_lines"],
      "heldout_lines": rep["heldout_lines"], "final_terms": rep["final_terms"]}


SEED_METRICS = ("activation", "direction_activation", "sentence_mass")


def _nan_to_none(values: np.ndarray) -> list:
  return [None if np.isnan(v) else float(v) for v in values]


def _seeds(analyses: Sequence[Mapping]) -> dict:
  """The analysis repeated with each retraining of the SAEs: per metric, language and layer the
  gap's mean, min, max and standard deviation over seeds; the interval spanning every seed's
  bootstrap interval (sentence sampling and SAE retraining together, conservatively); how many
  seeds put a cell beyond its norm control; the band group means and maxima per seed, with each
  seed's bootstrap interval of the group mean; the FVU range per language and layer."""
  def spread(values):  # [seeds, L] -> statistics per layer
    a = np.asarray([[np.nan if v is None else v for v in row] for row in values], np.float64)
    return {"mean": np.nanmean(a, 0).tolist(), "min": np.nanmin(a, 0).tolist(),
            "max": np.nanmax(a, 0).tolist(),
            "sd": (np.nanstd(a, 0, ddof=1) if len(a) > 1 else np.zeros(a.shape[1])).tolist()}

  first = analyses[0]
  langs = [l for l in first["languages"] if l != first["reference_language"]]
  metrics = [m for m in SEED_METRICS if m in (first.get("gap_by_metric") or {})]
  out = {"n": len(analyses),
         "gap": {m: {lang: spread([a["gap_by_metric"][m][lang] for a in analyses])
                     for lang in langs} for m in metrics},
         "band_group": {band: {
             **{key: [a["band_summary"][band][key] for a in analyses]
                for key in ("group_mean", "group_max")},
             "group_mean_ci": [(((a.get("bootstrap") or {}).get("band_group") or {})
                                .get(band) or {}).get("group_mean") for a in analyses]}
             for band in first["band_summary"]}}
  boots = [((a.get("bootstrap") or {}).get("gap") or {}) for a in analyses]
  if all(boots):
    bound = lambda lang, side: np.asarray([[np.nan if v is None else v for v in b[lang][side]]
                                           for b in boots], np.float64)  # [seeds, L]
    out["interval"] = {lang: {"lo": _nan_to_none(np.nanmin(bound(lang, "lo"), 0)),
                              "hi": _nan_to_none(np.nanmax(bound(lang, "hi"), 0))}
                       for lang in langs}
  verdicts = [((a.get("controls") or {}).get("verdict") or {}) for a in analyses]
  if all(verdicts):
    out["exceeds_norm"] = {lang: np.sum([[v == "exceeds_norm" for v in vs[lang]]
                                         for vs in verdicts], 0).tolist() for lang in langs}
    out["below_norm"] = {lang: np.sum([[v == "below_norm" for v in vs[lang]]
                                       for vs in verdicts], 0).tolist() for lang in langs}
  quality = [a.get("sae_quality") for a in analyses]
  if all(quality):
    out["fvu"] = {lang: {k: v for k, v in spread([q["fvu"][lang] for q in quality]).items()
                         if k in ("min", "max", "mean")} for lang in first["languages"]}
  return out


def _benchmarks(stages: Sequence[Stage], ref: str) -> dict:
  """Scores per stage, and paired comparisons on the same items: each adapter against the base
  model in its target and the reference language, and each language against the reference on
  the base model (`evaluation.paired.compare`, headline metric acc_norm); which adapter each
  bench stage scored (`adapters`: {stage: {target, control}})."""
  files = {s.name: (s, s.read()) for s in stages}
  base_stage = next(s for s in stages if s.target is None)
  base = files[base_stage.name][1]
  by_lang = lambda items, lang: [r for r in items if r["lang"] == lang]
  out = {"base": base["scores"], "lora": {}, "paired": {}, "languages": {}, "adapters": {}}
  langs = sorted({r["lang"] for r in base["items"]})
  for lang in langs:
    if lang != ref:
      out["languages"][lang] = paired.compare(by_lang(base["items"], ref),
                                              by_lang(base["items"], lang))
  for name, (stage, read) in files.items():
    if stage.target is None:
      continue
    out["lora"][name] = read["scores"]
    out["adapters"][name] = {"target": stage.target, "control": stage.control}
    out["paired"][name] = {lang: paired.compare(by_lang(base["items"], lang),
                                                by_lang(read["items"], lang))
                           for lang in (stage.target, ref)}
  return out


def _top_k(top: Mapping) -> int:
  """How many top features per layer the analysis listed (0 without them)."""
  rows = next(iter(top.values()), [])
  return len(rows[0]["features"]) if rows else 0


def _saes(trained: Sequence[Stage], settings: Mapping) -> dict:
  """The trained SAEs' final reports per layer; none when the study brought its SAEs."""
  if not trained:
    return {"brought": settings["sae_dir"], "layers": {}}
  reports = trained[0].read()
  per_layer = {layer: {"width": rep["width"], "steps": rep["steps"], "tokens": rep["tokens"],
                       "target_l0": rep["target_l0"],
                       **{k: rep["final"][k] for k in ("fvu", "l0", "dead_fraction",
                                                       "dense_fraction")}}
               for layer, rep in reports.items()}
  data = next(reversed(reports.values()))["data"] if reports else {}
  return {"brought": None, "layers": per_layer, "corpus": data.get("name"),
          "sentences": data.get("sentences"), "corpus_tokens": data.get("tokens"),
          "epochs": data.get("epochs")}
