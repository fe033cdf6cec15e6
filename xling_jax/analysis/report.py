"""Analysis outputs: stats.json (every number), disparity.csv, report.md, heatmap.png, layers.png,
controls.png (each gap beside its residual-norm and direction-only controls)."""
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
CONTROLS_NAME = "controls.png"


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
                     config: Mapping, provenance: Mapping,
                     gap_by_metric: Mapping[str, Mapping[str, np.ndarray]] | None = None,
                     norm_control: Mapping | None = None,
                     sae_quality: Mapping | None = None,
                     top_null: Sequence[float] | None = None) -> dict:
  """The machine-readable record of a run; readable without this package. `group`: the
  low-resource languages whose band max/mean `band_summary` holds; `gap_by_metric`: {metric:
  {lang: [L]}} the gap under every metric; `norm_control`: `disparity.norm_control`;
  `sae_quality`: `sae_quality.corpus_quality`; `top_null`: per layer, the top-k overlap of the
  reference's two halves (`disparity.top_overlap_null`)."""
  return _clean({
      "languages": list(stats.languages),
      "reference_language": ref,
      "layers": list(stats.layers),
      "metrics": {name: stats.metrics(name) for name in stats.metric_names},
      "gap_by_metric": gap_by_metric,
      "controls": None if norm_control is None else {
          "reference_norms": stats.direction_norms, **norm_control,
          "gap_ci": None if ci is None else ci.gap_by_metric},
      "sae_quality": sae_quality,
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
      "top_features_null": top_null,
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
  for lang, cut in (record.get("truncated_sentences") or {}).items():
    if cut:
      shown = ", ".join(str(i + 1) for i in cut[:10]) + (", ..." if len(cut) > 10 else "")
      out.append(f"warning: {lang}: {len(cut)} sentence(s) were longer than the analysis's "
                 f"max_len and were cut to it (corpus lines {shown}); their later tokens are "
                 "not in the statistics")
  return out


def titles(record: Mapping, corpus: str, toy: bool) -> dict[str, str]:
  """{"gap": report.md and heatmap.png, "layers": layers.png}; layers.png plots activation. Each
  starts by saying whether a toy model or random SAEs made the record."""
  from sae import random_saes
  prefix = random_saes.title_prefix(toy, record.get("provenance", {}).get("random_saes", False))
  return {"gap": f"{prefix}SAE activation gap vs {record['reference_language']} ({corpus})",
          "layers": f"{prefix}SAE activation per layer ({corpus})",
          "controls": f"{prefix}Gap vs {record['reference_language']} under the SAE and its "
                      f"controls ({corpus})"}


def _gap_key(record: Mapping) -> str:
  return f"gap_vs_{record['reference_language']}"


def disparity_csv(record: Mapping) -> str:
  """One row per (language, layer): every metric, the gap and its CI when present, the gap
  under every other metric, the excess over the norm control and its verdict."""
  gaps = record[_gap_key(record)]
  boot = record.get("bootstrap") or {}
  metrics = [m for m in METRICS if m in record["metrics"]]
  by_metric = record.get("gap_by_metric") or {}
  others = [m for m in metrics if m in by_metric and m != "activation"]
  controls = record.get("controls") or {}
  text = StringIO()
  w = csv.writer(text)
  w.writerow(["language", "layer", *metrics, "gap_pct", "gap_ci_lo", "gap_ci_hi",
              *[f"gap_{m}_pct" for m in others], "excess_over_norm", "norm_verdict"])
  none = [None] * len(record["layers"])
  for lang in record["languages"]:
    for i, layer in enumerate(record["layers"]):
      ci = boot.get("gap", {}).get(lang)
      w.writerow([lang, layer, *[record["metrics"][m][lang][i] for m in metrics],
                  gaps.get(lang, none)[i],
                  None if ci is None else ci["lo"][i], None if ci is None else ci["hi"][i],
                  *[by_metric[m].get(lang, none)[i] for m in others],
                  (controls.get("excess") or {}).get(lang, none)[i],
                  (controls.get("verdict") or {}).get(lang, none)[i]])
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
  lines += controls_markdown(record) + quality_markdown(record)
  return "\n".join(lines) + "\n"


VERDICT_MARK = {"exceeds_norm": "▲", "below_norm": "▼", "norm_explained": "="}


def controls_markdown(record: Mapping) -> list[str]:
  """The gap of every cell beside its controls, with the norm verdict."""
  by_metric, controls = record.get("gap_by_metric"), record.get("controls")
  if not by_metric or not controls:
    return []
  ref = record["reference_language"]
  verdict = controls.get("verdict") or {}
  direction = "direction_activation" in by_metric
  lines = ["", "## Controls: SAE gap, residual-norm gap" + (", direction-only gap" if direction
                                                             else ""), "",
           "Per cell: the SAE activation gap / the gap of the plain mean residual norm ||x|| (no "
           "SAE)" + (" / the SAE gap with every token rescaled to "
                     f"`{ref}`'s mean norm at that layer (direction only)" if direction else "")
           + ", in %. "
           + ("Mark: ▲ the SAE gap exceeds the norm gap (the interval of their difference lies "
              "above 0), ▼ it falls below it, = the norm explains it (the interval holds 0)."
              if verdict else "No verdicts: they need the bootstrap."), ""]
  layers = record["layers"]
  lines += ["| language | " + " | ".join(f"L{l}" for l in layers) + " |",
            "|---|" + "---|" * len(layers)]
  for lang in [l for l in record["languages"] if l != ref]:
    cells = []
    for i in range(len(layers)):
      parts = [_fmt(by_metric["activation"][lang][i], 1), _fmt(by_metric["resid_norm"][lang][i], 1)]
      if direction:
        parts.append(_fmt(by_metric["direction_activation"][lang][i], 1))
      mark = VERDICT_MARK.get((verdict.get(lang) or [None] * len(layers))[i], "")
      cells.append(" / ".join(parts) + (f" {mark}" if mark else ""))
    lines.append(f"| {lang} | " + " | ".join(cells) + " |")
  if "sentence_mass" in by_metric:
    lines += ["", "Per sentence (content-matched: the summed code mass of a sentence, not divided "
                  "by the language's token count), the gap in % per layer:", "",
              "| language | " + " | ".join(f"L{l}" for l in layers) + " |",
              "|---|" + "---|" * len(layers)]
    for lang in [l for l in record["languages"] if l != ref]:
      lines.append(f"| {lang} | " + " | ".join(_fmt(v, 1) for v in by_metric["sentence_mass"][lang])
                   + " |")
  return lines


def quality_markdown(record: Mapping, heading: str = "##", note: str = "") -> list[str]:
  """Each SAE's fit per language: FVU and the LM loss it costs when spliced in. `record`: a
  stats.json record (or the study's analysis); `note` ends the paragraph above the table."""
  quality = record.get("sae_quality")
  if not quality:
    return []
  layers = record["layers"]
  title = ["", f"{heading} SAE quality per language", ""]
  if quality["delta_lm_loss"] is None:
    return title + [
            f"FVU on the first {quality['sentences']} sentences of each language (the LM loss "
            f"was not measured){note}:", "", "| language | " + " | ".join(f"L{l}" for l in layers) + " |",
            "|---|" + "---|" * len(layers)] + [
        f"| {lang} | " + " | ".join(_fmt(f, 3) for f in quality["fvu"][lang]) + " |"
        for lang in record["languages"]]
  lines = title + [
           f"On the first {quality['sentences']} sentences of each language: FVU (unexplained "
           "variance of the residual around the language's mean) / the increase of the "
           "next-token loss (nats per token) with that layer's residual replaced by its "
           f"reconstruction. The clean loss is in the last column.{note}", "",
           "| language | " + " | ".join(f"L{l}" for l in layers) + " | clean loss |",
           "|---|" + "---|" * (len(layers) + 1)]
  for lang in record["languages"]:
    cells = [f"{_fmt(f, 3)} / {_fmt(d, 3)}" for f, d in zip(quality["fvu"][lang],
                                                        quality["delta_lm_loss"][lang])]
    lines.append(f"| {lang} | " + " | ".join(cells) + f" | {_fmt(quality['clean_lm_loss'][lang], 3)} |")
  return lines


def heatmap_png(record: Mapping, title: str) -> bytes | None:
  """Gap per language and layer; None with only the reference language (nothing to compare)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  ref = record["reference_language"]
  gaps = record[_gap_key(record)]
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


def controls_png(record: Mapping, title: str) -> bytes | None:
  """One panel per language: its gap per layer under the SAE activation and under each control
  (None without controls or without a language besides the reference)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  by_metric = record.get("gap_by_metric")
  ref = record["reference_language"]
  langs = [l for l in record["languages"] if l != ref]
  if not by_metric or not langs:
    return None
  shown = [(m, label) for m, label in (
      ("activation", "SAE activation"), ("resid_norm", "residual norm (no SAE)"),
      ("direction_activation", "SAE, direction only"), ("sentence_mass", "SAE, per sentence"))
      if m in by_metric]
  cols = min(3, len(langs))
  rows = -(-len(langs) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False,
                           sharex=True)
  layers = record["layers"]
  for ax, lang in zip(axes.flat, langs):
    for metric, label in shown:
      values = [np.nan if v is None else v for v in by_metric[metric][lang]]
      ax.plot(layers, values, marker="o", markersize=3, linewidth=1.4, label=label)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xticks(layers)
    ax.set_title(lang, fontsize=9)
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(langs):]:
    ax.axis("off")
  axes.flat[0].legend(fontsize=7)
  fig.supxlabel("layer", fontsize=9)
  fig.supylabel(f"gap vs {ref} (%)", fontsize=9)
  fig.suptitle(title, fontsize=10)
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
  """Render every output, then write them as one set (`io.write_set`): a failure while
  rendering or writing leaves the previous results whole. `corpus` names the corpus in the
  titles; `toy` marks them as a toy model's. Returns ({kind: path}, the Markdown report)."""
  out_dir = Path(out_dir)
  title = titles(record, corpus, toy)
  rendered = {
      "stats": (STATS_NAME, io.json_text(record)),
      "csv": ("disparity.csv", disparity_csv(record)),
      "markdown": ("report.md", summary_markdown(record, title["gap"], list(notes))),
      "heatmap": (HEATMAP_NAME, heatmap_png(record, title["gap"])),
      "layers": (LAYERS_NAME, layers_png(record, title["layers"])),
      "controls": (CONTROLS_NAME, controls_png(record, title["controls"])),
  }
  # A figure that cannot be drawn (the reference alone) is None: its old file would mislead.
  written = io.write_set(out_dir, dict(rendered.values()))
  paths = {kind: written[name] for kind, (name, _) in rendered.items() if name in written}
  return paths, rendered["markdown"][1]
