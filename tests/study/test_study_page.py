"""RESULTS.md is what `bin.study` rendered from results/study.json, not a hand edit."""
from __future__ import annotations

import json

from tests.conftest import REPO
from xling_jax.study import page as study_page, verdicts

RECORD = json.loads((REPO / "results" / "study.json").read_text(encoding="utf-8"))


def test_results_md_is_the_rendering_of_its_json():
  assert (REPO / "RESULTS.md").read_text(encoding="utf-8") == study_page.render(RECORD)


def test_the_readme_quotes_the_results_summary():
  readme = (REPO / "README.md").read_text(encoding="utf-8")
  assert verdicts.summary(RECORD) in " ".join(readme.split())
  assert "](results/heatmap.png)" in readme


def test_every_figure_results_md_shows_is_committed():
  page = (REPO / "RESULTS.md").read_text(encoding="utf-8")
  for name in ("heatmap.png", "layers.png", "benchmarks.png"):
    assert f"](results/{name})" in page
    assert (REPO / "results" / name).read_bytes()[:4] == b"\x89PNG"
