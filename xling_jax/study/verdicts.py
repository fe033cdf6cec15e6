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

import numpy as np

from xling_jax.analysis import disparity
from xling_jax.study.paper import MODEL, MODEL_CARD, PAPER, SAES

HEADLINE_METRIC = {"arc": "acc_norm", "mmlu": "acc", "hellaswag": "acc_norm"}
TASK_NAMES = {"arc": "ARC-Challenge", "mmlu": "MMLU", "hellaswag": "HellaSwag"}
UNRESOLVED = "no change beyond its 95% paired interval"


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


def band_means(record: Mapping, metric: str) -> dict[str, dict[str, float]]:
  """{band: {lang: mean of `metric`'s gap over the band's analysed layers, "group": the mean of
  those over the low-resource group}} (`disparity.band_summary` of that metric; empty when the
  run did not compute it)."""
  a = record["analysis"]
  gaps = (a.get("gap_by_metric") or {}).get(metric)
  if not gaps:
    return {}
  bands = {band: tuple(s["layers"]) for band, s in a["band_summary"].items()}
  arrays = {lang: np.asarray([np.nan if v is None else v for v in g], np.float64)
            for lang, g in gaps.items()}
  summaries = disparity.band_summary(arrays, bands, a["low_resource_group"], a["layers"])
  return {band: {**{lang: v["mean"] for lang, v in s["per_language"].items()},
                 "group": s["group_mean"]} for band, s in summaries.items()}


# A low-resource cell (language x analysed layer) is SAE-specific when its SAE gap exceeds its
# residual-norm gap beyond the bootstrap interval of the difference in every SAE seed.
SPECIFIC_SHARE = 0.5  # a band's claim survives its norm control when this share of cells does
# An adapter's gain survives its norm-objective control unless that control reaches this share
# of it.
CONTROL_SHARE = 0.5
# Nats per token an SAE's spliced-in reconstruction may add and still count as faithful (a
# residual SAE of Gemma-2B released with its numbers adds 0.085: 2.647 -> 2.732).
SMALL_SPLICE_COST = 0.5


def at_objective(lora: Mapping, key: str):
  """An adapter report's per-layer `key` (gain_pct, gap_closure_pct, ...) at its objective
  layer; None when the report lacks it."""
  values = lora.get(key)
  return None if not values else values[objective_index(lora)]


def norm_survival(record: Mapping) -> dict[str, tuple[int, int]]:
  """{band: (low-resource cells whose SAE gap exceeds the norm gap in every seed, cells)}."""
  a, seeds = record["analysis"], record.get("seeds") or {}
  exceeds = seeds.get("exceeds_norm")
  if not exceeds:
    return {}
  n = seeds["n"]
  out = {}
  for band, summary in a["band_summary"].items():
    cols = [a["layers"].index(l) for l in summary["analysed_layers"]]
    cells = [(l, c) for l in a["low_resource_group"] if l in exceeds for c in cols]
    out[band] = (sum(exceeds[l][c] == n for l, c in cells), len(cells))
  return out


def sign_flips(record: Mapping) -> tuple[int, int]:
  """(cells where the per-sentence gap has the other sign than the per-token one, cells), over
  every language but the reference and every analysed layer."""
  by = record["analysis"].get("gap_by_metric") or {}
  if "sentence_mass" not in by:
    return 0, 0
  cells = [(t, s) for lang, g in by["activation"].items()
           for t, s in zip(g, by["sentence_mass"][lang]) if t is not None and s is not None]
  return sum((t > 0) != (s > 0) for t, s in cells), len(cells)


def _survives(record: Mapping, band: str) -> str:
  surv = norm_survival(record).get(band)
  if not surv or not surv[1]:
    return "n/a (no norm control)"
  k, n = surv
  seeds = record["seeds"]["n"]
  where = f"{k} of {n} low-resource cells beyond the norm in all {seeds} SAE seed(s)"
  return (f"yes: {where}" if k >= SPECIFIC_SHARE * n else
          f"no, mostly a residual-norm effect: {where}")


