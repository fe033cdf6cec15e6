"""python -m bin.evaluate: ARC-Challenge, MMLU and HellaSwag accuracy per language, lm-eval rules.

Scores follow lm-evaluation-harness 0.4.13 (prompts, tokenisation, acc / acc_norm), plus acc_bytes;
each item's shared context is run once, not once per choice. Without --checkpoint it scores the toy
model with random weights and says so everywhere. For Gemma-2-2B on the study's data:

  python -m bin.evaluate --platform=gpu --checkpoint=/models/gemma-2-2b \\
      --data_dir=../shared/data/benchmarks --tasks=arc,mmlu,hellaswag --num_fewshot=0 --out=out/eval

Writes to --out: scores.json (task -> lang -> {acc, acc_norm, acc_bytes, n, stderr, n_too_long}),
scores.csv, items.jsonl (one record per scored item), scores.md (task x language tables) and
run.json (flags, model, missing task/language combinations, items skipped as too long).
"""
from __future__ import annotations

import csv
import json
import os
import sys
import time
from pathlib import Path

from absl import app, flags

from bin import common

FLAGS = flags.FLAGS
common.define_platform_flags()
common.define_model_flags()
flags.adopt_module_key_flags(common)  # --help lists the shared platform and model flags too
flags.DEFINE_list("tasks", ["arc", "mmlu", "hellaswag"], "Tasks: any of arc, mmlu, hellaswag.")
flags.DEFINE_list("langs", ["en", "zh", "ru", "es", "it", "id", "ca", "mr", "ml", "hi"],
                  "Languages (ISO 639-1). English uses lm-eval's arc_challenge / mmlu / hellaswag "
                  "prompts, the others Okapi's arc_{lang} / m_mmlu_{lang} / hellaswag_{lang}.")
flags.DEFINE_enum("source", "dir", ["dir", "hf"],
                  "Where items come from: dir = --data_dir; hf = the HF hub (allenai/ai2_arc, "
                  "cais/mmlu, Rowan/hellaswag, alexandrainst/m_*; needs network).")
flags.DEFINE_string("data_dir", None,
                    "A folder laid out like shared/data/benchmarks (arc_challenge/, mmlu/, "
                    "mmlu_dev/, hellaswag/ with {lang}.jsonl). Required with --source=dir.")
flags.DEFINE_bool("common_ids", False,
                  "Score only the items present in every language (each folder's common_ids.txt).")
flags.DEFINE_integer("num_fewshot", 0,
                     "Shots per prompt (lm-eval conventions: ARC 25, HellaSwag 10, MMLU 5). MMLU "
                     "takes the first N of its dev split; ARC and HellaSwag sample (seeded) from "
                     "the hub's train split, or, from --data_dir, from the evaluated items minus "
                     "the item itself.")
flags.DEFINE_integer("fewshot_seed", 1234, "Seed of the few-shot sampler (lm-eval's default).")
flags.DEFINE_integer("limit", None, "Score only the first N items of each task and language.")
flags.DEFINE_string("lora", None, "A PEFT LoRA adapter directory applied to the model.")
flags.DEFINE_integer("batch_size", 8, "Items per batch (one packed row per item).")
flags.DEFINE_integer("max_length", None,
                     "Longest input in tokens; longer items are skipped and counted, never cut. "
                     "Default: the model's max_seq_len.")
flags.DEFINE_string("out", "eval_out", "Output directory.")
flags.DEFINE_bool("progress", True, "Show progress (items/s, ETA) on stderr.")

METRICS = ("acc", "acc_norm", "acc_bytes")


def _load_task(task: str, lang: str):
  from xling_jax import benchmark_items
  if FLAGS.source == "hf":
    return benchmark_items.load_hub(task, lang)
  return benchmark_items.load_dir(FLAGS.data_dir, task, lang, common_ids=FLAGS.common_ids)


