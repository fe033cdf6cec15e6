"""RESULTS.md and its figures, rendered from the study's record (`record.collect`).

`render(record)` is a pure function of the record, so RESULTS.md can be checked against the
study.json committed beside it. Its verdicts and judging sentences are `verdicts`'; this module
lays them out with the tables.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from xling_jax.analysis import report as analysis_report
from xling_jax.runtime import io
from xling_jax.study import paper, verdicts
from xling_jax.study.verdicts import HEADLINE_METRIC, TASK_NAMES, fmt, headline, interval, points

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
            f"- analysis: {_analysed(a, intr)} sentences per language of {a['corpus']}, "
            f"layers {a['layers']}, {_boot(a)}; SAE quality on the first "
            f"{(a.get('sae_quality') or {}).get('sentences', 'n/a')} sentences per language; "
            f"repeated for each of {(record.get('seeds') or {}).get('n', 1)} SAE seed(s);",
            *[f"- LoRA {t}: {l['steps']} steps of {s['lora_batch_size']} parallel lines "
              f"({l['train_lines']} lines to train on, {l['heldout_lines']} held out), rank "
              f"{s['lora_rank']}, objective layer {l['objective_layers'][0]}; measured on "
              f"{(l.get('measured') or {}).get('sentences', 'n/a')} sentences of "
              f"{(l.get('measured') or {}).get('text', 'n/a')}; controls "
              f"{', '.join((record.get('controls') or {}).get(t, {})) or 'none'};"
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
  lines += _controls_lines(record)
  lines += _seed_lines(record)
  lines += _quality_lines(record)
  if a["top_overlap"]:
    null = a.get("top_overlap_null")
    lines += ["", f"Top-{a['top_k']} feature overlap with {ref} (share of a language's "
              f"{a['top_k']} most frequent features that are also among {ref}'s)"
              + (f"; the null row is the overlap of two halves of {ref}'s sentences (different "
                 "sentences, half as many: it understates what two samples of one language "
                 "share, so a language below it differs from the reference beyond sampling)" if null else "") + ":", "",
              "| language | " + " | ".join(f"L{l}" for l in a["layers"]) + " |",
              "|---|" + "---|" * len(a["layers"])]
    for lang, overlaps in a["top_overlap"].items():
      if lang != ref:
        lines.append(f"| {lang} | " + " | ".join(fmt(o, ".2f") for o in overlaps) + " |")
    if null:
      lines.append(f"| **null ({ref} vs {ref})** | " + " | ".join(fmt(o, ".2f") for o in null)
                   + " |")

  lines += _lora_lines(record)

  lines += ["", "## Benchmarks: the base model across languages, and after each adapter", ""]
  lines += _bench_lines(record)

  lines += _card_lines(record)

  lines += ["", "## Beside the paper", "",
            f"The paper (arXiv {paper.ARXIV}) studies {paper.MODEL} with {paper.SAES} SAEs; "
            "this run, a far smaller model with SAEs trained here. Verdicts are computed from the "
            "numbers; the last column says whether the finding survives its control (the "
            "residual norm for the gaps, the norm-objective adapter for the gains).", "",
            "| claim | paper | this run | beside the paper | survives its control |",
            "|---|---|---|---|---|"]
  rows = verdicts.paper_rows(record)
  lines += [f"| {c} | {p} | {o} | {v} | {s} |" for c, p, o, v, s in rows]
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
  ref = record["analysis"]["reference"]
  lines = [f"Accuracy in % ± standard error ({', '.join(f'{TASK_NAMES[t]} {m}' for t, m in HEADLINE_METRIC.items())}"
           "; lm-eval 0.4.13 rules, 0-shot) of the base model, on the same items in every "
           "language (common ids); n = items scored; margin = the gold answer's "
           "log-likelihood minus the best other choice's (nats, mean).", "",
           "![benchmarks](results/benchmarks.png)", "",
           f"| task | language | n | acc_norm | margin | vs {ref}, paired: difference [95%] | "
           "detectable |", "|---|---|---|---|---|---|---|"]
  for task, per_lang in bench["base"].items():
    for lang, s in per_lang.items():
      value, se, n = headline(bench["base"], task, lang)
      c = (bench.get("languages") or {}).get(lang)
      versus = ("(reference)" if lang == ref else "n/a" if not c or not c.get("n") else
                f"{points(c['diff'])} [{points(c['diff_ci'][0])}, {points(c['diff_ci'][1])}], "
                f"McNemar p {c['mcnemar']['p']:.2g}")
      mde = ("" if lang == ref or not c or not c.get("n") else
             fmt(None if c["mde"] is None else 100 * c["mde"], ".1f"))
      lines.append(f"| {TASK_NAMES[task]} | {lang} | {n} | {fmt(value and 100 * value, '.1f')} ± "
                   f"{fmt(se and 100 * se, '.1f')} | {fmt(s.get('margin'), '.2f')} | {versus} | "
                   f"{mde} |")
  if bench.get("paired"):
    lines += ["", "After each adapter, against the base model on the same items (paired): "
              "accuracy difference in points with its 95% bootstrap interval, McNemar's exact "
              "p on the items that flipped, the margin's change, and the smallest change the "
              "comparison could detect (80% power).", "",
              "| adapter | language | n | acc_norm difference [95%] | flips +/- | McNemar p | "
              "margin change [95%] | detectable |", "|---|---|---|---|---|---|---|---|"]
    for name, per_lang in bench["paired"].items():
      for lang, c in per_lang.items():
        if not c.get("n"):
          continue
        m = c["margin"]
        lines.append(
            f"| {name.removeprefix('bench_')} | {lang} | {c['n']} | {points(c['diff'])} "
            f"[{points(c['diff_ci'][0])}, {points(c['diff_ci'][1])}] | "
            f"{c['mcnemar']['b_only']}/{c['mcnemar']['a_only']} | {c['mcnemar']['p']:.2g} | "
            f"{fmt(m['diff'], '+.3f')} [{fmt(m['diff_ci'][0], '+.3f')}, "
            f"{fmt(m['diff_ci'][1], '+.3f')}] | "
            f"{fmt(None if c['mde'] is None else 100 * c['mde'], '.1f')} |")
  return lines


def _controls_lines(record: Mapping) -> list[str]:
  """Each gap beside its controls, as band means, and the cells that exceed the norm."""
  a = record["analysis"]
  controls = [(m, label) for m, label in (
      ("activation", "SAE code mass per token"), ("resid_norm", "residual norm, no SAE"),
      ("direction_activation", "SAE, every token at the reference's norm"),
      ("sentence_mass", "SAE code mass per sentence")) if verdicts.band_means(record, m)]
  if len(controls) < 2:
    return []
  ref = a["reference"]
  bands = list(a["band_summary"])
  lines = ["", "### Controls: an SAE-feature effect or a residual-norm effect?", "",
           "![gaps under the controls](results/controls.png)", "",
           f"Band means of the gap vs {ref} (%) under the SAE metric and its controls: the plain "
           "mean residual norm ||x|| (no SAE), the SAE's code mass with every token rescaled to "
           f"{ref}'s mean norm at that layer (direction only), and the code mass per sentence "
           "(the same content in every language, not divided by its token count).", "",
           "| language | " + " | ".join(f"{label}: {b}" for _, label in controls[:1]
                                         for b in bands) + " | "
           + " | ".join(f"{label}: {b}" for _, label in controls[1:] for b in bands) + " |",
           "|---|" + "---|" * (len(bands) * len(controls))]
  means = {m: verdicts.band_means(record, m) for m, _ in controls}
  for lang in [*a["low_resource_group"], "group"] + [
      l for l in a["languages"] if l != ref and l not in a["low_resource_group"]]:
    label = "**low-resource mean**" if lang == "group" else lang
    lines.append(f"| {label} | " + " | ".join(
        fmt(means[m][b].get(lang), ".1f") for m, _ in controls for b in bands) + " |")
  surv = verdicts.norm_survival(record)
  if surv:
    lines += ["", "Low-resource cells (language x analysed layer) whose SAE gap exceeds the "
              "residual-norm gap beyond the bootstrap interval of the difference, in every SAE "
              "seed: " + "; ".join(f"{b} {k} of {n}" for b, (k, n) in surv.items()) + "."]
  flips, cells = verdicts.sign_flips(record)
  if cells:
    lines.append(f"The per-sentence gap has the other sign than the per-token one in {flips} "
                 f"of {cells} cells.")
  return lines


def _seed_lines(record: Mapping) -> list[str]:
  """The gap's spread over the SAE seeds."""
  seeds = record.get("seeds") or {}
  gap = (seeds.get("gap") or {}).get("activation")
  if not gap or seeds.get("n", 1) < 2:
    return []
  a = record["analysis"]
  span = seeds.get("interval") or {}
  lines = ["", f"### {seeds['n']} trainings of the SAEs", "",
           "The SAE gap per layer: its mean over the SAE seeds, then [the lowest and highest "
           "seed]" + (" and (the span of every seed's 95% bootstrap interval: sentence "
                      "sampling and SAE retraining together)" if span else "")
           + "; the low-resource group means per band in each seed below.", "",
           "| language | " + " | ".join(f"L{l}" for l in a["layers"]) + " |",
           "|---|" + "---|" * len(a["layers"])]
  for lang, g in gap.items():
    lo95, hi95 = (span.get(lang) or {}).get("lo"), (span.get(lang) or {}).get("hi")
    lines.append(f"| {lang} | " + " | ".join(
        f"{fmt(m, '.1f')} [{fmt(lo, '.1f')}, {fmt(hi, '.1f')}]"
        + (f" ({fmt(lo95[i], '.1f')}, {fmt(hi95[i], '.1f')})" if lo95 else "")
        for i, (m, lo, hi) in enumerate(zip(g["mean"], g["min"], g["max"]))) + " |")
  lines += ["", "| band | group mean per seed | group max per seed |", "|---|---|---|"]
  for band, v in seeds["band_group"].items():
    lines.append(f"| {band} | {', '.join(fmt(x, '.1f') for x in v['group_mean'])} | "
                 f"{', '.join(fmt(x, '.1f') for x in v['group_max'])} |")
  return lines


