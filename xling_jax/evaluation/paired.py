"""Paired comparisons of two scorings of the same items (a model before and after an adapter,
or two languages on common ids): what changed, whether the change is more than chance, and
the smallest change the comparison could have detected.

Per item i (records joined on (task, id)):
  correct_i    = 1 when the metric's prediction is the gold choice (acc: raw log-likelihood,
                 acc_norm: per character, acc_bytes: per byte; lm-eval's rules)
  margin_i     = `scoring.margin`: loglik(gold) - max over the other choices, in nats
Tests:
  McNemar      exact two-sided binomial test on the discordant items (b right only in A, c right
               only in B): p = min(1, 2 P[X <= min(b, c)]), X ~ Binomial(b + c, 1/2)
  bootstrap    paired resamples of items: the 95% interval of mean(B) - mean(A), for accuracy
               and for the margin
  MDE          the smallest true mean difference detectable at two-sided alpha 0.05 with 80%
               power: (z_0.975 + z_0.8) * sd(d) / sqrt(n), d_i the paired differences; for
               accuracy with no discordant item observed, sd(d) assumes 15% discordance
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from xling_jax.evaluation.scoring import PREDICTION_KEY, margin

Z_ALPHA, Z_POWER = 1.959963984540054, 0.8416212335729143  # two-sided 0.05; 80% power
ASSUMED_DISCORDANCE = 0.15


def mcnemar_p(b: int, c: int) -> float:
  """Exact two-sided McNemar p-value for b and c discordant items."""
  n, k = b + c, min(b, c)
  if n == 0:
    return 1.0
  tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
  return min(1.0, 2.0 * tail)


def mde(differences: np.ndarray, binary: bool) -> float | None:
  """Minimum detectable mean difference (module docstring); None with fewer than 2 items."""
  n = len(differences)
  if n < 2:
    return None
  sd = float(np.std(differences, ddof=1))
  if binary and sd == 0.0:
    sd = math.sqrt(ASSUMED_DISCORDANCE)
  return (Z_ALPHA + Z_POWER) * sd / math.sqrt(n)


def _join(a: Sequence[Mapping], b: Sequence[Mapping]) -> tuple[list, list]:
  by_id = {(r["task"], str(r["id"])): r for r in b}
  pairs = [(r, by_id[(r["task"], str(r["id"]))]) for r in a
           if (r["task"], str(r["id"])) in by_id]
  return [p[0] for p in pairs], [p[1] for p in pairs]


def compare(a: Sequence[Mapping], b: Sequence[Mapping], *, metric: str = "acc_norm",
            n_resamples: int = 2000, seed: int = 0) -> dict:
  """B against A on the items both scored (item records, `scoring.item_record`): {"n",
  "a", "b", "diff", "diff_ci", "mcnemar": {"b_only", "a_only", "p"}, "mde", "margin": {"a",
  "b", "diff", "diff_ci", "mde"}}; accuracies as fractions, margins in nats."""
  a, b = _join(a, b)
  n = len(a)
  if n == 0:
    return {"n": 0}
  key = PREDICTION_KEY[metric]
  ca = np.array([float(r[key] == r["gold"]) for r in a])
  cb = np.array([float(r[key] == r["gold"]) for r in b])
  ma, mb = np.array([margin(r) for r in a]), np.array([margin(r) for r in b])
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, n, size=(n_resamples, n))

  def interval(d):
    return np.percentile(d[idx].mean(1), [2.5, 97.5]).tolist()

  b_only, a_only = int(((cb == 1) & (ca == 0)).sum()), int(((ca == 1) & (cb == 0)).sum())
  return {
      "n": n, "metric": metric, "a": float(ca.mean()), "b": float(cb.mean()),
      "diff": float((cb - ca).mean()), "diff_ci": interval(cb - ca),
      "mcnemar": {"b_only": b_only, "a_only": a_only, "p": mcnemar_p(b_only, a_only)},
      "mde": mde(cb - ca, binary=True),
      "margin": {"a": float(ma.mean()), "b": float(mb.mean()), "diff": float((mb - ma).mean()),
                 "diff_ci": interval(mb - ma), "mde": mde(mb - ma, binary=False)},
  }
