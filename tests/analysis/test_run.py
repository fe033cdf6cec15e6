"""The analysis as a library call (what bin.analyze and a notebook run): the README's Python
example, layer subsets, settings checked before compute, and the public names of xling_jax."""
from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

import xling_jax as xj
from sae import releases
from tests.conftest import REPO
from xling_jax import model_setup
from xling_jax.analysis import corpus_stats, run as analysis
from xling_jax.data import corpora


@pytest.fixture(scope="module")
def toy():
  model = model_setup.load_model()
  corpus = corpora.load_corpus("embedded", ["en", "hi", "ml"], max_sentences=12)
  return model, corpus, model_setup.load_saes(model)


def test_the_readme_python_example_runs_as_written(tmp_path, monkeypatch):
  readme = (REPO / "README.md").read_text(encoding="utf-8")
  section = readme.split("## From Python", 1)[1]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  monkeypatch.chdir(tmp_path)
  namespace: dict = {}
  exec(compile(code, "README.md", "exec"), namespace)
  result = namespace["result"]
  assert isinstance(result, analysis.Analysis)
  assert result.record["languages"] == ["en", "hi", "ml"]
  assert result.gaps["ml"].shape == (namespace["model"].config.n_layers,)
  record = json.loads((tmp_path / "analysis_out" / "stats.json").read_text())
  assert record["gap_vs_en"]["ml"] == pytest.approx(list(result.gaps["ml"]), rel=1e-12)
  for name in ("disparity.csv", "report.md", "heatmap.png", "layers.png"):
    assert (tmp_path / "analysis_out" / name).stat().st_size > 0, name
  assert result._repr_markdown_() == (tmp_path / "analysis_out" / "report.md").read_text()


def test_a_layer_subset_gives_those_layers_of_the_whole_analysis(toy):
  model, corpus, every = toy
  settings = analysis.AnalysisConfig(bootstrap=0)
  whole = analysis.analyze(model, every, corpus, settings, show_progress=False)
  layers = (1, 3)
  subset = xj.load_saes(model, None, layers)
  part = analysis.analyze(model, subset, corpus, settings, show_progress=False)
  assert part.record["layers"] == [1, 3]
  for lang in corpus.languages:
    np.testing.assert_allclose(part.record["metrics"]["activation"][lang],
                               np.asarray(whole.record["metrics"]["activation"][lang])[[1, 3]],
                               rtol=1e-5)
  for lang in ("hi", "ml"):
    np.testing.assert_allclose(part.gaps[lang], whole.gaps[lang][[1, 3]], rtol=1e-4, atol=1e-6)
  deep = part.band_summary["deep"]
  assert deep["analysed_layers"] == [3]
  assert deep["per_language"]["hi"]["max"] == pytest.approx(whole.gaps["hi"][3], rel=1e-4)


@pytest.mark.parametrize("change,message", [
    (dict(ref_lang="zh"), "ref_lang=zh must be one of the corpus's languages (en,hi,ml)"),
    (dict(layers=(0, 4)), "layers=[0, 4]: layers must lie in 0..3"),
    (dict(bands={"early": (0, 1), "late": (2, 9)}), "reach past the model's last layer (3)"),
    (dict(layers=(3,), bands={"early": (0, 1)}), "layers=[3]: none of them lies in a band"),
    (dict(low_resource=("hi", "hi")), "language code(s) given more than once: hi"),
    (dict(batch_size=0), "batch_size=0: expected an integer >= 1"),
    (dict(layers=(0, 1)), "the SAEs cover layers [0, 1, 2, 3], the analysis asks for [0, 1]"),
    (dict(neuronpedia="res-16k"), "neuronpedia='res-16k': no release in releases.json"),
])
def test_settings_are_checked_before_any_compute(toy, monkeypatch, change, message):
  model, corpus, saes = toy

  def no_compute(*args, **kwargs):
    raise AssertionError("statistics computed before the settings were checked")

  monkeypatch.setattr(corpus_stats, "corpus_stats", no_compute)
  with pytest.raises(ValueError, match=re.escape(message)):
    analysis.analyze(model, saes, corpus, analysis.AnalysisConfig(**change))


def test_saes_for_another_width_of_residual_are_refused(toy):
  model, corpus, saes = toy
  narrow = dataclasses.replace(saes, params=saes.params.replace(
      W_enc=saes.params.W_enc[:, :8], W_dec=saes.params.W_dec[:, :, :8],
      b_dec=saes.params.b_dec[:, :8]))
  with pytest.raises(ValueError, match="the SAEs read 8-wide residuals, the model writes 64"):
    analysis.analyze(model, narrow, corpus)


