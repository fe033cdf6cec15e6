"""`python -m bin.train_sae` end to end on the toy model, and its bad-input errors: one line on
stderr, exit code 2, nothing computed or written."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sae import trees

REPO = Path(__file__).resolve().parents[2]
TOY_FLAGS = ("--layers=1,3", "--width=32", "--batch_size=16", "--target_l0=5", "--langs=en,hi",
             "--max_sentences=4", "--buffer_tokens=64", "--bucket=16", "--log_every=4",
             "--save_every=6", "--eval_batches=2", "--epochs=3", "--progress=false")


def _run(*flags: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONWARNINGS="ignore")
  return subprocess.run([sys.executable, "-m", "bin.train_sae", *flags], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
  return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  out = tmp_path_factory.mktemp("train_sae") / "out"
  proc = _run(*TOY_FLAGS, "--steps=12", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return out, proc


def test_toy_run_writes_the_gemma_scope2_layout_and_reports(trained):
  out, proc = trained
  assert "TOY RUN" in proc.stderr
  assert "layer" in proc.stdout and "FVU" in proc.stdout
  names = sorted(p.name for p in (out / trees.GS2_SITE).iterdir())
  assert names == ["layer_1_width_32_l0_5", "layer_3_width_32_l0_5"]
  saes = trees.load_layers(out, [1, 3], width=32, l0=5, d_in=64)
  assert saes.W_enc.shape == (2, 64, 32)
  report = json.loads((out / "reports" / "layer_3.json").read_text())
  assert report["steps"] == 12 and report["sparsity"] == "quadratic"
  assert report["config"]["lr"] is None and report["lr"] == 5e-3  # scaled to 12 steps
  assert "lr 0.005 (scaled to 12 steps)" in proc.stderr
  for flag in report["flags"]:
    assert f"warning: layer 3: {flag}" in proc.stderr
  assert {"fvu", "l0", "mse", "dead_fraction", "dense_fraction"} <= set(report["final"])
  assert (out / "reports" / "layer_3.png").stat().st_size > 0


def test_rerun_without_resume_or_with_other_settings_is_refused(trained):
  out, _ = trained
  before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
  line = _one_error_line(_run(*TOY_FLAGS, "--steps=12", f"--out={out}"))
  assert "already holds checkpoints (latest step 12)" in line
  line = _one_error_line(_run(*TOY_FLAGS, "--steps=24", f"--out={out}", "--resume"))
  assert "sae.steps: checkpoint 12, now 24" in line
  assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("flags, message", [
    (("--layers=1,9",), r"layers \[1, 9\]: the model has 4 layers \(0\.\.3\)"),
    (("--steps=100000",), r"has [\d,]+ tokens \(3 passes: [\d,]+\), but 100,000 training steps"),
    (("--width=huge",), r"width 'huge': expected e\.g\. '16k'"),
    (("--target_l0=64",), r"target_l0=64.0 \(needs 0 < target_l0 <= width=32\)"),
])
def test_bad_settings_are_one_line_before_anything_is_written(tmp_path, flags, message):
  import re
  line = _one_error_line(_run(*TOY_FLAGS, "--steps=12", f"--out={tmp_path / 'out'}", *flags))
  assert re.search(message, line), line
  assert not (tmp_path / "out").exists()


def test_bad_activation_file_is_one_line(tmp_path):
  path = tmp_path / "acts.npy"
  np.save(path, np.zeros((4, 8, 2), np.float32))
  line = _one_error_line(_run("--activations=" + str(path), "--layers=3", "--steps=2",
                              f"--out={tmp_path / 'out'}"))
  assert f"{path}: shape (4, 8, 2) (rank 3), expected a [N, d] array" in line
  assert not (tmp_path / "out").exists()


def test_non_finite_activations_are_refused_before_training(tmp_path):
  x = np.ones((64, 8), np.float32)
  x[37, 2] = np.nan
  path = tmp_path / "acts.npy"
  np.save(path, x)
  line = _one_error_line(_run("--activations=" + str(path), "--layers=3", "--steps=2",
                              "--batch_size=8", f"--out={tmp_path / 'out'}"))
  assert f"{path}: row 37 holds nan (column 2); activations must be finite" in line
  assert not (tmp_path / "out").exists()


def test_layers_with_activations_says_it_names_the_files_layer(tmp_path):
  path = tmp_path / "acts.npy"
  np.save(path, np.ones((64, 8), np.float32))
  line = _one_error_line(_run("--activations=" + str(path), f"--out={tmp_path / 'out'}"))
  assert "--layers is required: with --activations it names the file's layer" in line


def test_an_sae_that_missed_its_target_is_flagged_at_the_end(tmp_path):
  """lr 1e-6 cannot move the thresholds in 12 steps: the run succeeds, and its last lines say
  the L0 missed the target and what to change, as reports/layer_3.json does."""
  path = tmp_path / "acts.npy"
  np.save(path, np.random.default_rng(0).standard_normal((16 * 14, 8)).astype(np.float32))
  out = tmp_path / "out"
  proc = _run("--activations=" + str(path), "--layers=3", "--steps=12", "--batch_size=16",
              "--width=32", "--target_l0=2", "--lr=1e-6", "--eval_batches=2", "--progress=false",
              f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((out / "reports" / "layer_3.json").read_text())
  assert report["lr"] == 1e-6 and report["flags"][0].startswith("L0 ")
  tail = proc.stderr.strip().splitlines()[-len(report["flags"]):]
  assert tail == [f"warning: layer 3: {flag}" for flag in report["flags"]]
  assert "raise --lr or --l0_coefficient (were --lr=1e-06" in tail[0]
