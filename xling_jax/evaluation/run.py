"""Benchmark accuracy per task and language as one library call, under lm-eval 0.4.13's rules.

    from xling_jax import evaluation
    from xling_jax.model_setup import load_model
    setup = load_model("gemma3-270m")
    result = evaluation.evaluate(setup, evaluation.EvalConfig(tasks=("arc",), langs=("en",),
                                                              data_dir="data/benchmarks"))
    print(evaluation.markdown(result, "Gemma 3 270M, 0-shot"))

`python -m bin.evaluate` is this with flags; `bin.finetune --eval_tasks` calls it before and
after training, in the same process and on the same loaded model.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from io import StringIO
from pathlib import Path
from typing import Any, Sequence

from xling_jax.data import languages
from xling_jax.evaluation import benchmark_items, prompts as prompts_lib, scoring
from xling_jax.runtime import batching, io, validate
from xling_jax.runtime.errors import NonFiniteError
from xling_jax.runtime.progress import Progress

SOURCES = ("dir", "hf")
METRICS = (*scoring.METRICS, "margin")
SCORES_NAME = "scores.json"
RUN_NAME = "run.json"
ITEMS_NAME = "items.jsonl"


class EvalDataError(ValueError):
  """No benchmark items for any requested task and language."""


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """What to score. The fields are bin.evaluate's flags of the same names."""
  tasks: Sequence[str] = benchmark_items.TASKS
  langs: Sequence[str] = languages.STUDY_LANGUAGES
  source: str = "dir"  # dir: items under data_dir; hf: the Hugging Face hub
  data_dir: str | os.PathLike | None = None
  common_ids: bool = False
  num_fewshot: int = 0
  fewshot_seed: int = prompts_lib.FEWSHOT_SEED
  limit: int | None = None
  subsample: int | None = None  # items per (task, lang) drawn by prompts.subsample_positions
  subsample_seed: int = 0
  batch_size: int = 8
  max_length: int | None = None  # default: the model's max_seq_len

  def __post_init__(self):
    validate.fields(self)
    object.__setattr__(self, "tasks", tuple(benchmark_items.check_task(t) for t in self.tasks))
    object.__setattr__(self, "langs", languages.validate_languages(self.langs))
    if self.source not in SOURCES:
      raise ValueError(f"source={self.source!r}: choose one of {', '.join(SOURCES)}")
    if self.source == "hf" and self.common_ids:
      raise ValueError("--common_ids needs --source=dir (it reads each folder's common_ids.txt)")
    if self.source == "dir":
      if not self.data_dir:
        raise ValueError("--data_dir is required with --source=dir (a folder holding "
                         f"{_layout()}), or use --source=hf")
      if not Path(self.data_dir).is_dir():
        raise FileNotFoundError(f"--data_dir={self.data_dir}: no such directory")
    for name, low in (("num_fewshot", 0), ("limit", 1), ("batch_size", 1), ("max_length", 1),
                      ("subsample", 1)):
      value = getattr(self, name)
      if value is not None and value < low:
        raise ValueError(f"--{name}={value}: must be >= {low}")


def _layout() -> str:
  folders = sorted({f for pair in benchmark_items.DIR_LAYOUT.values() for f in pair if f})
  return ", ".join(f"{f}/" for f in folders) + " with {lang}.jsonl files"


@dataclasses.dataclass(frozen=True)
class Prompts:
  """Prompts per (task, lang), and the combinations without data ({task, lang, reason})."""
  groups: dict[tuple[str, str], list]
  missing: list[dict]


