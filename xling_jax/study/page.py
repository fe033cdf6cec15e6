"""RESULTS.md and its figures, rendered from the study's record (`study_record.collect`).

`render(record)` is a pure function of the record, so RESULTS.md can be checked against the
study.json committed beside it. Headline metrics: lm-eval's `acc_norm` for ARC-Challenge and
HellaSwag (what the Gemma model cards report), `acc` for MMLU. Layer bands are the analysis's
(Gemma-2-2B's early 0-8 / middle 9-17 / deep 18-25 for 26 layers, near-equal thirds
otherwise); "early" and "deep" claims compare the paper's bands with ours at the same relative
depth. LoRA numbers are read at the objective layer, as the paper reports one number per language.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Mapping

from xling_jax.runtime import io
from xling_jax.study.record import CARD_PREFIX, CARD_PROTOCOL, MODEL_CARD

HEADLINE_METRIC = {"arc": "acc_norm", "mmlu": "acc", "hellaswag": "acc_norm"}
TASK_NAMES = {"arc": "ARC-Challenge", "mmlu": "MMLU", "hellaswag": "HellaSwag"}
# arXiv 2507.18918 (Gemma-2-2B, Gemma Scope), as quoted in its abstract.
PAPER = {"early_gap_max": 26.27, "deep_gap_max": 19.89, "lora_gain": {"ml": 87.69, "hi": 86.32},
         "english_retention": 91.0}
FIGURES = "results"


def _f(value, spec: str = ".2f") -> str:
  return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else \
      format(value, spec)


def _ci(pair, spec: str = ".1f") -> str:
  return "" if not pair else f" [{_f(pair[0], spec)}, {_f(pair[1], spec)}]"


def _mean(values) -> float | None:
  values = [v for v in values if v is not None]
  return sum(values) / len(values) if values else None


def _minutes(seconds: float) -> str:
  return f"{seconds / 60:.1f} min"


def objective_index(lora: Mapping) -> int:
  return lora["layers"].index(lora["objective_layers"][0])


def headline(scores: Mapping, task: str, lang: str) -> tuple[float | None, float | None, int]:
  s = (scores.get(task) or {}).get(lang)
  if not s:
    return None, None, 0
  metric = HEADLINE_METRIC[task]
  return s[metric], s["stderr"][metric], s["n"]


def _band(record: Mapping, name: str) -> tuple[dict | None, list | None]:
  a = record["analysis"]
  return a["band_summary"].get(name), ((a["band_ci"] or {}).get(name) or {}).get("group_max")


def paper_rows(record: Mapping) -> list[tuple[str, str, str, str]]:
  """(claim, paper, ours, verdict) rows, every verdict computed from the numbers."""
  rows = []
  for band, key in (("early", "early_gap_max"), ("deep", "deep_gap_max")):
    summary, ci = _band(record, band)
    if summary is None:
      continue
    ours = summary["group_max"]
    lo = ci[0] if ci else ours
    verdict = ("agrees in direction (low-resource activation is lower)" if lo > 0 else
               "does not agree (the gap's interval reaches 0 or below)" if ours > 0 else
               "does not agree (low-resource activation is not lower)")
    size = ("; larger" if ours > PAPER[key] else "; smaller") if ours > 0 else ""
    rows.append((f"Low-resource activation vs English, {band} layers (max over "
                 f"{', '.join(record['analysis']['low_resource_group'])})",
                 f"up to {PAPER[key]:.2f}% lower", f"{ours:.2f}% lower{_ci(ci, '.2f')}",
                 verdict + size))
  for target, lora in record["lora"].items():
    i = objective_index(lora)
    gain = lora["gain_pct"][i]
    paper = PAPER["lora_gain"].get(target)
    verdict = ("n/a" if gain is None else "agrees in direction" if gain > 0 else "does not agree")
    if gain is not None and paper is not None and gain > 0:
      verdict += "; larger" if gain > paper else "; smaller"
    rows.append((f"Activation gain after LoRA, {target} (layer {lora['layers'][i]})",
                 "n/a (not reported)" if paper is None else f"+{paper:.2f}%",
                 f"{_f(gain, '+.2f')}%", verdict))
  for target, lora in record["lora"].items():
    i = objective_index(lora)
    kept = lora["retention_pct"][i]
    gap = None if kept is None else kept - PAPER["english_retention"]
    verdict = ("n/a" if gap is None else "agrees (within 5 points)" if abs(gap) <= 5 else
               f"differs: English activation rises by {kept - 100:.1f}%" if kept > 100 else
               "differs: ours keeps more of English" if gap > 0 else
               "differs: ours keeps less of English")
    rows.append((f"English activation retained, {target} adapter (layer {lora['layers'][i]})",
                 f"~{PAPER['english_retention']:.0f}%", f"{_f(kept, '.2f')}%", verdict))
  bench = record["benchmarks"]
  if bench:
    for target, scores in bench["lora"].items():
      for task in (t for t in ("arc", "mmlu") if t in scores):
        before, se_b, _ = headline(bench["base"], task, target)
        after, se_a, _ = headline(scores, task, target)
        if before is None or after is None:
          continue
        delta = 100 * (after - before)
        se = 100 * math.hypot(se_b or 0.0, se_a or 0.0)
        verdict = ("a gain" if delta > 2 * se else "a loss" if delta < -2 * se else
                   "no change beyond 2 standard errors")
        rows.append((f"{TASK_NAMES[task]} ({target}) after the {target} adapter",
                     "modest gains", f"{delta:+.1f} points (± {se:.1f})", verdict))
  return rows


def summary(record: Mapping) -> str:
  """Two sentences: the disparity, and what the adapters did (the README quotes them)."""
  a, ref = record["analysis"], record["analysis"]["reference"]
  early, _ = _band(record, "early")
  deep, _ = _band(record, "deep")
  model = "the toy model" if record["toy"] else record["checkpoint"]
  out = []
  if early and deep:
    out.append(
        f"On {model} the low-resource languages ({', '.join(a['low_resource_group'])}) "
        f"activate the SAEs trained on it {'less' if early['group_max'] > 0 else 'no less'} "
        f"than {ref}: at most {early['group_max']:.1f}% lower in the early layers and "
        f"{deep['group_max']:.1f}% in the deep ones (the paper, on Gemma-2-2B: "
        f"{PAPER['early_gap_max']}% and {PAPER['deep_gap_max']}%).")
  if record["lora"]:
    parts, kept = [], []
    for target, lora in record["lora"].items():
      i = objective_index(lora)
      parts.append(f"{_f(lora['gain_pct'][i], '+.1f')}% ({target})")
      kept.append(f"{_f(lora['retention_pct'][i], '.1f')}%")
    layer = next(iter(record["lora"].values()))["objective_layers"][0]
    sentence = (f"Activation-aware LoRA changes the target language's activation at layer "
                f"{layer} by {' and '.join(parts)}, while {ref}'s ends at {' and '.join(kept)} "
                "of its value before")
    moves = [row for row in paper_rows(record) if "after the" in row[0]]
    if moves:
      changed = [row for row in moves if row[3] != "no change beyond 2 standard errors"]
      sentence += ("; no benchmark score in the target language moves by more than two "
                   "standard errors" if not changed else
                   f"; {len(changed)} of {len(moves)} target-language benchmark scores move by "
                   "more than two standard errors")
    out.append(sentence + ".")
  return " ".join(out)


def render(record: Mapping) -> str:
  """RESULTS.md from the record alone."""
  a, s, intr = record["analysis"], record["settings"], record["intrinsic"]
  ref = a["reference"]
  lines = [f"# Results: {'TOY model (random weights), ' if record['toy'] else ''}"
           f"the study on {record['checkpoint'] or 'the toy model'}", ""]
  lines += [summary(record), "",
            "![gap heatmap](results/heatmap.png)", "",
            "Everything below is rendered by `bin.study` from `results/study.json`; "
            "`tests/test_study_page.py` checks that this page equals that rendering.", ""]

  lines += ["## How it was made", "", "```", record["command"], "```", "",
            f"Model: `{record['model']}` ({record['n_layers']} layers); devices: "
            f"{record['devices']}" + (f" on {record['machine']}" if record.get("machine") else "")
            + f". Run time: {_minutes(record['seconds'])} in all.", "",
            "| stage | minutes | command |", "|---|---|---|"]
  for name, timing in record["stages"].items():
    outside = " (outside the run time)" if name.startswith(CARD_PREFIX) else ""
    lines.append(f"| {name}{outside} | {_f(timing and timing['seconds'] / 60, '.1f')} | "
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
                 f"{cost['chars_per_token']:.2f} | {_f(bits.get('bits_per_char'), '.3f')} | "
                 f"{_f(bits.get('bits_per_sentence'), '.1f')} |")

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
                   f"{_f(r['target_l0'], 'g')} | {r['fvu']:.3f} | {r['l0']:.1f} | "
                   f"{r['dead_fraction']:.3f} | {r['dense_fraction']:.3f} |")
    lines += ["", _sae_quality(record)]

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
    cells = [_f(g, ".1f") + (_ci([ci["lo"][j], ci["hi"][j]]) if ci else "")
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
        f"{v[key]:.1f}" + _ci(((a["band_ci"] or {}).get(b) or {}).get(key))
        for b, v in a["band_summary"].items()) + " |")
  if a["top_overlap"]:
    lines += ["", f"Top-{a['top_k']} feature overlap with {ref} (share of a language's "
              f"{a['top_k']} most frequent features that are also among {ref}'s):", "",
              "| language | " + " | ".join(f"L{l}" for l in a["layers"]) + " |",
              "|---|" + "---|" * len(a["layers"])]
    for lang, overlaps in a["top_overlap"].items():
      if lang != ref:
        lines.append(f"| {lang} | " + " | ".join(_f(o, ".2f") for o in overlaps) + " |")

  lines += ["", "## Activation-aware LoRA", "",
            f"Held-out lines of the training corpus; gain = change of the target's activation, "
            f"retention = {ref}'s activation after as a share of before.", "",
            "| adapter | layer | gain % | " + f"{ref} retention % |", "|---|---|---|---|"]
  for target, lora in record["lora"].items():
    for j, layer in enumerate(lora["layers"]):
      mark = " (objective)" if layer in lora["objective_layers"] else ""
      lines.append(f"| {target} | {layer}{mark} | {_f(lora['gain_pct'][j], '+.2f')} | "
                   f"{_f(lora['retention_pct'][j], '.2f')} |")

  lines += ["", "## Benchmarks before and after each adapter", ""]
  lines += _bench_lines(record)

  lines += _card_lines(record)

  lines += ["", "## Beside the paper", "",
            "The paper (arXiv 2507.18918) studies Gemma-2-2B with Gemma Scope SAEs; this run, "
            "a far smaller model with SAEs trained here. Verdicts are computed from the "
            "numbers.", "", "| claim | paper | this run | verdict |", "|---|---|---|---|"]
  rows = paper_rows(record)
  lines += [f"| {c} | {p} | {o} | {v} |" for c, p, o, v in rows]
  lines += ["", "In plain words:", ""]
  lines += [f"- {line}" for line in plain_words(record, rows)]
  return "\n".join(lines) + "\n"


def plain_words(record: Mapping, rows) -> list[str]:
  """Where the run agrees with the paper, where not, and what carries the gap: sentences
  computed from the numbers."""
  a, ref = record["analysis"], record["analysis"]["reference"]
  out = []
  unresolved = "no change beyond 2 standard errors"
  agree = [c for c, _, _, v in rows if v.startswith("agrees")]
  differ = [f"{c} ({v.split(': ', 1)[-1] if v.startswith('differs') else v})"
            for c, _, _, v in rows if not v.startswith("agrees") and v != unresolved]
  open_ = [c for c, _, _, v in rows if v == unresolved]
  if agree:
    out.append("Agrees with the paper: " + "; ".join(agree) + ".")
  if differ:
    out.append("Does not match it: " + "; ".join(differ) + ".")
  if open_:
    out.append("Neither confirmed nor refuted (no change beyond two standard errors): "
               + "; ".join(open_) + ".")
  bands = a["band_summary"]
  carry = [l for l in a["low_resource_group"]
           if max(v["per_language"][l]["mean"] for v in bands.values()) > 10]
  close = [l for l in a["low_resource_group"] if l not in carry]
  if carry:
    line = (f"Within the low-resource group the gap is carried by {', '.join(carry)}, whose "
            "band means exceed 10%")
    if close:
      line += (f"; {', '.join(close)} {'stays' if len(close) == 1 else 'stay'} within 10% "
               f"of {ref} in every band's mean")
    bits = record["intrinsic"]["bits"]
    if bits and all(l in bits for l in (*carry, ref)):
      line += (f". The model also finds {', '.join(carry)} harder: "
               + ", ".join(f"{bits[l]['bits_per_sentence']:.0f}" for l in carry)
               + f" bits per sentence against {bits[ref]['bits_per_sentence']:.0f} for {ref}")
    out.append(line + ".")
  if record["saes"]["layers"]:
    worst = max(r["fvu"] for r in record["saes"]["layers"].values())
    out.append(f"The SAEs leave up to {100 * worst:.0f}% of a layer's variance unexplained "
               "(table above): the direction and ordering of the gaps are the finding; their "
               "sizes belong to these SAEs, not to Gemma Scope's.")
  bench = record["benchmarks"]
  if bench:
    n = min((s["n"] for per in bench["base"].values() for s in per.values()), default=0)
    out.append(f"With {n} items per benchmark and language, a standard error is about "
               f"{100 * math.sqrt(0.25 / max(n, 1)):.0f} points: these benchmark runs can show "
               "a large change, not a modest one.")
  return out


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


def _sae_quality(record: Mapping) -> str:
  layers = record["saes"]["layers"].values()
  fvu = _mean(r["fvu"] for r in layers)
  worst = max(r["fvu"] for r in layers)
  dead = _mean(r["dead_fraction"] for r in layers)
  if worst < 0.2:
    quality = ("They explain at least 80% of the residual variance at every layer, the range of "
               "published SAEs: their activation statistics describe features that carry most "
               "of the residual stream.")
  elif fvu < 0.4:
    quality = ("They explain most but not all of the residual variance: the gaps describe the "
               "directions these SAEs capture, a coarser dictionary than Gemma Scope's; signs "
               "and orderings between languages are what the comparison supports, not "
               "absolute sizes.")
  else:
    quality = ("They leave much of the residual variance unexplained, so the activation "
               "statistics describe a coarse, partly learned dictionary: read the gaps as "
               "indicative only, and compare directions rather than sizes with the paper.")
  retrained = ("" if record["saes"].get("brought") else
               " The bootstrap intervals hold these SAEs fixed: training them again (another "
               "seed, or another CPU's float rounding) moves the gaps by more than the "
               "intervals' width, so differences of a few points between layers or languages "
               "are within what the SAEs' training decides.")
  return (f"Mean FVU {fvu:.3f} (worst {worst:.3f}); mean dead fraction {dead:.3f}. " + quality
          + retrained)


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
  published = MODEL_CARD.get(record["checkpoint"] or "", {})
  lines = ["", "## English scoring beside the model card", "",
           "Our lm-eval-compatible scoring with the card's shot counts, few-shot examples "
           "drawn (seeded) from the evaluated split minus the item itself (lm-eval draws them "
           "from the train splits, which the data folder lacks). The card scored the bfloat16 "
           "release; these weights are the Q4_K_M GGUF dequantised, which can cost a few "
           "points.", "",
           "| benchmark | shots | items | acc | acc_norm | model card | minutes |",
           "|---|---|---|---|---|---|---|"]
  notes, distances = [], []
  for name, card in cards.items():
    for task, per_lang in card["scores"].items():
      s = per_lang["en"]
      value, shots = published.get(task), CARD_PROTOCOL.get(task, (None,))[0]
      items = (f"{s['n']}" + (f" (+{s['n_too_long']} too long)" if s.get("n_too_long") else "")
               + (f" of a {card['subsample']}-item subsample" if card["subsample"] else ""))
      pct = lambda m: ("n/a" if s[m] is None else
                       f"{100 * s[m]:.1f} ± {100 * (s['stderr'][m] or 0):.1f}")
      lines.append(
          f"| {TASK_NAMES[task]} | {card['num_fewshot']} | {items} | {pct('acc')} | "
          f"{pct('acc_norm')} | "
          f"{'n/a' if value is None else f'{value:.1f} ({shots}-shot)'} | "
          f"{card['seconds'] / 60:.1f} |")
      if value is not None and s["acc_norm"] is not None and s["stderr"]["acc_norm"]:
        apart = (100 * s["acc_norm"] - value) / (100 * s["stderr"]["acc_norm"])
        distances.append(abs(apart))
        notes.append(f"{TASK_NAMES[task]}: acc_norm {100 * s['acc_norm']:.1f} against the "
                     f"card's {value:.1f}, {abs(apart):.1f} standard errors "
                     f"{'above' if apart > 0 else 'below'} it"
                     + (f" on the first {card['limit']} items" if card["limit"] else "") + ".")
  if notes:
    lines += [""] + [f"- {n}" for n in notes]
    lines += ["- Within two standard errors the scoring agrees with the card; a larger gap "
              "would be a finding to explain, not a setting to tune." if
              max(distances) <= 2 else
              "- A gap beyond two standard errors is a finding to explain: the Q4_K_M "
              "quantisation, the few-shot pool, or the scoring."]
  return lines


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


def write(results_md: Path, record: Mapping, out: Path) -> list[Path]:
  """RESULTS.md at `results_md`; study.json and the figures under results/ beside it."""
  results_md = Path(results_md)
  figures = results_md.parent / FIGURES
  figures.mkdir(parents=True, exist_ok=True)
  written = []
  for name in ("heatmap.png", "layers.png"):
    if (Path(out) / "analysis" / name).exists():
      shutil.copyfile(Path(out) / "analysis" / name, figures / name)
      written.append(figures / name)
  for layer in record["saes"]["layers"]:
    src = Path(out) / "saes" / "reports" / f"layer_{layer}.png"
    if src.exists():
      shutil.copyfile(src, figures / f"sae_layer_{layer}.png")
      written.append(figures / f"sae_layer_{layer}.png")
  png = benchmarks_png(record)
  if png is not None:
    io.write_bytes(figures / "benchmarks.png", png)
    written.append(figures / "benchmarks.png")
  io.write_json(figures / "study.json", record)
  io.write_text(results_md, render(record))
  return [*written, figures / "study.json", results_md]
