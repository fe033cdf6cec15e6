"""Disparity versus the reference language: gaps, bands, paired bootstrap, top features."""
from __future__ import annotations

import numpy as np
import pytest

from sae import releases
from tests.helpers import synthetic_stats
from xling_jax.analysis import disparity
from xling_jax.analysis.corpus_stats import METRICS, CorpusStats


def test_gap_and_band_summary_definitions():
  values = {"en": np.array([10.0, 20.0, 40.0]), "hi": np.array([5.0, 20.0, 50.0]),
            "ml": np.array([8.0, 10.0, 40.0])}
  gaps = disparity.gap_pct(values, "en")
  np.testing.assert_allclose(gaps["hi"], [50.0, 0.0, -25.0])
  np.testing.assert_allclose(gaps["ml"], [20.0, 50.0, 0.0])
  summary = disparity.band_summary({k: v for k, v in gaps.items() if k != "en"},
                                   {"early": (0, 1), "deep": (2, 2)}, ["hi", "ml"])
  assert summary["early"]["per_language"]["hi"] == {"mean": 25.0, "max": 50.0}
  assert summary["early"]["group_max"] == 50.0
  assert summary["early"]["group_mean"] == pytest.approx((25.0 + 35.0) / 2)
  assert summary["deep"]["group_max"] == 0.0


def test_bands_parsing_and_defaults():
  assert disparity.default_bands(26) == {"early": (0, 8), "middle": (9, 17), "deep": (18, 25)}
  assert disparity.default_bands(4) == {"early": (0, 1), "middle": (2, 2), "deep": (3, 3)}
  assert disparity.parse_bands("a:0-3,b:4-5") == {"a": (0, 3), "b": (4, 5)}
  with pytest.raises(ValueError, match="NAME:FIRST-LAST"):
    disparity.parse_bands("early0-8")


def test_bootstrap_brackets_the_estimate_and_is_paired():
  base = synthetic_stats(9, langs=("en", "hi"))
  same = {**base.per_language, "copy": base.per_language["en"]}
  stats = CorpusStats(("en", "hi", "copy"), base.layers, same)
  ci = disparity.bootstrap(stats, ref="en", bands={"all": (0, 3)}, group=["hi"], n_resamples=200)
  point = disparity.gap_pct({l: stats.metric("activation", l) for l in same}, "en")
  for layer in stats.layers:
    assert ci.gap["hi"]["lo"][layer] <= point["hi"][layer] <= ci.gap["hi"]["hi"][layer]
  # Paired resampling: a language identical to the reference has a zero-width gap interval.
  np.testing.assert_allclose(ci.gap["copy"]["lo"], 0.0, atol=1e-9)
  np.testing.assert_allclose(ci.gap["copy"]["hi"], 0.0, atol=1e-9)


def test_top_features_and_overlap():
  stats = synthetic_stats(9)
  top = disparity.top_features(stats, k=5,
                               neuronpedia=releases.neuronpedia_set("gemmascope-res-16k"))
  assert top["en"][0]["overlap_with_ref"] == 1.0
  rates = disparity.firing_rates(stats, "hi")
  first = top["hi"][2]
  assert first["rates"][0] == pytest.approx(rates[2].max())
  assert first["neuronpedia"][0] == f"gemma-2-2b/2-gemmascope-res-16k/{first['features'][0]}"


@pytest.mark.parametrize("metric", METRICS)
def test_every_metric_bootstraps_through_the_one_weighted_formula(metric):
  base = synthetic_stats(7, langs=("en", "hi"))
  stats = CorpusStats(("en", "hi", "copy"), base.layers,
                      {**base.per_language, "copy": base.per_language["en"]})
  ci = disparity.bootstrap(stats, metric=metric, ref="en", bands={"all": (0, 3)}, group=["hi"],
                           n_resamples=50)
  assert ci.metric["copy"] == ci.metric["en"]
  lo, hi = np.array(ci.metric["hi"]["lo"]), np.array(ci.metric["hi"]["hi"])
  assert np.isfinite(lo).all() and (lo <= hi).all()
  np.testing.assert_allclose(ci.gap["copy"]["hi"], 0.0, atol=1e-9)


