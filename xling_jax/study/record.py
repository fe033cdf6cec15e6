"""The study's record (study.json): every number RESULTS.md shows, read from the stages' result
files (`stages.Stage.read`), with where each part came from. `page` renders it.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from xling_jax.study import stages as stages_lib
from xling_jax.study.stages import Stage


def collect(stages: Sequence[Stage], settings: Mapping, timings: Mapping, command: str,
            machine: str | None = None) -> dict:
  """One record from the finished `stages`: only what RESULTS.md shows, plus where each part
  came from (`machine`: the host it ran on, `platform.describe_host`)."""
  def of(kind: str) -> list[Stage]:
    return [s for s in stages if s.kind == kind]

  intrinsic = of(stages_lib.INTRINSIC)[0].read()["record"]
  stats = of(stages_lib.ANALYSIS)[0].read()["stats"]
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
      "saes": _saes(of(stages_lib.SAES), settings),
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
      },
      "lora": {},
      "benchmarks": None,
  }
  for stage in of(stages_lib.LORA):
    rep, target = stage.read()["report"], stage.target
    ref = rep["ref_lang"]
    record["lora"][target] = {
        "layers": rep["layers"], "objective_layers": rep["objective_layers"],
        "gain_pct": rep["gain_pct"][target], "retention_pct": rep["retention_pct"][ref],
        "ref_gain_pct": rep["gain_pct"][ref], "before": rep["before"], "after": rep["after"],
        "steps": rep["steps"], "train_lines": rep["train_lines"],
        "heldout_lines": rep["heldout_lines"], "final_terms": rep["final_terms"]}
  cards = {}
  for stage in of(stages_lib.CARD):
    files = stage.read()
    run = files["run"]["flags"]
    cards[stage.name] = {"scores": files["scores"], "num_fewshot": run["num_fewshot"],
                         "limit": run["limit"], "subsample": run.get("subsample"),
                         "seconds": timings[stage.name]["seconds"]}
  record["card"] = cards or None
  bench = {s.target: s.read()["scores"] for s in of(stages_lib.BENCH)}
  if bench:
    record["benchmarks"] = {"base": bench.pop(None), "lora": bench}
  return record


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