def paper_rows(record: Mapping) -> list[tuple[str, str, str, str, str]]:
  """(claim, paper, ours, verdict beside the paper, survives its control) rows, every verdict
  computed from the numbers. The paper's "up to" figures are compared with our band means
  (its formula is not published; a maximum over languages and layers is an extreme
  statistic), the maxima shown beside them."""
  rows = []
  means = band_means(record, "activation")
  for band, key in (("early", "early_gap_max"), ("deep", "deep_gap_max")):
    summary, ci = _band(record, band)
    if summary is None:
      continue
    ours = means.get(band, {}).get("group", summary["group_mean"])
    per_seed = (record.get("seeds") or {}).get("band_group", {}).get(band, {})
    seed = [v for v in per_seed.get("group_mean") or [] if v is not None]
    spread = (f" (SAE seeds {min(seed):.1f}..{max(seed):.1f})" if len(seed) > 1 else "")
    # The lowest 95% bound over seeds: sentence sampling and SAE retraining both.
    bounds = [ci[0] for ci in per_seed.get("group_mean_ci") or [] if ci and ci[0] is not None]
    lo = min(bounds) if bounds else min(seed) if seed else ours
    verdict = ("agrees in direction (low-resource activation is lower)" if lo > 0 else
               "does not agree (its interval reaches 0 or below)" if ours > 0 else
               "does not agree (low-resource activation is not lower)")
    rows.append((f"Low-resource activation vs English, {band} layers (group mean over "
                 f"{', '.join(record['analysis']['low_resource_group'])}; max beside it)",
                 f"up to {PAPER[key]:.2f}% lower",
                 f"{ours:.1f}% lower{spread}; max {summary['group_max']:.1f}"
                 f"{interval(ci, '.1f')}", verdict, _survives(record, band)))
  for target, lora in record["lora"].items():
    i = objective_index(lora)
    gain, closure = at_objective(lora, "gain_pct"), at_objective(lora, "gap_closure_pct")
    paper = PAPER["lora_gain"].get(target)
    norm = ((record.get("controls") or {}).get(target) or {}).get("norm")
    norm_gain = None if not norm else at_objective(norm, "gain_pct")
    verdict = ("n/a" if gain is None else "agrees in direction (guaranteed by the objective)"
               if gain > 0 else "does not agree")
    survives = ("n/a (no norm control)" if norm_gain is None or gain is None else
                f"no: the norm-objective control gains {norm_gain:+.1f}%" if
                norm_gain >= CONTROL_SHARE * gain else
                f"yes: the norm-objective control gains only {norm_gain:+.1f}%")
    rows.append((f"Activation gain after LoRA, {target} (layer {lora['layers'][i]})",
                 "n/a (not reported)" if paper is None else f"+{paper:.2f}%",
                 f"{fmt(gain, '+.1f')}% (gap closure {fmt(closure, '.0f')}%: the set point)",
                 verdict, survives))
  for target, lora in record["lora"].items():
    i = objective_index(lora)
    kept = lora["retention_pct"][i]
    gap = None if kept is None else kept - PAPER["english_retention"]
    verdict = ("n/a" if gap is None else "agrees (within 5 points)" if abs(gap) <= 5 else
               f"differs: English activation rises by {kept - 100:.1f}%" if kept > 100 else
               "differs: ours keeps more of English" if gap > 0 else
               "differs: ours keeps less of English")
    rows.append((f"English activation retained, {target} adapter (layer {lora['layers'][i]})",
                 f"~{PAPER['english_retention']:.0f}%", f"{fmt(kept, '.1f')}%", verdict, "n/a"))
  bench = record["benchmarks"]
  if bench:
    for name, per_lang in (bench.get("paired") or {}).items():
      adapter = (bench.get("adapters") or {}).get(name) or {}
      target = adapter.get("target")
      if target is None or adapter.get("control"):
        continue  # the controls' benchmarks are in the table, not the paper comparison
      c = per_lang.get(target) or {}
      if not c.get("n"):
        continue
      rows.append((f"ARC-Challenge ({target}) after the {target} adapter, paired",
                   PAPER["benchmarks"], _paired_text(c), _paired_verdict(c), "n/a"))
  return rows


