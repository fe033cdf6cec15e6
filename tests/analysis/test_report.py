"""The analysis outputs: titles that say what is plotted, the named low-resource group, the
degenerate-bootstrap warning, and files written only once everything is rendered."""
from __future__ import annotations

import json

import pytest

from tests.helpers import synthetic_stats
from xling_jax.analysis import disparity, report
from xling_jax.analysis.corpus_stats import CorpusStats

LAYERS = 4  # synthetic_stats' default


def record_for(stats: CorpusStats, bootstrap: bool = True) -> dict:
  gaps = disparity.gap_pct({l: stats.metric("activation", l) for l in stats.languages}, "en")
  bands, group = disparity.default_bands(LAYERS), ["hi", "ml"]
  summary = disparity.band_summary({l: g for l, g in gaps.items() if l != "en"}, bands, group)
  ci = (disparity.bootstrap(stats, ref="en", bands=bands, group=group, n_resamples=20)
        if bootstrap else None)
  return report.build_stats_json(stats, gaps=gaps, ref="en", bands=bands, band_summary=summary,
                                 group=group, ci=ci, top=disparity.top_features(stats, k=3),
                                 config={"langs": list(stats.languages)}, provenance={})


def test_titles_say_what_each_figure_plots():
  t = report.titles(record_for(synthetic_stats(3)), "flores", toy=True)
  assert t["gap"] == "TOY model: SAE activation gap vs en (flores)"
  assert t["layers"] == "TOY model: SAE activation per layer (flores)"  # activation, not gap


def test_report_names_the_low_resource_group():
  md = report.summary_markdown(record_for(synthetic_stats(3)), "T")
  assert "the low-resource group: hi, ml." in md and "| **low-resource max** |" in md


@pytest.mark.parametrize("n_sentences,bootstrap,warned", [(1, True, True), (3, True, False),
                                                          (1, False, False)])
def test_one_sentence_bootstrap_intervals_are_called_degenerate(n_sentences, bootstrap, warned):
  record = record_for(synthetic_stats(n_sentences), bootstrap)
  md = report.summary_markdown(record, "T")
  assert ("intervals are degenerate" in md) == warned
  assert bool(report.warnings(record)) == warned


def test_outputs_are_rendered_before_any_file_is_replaced(tmp_path, monkeypatch):
  first = record_for(synthetic_stats(3))
  titles = []
  layers_png = report.layers_png
  monkeypatch.setattr(report, "layers_png",
                      lambda record, title: titles.append(title) or layers_png(record, title))
  paths, markdown = report.write_report(tmp_path, first, corpus="c", toy=False)
  assert markdown == paths["markdown"].read_text(encoding="utf-8")
  assert titles == ["SAE activation per layer (c)"]
  assert sorted(p.name for p in paths.values()) == sorted(
      ["stats.json", "disparity.csv", "report.md", "heatmap.png", "layers.png"])
  assert json.loads(paths["stats"].read_text())["low_resource_group"] == ["hi", "ml"]
  before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

  def broken(record, title):
    raise RuntimeError("matplotlib failed")

  monkeypatch.setattr(report, "layers_png", broken)
  with pytest.raises(RuntimeError, match="matplotlib failed"):
    report.write_report(tmp_path, record_for(synthetic_stats(5, seed=1)), corpus="c", toy=False)
  assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
