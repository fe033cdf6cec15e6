"""Result files: checked before any compute, written atomically after it.

A run writes its results only once they are complete, each file under a temporary name in the
same directory and then renamed over the old one, so a failed, killed or empty run never leaves
a half-written file nor replaces a user's previous results. A tool's files are one set
(`write_set`): every file is written under its temporary name first and renamed only once all
are written, so a failure part-way (a full disk) leaves the previous set whole, never two runs
mixed. In a multi-process run only
process 0 writes (`platform.is_primary_process`); the others compute the same results and
discard them here, so that no tool needs a branch of its own for it.
"""
from __future__ import annotations

import contextlib
import io as _io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

from xling_jax.runtime.platform import is_primary_process


class OutputError(ValueError):
  """Results could not be written where the user asked."""


def check_output_dir(path: str | os.PathLike, what: str = "--out") -> Path:
  """`path` as a Path, after checking that a directory can be created or written there; call
  before loading anything, so a bad place fails in seconds, not after the whole run. `what`
  names the setting in the message."""
  out = Path(path).expanduser()
  if out.exists() and not out.is_dir():
    raise OutputError(f"{what}={path}: is an existing file, not a directory; choose a directory")
  _check_writable(out, f"{what}={path}")
  return out


def check_output_file(path: str | os.PathLike, what: str) -> Path:
  """`path` as a Path, after checking that a file can be written there (see check_output_dir)."""
  out = Path(path).expanduser()
  if out.is_dir():
    raise OutputError(f"{what}={path}: is a directory; give a file name")
  _check_writable(out.parent, f"{what}={path}")
  return out


def _check_writable(directory: Path, label: str) -> None:
  """Files can be made in `directory`, or in the nearest existing folder above it."""
  existing = next(p for p in (directory, *directory.parents) if p.exists())
  if not existing.is_dir():
    raise OutputError(f"{label}: {existing} is a file, so no directory can be made under it")
  try:  # os.access says yes to root and to read-only mounts alike: try the real thing
    fd, probe = tempfile.mkstemp(dir=existing, prefix=".xling-write-check-")
  except OSError as e:
    raise OutputError(f"{label}: cannot write in {existing} ({e.strerror}); choose a writable "
                      "directory") from None
  os.close(fd)
  os.unlink(probe)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[Any]:
  """`open(path, mode)` on a temporary sibling that replaces `path` only when the block ends
  without an error; the parent directory is created. Outside process 0 of a multi-process
  run the block writes into a buffer that is dropped."""
  if not is_primary_process():
    yield _io.BytesIO() if "b" in mode else _io.StringIO()
    return
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are ordinary files
    with os.fdopen(fd, mode, **kwargs) as f:
      yield f
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def write_text(path: str | os.PathLike, text: str) -> None:
  with atomic_open(path, "w", encoding="utf-8") as f:
    f.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  with atomic_open(path, "wb") as f:
    f.write(data)


def write_set(directory: str | os.PathLike,
              files: Mapping[str | os.PathLike, str | bytes | None]) -> dict[str, Path]:
  """Write `files` ({name: text, bytes, or None to delete a stale one}) as one set; returns
  {name: path} of those written. A name is a path under `directory` (`results/study.json`; an
  absolute one stands alone), so a set may span folders. Every file is written under a
  temporary name beside its target first and renamed only once all are written: OutputError
  names the file that could not be written and why, and every target then holds what it held
  before (a rename failing midway, which renames within a folder do not do for lack of space,
  would leave the files renamed so far new: the error names them)."""
  directory = Path(directory)
  targets = {name: directory / name for name in files}
  if not is_primary_process():
    return {name: targets[name] for name, data in files.items() if data is not None}
  staged: dict[str, str] = {}
  try:
    for name, data in files.items():
      if data is None:
        continue
      target = targets[name]
      if target.is_dir():
        raise OutputError(f"{target}: is a directory, so the result file cannot replace it; "
                          "move it away (the previous results are unchanged)")
      try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, staged[name] = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                            suffix=".tmp")
        os.chmod(staged[name], 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
          f.write(data if isinstance(data, bytes) else data.encode("utf-8"))
      except OSError as e:
        raise _not_written(target, e) from None
    renamed = []  # renames in place do not fail for space; this is a guard
    for name in list(staged):
      try:
        os.replace(staged[name], targets[name])
      except OSError as e:
        raise _not_written(targets[name], e, renamed) from None
      renamed.append(targets[name].name)
      del staged[name]
  except BaseException:
    for tmp in staged.values():
      Path(tmp).unlink(missing_ok=True)
    raise
  for name, data in files.items():
    if data is None:
      targets[name].unlink(missing_ok=True)
  return {name: targets[name] for name, data in files.items() if data is not None}


def _not_written(target: Path, error: OSError, renamed: list[str] = ()) -> OutputError:
  kept = (f"{', '.join(renamed)} of this set were already replaced" if renamed else
          "the previous results are unchanged")
  return OutputError(f"{target}: could not be written ({error.strerror or error}); {kept}")


def remove(path: str | os.PathLike) -> None:
  """Delete `path` if it is there (a stale result the new ones would contradict)."""
  if is_primary_process():
    Path(path).unlink(missing_ok=True)


def append_line(path: str | os.PathLike, line: str) -> None:
  """`line` and a newline at the end of `path` (a log, whose earlier lines a kill must keep)."""
  if is_primary_process():
    with Path(path).open("a", encoding="utf-8") as f:
      f.write(line + "\n")


def json_text(value: Any) -> str:
  """JSON with non-ASCII text kept; NaN/inf are refused (JSON has none: clean them first)."""
  return json.dumps(value, indent=1, ensure_ascii=False, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, value: Any) -> None:
  write_text(path, json_text(value))
