"""JumpReLU encode/decode, the stacked form inside the model's layer scan, and the loaders."""
from __future__ import annotations

import json
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sae import gemma_scope as gs
from sae import jumprelu as jr
from xling_jax.model import transformer as model_lib

D, W = 64, 256


def _assert_params_equal(a: jr.JumpReLUParams, b: jr.JumpReLUParams, **tol):
  for name in jr.PARAM_NAMES:
    np.testing.assert_allclose(np.asarray(getattr(a, name), np.float32),
                               np.asarray(getattr(b, name), np.float32), err_msg=name, **tol)


@pytest.fixture(scope="module")
def sae():
  return jr.random_params(jax.random.PRNGKey(1), D, W)


@pytest.fixture(scope="module")
def stacked():
  return jr.random_params(jax.random.PRNGKey(2), D, W, n_layers=3)


@pytest.fixture(scope="module")
def x():
  return jax.random.normal(jax.random.PRNGKey(3), (2, 5, D))


# ----------------------------------------------------------------------------- math

def test_encode_decode_match_numpy(sae, x):
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), sae)
  pre = np.asarray(x, np.float64) @ p.W_enc + p.b_enc
  want = np.maximum(pre, 0) * (pre > p.threshold)
  f = jax.jit(jr.encode)(sae, x)
  assert f.shape == (2, 5, W)
  np.testing.assert_allclose(f, want, rtol=1e-5, atol=1e-5)
  assert 0.05 < float((f > 0).mean()) < 0.2  # realistic sparsity from random_params
  np.testing.assert_allclose(jax.jit(jr.decode)(sae, f), np.asarray(f, np.float64) @ p.W_dec +
                             p.b_dec, rtol=1e-5, atol=1e-5)


def test_threshold_is_strict_and_no_b_dec_subtraction():
  eye = jnp.eye(2, 3)
  params = jr.JumpReLUParams(W_enc=eye, b_enc=jnp.zeros(3), threshold=jnp.array([1.0, 0.5, 0.0]),
                             W_dec=eye.T, b_dec=jnp.full(2, 7.0))
  f = jr.encode(params, jnp.array([[1.0, 0.5], [1.5, 0.25]]))
  # pre == threshold stays off; b_dec (7) would switch every feature off if it were subtracted.
  np.testing.assert_array_equal(f, [[0.0, 0.0, 0.0], [1.5, 0.0, 0.0]])


def test_reconstruction_metrics_and_mask(sae, x):
  m = jax.jit(jr.reconstruction_metrics)(sae, x)
  xs = np.asarray(x, np.float64).reshape(-1, D)
  f = np.asarray(jr.encode(sae, x)).reshape(-1, W)
  x_hat = np.asarray(jr.decode(sae, jr.encode(sae, x)), np.float64).reshape(-1, D)
  mse = ((xs - x_hat) ** 2).sum(-1).mean()
  np.testing.assert_allclose(m.mse, mse, rtol=1e-5)
  np.testing.assert_allclose(m.explained_variance,
                             1 - mse / ((xs - xs.mean(0)) ** 2).sum(-1).mean(), rtol=1e-5)
  np.testing.assert_allclose(m.l0, (f != 0).sum(-1).mean(), rtol=1e-6)
  mask = jnp.array([[1, 1, 0, 1, 0], [0, 1, 1, 0, 0]])
  masked = jr.reconstruction_metrics(sae, x, mask)
  kept = jr.reconstruction_metrics(sae, x[np.asarray(mask, bool)])
  for name in ("mse", "explained_variance", "l0"):
    np.testing.assert_allclose(getattr(masked, name), getattr(kept, name), rtol=1e-5,
                               err_msg=name)


def test_astype_and_bf16_encode(sae, x):
  half = jr.astype(sae, jnp.bfloat16)
  assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(half))
  f = jr.encode(half, x)
  assert f.dtype == jnp.bfloat16
  # bf16 weights still give nearly the same active set as float32 ones.
  agree = float(((f > 0) == (jr.encode(sae, x) > 0)).mean())
  assert agree > 0.97


