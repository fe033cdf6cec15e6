"""Parity with lm-evaluation-harness itself: its task YAMLs render the prompts, its HF backend scores
the toy model saved as an HF directory, and its `process_results` computes acc / acc_norm.

The six lm-eval 0.4.13 tasks the study uses are loaded from the installed wheel's YAML files, with the
dataset swapped for small in-memory rows in each hub dataset's own layout. We read the very same rows
through `benchmark_items.load_hub` (with `datasets.load_dataset` answering from memory), so the
comparison covers item parsing, prompts, few-shot sampling, tokenisation, scoring and metrics.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from xling_jax.data.toy_tokenizer import toy_tokenizer
from xling_jax.evaluation import benchmark_items, prompts, scoring

lm_eval = pytest.importorskip("lm_eval")
datasets = pytest.importorskip("datasets")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from lm_eval.api.task import ConfigurableTask  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks._yaml_loader import load_yaml  # noqa: E402

TASKS_DIR = Path(lm_eval.__file__).parent / "tasks"


def _arc_rows(n, prefix):
  return [{"id": f"{prefix}{i}", "question": f"Which one {i} is [Ee] a planet?",
           "choices": {"text": ["Mars", "The Sun", f"Moon {i}"][:2 + i % 2],
                       "label": ["1", "2", "3"][:2 + i % 2]},
           "answerKey": str(1 + i % 2)} for i in range(n)]


def _mmlu_rows(n):
  return [{"question": f" What does organ {i} do? ", "subject": "anatomy",
           "choices": ["pump", "filter", "breathe", f"think {i}"], "answer": i % 4} for i in range(n)]


def _hellaswag_rows(n, okapi=False):
  ends = ["walks to the park.", "reads a [title] book.", "sleeps  well.", "runs away."]
  return [{"ind": 7, "activity_label": "Walking [header]", "ctx_a": f"My sister goes outside {i}.",
           "ctx_b": "she THEN", "ctx": "", "endings": ends[i % 2:] + ends[:i % 2],
           "source_id": "x", "split": "val", "split_type": "indomain",
           "label": (" " if okapi else "") + str(i % 4)} for i in range(n)]


def _okapi_rows(n, letters="abcde"):
  """Hindi rows in Okapi's layout; option_e is empty in every other row (4 or 5 choices)."""
  return [{"id": f"ARC-Challenge/test/H{i}", "instruction": f"आज मौसम अच्छा है [{i}] ?",
           **{f"option_{c}": (f"पानी {c} [step] उबलता है।" if c != "e" or i % 2 else "")
              for c in letters},
           "answer": "ABCD"[i % 4]} for i in range(n)]


# task name -> (YAML file, {split: rows}, num_fewshot, our task, our language)
CASES = {
    "arc_challenge": ("arc/arc_challenge.yaml",
                      {"test": _arc_rows(3, "T"), "train": _arc_rows(5, "R")}, 2, "arc", "en"),
    "mmlu_anatomy": ("mmlu/default/mmlu_anatomy.yaml",
                     {"test": _mmlu_rows(2), "dev": _mmlu_rows(4)}, 2, "mmlu", "en"),
    "hellaswag": ("hellaswag/hellaswag.yaml",
                  {"validation": _hellaswag_rows(2), "train": _hellaswag_rows(4)}, 1,
                  "hellaswag", "en"),
    "arc_hi": ("okapi/arc_multilingual/arc_hi.yaml",
               {"test": _okapi_rows(2), "train": _okapi_rows(3)}, 1, "arc", "hi"),
    "m_mmlu_hi": ("okapi/mmlu_multilingual/m_mmlu_hi.yaml",
                  {"test": [dict(r, id=f"anatomy/test/{i}")
                            for i, r in enumerate(_okapi_rows(2, "abcd"))],
                   "train": [dict(r, id=f"anatomy/dev/{i}")
                             for i, r in enumerate(_okapi_rows(3, "abcd"))]},
                  2, "mmlu", "hi"),
    "hellaswag_hi": ("okapi/hellaswag_multilingual/hellaswag_hi.yaml",
                     {"val": _hellaswag_rows(6, okapi=True)}, 2, "hellaswag", "hi"),
}


