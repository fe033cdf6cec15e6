"""RESULTS.md is what `bin.study` rendered from results/study.json, not a hand edit; and its
verdicts beside the paper follow the numbers."""
from __future__ import annotations

import copy
import json

from xling_jax.study import page as study_page

from tests.conftest import REPO

RECORD = json.loads((REPO / "results" / "study.json").read_text(encoding="utf-8"))


def test_results_md_is_the_rendering_of_its_json():
  assert (REPO / "RESULTS.md").read_text(encoding="utf-8") == study_page.render(RECORD)


def test_the_readme_quotes_the_results_summary():
  readme = (REPO / "README.md").read_text(encoding="utf-8")
  assert study_page.summary(RECORD) in " ".join(readme.split())
  assert "](results/heatmap.png)" in readme


def test_every_figure_results_md_shows_is_committed():
  page = (REPO / "RESULTS.md").read_text(encoding="utf-8")
  for name in ("heatmap.png", "layers.png", "benchmarks.png"):
    assert f"](results/{name})" in page
    assert (REPO / "results" / name).read_bytes()[:4] == b"\x89PNG"


def _verdicts(record) -> dict[str, str]:
  return {claim: verdict for claim, _, _, verdict in study_page.paper_rows(record)}


def test_the_gap_verdict_follows_the_sign_and_the_interval():
  record = copy.deepcopy(RECORD)
  early = record["analysis"]["band_summary"]["early"]
  ci = record["analysis"]["band_ci"]["early"]
  early["group_max"], ci["group_max"] = 12.0, [5.0, 20.0]
  claim = next(c for c in _verdicts(record) if "early layers" in c)
  assert _verdicts(record)[claim] == ("agrees in direction (low-resource activation is lower); "
                                      "smaller")
  ci["group_max"] = [-1.0, 20.0]
  assert _verdicts(record)[claim].startswith("does not agree (the gap's interval reaches 0")
  early["group_max"], ci["group_max"] = -3.0, [-6.0, -1.0]
  assert _verdicts(record)[claim] == "does not agree (low-resource activation is not lower)"


def test_the_lora_and_benchmark_verdicts_follow_the_numbers():
  record = copy.deepcopy(RECORD)
  lora = record["lora"]["ml"]
  i = study_page.objective_index(lora)
  lora["gain_pct"][i], lora["retention_pct"][i] = 120.0, 93.0
  verdicts = _verdicts(record)
  assert verdicts[f"Activation gain after LoRA, ml (layer {lora['layers'][i]})"] == \
      "agrees in direction; larger"
  assert verdicts[f"English activation retained, ml adapter (layer {lora['layers'][i]})"] == \
      "agrees (within 5 points)"
  lora["gain_pct"][i] = -1.0
  assert _verdicts(record)[f"Activation gain after LoRA, ml (layer {lora['layers'][i]})"] == \
      "does not agree"
  arc = record["benchmarks"]["lora"]["ml"]["arc"]["ml"]
  base = record["benchmarks"]["base"]["arc"]["ml"]
  arc["acc_norm"], arc["stderr"]["acc_norm"] = base["acc_norm"] + 0.3, 0.01
  base["stderr"]["acc_norm"] = 0.01
  assert _verdicts(record)["ARC-Challenge (ml) after the ml adapter"] == "a gain"
