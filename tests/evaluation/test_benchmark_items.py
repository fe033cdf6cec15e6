"""Benchmark items: every record layout, the shared folder layout, the hub, and every bad input."""
from __future__ import annotations

import json
import re
import sys
import types

import pytest

from tests.conftest import REPO, shared_data_or_skip
from xling_jax.evaluation import benchmark_items as bi

ARC = {"id": "Mercury_1", "question": "Which is a planet?", "choices": ["Sun", "Mars", "Moon"],
       "answer": 1, "answer_key": "B"}
MMLU = {"id": "anatomy/val/3", "subject": "anatomy", "question": "Q?", "choices": ["a", "b", "c", "d"],
        "answer": 3, "answer_key": "D"}
HELLASWAG = {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is on a roof.",
             "ctx_b": "he", "endings": ["e0", "e1", "e2", "e3"], "label": 3}
OKAPI_ARC = {"id": "ARC-Challenge/test/Mercury_1", "instruction": "कौन सा ग्रह है?",
             "option_a": "सूर्य", "option_b": "मंगल", "option_c": "चंद्रमा", "option_d": "",
             "option_e": None, "answer": "B"}


def write_jsonl(path, records):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
  return path


def test_shared_schema_records(tmp_path):
  arc = bi.load_file(write_jsonl(tmp_path / "arc.jsonl", [ARC]), "arc", "en")[0]
  assert (arc.id, arc.question, arc.choices, arc.gold) == ("Mercury_1", "Which is a planet?",
                                                           ("Sun", "Mars", "Moon"), 1)
  mmlu = bi.load_file(write_jsonl(tmp_path / "mmlu.jsonl", [MMLU]), "mmlu", "en")[0]
  assert (mmlu.subject, mmlu.gold) == ("anatomy", 3)
  hs = bi.load_file(write_jsonl(tmp_path / "hs.jsonl", [HELLASWAG, dict(HELLASWAG, label="1")]),
                    "hellaswag", "en")
  # `ind` repeats in the real validation split, so HellaSwag items are named by position.
  assert [h.id for h in hs] == ["0", "1"] and [h.gold for h in hs] == [3, 1]
  assert (hs[0].activity_label, hs[0].ctx_a, hs[0].ctx_b) == ("Roof shingle removal",
                                                              "A man is on a roof.", "he")


def test_okapi_json_list(tmp_path):
  path = tmp_path / "hi_test.json"
  path.write_text(json.dumps([OKAPI_ARC], ensure_ascii=False), encoding="utf-8")
  item = bi.load_file(path, "arc", "hi")[0]
  # Empty options are dropped (lm-eval's `if option`), the letter becomes an index, and the id loses
  # Okapi's split prefix so it matches the English id.
  assert item.choices == ("सूर्य", "मंगल", "चंद्रमा")
  assert (item.gold, item.id, item.question) == (1, "Mercury_1", "कौन सा ग्रह है?")
  mmlu = dict(OKAPI_ARC, id="anatomy/val/3", option_d="d", answer="D")
  assert bi.parse_record(mmlu, "mmlu", "hi", "x", "0").subject == "anatomy"


def test_hub_row_layouts():
  ai2 = {"id": "Q", "question": "q", "choices": {"text": ["x", "y"], "label": ["1", "2"]},
         "answerKey": "2"}
  assert bi.parse_record(ai2, "arc", "en", "x", "0").gold == 1
  m_hs = dict(HELLASWAG, label=" 2")  # m_hellaswag keeps labels as strings with a leading space
  assert bi.parse_record(m_hs, "hellaswag", "hi", "x", "0").gold == 2


def test_line_separators_inside_records_are_not_line_breaks(tmp_path):
  record = dict(ARC, question="before\x85after\u2028end")
  item = bi.load_file(write_jsonl(tmp_path / "a.jsonl", [record, dict(ARC, id="2")]), "arc", "en")
  assert len(item) == 2 and item[0].question == "before\x85after\u2028end"