def _load_adapter_hook(config):
  """The --lora adapter as the model's projection hook (None without --lora)."""
  if not FLAGS.lora:
    return None
  from lora import peft_io  # only runs that ask for an adapter need the LoRA package
  from lora.lora import project_hook
  return project_hook(peft_io.load_peft(FLAGS.lora, config))


def collect_prompts() -> tuple[dict[tuple[str, str], list], list[dict]]:
  """Prompts per (task, lang), and the combinations with no data. Runs before the model loads,
  so a bad data file fails in seconds."""
  from xling_jax import benchmark_items, prompts

  groups: dict[tuple[str, str], list] = {}
  missing: list[dict] = []
  for task in FLAGS.tasks:
    for lang in FLAGS.langs:
      try:
        data = _load_task(task, lang)
      except benchmark_items.MissingData as e:
        missing.append({"task": task, "lang": lang, "reason": e.reason})
        print(f"{task}/{lang}: no data ({e.reason})", file=sys.stderr)
        continue
      groups[task, lang] = prompts.build_prompts(data, FLAGS.num_fewshot, limit=FLAGS.limit,
                                                 seed=FLAGS.fewshot_seed)
  return groups, missing


def evaluate(setup, hook, groups) -> tuple[dict, list[dict], list[dict]]:
  """Score every group: (scores, item records, too-long items).

  All items of the run are scored in one pass, so batches stay full and lengths from every task
  and language share the few compiled shapes.
  """
  from xling_jax import scoring
  from xling_jax.progress import Progress

  max_len = FLAGS.max_length or setup.config.max_seq_len
  all_prompts = [p for group in groups.values() for p in group]
  encoded = scoring.encode_prompts(setup.tokenizer, all_prompts)
  bar = Progress(len(encoded), "scoring", unit="items", enabled=FLAGS.progress)
  result = scoring.score(setup.params, setup.config, encoded, batch_size=FLAGS.batch_size,
                         max_len=max_len, hook=hook, mesh=setup.mesh,
                         on_batch=bar.update)
  too_long = [{"task": all_prompts[i].item.task, "lang": all_prompts[i].item.lang,
               "id": all_prompts[i].item.id, "input_tokens": encoded[i].max_input_len,
               "max_length": max_len} for i in result.too_long]
  if too_long:
    print(f"{len(too_long)} items longer than {max_len} tokens were skipped and counted "
          "(n_too_long in scores.json, listed in run.json)", file=sys.stderr)
  records = [scoring.item_record(p, lls)
             for p, lls in zip(all_prompts, result.loglikelihoods) if lls is not None]
  scores: dict = {}
  for task, lang in groups:
    mine = [r for r in records if r["task"] == task and r["lang"] == lang]
    n_long = sum(1 for t in too_long if t["task"] == task and t["lang"] == lang)
    scores.setdefault(task, {})[lang] = dict(scoring.aggregate(mine), n_too_long=n_long)
  return scores, records, too_long


def _fmt(value, stderr) -> str:
  if value is None:
    return "–"
  return f"{value:.3f}" if stderr is None else f"{value:.3f} ± {stderr:.3f}"


def _count(score: dict | None) -> str:
  if score is None:
    return "no data"
  return str(score["n"]) + (f" (+{score['n_too_long']} too long)" if score["n_too_long"] else "")


def markdown(scores: dict, missing: list[dict], too_long: list[dict], title: str,
             notes: list[str]) -> str:
  langs = [l for l in FLAGS.langs if any(l in per_lang for per_lang in scores.values())]
  lines = [f"# {title}", ""] + [f"**{n}**" for n in notes] + ([""] if notes else [])
  for metric in METRICS:
    lines += [f"## {metric} (± standard error)", "",
              "| task | " + " | ".join(langs) + " |", "|---|" + "---|" * len(langs)]
    for task, per_lang in scores.items():
      cells = [_fmt(per_lang[l][metric], per_lang[l]["stderr"][metric]) if l in per_lang
               else "no data" for l in langs]
      lines.append(f"| {task} | " + " | ".join(cells) + " |")
    lines.append("")
  lines += ["## items scored", "", "| task | " + " | ".join(langs) + " |",
            "|---|" + "---|" * len(langs)]
  for task, per_lang in scores.items():
    lines.append(f"| {task} | " + " | ".join(_count(per_lang.get(l)) for l in langs) + " |")
  lines.append("")
  if missing:
    lines += ["## no data", ""]
    lines += [f"- {m['task']}/{m['lang']}: {m['reason']}" for m in missing] + [""]
  if too_long:
    lines += [f"## skipped: {len(too_long)} items longer than {too_long[0]['max_length']} tokens",
              "", "Not scored and not cut; each is listed in run.json.", ""]
  return "\n".join(lines)


