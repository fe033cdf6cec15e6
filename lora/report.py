"""The before/after report of an activation-aware LoRA run: the paper's two headline numbers per
layer (the target's gain %, the reference's retention %), the gap closure (the target's code mass
after as a % of the reference's before: what the align term sets it to), the per-language
measurements (bits per character, residual norm, code mass), the last loss terms, and Markdown."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

from sae import random_saes

_NOT_TERMS = ("step", "lr", "steps_per_s")


def gain_pct(after: Sequence[float], before: Sequence[float]) -> list[float | None]:
  """Percent change per layer; None where the old value is 0 (no defined change)."""
  return [100.0 * (a - b) / b if b else None for a, b in zip(after, before)]


def retention_pct(after: Sequence[float], before: Sequence[float]) -> list[float | None]:
  """After as a percentage of before, per layer (100 = unchanged)."""
  return [100.0 * a / b if b else None for a, b in zip(after, before)]


def final_terms(log_path: str | Path, step: int) -> dict[str, float]:
  """The loss terms and gradient norm logged at `step`. The training log always holds the last
  step and is rewound with the checkpoints, so this is the same for a run that went straight
  through and for one killed after its final checkpoint and resumed (whose loop runs no step)."""
  path = Path(log_path)
  lines = path.read_text().splitlines() if path.exists() else []
  for line in reversed(lines):
    record = json.loads(line)
    if record.get("step") == step:
      return {k: v for k, v in record.items() if k not in _NOT_TERMS}
  raise FileNotFoundError(f"{path}: no logged step {step}, so the final loss terms are unknown "
                          "(was the training log deleted?)")


def fmt_pct(value) -> str:
  return "n/a" if value is None else f"{value:.1f}%"


def measured_markdown(report: Mapping) -> list[str]:
  """Bits per character, mean residual norm and code mass per measured language, before and
  after (the residual norm and code mass as their mean over the reported layers)."""
  measured = report.get("measured")
  if not measured:
    return []
  lines = ["", f"Measured on {measured['sentences']} sentences of {measured['text']} "
           "(residual norm and code mass: mean over the reported layers):", "",
           "| language | bits/char before | after | resid norm before | after | code mass before "
           "| after |", "|---|---|---|---|---|---|---|"]
  mean = lambda values: sum(values) / len(values)
  for lang in measured["languages"]:
    b, r, c = report["bits_per_char"], report["resid_norm"], report["code_mass"]
    lines.append(f"| {lang} | {b['before'][lang]:.4f} | {b['after'][lang]:.4f} | "
                 f"{mean(r['before'][lang]):.4g} | {mean(r['after'][lang]):.4g} | "
                 f"{mean(c['before'][lang]):.4g} | {mean(c['after'][lang]):.4g} |")
  return lines


def markdown(report: Mapping, notes: Sequence[str] = ()) -> str:
  t, r = report["target_lang"], report["ref_lang"]
  prefix = random_saes.title_prefix(report["toy"], report.get("random_saes", False))
  lines = [f"# {prefix}activation-aware LoRA, {t} -> {r}", ""]
  lines += [f"> {n}" for n in notes] + ([""] if notes else [])
  objective = report.get("objective") or {}
  lines += [f"Held-out lines: {report['heldout_lines']}; objective layers "
            f"{report['objective_layers']}; {report['steps']} steps.", ""]
  if "gap_closure_pct" in report:
    closure = ", ".join(f"L{l} {fmt_pct(v)}" for l, v in zip(report["layers"],
                                                            report["gap_closure_pct"]))
    lines += [f"Gap closure ({t} after as % of {r} before): {closure}."
              + (f" The align term trains {t}'s code mass at the objective layers toward {r}'s "
                 "value before training, so closure near 100% there is the objective's set "
                 "point, not a measured effect: read it beside the control adapters and the "
                 "per-language measurements below." if objective.get("w_align", 1) else
                 f" This adapter has no align term (weights align {objective.get('w_align')}, "
                 f"retain {objective.get('w_retain')}, lm {objective.get('w_lm')}, norm "
                 f"{objective.get('w_norm')}): a control."), ""]
  lines += [
            f"| layer | {t} before | {t} after | {t} gain % | {r} before | {r} after | "
            f"{r} retention % |", "|---|---|---|---|---|---|---|"]
  fmt = lambda v, spec: "n/a" if v is None else format(v, spec)
  for i, layer in enumerate(report["layers"]):
    lines.append(
        f"| {layer} | {report['before'][t][i]:.4g} | {report['after'][t][i]:.4g} | "
        f"{fmt(report['gain_pct'][t][i], '+.2f')} | {report['before'][r][i]:.4g} | "
        f"{report['after'][r][i]:.4g} | {fmt(report['retention_pct'][r][i], '.2f')} |")
  lines += measured_markdown(report)
  bench = report.get("benchmarks")
  if bench:
    lines += ["", "| task | lang | metric | before | after |", "|---|---|---|---|---|"]
    for task, by_lang in bench["after"].items():
      for lang, scores in by_lang.items():
        for metric in ("acc", "acc_norm"):
          before = bench["before"].get(task, {}).get(lang, {}).get(metric)
          after = scores.get(metric)
          if before is not None and after is not None:
            lines.append(f"| {task} | {lang} | {metric} | {before:.4f} | {after:.4f} |")
  return "\n".join(lines) + "\n"
