"""RESULTS.md and its figures, rendered from the study's record (`record.collect`).

`render(record)` is a pure function of the record, so RESULTS.md can be checked against the
study.json committed beside it. Its verdicts and judging sentences are `verdicts`'; this module
lays them out with the tables.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from xling_jax.runtime import io
from xling_jax.study import paper, verdicts
from xling_jax.study.verdicts import HEADLINE_METRIC, TASK_NAMES, fmt, headline, interval

FIGURES = "results"


def _minutes(seconds: float) -> str:
  return f"{seconds / 60:.1f} min"


def render(record: Mapping) -> str:
  """RESULTS.md from the record alone."""
  a, s, intr = record["analysis"], record["settings"], record["intrinsic"]
  ref = a["reference"]
  lines = [f"# Results: {'TOY model (random weights), ' if record['toy'] else ''}"
           f"the study on {record['checkpoint'] or 'the toy model'}", ""]
  lines += [verdicts.summary(record), "",
            "![gap heatmap](results/heatmap.png)", "",
            "Everything below is rendered by `bin.study` from `results/study.json`; "
            "`tests/study/test_study_page.py` checks that this page equals that rendering.", ""]

  lines += ["## How it was made", "", "```", record["command"], "```", "",
            f"Model: `{record['model']}` ({record['n_layers']} layers); devices: "
            f"{record['devices']}" + (f" on {record['machine']}" if record.get("machine") else "")
            + f". Run time: {_minutes(record['seconds'])} in all.", "",
            "| stage | minutes | command |", "|---|---|---|"]
  for name, timing in record["stages"].items():
    outside = " (outside the run time)" if name in (record.get("card") or {}) else ""
    lines.append(f"| {name}{outside} | {fmt(timing and timing['seconds'] / 60, '.1f')} | "
                 f"`{timing['command'] if timing else 'not run'}` |")
  lines += ["", "Sizes used (the flags above; each stage states its own):", "",
            f"- bits per character: the first {intr['bits_sentences']} sentences per language "
            f"of {intr['corpus']}; tokenisation cost over all {intr['tokenization_sentences']};",
            f"- SAEs: {_sae_size(record)};",
            f"- analysis: {a['n_sentences'][ref]} sentences per language of {a['corpus']}, "
            f"layers {a['layers']}, {_boot(a)};",
            *[f"- LoRA {t}: {l['steps']} steps of {s['lora_batch_size']} parallel lines "
              f"({l['train_lines']} lines to train on, {l['heldout_lines']} held out), rank "
              f"{s['lora_rank']}, objective layer {l['objective_layers'][0]};"
              for t, l in record["lora"].items()],
            f"- benchmarks: {_bench_size(record)}.", ""]

  lines += ["## Tokenisation cost and bits per character", "",
            f"Per language on {intr['corpus']}. Bits per sentence compares languages on the "
            "same content (parallel sentences); bits per character depends on the script.", "",
            "| language | tokens / sentence | bytes / token | chars / token | bits / char | "
            "bits / sentence |", "|---|---|---|---|---|---|"]
  for lang, cost in intr["tokenization"].items():
    bits = (intr["bits"] or {}).get(lang) or {}
    lines.append(f"| {lang} | {cost['tokens_per_sentence']:.1f} | {cost['bytes_per_token']:.2f} | "
                 f"{cost['chars_per_token']:.2f} | {fmt(bits.get('bits_per_char'), '.3f')} | "
                 f"{fmt(bits.get('bits_per_sentence'), '.1f')} |")

  lines += ["", "## The SAEs", ""]
  if record["saes"]["brought"]:
    lines.append(f"Brought with `--sae_dir={record['saes']['brought']}`.")
  else:
    lines += ["Trained by the `saes` stage (JumpReLU, quadratic L0 penalty around the target). "
              "FVU = fraction of variance unexplained on held-out batches; dead = no firing in "
              "the last window of steps; dense = firing on more than 10% of tokens.", "",
              "| layer | width | steps | tokens | target L0 | FVU | L0 | dead | dense |",
              "|---|---|---|---|---|---|---|---|---|"]
    for layer, r in record["saes"]["layers"].items():
      lines.append(f"| {layer} | {r['width']} | {r['steps']} | {r['tokens']:,} | "
                   f"{fmt(r['target_l0'], 'g')} | {r['fvu']:.3f} | {r['l0']:.1f} | "
                   f"{r['dead_fraction']:.3f} | {r['dense_fraction']:.3f} |")
    lines += ["", verdicts.sae_quality(record)]

  lines += ["", "## Disparity: SAE activation per language and layer", "",
            f"Activation = mean over tokens (BOS excluded) of the summed SAE codes; gap = "
            f"100 x (A_{ref} - A_lang) / A_{ref}, positive = weaker than {ref}. "
            f"{_boot(a).capitalize()}.", "",
            "![activation per layer](results/layers.png)", "",
            "| language | " + " | ".join(f"L{l}" for l in a["layers"]) + " |",
            "|---|" + "---|" * len(a["layers"])]
  for lang in a["languages"]:
    if lang == ref:
      continue
    ci = (a["gap_ci"] or {}).get(lang)
    cells = [fmt(g, ".1f") + (interval([ci["lo"][j], ci["hi"][j]]) if ci else "")
             for j, g in enumerate(a["gap"][lang])]
    lines.append(f"| {lang} | " + " | ".join(cells) + " |")
  lines += ["", "Band summary (mean over the band's analysed layers; max in parentheses):", "",
            "| language | " + " | ".join(f"{b} (L{v['analysed_layers'][0]}-"
                                         f"{v['analysed_layers'][-1]})"
                                         for b, v in a["band_summary"].items()) + " |",
            "|---|" + "---|" * len(a["band_summary"])]
  for lang in a["languages"]:
    if lang == ref:
      continue
    lines.append(f"| {lang} | " + " | ".join(
        f"{v['per_language'][lang]['mean']:.1f} ({v['per_language'][lang]['max']:.1f})"
        for v in a["band_summary"].values()) + " |")
  for key, label in (("group_max", "low-resource max"), ("group_mean", "low-resource mean")):
    lines.append(f"| **{label}** | " + " | ".join(
        f"{v[key]:.1f}" + interval(((a["band_ci"] or {}).get(b) or {}).get(key))
        for b, v in a["band_summary"].items()) + " |")
  if a["top_overlap"]:
    lines += ["", f"Top-{a['top_k']} feature overlap with {ref} (share of a language's "
              f"{a['top_k']} most frequent features that are also among {ref}'s):", "",
              "| language | " + " | ".join(f"L{l}" for l in a["layers"]) + " |",
              "|---|" + "---|" * len(a["layers"])]
    for lang, overlaps in a["top_overlap"].items():
      if lang != ref:
        lines.append(f"| {lang} | " + " | ".join(fmt(o, ".2f") for o in overlaps) + " |")

  lines += ["", "## Activation-aware LoRA", "",
            f"Held-out lines of the training corpus; gain = change of the target's activation, "
            f"retention = {ref}'s activation after as a share of before.", "",
            "| adapter | layer | gain % | " + f"{ref} retention % |", "|---|---|---|---|"]
  for target, lora in record["lora"].items():
    for j, layer in enumerate(lora["layers"]):
      mark = " (objective)" if layer in lora["objective_layers"] else ""
      lines.append(f"| {target} | {layer}{mark} | {fmt(lora['gain_pct'][j], '+.2f')} | "
                   f"{fmt(lora['retention_pct'][j], '.2f')} |")

  lines += ["", "## Benchmarks before and after each adapter", ""]
  lines += _bench_lines(record)

  lines += _card_lines(record)

  lines += ["", "## Beside the paper", "",
            f"The paper (arXiv {paper.ARXIV}) studies {paper.MODEL} with {paper.SAES} SAEs; "
            "this run, a far smaller model with SAEs trained here. Verdicts are computed from the "
            "numbers.", "", "| claim | paper | this run | verdict |", "|---|---|---|---|"]
  rows = verdicts.paper_rows(record)
  lines += [f"| {c} | {p} | {o} | {v} |" for c, p, o, v in rows]
  lines += ["", "In plain words:", ""]
  lines += [f"- {line}" for line in verdicts.plain_words(record, rows)]
  return "\n".join(lines) + "\n"


def _boot(a: Mapping) -> str:
  b = a["bootstrap"]
  return ("no bootstrap intervals" if not b else
          f"brackets are {b['level']:.0%} paired bootstrap intervals over sentences "
          f"({b['n_resamples']} resamples)")


def _sae_size(record: Mapping) -> str:
  s = record["saes"]
  if s["brought"]:
    return f"brought ({s['brought']})"
  any_layer = next(iter(s["layers"].values()))
  return (f"{len(s['layers'])} layers, width {any_layer['width']}, trained on the first "
          f"{s['sentences'] // max(len(record['analysis']['languages']), 1)} lines per language "
          f"of {s['corpus']} ({s['corpus_tokens']:,} tokens, {s['epochs']} epoch(s), "
          f"{any_layer['steps']} steps)")


def _bench_size(record: Mapping) -> str:
  bench = record["benchmarks"]
  if not bench:
    return "not run (no --bench_data_dir)"
  limit = record["settings"].get("bench_limit")
  return (f"{'the first ' + str(limit) if limit else 'all'} items per task and language, "
          f"0-shot; n per cell in the table")


def _bench_lines(record: Mapping) -> list[str]:
  bench = record["benchmarks"]
  if not bench:
    return ["Not run: the study had no `--bench_data_dir`."]
  targets = list(bench["lora"])
  lines = [f"Accuracy in % ± standard error ({', '.join(f'{TASK_NAMES[t]} {m}' for t, m in HEADLINE_METRIC.items())}"
           f"; lm-eval 0.4.13 rules, 0-shot); n = items scored.", "",
           "![benchmarks](results/benchmarks.png)", "",
           "| task | language | n | base | " + " | ".join(f"+ {t} adapter" for t in targets) + " |",
           "|---|---|---|---|" + "---|" * len(targets)]
  for task, per_lang in bench["base"].items():
    for lang in per_lang:
      value, se, n = headline(bench["base"], task, lang)
      cells = [f"{100 * value:.1f} ± {100 * (se or 0):.1f}"]
      for t in targets:
        v, e, _ = headline(bench["lora"][t], task, lang)
        cells.append("n/a" if v is None else f"{100 * v:.1f} ± {100 * (e or 0):.1f}")
      lines.append(f"| {TASK_NAMES[task]} | {lang} | {n} | " + " | ".join(cells) + " |")
  return lines


def _card_lines(record: Mapping) -> list[str]:
  cards = record.get("card")
  if not cards:
    return []
  published = paper.MODEL_CARD.get(record["checkpoint"] or "", {})
  lines = ["", "## English scoring beside the model card", "",
           "Our lm-eval-compatible scoring with the card's shot counts, few-shot examples "
           "drawn (seeded) from the evaluated split minus the item itself (lm-eval draws them "
           "from the train splits, which the data folder lacks). The card scored the bfloat16 "
           "release; these weights are the Q4_K_M GGUF dequantised, which can cost a few "
           "points.", "",
           "| benchmark | shots | items | acc | acc_norm | model card | minutes |",
           "|---|---|---|---|---|---|---|"]
  for card in cards.values():
    for task, per_lang in card["scores"].items():
      s = per_lang["en"]
      value = published.get(task)
      items = (f"{s['n']}" + (f" (+{s['n_too_long']} too long)" if s.get("n_too_long") else "")
               + (f" of a {card['subsample']}-item subsample" if card["subsample"] else ""))
      pct = lambda m: ("n/a" if s[m] is None else
                       f"{100 * s[m]:.1f} ± {100 * (s['stderr'][m] or 0):.1f}")
      lines.append(
          f"| {TASK_NAMES[task]} | {card['num_fewshot']} | {items} | {pct('acc')} | "
          f"{pct('acc_norm')} | "
          f"{'n/a' if value is None else f'{value:.1f} ({paper.CARD_PROTOCOL[task].shots}-shot)'}"
          " | "
          f"{card['seconds'] / 60:.1f} |")
  notes = verdicts.card_notes(record)
  return lines + ([""] + [f"- {n}" for n in notes] if notes else [])


# ---- files -------------------------------------------------------------------------------------

def benchmarks_png(record: Mapping) -> bytes | None:
  """Headline accuracy per task and language: base and each adapter side by side."""
  bench = record["benchmarks"]
  if not bench:
    return None
  import io as stdio

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  cells = [(task, lang) for task, per in bench["base"].items() for lang in per]
  runs = [("base", bench["base"])] + [(f"+ {t} adapter", s) for t, s in bench["lora"].items()]
  fig, ax = plt.subplots(figsize=(min(14.0, max(6.0, 0.2 * len(cells) * len(runs))), 4.5))
  width = 0.8 / len(runs)
  x = np.arange(len(cells))
  for k, (label, scores) in enumerate(runs):
    vals = [headline(scores, t, l) for t, l in cells]
    ax.bar(x + k * width, [100 * (v or 0) for v, _, _ in vals], width,
           yerr=[100 * (e or 0) for _, e, _ in vals], label=label, capsize=2)
  ax.set_xticks(x + width * (len(runs) - 1) / 2,
                [f"{TASK_NAMES[t].split('-')[0]}\n{l}" for t, l in cells], fontsize=7)
  ax.set_ylabel("accuracy %")
  ax.legend(fontsize=8)
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  buf = stdio.BytesIO()
  fig.savefig(buf, format="png", dpi=110)
  plt.close(fig)
  return buf.getvalue()


def write(results_md: Path, record: Mapping, figures: Mapping[str, Path],
          also: Mapping[Path, str | bytes] | None = None) -> list[Path]:
  """RESULTS.md at `results_md`; study.json and the figures under results/ beside it: each of
  `figures` ({name there: the stage's file}, `stages.figures`) that exists (a stale copy of
  one that does not is removed), and the benchmarks'; with `also` ({path: contents}), all
  written as one set (`io.write_set`), so a failure leaves the previous page whole."""
  results_md = Path(results_md)
  files: dict = {f"{FIGURES}/{name}": Path(src).read_bytes() if Path(src).exists() else None
                 for name, src in figures.items()}
  files[f"{FIGURES}/benchmarks.png"] = benchmarks_png(record)
  files[f"{FIGURES}/study.json"] = io.json_text(record)
  files[results_md.name] = render(record)
  files.update({Path(path).absolute(): data for path, data in (also or {}).items()})
  return list(io.write_set(results_md.parent, files).values())
