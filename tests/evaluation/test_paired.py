"""Paired before/after statistics against scipy and hand-made items."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from xling_jax.evaluation import paired, scoring


def _record(item_id, lls, gold, task="arc"):
  lls = np.asarray(lls, float)
  return {"task": task, "id": item_id, "loglikelihoods": lls.tolist(), "gold": gold,
          "pred": int(np.argmax(lls)), "pred_norm": int(np.argmax(lls)),
          "pred_bytes": int(np.argmax(lls))}


@pytest.mark.parametrize("b,c", [(0, 0), (3, 0), (7, 2), (10, 10), (1, 25), (40, 31)])
def test_mcnemar_is_the_exact_binomial_test_on_discordant_items(b, c):
  expected = 1.0 if b + c == 0 else stats.binomtest(min(b, c), b + c, 0.5).pvalue
  assert paired.mcnemar_p(b, c) == pytest.approx(expected, rel=1e-12)


def test_mde_is_the_normal_power_formula():
  d = np.random.default_rng(0).normal(0.1, 0.7, 400)
  z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
  assert paired.mde(d, binary=False) == pytest.approx(z * d.std(ddof=1) / math.sqrt(400))
  # Accuracy with no flip observed still reports a detectable size (assumed 15% discordance).
  assert paired.mde(np.zeros(100), binary=True) == pytest.approx(z * math.sqrt(0.15) / 10)
  assert paired.mde(np.zeros(1), binary=True) is None


def test_margin_is_gold_minus_the_best_other_choice():
  assert scoring.margin(_record(0, [-1.0, -3.0, -0.5], 0)) == pytest.approx(-0.5)
  assert scoring.margin(_record(0, [-1.0, -3.0, -2.5], 0)) == pytest.approx(1.5)
  assert scoring.aggregate([_record(0, [-1, -3], 0), _record(1, [-2, -1], 0)])["margin"] == 0.5


def test_compare_joins_on_ids_and_counts_the_flips():
  rng = np.random.default_rng(1)
  before, after = [], []
  for i in range(300):
    lls = rng.normal(size=4)
    before.append(_record(i, lls, 0))
    after.append(_record(i, lls + np.eye(4)[0] * 0.3, 0))  # the gold gains 0.3 nats
  after.append(_record(999, [0.0, -1.0], 0))  # scored only after: not paired
  out = paired.compare(before, list(reversed(after)), metric="acc")
  assert out["n"] == 300
  flips_up = sum(a["pred"] == 0 and b["pred"] != 0 for a, b in zip(after, before))
  assert out["mcnemar"] == {"b_only": flips_up, "a_only": 0, "p": paired.mcnemar_p(flips_up, 0)}
  assert out["diff"] == pytest.approx(flips_up / 300)
  assert out["margin"]["diff"] == pytest.approx(0.3, abs=1e-9)
  lo, hi = out["diff_ci"]
  assert lo <= out["diff"] <= hi
  assert out["mde"] > 0 and out["margin"]["mde"] == pytest.approx(
      (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * np.std(
          [scoring.margin(b) - scoring.margin(a) for a, b in zip(before, after[:300])], ddof=1)
      / math.sqrt(300))
