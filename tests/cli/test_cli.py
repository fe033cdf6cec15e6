"""Every command-line tool, on bad input: one line `error: ...` naming the flag or file, exit
code 2, no help dump, no traceback, nothing overwritten; --help exits 0. These few are
subprocesses because the exit code and stderr are the behaviour; they fail before any model
loads, so each takes seconds."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from absl import flags

from bin import cli
from tests.conftest import REPO

TOOLS = ("bin.analyze", "bin.evaluate", "bin.finetune", "bin.train_sae", "bin.bench",
         "bin.bench_sae", "bin.bench_sae_train", "bin.bench_kernels", "bin.trace_summary",
         "bin.intrinsic", "bin.study")


def run_tool(tool: str, *args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  return subprocess.run([sys.executable, "-m", tool, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, *expected: str) -> str:
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
  assert "--help" not in proc.stdout and "Traceback" not in proc.stderr
  for text in expected:
    assert text in lines[0], lines[0]
  return lines[0]


@pytest.mark.parametrize("tool,args,expected", [
    ("bin.analyze", ["--batch_size=-3"], ["--batch_size=-3", "not a positive integer"]),
    ("bin.analyze", ["--batch_size=0"], ["--batch_size=0"]),
    ("bin.evaluate", ["--limit=abc"], ["--limit=abc", "invalid literal"]),
    ("bin.finetune", ["--no_such_flag"], ["no_such_flag"]),
    ("bin.finetune", ["stray"], ["expected no arguments", "stray"]),
    ("bin.bench_sae", ["--repeats=0"], ["--repeats=0"]),
    ("bin.trace_summary", [], ["expected PROFILE_DIR"]),
    ("bin.analyze", ["--layers=1,9"], ["--layers='1,9'", "0..3"]),
    ("bin.analyze", ["--mesh=1,2,1,1"], ["--mesh=1,2,1,1", "DATA,MODEL,EXPERT"]),
    ("bin.study", ["--sae_layers=1,x"], ["--sae_layers='1,x'", "integers"]),
    ("bin.study", ["--sae_dir=/tmp"], ["--sae_dir needs --sae_l0"]),
    ("bin.analyze", ["--bootstrap=100000000"], ["--bootstrap=100000000: at most 100000"]),
    ("bin.study", ["--bootstrap=100000000"], ["--bootstrap=100000000: at most 100000"]),
    ("bin.analyze", ["--process_id=1"], ["--process_id only apply with --distributed"]),
    ("bin.finetune", ["--distributed", "--num_processes=2", "--process_id=2"],
     ["--process_id=2", "0..1"]),
    ("bin.analyze", ["--distributed", "--coordinator_address=localhost"],
     ["--coordinator_address=localhost", "host:port"]),
    ("bin.finetune", ["--distributed"],
     ["--distributed: joining the multi-process run failed", "--coordinator_address"]),
])
def test_flag_errors_are_one_line_and_exit_2(tool, args, expected):
  assert_one_line_error(run_tool(tool, *args), *expected)


def test_help_exits_0_for_every_tool():
  for tool in TOOLS:
    proc = run_tool(tool, "--help")
    assert proc.returncode == 0, (tool, proc.stderr[-2000:])
    assert "flags:" in proc.stdout and "Traceback" not in proc.stderr, tool
  assert run_tool("bin.evaluate", "-h").returncode == 0


def test_bad_out_fails_before_any_work(tmp_path):
  (tmp_path / "file").write_text("mine")
  assert_one_line_error(run_tool("bin.analyze", f"--out={tmp_path / 'file'}"),
                        f"--out={tmp_path / 'file'}", "not a directory")
  assert_one_line_error(run_tool("bin.finetune", f"--out={tmp_path / 'file' / 'sub'}"),
                        "--out=", "is a file")
  assert_one_line_error(run_tool("bin.bench", f"--json={tmp_path / 'file' / 'b.json'}"),
                        "--json=", "is a file")
  assert (tmp_path / "file").read_text() == "mine"


def test_evaluate_without_data_exits_2_and_keeps_the_previous_results(tmp_path):
  arc = tmp_path / "data" / "benchmarks" / "arc_challenge"
  arc.mkdir(parents=True)
  arc.joinpath("en.jsonl").write_text(json.dumps(
      {"id": "a", "question": "q", "choices": ["x", "y"], "answer": 1}) + "\n")
  out = tmp_path / "out"
  out.mkdir()
  (out / "scores.json").write_text('{"arc": "previous"}')
  proc = run_tool("bin.evaluate", f"--data_dir={tmp_path / 'data'}", f"--out={out}")
  assert_one_line_error(proc, "looked for", "arc_challenge", "did you mean")
  assert (out / "scores.json").read_text() == '{"arc": "previous"}'
  arc.joinpath("en.jsonl").write_text(json.dumps(
      {"id": "a", "question": "q", "choices": ["x", "y"], "answer": 5}) + "\n")
  proc = run_tool("bin.evaluate", f"--data_dir={tmp_path / 'data' / 'benchmarks'}",
                  "--tasks=arc", "--langs=en", f"--out={out}")
  assert_one_line_error(proc, "en.jsonl:1: answer index 5 is out of range for 2 choices")


def test_mistyped_local_paths_are_missing_paths_not_hub_ids(tmp_path):
  (tmp_path / "out").mkdir()
  for args, flag in ((["--checkpoint=out/gemma"], "out/gemma"),
                     (["--checkpoint=./gemma-2-2b"], "./gemma-2-2b"),
                     (["--sae_dir=out/saes"], "--sae_dir=out/saes")):
    proc = subprocess.run([sys.executable, "-m", "bin.analyze", *args, "--noprogress"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO)))
    assert_one_line_error(proc, flag, "no such file or directory")


# ---- the parser itself, in process ------------------------------------------------------------

@pytest.fixture
def tool_flags():
  values = flags.FlagValues()
  flags.DEFINE_integer("batch_size", 8, "Rows per batch.", lower_bound=1, flag_values=values)
  return values


def test_parse_flags_help_and_errors(tool_flags, capsys):
  assert cli.parse_flags(["tool", "--batch_size=3", "rest"], tool_flags) == ["tool", "rest"]
  assert tool_flags.batch_size == 3
  for help_arg in ("--help", "-h", "--helpfull"):
    with pytest.raises(SystemExit) as exit_:
      cli.parse_flags(["tool", help_arg], tool_flags)
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "flags:" in out
  assert "--batch_size" in out  # --helpfull lists every module's flags
  with pytest.raises(SystemExit) as exit_:
    cli.parse_flags(["tool", "--batch_size=-1"], tool_flags)
  err = capsys.readouterr().err
  assert exit_.value.code == 2 and err.count("\n") == 1
  assert err.startswith("error: flag --batch_size=-1: -1 is not a positive integer")




def test_warnings_are_one_line_each(capsys):
  import warnings
  with warnings.catch_warnings():
    warnings.simplefilter("always")
    warnings.showwarning = cli.show_warning
    warnings.warn("hi: 2 sentence(s) longer than max_len=64 tokens\n  were cut to it")
  err = capsys.readouterr().err
  assert err == "warning: hi: 2 sentence(s) longer than max_len=64 tokens were cut to it\n"
