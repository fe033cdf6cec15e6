"""Gemma Scope 2 trees (`resid_post/layer_{L}_width_{W}_l0_{l0}/params.safetensors` +
`config.json`): write -> load_layers round trips, L0-bucket and width resolution, the errors
that list what exists, the hub path, and SAELens reading the files the documented way."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from sae import gemma_scope as gs
from sae import jumprelu as jr

D = 8


def _assert_params_equal(a: jr.JumpReLUParams, b: jr.JumpReLUParams):
  for name in jr.PARAM_NAMES:
    np.testing.assert_array_equal(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)),
                                  err_msg=name)


def _sae(seed: int, width: int = 64) -> jr.JumpReLUParams:
  return jr.random_params(jax.random.PRNGKey(seed), D, width)


def test_write_then_load_layers_round_trips(tmp_path):
  stacked = jr.random_params(jax.random.PRNGKey(0), D, 64, n_layers=3)
  dirs = gs.save_gemma_scope2_layers(tmp_path, stacked, layers=[2, 5, 9], l0s={2: 11, 5: 12, 9: 13},
                                     model_name="google/gemma-3-270m")
  assert [d.relative_to(tmp_path).as_posix() for d in dirs] == [
      "resid_post/layer_2_width_64_l0_11", "resid_post/layer_5_width_64_l0_12",
      "resid_post/layer_9_width_64_l0_13"]
  arrays = load_file(dirs[1] / gs.GS2_PARAMS)
  assert sorted(arrays) == ["b_dec", "b_enc", "threshold", "w_dec", "w_enc"]  # lowercase
  assert {a.dtype for a in arrays.values()} == {np.dtype(np.float32)}
  assert arrays["w_enc"].shape == (D, 64) and arrays["w_dec"].shape == (64, D)
  assert json.loads((dirs[1] / gs.GS2_CONFIG).read_text()) == {
      "model_name": "google/gemma-3-270m", "architecture": "jump_relu",
      "hf_hook_point_in": "model.layers.5.output", "hf_hook_point_out": "model.layers.5.output",
      "width": 64, "l0": 12, "affine_connection": False, "type": "sae"}
  for root in (tmp_path, tmp_path / gs.GS2_SITE):  # the repo mirror or its resid_post folder
    got = gs.load_layers(root, [9, 2], width=64, l0={9: 13, 2: 11}, d_in=D)
    _assert_params_equal(jr.unstack(got)[0], jr.unstack(stacked)[2])
    _assert_params_equal(jr.unstack(got)[1], jr.unstack(stacked)[0])
  single = gs.load(dirs[0], d_in=D)  # one folder on its own
  _assert_params_equal(single, jr.unstack(stacked)[0])
  assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporary files


@pytest.fixture
def bucket_tree(tmp_path):
  """Layer 5: 16k small/medium/big (config l0 20/60/150) and 65k medium; layer 9: 16k small
  and a seed variant (not a residual SAE we pick)."""
  saes = {}
  for i, (layer, width, label, l0) in enumerate([
      (5, 1 << 14, "small", 20), (5, 1 << 14, "medium", 60), (5, 1 << 14, "big", 150),
      (5, 1 << 16, "medium", 60), (9, 1 << 14, "small", 20)]):
    saes[layer, width, label] = _sae(i, width=64)
    folder = tmp_path / gs.GS2_SITE / gs.gemma_scope2_name(layer, width, label)
    gs.save_gemma_scope2(folder, saes[layer, width, label], layer, l0)
    # The folder names a width; the test weights stay 64 wide, so drop config.json's width.
    cfg = json.loads((folder / gs.GS2_CONFIG).read_text())
    (folder / gs.GS2_CONFIG).write_text(json.dumps({**cfg, "width": None}))
  gs.save_gemma_scope2(tmp_path / gs.GS2_SITE / "layer_9_width_16k_l0_small_seed_1", _sae(9), 9,
                       20)
  return tmp_path, saes


def test_l0_buckets_ints_and_canonical_resolve(bucket_tree):
  root, saes = bucket_tree
  assert gs.gemma_scope2_name(5, 1 << 16, "medium") == "layer_5_width_65k_l0_medium"
  _assert_params_equal(gs.load(gs.resolve_layers(root, [5], "16k", "big")[0]),
                       saes[5, 1 << 14, "big"])
  # An int matches a bucket through config.json's l0; widths by name or by size.
  for width in ("65k", 65536, "width_65k"):
    _assert_params_equal(jr.unstack(gs.load_layers(root, [5], width, 60))[0],
                         saes[5, 1 << 16, "medium"])
  # "canonical" takes a layer's only SAE of that width (what our trainer writes).
  _assert_params_equal(jr.unstack(gs.load_layers(root, [9], "16k"))[0], saes[9, 1 << 14, "small"])
  both = gs.load_layers(root, [5, 9], "16k", {5: "medium", 9: 20})
  _assert_params_equal(jr.unstack(both)[0], saes[5, 1 << 14, "medium"])
  _assert_params_equal(jr.unstack(both)[1], saes[9, 1 << 14, "small"])


def test_missing_layer_width_or_l0_names_the_path_and_lists_what_exists(bucket_tree):
  root, _ = bucket_tree
  site = root / gs.GS2_SITE
  with pytest.raises(gs.SAENotFoundError, match=rf"{site}: no Gemma Scope 2 SAE for layer 7; "
                                                r"layers present: \[5, 9\]"):
    gs.load_layers(root, [5, 7], "16k", "small")
  with pytest.raises(gs.SAENotFoundError, match=r"no layer-9 SAE of width 262k; layer 9 has "
                                                r"widths \['16k'\]"):
    gs.load_layers(root, [9], "262k", "small")
  with pytest.raises(gs.SAENotFoundError, match=r"no layer_5_width_65k_l0_big \(l0='big'\); "
                                                r"layer 5 width 65k has l0 \['medium'\]"):
    gs.load_layers(root, [5], "65k", "big")
  with pytest.raises(gs.SAENotFoundError, match=r"no layer_5_width_16k_l0_61 .* has l0 "
                                                r"\['big', 'medium', 'small'\]"):
    gs.load_layers(root, [5], "16k", 61)
  with pytest.raises(gs.SAENotFoundError, match=r"l0='canonical' takes a layer's only SAE .* "
                                                r"\['big', 'medium', 'small'\]; choose one"):
    gs.load_layers(root, [5], "16k")


def test_bad_gemma_scope2_files_are_format_errors(tmp_path):
  folder = gs.save_gemma_scope2(tmp_path / gs.GS2_SITE / "layer_0_width_64_l0_5", _sae(0), 0, 5)
  with pytest.raises(gs.SAEFormatError, match="d_in=8 but the model's residual width is 640"):
    gs.load_layers(tmp_path, [0], 64, 5, d_in=640)
  cfg = json.loads((folder / gs.GS2_CONFIG).read_text())
  (folder / gs.GS2_CONFIG).write_text(json.dumps({**cfg, "width": 128}))
  with pytest.raises(gs.SAEFormatError, match="64 features but config.json says width=128"):
    gs.load(folder)
  (folder / gs.GS2_CONFIG).write_text(json.dumps({**cfg, "architecture": "topk"}))
  with pytest.raises(gs.SAEFormatError, match=r"config.json: architecture 'topk', expected "
                                              "'jump_relu'"):
    gs.load(folder)
  (folder / gs.GS2_CONFIG).unlink()  # optional: the weights alone load
  _assert_params_equal(gs.load(folder), _sae(0))


def test_widths_use_gemma_scope_names():
  assert [gs._width_name(1 << p) for p in (14, 16, 18, 20)] == ["16k", "65k", "262k", "1m"]
  assert [gs.width_size(n) for n in ("16k", "65k", "262k", "1m", "4096")] == [
      1 << 14, 1 << 16, 1 << 18, 1 << 20, 4096]
  assert gs._width_name(4096) == "4096" and gs.width_size("4k") == 4096


def test_gemma_scope2_hub_ids_download_the_safetensors(monkeypatch, tmp_path):
  huggingface_hub = pytest.importorskip("huggingface_hub")
  folder = gs.save_gemma_scope2(tmp_path / "f", _sae(1), 12, 60)
  requested = []

  def fake_download(repo_id, filename):
    requested.append((repo_id, filename))
    return str(folder / gs.GS2_PARAMS)

  monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
  got = gs.load_layers("google/gemma-scope-2-270m-pt", [12], "16k", "medium")
  assert requested == [("google/gemma-scope-2-270m-pt",
                        "resid_post/layer_12_width_16k_l0_medium/params.safetensors")]
  _assert_params_equal(jr.unstack(got)[0], _sae(1))
  with pytest.raises(ValueError, match="Gemma Scope 2 has no canonical L0 table"):
    gs.load_layers("google/gemma-scope-2-270m-pt", [12])


def test_saelens_reads_our_files_the_documented_way(tmp_path):
  """SAELens's offline recipe for Gemma Scope 2 (SAE.from_dict + the lowercase -> W_* key map)
  on the files we write gives our codes and reconstructions."""
  torch = pytest.importorskip("torch")
  sae_lens = pytest.importorskip("sae_lens")
  params = _sae(2)
  folder = gs.save_gemma_scope2(tmp_path / "layer_3_width_64_l0_9", params, 3, 9)
  r = load_file(folder / gs.GS2_PARAMS)
  sae = sae_lens.SAE.from_dict({
      "architecture": "jumprelu", "d_in": D, "d_sae": 64, "dtype": "float32", "device": "cpu",
      "apply_b_dec_to_input": False, "normalize_activations": "none",
      "reshape_activations": "none", "metadata": {"hook_name": "blocks.3.hook_resid_post"}})
  sae.load_state_dict({"W_enc": torch.from_numpy(r["w_enc"]), "W_dec": torch.from_numpy(r["w_dec"]),
                       "b_enc": torch.from_numpy(r["b_enc"]), "b_dec": torch.from_numpy(r["b_dec"]),
                       "threshold": torch.from_numpy(r["threshold"])})
  x = np.random.default_rng(0).standard_normal((32, D)).astype(np.float32)
  with torch.no_grad():
    f = sae.encode(torch.from_numpy(x))
    x_hat = sae.decode(f).numpy()
  assert 0 < (f.numpy() > 0).mean() < 0.5
  np.testing.assert_allclose(jr.encode(params, x), f.numpy(), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(jr.decode(params, jr.encode(params, x)), x_hat, rtol=1e-5,
                             atol=1e-5)
