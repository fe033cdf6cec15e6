"""Multiple-choice benchmark items (ARC-Challenge, MMLU, HellaSwag) from files or the HF hub.

One record parser reads every layout the study meets, detected per record:
  * the shared schemas (`shared/data/benchmarks/*/{lang}.jsonl`): `question`, `choices` list,
    `answer` index;
  * Okapi JSON (`instruction`, `option_a`..`option_e`, `answer` letter; empty options are dropped,
    as lm-eval's `arc_multilingual` does);
  * HF `allenai/ai2_arc` rows (`choices: {text, label}`, `answerKey`) and `cais/mmlu` rows;
  * HellaSwag rows (`activity_label`, `ctx_a`, `ctx_b`, `endings`, `label` int or digit string).
Files may be JSONL or a JSON list. Every bad record raises `ItemError` naming the file and line.

A folder laid out like `shared/data/benchmarks` is read with `load_dir`; a missing (task, lang) file
raises `MissingData`, so callers can report absent combinations (HellaSwag has English only) instead
of failing. `load_hub` reads the same tasks from the HF hub via `datasets` (imported lazily).
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

TASKS = ("arc", "mmlu", "hellaswag")
LETTERS = ("A", "B", "C", "D", "E")
COMMON_IDS_FILE = "common_ids.txt"
# Folder names in a `shared/data/benchmarks`-like directory: evaluated split, few-shot split (None:
# the task has no separate few-shot split there, so shots come from the evaluated items themselves).
DIR_LAYOUT = {
    "arc": ("arc_challenge", None),
    "mmlu": ("mmlu", "mmlu_dev"),
    "hellaswag": ("hellaswag", None),
}
# HF hub sources, as lm-eval 0.4.13 names them: (path, config, eval split, few-shot split).
HUB_ENGLISH = {
    "arc": ("allenai/ai2_arc", "ARC-Challenge", "test", "train"),
    "mmlu": ("cais/mmlu", "all", "test", "dev"),
    "hellaswag": ("Rowan/hellaswag", None, "validation", "train"),
}
HUB_OKAPI = {
    "arc": ("alexandrainst/m_arc", "test", "train"),
    "mmlu": ("alexandrainst/m_mmlu", "test", "train"),
    "hellaswag": ("alexandrainst/m_hellaswag", "val", None),
}
_OKAPI_ARC_ID_PREFIX = re.compile(r"^ARC-(Challenge|Easy)/[a-z]+/")
_MMLU_ID = re.compile(r"^([a-z][a-z_]*)/(val|dev|test)/\d+$")  # Okapi's and the shared files'


class ItemError(ValueError):
  """A benchmark record is malformed (no choices, answer out of range, missing field, ...)."""


class MissingData(FileNotFoundError):
  """No data for a (task, lang) combination; `reason` says what was looked for."""

  def __init__(self, task: str, lang: str, reason: str):
    super().__init__(f"no {task} data for {lang!r}: {reason}")
    self.task, self.lang, self.reason = task, lang, reason


@dataclasses.dataclass(frozen=True)
class Item:
  """One multiple-choice item. `choices` are the raw option texts (HellaSwag: raw endings), `gold`
  the 0-based index of the right one. Task-specific text: `question` (ARC, MMLU), `subject` (MMLU,
  e.g. "moral_disputes"), `activity_label`/`ctx_a`/`ctx_b` (HellaSwag)."""
  task: str
  lang: str
  id: str
  choices: tuple[str, ...]
  gold: int
  question: str = ""
  subject: str = ""
  activity_label: str = ""
  ctx_a: str = ""
  ctx_b: str = ""


@dataclasses.dataclass(frozen=True)
class TaskData:
  """The items of one (task, lang). `fewshot_pool` is the split few-shot examples are drawn from, or
  None when there is none (shots are then drawn from `items`, never the item being evaluated)."""
  task: str
  lang: str
  items: tuple[Item, ...]
  fewshot_pool: tuple[Item, ...] | None
  source: str


def check_task(task: str) -> str:
  if task not in TASKS:
    raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
  return task


# ---- record parsing ------------------------------------------------------------------------------
def _text(rec: Mapping[str, Any], key: str, where: str) -> str:
  if key not in rec:
    raise ItemError(f"{where}: missing field {key!r} (fields: {sorted(rec)})")
  value = rec[key]
  if not isinstance(value, str):
    raise ItemError(f"{where}: field {key!r} should be a string, got {type(value).__name__}")
  return value


def _gold_from_letter(letter: Any, where: str) -> int:
  if not isinstance(letter, str) or letter.strip() not in LETTERS:
    raise ItemError(f"{where}: answer {letter!r} is not one of the letters {', '.join(LETTERS)}")
  return LETTERS.index(letter.strip())


def _gold_from_index(value: Any, where: str) -> int:
  if isinstance(value, str) and value.strip().isdigit():
    return int(value.strip())  # HellaSwag's hub rows keep `label` as a string
  if isinstance(value, bool) or not isinstance(value, int):
    raise ItemError(f"{where}: answer {value!r} should be a 0-based int index")
  return value


def _choices_and_gold(rec: Mapping[str, Any], where: str) -> tuple[list[Any], int]:
  if "instruction" in rec:  # Okapi: option_a..option_e, empty ones dropped, answer letter
    choices = [rec[f"option_{c}"] for c in "abcde" if rec.get(f"option_{c}")]
    return choices, _gold_from_letter(rec.get("answer"), where)
  if "endings" in rec:  # HellaSwag
    return rec["endings"], _gold_from_index(rec.get("label"), where)
  choices = rec.get("choices")
  if isinstance(choices, Mapping):  # allenai/ai2_arc: {"text": [...], "label": [...]}, answerKey
    labels = list(choices.get("label", []))
    key = rec.get("answerKey")
    if key not in labels:
      raise ItemError(f"{where}: answerKey {key!r} is not among the choice labels {labels}")
    return list(choices.get("text", [])), labels.index(key)
  if "answer" not in rec:
    raise ItemError(f"{where}: missing field 'answer' (fields: {sorted(rec)})")
  answer = rec["answer"]
  if isinstance(answer, str):
    return choices, _gold_from_letter(answer, where)
  return choices, _gold_from_index(answer, where)


def _subject(rec: Mapping, item_id: str, where: str) -> str:
  """An MMLU item's subject (the prompt's "questions about <subject>", the few-shot pool): its
  `subject` field, else the first part of an Okapi-style id `<subject>/<split>/<row>`."""
  match = _MMLU_ID.match(item_id)
  subject = (_text(rec, "subject", where) if "subject" in rec else
             match.group(1) if match else "")
  if subject.strip():
    return subject
  raise ItemError(f"{where}: MMLU items need a 'subject' field (e.g. \"moral_disputes\": the "
                  "prompt says \"questions about moral disputes\" and few-shot examples come "
                  f"from the same subject), or an id <subject>/<split>/<row>; fields: {sorted(rec)}")


def parse_record(rec: Any, task: str, lang: str, where: str, default_id: str) -> Item:
  """One record (any layout in the module docstring) -> Item. `where` names the file and line for
  errors; `default_id` is used when the record has no id field."""
  check_task(task)
  if not isinstance(rec, Mapping):
    raise ItemError(f"{where}: expected a JSON object, got {type(rec).__name__}")
  choices, gold = _choices_and_gold(rec, where)
  if not isinstance(choices, (list, tuple)) or not choices:
    raise ItemError(f"{where}: item has no choices")
  if not all(isinstance(c, str) for c in choices):
    kinds = [type(c).__name__ for c in choices]
    raise ItemError(f"{where}: every choice must be a string, got {kinds}")
  if not 0 <= gold < len(choices):
    raise ItemError(f"{where}: answer index {gold} is out of range for {len(choices)} choices")
  # HellaSwag's `ind` repeats (433 values twice in the validation split), so without an `id` field
  # an item is named by its 0-based position in its file or split.
  raw_id = rec.get("id", default_id)
  item_id = _OKAPI_ARC_ID_PREFIX.sub("", str(raw_id))
  fields: dict[str, Any] = dict(task=task, lang=lang, id=item_id, choices=tuple(choices), gold=gold)
  if task == "hellaswag":
    for key in ("activity_label", "ctx_a", "ctx_b"):
      fields[key] = _text(rec, key, where)
  else:
    fields["question"] = _text(rec, "instruction" if "instruction" in rec else "question", where)
  if task == "mmlu":
    if len(choices) != 4:
      raise ItemError(f"{where}: MMLU items need exactly 4 choices (A-D), got {len(choices)}")
    fields["subject"] = _subject(rec, item_id, where)
  return Item(**fields)


def _records(path: Path) -> Iterator[tuple[Any, str, str]]:
  """(record, where, default id = 0-based record position) for a JSONL file or a JSON list."""
  text = path.read_text(encoding="utf-8")
  if text.lstrip().startswith("["):
    try:
      data = json.loads(text)
    except json.JSONDecodeError as e:
      raise ItemError(f"{path}: not valid JSON ({e})") from None
    for i, rec in enumerate(data):
      yield rec, f"{path}: record {i}", str(i)
    return
  # Split on "\n" only: str.splitlines also splits on U+0085 and U+2028, which occur inside records.
  position = 0
  for n, line in enumerate(text.split("\n"), 1):
    if not line.strip():
      continue
    try:
      rec = json.loads(line)
    except json.JSONDecodeError as e:
      raise ItemError(f"{path}:{n}: not valid JSON ({e})") from None
    yield rec, f"{path}:{n}", str(position)
    position += 1


def load_file(path: str | Path, task: str, lang: str) -> tuple[Item, ...]:
  """Every item of a JSONL / JSON-list file. Raises ItemError on a bad record or a repeated id."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such benchmark file")
  items = tuple(parse_record(rec, task, lang, where, default_id)
                for rec, where, default_id in _records(path))
  _check_unique_ids(items, str(path))
  return items


