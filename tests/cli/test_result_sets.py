"""Every tool writes its result files as one set (`runtime.io.write_set`): when one of them
cannot be written (here: a folder sits where it goes, as a full disk would fail it), the tool
says which in one line and the previous run's files are all still there, none replaced (issue
25, point 7)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lora import finetune, train
from tests.conftest import REPO
from tests.helpers import write_arc_items
from xling_jax import model_setup
from xling_jax.data import corpora
from xling_jax.runtime import io
from xling_jax.study import page


def previous_run(out, names, blocked):
  """`out` holding an earlier run's `names` and a folder where `blocked` goes; returns the
  bytes of every file, to compare with afterwards."""
  for name in names:
    (out / name).parent.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(f"previous {name}")
  (out / blocked).mkdir(parents=True)
  return {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}


def run_tool(tool, *args):
  return subprocess.run([sys.executable, "-m", tool, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=600,
                        env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO)))


def assert_refused_whole(proc, out, before, blocked):
  error = proc.stderr.strip().splitlines()[-1]
  assert proc.returncode == 2 and error.startswith(f"error: {out / blocked}: is a directory"), \
      proc.stderr[-3000:]
  assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
  assert not [p for p in out.rglob("*.tmp")]


def test_intrinsic(tmp_path):
  before = previous_run(tmp_path, ["intrinsic.json", "intrinsic.csv"], "intrinsic.md")
  proc = run_tool("bin.intrinsic", f"--out={tmp_path}", "--langs=en,hi", "--max_sentences=4",
                  "--bpc_sentences=2")
  assert_refused_whole(proc, tmp_path, before, "intrinsic.md")


def test_evaluate(tmp_path):
  write_arc_items(tmp_path / "data")
  out = tmp_path / "out"
  before = previous_run(out, ["scores.json", "scores.csv", "items.jsonl", "scores.md"],
                        "run.json")
  proc = run_tool("bin.evaluate", f"--out={out}", f"--data_dir={tmp_path / 'data'}",
                  "--tasks=arc", "--langs=en,hi")
  assert_refused_whole(proc, out, before, "run.json")


def test_train_sae(tmp_path):
  """The SAEs and their reports of every layer are one set: a resumed run that cannot write
  one report keeps the earlier run's SAEs and reports."""
  args = [f"--out={tmp_path}", "--layers=1,2", "--width=32", "--steps=4", "--batch_size=64",
          "--eval_batches=1"]
  assert run_tool("bin.train_sae", *args).returncode == 0
  blocked = tmp_path / "reports" / "layer_2.png"
  blocked.unlink()
  blocked.mkdir()
  results = lambda: {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and
                     p.parts[len(tmp_path.parts)] in ("resid_post", "reports")}
  before = results()
  proc = run_tool("bin.train_sae", *args, "--resume")
  assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
      f"error: {blocked}: is a directory"), proc.stderr[-3000:]
  assert results() == before and len(before) == 7  # 2 SAEs x 2 files, 3 of the 4 reports


def test_finetune_report_and_adapter(tmp_path):
  model = model_setup.load_model()
  saes = model_setup.load_saes(model, layers=(2,))
  corpus = corpora.load_corpus("embedded", ["mr", "en"], max_sentences=10)
  before = previous_run(tmp_path, ["peft/adapter_model.safetensors", "peft/adapter_config.json",
                                   "report.json"], "report.md")
  with pytest.raises(io.OutputError, match=r"report.md: is a directory"):
    finetune.finetune(model, saes, corpus, "mr", out=tmp_path, echo=lambda line: None,
                      train=train.TrainConfig(steps=2, warmup_steps=0, batch_size=4))
  assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()
          and p.parent.name != "checkpoints" and "checkpoints" not in p.parts
          and p.name != "train_log.jsonl"} == before


def test_study_page_and_record(tmp_path):
  record = json.loads((REPO / "results" / "study.json").read_text())
  out = tmp_path / "study"
  before = previous_run(tmp_path, ["RESULTS.md", "results/study.json", "study/study.json"],
                        "results/benchmarks.png")
  with pytest.raises(io.OutputError, match=r"benchmarks.png: is a directory"):
    page.write(tmp_path / "RESULTS.md", record, {}, also={out / "study.json": "new"})
  assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
