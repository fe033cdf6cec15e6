"""The run beside the paper and the model card (`paper`): every verdict and judging sentence of
RESULTS.md, computed from the study's record (`record.collect`).

Headline metrics: lm-eval's `acc_norm` for ARC-Challenge and HellaSwag (what the Gemma model
cards report), `acc` for MMLU. Layer bands are the analysis's (the paper's for Gemma-2-2B's 26
layers, near-equal thirds otherwise); "early" and "deep" claims compare the paper's bands with
ours at the same relative depth. LoRA numbers are read at the objective layer, as the paper
reports one number per language.
"""
from __future__ import annotations

import math
from typing import Mapping

from xling_jax.study.paper import MODEL, MODEL_CARD, PAPER, SAES

HEADLINE_METRIC = {"arc": "acc_norm", "mmlu": "acc", "hellaswag": "acc_norm"}
TASK_NAMES = {"arc": "ARC-Challenge", "mmlu": "MMLU", "hellaswag": "HellaSwag"}
UNRESOLVED = "no change beyond 2 standard errors"


def fmt(value, spec: str = ".2f") -> str:
  """`value` formatted, "n/a" for a missing or NaN one."""
  return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else \
      format(value, spec)


def interval(pair, spec: str = ".1f") -> str:
  """" [lo, hi]", or nothing without an interval."""
  return "" if not pair else f" [{fmt(pair[0], spec)}, {fmt(pair[1], spec)}]"


def _mean(values) -> float | None:
  values = [v for v in values if v is not None]
  return sum(values) / len(values) if values else None


def objective_index(lora: Mapping) -> int:
  return lora["layers"].index(lora["objective_layers"][0])


def headline(scores: Mapping, task: str, lang: str) -> tuple[float | None, float | None, int]:
  """(headline metric, its standard error, items) of `task` in `lang`; (None, None, 0) when
  it was not scored."""
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
                 f"up to {PAPER[key]:.2f}% lower", f"{ours:.2f}% lower{interval(ci, '.2f')}",
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
                 f"{fmt(gain, '+.2f')}%", verdict))
  for target, lora in record["lora"].items():
    i = objective_index(lora)
    kept = lora["retention_pct"][i]
    gap = None if kept is None else kept - PAPER["english_retention"]
    verdict = ("n/a" if gap is None else "agrees (within 5 points)" if abs(gap) <= 5 else
               f"differs: English activation rises by {kept - 100:.1f}%" if kept > 100 else
               "differs: ours keeps more of English" if gap > 0 else
               "differs: ours keeps less of English")
    rows.append((f"English activation retained, {target} adapter (layer {lora['layers'][i]})",
                 f"~{PAPER['english_retention']:.0f}%", f"{fmt(kept, '.2f')}%", verdict))
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
        verdict = "a gain" if delta > 2 * se else "a loss" if delta < -2 * se else UNRESOLVED
        rows.append((f"{TASK_NAMES[task]} ({target}) after the {target} adapter",
                     PAPER["benchmarks"], f"{delta:+.1f} points (± {se:.1f})", verdict))
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
        f"{deep['group_max']:.1f}% in the deep ones (the paper, on {MODEL}: "
        f"{PAPER['early_gap_max']}% and {PAPER['deep_gap_max']}%).")
  if record["lora"]:
    parts, kept = [], []
    for target, lora in record["lora"].items():
      i = objective_index(lora)
      parts.append(f"{fmt(lora['gain_pct'][i], '+.1f')}% ({target})")
      kept.append(f"{fmt(lora['retention_pct'][i], '.1f')}%")
    layer = next(iter(record["lora"].values()))["objective_layers"][0]
    sentence = (f"Activation-aware LoRA changes the target language's activation at layer "
                f"{layer} by {' and '.join(parts)}, while {ref}'s ends at {' and '.join(kept)} "
                "of its value before")
    moves = [row for row in paper_rows(record) if "after the" in row[0]]
    if moves:
      changed = [row for row in moves if row[3] != UNRESOLVED]
      sentence += ("; no benchmark score in the target language moves by more than two "
                   "standard errors" if not changed else
                   f"; {len(changed)} of {len(moves)} target-language benchmark scores move by "
                   "more than two standard errors")
    out.append(sentence + ".")
  return " ".join(out)


def plain_words(record: Mapping, rows) -> list[str]:
  """Where the run agrees with the paper, where not, and what carries the gap: sentences
  computed from the numbers."""
  a, ref = record["analysis"], record["analysis"]["reference"]
  out = []
  agree = [c for c, _, _, v in rows if v.startswith("agrees")]
  differ = [f"{c} ({v.split(': ', 1)[-1] if v.startswith('differs') else v})"
            for c, _, _, v in rows if not v.startswith("agrees") and v != UNRESOLVED]
  open_ = [c for c, _, _, v in rows if v == UNRESOLVED]
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
               f"sizes belong to these SAEs, not to {SAES}'s.")
  bench = record["benchmarks"]
  if bench:
    n = min((s["n"] for per in bench["base"].values() for s in per.values()), default=0)
    out.append(f"With {n} items per benchmark and language, a standard error is about "
               f"{100 * math.sqrt(0.25 / max(n, 1)):.0f} points: these benchmark runs can show "
               "a large change, not a modest one.")
  return out


def sae_quality(record: Mapping) -> str:
  """What the trained SAEs' FVU and dead features allow the gaps to say."""
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
               f"directions these SAEs capture, a coarser dictionary than {SAES}'s; signs "
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


def card_notes(record: Mapping) -> list[str]:
  """Our English scores beside the model card's (`paper.MODEL_CARD`) in standard errors, and
  whether they agree; nothing without a published number to compare."""
  published = MODEL_CARD.get(record["checkpoint"] or "", {})
  notes, distances = [], []
  for card in (record.get("card") or {}).values():
    for task, per_lang in card["scores"].items():
      s, value = per_lang["en"], published.get(task)
      if value is not None and s["acc_norm"] is not None and s["stderr"]["acc_norm"]:
        apart = (100 * s["acc_norm"] - value) / (100 * s["stderr"]["acc_norm"])
        distances.append(abs(apart))
        notes.append(f"{TASK_NAMES[task]}: acc_norm {100 * s['acc_norm']:.1f} against the "
                     f"card's {value:.1f}, {abs(apart):.1f} standard errors "
                     f"{'above' if apart > 0 else 'below'} it"
                     + (f" on the first {card['limit']} items" if card["limit"] else "") + ".")
  if not notes:
    return []
  return notes + ["Within two standard errors the scoring agrees with the card; a larger gap "
                  "would be a finding to explain, not a setting to tune." if
                  max(distances) <= 2 else
                  "A gap beyond two standard errors is a finding to explain: the Q4_K_M "
                  "quantisation, the few-shot pool, or the scoring."]