def _check_unique_ids(items: Sequence[Item], source: str) -> None:
  seen: set[str] = set()
  repeated = [it.id for it in items if it.id in seen or seen.add(it.id)]
  if repeated:
    raise ItemError(f"{source}: repeated item ids {repeated[:5]}")


def read_ids(path: str | Path) -> list[str]:
  """A `common_ids.txt`-style file: one id per line, blank lines ignored."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(
        f"{path}: no such id list (restricting to common ids needs {COMMON_IDS_FILE})")
  return [line.strip() for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def restrict(items: Iterable[Item], ids: Iterable[str]) -> tuple[Item, ...]:
  """The items whose id is in `ids`, in the items' order."""
  keep = set(ids)
  return tuple(it for it in items if it.id in keep)


# ---- a shared/data/benchmarks-like folder -----------------------------------------------------
def load_dir(data_dir: str | Path, task: str, lang: str, *, common_ids: bool = False) -> TaskData:
  """Items of (task, lang) from `data_dir/<folder>/<lang>.jsonl` (see DIR_LAYOUT); with
  `common_ids`, only the ids in the folder's `common_ids.txt` (items present in every language),
  for the evaluated and the few-shot split alike. Raises MissingData when the file is absent."""
  check_task(task)
  folder, fewshot_folder = DIR_LAYOUT[task]
  path = Path(data_dir) / folder / f"{lang}.jsonl"
  if not path.is_file():
    raise MissingData(task, lang, f"{path} does not exist")
  items = load_file(path, task, lang)
  if common_ids:
    items = restrict(items, read_ids(path.parent / COMMON_IDS_FILE))
  pool = None
  if fewshot_folder is not None:
    pool_path = Path(data_dir) / fewshot_folder / f"{lang}.jsonl"
    if pool_path.is_file():
      pool = load_file(pool_path, task, lang)
      if common_ids:
        pool = restrict(pool, read_ids(pool_path.parent / COMMON_IDS_FILE))
  return TaskData(task, lang, items, pool, str(path))


