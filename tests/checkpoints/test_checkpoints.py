"""Checkpoint loading: every format gives the same params; every bad input is a clear error."""
from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xling_jax import checkpoints
from xling_jax.checkpoints import kaggle
from xling_jax.model import presets, transformer as model_lib
from xling_jax.runtime.errors import CheckpointError


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


def test_kaggle_flat_orbax_roundtrip_drops_the_padding_rows(tmp_path, toy_params, toy_config):
  ckpt = tmp_path / "kaggle"
  # Released checkpoints carry 128 padding rows in the embedding; they must be dropped.
  checkpoints.save_kaggle(ckpt, toy_params, toy_config,
                          pad_vocab_to=toy_config.vocab_size + 128)
  assert checkpoints.detect_format(ckpt) == "kaggle"
  params, _ = checkpoints.load_params(ckpt, toy_config)
  _assert_same_params(params, toy_params)


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


def test_an_integer_tensor_in_a_float_checkpoint_is_refused_not_cast(hf_copy):
  from safetensors.numpy import load_file, save_file
  index = json.loads((hf_copy / "model.safetensors.index.json").read_text())["weight_map"]
  name = "model.layers.1.mlp.down_proj.weight"
  path = hf_copy / index[name]
  tensors = load_file(str(path))
  tensors[name] = np.clip(tensors[name] * 100, -127, 127).astype(np.int8)
  save_file(tensors, str(path))
  with pytest.raises(CheckpointError, match=rf"{path.name}: tensor {name} is stored as I8; only "
                                            r"F32, F16, BF16, F64 tensors are read"):
    checkpoints.load_params(hf_copy)


def test_layer_count_disagreement(hf_copy):
  with pytest.raises(CheckpointError, match=r"4 layers.*n_layers=6"):
    checkpoints.load_params(hf_copy, presets.toy(n_layers=6))


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


def test_kaggle_wrong_shape_names_tensor(tmp_path, toy_config):
  other = presets.toy(mlp_hidden=96)
  ckpt = tmp_path / "kaggle"
  checkpoints.save_kaggle(ckpt, model_lib.init_params(other, jax.random.PRNGKey(1)), other)
  with pytest.raises(CheckpointError, match=r"transformer/layer_0/mlp/gating_einsum.*\(2, 64, 96\)"
                                            r".*expected \(2, 64, 128\)"):
    checkpoints.load_params(ckpt, toy_config)


# --------------------------------------------------------------------------- Gemma 3


@pytest.fixture(scope="module")
def gemma3():
  config = presets.toy_gemma3()
  return model_lib.init_params(config, jax.random.PRNGKey(2)), config


def test_gemma3_kaggle_roundtrip_infers_the_config(tmp_path, gemma3):
  params, config = gemma3
  checkpoints.save_kaggle(tmp_path / "k", params, config)
  loaded, inferred = checkpoints.load_params(tmp_path / "k")
  _assert_same_params(loaded, params)
  for field in ("family", "n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim",
                "mlp_hidden", "vocab_size", "qk_norm", "kaggle_gating_transposed"):
    assert getattr(inferred, field) == getattr(config, field), field


@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
def test_kaggle_tensors_follow_the_gemma_library_layout(tmp_path, family, toy_params, toy_config,
                                                        gemma3):
  """The gemma library's layout written out by hand (not through our table): q_einsum [N, D, H]
  with q_proj[n*H + h, d] = q[n, d, h]; kv_einsum[0/1] = k/v; attn_vec_einsum [N, H, D] with
  o_proj[d, n*H + h]; gating_einsum[0] the GELU branch, [2, D, F] for Gemma 2 2B-like configs and
  [2, F, D] for Gemma 3; linear [F, D]; qk-norm scales under attn/_query_norm, _key_norm."""
  from safetensors.numpy import load_file
  params, config = (toy_params, toy_config) if family == "gemma2" else gemma3
  checkpoints.save_hf(tmp_path / "hf", params, config)
  checkpoints.save_kaggle(tmp_path / "k", params, config)
  hf = load_file(str(tmp_path / "hf" / "model.safetensors"))
  flat = kaggle.flatten_kaggle(kaggle.restore_orbax(tmp_path / "k"))
  N, K, H, D = config.n_heads, config.n_kv_heads, config.head_dim, config.d_model
  for i in (0, config.n_layers - 1):
    k, p = f"transformer/layer_{i}/", f"model.layers.{i}."
    q = flat[k + "attn/q_einsum/w"]
    np.testing.assert_array_equal(hf[p + "self_attn.q_proj.weight"].reshape(N, H, D),
                                  q.transpose(0, 2, 1))
    kv = flat[k + "attn/kv_einsum/w"]
    for j, name in enumerate(("k_proj", "v_proj")):
      np.testing.assert_array_equal(hf[p + f"self_attn.{name}.weight"].reshape(K, H, D),
                                    kv[j].transpose(0, 2, 1))
    o = flat[k + "attn/attn_vec_einsum/w"]
    np.testing.assert_array_equal(hf[p + "self_attn.o_proj.weight"],
                                  o.reshape(N * H, D).T)
    gating = flat[k + "mlp/gating_einsum/w"]
    gate, up = (gating[0], gating[1]) if family == "gemma3" else (gating[0].T, gating[1].T)
    np.testing.assert_array_equal(hf[p + "mlp.gate_proj.weight"], gate)
    np.testing.assert_array_equal(hf[p + "mlp.up_proj.weight"], up)
    np.testing.assert_array_equal(hf[p + "mlp.down_proj.weight"], flat[k + "mlp/linear/w"].T)
    if family == "gemma3":
      np.testing.assert_array_equal(hf[p + "self_attn.q_norm.weight"],
                                    flat[k + "attn/_query_norm/scale"])
      np.testing.assert_array_equal(hf[p + "self_attn.k_norm.weight"],
                                    flat[k + "attn/_key_norm/scale"])