def _lm_eval_task(name):
  path, splits, *_ = CASES[name]
  cfg = load_yaml(TASKS_DIR / path)
  dataset = datasets.DatasetDict({s: datasets.Dataset.from_list(rows) for s, rows in splits.items()})
  cfg["custom_dataset"] = lambda **_: dataset
  task = ConfigurableTask(config=cfg)
  task.set_fewshot_seed(prompts.FEWSHOT_SEED)
  return task


def _our_prompts(name, monkeypatch):
  _, splits, k, task, lang = CASES[name]
  # `load_hub` asks `datasets.load_dataset` for the hub dataset; answer with the same rows.
  monkeypatch.setattr(datasets, "load_dataset", lambda path, name=None: splits)
  return prompts.build_prompts(benchmark_items.load_hub(task, lang), k)


@pytest.fixture(scope="module")
def hf_tokenizer_dir(tmp_path_factory):
  """The toy SentencePiece model as an HF Gemma tokenizer directory that adds <bos>, like Gemma's."""
  tok = toy_tokenizer()
  src = tmp_path_factory.mktemp("spm")
  shutil.copy(tok.path, src / "tokenizer.model")
  (src / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GemmaTokenizer"}))
  hf = transformers.AutoTokenizer.from_pretrained(src, add_bos_token=True)
  out = tmp_path_factory.mktemp("hf_tokenizer")
  hf.save_pretrained(out)
  return out


@pytest.fixture(scope="module")
def hflm(toy_hf_dir, hf_tokenizer_dir):
  threads = torch.get_num_threads()
  torch.set_num_threads(1)  # a tiny model: threads only fight the other tests for the CPU
  # add_bos_token is left at None, as lm-eval does by default: the tokenizer decides (Gemma: BOS).
  yield HFLM(pretrained=str(toy_hf_dir), tokenizer=str(hf_tokenizer_dir), dtype="float32",
             device="cpu", batch_size=32, attn_implementation="eager")
  torch.set_num_threads(threads)


def test_lm_eval_tokenizer_adds_bos_and_matches_ours(hflm):
  tok = toy_tokenizer()
  for text in ("Question: Which one?\nAnswer:", "आज मौसम अच्छा है [1] ?", "ഇന്ന്  നല്ല\n\nx"):
    assert hflm.tok_encode(text) == tok.encode(text, add_bos=True)
  assert hflm.add_bos_token is None and hflm.tok_encode("x")[0] == tok.bos_id


def test_prompts_scores_and_metrics_match_lm_eval(hflm, toy_params, toy_config, monkeypatch):
  tok = toy_tokenizer()
  instances, docs, ours = [], [], []
  for name in CASES:
    task, (_, _, k, *_) = _lm_eval_task(name), CASES[name]
    our_prompts = _our_prompts(name, monkeypatch)
    task_docs = list(task.eval_docs)
    assert len(task_docs) == len(our_prompts), name
    for doc_id, (doc, prompt) in enumerate(zip(task_docs, our_prompts)):
      ctx = task.fewshot_context(doc, k)
      assert prompt.context == ctx, name
      assert list(prompt.choices) == list(task.doc_to_choice(doc)), name
      reqs = task.construct_requests(doc=doc, ctx=ctx, metadata=(name, doc_id, 1))
      assert [r.args for r in reqs] == [(prompt.context, c) for c in prompt.continuations]
      instances += reqs
      docs.append((task, doc, len(reqs)))
      ours.append(prompt)

  theirs = hflm.loglikelihood(instances, disable_tqdm=True)
  # One batch for everything: one compiled shape.
  scored = scoring.score(toy_params, toy_config, scoring.encode_prompts(tok, ours),
                         batch_size=len(ours))
  ours_flat = [ll for lls in scored.loglikelihoods for ll in lls]
  np.testing.assert_allclose(ours_flat, [ll for ll, _ in theirs], rtol=0, atol=1e-4)

  start = 0
  for (task, doc, n), prompt, lls in zip(docs, ours, scored.loglikelihoods):
    metrics = task.process_results(doc, theirs[start:start + n])
    start += n
    record = scoring.item_record(prompt, lls)
    assert metrics["acc"] == float(record["pred"] == record["gold"]), prompt.item
    if "acc_norm" in metrics:  # the MMLU tasks report acc only
      assert metrics["acc_norm"] == float(record["pred_norm"] == record["gold"]), prompt.item