def test_bands_over_a_subset_of_layers_use_the_analysed_layers_only():
  gaps = {"hi": np.array([10.0, 30.0, 50.0])}  # at layers 0, 4, 17
  layers = (0, 4, 17)
  bands = {"early": (0, 5), "middle": (6, 11), "deep": (12, 17)}
  assert {b: c.tolist() for b, c in disparity.band_columns(layers, bands).items()} == {
      "early": [0, 1], "deep": [2]}
  summary = disparity.band_summary(gaps, bands, ["hi"], layers)
  assert set(summary) == {"early", "deep"}  # no analysed layer in 'middle'
  assert summary["early"]["per_language"]["hi"] == {"mean": 20.0, "max": 30.0}
  assert summary["early"]["analysed_layers"] == [0, 4]
  assert summary["deep"]["group_max"] == 50.0


def test_norm_control_excess_and_verdicts_come_from_the_same_resamples():
  stats = synthetic_stats(40, langs=("en", "hi", "ml"), n_layers=3)
  # hi: code mass 30% below en where its norm is as en's; ml: both 30% below (a norm effect).
  for lang, act_scale, norm_scale in (("hi", 0.7, 1.0), ("ml", 0.7, 0.7)):
    rows = stats.per_language[lang].rows
    rows["activation"][:] = stats.per_language["en"].rows["activation"] * act_scale
    rows["resid_norm"][:] = stats.per_language["en"].rows["resid_norm"] * norm_scale
    stats.per_language[lang].n_tokens[:] = stats.per_language["en"].n_tokens
  ci = disparity.bootstrap(stats, ref="en", bands={"all": (0, 2)}, group=("hi", "ml"),
                           n_resamples=200, controls=("resid_norm", "direction_activation"))
  gaps = {m: {l: g for l, g in disparity.gap_pct(
      {lang: stats.metric(m, lang) for lang in stats.languages}, "en").items() if l != "en"}
      for m in ("activation", "resid_norm")}
  control = disparity.norm_control(gaps, ci)
  np.testing.assert_allclose(control["excess"]["hi"], 30.0, atol=1e-9)
  np.testing.assert_allclose(control["excess"]["ml"], 0.0, atol=1e-9)
  assert control["verdict"]["hi"] == ["exceeds_norm"] * 3
  assert control["verdict"]["ml"] == ["norm_explained"] * 3
  assert set(ci.gap_by_metric) == {"resid_norm", "direction_activation"}
  lo, hi = ci.gap_by_metric["resid_norm"]["ml"]["lo"], ci.gap_by_metric["resid_norm"]["ml"]["hi"]
  assert np.all(np.asarray(lo) <= 30.0 + 1e-9) and np.all(np.asarray(hi) >= 30.0 - 1e-9)
  # Without a bootstrap there is an excess but no verdict.
  assert disparity.norm_control(gaps, None)["verdict"] is None
  # The activation's own intervals do not depend on which controls were resampled alongside.
  plain = disparity.bootstrap(stats, ref="en", bands={"all": (0, 2)}, group=("hi", "ml"),
                              n_resamples=200)
  assert plain.gap == ci.gap and plain.band_group == ci.band_group


def test_top_overlap_null_is_the_overlap_of_the_reference_halves():
  stats = synthetic_stats(10, langs=("en", "hi"), n_layers=2, width=8)
  assert disparity.top_overlap_null(stats, 3) is None
  a = np.array([[9, 8, 7, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6, 7, 8]], float)
  b = np.array([[9, 0, 7, 8, 0, 0, 0, 0], [8, 7, 6, 5, 4, 3, 2, 1]], float)
  stats.half_counts = (a, b)
  assert disparity.top_overlap_null(stats, 3) == pytest.approx([2 / 3, 0.0])