def _write_json(path: Path, value) -> None:
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(value, indent=1, ensure_ascii=False), encoding="utf-8")
  os.replace(tmp, path)


def write_outputs(out: Path, scores: dict, records: list[dict], run: dict, md: str) -> None:
  out.mkdir(parents=True, exist_ok=True)
  _write_json(out / "scores.json", scores)
  _write_json(out / "run.json", run)
  with open(out / "items.jsonl", "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
  with open(out / "scores.csv", "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["task", "lang", "n", "n_too_long"] +
                    [c for m in METRICS for c in (m, f"{m}_stderr")])
    for task, per_lang in scores.items():
      for lang, s in per_lang.items():
        writer.writerow([task, lang, s["n"], s["n_too_long"]] +
                        [c for m in METRICS for c in (s[m], s["stderr"][m])])
  (out / "scores.md").write_text(md, encoding="utf-8")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from xling_jax import benchmark_items
  from xling_jax.languages import validate_languages
  try:
    for task in FLAGS.tasks:
      benchmark_items.check_task(task)
    validate_languages(FLAGS.langs)
  except ValueError as e:
    raise app.UsageError(str(e))
  if FLAGS.source == "hf" and FLAGS.common_ids:
    raise app.UsageError("--common_ids needs --source=dir (it reads each folder's common_ids.txt)")
  if FLAGS.source == "dir" and not FLAGS.data_dir:
    raise app.UsageError("--data_dir is required with --source=dir (a folder laid out like "
                         "shared/data/benchmarks)")
  if FLAGS.source == "dir" and not Path(FLAGS.data_dir).is_dir():
    raise app.UsageError(f"--data_dir={FLAGS.data_dir}: no such directory")
  start = time.perf_counter()
  try:  # bad items, files or adapters: say which, without a traceback
    groups, missing = collect_prompts()
    devices = common.setup_platform()
    setup = common.load_model()
    from xling_jax import toy
    notes = [toy.toy_note(setup.config)] if setup.is_toy else []
    for n in notes:
      print(n, file=sys.stderr)
    print(f"devices: {devices}", file=sys.stderr)
    hook = _load_adapter_hook(setup.config)
    scores, records, too_long = evaluate(setup, hook, groups)
  except (ValueError, FileNotFoundError) as e:
    raise SystemExit(f"error: {e}") from None
  run = {"flags": {f: FLAGS[f].value for f in (
      "tasks", "langs", "source", "data_dir", "common_ids", "num_fewshot", "fewshot_seed", "limit",
      "checkpoint", "tokenizer", "lora", "config", "dtype", "seed", "batch_size", "max_length",
      "platform")},
         "toy": setup.is_toy, "notes": notes, "provenance": setup.provenance, "devices": devices,
         "no_data": missing, "too_long": too_long,
         "seconds": round(time.perf_counter() - start, 2)}
  title = ("TOY model (random weights): " if setup.is_toy else "") + \
      f"benchmark scores, {FLAGS.num_fewshot}-shot, lm-eval 0.4.13 rules"
  md = markdown(scores, missing, too_long, title, notes)
  out = Path(FLAGS.out)
  write_outputs(out, scores, records, run, md)
  print(md)
  print(f"wrote {out}/scores.json, scores.csv, items.jsonl, scores.md, run.json")
  print(f"done in {time.perf_counter() - start:.1f}s", file=sys.stderr)


if __name__ == "__main__":
  app.run(main)
