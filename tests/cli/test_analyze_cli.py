"""bin.analyze end to end: real file formats in, every output file out and consistent."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from sae import jumprelu, releases, trees
from tests.conftest import REPO, shared_data_or_skip
from xling_jax.data.toy_tokenizer import build_toy_tokenizer, default_sentences


def _run(*args, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS="", PYTHONPATH=str(REPO))
  return subprocess.run([sys.executable, "-m", "bin.analyze", *args], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=timeout)


def test_platform_tpu_without_tpu_is_a_clear_message_not_a_traceback():
  proc = _run("--platform=tpu")
  assert proc.returncode == 2
  assert proc.stderr.startswith("error: --platform=tpu: no TPU is available")
  assert "JAX_PLATFORMS" not in proc.stderr  # JAX's hint would undo the flag
  assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_unknown_language_is_a_clear_error():
  proc = _run("--langs=en,xx")
  assert proc.returncode == 2
  assert "error: corpus embedded has no 'xx'" in proc.stderr and "Traceback" not in proc.stderr


def test_help_explains_every_flag():
  proc = _run("--help")
  for flag in ("--platform", "--config", "--checkpoint", "--tokenizer", "--sae_dir", "--sae_width",
               "--sae_l0", "--langs", "--corpus", "--max_sentences", "--batch_size", "--out",
               "--seed", "--bootstrap", "--mesh"):
    assert flag in proc.stdout, flag


@pytest.mark.slow
def test_end_to_end_on_hf_checkpoint_gemma_scope_tree_and_flores(tmp_path, toy_hf_dir, toy_config):
  flores = shared_data_or_skip("parallel", "flores200_sib200")
  tok_path = build_toy_tokenizer(default_sentences(), toy_config.vocab_size, tmp_path / "tok.model")
  saes = jumprelu.random_params(jax.random.PRNGKey(3), toy_config.d_model, 1 << 14,
                                n_layers=toy_config.n_layers, input_std=3.0)  # width 16k
  canonical = releases.canonical_l0()["16k"]
  trees.save_layers_tree(tmp_path / "saes", saes, width="16k", l0s=canonical)
  decoy = jax.tree.map(lambda a: a * 0, saes)  # a second L0 variant that must not be picked
  trees.save_layers_tree(tmp_path / "saes", decoy, width="16k", l0s=7)
  common = [f"--checkpoint={toy_hf_dir}", f"--tokenizer={tok_path}",
            f"--sae_dir={tmp_path / 'saes'}", f"--corpus={flores}", "--max_sentences=12",
            "--bootstrap=50", "--batch_size=8", "--langs=en,zh,hi,ml"]
  out = tmp_path / "out"
  missing = _run(*common, "--sae_l0=50", f"--out={out}")
  assert missing.returncode != 0 and f"average_l0_{canonical[0]}" in missing.stderr
  proc = _run(*common, "--sae_l0=canonical", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "TOY RUN" not in proc.stdout  # a real checkpoint is not labelled toy

  record = json.loads((out / "stats.json").read_text())
  assert record["languages"] == ["en", "zh", "hi", "ml"]
  assert record["layers"] == list(range(toy_config.n_layers))
  assert set(record["metrics"]) >= {"activation", "l0", "mean_active", "resid_norm"}
  assert record["n_sentences"] == {l: 12 for l in record["languages"]}
  assert all(record["n_tokens"][l] > 12 for l in record["languages"])
  act = record["metrics"]["activation"]
  assert min(act["en"]) > 0  # the canonical SAEs were loaded, not the all-zero decoys
  for lang in ("zh", "hi", "ml"):
    expect = 100 * (np.array(act["en"]) - np.array(act[lang])) / np.array(act["en"])
    np.testing.assert_allclose(record["gap_vs_en"][lang], expect, rtol=1e-9)
  with open(out / "disparity.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 4 * toy_config.n_layers
  for row in rows:
    lang, layer = row["language"], int(row["layer"])
    assert float(row["activation"]) == pytest.approx(act[lang][layer], rel=1e-12)
    if lang != "en":
      assert float(row["gap_pct"]) == pytest.approx(record["gap_vs_en"][lang][layer], rel=1e-12)
  md = (out / "report.md").read_text()
  band = record["band_summary"]["early"]["per_language"]["hi"]["mean"]
  assert f"{band:.2f}" in md and "low-resource max" in md
  for png in ("heatmap.png", "layers.png"):
    data = (out / png).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
  assert md.splitlines()[0] in proc.stdout  # the summary table is printed


@pytest.mark.slow
def test_reference_language_alone_writes_everything_but_the_heatmap(tmp_path):
  out = tmp_path / "en_only"
  proc = _run("--langs=en", "--max_sentences=4", "--bootstrap=0", f"--out={out}",
              "--progress=false")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert json.loads((out / "stats.json").read_text())["languages"] == ["en"]
  assert (out / "layers.png").exists() and not (out / "heatmap.png").exists()


@pytest.mark.slow
def test_any_language_with_a_file_and_the_whole_configuration_recorded(tmp_path):
  """fr is no study language but the corpus has fr.txt; one sentence with --bootstrap warns
  that the intervals are degenerate; a batch larger than the corpus is capped and said so;
  stats.json records every flag the run used."""
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  (corpus / "en.txt").write_text("The cat sleeps on the warm stone.\n")
  (corpus / "fr.txt").write_text("Le chat dort sur la pierre chaude.\n")
  out = tmp_path / "out"
  proc = _run(f"--corpus={corpus}", "--langs=en,fr", "--low_resource=fr", "--bootstrap=20",
              "--batch_size=512", f"--out={out}", "--noprogress")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "intervals are degenerate" in proc.stderr
  assert "--batch_size=512 is more than the corpus's 1 sentences: batches of 1" in proc.stderr
  record = json.loads((out / "stats.json").read_text())
  assert record["languages"] == ["en", "fr"] and record["low_resource_group"] == ["fr"]
  assert record["config"]["langs"] == ["en", "fr"] and record["config"]["batch_size"] == 512
  assert set(record["config"]) >= {
      "platform", "config", "checkpoint", "tokenizer", "dtype", "mesh", "param_sharding", "seed",
      "sae_dir", "sae_width", "sae_l0", "langs", "ref_lang", "corpus", "max_sentences",
      "batch_size", "bucket", "max_len", "bands", "low_resource", "bootstrap", "top_k", "out",
      "progress"}
  md = (out / "report.md").read_text()
  assert "the low-resource group: fr." in md and "intervals are degenerate" in md
