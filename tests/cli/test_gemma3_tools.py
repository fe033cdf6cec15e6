"""Every tool on a Gemma 3 checkpoint: bin.analyze, bin.evaluate, bin.finetune and bin.bench run
end to end on a random toy Gemma 3 written as an HF directory, with Gemma Scope 2-layout SAEs."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import pytest

from sae import jumprelu, trees
from tests.conftest import REPO
from tests.helpers import write_arc_items
from xling_jax import checkpoints
from xling_jax.data.toy_tokenizer import build_toy_tokenizer, default_sentences
from xling_jax.model import presets, transformer as model_lib

pytestmark = pytest.mark.slow
SAE_WIDTH = 64


@pytest.fixture(scope="module")
def gemma3_run(tmp_path_factory):
  """(checkpoint dir, tokenizer, SAE root, benchmark dir) for a toy Gemma 3."""
  root = tmp_path_factory.mktemp("gemma3_tools")
  config = presets.toy_gemma3()
  checkpoints.save_hf(root / "ckpt", model_lib.init_params(config, jax.random.PRNGKey(5)), config)
  tok = build_toy_tokenizer(default_sentences(), config.vocab_size, root / "tok.model")
  saes = jumprelu.random_params(jax.random.PRNGKey(6), config.d_model, SAE_WIDTH,
                                n_layers=config.n_layers, input_std=3.0)
  trees.save_gemma_scope2_layers(root / "saes", saes, l0s=20)
  write_arc_items(root / "bench")
  return root / "ckpt", tok, root / "saes", root / "bench"


def _run(tool: str, *args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=str(REPO))
  proc = subprocess.run([sys.executable, "-m", f"bin.{tool}", *args], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def test_analyze_runs_on_gemma3_with_gemma_scope2_saes(gemma3_run, tmp_path):
  ckpt, tok, saes, _ = gemma3_run
  _run("analyze", f"--checkpoint={ckpt}", f"--tokenizer={tok}", f"--sae_dir={saes}",
       f"--sae_width={SAE_WIDTH}", "--sae_l0=20", "--langs=en,hi,ml", "--bootstrap=20",
       "--progress=false", f"--out={tmp_path}")
  stats = json.loads((tmp_path / "stats.json").read_text())
  assert stats["provenance"]["config"]["family"] == "gemma3"
  n_layers = presets.toy_gemma3().n_layers
  assert stats["languages"] == ["en", "hi", "ml"] and stats["layers"] == list(range(n_layers))
  assert all(len(stats["metrics"]["activation"][lang]) == n_layers for lang in ("en", "hi", "ml"))


def test_evaluate_runs_on_gemma3(gemma3_run, tmp_path):
  ckpt, tok, _, bench = gemma3_run
  _run("evaluate", f"--checkpoint={ckpt}", f"--tokenizer={tok}", f"--data_dir={bench}",
       "--tasks=arc", "--langs=en,hi", "--num_fewshot=0", "--progress=false", f"--out={tmp_path}")
  scores = json.loads((tmp_path / "scores.json").read_text())
  assert all(scores["arc"][lang]["n"] == 3 for lang in ("en", "hi"))


def test_finetune_runs_on_gemma3(gemma3_run, tmp_path):
  ckpt, tok, saes, _ = gemma3_run
  _run("finetune", f"--checkpoint={ckpt}", f"--tokenizer={tok}", f"--sae_dir={saes}",
       f"--sae_width={SAE_WIDTH}", "--sae_l0=20", "--target_lang=hi", "--objective_layers=5",
       "--steps=4", "--batch_size=4", f"--out={tmp_path}")
  report = json.loads((tmp_path / "report.json").read_text())
  assert report["provenance"]["config"]["family"] == "gemma3"
  assert (tmp_path / "peft" / "adapter_model.safetensors").exists()


def test_bench_runs_on_gemma3_weights(gemma3_run, tmp_path):
  ckpt, _, _, _ = gemma3_run
  _run("bench", f"--checkpoint={ckpt}", "--rows=residuals,scoring", "--repeats=1", "--batch=2",
       "--seq=16", f"--json={tmp_path / 'bench.json'}")
  result = json.loads((tmp_path / "bench.json").read_text())
  assert result["family"] == "gemma3"
  assert all(r["ours_tok_s"] and r["hf_tok_s"] for r in result["rows"])
