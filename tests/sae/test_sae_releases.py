"""SAE releases as data (`sae.releases`, releases.json): width names, the canonical L0 table,
which hub ids have which layout, and which SAEs get Neuronpedia feature ids."""
from __future__ import annotations

import re

import pytest

from sae import formats, releases
from xling_jax.model import presets


def test_widths_use_gemma_scope_names():
  assert [releases.width_name(1 << p) for p in (14, 16, 18, 20)] == ["16k", "65k", "262k", "1m"]
  assert [releases.width_size(n) for n in ("16k", "65k", "262k", "1m", "4096")] == [
      1 << 14, 1 << 16, 1 << 18, 1 << 20, 4096]
  assert releases.width_name(4096) == "4096" and releases.width_size("4k") == 4096


def test_every_release_is_complete_and_its_hook_is_its_format_s():
  hooks = {releases.GEMMA_SCOPE: formats.SAELENS_HOOK, releases.GEMMA_SCOPE_2: formats.GS2_HOOK}
  for release in releases.known().values():
    assert release.layout in hooks and release.hook_name == hooks[release.layout]
    assert all(re.search(release.hub_id_pattern, repo) for repo in release.models)
    assert all(releases.width_name(releases.width_size(w)) == w for w in release.widths)
  assert releases.canonical_release().canonical_l0 is not None


def test_hub_ids_find_their_release():
  gs1 = releases.for_hub_id("google/gemma-scope-2b-pt-res")
  assert gs1.name == "gemma-scope-2b-pt-res" and gs1.layout == releases.GEMMA_SCOPE
  assert releases.for_hub_id("google/gemma-scope-2-270m-pt").layout == releases.GEMMA_SCOPE_2
  assert releases.for_hub_id("someone/missing-repo") is None
  with pytest.raises(KeyError, match="no SAE release 'nope'"):
    releases.get("nope")


def test_canonical_table_is_saelens_canonical_release():
  """Every layer of gemma-scope-2b-pt-res-canonical, as SAELens lists it."""
  directory = pytest.importorskip("sae_lens.loading.pretrained_saes_directory")
  listed = directory.get_pretrained_saes_directory()["gemma-scope-2b-pt-res-canonical"]
  assert listed.repo_id == releases.canonical_release().hub_id
  ours = releases.canonical_l0()
  found = 0
  for path in listed.saes_map.values():
    match = re.match(r"layer_(\d+)/width_(\w+)/average_l0_(\d+)$", path)
    if match and match.group(2) in ours:
      assert ours[match.group(2)][int(match.group(1))] == int(match.group(3)), path
      found += 1
  assert found == sum(len(table) for table in ours.values())


def test_neuronpedia_ids_go_to_gemma_scope_saes_of_gemma2_2b_at_16k():
  config = presets.gemma2_2b(param_dtype="bfloat16", compute_dtype="bfloat16")
  assert releases.neuronpedia(config, "16k") == releases.NeuronpediaSet("gemma-2-2b",
                                                                        "gemmascope-res-16k")
  assert releases.neuronpedia(config, 1 << 14).feature(3, 7) == "gemma-2-2b/3-gemmascope-res-16k/7"
  assert releases.neuronpedia(config, "65k") is None
  assert releases.neuronpedia(presets.gemma2_2b(n_layers=4), "16k") is None
  assert releases.neuronpedia(presets.toy(), "16k") is None


def test_neuronpedia_sets_by_id_or_model_and_id():
  assert releases.neuronpedia_set("gemmascope-res-16k") == releases.NeuronpediaSet(
      "gemma-2-2b", "gemmascope-res-16k")
  assert releases.neuronpedia_set("gemma-2-2b/gemmascope-res-65k").feature(0, 1) == (
      "gemma-2-2b/0-gemmascope-res-65k/1")
  with pytest.raises(ValueError, match=r"neuronpedia='res-16k': no release .* \(known: "
                                       r"\['gemmascope-res-16k'\]\); name another as 'model/"):
    releases.neuronpedia_set("res-16k")
