"""Local path or hub id: a mistyped local path is never tried on the hub; offline is one line."""
from __future__ import annotations

import pytest

from xling_jax import checkpoints
from xling_jax.runtime import hub


def test_hub_ids_and_local_looking_paths(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "out").mkdir()
  assert hub.is_hub_id("google/gemma-2-2b") and hub.is_hub_id("google/gemma-scope-2b-pt-res")
  for local in ("out/sae", "./gemma", "../gemma/x", "~/models/gemma", "/models/gemma", "a/b/c",
                "gemma-2-2b"):
    assert not hub.is_hub_id(local), local


def test_a_mistyped_local_checkpoint_is_a_missing_path(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "out").mkdir()
  for spec in ("out/gemma", "./gemma-2-2b", "~/no-such-xling-checkpoint"):
    with pytest.raises(FileNotFoundError, match=f"checkpoint {spec}: no such file or directory"):
      checkpoints.resolve_checkpoint(spec)


def test_a_hub_checkpoint_downloads_and_offline_is_one_line(tmp_path, monkeypatch,
                                                            offline_network):
  import huggingface_hub
  with pytest.raises(hub.HubError, match=r"checkpoint google/gemma-2-2b \(no such local path\): "
                                         r"the Hugging Face hub cannot be reached"):
    checkpoints.resolve_checkpoint("google/gemma-2-2b")
  monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", lambda *a, **k: None)
  downloads = []
  monkeypatch.setattr(huggingface_hub, "snapshot_download",
                      lambda repo, **kw: downloads.append((repo, kw)) or str(tmp_path))
  assert checkpoints.resolve_checkpoint("google/gemma-2-2b") == tmp_path
  assert downloads[0][0] == "google/gemma-2-2b"
  assert "*.safetensors" in downloads[0][1]["allow_patterns"]


def test_offline_mode_reads_the_cache_and_says_when_it_is_not_there(monkeypatch):
  import huggingface_hub
  from huggingface_hub import errors
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")

  def not_cached(*args, **kwargs):
    raise errors.LocalEntryNotFoundError("no snapshot\nplease check your connection")

  monkeypatch.setattr(huggingface_hub, "snapshot_download", not_cached)
  with pytest.raises(hub.HubError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE"):
    hub.snapshot("google/gemma-2-2b", "--checkpoint=google/gemma-2-2b")


def test_an_unknown_repository_is_named_and_a_gated_one_passes_the_probe(monkeypatch):
  import huggingface_hub
  from huggingface_hub import errors
  monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
  response = _http_response(401)

  def answer(error):
    def repo_info(*args, **kwargs):
      raise error("401 Client Error", response=response)
    return repo_info

  monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", answer(errors.RepositoryNotFoundError))
  with pytest.raises(hub.HubError, match="no model repository googel/gemma-2-2b on the Hugging"):
    hub.check_reachable("googel/gemma-2-2b", "--checkpoint=googel/gemma-2-2b")
  # GatedRepoError subclasses RepositoryNotFoundError, but the repository is there.
  monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", answer(errors.GatedRepoError))
  hub.check_reachable("google/gemma-2-2b", "--checkpoint=google/gemma-2-2b")


def _http_response(status: int):
  """An HTTP response of the hub client's own HTTP library (its errors need one)."""
  from huggingface_hub import errors
  http = __import__(errors.HfHubHTTPError.__mro__[1].__module__.split(".")[0])
  return http.Response(status, request=http.Request("GET", "https://huggingface.co"))


def test_an_sae_source_is_local_or_a_reachable_hub_id(tmp_path, monkeypatch):
  import huggingface_hub
  monkeypatch.chdir(tmp_path)
  (tmp_path / "out").mkdir()
  assert hub.local_or_hub("out", "--sae_dir") == "out"
  for spec in ("out/saes", "./saes", "~/no-such-xling-saes"):
    with pytest.raises(FileNotFoundError, match=f"--sae_dir={spec}: no such file or directory"):
      hub.local_or_hub(spec, "--sae_dir")
  monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
  monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", lambda *a, **k: None)
  assert hub.local_or_hub("google/gemma-scope-2b-pt-res", "--sae_dir") == \
      "google/gemma-scope-2b-pt-res"
