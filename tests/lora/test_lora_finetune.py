"""lora.finetune: activation-aware LoRA as a library call (what bin.finetune and a notebook run):
the README's example, and settings checked before anything trains."""
from __future__ import annotations

import re

import numpy as np
import pytest

from lora import finetune, objectives, peft_io, train
from tests.conftest import REPO
from xling_jax import model_setup
from xling_jax.analysis import corpus_stats
from xling_jax.data import corpora


@pytest.fixture(scope="module")
def toy():
  model = model_setup.load_model()
  return model, model_setup.load_saes(model, layers=(1, 2)), corpora.load_corpus(
      "embedded", ["mr", "en"], max_sentences=10)


@pytest.mark.slow
def test_the_readme_finetune_example_lifts_the_target_and_keeps_english(tmp_path, monkeypatch):
  section = (REPO / "README.md").read_text(encoding="utf-8").split("## From Python", 1)[1]
  analysis_code, finetune_code = re.findall(r"```python\n(.*?)```", section, re.S)[:2]
  monkeypatch.chdir(tmp_path)
  namespace: dict = {}
  exec(compile(analysis_code + finetune_code, "README.md", "exec"), namespace)
  run = namespace["run"]
  assert run.report["gain_pct"]["mr"][0] > 5.0, run.report  # what the README says it shows
  assert 95.0 < run.report["retention_pct"]["en"][0] < 105.0, run.report
  assert run.report["layers"] == [1] and run.report["steps"] == 200
  loaded = peft_io.load_peft(tmp_path / "finetune_out" / "peft", namespace["model"].config)
  for module, ab in run.adapter["layers"].items():
    for part in ("a", "b"):
      np.testing.assert_allclose(np.asarray(loaded["layers"][module][part]),
                                 np.asarray(ab[part]), rtol=1e-6, atol=1e-7)
  assert (tmp_path / "finetune_out" / "report.md").read_text() == run.markdown()


@pytest.mark.parametrize("kwargs,message", [
    (dict(target="en"), "target en is also the reference"),
    (dict(target="hi"), "corpus embedded has no hi"),
    (dict(objective=objectives.ObjectiveConfig(layers=(3,))),
     "the SAEs cover layers [1, 2]; the objective and the report need [3] too"),
    (dict(report_layers=(0, 1)), "the SAEs cover layers [1, 2]; the objective and the report "
                                 "need [0] too"),
    (dict(objective=objectives.ObjectiveConfig(layers=(7,))), "objective layers [7] out of range"),
])
def test_settings_are_checked_before_anything_trains(toy, tmp_path, monkeypatch, kwargs, message):
  model, saes, corpus = toy

  def no_training(*args, **kwargs):
    raise AssertionError("work started before the settings were checked")

  monkeypatch.setattr(train, "train", no_training)
  monkeypatch.setattr(corpus_stats, "corpus_stats", no_training)
  kwargs = {"target": "mr", "objective": objectives.ObjectiveConfig(layers=(2,)), **kwargs}
  with pytest.raises(ValueError, match=re.escape(message)):
    finetune.finetune(model, saes, corpus, out=tmp_path / "out", **kwargs)
  assert not (tmp_path / "out").exists()


def test_checkpoints_of_an_earlier_run_need_resume(toy, tmp_path):
  model, saes, corpus = toy
  (tmp_path / "checkpoints" / "12").mkdir(parents=True)
  with pytest.raises(ValueError, match="already holds checkpoints"):
    finetune.finetune(model, saes, corpus, "mr", out=tmp_path,
                      objective=objectives.ObjectiveConfig(layers=(2,)))
  assert finetune.check_start(tmp_path, resume=True) == tmp_path
