"""bin.finetune on the SAEs bin.train_sae wrote (issue 25, point 6): --sae_width and the default
objective layer follow what --sae_dir holds, and a mismatch fails before the model loads with
one line naming the fix."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import jax
import pytest

from sae import jumprelu, trees
from tests.conftest import REPO


def finetune(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "bin.finetune", *args], cwd=REPO,
                        env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO)),
                        capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory, toy_config):
  """32-wide SAEs for layers 0 and 3 of the toy (its default objective layer is 2), in
  bin.train_sae's layout."""
  root = tmp_path_factory.mktemp("saes")
  saes = jumprelu.random_params(jax.random.PRNGKey(3), toy_config.d_model, 32, n_layers=2,
                                input_std=3.0)
  trees.save_gemma_scope2_layers(root, saes, (0, 3), l0s=5)
  return root


@pytest.fixture(scope="module")
def run(sae_dir, tmp_path_factory):
  """(the finished process, its --out) of a short run on `sae_dir` with no SAE flag but it."""
  out = tmp_path_factory.mktemp("out")
  proc = finetune(f"--sae_dir={sae_dir}", "--steps=20", "--log_every=10", "--max_sentences=10",
                  "--batch_size=4", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc, out


def test_width_and_objective_layer_follow_the_sae_dir(run, sae_dir):
  proc, out = run
  assert f"--sae_width=32: the width of the SAEs in --sae_dir={sae_dir}" in proc.stderr
  assert "the default, layer 2 (the paper's relative depth), has no SAE in" in proc.stderr
  assert "using the nearest that has one, 3" in proc.stderr
  report = json.loads((out / "report.json").read_text())
  assert report["objective_layers"] == [3] and report["flags"]["sae_width"] == "32"


def test_every_phase_shows_itself_and_the_long_ones_an_eta(run):
  """A line before the model loads, one per phase, an ETA in the measurements' progress and in
  every logged training step (issue 25, point 3)."""
  proc, _ = run
  err = proc.stderr.replace("\r", "\n").splitlines()
  assert err[0].startswith("--sae_width=32") and err[1].startswith("--objective_layers: ")
  assert err[2] == "devices: 1 x cpu (cpu)" and err[3] == "loading the toy model ..."
  assert err[4].startswith("loading SAEs for layers [3]")
  for label in ("analysing [", "bits per character ["):
    assert any(l.startswith(label) and "ETA" in l for l in err), label
  steps = [l for l in proc.stdout.splitlines() if l.startswith("step ")]
  assert [l.split()[1] for l in steps] == ["10/20", "20/20"]
  assert all(re.search(r"\(ETA \d+s\)$", l) for l in steps), steps
  assert "training steps 1-20 (the first compiles the step) ..." in proc.stdout
  assert "measuring after training ..." in proc.stdout


@pytest.mark.parametrize("args,expected", [
    (["--sae_width=16k"], "--sae_width=16k: --sae_dir={d} holds widths ['32'] at layers [3]; "
                          "use --sae_width=32"),
    (["--objective_layers=1"], "--sae_dir={d} holds SAEs for layers [0, 3], not [1]: choose "
                               "--objective_layers and --report_layers among those"),
    (["--report_layers=0,2"], "not [2]: choose --objective_layers and --report_layers"),
])
def test_a_mismatch_fails_before_the_model_loads(sae_dir, tmp_path, args, expected):
  proc = finetune(f"--sae_dir={sae_dir}", *args, f"--out={tmp_path}")
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
  assert lines[0].startswith("error: ") and expected.format(d=sae_dir) in lines[0], lines[0]