@pytest.mark.parametrize("task, record, message", [
    ("arc", dict(ARC, choices=[]), "has no choices"),
    ("arc", dict(OKAPI_ARC, option_a="", option_b="", option_c=""), "has no choices"),
    ("arc", dict(ARC, answer=3), "answer index 3 is out of range for 3 choices"),
    ("arc", dict(ARC, answer=-1), "answer index -1 is out of range"),
    ("arc", dict(OKAPI_ARC, answer="E"), "answer index 4 is out of range for 3 choices"),
    ("arc", dict(OKAPI_ARC, answer="AB"), "not one of the letters"),
    ("arc", dict(ARC, answer=1.0), "0-based int index"),
    ("arc", {k: v for k, v in ARC.items() if k != "answer"}, "missing field 'answer'"),
    ("arc", {k: v for k, v in ARC.items() if k != "question"}, "missing field 'question'"),
    ("arc", dict(ARC, choices=["a", 2]), "every choice must be a string"),
    ("mmlu", dict(MMLU, choices=["a", "b", "c"], answer=0), "exactly 4 choices"),
    # Never "questions about m1": without a subject, the item is refused (issue 25, point 4).
    ("mmlu", {k: v for k, v in MMLU.items() if k != "subject"} | {"id": "m1"},
     "MMLU items need a 'subject' field"),
    ("mmlu", dict(MMLU, id="m1", subject=" "), "need a 'subject' field"),
    ("mmlu", dict(MMLU, subject=3), "field 'subject' should be a string"),
    ("hellaswag", dict(HELLASWAG, label=""), "0-based int index"),
    ("hellaswag", {k: v for k, v in HELLASWAG.items() if k != "ctx_b"}, "missing field 'ctx_b'"),
])
def test_bad_records_name_file_and_line(tmp_path, task, record, message):
  path = write_jsonl(tmp_path / "bad.jsonl", [dict(ARC, id="ok") if task == "arc" else
                                              (MMLU if task == "mmlu" else HELLASWAG), record])
  with pytest.raises(bi.ItemError, match=rf"bad.jsonl:2: .*{message}"):
    bi.load_file(path, task, "en")


def test_bad_files(tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps(ARC) + "\n{not json\n", encoding="utf-8")
  with pytest.raises(bi.ItemError, match="bad.jsonl:2: not valid JSON"):
    bi.load_file(bad, "arc", "en")
  twice = write_jsonl(tmp_path / "twice.jsonl", [ARC, ARC])
  with pytest.raises(bi.ItemError, match="repeated item ids"):
    bi.load_file(twice, "arc", "en")
  with pytest.raises(FileNotFoundError, match="no such benchmark file"):
    bi.load_file(tmp_path / "absent.jsonl", "arc", "en")
  with pytest.raises(ValueError, match="unknown task 'winogrande'; choose from arc, mmlu, hellaswag"):
    bi.load_file(twice, "winogrande", "en")
  with pytest.raises(ValueError, match="unknown task"):
    bi.load_dir(tmp_path, "gsm8k", "en")


def _benchmark_dir(root):
  write_jsonl(root / "arc_challenge" / "en.jsonl", [ARC, dict(ARC, id="Mercury_2")])
  (root / "arc_challenge" / "common_ids.txt").write_text("Mercury_2\n\n", encoding="utf-8")
  write_jsonl(root / "mmlu" / "en.jsonl", [MMLU])
  write_jsonl(root / "mmlu_dev" / "en.jsonl",
              [dict(MMLU, id=f"anatomy/dev/{i}") for i in range(3)])
  (root / "mmlu" / "common_ids.txt").write_text("anatomy/val/3\n", encoding="utf-8")
  (root / "mmlu_dev" / "common_ids.txt").write_text("anatomy/dev/2\n", encoding="utf-8")
  write_jsonl(root / "hellaswag" / "en.jsonl", [HELLASWAG])
  return root


def test_load_dir_layout_common_ids_and_missing(tmp_path):
  root = _benchmark_dir(tmp_path)
  arc = bi.load_dir(root, "arc", "en")
  assert [i.id for i in arc.items] == ["Mercury_1", "Mercury_2"] and arc.fewshot_pool is None
  assert [i.id for i in bi.load_dir(root, "arc", "en", common_ids=True).items] == ["Mercury_2"]
  mmlu = bi.load_dir(root, "mmlu", "en")
  assert [i.id for i in mmlu.fewshot_pool] == ["anatomy/dev/0", "anatomy/dev/1", "anatomy/dev/2"]
  assert [i.id for i in bi.load_dir(root, "mmlu", "en", common_ids=True).fewshot_pool] == [
      "anatomy/dev/2"]
  with pytest.raises(bi.MissingData, match="no hellaswag data for 'hi'") as err:
    bi.load_dir(root, "hellaswag", "hi")
  assert (err.value.task, err.value.lang) == ("hellaswag", "hi")
  with pytest.raises(FileNotFoundError, match="common_ids.txt"):
    bi.load_dir(root, "hellaswag", "en", common_ids=True)


