"""Random SAEs say so on every output's first screen: the CLI's stderr, report.md's title and
notes, every figure's title, stats.json and the LoRA report (issue 25, point 2)."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

from lora import finetune, train
from sae import random_saes
from tests.conftest import REPO
from xling_jax import model_setup
from xling_jax.analysis import report
from xling_jax.data import corpora
from xling_jax.data.toy_tokenizer import build_toy_tokenizer, default_sentences


def test_analyze_with_random_saes_on_a_checkpoint(tmp_path, toy_hf_dir, toy_config):
  out = tmp_path / "out"
  tok = build_toy_tokenizer(default_sentences(), toy_config.vocab_size, tmp_path / "tok.model")
  proc = subprocess.run(
      [sys.executable, "-m", "bin.analyze", f"--checkpoint={toy_hf_dir}", f"--tokenizer={tok}",
       "--sae_dir=random",
       "--sae_width=64", "--bootstrap=0", "--max_sentences=4", "--batch_size=4", "--langs=en,hi",
       "--low_resource=hi", f"--out={out}"],
      cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO)),
      capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "TOY" not in proc.stderr
  assert proc.stderr.splitlines()[0].startswith("RANDOM SAEs: random SAEs (width 64, seed 0)")
  md = (out / "report.md").read_text().splitlines()
  assert md[0].startswith("# RANDOM SAEs: SAE activation gap vs en")
  assert md[2].startswith("> RANDOM SAEs: ") and "say nothing" in md[2]
  record = json.loads((out / "stats.json").read_text())
  assert record["provenance"]["random_saes"] is True
  for title in report.titles(record, "embedded", toy=False).values():  # every PNG's title
    assert title.startswith("RANDOM SAEs: ")


def test_title_prefixes():
  assert random_saes.title_prefix(True, True) == "TOY model, random SAEs: "
  assert random_saes.title_prefix(True, False) == "TOY model: "
  assert random_saes.title_prefix(False, True) == "RANDOM SAEs: "
  assert random_saes.title_prefix(False, False) == ""
  record = {"reference_language": "en", "provenance": {"random_saes": False}}
  assert report.titles(record, "flores", toy=False)["gap"].startswith("SAE activation gap")


def test_finetune_with_random_saes(tmp_path):
  model = dataclasses.replace(model_setup.load_model(), is_toy=False)  # as a real checkpoint
  saes = model_setup.load_saes(model, "random", layers=(2,), width=64)
  assert saes.random
  corpus = corpora.load_corpus("embedded", ["mr", "en"], max_sentences=10)
  run = finetune.finetune(model, saes, corpus, "mr", out=tmp_path, echo=lambda line: None,
                          train=train.TrainConfig(steps=2, warmup_steps=0, batch_size=4))
  md = (tmp_path / "report.md").read_text().splitlines()
  assert md[0] == "# RANDOM SAEs: activation-aware LoRA, mr -> en"
  assert md[2].startswith("> RANDOM SAEs: random SAEs (width 64, seed 0)")
  assert run.report["random_saes"] is True
