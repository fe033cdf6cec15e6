"""Running a command-line tool: `run` (absl's app.run, with --help exiting 0, a user's error
as one line `error: ...` and exit code 2, and Ctrl-C as one line `interrupted: ...` saying what
was saved and how to continue, exit code 130), `fail`, the checks and parsers the tools share
(`check_out`, `parse_layers`) and a run's provenance (`resolved_flags`). The shared flags
themselves are `bin.shared_flags`."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

from absl import flags

from bin import shared_flags

FLAGS = flags.FLAGS
USAGE_EXIT = 2  # usage and input errors, as argparse and most Unix tools
INTERRUPT_EXIT = 130  # 128 + SIGINT: what a shell reports for a command ended by Ctrl-C


def check_out() -> Path:
  """--out as a Path, after checking it can be written (fails before any work)."""
  from xling_jax.runtime import io
  return io.check_output_dir(FLAGS.out, "--out")


def resolved_flags() -> dict:
  """Every flag of the running tool, its own and the shared ones (`bin.shared_flags`), with the
  value it ran with: a run's provenance, complete by construction (no hand-kept list to drift)."""
  by_module = FLAGS.flags_by_module_dict()
  # absl files the flags of the __main__ module under the script's path.
  chosen = [f for module in (sys.argv[0], shared_flags.__name__)
            for f in by_module.get(module, [])]
  return {f.name: f.value for f in sorted(chosen, key=lambda f: f.name)}


def parse_layers(spec: str | None, n_layers: int, what: str) -> tuple[int, ...] | None:
  """'all' -> every layer; '3,5' -> (3, 5); None -> None. `what` names the flag."""
  from absl import app
  if spec is None:
    return None
  if spec.strip() == "all":
    return tuple(range(n_layers))
  try:
    layers = tuple(int(v) for v in spec.split(",") if v.strip())
  except ValueError:
    raise app.UsageError(f"--{what}={spec!r}: expected 'all' or comma-separated integers")
  bad = [l for l in layers if not 0 <= l < n_layers]
  if not layers or bad:
    raise app.UsageError(f"--{what}={spec!r}: layers must lie in 0..{n_layers - 1}")
  return layers


_HELP_ARGS = {"--help": "short", "-help": "short", "--helpshort": "short", "-helpshort": "short",
              "-h": "short", "-?": "short", "--helpfull": "full", "-helpfull": "full"}
# What a user can cause: bad values, missing or unreadable files, damaged data or weights,
# non-finite numbers, no network, a missing optional package.
USER_ERRORS = (ValueError, OSError, FloatingPointError, ImportError)


def fail(message: str) -> None:
  """One line `error: ...` on stderr, exit code 2."""
  print("error: " + " ".join(str(message).split()), file=sys.stderr)
  sys.exit(USAGE_EXIT)


def help_text(program: str, full: bool = False, flag_values=FLAGS) -> str:
  """The tool's docstring and its flags (all of them with `full`)."""
  doc = (sys.modules["__main__"].__doc__ or f"USAGE: {program} [flags]\n").rstrip()
  listing = flag_values.get_help() if full else flag_values.main_module_help()
  more = "" if full else "\n\n--helpfull lists the flags of every module."
  return f"{doc}\n\nflags:\n{listing}{more}"


def parse_flags(argv: list[str], flag_values=FLAGS) -> list[str]:
  """absl's flag parsing, except that --help/-h/--helpfull print help and exit 0, and a bad flag
  (unknown, missing value, not a number, out of bounds) is one line and exit 2."""
  for arg in argv[1:]:
    if arg == "--":
      break
    if arg in _HELP_ARGS:
      try:
        print(help_text(os.path.basename(argv[0]), _HELP_ARGS[arg] == "full", flag_values),
              flush=True)
      except BrokenPipeError:  # `--help | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
      sys.exit(0)
  try:
    return flag_values(argv)
  except flags.Error as e:
    fail(f"{e} (--help lists the flags)")


def nothing_written() -> str:
  """What an interrupted tool that writes its results only at its end has left: nothing."""
  out = FLAGS["out"].value if "out" in FLAGS else None
  return "nothing written" + (f"; the previous results in {out} are kept" if out else "")


def resume_hint(checkpoints: Path) -> str:
  """What an interrupted trainer has left in `checkpoints` (orbax, `train_checkpoints`) and how
  to continue from it."""
  from xling_jax.runtime import train_checkpoints
  step = train_checkpoints.latest_step(checkpoints)
  if step is None:
    return (f"no checkpoint was saved yet (none in {checkpoints}); rerun the same command to "
            "start again")
  return f"saved step {step} in {checkpoints}; rerun with --resume to continue"


def interrupted(message: str) -> None:
  """One line `interrupted: ...` on stderr, exit code 130."""
  print("interrupted: " + " ".join(message.split()), file=sys.stderr, flush=True)
  sys.exit(INTERRUPT_EXIT)


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
  """A warning as one line `warning: ...` on stderr (`warnings.showwarning`'s signature):
  what a user reads, without the source line and path Python's format adds."""
  print("warning: " + " ".join(str(message).split()), file=file or sys.stderr)


def run(main, positional: tuple[str, ...] = (),
        on_interrupt: Callable[[], str] = nothing_written) -> None:
  """absl's app.run for a tool: usage errors and errors a user can cause (USER_ERRORS) are one
  line `error: ...` on stderr with exit code 2, never the whole --help nor a traceback
  (XLING_TRACEBACK=1 shows the traceback); --help exits 0; warnings are one line each
  (`show_warning`). Ctrl-C (SIGINT) is one line
  `interrupted: ` + `on_interrupt()` (what was saved, how to continue; default: nothing was
  written) and exit code 130. `positional` names the arguments `main(argv)` takes after the
  program name (none by default)."""
  from absl import app

  def guarded(argv):
    import warnings

    from absl import logging
    if not os.environ.get("XLING_TRACEBACK"):
      warnings.showwarning = show_warning
    if not FLAGS["verbosity"].present:  # INFO lines of datasets, orbax (every save) are noise
      logging.set_verbosity(logging.WARNING)
    if len(argv) - 1 != len(positional):
      expected = " ".join(positional) or "no arguments besides --flags"
      fail(f"expected {expected}, got {argv[1:]} (--help lists the flags)")
    try:
      return main(argv)
    except KeyboardInterrupt:
      if os.environ.get("XLING_TRACEBACK"):
        raise
      interrupted(on_interrupt())
    except (app.UsageError, *USER_ERRORS) as e:
      if os.environ.get("XLING_TRACEBACK"):
        raise
      fail(str(e))

  app.run(guarded, flags_parser=parse_flags)
