"""The study's record (study.json): every number RESULTS.md shows, read from the stages' own
files under the study's --out, with where each part came from. `study_page` renders it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

CARD_PREFIX = "card_"
# How the Gemma 3 model cards score the pretrained models' English: shots, and the evaluate
# flags that pick the same items (HellaSwag on lm-eval's 1000-item subsample, ARC-c in full).
CARD_PROTOCOL = {"hellaswag": (10, ("--subsample=1000",)), "arc": (25, ())}
# What the card publishes for each checkpoint, in %, under CARD_PROTOCOL.
MODEL_CARD = {"gemma3-270m": {"hellaswag": 40.9, "arc": 29.0}}


def _read(path: Path) -> dict:
  return json.loads(Path(path).read_text(encoding="utf-8"))


def collect(out: Path, settings: Mapping, timings: Mapping, command: str,
            stages: Sequence[str], machine: str | None = None) -> dict:
  """One record from the stage folders under `out`: only what RESULTS.md shows, plus where
  each part came from (`machine`: the host it ran on, `platform.describe_host`)."""
  out = Path(out)
  intrinsic = _read(out / "intrinsic" / "intrinsic.json")
  stats = _read(out / "analysis" / "stats.json")
  layers = stats["layers"]
  record = {
      "command": command,
      "settings": dict(settings),
      "stages": {name: timings.get(name) for name in stages},
      "seconds": round(sum((timings.get(n) or {}).get("seconds", 0.0) for n in stages
                           if not n.startswith(CARD_PREFIX)), 1),
      "model": stats["provenance"].get("model"),
      "checkpoint": settings.get("checkpoint"),
      "toy": bool(stats["provenance"].get("toy")),
      "devices": stats["provenance"].get("devices"),
      "machine": machine,
      "n_layers": stats["provenance"]["config"]["n_layers"],
      "intrinsic": {"tokenization": intrinsic["tokenization"], "bits": intrinsic["bits"],
                    "tokenization_sentences": intrinsic["tokenization_sentences"],
                    "bits_sentences": intrinsic["bits_sentences"], "corpus": intrinsic["corpus"]},
      "saes": _saes(out, settings, layers),
      "analysis": {
          "corpus": stats["config"].get("corpus"), "languages": stats["languages"],
          "reference": stats["reference_language"], "layers": layers,
          "activation": stats["metrics"]["activation"], "l0": stats["metrics"]["l0"],
          "gap": stats["gap_vs_en" if stats["reference_language"] == "en" else
                       f"gap_vs_{stats['reference_language']}"],
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
  for target in settings["targets"]:
    rep = _read(out / f"lora_{target}" / "report.json")
    ref = rep["ref_lang"]
    record["lora"][target] = {
        "layers": rep["layers"], "objective_layers": rep["objective_layers"],
        "gain_pct": rep["gain_pct"][target], "retention_pct": rep["retention_pct"][ref],
        "ref_gain_pct": rep["gain_pct"][ref], "before": rep["before"], "after": rep["after"],
        "steps": rep["steps"], "train_lines": rep["train_lines"],
        "heldout_lines": rep["heldout_lines"], "final_terms": rep["final_terms"]}
  cards = {}
  for name in (n for n in stages if n.startswith(CARD_PREFIX)):
    folder = Path(_command_out(timings[name]["command"]))
    run = _read(folder / "run.json")
    cards[name] = {"scores": _read(folder / "scores.json"),
                   "num_fewshot": run["flags"]["num_fewshot"], "limit": run["flags"]["limit"],
                   "subsample": run["flags"].get("subsample"),
                   "seconds": timings[name]["seconds"]}
  record["card"] = cards or None
  if (out / "bench_base" / "scores.json").exists():
    record["benchmarks"] = {"base": _read(out / "bench_base" / "scores.json"),
                            "lora": {t: _read(out / f"bench_lora_{t}" / "scores.json")
                                     for t in settings["targets"]}}
  return record


def _top_k(top: Mapping) -> int:
  """How many top features per layer the analysis listed (0 without them)."""
  rows = next(iter(top.values()), [])
  return len(rows[0]["features"]) if rows else 0


def _command_out(command: str) -> str:
  """The --out of a recorded stage command."""
  import shlex
  return next(a.split("=", 1)[1] for a in shlex.split(command) if a.startswith("--out="))


def _saes(out: Path, settings: Mapping, layers: Sequence[int]) -> dict:
  if settings.get("sae_dir"):
    return {"brought": settings["sae_dir"], "layers": {}}
  per_layer = {}
  for layer in layers:
    rep = _read(out / "saes" / "reports" / f"layer_{layer}.json")
    per_layer[str(layer)] = {"width": rep["width"], "steps": rep["steps"],
                             "tokens": rep["tokens"], "target_l0": rep["target_l0"],
                             **{k: rep["final"][k] for k in ("fvu", "l0", "dead_fraction",
                                                             "dense_fraction")}}
  data = rep["data"] if layers else {}
  return {"brought": None, "layers": per_layer, "corpus": data.get("name"),
          "sentences": data.get("sentences"), "corpus_tokens": data.get("tokens"),
          "epochs": data.get("epochs")}
