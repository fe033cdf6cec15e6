"""The verdicts beside the paper and against the controls follow the numbers, not the committed
run's values."""
from __future__ import annotations

import copy
import json

import pytest

from tests.conftest import REPO
from xling_jax.study import verdicts

RECORD = json.loads((REPO / "results" / "study.json").read_text(encoding="utf-8"))


def _rows(record) -> dict[str, tuple[str, str]]:
  return {claim: (verdict, survives)
          for claim, _, _, verdict, survives in verdicts.paper_rows(record)}


def _claim(record, text):
  return next(c for c in _rows(record) if text in c)


def test_the_gap_verdict_follows_every_seed_and_its_interval():
  record = copy.deepcopy(RECORD)
  for lang, gaps in record["analysis"]["gap_by_metric"]["activation"].items():
    gaps[:] = [12.0] * len(gaps)
  record["seeds"]["band_group"]["early"] = {"group_mean": [12.0, 11.0, 13.0],
                                            "group_max": [20.0, 19.0, 21.0],
                                            "group_mean_ci": [[8.0, 16.0], [7.0, 15.0],
                                                              [9.0, 17.0]]}
  claim = _claim(record, "early layers")
  assert _rows(record)[claim][0] == "agrees in direction (low-resource activation is lower)"
  record["seeds"]["band_group"]["early"]["group_mean_ci"][1] = [-0.5, 15.0]  # one seed's
  assert _rows(record)[claim][0] == "does not agree (its interval reaches 0 or below)"
  del record["seeds"]["band_group"]["early"]["group_mean_ci"]  # no bootstrap: the seeds alone
  assert _rows(record)[claim][0] == "agrees in direction (low-resource activation is lower)"
  record["seeds"]["band_group"]["early"]["group_mean"][2] = -1.0
  assert _rows(record)[claim][0] == "does not agree (its interval reaches 0 or below)"


def test_a_band_survives_its_norm_control_only_where_most_cells_exceed_the_norm_in_every_seed():
  record = copy.deepcopy(RECORD)
  n, exceeds = record["seeds"]["n"], record["seeds"]["exceeds_norm"]
  claim = _claim(record, "deep layers")
  for lang in exceeds:
    exceeds[lang] = [n] * len(exceeds[lang])
  assert _rows(record)[claim][1].startswith("yes:")
  for lang in exceeds:
    exceeds[lang] = [n - 1] * len(exceeds[lang])  # one seed fails everywhere
  assert _rows(record)[claim][1].startswith("no, mostly a residual-norm effect: 0 of")
  assert "mostly a residual-norm effect" in verdicts.summary(record)


def test_the_lora_gain_survives_only_when_its_norm_control_does_not_reach_it():
  record = copy.deepcopy(RECORD)
  target, lora = next(iter(record["lora"].items()))
  norm = record["controls"][target]["norm"]
  i, j = verdicts.objective_index(lora), verdicts.objective_index(norm)
  lora["gain_pct"][i] = 40.0
  claim = _claim(record, f"Activation gain after LoRA, {target}")
  norm["gain_pct"][j] = 30.0
  assert _rows(record)[claim] == ("agrees in direction (guaranteed by the objective)",
                                  "no: the norm-objective control gains +30.0%")
  norm["gain_pct"][j] = 5.0
  assert _rows(record)[claim][1] == "yes: the norm-objective control gains only +5.0%"


def test_a_paired_benchmark_change_counts_only_beyond_its_interval():
  record = copy.deepcopy(RECORD)
  target = next(iter(record["lora"]))
  c = record["benchmarks"]["paired"][f"bench_lora_{target}"][target]
  claim = _claim(record, f"ARC-Challenge ({target}) after the {target} adapter")
  c["diff"], c["diff_ci"] = 0.04, [0.01, 0.07]
  assert _rows(record)[claim][0].startswith("a gain (McNemar p")
  c["diff"], c["diff_ci"], c["mde"] = 0.01, [-0.02, 0.04], 0.08
  assert _rows(record)[claim][0] == ("no change beyond its 95% paired interval: smaller than the "
                                     "detectable 8.0 points")


@pytest.mark.parametrize("activation,per_sentence,flips", [(5.0, 3.0, 0), (5.0, -3.0, 1)])
def test_sign_flips_count_cells_where_per_sentence_disagrees(activation, per_sentence, flips):
  record = copy.deepcopy(RECORD)
  by = record["analysis"]["gap_by_metric"]
  for lang in by["activation"]:
    by["activation"][lang] = [activation] * len(by["activation"][lang])
    by["sentence_mass"][lang] = [per_sentence] * len(by["sentence_mass"][lang])
  got, cells = verdicts.sign_flips(record)
  assert got == flips * cells and cells > 0