def points(fraction) -> str:
  """A fraction as signed percentage points, "n/a" when missing."""
  return fmt(None if fraction is None else 100 * fraction, "+.1f")


def _paired_text(c: Mapping) -> str:
  lo, hi = c["diff_ci"]
  return (f"{points(c['diff'])} points [{points(lo)}, {points(hi)}], n {c['n']}, "
          f"detectable {fmt(None if c['mde'] is None else 100 * c['mde'], '.1f')}")


def _paired_verdict(c: Mapping) -> str:
  lo, hi = c["diff_ci"]
  change = ("a gain" if lo is not None and lo > 0 else
            "a loss" if hi is not None and hi < 0 else None)
  mde = "" if c["mde"] is None else f": smaller than the detectable {100 * c['mde']:.1f} points"
  return f"{change} (McNemar p {c['mcnemar']['p']:.2g})" if change else UNRESOLVED + mde


def summary(record: Mapping) -> str:
  """What the run found and what survives its controls, in a few sentences (the README quotes
  them)."""
  a, ref = record["analysis"], record["analysis"]["reference"]
  model = "the toy model" if record["toy"] else record["checkpoint"]
  means, norm = band_means(record, "activation"), band_means(record, "resid_norm")
  out = []
  if means:
    bands = ", ".join(f"{b} {v['group']:.1f}%" for b, v in means.items())
    lower = all(v["group"] > 0 for v in means.values())
    out.append(f"On {model} the low-resource languages ({', '.join(a['low_resource_group'])}) "
               f"carry {'less' if lower else 'not consistently less'} SAE code mass per token "
               f"than {ref}: band means of the gap {bands} (positive = lower than {ref}; the "
               f"paper, on {MODEL}: up to {PAPER['early_gap_max']}% early and "
               f"{PAPER['deep_gap_max']}% deep).")
    if norm:
      out.append("The plain residual norm, without any SAE, gives " + ", ".join(
          f"{v['group']:.1f}%" for v in norm.values()) + " in the same bands.")
    surv = norm_survival(record)
    if surv:
      k, n = (sum(v[0] for v in surv.values()), sum(v[1] for v in surv.values()))
      out.append(f"{k} of {n} low-resource cells (language x layer) exceed their norm control "
                 f"in all {record['seeds']['n']} SAE seeds: the disparity is "
                 + ("mostly a residual-norm effect, not an SAE-feature one." if
                    k < SPECIFIC_SHARE * n else "in good part beyond the residual norm."))
    flips, cells = sign_flips(record)
    if cells:
      out.append(f"Per sentence (same content, no division by token count) the sign of the "
                 f"gap flips in {flips} of {cells} cells.")
  if record["lora"]:
    parts = []
    for target, lora in record["lora"].items():
      norm_c = ((record.get("controls") or {}).get(target) or {}).get("norm")
      part = f"{target} {fmt(at_objective(lora, 'gap_closure_pct'), '.0f')}%"
      if norm_c:
        part += (f" (the norm-objective control: "
                 f"{fmt(at_objective(norm_c, 'gap_closure_pct'), '.0f')}%)")
      parts.append(part)
    layer = next(iter(record["lora"].values()))["objective_layers"][0]
    sentence = (f"Activation-aware LoRA brings the target's code mass at layer {layer} to "
                f"{', '.join(parts)} of {ref}'s: the objective's set point")
    bits = _bits_change(record)
    if bits:
      sentence += "; " + bits
    out.append(sentence + ".")
  bench = record["benchmarks"]
  if bench and bench.get("paired"):
    cs = [c for per in bench["paired"].values() for c in per.values() if c.get("n")]
    moved = [c for c in cs if not _paired_verdict(c).startswith(UNRESOLVED)]
    mdes = [100 * c["mde"] for c in cs if c["mde"] is not None]
    if cs:
      out.append(f"{len(moved)} of {len(cs)} paired benchmark comparisons after an adapter "
                 "move beyond their 95% interval"
                 + (f" (detectable changes {min(mdes):.0f}-{max(mdes):.0f} points)." if mdes
                    else "."))
  return " ".join(out)