def collect_prompts(config: EvalConfig) -> Prompts:
  """Read and check every item before any model is loaded, so bad data fails in seconds.
  Raises EvalDataError when no requested combination has data."""
  if config.source == "hf":  # one quick probe instead of datasets' retries for every pair
    from xling_jax.runtime import hub
    hub.check_reachable(benchmark_items.hub_source(config.tasks[0], "en")[0], "--source=hf",
                        repo_type="dataset")
  groups, missing = {}, []
  for task in config.tasks:
    for lang in config.langs:
      try:
        data = (benchmark_items.load_hub(task, lang) if config.source == "hf" else
                benchmark_items.load_dir(config.data_dir, task, lang,
                                         common_ids=config.common_ids))
      except benchmark_items.MissingData as e:
        missing.append({"task": task, "lang": lang, "reason": e.reason})
        continue
      except OSError as e:  # the hub's datasets: offline and not cached, or no network
        if config.source != "hf":
          raise
        raise EvalDataError(f"--source=hf: {task}/{lang}: {e}") from e
      positions = None
      if config.subsample:
        try:
          positions = prompts_lib.subsample_positions(len(data.items), config.subsample,
                                                      config.subsample_seed)
        except ValueError as e:
          raise ValueError(f"--subsample={config.subsample}: {task}/{lang} has "
                           f"{len(data.items)} items") from e
      groups[task, lang] = prompts_lib.build_prompts(data, config.num_fewshot,
                                                     limit=config.limit,
                                                     seed=config.fewshot_seed,
                                                     positions=positions)
  if not any(groups.values()):
    raise EvalDataError(_no_data_message(config, missing))
  return Prompts(groups, missing)


def _no_data_message(config: EvalConfig, missing: list[dict]) -> str:
  tasks, langs = ",".join(config.tasks), ",".join(config.langs)
  if config.source == "hf":
    return (f"--source=hf: no items for any of --tasks={tasks} x --langs={langs} "
            f"({missing[0]['reason'] if missing else 'every file is empty'})")
  root = Path(config.data_dir)
  folders = ",".join(benchmark_items.DIR_LAYOUT[t][0] for t in config.tasks)
  message = (f"--data_dir={config.data_dir}: no items for any of --tasks={tasks} x "
             f"--langs={langs}; looked for {root}/{{{folders}}}/{{{langs}}}.jsonl")
  below = sorted(p.parent for p in root.glob(f"*/{benchmark_items.DIR_LAYOUT[config.tasks[0]][0]}")
                 if p.is_dir())
  return message + (f"; did you mean --data_dir={below[0]}?" if below else
                    f" (the folder must hold {_layout()})")


@dataclasses.dataclass(frozen=True)
class EvalResult:
  """scores: task -> lang -> {acc, acc_norm, acc_bytes, n, stderr, n_too_long}; records: one
  per scored item (items.jsonl); too_long: the items skipped as longer than max_length."""
  config: EvalConfig
  scores: dict
  records: list[dict]
  too_long: list[dict]
  missing: list[dict]
  max_length: int
  notes: tuple[str, ...]


def evaluate(setup, config: EvalConfig, *, hook=None, prompts: Prompts | None = None,
             progress: bool = False) -> EvalResult:
  """Score `setup` (a `model_setup.ModelSetup`) on `config`'s items.

  `hook`: None, or the model's `ProjectHook` (a LoRA adapter: `lora.lora.project_hook`, or
  `Finetuned.hook()`), so scoring knows no adapter format. `prompts`: from
  `collect_prompts(config)` when the caller read them already. All items of the run are scored
  in one pass, so batches stay full and lengths from every task and language share the few
  compiled shapes. NaN/inf log-likelihoods raise NonFiniteError.
  """
  validate.model(setup, "evaluate: setup")
  validate.instance(config, EvalConfig, "evaluate: config",
                    "xj.EvalConfig(**settings)" if isinstance(config, dict) else "")
  prompts = prompts or collect_prompts(config)
  max_len = config.max_length or setup.config.max_seq_len
  all_prompts = [p for group in prompts.groups.values() for p in group]
  encoded = scoring.encode_prompts(setup.tokenizer, all_prompts)
  rows = batching.batch_rows(config.batch_size, len(encoded), setup.mesh)
  notes = []
  if rows < config.batch_size:
    notes.append(f"--batch_size={config.batch_size} is more than the {len(encoded)} items: "
                 f"batches of {rows}")
  bar = Progress(len(encoded), "scoring", unit="items", enabled=progress)
  result = scoring.score(setup.params, setup.config, encoded, batch_size=rows, max_len=max_len,
                         hook=hook, mesh=setup.mesh,
                         on_batch=bar.update)
  too_long = [{"task": all_prompts[i].item.task, "lang": all_prompts[i].item.lang,
               "id": all_prompts[i].item.id, "input_tokens": encoded[i].max_input_len,
               "max_length": max_len} for i in result.too_long]
  if too_long:
    notes.append(f"{len(too_long)} items longer than {max_len} tokens were skipped and counted "
                 "(n_too_long in scores.json, listed in run.json)")
  scored = [(p, lls) for p, lls in zip(all_prompts, result.loglikelihoods) if lls is not None]
  _check_finite(scored)
  records = [scoring.item_record(p, lls) for p, lls in scored]
  scores: dict = {}
  for task, lang in prompts.groups:
    mine = [r for r in records if r["task"] == task and r["lang"] == lang]
    n_long = sum(1 for t in too_long if t["task"] == task and t["lang"] == lang)
    scores.setdefault(task, {})[lang] = dict(scoring.aggregate(mine), n_too_long=n_long)
  return EvalResult(config, scores, records, too_long, prompts.missing, max_len, tuple(notes))