def _analysed(analysis: Mapping, intrinsic: Mapping) -> str:
  """How many sentences per language the analysis read, and that it is a part of the corpus
  when it is (the intrinsic stage reads the whole analysis corpus)."""
  n, whole = analysis["n_sentences"][analysis["reference"]], intrinsic["tokenization_sentences"]
  return (str(n) if n >= whole else f"the first {n} of {whole} (fewer, so that the analysis "
          "of every SAE seed fits the study's time)")


def _quality_lines(record: Mapping) -> list[str]:
  """Each SAE's fit per language (seed 0's SAEs): FVU and the LM loss its reconstruction
  costs."""
  note = (" Seed 0's SAEs; the FVU range over the SAE seeds is in study.json (`seeds.fvu`)."
          if (record.get("seeds") or {}).get("fvu") else "")
  return analysis_report.quality_markdown(record["analysis"], heading="###", note=note)


def _lora_lines(record: Mapping) -> list[str]:
  """Each adapter beside its controls: gap closure, gains, bits per character, norm."""
  ref = record["analysis"]["reference"]
  lines = ["", "## Activation-aware LoRA and its controls", "",
           "Per target: the activation-aware adapter (align + retain), and controls trained on "
           "the same lines, steps, rank and lr: `lm` (the language-model loss on the target "
           "text, retain kept) and `norm` (match the reference's mean residual norm at the "
           "objective layer, no SAE). At the objective layer: gap closure = the target's code "
           f"mass after as % of {ref}'s before (what the align term trains toward: its set "
           "point), gain on the held-out training lines and on the measured text, "
           f"{ref}'s retention; then bits per character and the mean residual norm before -> "
           "after on the measured text.", ""]
  if not record["saes"].get("brought") and not record["settings"].get("lora_first_line"):
    lines += ["The training corpus has no lines past those the SAEs trained on, so the "
              "adapters' lines (held-out ones included) are lines the SAEs also saw.", ""]
  for target, lora in record["lora"].items():
    adapters = [("activation", lora)] + list(((record.get("controls") or {}).get(target) or {})
                                             .items())
    langs = (lora.get("measured") or {}).get("languages") or [target, ref]
    lines += [f"**{target}** (objective layer {lora['objective_layers'][0]}; measured on "
              f"{(lora.get('measured') or {}).get('text', 'the held-out lines')}):", "",
              "| adapter | gap closure | gain (held-out) | gain (measured) | "
              f"{ref} retention | " + " | ".join(f"bits/char {l}" for l in langs)
              + f" | resid norm {target} |", "|---|---|---|---|---|"
              + "---|" * (len(langs) + 1)]
    for name, ad in adapters:
      i = verdicts.objective_index(ad)
      measured = ad.get("measured") or {}
      gain_m = (measured.get("gain_pct") or {}).get(target)
      bits = ad.get("bits_per_char") or {}
      norm = ad.get("resid_norm") or {}
      bit_cells = [f"{bits['before'][l]:.3f} -> {bits['after'][l]:.3f}" if bits else "n/a"
                   for l in langs]
      norm_cell = (f"{norm['before'][target][i]:.1f} -> {norm['after'][target][i]:.1f}"
                   if norm else "n/a")
      lines.append(f"| {name} | {fmt(verdicts.at_objective(ad, 'gap_closure_pct'), '.1f')}%"
                   f" | {fmt(ad['gain_pct'][i], '+.1f')}% | "
                   f"{fmt(gain_m and gain_m[i], '+.1f')}% | {fmt(ad['retention_pct'][i], '.1f')}%"
                   f" | " + " | ".join(bit_cells) + f" | {norm_cell} |")
    lines.append("")
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
  runs = [("base", bench["base"])] + [(f"+ {name.removeprefix('bench_')}", s)
                                      for name, s in bench["lora"].items()]
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
