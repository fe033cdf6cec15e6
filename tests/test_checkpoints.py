"""Checkpoint loading: every format gives the same params; every bad input is a clear error."""
from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xling_jax import checkpoints, model as model_lib
from xling_jax.checkpoints import CheckpointError
from tests.conftest import np_tree


def _assert_same_params(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_hf_sharded_roundtrip_is_exact(toy_hf_dir, toy_params, toy_config):
  params, config = checkpoints.load_params(toy_hf_dir)
  assert config == toy_config
  _assert_same_params(params, toy_params)


def test_hf_single_file(tmp_path, toy_params, toy_config):
  checkpoints.save_hf(tmp_path, toy_params, toy_config)
  assert (tmp_path / "model.safetensors").exists()
  params, _ = checkpoints.load_params(tmp_path)
  _assert_same_params(params, toy_params)


def test_kaggle_flat_orbax_layout_gives_identical_output(tmp_path, toy_params, toy_config):
  ckpt = tmp_path / "kaggle"
  # Released checkpoints carry 128 padding rows in the embedding; they must be dropped.
  checkpoints.save_kaggle(ckpt, toy_params, toy_config,
                          pad_vocab_to=toy_config.vocab_size + 128)
  assert checkpoints.detect_format(ckpt) == "kaggle"
  params, config = checkpoints.load_params(ckpt, toy_config)
  _assert_same_params(params, toy_params)
  tokens = jnp.asarray(np.random.default_rng(0).integers(4, 500, (2, 12)))
  a = model_lib.jit_forward(params, config, tokens)
  b = model_lib.jit_forward(toy_params, toy_config, tokens)
  np.testing.assert_array_equal(np.asarray(a.logits), np.asarray(b.logits))
  np.testing.assert_array_equal(np.asarray(a.residuals), np.asarray(b.residuals))


def test_kaggle_config_inferred_from_shapes(tmp_path, toy_params, toy_config):
  ckpt = tmp_path / "kaggle"
  checkpoints.save_kaggle(ckpt, toy_params, toy_config)
  _, config = checkpoints.load_params(ckpt)
  for field in ("n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "mlp_hidden",
                "vocab_size"):
    assert getattr(config, field) == getattr(toy_config, field), field


def test_our_orbax_format_roundtrip(tmp_path, toy_params, toy_config):
  checkpoints.save_params(tmp_path / "ours", toy_params, toy_config)
  params, config = checkpoints.load_params(tmp_path / "ours")
  assert config == toy_config
  _assert_same_params(params, toy_params)


def test_load_with_dtype_and_sharding(toy_hf_dir):
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  params, _ = checkpoints.load_params(toy_hf_dir, dtype="bfloat16", sharding=sharding)
  assert params["layers"]["q"].dtype == jnp.bfloat16
  assert params["embed"].sharding == sharding


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def hf_copy(tmp_path, toy_hf_dir):
  dst = tmp_path / "hf"
  shutil.copytree(toy_hf_dir, dst)
  return dst


def test_unknown_path():
  with pytest.raises(FileNotFoundError, match="does-not-exist"):
    checkpoints.load_params("/tmp/does-not-exist-xling")


def test_directory_that_is_no_checkpoint(tmp_path):
  (tmp_path / "notes.txt").write_text("hi")
  with pytest.raises(CheckpointError, match="not a recognised checkpoint"):
    checkpoints.load_params(tmp_path)


def test_missing_shard_names_the_shard(hf_copy):
  shard = sorted(hf_copy.glob("model-*-of-*.safetensors"))[1]
  shard.unlink()
  with pytest.raises(CheckpointError, match=shard.name):
    checkpoints.load_params(hf_copy)


def test_wrong_tensor_shape_names_file_and_tensor(hf_copy, toy_config):
  from safetensors.numpy import load_file, save_file
  index = json.loads((hf_copy / "model.safetensors.index.json").read_text())["weight_map"]
  name = "model.layers.1.self_attn.k_proj.weight"
  path = hf_copy / index[name]
  tensors = load_file(str(path))
  tensors[name] = tensors[name][:-1]
  save_file(tensors, str(path))
  expected = (toy_config.kv_width, toy_config.d_model)
  with pytest.raises(CheckpointError) as err:
    checkpoints.load_params(hf_copy)
  msg = str(err.value)
  assert path.name in msg and name in msg and str(expected) in msg


def test_layer_count_disagreement(hf_copy, toy_config):
  with pytest.raises(CheckpointError, match=r"4 layers.*n_layers=6"):
    checkpoints.load_params(hf_copy, toy_config.replace(n_layers=6))


def test_truncated_safetensors_file(hf_copy):
  shard = sorted(hf_copy.glob("model-*-of-*.safetensors"))[0]
  data = shard.read_bytes()
  shard.write_bytes(data[: len(data) // 2])
  with pytest.raises(CheckpointError, match=shard.name):
    checkpoints.load_params(hf_copy)


def test_missing_tensor_is_named(tmp_path, toy_params, toy_config):
  from safetensors.numpy import load_file, save_file
  checkpoints.save_hf(tmp_path, toy_params, toy_config)
  tensors = load_file(str(tmp_path / "model.safetensors"))
  del tensors["model.layers.2.mlp.up_proj.weight"]
  save_file(tensors, str(tmp_path / "model.safetensors"))
  with pytest.raises(CheckpointError, match=r"model\.layers\.2\.mlp\.up_proj\.weight"):
    checkpoints.load_params(tmp_path)


def test_non_gemma2_config_rejected(hf_copy):
  cfg = json.loads((hf_copy / "config.json").read_text())
  cfg["model_type"] = "llama"
  (hf_copy / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ValueError, match="model_type='llama'"):
    checkpoints.load_params(hf_copy)


def test_kaggle_wrong_shape_names_tensor(tmp_path, toy_params, toy_config):
  bad = np_tree(toy_params)
  bad["layers"]["o"] = bad["layers"]["o"][:, :, :-1]
  ckpt = tmp_path / "kaggle"
  checkpoints.save_kaggle(ckpt, bad, toy_config.replace(d_model=toy_config.d_model))
  with pytest.raises(CheckpointError, match=r"transformer/layer_0/attn/attn_vec_einsum"):
    checkpoints.load_params(ckpt, toy_config)
