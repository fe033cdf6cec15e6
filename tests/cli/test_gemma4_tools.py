"""Every tool on the toy Gemma 4 (`--config=toy_gemma4`: per-layer embeddings, KV sharing, K = V
with wider global heads; and `toy_gemma4_moe` where its routed experts make a difference):
bin.train_sae writes SAEs that bin.analyze reads at the same hook point, bin.finetune (the MoE's
experts skipped with a note), bin.evaluate with and without the adapter, bin.intrinsic,
bin.bench against Gemma4ForCausalLM, and --mesh with an expert axis on 8 fake CPU devices."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO
from tests.helpers import write_arc_items
from xling_jax.model import presets

pytestmark = pytest.mark.slow
DENSE, MOE = "toy_gemma4", "toy_gemma4_moe"
# One layer of each kind: local and global with their own K/V, then both KV-shared.
SAE_LAYERS = (1, 2, 6, 7)
SAE_FLAGS = ("--width=32", "--batch_size=16", "--target_l0=5", "--langs=en,hi",
             "--max_sentences=4", "--buffer_tokens=64", "--bucket=16", "--log_every=4",
             "--eval_batches=2", "--epochs=3", "--steps=8", "--progress=false")


def _run(tool: str, *args: str, devices: int | None = None) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  if devices:
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                        + f" --xla_force_host_platform_device_count={devices}").strip()
  proc = subprocess.run([sys.executable, "-m", f"bin.{tool}", *args], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


@pytest.fixture(scope="module")
def bench_items(tmp_path_factory):
  path = tmp_path_factory.mktemp("gemma4_items")
  write_arc_items(path)
  return path


@pytest.fixture(scope="module", params=[DENSE, MOE])
def finetuned(request, tmp_path_factory):
  """(preset, bin.finetune's --out, its stdout): LoRA on every projection the preset has (the
  dense toy's per-layer-embedding maps too; the MoE toy's default modules)."""
  out = tmp_path_factory.mktemp(f"finetune_{request.param}")
  modules = (["--modules=q,k,v,o,gate,up,down,ple_gate,ple_proj"] if request.param == DENSE
             else [])
  proc = _run("finetune", f"--config={request.param}", "--target_lang=hi", "--steps=3",
              "--batch_size=4", *modules, f"--out={out}")
  return request.param, out, proc.stdout


def test_train_sae_writes_saes_that_analyze_reads(tmp_path):
  """The issue's proof point: SAEs trained on a toy Gemma 4's residuals (local and global
  layers, own and shared K/V) are read back by bin.analyze --sae_dir, which measures the same
  residual: the trainer's normalisation (E||s x||^2 = 1) matches the analysis's mean norm."""
  saes = tmp_path / "saes"
  _run("train_sae", f"--config={DENSE}", f"--layers={','.join(map(str, SAE_LAYERS))}",
       *SAE_FLAGS, f"--out={saes}")
  _run("analyze", f"--config={DENSE}", f"--sae_dir={saes}", "--sae_width=32", "--sae_l0=5",
       f"--layers={','.join(map(str, SAE_LAYERS))}", "--langs=en,hi", "--max_sentences=8",
       "--bootstrap=10", "--progress=false", f"--out={tmp_path / 'analysis'}")
  stats = json.loads((tmp_path / "analysis" / "stats.json").read_text())
  assert stats["layers"] == list(SAE_LAYERS)
  assert stats["provenance"]["saes"].startswith(str(saes))
  assert stats["provenance"]["config"]["family"] == "gemma4"
  for i, layer in enumerate(SAE_LAYERS):
    report = json.loads((saes / "reports" / f"layer_{layer}.json").read_text())
    np.testing.assert_allclose(1 / report["normalisation_scale"],
                               stats["metrics"]["resid_norm"]["en"][i], rtol=0.1)
    assert stats["metrics"]["l0"]["en"][i] > 0


def test_analyze_runs_on_the_moe_toy(tmp_path):
  _run("analyze", f"--config={MOE}", "--langs=en,hi,ml", "--max_sentences=8", "--bootstrap=10",
       "--progress=false", f"--out={tmp_path}")
  stats = json.loads((tmp_path / "stats.json").read_text())
  assert stats["provenance"]["config"]["n_experts"] == presets.toy_gemma4_moe().n_experts
  assert stats["layers"] == list(range(presets.toy_gemma4_moe().n_layers))


def test_finetune_writes_a_peft_adapter(finetuned):
  preset, out, stdout = finetuned
  report = json.loads((out / "report.json").read_text())
  assert report["provenance"]["config"]["family"] == "gemma4"
  targets = json.loads((out / "peft" / "adapter_config.json").read_text())["target_modules"]
  if preset == DENSE:
    assert {"per_layer_input_gate", "per_layer_projection"} <= set(targets)
    assert not any("experts" in n for n in report["notes"])
  else:  # the experts are skipped with a note, not refused
    assert "note: LoRA skips the 6 routed experts" in stdout
    assert any("routed experts" in n for n in report["notes"])


def test_evaluate_with_and_without_the_adapter(finetuned, bench_items, tmp_path):
  preset, out, _ = finetuned
  common = (f"--config={preset}", f"--data_dir={bench_items}", "--tasks=arc", "--langs=en,hi",
            "--num_fewshot=0", "--progress=false")
  _run("evaluate", *common, f"--out={tmp_path / 'base'}")
  _run("evaluate", *common, f"--lora={out / 'peft'}", f"--out={tmp_path / 'lora'}")
  read = lambda d: [json.loads(l)["loglikelihoods"]
                    for l in (tmp_path / d / "items.jsonl").read_text().splitlines()]
  base, adapted = np.asarray(read("base")), np.asarray(read("lora"))
  assert base.shape == adapted.shape == (6, 3) and np.isfinite(adapted).all()
  assert np.abs(base - adapted).max() > 1e-4  # the trained adapter changes the scores


def test_intrinsic_runs(tmp_path):
  _run("intrinsic", f"--config={DENSE}", "--langs=en,hi", "--max_sentences=8",
       f"--out={tmp_path}")
  assert (tmp_path / "intrinsic.json").exists()


@pytest.mark.parametrize("preset,rows", [(DENSE, "residuals,analysis,scoring,mc_scoring,lora_step"),
                                         (MOE, "residuals,lora_step")])
def test_bench_against_gemma4_for_causal_lm(preset, rows, tmp_path):
  _run("bench", f"--config={preset}", f"--rows={rows}", "--repeats=1", "--batch=2", "--seq=32",
       f"--json={tmp_path / 'bench.json'}")
  result = json.loads((tmp_path / "bench.json").read_text())
  assert result["family"] == "gemma4" and result["config"] == preset
  assert [r["work"] for r in result["rows"]] == rows.split(",")
  assert all(r["ours_tok_s"] and r["hf_tok_s"] for r in result["rows"])


def test_mesh_with_an_expert_axis_matches_data_parallel(bench_items, tmp_path):
  """--mesh=DATA,MODEL,EXPERT on 8 fake CPU devices: the MoE toy's experts split over
  `expert`, heads and widths over `model`; the scores equal those of --mesh=8,1."""
  common = (f"--config={MOE}", f"--data_dir={bench_items}", "--tasks=arc", "--langs=en,hi",
            "--num_fewshot=0", "--progress=false")
  _run("evaluate", *common, "--mesh=8,1", f"--out={tmp_path / 'data'}", devices=8)
  _run("evaluate", *common, "--mesh=2,2,2", "--param_sharding=tensor",
       f"--out={tmp_path / 'expert'}", devices=8)
  read = lambda d: [json.loads(l)["loglikelihoods"]
                    for l in (tmp_path / d / "items.jsonl").read_text().splitlines()]
  np.testing.assert_allclose(read("expert"), read("data"), rtol=1e-5, atol=1e-5)
