"""bin.bench runs end to end (both stacks) and writes the JSON schema BENCHMARKS.md relies on."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def test_bench_toy_writes_every_row_with_ratios(tmp_path):
  pytest.importorskip("torch")
  out = tmp_path / "bench.json"
  proc = subprocess.run(
      [sys.executable, "-m", "bin.bench", "--config=toy", "--batch=2", "--seq=32", "--repeats=1",
       f"--json={out}"], env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO,
      capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert [r["work"] for r in result["rows"]] == [
      "residuals", "analysis", "scoring", "mc_scoring", "lora_step"]
  for row in result["rows"]:
    assert row["ours_tok_s"] > 0 and row["hf_tok_s"] > 0
    assert row["ratio"] == pytest.approx(row["ours_tok_s"] / row["hf_tok_s"])
  assert result["peak_matmul_flop_s"] > 0
  assert set(result["flop_limit_fraction"]) == {"residuals", "analysis", "scoring", "lora_step"}
  assert "| mc_scoring |" in proc.stdout
