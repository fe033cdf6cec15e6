"""The verdicts beside the paper follow the numbers, not the committed run's values."""
from __future__ import annotations

import copy
import json

from tests.conftest import REPO
from xling_jax.study import verdicts

RECORD = json.loads((REPO / "results" / "study.json").read_text(encoding="utf-8"))


def _verdicts(record) -> dict[str, str]:
  return {claim: verdict for claim, _, _, verdict in verdicts.paper_rows(record)}


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
  i = verdicts.objective_index(lora)
  lora["gain_pct"][i], lora["retention_pct"][i] = 120.0, 93.0
  found = _verdicts(record)
  assert found[f"Activation gain after LoRA, ml (layer {lora['layers'][i]})"] == \
      "agrees in direction; larger"
  assert found[f"English activation retained, ml adapter (layer {lora['layers'][i]})"] == \
      "agrees (within 5 points)"
  lora["gain_pct"][i] = -1.0
  assert _verdicts(record)[f"Activation gain after LoRA, ml (layer {lora['layers'][i]})"] == \
      "does not agree"
  arc = record["benchmarks"]["lora"]["ml"]["arc"]["ml"]
  base = record["benchmarks"]["base"]["arc"]["ml"]
  arc["acc_norm"], arc["stderr"]["acc_norm"] = base["acc_norm"] + 0.3, 0.01
  base["stderr"]["acc_norm"] = 0.01
  assert _verdicts(record)["ARC-Challenge (ml) after the ml adapter"] == "a gain"