def test_load_hub_names_splits_and_missing_languages(monkeypatch):
  calls = []
  mmlu_rows = [{"question": f"q{i}", "subject": s, "choices": ["a", "b", "c", "d"], "answer": 2}
               for i, s in enumerate(["anatomy", "anatomy", "virology"])]
  m_arc = [dict(OKAPI_ARC, id=f"ARC-Challenge/test/M{i}") for i in range(2)]

  def load_dataset(path, name=None):
    calls.append((path, name))
    if path == "alexandrainst/m_hellaswag" and name == "zh":
      raise ValueError("BuilderConfig 'zh' not found")
    if path == "cais/mmlu":
      return {"test": mmlu_rows, "dev": mmlu_rows[:1]}
    return {"test": m_arc, "train": m_arc[:1]}

  monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
  mmlu = bi.load_hub("mmlu", "en")
  assert [i.id for i in mmlu.items] == ["anatomy/test/0", "anatomy/test/1", "virology/test/0"]
  assert [i.id for i in mmlu.fewshot_pool] == ["anatomy/dev/0"] and mmlu.items[0].gold == 2
  arc_hi = bi.load_hub("arc", "hi")
  assert [i.id for i in arc_hi.items] == ["M0", "M1"] and arc_hi.items[0].gold == 1
  with pytest.raises(bi.MissingData, match="alexandrainst/m_hellaswag/zh could not be loaded"):
    bi.load_hub("hellaswag", "zh")
  assert calls == [("cais/mmlu", "all"), ("alexandrainst/m_arc", "hi"),
                   ("alexandrainst/m_hellaswag", "zh")]
  assert bi.hub_source("hellaswag", "hi") == ("alexandrainst/m_hellaswag", "hi", "val", None)
  assert bi.hub_source("arc", "en") == ("allenai/ai2_arc", "ARC-Challenge", "test", "train")


def test_shared_benchmarks_all_languages():
  root = shared_data_or_skip("benchmarks")
  # Counts from shared/data/README.md.
  arc_counts = dict(en=1172, zh=1170, ru=1169, es=1170, it=1169, id=1170, ca=1166, mr=1155, ml=1142,
                    hi=1168)
  mmlu_counts = dict(en=1531, zh=1421, ru=1450, es=1465, it=1444, id=1441, ca=1400, mr=1374, ml=1165,
                     hi=1414)
  for lang, n in arc_counts.items():
    arc = bi.load_dir(root, "arc", lang, common_ids=True)
    assert len(bi.load_dir(root, "arc", lang).items) == n
    assert len(arc.items) == 1121
    mmlu = bi.load_dir(root, "mmlu", lang, common_ids=True)
    assert len(mmlu.items) == 985 and len(mmlu.fewshot_pool) == 178
    assert len(bi.load_dir(root, "mmlu", lang).items) == mmlu_counts[lang]
  english = [i.id for i in bi.load_dir(root, "arc", "en", common_ids=True).items]
  assert [i.id for i in bi.load_dir(root, "arc", "ml", common_ids=True).items] == english
  assert len(bi.load_dir(root, "hellaswag", "en").items) == 10042
  with pytest.raises(bi.MissingData):
    bi.load_dir(root, "hellaswag", "zh")


def test_the_readme_shows_every_field_each_task_needs():
  """The README's benchmark-data table: each example line parses, and without any one of its
  fields (the id aside) it is refused, so the table lists exactly what a file needs."""
  readme = (REPO / "README.md").read_text(encoding="utf-8")
  rows = re.findall(r"^\| `(\w+)/`[^|]*\| `(\{.*?\})`", readme, re.M)
  folders = {folder: task for task, (folder, _) in bi.DIR_LAYOUT.items()}
  assert sorted(folder for folder, _ in rows) == sorted(folders)
  for folder, example in rows:
    record = json.loads(example)
    bi.parse_record(record, folders[folder], "en", "README", "0")
    for field in set(record) - {"id"}:
      without = {k: v for k, v in record.items() if k != field} | {"id": "x1"}
      with pytest.raises(bi.ItemError):
        bi.parse_record(without, folders[folder], "en", "README", "0")
