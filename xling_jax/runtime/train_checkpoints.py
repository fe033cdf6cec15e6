"""Checkpoint machinery shared by the trainers (the LoRA adapter, the SAEs).

A run directory holds orbax checkpoints, one per saved step, each with two items: `state`, a
pytree of arrays restored into a template of the same structure, and `meta`, the JSON settings
that define the run. Orbax writes a checkpoint into a temporary directory and renames it when it
is complete, so a kill mid-save leaves the previous checkpoint as the latest.

A run starts with `check_start`, before any compute: a directory holding checkpoints is refused
unless the run resumes, and a resume is refused unless the saved settings equal the current ones
(bar the keys named resumable, e.g. how often to save), so a directory never silently continues
another run. A non-finite loss stops training through `non_finite_error` after the pending saves
finish: the latest checkpoint is then the last good state. The JSONL training log is rewound to
the resumed step, so a resumed run's log equals the uninterrupted run's.
"""
from __future__ import annotations

import contextlib
import json
import signal
import threading
from pathlib import Path
from typing import Any, Iterable, Mapping

import orbax.checkpoint as ocp

from xling_jax.runtime import io


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN/inf; nothing from that step was saved."""


def manager(directory: str | Path, max_to_keep: int) -> ocp.CheckpointManager:
  """An orbax manager over `directory` (created if absent) keeping the last `max_to_keep`."""
  return ocp.CheckpointManager(
      Path(directory).absolute(),
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))


def latest_step(directory: str | Path) -> int | None:
  """The step of the latest complete checkpoint in `directory`, None when there is none (an
  interrupted run's report of what it saved; creates nothing)."""
  if not Path(directory).is_dir():
    return None
  mgr = manager(directory, 1)
  try:
    return mgr.latest_step()
  finally:
    mgr.close()


@contextlib.contextmanager
def _uninterrupted():
  """Ctrl-C (SIGINT) waits until the block has run, then raises KeyboardInterrupt as usual.
  Orbax interrupted inside its wait for a pending save logs a traceback and leaves that save
  unfinished; deferred, the save completes and an interrupted run reports it."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  caught = []
  previous = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
  if caught:
    raise KeyboardInterrupt


def save(mgr: ocp.CheckpointManager, step: int, state: Any, meta: Mapping) -> None:
  """Save `state` (a pytree of arrays) and `meta` (JSON) as checkpoint `step`, atomically."""
  with _uninterrupted():
    mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                           meta=ocp.args.JsonSave(dict(meta))))


def finish(mgr: ocp.CheckpointManager) -> None:
  """Wait for the pending saves and close `mgr`, uninterrupted: however training ends (done,
  an error, Ctrl-C), the checkpoints on disk are then complete."""
  with _uninterrupted():
    mgr.wait_until_finished()
    mgr.close()


def _parts(meta: Mapping) -> dict[str, Any]:
  """{"part.key": value} for dict-valued parts, {"part": value} for the others."""
  flat = {}
  for part, value in meta.items():
    if isinstance(value, Mapping):
      flat.update({f"{part}.{k}": v for k, v in value.items()})
    else:
      flat[part] = value
  return flat


def check_same_run(saved: Mapping, current: Mapping, directory: str | Path,
                   resumable: Iterable[str] = ()) -> None:
  """Raise ValueError listing every setting (as "part.key") whose value differs, except those
  in `resumable`. Both are JSON-like {part: {key: value} or value}."""
  saved, current, skip = _parts(saved), _parts(current), set(resumable)
  diffs = [f"{k}: checkpoint {saved.get(k)!r}, now {current.get(k)!r}"
           for k in list(current) + [k for k in saved if k not in current]
           if k not in skip and saved.get(k) != current.get(k)]
  if diffs:
    raise ValueError(f"cannot resume from {directory}: the run's settings differ "
                     f"({'; '.join(diffs)}). Resume with the original settings or start a new run.")


def check_start(mgr: ocp.CheckpointManager, meta: Mapping, directory: str | Path, *,
                resume: bool, resumable: Iterable[str] = ()) -> int | None:
  """The step to resume from, or None for a fresh start; reads only the saved settings, so it
  runs before any compute. Raises FileExistsError when `directory` holds checkpoints and
  `resume` is off, ValueError when they belong to a run with other settings."""
  step = mgr.latest_step()
  if step is None:
    return None
  if not resume:
    raise FileExistsError(f"{directory} already holds checkpoints (latest step {step}); resume, "
                          "or choose a new directory")
  saved = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
  check_same_run(saved, json.loads(json.dumps(meta)), directory, resumable)
  return step


def restore_latest(mgr: ocp.CheckpointManager, template: Any, meta: Mapping,
                   resumable: Iterable[str] = ()) -> tuple[int, Any]:
  """(step, state) of the latest checkpoint, restored into `template`'s structure, after
  checking that a run with the same settings (`meta`) wrote it."""
  step = check_start(mgr, meta, mgr.directory, resume=True, resumable=resumable)
  if step is None:
    raise FileNotFoundError(f"{mgr.directory}: no checkpoint to restore")
  state = mgr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(template))).state
  return step, state


def non_finite_error(mgr: ocp.CheckpointManager, step: int, values: Mapping[str, float],
                     directory: str | Path, save_every: int) -> NonFiniteLossError:
  """The error to raise when update `step` produced a NaN/inf (`values`: the step's metrics),
  after waiting for pending saves, so the latest checkpoint on disk is the last good state."""
  mgr.wait_until_finished()
  terms = ", ".join(f"{k}={v:.6g}" for k, v in values.items())
  last = mgr.latest_step()
  where = (f"Last good checkpoint: step {last} in {directory}" if last is not None
           else f"No checkpoint was written before it (save_every={save_every})")
  return NonFiniteLossError(f"non-finite value at step {step} ({terms}); training stopped and "
                            f"nothing from this step was saved. {where}")


def rewind_log(path: Path, step: int) -> None:
  """Keep only log lines up to `step` (lines written after the checkpoint we resume from)."""
  if not path.exists():
    return
  kept = []
  for line in path.read_text().splitlines():
    try:
      if json.loads(line)["step"] <= step:
        kept.append(line)
    except (json.JSONDecodeError, KeyError, TypeError):
      continue  # a line cut short by a kill mid-append
  io.write_text(path, "".join(line + "\n" for line in kept))  # a kill keeps the old log


def start_log(path: Path, step: int) -> None:
  """An empty log for a fresh run (step 0), the log rewound to `step` for a resumed one."""
  if step:
    rewind_log(path, step)
  else:
    io.write_text(path, "")
