"""One SAE in and out (`sae.formats`): Gemma Scope params.npz, SAELens directories and Gemma Scope
2 folders round trip, and bad files are clear errors."""
from __future__ import annotations

import json
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from sae import formats, jumprelu as jr, trees
from tests.helpers import assert_sae_equal

D, W = 64, 256


@pytest.fixture(scope="module")
def sae():
  return jr.random_params(jax.random.PRNGKey(1), D, W)


@pytest.fixture(scope="module")
def x():
  return jax.random.normal(jax.random.PRNGKey(3), (2, 5, D))


def _sae(seed: int, width: int = 64) -> jr.JumpReLUParams:
  """A Gemma Scope 2-sized test SAE (d_in 8)."""
  return jr.random_params(jax.random.PRNGKey(seed), 8, width)


def test_npz_round_trip_dtype_and_sharding(tmp_path, sae, x):
  path = formats.save_params_npz(tmp_path / "params.npz", sae)
  assert_sae_equal(formats.load(path), sae)
  assert_sae_equal(formats.load(tmp_path), sae)  # a folder holding params.npz
  half = formats.load(path, dtype=jnp.bfloat16)
  assert half.W_enc.dtype == jnp.bfloat16
  device = jax.devices()[0]
  sharding = jax.sharding.SingleDeviceSharding(device)
  placed = formats.load(path, sharding=sharding, d_in=D)
  assert placed.W_enc.sharding == sharding
  np.testing.assert_array_equal(jr.encode(placed, x), jr.encode(sae, x))


def test_saelens_directory_round_trip(tmp_path, sae):
  directory = formats.save_saelens(tmp_path / "sae", sae, layer=7)
  cfg = formats.read_saelens_cfg(directory)
  assert (cfg.layer, cfg.d_in, cfg.d_sae, cfg.apply_b_dec_to_input) == (7, D, W, False)
  assert_sae_equal(formats.load(directory, d_in=D), sae)
  with pytest.raises(ValueError, match="stacked"):
    formats.save_saelens(tmp_path / "bad", jr.random_params(jax.random.PRNGKey(0), D, W, 2), 0)


# ----------------------------------------------------------------------------- bad input

def _npz(path, **arrays):
  with open(path, "wb") as f:
    np.savez(f, **arrays)
  return path


def _arrays(sae):
  return {k: np.asarray(getattr(sae, k)) for k in jr.PARAM_NAMES}


