"""SAEs of many layers (`sae.trees`): Gemma Scope trees (canonical L0), folders of SAELens
directories, Gemma Scope 2 trees (`resid_post/layer_{L}_width_{W}_l0_{l0}/`: L0 buckets and
widths), hub ids, the streamed stack, and the errors that list what exists."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from sae import formats, jumprelu as jr, releases, trees
from tests.helpers import assert_sae_equal

D, W = 64, 256
GS2_D = 8  # the Gemma Scope 2 tests' residual width


@pytest.fixture(scope="module")
def stacked():
  return jr.random_params(jax.random.PRNGKey(2), D, W, n_layers=3)


def _sae(seed: int, width: int = 64) -> jr.JumpReLUParams:
  return jr.random_params(jax.random.PRNGKey(seed), GS2_D, width)


# ----------------------------------------------------------------------------- Gemma Scope, SAELens

def _tiny_tree(root, width, l0s_per_layer, n_layers=3):
  """HF layout with several L0 variants per layer, each file with distinct weights.
  Returns {(layer, l0): params}."""
  written = {}
  for layer in range(n_layers):
    for l0 in l0s_per_layer[layer]:
      key = jax.random.PRNGKey(1000 * layer + l0)
      written[layer, l0] = jr.random_params(key, 8, releases.width_size(width))
      formats.save_params_npz(root / f"layer_{layer}" / f"width_{width}" / f"average_l0_{l0}" /
                              "params.npz", written[layer, l0])
  return written


@pytest.mark.parametrize("width", ["16k", "65k"])
def test_canonical_resolution(tmp_path, width):
  release = json.loads(releases.RELEASES_FILE.read_text())["releases"]["gemma-scope-2b-pt-res"]
  table = release["canonical_l0"]["widths"][width]
  # The canonical L0 among decoys, one of them 100 itself (the table decides, not a rule).
  variants = {i: [table[str(i)] - 1, table[str(i)], table[str(i)] + 7, 100] for i in range(3)}
  written = _tiny_tree(tmp_path, width, variants)
  layers = [2, 0]
  paths = trees.resolve_layers(tmp_path, layers, width=width)
  assert [p.parent.name for p in paths] == [f"average_l0_{table[str(i)]}" for i in layers]
  got = trees.load_layers(tmp_path, layers, width=width, d_in=8)
  assert got.W_enc.shape == (2, 8, releases.width_size(width))
  for j, layer in enumerate(layers):
    assert_sae_equal(jr.unstack(got)[j], written[layer, table[str(layer)]])
  # An explicit per-layer mapping and a single int select other folders.
  by_dict = trees.load_layers(tmp_path, [0, 1], width=width,
                              l0={0: variants[0][0], 1: variants[1][2]})
  assert_sae_equal(jr.unstack(by_dict)[1], written[1, variants[1][2]])
  by_int = trees.load_layers(tmp_path, [0], width=width, l0=variants[0][2])
  assert_sae_equal(jr.unstack(by_int)[0], written[0, variants[0][2]])


def test_missing_layer_width_l0_list_what_exists(tmp_path):
  _tiny_tree(tmp_path, "16k", {0: [20, 71], 1: [30], 2: [40]})
  with pytest.raises(formats.SAENotFoundError, match=r"layer 5.*layer_0', 'layer_1', 'layer_2"):
    trees.load_layers(tmp_path, [0, 5], l0=20)
  with pytest.raises(formats.SAENotFoundError, match=r"width_65k.*width_16k"):
    trees.load_layers(tmp_path, [0], width="65k", l0=20)
  with pytest.raises(formats.SAENotFoundError,
                     match=r"average_l0_105.*average_l0_20', 'average_l0_71"):
    trees.load_layers(tmp_path, [0])  # canonical 16k layer 0 is 105
  (tmp_path / "layer_0" / "width_32k").mkdir()
  with pytest.raises(ValueError, match="no canonical L0 .* width '32k'"):
    trees.resolve_layers(tmp_path, [0], width="32k")
  with pytest.raises(formats.SAENotFoundError, match="no such directory"):
    trees.load_layers(tmp_path / "nowhere", [0])


def test_hub_id_downloads_the_resolved_files(tmp_path, monkeypatch):
  """A root that is no local path but a hub id goes through hf_hub_download, file by file."""
  huggingface_hub = pytest.importorskip("huggingface_hub")
  table = releases.canonical_l0()["65k"]
  written = _tiny_tree(tmp_path, "65k", {i: [table[i]] for i in range(2)}, n_layers=2)
  requested = []

  def fake_download(repo_id, filename):
    requested.append((repo_id, filename))
    return str(tmp_path / filename)

  monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
  repo_id = releases.get("gemma-scope-2b-pt-res").hub_id
  got = trees.load_layers(repo_id, [1, 0], width="65k")
  assert requested == [(repo_id, f"layer_{i}/width_65k/average_l0_{table[i]}/params.npz")
                       for i in (1, 0)]
  assert_sae_equal(jr.unstack(got)[0], written[1, table[1]])

  def offline(repo_id, filename):
    raise OSError("offline")

  monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
  with pytest.raises(formats.SAENotFoundError, match="downloading layer_0/width_16k/.*OSError"):
    trees.load_layers("someone/missing-repo", [0])


def test_folder_of_saelens_directories(tmp_path, stacked):
  trees.save_saelens_layers(tmp_path, stacked, layers=[4, 5, 6])
  got = trees.load_layers(tmp_path, [6, 4], width=W, d_in=D)
  assert_sae_equal(jr.unstack(got)[0], jr.unstack(stacked)[2])
  assert_sae_equal(jr.unstack(got)[1], jr.unstack(stacked)[0])
  with pytest.raises(formats.SAENotFoundError, match=r"layers present: \[4, 5, 6\]"):
    trees.load_layers(tmp_path, [3], width=W)
  with pytest.raises(formats.SAENotFoundError, match="no layer-4 SAE of width 16384"):
    trees.load_layers(tmp_path, [4])


def test_streamed_stack_is_placed_and_cast(tmp_path, stacked):
  trees.save_layers_tree(tmp_path, stacked, width=W, l0s={0: 11, 1: 12, 2: 13})
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  got = trees.load_layers(tmp_path, [0, 1, 2], width=W, l0={0: 11, 1: 12, 2: 13},
                          dtype=jnp.bfloat16, sharding=sharding)
  assert all(leaf.dtype == jnp.bfloat16 and leaf.sharding == sharding
             for leaf in jax.tree.leaves(got))
  assert_sae_equal(got, jr.astype(stacked, jnp.bfloat16))


def test_layers_of_different_shapes_do_not_stack(tmp_path):
  formats.save_params_npz(tmp_path / "layer_0/width_16/average_l0_5/params.npz",
                          jr.random_params(jax.random.PRNGKey(0), 8, 16))
  formats.save_params_npz(tmp_path / "layer_1/width_16/average_l0_5/params.npz",
                          jr.random_params(jax.random.PRNGKey(0), 12, 16))
  with pytest.raises(formats.SAEFormatError, match="differ from"):
    trees.load_layers(tmp_path, [0, 1], width=16, l0=5)


def test_a_folder_named_for_another_width_is_refused(tmp_path, stacked):
  """A `width_16k` folder holding 256-wide SAEs is never trusted (its width would be recorded
  wrong), and the writer never names one (issue 25, point 7)."""
  formats.save_params_npz(tmp_path / "layer_0/width_16k/average_l0_105/params.npz",
                          jr.unstack(stacked)[0])
  with pytest.raises(formats.SAEFormatError, match=r"layer_0/width_16k/average_l0_105/params.npz: "
                     r"holds 256 features, but its place in the tree says width 16k \(16384\); "
                     r"rename its folder for width 256"):
    trees.load_layers(tmp_path, [0])
  with pytest.raises(ValueError, match="width='16k' but the SAEs have 256 features"):
    trees.save_layers_tree(tmp_path / "other", stacked, width="16k")


# ----------------------------------------------------------------------------- Gemma Scope 2

def test_write_then_load_layers_round_trips(tmp_path):
  stacked = jr.random_params(jax.random.PRNGKey(0), GS2_D, 64, n_layers=3)
  dirs = trees.save_gemma_scope2_layers(tmp_path, stacked, layers=[2, 5, 9],
                                        l0s={2: 11, 5: 12, 9: 13},
                                        model_name="google/gemma-3-270m")
  assert [d.relative_to(tmp_path).as_posix() for d in dirs] == [
      "resid_post/layer_2_width_64_l0_11", "resid_post/layer_5_width_64_l0_12",
      "resid_post/layer_9_width_64_l0_13"]
  arrays = load_file(dirs[1] / formats.GS2_PARAMS)
  assert sorted(arrays) == ["b_dec", "b_enc", "threshold", "w_dec", "w_enc"]  # lowercase
  assert {a.dtype for a in arrays.values()} == {np.dtype(np.float32)}
  assert arrays["w_enc"].shape == (GS2_D, 64) and arrays["w_dec"].shape == (64, GS2_D)
  assert json.loads((dirs[1] / formats.GS2_CONFIG).read_text()) == {
      "model_name": "google/gemma-3-270m", "architecture": "jump_relu",
      "hf_hook_point_in": "model.layers.5.output", "hf_hook_point_out": "model.layers.5.output",
      "width": 64, "l0": 12, "affine_connection": False, "type": "sae"}
  for root in (tmp_path, tmp_path / trees.GS2_SITE):  # the repo mirror or its resid_post folder
    got = trees.load_layers(root, [9, 2], width=64, l0={9: 13, 2: 11}, d_in=GS2_D)
    assert_sae_equal(jr.unstack(got)[0], jr.unstack(stacked)[2])
    assert_sae_equal(jr.unstack(got)[1], jr.unstack(stacked)[0])
  single = formats.load(dirs[0], d_in=GS2_D)  # one folder on its own
  assert_sae_equal(single, jr.unstack(stacked)[0])
  assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporary files


@pytest.fixture
def bucket_tree(tmp_path):
  """Layer 5: 16k small/medium/big (config l0 20/60/150) and 65k medium; layer 9: 16k small
  and a seed variant (not a residual SAE we pick)."""
  saes = {}
  for i, (layer, width, label, l0) in enumerate([
      (5, 1 << 14, "small", 20), (5, 1 << 14, "medium", 60), (5, 1 << 14, "big", 150),
      (5, 1 << 16, "medium", 60), (9, 1 << 14, "small", 20)]):
    saes[layer, width, label] = _sae(i, width=width)
    folder = tmp_path / trees.GS2_SITE / trees.gemma_scope2_name(layer, width, label)
    formats.save_gemma_scope2(folder, saes[layer, width, label], layer, l0)
  formats.save_gemma_scope2(tmp_path / trees.GS2_SITE / "layer_9_width_16k_l0_small_seed_1",
                            _sae(9), 9, 20)
  return tmp_path, saes


def test_l0_buckets_ints_and_canonical_resolve(bucket_tree):
  root, saes = bucket_tree
  assert trees.gemma_scope2_name(5, 1 << 16, "medium") == "layer_5_width_65k_l0_medium"
  assert_sae_equal(formats.load(trees.resolve_layers(root, [5], "16k", "big")[0]),
                   saes[5, 1 << 14, "big"])
  # An int matches a bucket through config.json's l0; widths by name or by size.
  for width in ("65k", 65536, "width_65k"):
    assert_sae_equal(jr.unstack(trees.load_layers(root, [5], width, 60))[0],
                     saes[5, 1 << 16, "medium"])
  # "canonical" takes a layer's only SAE of that width (what our trainer writes).
  assert_sae_equal(jr.unstack(trees.load_layers(root, [9], "16k"))[0], saes[9, 1 << 14, "small"])
  both = trees.load_layers(root, [5, 9], "16k", {5: "medium", 9: 20})
  assert_sae_equal(jr.unstack(both)[0], saes[5, 1 << 14, "medium"])
  assert_sae_equal(jr.unstack(both)[1], saes[9, 1 << 14, "small"])


def test_missing_layer_width_or_l0_names_the_path_and_lists_what_exists(bucket_tree):
  root, _ = bucket_tree
  site = root / trees.GS2_SITE
  with pytest.raises(formats.SAENotFoundError, match=rf"{site}: no Gemma Scope 2 SAE for layer 7; "
                                                     r"layers present: \[5, 9\]"):
    trees.load_layers(root, [5, 7], "16k", "small")
  with pytest.raises(formats.SAENotFoundError, match=r"no layer-9 SAE of width 262k; layer 9 has "
                                                     r"widths \['16k'\]"):
    trees.load_layers(root, [9], "262k", "small")
  with pytest.raises(formats.SAENotFoundError, match=r"no layer_5_width_65k_l0_big \(l0='big'\); "
                                                     r"layer 5 width 65k has l0 \['medium'\]"):
    trees.load_layers(root, [5], "65k", "big")
  with pytest.raises(formats.SAENotFoundError, match=r"no layer_5_width_16k_l0_61 .* has l0 "
                                                     r"\['big', 'medium', 'small'\]"):
    trees.load_layers(root, [5], "16k", 61)
  with pytest.raises(formats.SAENotFoundError, match=r"l0='canonical' takes a layer's only SAE .* "
                                                     r"\['big', 'medium', 'small'\]; choose one"):
    trees.load_layers(root, [5], "16k")


def test_gemma_scope2_hub_ids_download_the_safetensors(monkeypatch, tmp_path):
  huggingface_hub = pytest.importorskip("huggingface_hub")
  folder = formats.save_gemma_scope2(tmp_path / "f", _sae(1, width=1 << 14), 12, 60)
  requested = []

  def fake_download(repo_id, filename):
    requested.append((repo_id, filename))
    return str(folder / formats.GS2_PARAMS)

  monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
  got = trees.load_layers("google/gemma-scope-2-270m-pt", [12], "16k", "medium")
  assert requested == [("google/gemma-scope-2-270m-pt",
                        "resid_post/layer_12_width_16k_l0_medium/params.safetensors")]
  assert_sae_equal(jr.unstack(got)[0], _sae(1, width=1 << 14))
  with pytest.raises(ValueError, match="Gemma Scope 2 has no canonical L0 table"):
    trees.load_layers("google/gemma-scope-2-270m-pt", [12])


def test_held_widths_read_every_local_layout_from_its_names(tmp_path, stacked):
  """What a tool picks --sae_width and its layers from before loading anything."""
  trees.save_layers_tree(tmp_path / "gs1", stacked, width=W, l0s=20, layers=(0, 4, 7))
  (tmp_path / "gs1" / "layer_4" / "width_16k").mkdir()
  (tmp_path / "gs1" / "layer_4" / "width_junk").mkdir()  # not a width: ignored
  assert trees.held_widths(tmp_path / "gs1") == {0: [W], 4: [W, 16384], 7: [W]}
  trees.save_gemma_scope2_layers(tmp_path / "gs2", stacked, (1, 3, 5), l0s=9)
  trees.save_gemma_scope2_layers(tmp_path / "gs2", jr.random_params(
      jax.random.PRNGKey(4), D, 32, n_layers=1), (3,), l0s=9)
  assert trees.held_widths(tmp_path / "gs2") == {1: [W], 3: [32, W], 5: [W]}
  trees.save_saelens_layers(tmp_path / "saelens", stacked, (2, 6, 8))
  assert trees.held_widths(tmp_path / "saelens") == {2: [W], 6: [W], 8: [W]}
  with pytest.raises(formats.SAENotFoundError, match="neither the Gemma Scope layout"):
    trees.held_widths(tmp_path)
