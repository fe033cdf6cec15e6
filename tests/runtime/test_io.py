"""Result files: output places checked before any work, every write atomic."""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from xling_jax.runtime import io


def test_output_dir_checks(tmp_path):
  assert io.check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
  assert not (tmp_path / "new").exists()  # checking creates nothing
  (tmp_path / "file").write_text("x")
  with pytest.raises(io.OutputError, match=r"--out=.*file: is an existing file, not a directory"):
    io.check_output_dir(tmp_path / "file")
  with pytest.raises(io.OutputError, match=r"--out=.*sub: .*file is a file, so no directory"):
    io.check_output_dir(tmp_path / "file" / "sub")
  with pytest.raises(io.OutputError, match=r"--json=.*: is a directory; give a file name"):
    io.check_output_file(tmp_path, "--json")
  assert os.listdir(tmp_path) == ["file"]  # the write probe leaves nothing behind


def test_unwritable_place_is_found_before_any_work(tmp_path):
  """Root ignores permission bits, so a read-only mount (/sys) stands in where chmod cannot."""
  locked = tmp_path / "locked"
  locked.mkdir()
  locked.chmod(0o500)
  try:
    if os.access(locked, os.W_OK):  # root
      locked = Path("/sys")
      if not locked.is_dir() or os.access(locked / "x", os.F_OK):
        pytest.skip("no read-only directory to test with")
    with pytest.raises(io.OutputError, match=r"--out=.*: cannot write in .*; choose a writable"):
      io.check_output_dir(locked / "out")
  finally:
    (tmp_path / "locked").chmod(0o700)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
  path = tmp_path / "scores.json"
  io.write_json(path, {"acc": 0.5})
  old = path.read_bytes()
  with pytest.raises(ValueError, match="Out of range float"):
    io.write_json(path, {"acc": float("nan")})
  with pytest.raises(RuntimeError, match="killed"):
    with io.atomic_open(path, "w") as f:
      f.write('{"acc": ')
      raise RuntimeError("killed mid-write")
  assert path.read_bytes() == old and os.listdir(tmp_path) == ["scores.json"]
  io.write_text(tmp_path / "sub" / "report.md", "ok")  # parents are made
  mode = stat.S_IMODE((tmp_path / "sub" / "report.md").stat().st_mode)
  umask = os.umask(0)
  os.umask(umask)
  assert mode == 0o666 & ~umask  # an ordinary file, not mkstemp's 0600


def _disk_full_on_write(monkeypatch, n: int) -> None:
  """The n-th file opened for writing fails with ENOSPC."""
  real_fdopen, calls = os.fdopen, []

  def fdopen(fd, mode, *a, **k):
    calls.append(fd)
    handle = real_fdopen(fd, mode, *a, **k)
    if len(calls) == n:
      handle.close()
      raise OSError(errno.ENOSPC, "No space left on device")
    return handle

  monkeypatch.setattr(os, "fdopen", fdopen)


def test_a_set_fails_whole_and_names_the_file(tmp_path, monkeypatch):
  old = {"stats.json": "old stats", "report.md": "old report", "layers.png": b"old png"}
  for name, data in old.items():
    (tmp_path / name).write_bytes(data if isinstance(data, bytes) else data.encode())
  with monkeypatch.context() as patch:
    _disk_full_on_write(patch, 3)
    with pytest.raises(io.OutputError, match=r"layers\.png: could not be written \(No space left"):
      io.write_set(tmp_path, {"stats.json": "new", "report.md": "new", "layers.png": b"new"})
  assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == {
      k: v if isinstance(v, bytes) else v.encode() for k, v in old.items()}
  written = io.write_set(tmp_path, {"stats.json": "new", "report.md": None, "layers.png": b"x"})
  assert sorted(written) == ["layers.png", "stats.json"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["layers.png", "stats.json"]


def test_a_set_spanning_folders_fails_whole(tmp_path, monkeypatch):
  """An SAE training run writes SAE folders and reports as one set: a failure in the last
  folder leaves the first folder's old file in place and no new folder behind."""
  (tmp_path / "resid_post").mkdir()
  (tmp_path / "resid_post" / "params.safetensors").write_bytes(b"old sae")
  _disk_full_on_write(monkeypatch, 2)
  with pytest.raises(io.OutputError, match=r"reports/layer_0\.json: could not be written"):
    io.write_set(tmp_path, {"resid_post/params.safetensors": b"new sae",
                            "reports/layer_0.json": "{}"})
  assert (tmp_path / "resid_post" / "params.safetensors").read_bytes() == b"old sae"
  assert sorted(p.name for p in (tmp_path / "resid_post").iterdir()) == ["params.safetensors"]
  assert not any((tmp_path / "reports").iterdir())  # the folder may exist, holding nothing
