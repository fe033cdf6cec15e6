"""Prompt formats and few-shot sampling (lm-eval's own rendering: see test_lm_eval_parity)."""
from __future__ import annotations

import pytest

from xling_jax.evaluation import prompts
from xling_jax.evaluation.benchmark_items import Item, TaskData


def arc(i, lang="en", question=None):
  return Item("arc", lang, f"A{i}", (f"yes {i}", f"no [x] {i}"), 0,
              question=question or f"Question {i} [title] here?")


def mmlu(i, subject="college_biology", lang="en", split="val"):
  return Item("mmlu", lang, f"{subject}/{split}/{i}", ("w", "x", "y", "z"), i % 4,
              question=f"  Q{i} {subject}?  ", subject=subject)


HELLASWAG = Item("hellaswag", "en", "0", (" ends [step] well.", "ends  badly"), 1,
                 activity_label="Roof [header] work", ctx_a="A man climbs.", ctx_b="THE man then")


def test_templates_per_task_and_language():
  assert prompts.doc_to_text(arc(1)) == "Question: Question 1 [title] here?\nAnswer:"
  assert prompts.doc_to_choice(arc(1)) == ("yes 1", "no [x] 1")
  # Okapi ARC runs HellaSwag's cleaner over question and options (as lm-eval 0.4.13 does).
  assert prompts.doc_to_text(arc(1, "hi")) == "Question: Question 1. here?\nAnswer:"
  assert prompts.doc_to_choice(arc(1, "hi")) == ("yes 1", "no 1")
  assert prompts.doc_to_text(mmlu(2)) == "Q2 college_biology?\nA. w\nB. x\nC. y\nD. z\nAnswer:"
  assert prompts.doc_to_choice(mmlu(2)) == ("A", "B", "C", "D")
  assert prompts.description(mmlu(2)) == (
      "The following are multiple choice questions (with answers) about college biology.\n\n")
  assert prompts.description(mmlu(2, lang="hi")) == ""
  # str.capitalize lowers the rest: "THE man then" -> "The man then".
  assert prompts.doc_to_text(HELLASWAG) == "Roof work: A man climbs. The man then"
  assert prompts.doc_to_choice(HELLASWAG) == ("ends well.", "ends badly")
  assert [prompts.lm_eval_task(i) for i in (arc(1), arc(1, "ml"), mmlu(0), mmlu(0, lang="zh"),
                                            HELLASWAG)] == [
      "arc_challenge", "arc_ml", "mmlu_college_biology", "m_mmlu_zh", "hellaswag"]
  p = prompts.prompt_for(arc(1))
  assert p.continuations == (" yes 1", " no [x] 1")


def test_preprocess_matches_the_documented_rules():
  text = "  How to x [title] Step one [step] go  now "
  assert prompts.preprocess(text) == "How to x. Step one go now"


def test_fewshot_layout_uses_lm_eval_delimiters():
  data = TaskData("mmlu", "en", (mmlu(0), mmlu(1)), (mmlu(5, split="dev"), mmlu(6, split="dev")), "t")
  p = prompts.build_prompts(data, 2)[0]
  shot = lambda i, letter: f"Q{i} college_biology?\nA. w\nB. x\nC. y\nD. z\nAnswer: {letter}\n\n"
  assert p.context == (prompts.description(mmlu(0)) + shot(5, "B") + shot(6, "C") +
                       prompts.doc_to_text(mmlu(0)))
  assert prompts.build_prompts(data)[0].context == prompts.description(mmlu(0)) + prompts.doc_to_text(
      mmlu(0))  # zero-shot by default


def test_random_shots_are_seeded_exclude_the_item_and_ignore_limit():
  items = tuple(arc(i) for i in range(12))
  data = TaskData("arc", "en", items, None, "t")
  first = prompts.build_prompts(data, 3)
  assert first == prompts.build_prompts(data, 3)
  assert [p.context for p in first] != [p.context for p in prompts.build_prompts(data, 3, seed=7)]
  for p in first:
    assert p.context.count("Question ") == 4
    assert p.context.count(f"Question {p.item.question.split()[1]} ") == 1  # never its own shot
  assert prompts.build_prompts(data, 3, limit=4) == first[:4]


def test_mmlu_first_n_per_subject_in_english_only():
  pool = tuple(mmlu(i, s, split="dev") for s in ("anatomy", "virology") for i in range(3))
  items = (mmlu(0, "virology"),)
  en = prompts.build_prompts(TaskData("mmlu", "en", items, pool, "t"), 2)[0].context
  # description + the first two virology dev items, never anatomy's.
  assert en.count("\n\n") == 3 and "anatomy" not in en
  assert en.index("Q0 virology?") < en.index("Answer: A\n\nQ1 virology?")
  hi_items = tuple(mmlu(0, "virology", lang="hi") for _ in range(1))
  hi_pool = tuple(mmlu(i, s, lang="hi", split="dev")
                  for s in ("anatomy", "virology") for i in range(3))
  hi = prompts.build_prompts(TaskData("mmlu", "hi", hi_items, hi_pool, "t"), 4)[0].context
  # m_mmlu is one task per language: first_n over the whole few-shot split, across subjects.
  assert hi.startswith("Q0 anatomy?") and hi.count("Answer:") == 5 and hi.count("anatomy") == 3


def test_bad_fewshot_requests():
  data = TaskData("arc", "en", (arc(0), arc(1), arc(2)), None, "t")
  with pytest.raises(ValueError, match="3-shot needs 3 examples but the few-shot pool for item "
                     "'A0' has 2"):
    prompts.build_prompts(data, 3)
  with pytest.raises(ValueError, match="num_fewshot must be >= 0"):
    prompts.build_prompts(data, -1)
  with pytest.raises(ValueError, match="unknown task"):
    prompts.doc_to_text(Item("piqa", "en", "0", ("a",), 0))


def test_a_subsample_scores_the_drawn_items_with_shots_from_the_whole_split():
  import random
  items = tuple(arc(i) for i in range(30))
  data = TaskData("arc", "en", items, None, "t")
  positions = prompts.subsample_positions(30, 5, seed=0)
  assert positions == sorted(random.Random(0).sample(range(30), 5))
  sub = prompts.build_prompts(data, 3, positions=positions)
  assert [p.item for p in sub] == [items[i] for i in positions]
  drawn = {f"Question {i} " for i in positions}
  shots = {f"Question {i} " for i in range(30) for p in sub if p.context.count(f"Question {i} ")}
  assert shots - drawn  # shots reach items outside the subsample
  for p in sub:
    assert p.context.count(f"Question {p.item.question.split()[1]} ") == 1
  with pytest.raises(ValueError, match="needs 1..30 items"):
    prompts.subsample_positions(30, 31)
