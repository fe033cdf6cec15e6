"""lm-evaluation-harness 0.4.13 prompts for ARC, MMLU and HellaSwag, English and Okapi variants.

Each (task, lang) gets the prompt of the lm-eval task a user would run (`lm_eval_task`):
  * arc, en: `arc_challenge`, "Question: {question}\nAnswer:", choices = the raw answer texts.
  * arc, other: `arc_{lang}`, the same with `preprocess`ed question and choices.
  * mmlu, en: `mmlu_{subject}`, description "The following are multiple choice questions (with
    answers) about {subject with spaces}.\n\n", then "{question.strip()}\nA. {c0}\nB. {c1}\n
    C. {c2}\nD. {c3}\nAnswer:" (one line per option), choices "A".."D".
  * mmlu, other: `m_mmlu_{lang}`, the same without the description.
  * hellaswag, any: `hellaswag` / `hellaswag_{lang}`,
    preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()), preprocessed endings.
Strings are copied from the task YAMLs and `utils.py` files of the lm_eval 0.4.13 wheel; the parity
test renders lm-eval's own tasks and compares. lm-eval 0.4.13 applies HellaSwag's bracket-stripping
`preprocess` to Okapi ARC too (lm-eval issue #2000); we follow it, to give the same numbers.

Continuations are `TARGET_DELIMITER + choice`. k-shot contexts are
`description + sum(shot_text + " " + shot_answer + "\n\n") + text`, with shots drawn as lm-eval
does: MMLU takes the first k of its few-shot split (`first_n`; English per subject, as the
`mmlu_{subject}` tasks do; Okapi `m_mmlu` from the whole split), ARC and HellaSwag sample with one
`random.Random(seed)` advanced item by item in evaluation order. When a source has no few-shot split
(our folders have none for ARC and HellaSwag; lm-eval uses their train splits), shots come from the
evaluated split with the item itself removed (lm-eval samples k + 1 and drops it).
"""
from __future__ import annotations

import dataclasses
import random
import re
from typing import Sequence

from xling_jax.evaluation.benchmark_items import Item, TaskData, check_task

TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"
FEWSHOT_SEED = 1234  # lm-eval's default fewshot_random_seed
MMLU_CHOICES = ("A", "B", "C", "D")


@dataclasses.dataclass(frozen=True)
class Prompt:
  """An item's context and its choices as lm-eval's `doc_to_choice` gives them (lengths for
  acc_norm/acc_bytes are taken from these, without the delimiter)."""
  item: Item
  context: str
  choices: tuple[str, ...]

  @property
  def continuations(self) -> tuple[str, ...]:
    return tuple(TARGET_DELIMITER + c for c in self.choices)


def preprocess(text: str) -> str:
  """lm-eval's HellaSwag cleaner (also used by the Okapi tasks): drop WikiHow markup."""
  text = text.strip()
  text = text.replace(" [title]", ". ")
  text = re.sub("\\[.*?\\]", "", text)
  return text.replace("  ", " ")


def lm_eval_task(item: Item) -> str:
  """The lm-eval 0.4.13 task name whose prompt format this item gets."""
  check_task(item.task)
  english = item.lang == "en"
  if item.task == "arc":
    return "arc_challenge" if english else f"arc_{item.lang}"
  if item.task == "mmlu":
    return f"mmlu_{item.subject}" if english else f"m_mmlu_{item.lang}"
  return "hellaswag" if english else f"hellaswag_{item.lang}"


def description(item: Item) -> str:
  if item.task == "mmlu" and item.lang == "en":
    return ("The following are multiple choice questions (with answers) about "
            f"{' '.join(item.subject.split('_'))}.\n\n")
  return ""


def doc_to_text(item: Item) -> str:
  check_task(item.task)
  if item.task == "arc":
    question = item.question if item.lang == "en" else preprocess(item.question)
    return f"Question: {question}\nAnswer:"
  if item.task == "mmlu":
    lines = [item.question.strip()]
    lines += [f"{letter}. {choice}" for letter, choice in zip(MMLU_CHOICES, item.choices)]
    return "\n".join(lines) + "\nAnswer:"
  return preprocess(f"{item.activity_label}: {item.ctx_a} {item.ctx_b.capitalize()}")


def doc_to_choice(item: Item) -> tuple[str, ...]:
  check_task(item.task)
  if item.task == "mmlu":
    return MMLU_CHOICES
  if item.task == "arc" and item.lang == "en":
    return item.choices
  return tuple(preprocess(c) for c in item.choices)


def _shot(item: Item) -> str:
  return doc_to_text(item) + TARGET_DELIMITER + doc_to_choice(item)[item.gold] + FEWSHOT_DELIMITER


class _ShotSampler:
  """lm-eval's samplers: `first_n` for MMLU, seeded `random.sample` otherwise (module docstring)."""

  def __init__(self, data: TaskData, seed: int):
    self.task, self.lang = data.task, data.lang
    self.pool = data.fewshot_pool if data.fewshot_pool is not None else data.items
    self.pool_is_eval_split = data.fewshot_pool is None
    self.rnd = random.Random(seed)

  def sample(self, item: Item, k: int) -> list[Item]:
    if k == 0:
      return []
    pool = self.pool
    if self.task == "mmlu" and self.lang == "en":  # one lm-eval task per subject
      pool = [p for p in pool if p.subject == item.subject]
    available = len(pool) - (1 if self.pool_is_eval_split else 0)
    if k > available:
      raise ValueError(
          f"{self.task}/{self.lang}: {k}-shot needs {k} examples but the few-shot pool for item "
          f"{item.id!r} has {available}")
    if self.task == "mmlu":
      return [p for p in pool if p.id != item.id][:k]
    if self.pool_is_eval_split:
      return [p for p in self.rnd.sample(list(pool), k + 1) if p.id != item.id][:k]
    return self.rnd.sample(list(pool), k)


def subsample_positions(n_items: int, size: int, seed: int = 0) -> list[int]:
  """`size` item positions drawn as sorted(random.Random(seed).sample(range(n_items), size)):
  the customary fixed HellaSwag subsample is size 1000, seed 0."""
  if not 0 < size <= n_items:
    raise ValueError(f"a subsample of {size} needs 1..{n_items} items")
  return sorted(random.Random(seed).sample(range(n_items), size))


def build_prompts(data: TaskData, num_fewshot: int = 0, *, limit: int | None = None,
                  seed: int = FEWSHOT_SEED,
                  positions: Sequence[int] | None = None) -> list[Prompt]:
  """Prompts for the first `limit` items of `data` (all when None), `num_fewshot` shots each;
  with `positions` (see `subsample_positions`), of those items only, in that order.

  Shots for item i do not depend on `limit` (the sampler advances in evaluation order, as
  lm-eval's does), and they come from the whole split, not from the subsample.
  """
  if num_fewshot < 0:
    raise ValueError(f"num_fewshot must be >= 0, got {num_fewshot}")
  if limit is not None and limit < 0:
    raise ValueError(f"limit must be >= 0, got {limit}")
  sampler = _ShotSampler(data, seed)
  items = data.items if positions is None else [data.items[i] for i in positions]
  return [prompt_for(item, sampler.sample(item, num_fewshot)) for item in items[:limit]]


def prompt_for(item: Item, shots: Sequence[Item] = ()) -> Prompt:
  """One item's prompt with the given shot items (for callers that choose shots themselves)."""
  context = description(item) + "".join(_shot(s) for s in shots) + doc_to_text(item)
  return Prompt(item, context, doc_to_choice(item))