def test_bad_npz_files_are_clear_errors(tmp_path, sae):
  good = _arrays(sae)
  with pytest.raises(formats.SAEFormatError,
                     match=r"d_in=64 but the model's residual width is 2304"):
    formats.load(_npz(tmp_path / "a.npz", **good), d_in=2304)
  missing = {k: v for k, v in good.items() if k != "threshold"}
  with pytest.raises(formats.SAEFormatError, match=r"missing \['threshold'\]"):
    formats.load(_npz(tmp_path / "b.npz", **missing))
  with pytest.raises(formats.SAEFormatError, match="b_enc has dtype int32"):
    formats.load(_npz(tmp_path / "c.npz", **{**good, "b_enc": np.zeros(W, np.int32)}))
  with pytest.raises(formats.SAEFormatError, match=r"W_dec \(256, 63\) \(expected \(256, 64\)\)"):
    formats.load(_npz(tmp_path / "d.npz", **{**good, "W_dec": good["W_dec"][:, :63]}))
  with pytest.raises(formats.SAEFormatError, match="pickled"):
    formats.load(_npz(tmp_path / "e.npz", **{**good, "b_dec": np.array([{"x": 1}], dtype=object)}))
  raw = tmp_path / "f.npz"
  raw.write_bytes(pickle.dumps(good))
  with pytest.raises(formats.SAEFormatError, match="pickled"):
    formats.load(raw)
  with pytest.raises(formats.SAENotFoundError, match="no such file"):
    formats.load(tmp_path / "absent.npz")
  whole = _npz(tmp_path / "g.npz", **good).read_bytes()
  for name, cut in (("head.npz", len(whole) // 2), ("tail.npz", len(whole) - 30)):
    (tmp_path / name).write_bytes(whole[:cut])  # a download that stopped early
    with pytest.raises(formats.SAEFormatError, match=rf"{name}: not a complete \.npz archive "
                                                     r"\(.*fetch the file again"):
      formats.load(tmp_path / name)


def test_bad_saelens_directories_are_clear_errors(tmp_path, sae):
  def variant(name, **cfg_changes):
    directory = formats.save_saelens(tmp_path / name, sae, layer=3)
    cfg = json.loads((directory / formats.SAELENS_CFG).read_text())
    cfg.update(cfg_changes)
    (directory / formats.SAELENS_CFG).write_text(json.dumps(cfg))
    return directory

  with pytest.raises(formats.SAEFormatError, match="architecture 'standard', expected 'jumprelu'"):
    formats.load(variant("arch", architecture="standard"))
  with pytest.raises(formats.SAEFormatError,
                     match="cfg.json d_in=64 but the model's residual width"):
    formats.load(variant("din"), d_in=32)
  with pytest.raises(formats.SAEFormatError, match="has 256 features but cfg.json says d_sae=128"):
    formats.load(variant("dsae", d_sae=128))
  with pytest.raises(formats.SAEFormatError, match="normalize_activations"):
    formats.load(variant("norm", normalize_activations="layer_norm"))
  no_weights = variant("weights")
  (no_weights / formats.SAELENS_WEIGHTS).unlink()
  with pytest.raises(formats.SAENotFoundError, match="sae_weights.safetensors"):
    formats.load(no_weights)
  (no_weights / formats.SAELENS_WEIGHTS).write_bytes(b"not safetensors")
  with pytest.raises(formats.SAEFormatError, match="sae_weights.safetensors: cannot read"):
    formats.load(no_weights)


# ----------------------------------------------------------------------------- Gemma Scope 2

def test_bad_gemma_scope2_files_are_format_errors(tmp_path):
  folder = formats.save_gemma_scope2(tmp_path / trees.GS2_SITE / "layer_0_width_64_l0_5", _sae(0),
                                     0, 5)
  with pytest.raises(formats.SAEFormatError, match="d_in=8 but the model's residual width is 640"):
    trees.load_layers(tmp_path, [0], 64, 5, d_in=640)
  cfg = json.loads((folder / formats.GS2_CONFIG).read_text())
  (folder / formats.GS2_CONFIG).write_text(json.dumps({**cfg, "width": 128}))
  with pytest.raises(formats.SAEFormatError, match="64 features but config.json says width=128"):
    formats.load(folder)
  (folder / formats.GS2_CONFIG).write_text(json.dumps({**cfg, "architecture": "topk"}))
  with pytest.raises(formats.SAEFormatError, match=r"config.json: architecture 'topk', expected "
                                                   "'jump_relu'"):
    formats.load(folder)
  (folder / formats.GS2_CONFIG).unlink()  # optional: the weights alone load
  assert_sae_equal(formats.load(folder), _sae(0))


def test_saelens_reads_our_files_the_documented_way(tmp_path):
  """SAELens's offline recipe for Gemma Scope 2 (SAE.from_dict + the lowercase -> W_* key map)
  on the files we write gives our codes and reconstructions."""
  torch = pytest.importorskip("torch")
  sae_lens = pytest.importorskip("sae_lens")
  params = _sae(2)
  folder = formats.save_gemma_scope2(tmp_path / "layer_3_width_64_l0_9", params, 3, 9)
  r = load_file(folder / formats.GS2_PARAMS)
  sae = sae_lens.SAE.from_dict({
      "architecture": "jumprelu", "d_in": 8, "d_sae": 64, "dtype": "float32", "device": "cpu",
      "apply_b_dec_to_input": False, "normalize_activations": "none",
      "reshape_activations": "none", "metadata": {"hook_name": "blocks.3.hook_resid_post"}})
  sae.load_state_dict({"W_enc": torch.from_numpy(r["w_enc"]), "W_dec": torch.from_numpy(r["w_dec"]),
                       "b_enc": torch.from_numpy(r["b_enc"]), "b_dec": torch.from_numpy(r["b_dec"]),
                       "threshold": torch.from_numpy(r["threshold"])})
  x = np.random.default_rng(0).standard_normal((32, 8)).astype(np.float32)
  with torch.no_grad():
    f = sae.encode(torch.from_numpy(x))
    x_hat = sae.decode(f).numpy()
  assert 0 < (f.numpy() > 0).mean() < 0.5
  np.testing.assert_allclose(jr.encode(params, x), f.numpy(), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(jr.decode(params, jr.encode(params, x)), x_hat, rtol=1e-5,
                             atol=1e-5)
