"""The notebook API (`import xling_jax as xj`) checks its arguments at the boundary, as the CLIs
check flags: a wrong type is a TypeError and a wrong value a ValueError naming the argument and,
where it helps, how to make the right thing; never an AttributeError from deep inside (issue
25, point 5)."""
from __future__ import annotations

import numpy as np
import pytest

import xling_jax as xj
from sae.train.config import SAETrainConfig


@pytest.fixture(scope="module")
def toy():
  model = xj.load_model()
  return model, xj.load_saes(model, layers=(1, 2)), xj.load_corpus("embedded", "en,hi", 4)


def test_the_issue_cases(toy, tmp_path):
  model, saes, corpus = toy
  cases = [
      (lambda: xj.analyze(model, saes, "embedded"), TypeError,
       r"analyze: corpus='embedded': expected a ParallelCorpus \(corpus = "
       r"xj.load_corpus\('embedded', langs\)\), got str"),
      (lambda: xj.analyze(model, corpus, saes), TypeError,
       r"analyze: saes=<ParallelCorpus>: expected an SAESetup \(saes = xj.load_saes"),
      (lambda: xj.analyze(saes, model, corpus), TypeError,
       r"analyze: setup=<SAESetup>: expected a ModelSetup"),
      (lambda: xj.analyze(model, saes, corpus, {"bootstrap": 10}), TypeError,
       r"analyze: config={'bootstrap': 10}: expected an AnalysisConfig "
       r"\(xj.AnalysisConfig\(\*\*settings\)\), got dict"),
      (lambda: xj.load_saes("toy"), TypeError, r"load_saes: setup='toy': expected a ModelSetup"),
      (lambda: xj.load_model(123), TypeError,
       "load_model: checkpoint=123: expected a string or a path or None, got int"),
      (lambda: xj.AnalysisConfig(bootstrap="200"), TypeError,
       "AnalysisConfig.bootstrap='200': expected an integer, got str"),
      (lambda: xj.AnalysisConfig(bootstrap=100_000_000), ValueError,
       "AnalysisConfig.bootstrap=100000000: at most 100000 resamples"),
      (lambda: xj.TrainConfig(steps="100"), TypeError,
       "TrainConfig.steps='100': expected an integer, got str"),
  ]
  for call, error, message in cases:
    with pytest.raises(error, match=message):
      call()


def test_a_string_where_a_sequence_is_expected_is_one_item(tmp_path):
  one = xj.EvalConfig(tasks="arc", langs="en", data_dir=tmp_path)
  assert one == xj.EvalConfig(tasks=("arc",), langs=("en",), data_dir=tmp_path)
  assert xj.LoraConfig(modules="q").modules == ("q",)
  assert xj.AnalysisConfig(low_resource="hi").low_resource == ("hi",)


@pytest.mark.parametrize("make,error,message", [
    (lambda: xj.AnalysisConfig(top_k=0), ValueError, "AnalysisConfig.top_k=0: expected an "
                                                     "integer >= 1"),
    (lambda: xj.AnalysisConfig(layers="1,2"), TypeError, "AnalysisConfig.layers='1,2'"),
    (lambda: xj.AnalysisConfig(bands={"early": (0, 1, 2)}), ValueError, "AnalysisConfig.bands"),
    (lambda: xj.EvalConfig(tasks=["arc"], data_dir=".", limit="5"), TypeError,
     "EvalConfig.limit='5': expected an integer or None"),
    (lambda: xj.EvalConfig(tasks=["arc"], data_dir=".", batch_size=0), ValueError, "batch_size"),
    (lambda: xj.LoraConfig(rank=2.0), TypeError, "LoraConfig.rank=2.0: expected an integer"),
    (lambda: xj.LoraConfig(alpha=float("nan")), ValueError, "LoraConfig.alpha=nan: expected a "
                                                            "finite number"),
    (lambda: xj.ObjectiveConfig(layers=2), TypeError, "ObjectiveConfig.layers=2: expected a "
                                                      "sequence of integers or None"),
    (lambda: xj.ObjectiveConfig(w_align="1"), TypeError, "ObjectiveConfig.w_align='1'"),
    (lambda: xj.TrainConfig(lr=float("inf")), ValueError, "TrainConfig.lr=inf"),
    (lambda: SAETrainConfig(width="4k"), TypeError, "SAETrainConfig.width='4k': expected an "
                                                    "integer"),
    (lambda: SAETrainConfig(lr=float("nan")), ValueError, "SAETrainConfig.lr=nan"),
    (lambda: xj.load_corpus("embedded", ["en"], max_sentences=0), ValueError,
     "load_corpus: max_sentences=0: expected an integer >= 1"),
    (lambda: xj.load_corpus(42), TypeError, "load_corpus: spec=42"),
    (lambda: xj.load_model(dtype="float16"), ValueError,
     "load_model: dtype='float16': choose one of float32, bfloat16"),
    (lambda: xj.load_model(mesh_shape="1,1"), TypeError, "load_model: mesh_shape='1,1'"),
])
def test_configs_and_loaders(make, error, message):
  with pytest.raises(error, match=message):
    make()


def test_the_calls_on_a_loaded_model(toy, tmp_path):
  model, saes, corpus = toy
  with pytest.raises(TypeError, match=r"load_saes: layers='1': expected a sequence of integers"):
    xj.load_saes(model, layers="1")
  with pytest.raises(TypeError, match=r"evaluate: config={'tasks': 'arc'}: expected an "
                                      r"EvalConfig \(xj.EvalConfig\(\*\*settings\)\)"):
    xj.evaluate(model, {"tasks": "arc"})
  with pytest.raises(TypeError, match=r"finetune: corpus='embedded': expected a ParallelCorpus"):
    xj.finetune(model, saes, "embedded", "hi", out=tmp_path)
  with pytest.raises(TypeError, match=r"finetune: train={'steps': 5}: expected a TrainConfig"):
    xj.finetune(model, saes, corpus, "hi", out=tmp_path, train={"steps": 5})
  tokens = np.array([[2, 5, 6]])
  with pytest.raises(TypeError, match=r"forward: config=.*expected a ModelConfig"):
    xj.forward(model.config, model.params, tokens)
  with pytest.raises(TypeError, match=r"forward: tokens: expected a \[batch, length\] integer "
                                      r"array, got int\d+ of shape \(3,\)"):
    xj.forward(model.params, model.config, tokens[0])
  out = xj.forward(model.params, model.config, tokens, np.ones_like(tokens))
  assert out.residuals.shape[:3] == (model.config.n_layers, 1, 3)
