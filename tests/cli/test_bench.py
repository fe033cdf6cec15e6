"""bin.bench runs end to end (both stacks) and writes the JSON schema BENCHMARKS.md relies on."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
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


def test_dry_run_plans_a_full_size_gemma4_without_weights(tmp_path):
  """--dry_run on E2B's full shape: no weights made (seconds on a CPU), the weights' bytes
  exactly the bf16 parameter table, both planned rows with a phase peak and FLOPs."""
  import math

  import jax

  from xling_jax.model import layout, presets
  out = tmp_path / "plan.json"
  proc = subprocess.run(
      [sys.executable, "-m", "bin.bench", "--dry_run", "--config=gemma4_e2b", "--dtype=bfloat16",
       "--batch=2", "--seq=32", f"--json={out}"], env=dict(os.environ, PYTHONPATH=str(REPO)),
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert result["dry_run"] and result["family"] == "gemma4"
  shapes = jax.tree.leaves(layout.param_shapes(presets.gemma4_e2b()),
                           is_leaf=lambda s: isinstance(s, tuple))
  n_params = sum(math.prod(s) for s in shapes)
  analysis, lora_step = result["rows"]
  assert analysis["work"] == "analysis" and lora_step["work"] == "lora_step"
  for row in result["rows"]:
    assert row["resident"]["weights"] == 2 * n_params
    assert row["total"] > row["resident"]["weights"] and row["flops_per_call"] > 0
  assert 0 < lora_step["saved_for_backward"] < lora_step["phases"]["differentiated"]
  assert "| lora_step |" in proc.stdout


def test_full_remat_saves_less_than_dots_on_the_gemma4_toy():
  from types import SimpleNamespace

  from bin import bench_memory
  from xling_jax.model import presets
  config = presets.toy_gemma4()
  shape = SimpleNamespace(batch=2, seq=16, sae_width=32, dtype="float32")  # as bench.Shape
  full, dots = (bench_memory.saved_for_backward(config, shape, 3, remat)["saved"]
                for remat in ("full", "dots"))
  assert 0 < full < dots


def test_out_of_memory_row_becomes_a_note_other_errors_propagate():
  from bin import timing

  class FakeOOM(RuntimeError):
    pass

  def oom():
    raise FakeOOM("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9 GiB")

  rate_or_note = lambda fn, repeats: timing.rates_or_notes([fn], repeats, 100, [(FakeOOM,)])[0]
  rate, note = rate_or_note(oom, 1)
  assert rate is None and "out of device memory" in note and "9 GiB" in note
  assert rate_or_note(lambda: None, 2)[1] is None

  def bug():
    raise FakeOOM("shapes do not match")

  with pytest.raises(FakeOOM, match="shapes"):
    rate_or_note(bug, 1)


def test_stacks_take_turns_and_one_out_of_memory_leaves_the_other_timed():
  from bin import timing

  class FakeOOM(RuntimeError):
    pass

  calls = []
  hf, ours = (lambda: calls.append("hf")), (lambda: calls.append("ours"))
  timing.median_seconds({"hf": hf, "ours": ours}, 3)
  assert calls == ["hf", "ours"] + ["hf", "ours"] * 3  # warm-ups, then timed calls in turns

  def oom():
    raise FakeOOM("RESOURCE_EXHAUSTED: Out of memory")

  calls.clear()
  (hf_rate, hf_note), (ours_rate, ours_note) = timing.rates_or_notes(
      [oom, ours], 2, 100, [(FakeOOM,), (FakeOOM,)])
  assert hf_rate is None and "out of device memory" in hf_note
  assert ours_rate > 0 and ours_note is None and calls.count("ours") == 4


@pytest.mark.slow
def test_profile_dir_trace_is_summarised_per_row(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "bin.bench", "--config=toy", "--batch=2", "--seq=32", "--repeats=1",
       "--hf=false", "--rows=residuals,scoring", f"--profile_dir={tmp_path}"],
      env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO, capture_output=True, text=True,
      timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = subprocess.run([sys.executable, "-m", "bin.trace_summary", str(tmp_path)], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
  assert summary.returncode == 0, summary.stderr
  assert "## residuals: wall" in summary.stdout and "## scoring: wall" in summary.stdout


@pytest.mark.slow
def test_sae_training_bench_times_both_trainers(tmp_path):
  pytest.importorskip("sae_lens")
  out = tmp_path / "sae_train.json"
  proc = subprocess.run(
      [sys.executable, "-m", "bin.bench_sae_train", "--d_in=32", "--width=64", "--batch_size=64",
       "--repeats=1", "--warmup=1", f"--json={out}"], env=dict(os.environ, PYTHONPATH=str(REPO)),
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert result["speedup"] > 0 and (result["d_in"], result["width"]) == (32, 64)
  assert "ours / SAELens" in proc.stdout
