"""The in-process evaluate API: config checks, no-data errors, scores, adapters, output files."""
from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from tests.conftest import shared_data_or_skip
from tests.helpers import random_adapter
from xling_jax.evaluation import run as evaluation
from xling_jax.model_setup import load_model
from xling_jax.runtime import io
from xling_jax.runtime.errors import NonFiniteError

LANGS = ("en", "zh", "ru", "es", "it", "id", "ca", "mr", "ml", "hi")


@pytest.fixture(scope="module")
def toy_setup():
  """The model bin.evaluate builds without --checkpoint."""
  return load_model()


def write_arc(root, langs=("en",), n=3):
  folder = root / "arc_challenge"
  folder.mkdir(parents=True, exist_ok=True)
  for lang in langs:
    folder.joinpath(f"{lang}.jsonl").write_text("".join(json.dumps(
        {"id": f"q{i}", "question": f"Which word comes {i}?", "choices": ["alpha", "beta", "gamma"],
         "answer": i % 3}) + "\n" for i in range(n)))
  return root


def test_config_is_checked_before_anything_loads(tmp_path):
  with pytest.raises(ValueError, match="unknown task 'winogrande'"):
    evaluation.EvalConfig(tasks=("arc", "winogrande"), data_dir=tmp_path)
  with pytest.raises(ValueError, match="--data_dir is required with --source=dir"):
    evaluation.EvalConfig()
  with pytest.raises(FileNotFoundError, match="--data_dir=.*nowhere: no such directory"):
    evaluation.EvalConfig(data_dir=tmp_path / "nowhere")
  with pytest.raises(ValueError, match="--common_ids needs --source=dir"):
    evaluation.EvalConfig(source="hf", common_ids=True)
  with pytest.raises(ValueError, match="--batch_size=0: must be >= 1"):
    evaluation.EvalConfig(data_dir=tmp_path, batch_size=0)


def test_no_data_for_any_task_names_what_was_looked_for(tmp_path):
  """--data_dir one level too high: an error saying which files were looked for, and where the
  folders are (bin.evaluate exits 2 with it before writing anything)."""
  write_arc(tmp_path / "benchmarks")
  config = evaluation.EvalConfig(tasks=("arc", "mmlu"), langs=("en", "hi"), data_dir=tmp_path)
  with pytest.raises(evaluation.EvalDataError) as e:
    evaluation.collect_prompts(config)
  message = str(e.value)
  assert f"looked for {tmp_path}/{{arc_challenge,mmlu}}/{{en,hi}}.jsonl" in message
  assert f"did you mean --data_dir={tmp_path / 'benchmarks'}?" in message
  empty = write_arc(tmp_path / "empty", n=0)
  with pytest.raises(evaluation.EvalDataError, match="no items for any of --tasks=arc"):
    evaluation.collect_prompts(evaluation.EvalConfig(tasks=("arc",), langs=("en",),
                                                     data_dir=empty))


def test_hub_source_offline_is_one_quick_error(offline_network):
  with pytest.raises(ValueError, match=r"--source=hf: the Hugging Face hub cannot be reached "
                                       r"\(ConnectionError: .*HF_HUB_OFFLINE=1"):
    evaluation.collect_prompts(evaluation.EvalConfig(source="hf", tasks=("arc",)))


def test_languages_beyond_the_study_ten_are_scored_when_their_files_exist(tmp_path, toy_setup):
  data = write_arc(tmp_path, langs=("en", "fr"))
  config = evaluation.EvalConfig(tasks=("arc",), langs=("en", "fr", "de"), data_dir=data,
                                 batch_size=64)
  result = evaluation.evaluate(toy_setup, config)
  assert sorted(result.scores["arc"]) == ["en", "fr"]
  assert [(m["task"], m["lang"]) for m in result.missing] == [("arc", "de")]
  assert "--batch_size=64 is more than the 6 items: batches of 6" in result.notes


def test_peft_adapter_directory_scores_through_the_adapter(tmp_path, toy_setup):
  """adapter=DIR (PEFT format): a fresh adapter (B = 0) leaves every log-likelihood as it was,
  a trained-like one moves them."""
  from lora import lora as lora_lib, peft_io
  config = evaluation.EvalConfig(tasks=("arc",), langs=("en",), data_dir=write_arc(tmp_path))
  lora_config = lora_lib.LoraConfig(rank=4, alpha=8.0)
  model_config = toy_setup.config
  fresh = lora_lib.init_adapter(model_config, lora_config, jax.random.PRNGKey(0))
  peft_io.save_peft(tmp_path / "fresh", fresh, lora_config, model_config, "xling-jax-toy")
  peft_io.save_peft(tmp_path / "trained", random_adapter(model_config, lora_config, b_std=0.5),
                    lora_config, model_config, "xling-jax-toy")

  def loglikelihoods(adapter_dir):
    hook = None if adapter_dir is None else lora_lib.project_hook(
        peft_io.load_peft(adapter_dir, model_config))
    records = evaluation.evaluate(toy_setup, config, hook=hook).records
    assert len(records) == 3
    return np.array([r["loglikelihoods"] for r in records])

  base = loglikelihoods(None)
  np.testing.assert_allclose(loglikelihoods(tmp_path / "fresh"), base, rtol=1e-6)
  assert np.abs(loglikelihoods(tmp_path / "trained") - base).max() > 1e-3