def test_neuronpedia_ids_come_with_the_saes_and_the_config_overrides_them(toy):
  """SAEs from a known release carry its Neuronpedia set (model_setup.load_saes asks
  sae.releases), so a notebook links what bin.analyze links; AnalysisConfig.neuronpedia wins."""
  model, corpus, saes = toy
  settings = analysis.AnalysisConfig(bootstrap=0, top_k=2)
  small = corpus.head(2)
  assert saes.neuronpedia is None  # random toy SAEs are no release
  plain = analysis.analyze(model, saes, small, settings, show_progress=False)
  assert "neuronpedia" not in plain.record["top_features"]["hi"][1]
  released = dataclasses.replace(saes, neuronpedia=releases.neuronpedia_set("gemmascope-res-16k"))
  row = analysis.analyze(model, released, small, settings,
                         show_progress=False).record["top_features"]["hi"][1]
  assert row["neuronpedia"] == [f"gemma-2-2b/1-gemmascope-res-16k/{i}" for i in row["features"]]
  override = dataclasses.replace(settings, neuronpedia="gemma-2-2b/gemmascope-res-65k")
  row = analysis.analyze(model, released, small, override,
                         show_progress=False).record["top_features"]["hi"][1]
  assert row["neuronpedia"] == [f"gemma-2-2b/1-gemmascope-res-65k/{i}" for i in row["features"]]


def test_writing_over_a_file_is_refused_and_the_file_kept(toy, tmp_path):
  model, corpus, saes = toy
  result = analysis.analyze(model, saes, corpus.head(2), analysis.AnalysisConfig(bootstrap=0),
                            show_progress=False)
  (tmp_path / "taken").write_text("mine")
  with pytest.raises(ValueError, match="is an existing file, not a directory"):
    result.write(tmp_path / "taken")
  assert (tmp_path / "taken").read_text() == "mine"


def test_the_public_names_are_the_modules_own():
  assert set(xj.__all__) <= set(dir(xj))
  assert xj.analyze is analysis.analyze and xj.load_saes is model_setup.load_saes
  assert xj.load_corpus is corpora.load_corpus
  for name in xj.__all__:
    assert getattr(xj, name) is not None, name
  with pytest.raises(AttributeError, match="no attribute 'nope'"):
    xj.nope  # noqa: B018


def test_every_gap_comes_with_its_controls_and_every_sae_with_its_quality(toy, tmp_path):
  model, corpus, saes = toy
  result = analysis.analyze(model, saes, corpus,
                            analysis.AnalysisConfig(bootstrap=50, quality_sentences=5),
                            show_progress=False)
  record = result.record
  layers = len(record["layers"])
  assert set(record["metrics"]) == set(corpus_stats.METRICS)
  assert set(record["gap_by_metric"]) == set(corpus_stats.METRICS)
  for metric, by_lang in record["gap_by_metric"].items():
    assert set(by_lang) == {"hi", "ml"} and all(len(v) == layers for v in by_lang.values())
  np.testing.assert_allclose(record["gap_by_metric"]["activation"]["ml"], result.gaps["ml"])
  controls = record["controls"]
  np.testing.assert_allclose(
      controls["excess"]["hi"], np.subtract(record["gap_by_metric"]["activation"]["hi"],
                                            record["gap_by_metric"]["resid_norm"]["hi"]))
  assert {v for vs in controls["verdict"].values() for v in vs} <= {
      "exceeds_norm", "below_norm", "norm_explained"}
  assert len(controls["reference_norms"]) == layers
  quality = record["sae_quality"]
  assert quality["sentences"] == 5
  for key in ("fvu", "delta_lm_loss"):
    assert set(quality[key]) == {"en", "hi", "ml"} and len(quality[key]["hi"]) == layers
  result.write(tmp_path)
  text = (tmp_path / "report.md").read_text()
  assert "## Controls" in text and "## SAE quality per language" in text
  header = (tmp_path / "disparity.csv").read_text().splitlines()[0].split(",")
  assert {"gap_resid_norm_pct", "gap_direction_activation_pct", "excess_over_norm",
          "norm_verdict"} <= set(header)
  assert (tmp_path / "controls.png").stat().st_size > 0


def test_the_top_k_overlap_comes_with_its_null_from_two_halves_of_the_reference(toy):
  model, corpus, saes = toy
  record = analysis.analyze(model, saes, corpus, analysis.AnalysisConfig(bootstrap=0, top_k=5),
                            show_progress=False).record
  null = record["top_features_null"]
  assert len(null) == len(record["layers"]) and all(0 <= v <= 1 for v in null)
  # The halves are the reference's sentences: together they are its whole-corpus sums.
  assert record["n_sentences"]["en"] == corpus.n_sentences
