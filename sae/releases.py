"""SAE releases as data: `releases.json`, the way SAELens keeps `pretrained_saes.yaml`.

Per release: its hub repository (`hub_id`, and `hub_id_pattern`, which says which hub ids are
read in its layout), the model each repo's SAEs read, the tree layout (`gemma_scope`:
`layer_{i}/width_{w}/average_l0_{n}/params.npz`; `gemma_scope_2`:
`resid_post/layer_{i}_width_{w}_l0_{l0}/params.safetensors`), the hook its SAEs read, the widths
it holds, and where known the canonical L0 table and the Neuronpedia feature sets.

Widths are named as Gemma Scope names them (`width_names`): 16k = 2^14, 65k = 2^16, 262k =
2^18, 1m = 2^20 (and 32k, 131k, 524k); any other width by its number of features ("4096").

`l0="canonical"` reads the table of `canonical_l0_release` (the SAELens "canonical" release:
per width and layer, the L0 closest to 100).

Neuronpedia: SAEs loaded from a tree or hub id for a model whose config is a release's preset
(dtypes aside), at a width with a Neuronpedia set, get that set's feature ids
(`neuronpedia(config, width)`); `model_setup.load_saes` records them on the SAESetup, so the
command line and a notebook link the same features.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import re
from pathlib import Path
from typing import Mapping

RELEASES_FILE = Path(__file__).with_name("releases.json")
GEMMA_SCOPE = "gemma_scope"      # layout: layer_{i}/width_{w}/average_l0_{n}/params.npz
GEMMA_SCOPE_2 = "gemma_scope_2"  # layout: resid_post/layer_{i}_width_{w}_l0_{l0}/...

_WIDTH = re.compile(r"^(\d+)([km]?)$")


@dataclasses.dataclass(frozen=True)
class NeuronpediaSet:
  """Neuronpedia's name for one SAE set: feature `index` of layer `layer` is
  `{model}/{layer}-{set_id}/{index}` (https://www.neuronpedia.org/ + that)."""
  model: str    # Neuronpedia's model id, e.g. "gemma-2-2b"
  set_id: str   # e.g. "gemmascope-res-16k"

  def feature(self, layer: int, index: int) -> str:
    return f"{self.model}/{layer}-{self.set_id}/{index}"


@dataclasses.dataclass(frozen=True)
class Neuronpedia:
  """A release's Neuronpedia sets: `sets` {width name: set id} for the model Neuronpedia calls
  `model`, whose config is our preset `preset`."""
  model: str
  preset: str
  sets: Mapping[str, str]


@dataclasses.dataclass(frozen=True)
class Release:
  """One entry of releases.json (see there for each field)."""
  name: str
  description: str
  hub_id: str
  hub_id_pattern: str
  models: Mapping[str, str]  # hub repo id -> the HF model its SAEs read
  layout: str
  hook_name: str             # the hook its SAEs read, "{layer}" standing for the layer
  widths: tuple[str, ...]
  l0_buckets: tuple[str, ...] = ()
  canonical_l0: Mapping[str, Mapping[int, int]] | None = None  # {width: {layer: average_l0}}
  neuronpedia: Neuronpedia | None = None


@functools.cache
def _data() -> dict:
  return json.loads(RELEASES_FILE.read_text())


def _release(name: str, entry: dict) -> Release:
  table = entry.get("canonical_l0")
  sets = entry.get("neuronpedia")
  return Release(
      name=name, description=entry["description"], hub_id=entry["hub_id"],
      hub_id_pattern=entry["hub_id_pattern"], models=dict(entry["models"]),
      layout=entry["layout"], hook_name=entry["hook_name"], widths=tuple(entry["widths"]),
      l0_buckets=tuple(entry.get("l0_buckets", ())),
      canonical_l0=None if table is None else {
          w: {int(k): int(v) for k, v in rows.items()} for w, rows in table["widths"].items()},
      neuronpedia=None if sets is None else Neuronpedia(sets["model"], sets["preset"],
                                                        dict(sets["sets"])))


@functools.cache
def known() -> dict[str, Release]:
  """{name: Release} from releases.json, in file order."""
  return {name: _release(name, entry) for name, entry in _data()["releases"].items()}


def get(name: str) -> Release:
  if name not in known():
    raise KeyError(f"no SAE release {name!r} in {RELEASES_FILE.name} (known: "
                   f"{sorted(known())})")
  return known()[name]


def for_hub_id(repo_id: str) -> Release | None:
  """The release whose `hub_id_pattern` matches `repo_id`, or None."""
  return next((r for r in known().values() if re.search(r.hub_id_pattern, repo_id)), None)


def canonical_release() -> Release:
  """The release whose table `l0="canonical"` reads."""
  return get(_data()["canonical_l0_release"])


def canonical_l0() -> dict[str, dict[int, int]]:
  """{width: {layer: average_l0}}: the canonical release's table."""
  return dict(canonical_release().canonical_l0)


# ----------------------------------------------------------------------------- widths

def _named_widths() -> dict[str, int]:
  return _data()["width_names"]


def width_name(width: str | int) -> str:
  """"16k" / "width_16k" / 16384 -> "16k", 65536 -> "65k", 4096 -> "4096" (the folder part)."""
  if isinstance(width, int):
    names = {size: name for name, size in _named_widths().items()}
    return names.get(width, str(width))
  return width.removeprefix("width_")


def width_size(width: str | int) -> int:
  """"16k" -> 16384, "65k" -> 65536, "1m" -> 1048576, "4096" / 4096 -> 4096; another "Nk" is
  N * 1024."""
  if isinstance(width, int):
    return width
  name = width_name(width)
  if name in _named_widths():
    return _named_widths()[name]
  match = _WIDTH.match(name)
  if not match:
    raise ValueError(f"width {width!r}: expected e.g. '16k', '65k', '1m' or an integer")
  return int(match.group(1)) << {"": 0, "k": 10, "m": 20}[match.group(2)]


# ----------------------------------------------------------------------------- Neuronpedia

def neuronpedia(config, width: str | int) -> NeuronpediaSet | None:
  """The Neuronpedia set of released SAEs of `width` for the model `config` (a ModelConfig)
  describes, or None. A release's model is its preset, compared with `config` dtypes aside."""
  from xling_jax.model import presets
  name = width_name(width)
  for release in known().values():
    sets = release.neuronpedia
    if sets is None or name not in sets.sets:
      continue
    model = presets.preset(sets.preset, param_dtype=config.param_dtype,
                           compute_dtype=config.compute_dtype)
    if config == model:
      return NeuronpediaSet(sets.model, sets.sets[name])
  return None


def neuronpedia_set(spec: str) -> NeuronpediaSet:
  """A Neuronpedia set named by its id (`gemmascope-res-16k`, looked up in the releases) or as
  `model/set_id` (any set). ValueError for an id no release lists."""
  if "/" in spec:
    model, _, set_id = spec.partition("/")
    return NeuronpediaSet(model, set_id)
  models = {set_id: release.neuronpedia.model for release in known().values()
            if release.neuronpedia for set_id in release.neuronpedia.sets.values()}
  if spec not in models:
    raise ValueError(f"neuronpedia={spec!r}: no release in {RELEASES_FILE.name} has that set "
                     f"(known: {sorted(models)}); name another as 'model/set_id'")
  return NeuronpediaSet(models[spec], spec)
