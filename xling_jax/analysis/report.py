"""Analysis outputs: stats.json (every number), disparity.csv, report.md, heatmap.png, layers.png."""
from __future__ import annotations

import csv
from io import BytesIO, StringIO
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from xling_jax.analysis.corpus_stats import METRICS, CorpusStats
from xling_jax.analysis.disparity import BootstrapCI
from xling_jax.runtime import io

STATS_NAME = "stats.json"
HEATMAP_NAME = "heatmap.png"
LAYERS_NAME = "layers.png"


def _clean(value: Any) -> Any:
  """JSON-safe: numpy -> python, NaN/inf -> None (JSON has no NaN)."""
  if isinstance(value, dict):
    return {str(k): _clean(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_clean(v) for v in value]
  if isinstance(value, np.ndarray):
    return _clean(value.tolist())
  if isinstance(value, (np.floating, float)):
    return float(value) if np.isfinite(value) else None
  if isinstance(value, np.integer):
    return int(value)
  return value


def build_stats_json(stats: CorpusStats, *, gaps: Mapping[str, np.ndarray], ref: str,
                     bands: Mapping[str, tuple[int, int]], band_summary: Mapping,
                     group: Sequence[str], ci: BootstrapCI | None, top: Mapping | None,
                     config: Mapping, provenance: Mapping) -> dict:
  """The machine-readable record of a run; readable without this package. `group`: the
  low-resource languages whose band max/mean `band_summary` holds."""
  return _clean({
      "languages": list(stats.languages),
      "reference_language": ref,
      "layers": list(stats.layers),
      "metrics": {name: stats.metrics(name) for name in METRICS},
      "gap_vs_en" if ref == "en" else f"gap_vs_{ref}": {l: g for l, g in gaps.items() if l != ref},
      "bands": {k: list(v) for k, v in bands.items()},
      "band_summary": band_summary,
      "low_resource_group": list(group),
      "bootstrap": None if ci is None else {
          "n_resamples": ci.n_resamples, "level": ci.level, "metric": ci.metric,
          "gap": ci.gap, "band_group": ci.band_group},
      "n_tokens": {lang: stats.n_tokens(lang) for lang in stats.languages},
      "n_sentences": {lang: stats.n_sentences(lang) for lang in stats.languages},
      "truncated_sentences": {lang: list(stats.per_language[lang].truncated)
                              for lang in stats.languages},
      "top_features": top,
      "config": config,
      "provenance": provenance,
  })


def warnings(record: Mapping) -> list[str]:
  """What a reader must know to trust the numbers, from the record alone."""
  out = []
  boot = record.get("bootstrap")
  fewest = min(record["n_sentences"].values())
  if boot and fewest < 2:
    out.append(f"warning: {fewest} sentence(s) per language: every bootstrap resample is the "
               f"same corpus, so the {boot['level']:.0%} intervals are degenerate ([x, x]) and "
               "say nothing about uncertainty; use more sentences")
  return out


def titles(record: Mapping, corpus: str, toy: bool) -> dict[str, str]:
  """{"gap": report.md and heatmap.png, "layers": layers.png}; layers.png plots activation."""
  prefix = "TOY model: " if toy else ""
  return {"gap": f"{prefix}SAE activation gap vs {record['reference_language']} ({corpus})",
          "layers": f"{prefix}SAE activation per layer ({corpus})"}


def disparity_csv(record: Mapping) -> str:
  """One row per (language, layer): every metric, the gap, and its CI when present."""
  gaps = record["gap_vs_en"] if "gap_vs_en" in record else next(
      v for k, v in record.items() if k.startswith("gap_vs_"))
  boot = record.get("bootstrap") or {}
  text = StringIO()
  w = csv.writer(text)
  w.writerow(["language", "layer", *METRICS, "gap_pct", "gap_ci_lo", "gap_ci_hi"])
  for lang in record["languages"]:
    for i, layer in enumerate(record["layers"]):
      gap = gaps.get(lang, [None] * len(record["layers"]))[i]
      ci = boot.get("gap", {}).get(lang)
      w.writerow([lang, layer, *[record["metrics"][m][lang][i] for m in METRICS], gap,
                  None if ci is None else ci["lo"][i], None if ci is None else ci["hi"][i]])
  return text.getvalue()


def _fmt(v, digits=2) -> str:
  return "n/a" if v is None else f"{v:.{digits}f}"


def summary_markdown(record: Mapping, title: str, notes: list[str] = ()) -> str:
  """The paper-style table: gap vs the reference per band and language, plus the group rows."""
  ref = record["reference_language"]
  langs = [l for l in record["languages"] if l != ref]
  bands = record["band_summary"]
  boot = (record.get("bootstrap") or {}).get("band_group", {})
  lines = [f"# {title}", ""]
  notes = [*notes, *warnings(record)]
  lines += [f"> {n}" for n in notes] + ([""] if notes else [])
  group = ", ".join(record["low_resource_group"]) or "none of the languages"
  lines.append(f"Activation gap vs `{ref}` (%; positive = fewer/weaker SAE activations than "
               f"`{ref}`), mean over each band's layers (max in parentheses). The low-resource "
               f"rows are the max and the mean over the low-resource group: {group}.")
  lines.append("")
  header = "| language | " + " | ".join(f"{b} (L{v['layers'][0]}-{v['layers'][1]})"
                                          for b, v in bands.items()) + " |"
  lines += [header, "|---|" + "---|" * len(bands)]
  for lang in langs:
    cells = [f"{_fmt(v['per_language'][lang]['mean'])} ({_fmt(v['per_language'][lang]['max'])})"
             for v in bands.values()]
    lines.append(f"| {lang} | " + " | ".join(cells) + " |")
  for key, label in (("group_max", "low-resource max"), ("group_mean", "low-resource mean")):
    cells = []
    for b, v in bands.items():
      ci = boot.get(b, {}).get(key)
      cells.append(_fmt(v[key]) + (f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else ""))
    lines.append(f"| **{label}** | " + " | ".join(cells) + " |")
  if boot:
    b = record["bootstrap"]
    lines += ["", f"Brackets: {b['level']:.0%} paired bootstrap intervals over sentences "
                  f"({b['n_resamples']} resamples)."]
  lines += ["", "| language | sentences | tokens | mean activation | mean L0 |", "|---|---|---|---|---|"]
  for lang in record["languages"]:
    act = np.mean(record["metrics"]["activation"][lang])
    l0 = np.mean(record["metrics"]["l0"][lang])
    lines.append(f"| {lang} | {record['n_sentences'][lang]} | {record['n_tokens'][lang]} | "
                 f"{act:.3f} | {l0:.2f} |")
  return "\n".join(lines) + "\n"


def heatmap_png(record: Mapping, title: str) -> bytes | None:
  """Gap per language and layer; None with only the reference language (nothing to compare)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  ref = record["reference_language"]
  gaps = record["gap_vs_en"] if "gap_vs_en" in record else record[f"gap_vs_{ref}"]
  langs = [l for l in record["languages"] if l != ref]
  if not langs:
    return None
  data = np.array([[np.nan if v is None else v for v in gaps[l]] for l in langs], float)
  lim = max(float(np.nanmax(np.abs(data))) if np.isfinite(data).any() else 1.0, 1e-9)
  fig, ax = plt.subplots(figsize=(max(6, 0.35 * data.shape[1] + 2), 0.45 * len(langs) + 1.8))
  im = ax.imshow(data, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
  ax.set_yticks(range(len(langs)), langs)
  ax.set_xticks(range(len(record["layers"])), record["layers"])
  ax.set_xlabel("layer")
  ax.set_title(title, fontsize=10)
  fig.colorbar(im, ax=ax, label=f"activation gap vs {ref} (%)")
  return _png(fig)


def layers_png(record: Mapping, title: str, metric: str = "activation") -> bytes:
  """`metric` per layer, one line per language (with its bootstrap band for activation)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  layers = record["layers"]
  boot = (record.get("bootstrap") or {}).get("metric", {}) if metric == "activation" else {}
  fig, ax = plt.subplots(figsize=(8, 4.5))
  cmap = plt.get_cmap("tab10")
  for i, lang in enumerate(record["languages"]):
    values = record["metrics"][metric][lang]
    style = "-" if lang == record["reference_language"] else "--" if i > 5 else "-"
    ax.plot(layers, values, style, color=cmap(i % 10), label=lang, linewidth=1.6)
    if lang in boot:
      ax.fill_between(layers, boot[lang]["lo"], boot[lang]["hi"], color=cmap(i % 10), alpha=0.18)
  ax.set_xticks(layers)
  ax.set_xlabel("layer")
  ax.set_ylabel(f"{metric} (sum of SAE codes per token)" if metric == "activation" else metric)
  ax.set_title(title, fontsize=10)
  ax.legend(ncol=5, fontsize=8)
  ax.grid(alpha=0.3)
  return _png(fig)


def _png(fig) -> bytes:
  import matplotlib.pyplot as plt
  fig.tight_layout()
  data = BytesIO()
  fig.savefig(data, format="png", dpi=120)
  plt.close(fig)
  return data.getvalue()


def write_report(out_dir: Path, record: Mapping, *, corpus: str, toy: bool,
                 notes: Sequence[str] = ()) -> tuple[dict[str, Path], str]:
  """Render every output, then write each file atomically: a failure while rendering leaves the
  previous results untouched. `corpus` names the corpus in the titles; `toy` marks them as a toy
  model's. Returns ({kind: path}, the Markdown report)."""
  out_dir = Path(out_dir)
  title = titles(record, corpus, toy)
  rendered = {
      "stats": (STATS_NAME, io.json_text(record)),
      "csv": ("disparity.csv", disparity_csv(record)),
      "markdown": ("report.md", summary_markdown(record, title["gap"], list(notes))),
      "heatmap": (HEATMAP_NAME, heatmap_png(record, title["gap"])),
      "layers": (LAYERS_NAME, layers_png(record, title["layers"])),
  }
  paths = {}
  for kind, (name, data) in rendered.items():
    path = out_dir / name
    if data is None:  # no heatmap for the reference alone: an old one would mislead
      io.remove(path)
      continue
    (io.write_bytes if isinstance(data, bytes) else io.write_text)(path, data)
    paths[kind] = path
  return paths, rendered["markdown"][1]