# ---- the HF hub -------------------------------------------------------------------------------
def hub_source(task: str, lang: str) -> tuple[str, str | None, str, str | None]:
  """(dataset path, config name, eval split, few-shot split or None) lm-eval 0.4.13 uses."""
  check_task(task)
  if lang == "en":
    return HUB_ENGLISH[task]
  path, split, fewshot_split = HUB_OKAPI[task]
  return path, lang, split, fewshot_split


def _hub_items(rows: Iterable[Mapping[str, Any]], task: str, lang: str, name: str, split: str):
  rows = list(rows)
  if task == "mmlu":  # cais/mmlu rows have no id: number them within their subject, as our files do
    counters: dict[str, int] = {}
    ids = []
    for row in rows:
      subject = row.get("subject") or ""
      ids.append(row.get("id") or f"{subject}/{split}/{counters.get(subject, 0)}")
      counters[subject] = counters.get(subject, 0) + 1
  else:
    ids = [str(row.get("id", i)) for i, row in enumerate(rows)]
  items = tuple(parse_record({**row, "id": ids[i]}, task, lang, f"{name}[{split}] row {i}", ids[i])
                for i, row in enumerate(rows))
  _check_unique_ids(items, f"{name}[{split}]")
  return items


def load_hub(task: str, lang: str) -> TaskData:
  """Items of (task, lang) from the HF hub (needs network and `datasets`). Languages lm-eval's Okapi
  tasks lack (e.g. HellaSwag zh) raise MissingData."""
  import datasets  # optional at run time: only users who read from the hub need it

  path, config_name, split, fewshot_split = hub_source(task, lang)
  name = f"{path}/{config_name}" if config_name else path
  try:
    data = datasets.load_dataset(path, config_name)
  except (ValueError, FileNotFoundError) as e:  # an unknown config name: that language is not there
    raise MissingData(task, lang, f"{name} could not be loaded ({e})") from None
  if split not in data:
    raise MissingData(task, lang, f"{name} has no split {split!r} (splits: {sorted(data)})")
  items = _hub_items(data[split], task, lang, name, split)
  pool = None
  if fewshot_split is not None and fewshot_split in data:
    pool = _hub_items(data[fewshot_split], task, lang, name, fewshot_split)
  return TaskData(task, lang, items, pool, f"hf:{name}[{split}]")