def test_non_finite_weights_are_an_error_not_a_score(tmp_path, toy_setup):
  broken = dataclasses.replace(toy_setup,
                               params=jax.tree.map(lambda x: x * np.nan, toy_setup.params))
  config = evaluation.EvalConfig(tasks=("arc",), langs=("en",), data_dir=write_arc(tmp_path))
  with pytest.raises(NonFiniteError, match="log-likelihoods of 3 items are NaN/inf"):
    evaluation.evaluate(broken, config)


def test_outputs_replace_old_ones_only_when_complete(tmp_path, toy_setup, monkeypatch):
  config = evaluation.EvalConfig(tasks=("arc",), langs=("en",), data_dir=write_arc(tmp_path))
  result = evaluation.evaluate(toy_setup, config)
  out = tmp_path / "out"
  paths = evaluation.write_outputs(out, result, {"toy": True}, evaluation.markdown(result, "T"))
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  assert sorted(before) == sorted(p.name for p in paths) == sorted(
      ["scores.json", "scores.csv", "items.jsonl", "scores.md", "run.json"])
  rows = (out / "scores.csv").read_text().splitlines()
  assert rows[0].startswith("task,lang,n,n_too_long,acc,acc_stderr") and len(rows) == 2

  def disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(io.os, "replace", disk_full)  # the set fails before any file is replaced
  with pytest.raises(io.OutputError, match=r"scores.json: could not be written \(No space left"):
    evaluation.write_outputs(out, result, {"toy": False}, "other")
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temp files left either


def test_all_languages_and_tasks_on_the_shared_benchmarks(toy_setup, tmp_path):
  data = shared_data_or_skip("benchmarks")
  # One batch holds every item (one compiled shape); max_length is low enough that some of the
  # Okapi ARC items (byte-level tokens under the toy tokenizer) are skipped and counted.
  config = evaluation.EvalConfig(data_dir=data, limit=2, batch_size=64, max_length=200)
  result = evaluation.evaluate(toy_setup, config)
  scores = result.scores
  assert sorted(scores) == ["arc", "hellaswag", "mmlu"]
  assert sorted(scores["arc"]) == sorted(LANGS) and sorted(scores["mmlu"]) == sorted(LANGS)
  assert list(scores["hellaswag"]) == ["en"]
  for task, per_lang in scores.items():
    for lang, s in per_lang.items():
      assert s["n"] + s["n_too_long"] == 2, (task, lang)
      assert set(s) == {"acc", "acc_norm", "acc_bytes", "margin", "n", "stderr", "n_too_long"}
  assert sorted(m["lang"] for m in result.missing) == sorted(LANGS[1:])
  assert {m["task"] for m in result.missing} == {"hellaswag"}
  n_long = sum(s["n_too_long"] for per_lang in scores.values() for s in per_lang.values())
  assert n_long == len(result.too_long) > 0
  assert all(t["input_tokens"] > 200 for t in result.too_long)
  assert len(result.records) == sum(s["n"] for per_lang in scores.values()
                                    for s in per_lang.values())
  for r in result.records:
    assert len(r["loglikelihoods"]) == len(r["n_chars"]) == len(r["n_bytes"])
    assert r["pred"] == int(np.argmax(r["loglikelihoods"]))
  md = evaluation.markdown(result, "TOY model")
  assert md.startswith("# TOY model") and "hellaswag/hi:" in md and "no data" in md
  evaluation.write_outputs(tmp_path, result, {"toy": True}, md)
  assert len((tmp_path / "scores.csv").read_text().splitlines()) == 1 + 21
  run = json.loads((tmp_path / "run.json").read_text())
  assert run["toy"] is True and len(run["too_long"]) == n_long and len(run["no_data"]) == 9


def test_subsample_1000_seed_0_is_the_data_folders_hellaswag_subsample():
  bench = shared_data_or_skip("benchmarks")
  config = evaluation.EvalConfig(tasks=("hellaswag",), langs=("en",), data_dir=bench,
                                 subsample=1000)
  prompts = evaluation.collect_prompts(config).groups["hellaswag", "en"]
  lines = (bench / "hellaswag" / "en.jsonl").read_text(encoding="utf-8").splitlines()
  inds = [str(json.loads(lines[int(p.item.id)])["ind"]) for p in prompts]
  listed = (bench / "hellaswag" / "subsample_seed0_1000_ind.txt").read_text().split()
  assert len(prompts) == 1000 and inds == listed
  with pytest.raises(ValueError, match="--subsample=20000: hellaswag/en has 10042 items"):
    evaluation.collect_prompts(dataclasses.replace(config, subsample=20000))