def _as_multimodal(directory, prefix: str, with_language_model: bool = True):
  """Rewrite a text-only HF Gemma 3 directory as a Gemma3ForConditionalGeneration one."""
  from safetensors.numpy import load_file, save_file
  text_cfg = json.loads((directory / "config.json").read_text())
  tensors = load_file(str(directory / "model.safetensors"))
  out = {"vision_tower.vision_model.post_layernorm.weight": np.ones(4, np.float32),
         "multi_modal_projector.mm_soft_emb_norm.weight": np.ones(4, np.float32)}
  if with_language_model:
    out.update({prefix + n[len("model."):]: t for n, t in tensors.items()})
  save_file(out, str(directory / "model.safetensors"))
  (directory / "config.json").write_text(json.dumps({
      "model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
      "text_config": text_cfg, "vision_config": {"hidden_size": 4}}))


@pytest.mark.parametrize("prefix", ["language_model.model.", "model.language_model."])
def test_multimodal_gemma3_loads_its_language_model(tmp_path, gemma3, prefix):
  params, config = gemma3
  checkpoints.save_hf(tmp_path, params, config)
  _as_multimodal(tmp_path, prefix)
  loaded, loaded_config = checkpoints.load_params(tmp_path)
  assert loaded_config == config
  _assert_same_params(loaded, params)


def test_multimodal_checkpoint_without_language_model(tmp_path, gemma3):
  params, config = gemma3
  checkpoints.save_hf(tmp_path, params, config)
  _as_multimodal(tmp_path, "", with_language_model=False)
  with pytest.raises(CheckpointError, match=f"{tmp_path}: no language model"):
    checkpoints.load_params(tmp_path)


def test_gemma3_config_disagreeing_with_the_tensors(tmp_path, gemma3):
  params, config = gemma3
  checkpoints.save_hf(tmp_path, params, config)
  cfg = json.loads((tmp_path / "config.json").read_text())
  cfg["head_dim"] = 32
  (tmp_path / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor model\.layers\.0\."
                                            r"self_attn\.q_norm\.weight has shape \(16,\)"):
    checkpoints.load_params(tmp_path)


def test_non_finite_weights_are_an_error(tmp_path, toy_params, toy_config):
  from safetensors.numpy import load_file, save_file
  checkpoints.save_hf(tmp_path, toy_params, toy_config)
  tensors = load_file(str(tmp_path / "model.safetensors"))
  tensors["model.layers.1.mlp.down_proj.weight"][3, 5] = np.nan
  save_file(tensors, str(tmp_path / "model.safetensors"))
  with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.down_proj\.weight holds NaN"):
    checkpoints.load_params(tmp_path)


def test_invalid_config_json_names_the_file(hf_copy):
  (hf_copy / "config.json").write_text("{not json")
  with pytest.raises(CheckpointError, match=r"config\.json: not a readable JSON"):
    checkpoints.load_params(hf_copy)


def test_embedding_rows_must_match_the_config_vocab(hf_copy, toy_config):
  cfg = json.loads((hf_copy / "config.json").read_text())
  cfg["vocab_size"] = toy_config.vocab_size - 12
  (hf_copy / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(CheckpointError, match=r"model\.embed_tokens\.weight .*vocab_size=500"):
    checkpoints.load_params(hf_copy)