def _bits_change(record: Mapping) -> str:
  """How each adapter (and its lm control) moved its target's bits per character."""
  parts = []
  for target, lora in record["lora"].items():
    b = lora.get("bits_per_char")
    if not b:
      continue
    text = f"{target} bits per character {b['before'][target]:.3f} -> {b['after'][target]:.3f}"
    lm = ((record.get("controls") or {}).get(target) or {}).get("lm")
    if lm and lm.get("bits_per_char"):
      text += f" (the lm control: -> {lm['bits_per_char']['after'][target]:.3f})"
    parts.append(text)
  return "; ".join(parts)


def plain_words(record: Mapping, rows) -> list[str]:
  """Where the run agrees with the paper, what survives its controls, and what carries the
  gap: sentences computed from the numbers."""
  a, ref = record["analysis"], record["analysis"]["reference"]
  out = []
  agree = [r[0] for r in rows if r[3].startswith("agrees")]
  differ = [f"{r[0]} ({r[3].split(': ', 1)[-1] if r[3].startswith('differs') else r[3]})"
            for r in rows if not r[3].startswith("agrees") and not r[3].startswith(UNRESOLVED)]
  open_ = [r[0] for r in rows if r[3].startswith(UNRESOLVED)]
  survive = [r[0] for r in rows if r[4].startswith("yes")]
  fall = [r[0] for r in rows if r[4].startswith("no")]
  if agree:
    out.append("Agrees with the paper in direction: " + "; ".join(agree) + ".")
  if differ:
    out.append("Does not match it: " + "; ".join(differ) + ".")
  if fall:
    out.append("Does not survive its control: " + "; ".join(fall) + ".")
  if survive:
    out.append("Survives its control: " + "; ".join(survive) + ".")
  if open_:
    out.append("Neither confirmed nor refuted (within what the paired test can detect): "
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
  null = a.get("top_overlap_null")
  if null and a["top_overlap"]:
    mean_null = _mean(null)
    others = [_mean(v) for lang, v in a["top_overlap"].items() if lang != ref]
    out.append(f"Top-{a['top_k']} feature overlap with {ref}: {min(others):.2f}-"
               f"{max(others):.2f} on average over layers, against {mean_null:.2f} between two "
               f"halves of {ref} itself (the null, on different sentences and half as many).")
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
  seeds = (record.get("seeds") or {}).get("n", 1)
  retrained = ("" if record["saes"].get("brought") else
               f" The bootstrap intervals hold one training of the SAEs fixed; the {seeds} SAE "
               "seeds show how far retraining moves the gaps (the seed table), and the "
               "intervals that span every seed's cover both." if seeds > 1 else
               " The bootstrap intervals hold these SAEs fixed: retraining them moves the gaps "
               "by more than the intervals' width.")
  return (f"Mean FVU {fvu:.3f} (worst {worst:.3f}); mean dead fraction {dead:.3f}. " + quality
          + _spliced(record) + retrained)


def _spliced(record: Mapping) -> str:
  """What splicing the reconstructions into the model costs, from the analysis's quality pass
  (nothing when it did not measure the LM loss)."""
  q = record["analysis"].get("sae_quality") or {}
  deltas = [d for per_layer in (q.get("delta_lm_loss") or {}).values() for d in per_layer
            if d is not None]
  if not deltas:
    return ""
  clean = [c for c in (q.get("clean_lm_loss") or {}).values() if c is not None]
  verdict = ("a small cost: the codes carry what the model computes"
             if max(deltas) < SMALL_SPLICE_COST else
             "the model loses much of what it computes there, so the codes are a lossy "
             "summary of the residual stream and the gaps compare those summaries")
  return (f" Spliced into the model in place of a layer's residual, their reconstructions "
          f"raise the next-token loss by {min(deltas):.2f}-{max(deltas):.2f} nats per token "
          f"(clean: {min(clean):.2f}-{max(clean):.2f}): {verdict}.")


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