def test_stack_unstack_and_stacked_encode(stacked, x):
  singles = jr.unstack(stacked)
  assert len(singles) == 3 and singles[0].W_enc.shape == (D, W)
  _assert_params_equal(jr.stack(singles), stacked)
  xs = jnp.stack([x, 2 * x, -x])
  codes = jax.jit(jr.encode_stacked)(stacked, xs)
  recons = jax.jit(jr.decode_stacked)(stacked, codes)
  for layer, params in enumerate(singles):
    np.testing.assert_allclose(codes[layer], jr.encode(params, xs[layer]), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(recons[layer], jr.decode(params, codes[layer]), rtol=1e-6,
                               atol=1e-6)
  with pytest.raises(ValueError, match="different shapes"):
    jr.stack([singles[0], jr.random_params(jax.random.PRNGKey(0), D, 2 * W)])


def test_encode_inside_the_layer_scan(toy_config, toy_params):
  """observe encodes each layer's residual with its own SAE slice and returns per-layer sums;
  they equal encoding the residuals of the same scan afterwards."""
  c = toy_config
  tokens = jax.random.randint(jax.random.PRNGKey(4), (2, 7), 3, c.vocab_size)
  mask = jnp.array([[1] * 7, [1] * 5 + [0] * 2])

  @jax.jit
  def fused(params, sae_stack):
    def observe(resid, sae_l):
      f = jr.encode(sae_l, resid)
      return {"l0": jnp.sum((f > 0) * mask[..., None]), "act": jnp.sum(f * mask[..., None]),
              "resid": resid}
    x = model_lib.embed(params, c, tokens)
    return model_lib.scan_blocks(params, c, x, mask, observe=observe, observe_xs=sae_stack)[1]

  sae_stack = jr.random_params(jax.random.PRNGKey(5), c.d_model, W, n_layers=c.n_layers)
  residuals = fused(toy_params, sae_stack)["resid"]
  # Thresholds at each layer's 85th percentile of pre-activations: ~15% fire on every layer.
  pre = jax.vmap(jr.pre_activations)(sae_stack, residuals)
  sae_stack = sae_stack.replace(threshold=jnp.quantile(pre, 0.85, axis=(1, 2)))

  got = fused(toy_params, sae_stack)
  codes = jr.encode_stacked(sae_stack, got["resid"])  # [L, B, T, W]
  want_l0 = jnp.sum((codes > 0) * mask[None, ..., None], axis=(1, 2, 3))
  assert got["l0"].shape == (c.n_layers,)
  assert np.all(np.asarray(want_l0) > 0)
  np.testing.assert_array_equal(got["l0"], want_l0)
  np.testing.assert_allclose(got["act"], jnp.sum(codes * mask[None, ..., None], axis=(1, 2, 3)),
                             rtol=1e-5)


# ----------------------------------------------------------------------------- loading

def test_npz_round_trip_dtype_and_sharding(tmp_path, sae, x):
  path = gs.save_params_npz(tmp_path / "params.npz", sae)
  _assert_params_equal(gs.load(path), sae)
  _assert_params_equal(gs.load(tmp_path), sae)  # a folder holding params.npz
  half = gs.load(path, dtype=jnp.bfloat16)
  assert half.W_enc.dtype == jnp.bfloat16
  device = jax.devices()[0]
  sharding = jax.sharding.SingleDeviceSharding(device)
  placed = gs.load(path, sharding=sharding, d_in=D)
  assert placed.W_enc.sharding == sharding
  np.testing.assert_array_equal(jr.encode(placed, x), jr.encode(sae, x))


def test_saelens_directory_round_trip(tmp_path, sae):
  directory = gs.save_saelens(tmp_path / "sae", sae, layer=7)
  cfg = gs.read_saelens_cfg(directory)
  assert (cfg.layer, cfg.d_in, cfg.d_sae, cfg.apply_b_dec_to_input) == (7, D, W, False)
  _assert_params_equal(gs.load(directory, d_in=D), sae)
  with pytest.raises(ValueError, match="stacked"):
    gs.save_saelens(tmp_path / "bad", jr.random_params(jax.random.PRNGKey(0), D, W, 2), 0)


def _tiny_tree(root, width, l0s_per_layer, n_layers=3):
  """HF layout with several L0 variants per layer, each file with distinct weights.
  Returns {(layer, l0): params}."""
  written = {}
  for layer in range(n_layers):
    for l0 in l0s_per_layer[layer]:
      key = jax.random.PRNGKey(1000 * layer + l0)
      written[layer, l0] = jr.random_params(key, 8, 16)
      gs.save_params_npz(root / f"layer_{layer}" / f"width_{width}" / f"average_l0_{l0}" /
                         "params.npz", written[layer, l0])
  return written


@pytest.mark.parametrize("width", ["16k", "65k"])
def test_canonical_resolution(tmp_path, width):
  table = json.loads(gs.CANONICAL_L0_FILE.read_text())["widths"][width]
  # The canonical L0 among decoys, one of them 100 itself (the table decides, not a rule).
  variants = {i: [table[str(i)] - 1, table[str(i)], table[str(i)] + 7, 100] for i in range(3)}
  written = _tiny_tree(tmp_path, width, variants)
  layers = [2, 0]
  paths = gs.resolve_layers(tmp_path, layers, width=width)
  assert [p.parent.name for p in paths] == [f"average_l0_{table[str(i)]}" for i in layers]
  got = gs.load_layers(tmp_path, layers, width=width, d_in=8)
  assert got.W_enc.shape == (2, 8, 16)
  for j, layer in enumerate(layers):
    _assert_params_equal(jr.unstack(got)[j], written[layer, table[str(layer)]])
  # An explicit per-layer mapping and a single int select other folders.
  by_dict = gs.load_layers(tmp_path, [0, 1], width=width,
                           l0={0: variants[0][0], 1: variants[1][2]})
  _assert_params_equal(jr.unstack(by_dict)[1], written[1, variants[1][2]])
  by_int = gs.load_layers(tmp_path, [0], width=width, l0=variants[0][2])
  _assert_params_equal(jr.unstack(by_int)[0], written[0, variants[0][2]])


def test_missing_layer_width_l0_list_what_exists(tmp_path):
  _tiny_tree(tmp_path, "16k", {0: [20, 71], 1: [30], 2: [40]})
  with pytest.raises(gs.SAENotFoundError, match=r"layer 5.*layer_0', 'layer_1', 'layer_2"):
    gs.load_layers(tmp_path, [0, 5], l0=20)
  with pytest.raises(gs.SAENotFoundError, match=r"width_65k.*width_16k"):
    gs.load_layers(tmp_path, [0], width="65k", l0=20)
  with pytest.raises(gs.SAENotFoundError, match=r"average_l0_105.*average_l0_20', 'average_l0_71"):
    gs.load_layers(tmp_path, [0])  # canonical 16k layer 0 is 105
  (tmp_path / "layer_0" / "width_32k").mkdir()
  with pytest.raises(ValueError, match="no canonical L0 .* width '32k'"):
    gs.resolve_layers(tmp_path, [0], width="32k")
  with pytest.raises(gs.SAENotFoundError, match="no such directory"):
    gs.load_layers(tmp_path / "nowhere", [0])


def test_hub_id_downloads_the_resolved_files(tmp_path, monkeypatch):
  """A root that is no local path but a hub id goes through hf_hub_download, file by file."""
  huggingface_hub = pytest.importorskip("huggingface_hub")
  table = gs.canonical_l0()["65k"]
  written = _tiny_tree(tmp_path, "65k", {i: [table[i]] for i in range(2)}, n_layers=2)
  requested = []

  def fake_download(repo_id, filename):
    requested.append((repo_id, filename))
    return str(tmp_path / filename)

  monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
  got = gs.load_layers(gs.REPO_ID, [1, 0], width="65k")
  assert requested == [(gs.REPO_ID, f"layer_{i}/width_65k/average_l0_{table[i]}/params.npz")
                       for i in (1, 0)]
  _assert_params_equal(jr.unstack(got)[0], written[1, table[1]])

  def offline(repo_id, filename):
    raise OSError("offline")

  monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
  with pytest.raises(gs.SAENotFoundError, match="downloading layer_0/width_16k/.*OSError"):
    gs.load_layers("someone/missing-repo", [0])


def test_folder_of_saelens_directories(tmp_path, stacked):
  gs.save_saelens_layers(tmp_path, stacked, layers=[4, 5, 6])
  got = gs.load_layers(tmp_path, [6, 4], width=W, d_in=D)
  _assert_params_equal(jr.unstack(got)[0], jr.unstack(stacked)[2])
  _assert_params_equal(jr.unstack(got)[1], jr.unstack(stacked)[0])
  with pytest.raises(gs.SAENotFoundError, match=r"layers present: \[4, 5, 6\]"):
    gs.load_layers(tmp_path, [3], width=W)
  with pytest.raises(gs.SAENotFoundError, match="no layer-4 SAE of width 16384"):
    gs.load_layers(tmp_path, [4])


def test_streamed_stack_is_placed_and_cast(tmp_path, stacked):
  gs.save_layers_tree(tmp_path, stacked, width="16k", l0s={0: 11, 1: 12, 2: 13})
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  got = gs.load_layers(tmp_path, [0, 1, 2], l0={0: 11, 1: 12, 2: 13}, dtype=jnp.bfloat16,
                       sharding=sharding)
  assert all(leaf.dtype == jnp.bfloat16 and leaf.sharding == sharding
             for leaf in jax.tree.leaves(got))
  _assert_params_equal(got, jr.astype(stacked, jnp.bfloat16))


# ----------------------------------------------------------------------------- bad input

def _npz(path, **arrays):
  with open(path, "wb") as f:
    np.savez(f, **arrays)
  return path


def _arrays(sae):
  return {k: np.asarray(getattr(sae, k)) for k in jr.PARAM_NAMES}


def test_bad_npz_files_are_clear_errors(tmp_path, sae):
  good = _arrays(sae)
  with pytest.raises(gs.SAEFormatError, match=r"d_in=64 but the model's residual width is 2304"):
    gs.load(_npz(tmp_path / "a.npz", **good), d_in=2304)
  missing = {k: v for k, v in good.items() if k != "threshold"}
  with pytest.raises(gs.SAEFormatError, match=r"missing \['threshold'\]"):
    gs.load(_npz(tmp_path / "b.npz", **missing))
  with pytest.raises(gs.SAEFormatError, match="b_enc has dtype int32"):
    gs.load(_npz(tmp_path / "c.npz", **{**good, "b_enc": np.zeros(W, np.int32)}))
  with pytest.raises(gs.SAEFormatError, match=r"W_dec \(256, 63\) \(expected \(256, 64\)\)"):
    gs.load(_npz(tmp_path / "d.npz", **{**good, "W_dec": good["W_dec"][:, :63]}))
  with pytest.raises(gs.SAEFormatError, match="pickled"):
    gs.load(_npz(tmp_path / "e.npz", **{**good, "b_dec": np.array([{"x": 1}], dtype=object)}))
  raw = tmp_path / "f.npz"
  raw.write_bytes(pickle.dumps(good))
  with pytest.raises(gs.SAEFormatError, match="pickled"):
    gs.load(raw)
  with pytest.raises(gs.SAENotFoundError, match="no such file"):
    gs.load(tmp_path / "absent.npz")


def test_bad_saelens_directories_are_clear_errors(tmp_path, sae):
  def variant(name, **cfg_changes):
    directory = gs.save_saelens(tmp_path / name, sae, layer=3)
    cfg = json.loads((directory / gs.SAELENS_CFG).read_text())
    cfg.update(cfg_changes)
    (directory / gs.SAELENS_CFG).write_text(json.dumps(cfg))
    return directory

  with pytest.raises(gs.SAEFormatError, match="architecture 'standard', expected 'jumprelu'"):
    gs.load(variant("arch", architecture="standard"))
  with pytest.raises(gs.SAEFormatError, match="cfg.json d_in=64 but the model's residual width"):
    gs.load(variant("din"), d_in=32)
  with pytest.raises(gs.SAEFormatError, match="has 256 features but cfg.json says d_sae=128"):
    gs.load(variant("dsae", d_sae=128))
  with pytest.raises(gs.SAEFormatError, match="normalize_activations"):
    gs.load(variant("norm", normalize_activations="layer_norm"))
  no_weights = variant("weights")
  (no_weights / gs.SAELENS_WEIGHTS).unlink()
  with pytest.raises(gs.SAENotFoundError, match="sae_weights.safetensors"):
    gs.load(no_weights)


def test_layers_of_different_shapes_do_not_stack(tmp_path):
  gs.save_params_npz(tmp_path / "layer_0/width_16k/average_l0_5/params.npz",
                     jr.random_params(jax.random.PRNGKey(0), 8, 16))
  gs.save_params_npz(tmp_path / "layer_1/width_16k/average_l0_5/params.npz",
                     jr.random_params(jax.random.PRNGKey(0), 8, 32))
  with pytest.raises(gs.SAEFormatError, match="differ from"):
    gs.load_layers(tmp_path, [0, 1], l0=5)
