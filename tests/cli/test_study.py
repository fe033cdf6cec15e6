"""bin.study end to end on the toy model: every stage, the cache, the settings check, and
RESULTS.md as the rendering of its study.json."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, shared_data_or_skip
from xling_jax.study import page as study_page

SMALL = ["--langs=en,hi,ml", "--targets=ml", "--sae_layers=0,2", "--sae_sentences=12",
         "--sae_batch_size=128", "--sae_width=256", "--lora_sentences=10", "--lora_steps=2",
         "--lora_batch_size=4", "--bpc_sentences=3", "--analysis_sentences=12", "--bootstrap=20",
         "--bench_limit=2", "--bench_tasks=arc", "--sae_seeds=2", "--lora_controls=norm",
         "--eval_sentences=4", "--quality_sentences=4", "--progress=false"]


def _study(*args):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  return subprocess.run([sys.executable, "-m", "bin.study", *args], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=1200)


@pytest.mark.slow
def test_study_runs_every_stage_caches_them_and_renders_its_json(tmp_path):
  bench = shared_data_or_skip("benchmarks")
  out, page = tmp_path / "study", tmp_path / "page" / "RESULTS.md"
  proc = _study(*SMALL, f"--bench_data_dir={bench}", f"--out={out}", f"--results_md={page}")
  assert proc.returncode == 0, proc.stderr[-4000:]
  stages = ("intrinsic", "saes", "saes_seed1", "analysis", "analysis_seed1", "lora_ml",
            "lora_ml_norm", "bench_base", "bench_lora_ml", "bench_lora_ml_norm")
  for stage in stages:
    assert f"] {stage}: python -m bin." in proc.stderr, stage
  record = json.loads((page.parent / "results" / "study.json").read_text())
  assert record == json.loads((out / "study.json").read_text())
  assert page.read_text() == study_page.render(record)
  assert record["analysis"]["layers"] == [0, 2]  # SAEs on two layers only
  assert set(record["saes"]["layers"]) == {"0", "2"}
  assert record["lora"]["ml"]["objective_layers"] == [2]
  assert record["benchmarks"]["base"]["arc"]["ml"]["n"] == 2
  # The v2 record: controls, quality, seeds, control adapters, paired benchmarks.
  assert set(record["analysis"]["gap_by_metric"]) >= {"activation", "resid_norm",
                                                      "direction_activation", "sentence_mass"}
  assert record["analysis"]["sae_quality"]["sentences"] == 4
  assert record["seeds"]["n"] == 2 and set(record["seeds"]["gap"]["activation"]) == {"hi", "ml"}
  assert set(record["controls"]["ml"]) == {"norm"}
  assert record["controls"]["ml"]["norm"]["objective"]["w_align"] == 0
  assert set(record["lora"]["ml"]["bits_per_char"]["before"]) >= {"ml", "en"}
  assert record["benchmarks"]["paired"]["bench_lora_ml"]["ml"]["n"] == 2
  # The adapters train and hold out lines past the SAEs' (12 of the embedded corpus's 42).
  assert record["settings"]["lora_first_line"] == 12
  assert "--first_line=12" in record["stages"]["lora_ml"]["command"]
  for png in ("heatmap.png", "layers.png", "controls.png", "benchmarks.png", "sae_layer_0.png"):
    assert (page.parent / "results" / png).read_bytes()[:4] == b"\x89PNG"

  again = _study(*SMALL, f"--bench_data_dir={bench}", f"--out={out}", f"--results_md={page}")
  assert again.returncode == 0, again.stderr[-2000:]
  assert again.stderr.count("done earlier") == len(stages)
  assert "python -m bin." not in again.stderr

  other = _study(*SMALL[:-1], "--lora_steps=3", f"--bench_data_dir={bench}", f"--out={out}")
  assert other.returncode == 2 and "Traceback" not in other.stderr
  assert "lora_steps=2" in other.stderr


def test_bad_input_is_one_line_before_any_stage(tmp_path):
  proc = _study("--train_corpus=/no/such/corpus", f"--out={tmp_path / 'x'}")
  assert proc.returncode == 2 and "--train_corpus=/no/such/corpus" in proc.stderr
  assert "Traceback" not in proc.stderr and not (tmp_path / "x").exists()
  proc = _study("--targets=en", f"--out={tmp_path / 'y'}")
  assert proc.returncode == 2 and "--targets=en" in proc.stderr
  assert not (tmp_path / "y").exists()
  proc = _study("--targets=", "--lora_controls=lm", f"--out={tmp_path / 'z'}")
  assert proc.returncode == 2 and "--lora_controls=lm needs --targets" in proc.stderr
  assert not (tmp_path / "z").exists()
  proc = _study("--lora_controls=kl", f"--out={tmp_path / 'w'}")
  assert proc.returncode == 2 and "kl is not a control" in proc.stderr
