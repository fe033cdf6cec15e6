"""Ctrl-C in a tool: one line `interrupted: ...` (what was saved, how to continue), exit code
130, no traceback, earlier results untouched; a trainer names the checkpoint it saved and
--resume continues from it. Each test starts the tool and sends SIGINT once a given line shows."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

from bin import cli
from tests.conftest import REPO


def interrupt(tool: str, after: str, *args: str) -> tuple[int, list[str]]:
  """Run `python -m tool args`, send SIGINT once a line contains `after`; (exit code, every
  output line, stdout and stderr interleaved). The tool starts with SIGINT's default action, as
  from a terminal: a test run started in the background inherits SIGINT ignored, and Python
  then never raises KeyboardInterrupt. A tool still running after 300 s is killed."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  env.pop("XLING_TRACEBACK", None)
  # A handled (not ignored) SIGINT here is SIG_DFL in the child after exec; no preexec_fn,
  # whose fork in this JAX-threaded process could deadlock.
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    proc = subprocess.Popen([sys.executable, "-m", tool, *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  finally:
    signal.signal(signal.SIGINT, previous)
  watchdog = threading.Timer(300, proc.kill)
  watchdog.start()
  lines = []
  try:
    for line in proc.stdout:
      lines.append(line.rstrip("\n"))
      if after in line:
        proc.send_signal(signal.SIGINT)
        break
    lines += proc.stdout.read().splitlines()
    proc.wait(timeout=120)
  finally:
    watchdog.cancel()
    proc.kill()
  return proc.returncode, lines


def last_line(code: int, lines: list[str]) -> str:
  """The one `interrupted:` line, after checking the exit code and that nothing else
  (a traceback, an orbax log) followed the signal."""
  text = "\n".join(lines)
  assert code == cli.INTERRUPT_EXIT, text[-3000:]
  assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
  said = [l for l in lines if l.startswith("interrupted: ")]
  assert len(said) == 1 and lines[-1] == said[0], text[-3000:]
  return said[0]


def test_analyze_says_nothing_was_written(tmp_path):
  (tmp_path / "stats.json").write_text("previous run")
  line = last_line(*interrupt("bin.analyze", "devices:", f"--out={tmp_path}",
                              "--bootstrap=100000"))
  assert f"nothing written; the previous results in {tmp_path} are kept" in line
  assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.json"]
  assert (tmp_path / "stats.json").read_text() == "previous run"


def test_finetune_names_its_checkpoint_and_resume_continues(tmp_path):
  out = tmp_path / "run"
  line = last_line(*interrupt("bin.finetune", "step 10/", f"--out={out}", "--steps=60",
                              "--save_every=5", "--log_every=5"))
  step = int(re.search(r"saved step (\d+) in (\S+); rerun with --resume to continue",
                       line).group(1))
  assert str(out / "checkpoints") in line and 5 <= step < 60
  assert (out / "checkpoints" / str(step)).is_dir()
  proc = subprocess.run([sys.executable, "-m", "bin.finetune", f"--out={out}", "--steps=60",
                         "--save_every=5", "--log_every=5", "--resume"], cwd=REPO,
                        env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO)),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"resumed from step {step}" in proc.stdout + proc.stderr


def test_finetune_before_its_first_checkpoint(tmp_path):
  line = last_line(*interrupt("bin.finetune", "devices:", f"--out={tmp_path}"))
  assert "no checkpoint was saved yet" in line and "rerun the same command" in line


def test_train_sae_names_its_checkpoint(tmp_path):
  line = last_line(*interrupt("bin.train_sae", "step 20/", f"--out={tmp_path}",
                              "--layers=1,2", "--steps=180", "--batch_size=64",
                              "--save_every=10", "--log_every=10", "--width=64"))
  step = int(re.search(r"saved step (\d+) in ", line).group(1))
  assert step >= 10 and (tmp_path / "checkpoints" / str(step)).is_dir()
  assert str(tmp_path / "checkpoints") in line and "--resume" in line
