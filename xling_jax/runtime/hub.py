"""A name that is a local path or a Hugging Face hub id, and the one-line errors of the hub.

`owner/name` is taken for a hub id only when it cannot be a mistyped local path: no `./`, `../`,
`~` or leading `/`, exactly one `/`, and no local `owner` directory (`out/sae` with an `out/`
folder present is a missing path, not a repository). Before a download, one quick metadata
request finds an unreachable hub, so an offline run fails in a second with a line saying so
instead of after a library's retry loop; with HF_HUB_OFFLINE set, only the local cache is read.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PROBE_TIMEOUT_S = 10
# An HF model repository carries other formats too (original/, *.gguf, *.bin): take what
# xling_jax reads.
CHECKPOINT_FILES = ("*.json", "*.safetensors", "tokenizer.model")


class HubError(ValueError):
  """A hub id could not be resolved: offline, unknown, gated or not cached."""


def is_hub_id(spec: str | os.PathLike) -> bool:
  text = os.fspath(spec)
  return bool(_HUB_ID.match(text)) and not Path(text.split("/")[0]).exists()


def local_or_hub(spec: str | os.PathLike, what: str) -> str:
  """`spec` itself when it exists locally (with ~ expanded), or when it is a reachable hub id;
  otherwise a missing-path error naming `what` (e.g. "--sae_dir"): a mistyped local path is
  never tried on the hub."""
  local = Path(spec).expanduser()
  if local.exists():
    return str(local)
  if not is_hub_id(spec):
    raise FileNotFoundError(f"{what}={spec}: no such file or directory (a hub id is owner/name, "
                            "e.g. google/gemma-scope-2b-pt-res)")
  check_reachable(os.fspath(spec), f"{what}={spec} (no such local path)")
  return os.fspath(spec)


def offline() -> bool:
  return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def check_reachable(repo_id: str, what: str, repo_type: str = "model") -> None:
  """Raise HubError when the hub cannot be reached or has no such repository; `what` names the
  setting (e.g. "--sae_dir=google/gemma-scope-2b-pt-res (no such local path)"). No-op with
  HF_HUB_OFFLINE (the cache decides)."""
  if offline():
    return
  from huggingface_hub import HfApi, errors
  try:
    HfApi().repo_info(repo_id, repo_type=repo_type, timeout=_PROBE_TIMEOUT_S)
  except errors.GatedRepoError:  # a subclass of the next: the repository is there
    return
  except errors.RepositoryNotFoundError:
    raise HubError(f"{what}: no {repo_type} repository {repo_id} on the Hugging Face hub (a "
                   "private one needs `hf auth login`)") from None
  except errors.HfHubHTTPError:
    return  # the hub answered (gated, rate limited): the download itself says what it needs
  except Exception as e:  # no network: name, DNS, proxy, timeout
    raise HubError(f"{what}: the Hugging Face hub cannot be reached ({type(e).__name__}: "
                   f"{e}); offline, set HF_HUB_OFFLINE=1 to use what is cached") from None


def snapshot(repo_id: str, what: str, allow_patterns=CHECKPOINT_FILES) -> Path:
  """The local directory of a hub model repository (downloaded into the HF cache once)."""
  check_reachable(repo_id, what)
  from huggingface_hub import errors, snapshot_download
  try:
    return Path(snapshot_download(repo_id, allow_patterns=list(allow_patterns)))
  except errors.GatedRepoError:
    raise HubError(f"{what}: {repo_id} is gated: accept its terms on huggingface.co, then log "
                   "in (`hf auth login` or HF_TOKEN)") from None
  except errors.LocalEntryNotFoundError:
    raise HubError(f"{what}: {repo_id} is not in the local Hugging Face cache and "
                   "HF_HUB_OFFLINE is set; download it once online") from None
  except Exception as e:
    raise HubError(f"{what}: downloading {repo_id} from the Hugging Face hub failed "
                   f"({type(e).__name__}: {e})") from None