def _check_finite(scored) -> None:
  bad = [p.item for p, lls in scored if not all(math.isfinite(v) for v in lls)]
  if bad:
    raise NonFiniteError(f"the log-likelihoods of {len(bad)} items are NaN/inf (first: "
                         f"{bad[0].task}/{bad[0].lang}/{bad[0].id}): the model's weights or the "
                         "adapter hold NaN/inf")


# ---- outputs ----------------------------------------------------------------------------------
def _fmt(value, stderr) -> str:
  if value is None:
    return "–"
  return f"{value:.3f}" if stderr is None else f"{value:.3f} ± {stderr:.3f}"


def _count(score: dict | None) -> str:
  if score is None:
    return "no data"
  return str(score["n"]) + (f" (+{score['n_too_long']} too long)" if score["n_too_long"] else "")


def markdown(result: EvalResult, title: str, notes: Sequence[str] = ()) -> str:
  """Task x language tables of every metric and of the item counts."""
  scores = result.scores
  langs = [l for l in result.config.langs if any(l in per_lang for per_lang in scores.values())]
  lines = [f"# {title}", ""] + [f"**{n}**" for n in notes] + ([""] if notes else [])
  head = ["| task | " + " | ".join(langs) + " |", "|---|" + "---|" * len(langs)]
  for metric in METRICS:
    lines += [f"## {metric} (± standard error)", "", *head]
    for task, per_lang in scores.items():
      cells = [_fmt(per_lang[l][metric], per_lang[l]["stderr"][metric]) if l in per_lang
               else "no data" for l in langs]
      lines.append(f"| {task} | " + " | ".join(cells) + " |")
    lines.append("")
  lines += ["## items scored", "", *head]
  for task, per_lang in scores.items():
    lines.append(f"| {task} | " + " | ".join(_count(per_lang.get(l)) for l in langs) + " |")
  lines.append("")
  if result.missing:
    lines += ["## no data", ""]
    lines += [f"- {m['task']}/{m['lang']}: {m['reason']}" for m in result.missing] + [""]
  if result.too_long:
    lines += [f"## skipped: {len(result.too_long)} items longer than {result.max_length} tokens",
              "", "Not scored and not cut; each is listed in run.json.", ""]
  return "\n".join(lines)


def scores_csv(scores: dict) -> str:
  """One row per (task, lang): counts, then each metric and its standard error."""
  text = StringIO()
  writer = csv.writer(text)
  writer.writerow(["task", "lang", "n", "n_too_long"] +
                  [c for m in METRICS for c in (m, f"{m}_stderr")])
  for task, per_lang in scores.items():
    for lang, s in per_lang.items():
      writer.writerow([task, lang, s["n"], s["n_too_long"]] +
                      [c for m in METRICS for c in (s[m], s["stderr"][m])])
  return text.getvalue()


def write_outputs(out: str | os.PathLike, result: EvalResult, run: dict[str, Any],
                  md: str) -> list[Path]:
  """scores.json, scores.csv, items.jsonl, scores.md and run.json (`run` plus the missing and
  too-long items) in `out`. Everything is rendered first, then written as one set
  (`io.write_set`), so a failure leaves the previous results whole. Returns the paths."""
  out = Path(out)
  run = {**run, "no_data": result.missing, "too_long": result.too_long,
         "notes": [*run.get("notes", []), *result.notes]}
  rendered = {
      SCORES_NAME: io.json_text(result.scores),
      "scores.csv": scores_csv(result.scores),
      ITEMS_NAME: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result.records),
      "scores.md": md,
      RUN_NAME: io.json_text(run),
  }
  return list(io.write_set(out, rendered).values())
