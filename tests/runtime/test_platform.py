"""Multi-process runs (`platform.Distributed`, jax.distributed with CPU collectives through
gloo): bin.analyze, bin.evaluate and bin.finetune as two processes on 127.0.0.1, one CPU device
each, write what one process writes on the same two-device mesh, and only process 0 writes
results (`io` drops the other processes' writes)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.helpers import write_arc_items
from xling_jax.runtime import io, platform

# What legitimately differs between the runs: the flags that set up the processes, the output
# folder, the device description and the wall-clock fields.
RUN_FIELDS = {"distributed", "coordinator_address", "num_processes", "process_id", "out",
              "devices", "seconds", "steps_per_s"}


def _env(xla_flags: str = "") -> dict:
  # Both runs keep the suite's XLA flags (conftest's optimisation level changes the rounding).
  flags = f"{os.environ.get('XLA_FLAGS', '')} {xla_flags}".strip()
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), XLA_FLAGS=flags)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _one_process(tool: str, args: list[str]) -> None:
  """`tool` in one process holding two CPU devices: the two processes' mesh, in one."""
  proc = subprocess.run([sys.executable, "-m", tool, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=600,
                        env=_env("--xla_force_host_platform_device_count=2"))
  assert proc.returncode == 0, proc.stderr[-3000:]


def _two_processes(tool: str, args_per_process: list[list[str]]) -> None:
  flags = ["--distributed", f"--coordinator_address=127.0.0.1:{_free_port()}",
           "--num_processes=2"]
  procs = [subprocess.Popen([sys.executable, "-m", tool, *flags, f"--process_id={i}", *args],
                            cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
           for i, args in enumerate(args_per_process)]
  try:
    outputs = [p.communicate(timeout=600) for p in procs]
  finally:
    for p in procs:
      p.kill()
  for i, (p, (_, err)) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, f"process {i}: {err[-3000:]}"
  assert "2 hosts" in outputs[0][1]  # they did run as one two-process job


def _without_run_fields(value):
  if isinstance(value, dict):
    return {k: _without_run_fields(v) for k, v in value.items() if k not in RUN_FIELDS}
  if isinstance(value, list):
    return [_without_run_fields(v) for v in value]
  return value


def _files(root, only=None) -> list:
  tops = [root / name for name in only] if only else [root]
  return sorted(p.relative_to(root) for top in tops
                for p in ([top] if top.is_file() else top.rglob("*")) if p.is_file())


def _assert_same_outputs(multi, single, only=None) -> None:
  """Every file under `single` (or under its entries `only`) is under `multi` with the same
  content: JSON and JSONL up to RUN_FIELDS, everything else byte for byte."""
  files = _files(single, only)
  assert files and files == _files(multi, only)
  for name in files:
    a, b = (multi / name).read_bytes(), (single / name).read_bytes()
    if name.suffix == ".json":
      a, b = (_without_run_fields(json.loads(x)) for x in (a, b))
    elif name.suffix == ".jsonl":
      a, b = ([_without_run_fields(json.loads(l)) for l in x.splitlines()] for x in (a, b))
    assert a == b, name


def _analyze_args(tmp_path) -> list[str]:
  return ["--langs=en,hi,ml", "--bootstrap=50", "--progress=false"]


def _evaluate_args(tmp_path) -> list[str]:
  write_arc_items(tmp_path / "bench", n=5)
  return ["--tasks=arc", "--langs=en,hi", "--batch_size=3", f"--data_dir={tmp_path / 'bench'}",
          "--progress=false"]


@pytest.mark.slow
@pytest.mark.parametrize("tool,make_args", [("bin.analyze", _analyze_args),
                                            ("bin.evaluate", _evaluate_args)])
def test_two_processes_write_what_one_writes(tool, make_args, tmp_path):
  # Process 1 gets its own --out: that it stays unmade shows process 0 alone writes.
  args = make_args(tmp_path)
  _one_process(tool, [*args, f"--out={tmp_path / 'one'}"])
  _two_processes(tool, [[*args, f"--out={tmp_path / 'two'}"],
                        [*args, f"--out={tmp_path / 'not_written'}"]])
  _assert_same_outputs(tmp_path / "two", tmp_path / "one")
  assert not (tmp_path / "not_written").exists()


@pytest.mark.slow
def test_finetune_in_two_processes_equals_one(tmp_path):
  # Orbax writes one checkpoint from all processes into one shared directory, so both get the
  # same --out here; that the other results come from process 0 alone is the io test below.
  args = ["--steps=4", "--save_every=2", "--log_every=1", "--batch_size=4"]
  _one_process("bin.finetune", [*args, f"--out={tmp_path / 'one'}"])
  _two_processes("bin.finetune", [[*args, f"--out={tmp_path / 'two'}"]] * 2)
  _assert_same_outputs(tmp_path / "two", tmp_path / "one",
                       only=("peft", "report.json", "train_log.jsonl"))
  steps = lambda root: sorted(p.name for p in (root / "checkpoints").iterdir())
  assert steps(tmp_path / "two") == steps(tmp_path / "one") == ["2", "4"]


def test_only_process_0_writes(tmp_path, monkeypatch):
  (tmp_path / "old.png").write_bytes(b"kept")
  monkeypatch.setattr(io, "is_primary_process", lambda: False)
  io.write_json(tmp_path / "a" / "stats.json", {"x": 1})
  io.write_bytes(tmp_path / "b.bin", b"\0")
  io.append_line(tmp_path / "log.jsonl", "{}")
  io.remove(tmp_path / "old.png")
  assert [p.name for p in tmp_path.iterdir()] == ["old.png"]
  monkeypatch.setattr(io, "is_primary_process", lambda: True)
  io.append_line(tmp_path / "log.jsonl", "{}")
  io.remove(tmp_path / "old.png")
  assert [p.name for p in tmp_path.iterdir()] == ["log.jsonl"]


def test_a_single_process_is_primary():
  assert platform.is_primary_process()


@pytest.mark.parametrize("distributed,message", [
    (platform.Distributed(num_processes=0), "--num_processes=0"),
    (platform.Distributed(num_processes=2, process_id=2), "0..1"),
    (platform.Distributed(coordinator_address="10.0.0.1"), "host:port"),
])
def test_bad_distributed_settings_are_named(distributed, message):
  with pytest.raises(ValueError, match=message):
    distributed.check()


def test_host_description_names_the_cores():
  assert f", {os.cpu_count()} cores" in platform.describe_host()
