"""SAEs of many layers: which file each layer's SAE is in a tree or hub repository, the stacked
load of them all, and the tree writers.

Trees: a local mirror of the Gemma Scope 1 HF repo layout
`layer_{i}/width_{w}/average_l0_{n}/params.npz`, of the Gemma Scope 2 one
`[resid_post/]layer_{i}_width_{w}_l0_{small|medium|big|n}/params.safetensors` (what our trainer
writes too), a directory holding one SAELens directory per layer, or a hub id such as
`google/gemma-scope-2b-pt-res` or `google/gemma-scope-2-{size}-{pt|it}` (downloaded through
`huggingface_hub`, which is imported only then; `sae.releases` says which layout a hub id has).
One SAE's files are `sae.formats`.

`l0="canonical"` resolves through the canonical L0 table of `sae.releases`. Gemma Scope 2 labels
each SAE by a target-L0 bucket (`small`, `medium`, `big`) or an integer: `l0` names one, an int
also matches a bucket whose config.json has that l0, and "canonical" there means the layer's
only SAE of that width.

Memory: `load_layers` streams. It preallocates the stacked arrays on the device (with the
requested sharding) and writes each layer into them in place (a jitted update whose stacked input
is donated), so the peak is the stacked arrays plus one layer, on host and device alike, never
two copies of the stack.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
from pathlib import Path
from typing import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from sae import releases
from sae.formats import (GS2_PARAMS, NPZ_NAME, SAELENS_CFG, SAELENS_HOOK, SAEFormatError,
                         SAELensConfig, SAENotFoundError, Sharding, gemma_scope2_files,
                         leaf_sharding, list_names, read_checked, read_gemma_scope2_config,
                         read_saelens_cfg, save_params_npz, saelens_files)
from sae.jumprelu import PARAM_NAMES, JumpReLUParams, unstack
from sae.releases import width_name, width_size
from xling_jax.runtime import io

GS2_SITE = "resid_post"  # the only Gemma Scope 2 site read here: residual-stream SAEs

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_GS1_LAYER = re.compile(r"^layer_\d+$")
_GS1_WIDTH = re.compile(r"^width_(\d+[km]?)$")
# Variants with a suffix (_seed_1, _affine) are other SAEs and are not matched.
_GS2_DIR = re.compile(r"^layer_(\d+)_width_(\d+[km]?)_l0_([a-z0-9]+)$")


# ----------------------------------------------------------------------------- layer selection

def _l0_for(l0: int | str | Mapping[int, int], width: str | int, layer: int) -> int:
  if isinstance(l0, Mapping):
    if layer not in l0:
      raise ValueError(f"l0 mapping has no entry for layer {layer} (it has {sorted(l0)})")
    return int(l0[layer])
  if l0 == "canonical":
    tables = releases.canonical_l0()
    name = width_name(width)
    if name not in tables or layer not in tables[name]:
      raise ValueError(f"no canonical L0 for layer {layer} at width {name!r} in "
                       f"{releases.RELEASES_FILE.name} (widths: {sorted(tables)})")
    return tables[name][layer]
  if isinstance(l0, int):
    return l0
  raise ValueError(f"l0={l0!r}: expected an int, 'canonical' or a {{layer: l0}} mapping")


def _resolve_hf_layout(root: Path, layer: int, width: str | int, l0) -> Path:
  layer_dir = root / f"layer_{layer}"
  if not layer_dir.is_dir():
    raise SAENotFoundError(f"{root}: no SAE for layer {layer}; present: "
                           f"{list_names(root, 'layer_')}")
  width_dir = layer_dir / f"width_{width_name(width)}"
  if not width_dir.is_dir():
    raise SAENotFoundError(f"{layer_dir}: no width_{width_name(width)}; present: "
                           f"{list_names(layer_dir, 'width_')}")
  n = _l0_for(l0, width, layer)
  file = width_dir / f"average_l0_{n}" / NPZ_NAME
  if not file.is_file():
    raise SAENotFoundError(f"{width_dir}: no average_l0_{n}/{NPZ_NAME} (l0={l0!r}); present: "
                           f"{list_names(width_dir, 'average_l0_')}")
  return file


def _saelens_dirs(root: Path) -> dict[int, list[SAELensConfig]]:
  """SAELens directories directly under `root`, grouped by the layer in their hook name."""
  found: dict[int, list[SAELensConfig]] = {}
  for sub in sorted(root.iterdir()):
    if (sub / SAELENS_CFG).is_file():
      cfg = read_saelens_cfg(sub)
      if cfg.layer is not None:
        found.setdefault(cfg.layer, []).append(cfg)
  return found


def _resolve_saelens(root: Path, found: dict[int, list[SAELensConfig]], layer: int,
                     width: str | int) -> Path:
  if layer not in found:
    raise SAENotFoundError(f"{root}: no SAELens directory with hook blocks.{layer}."
                           f"hook_resid_post; layers present: {sorted(found)}")
  size = width_size(width)
  matches = [c for c in found[layer] if c.d_sae == size]
  if len(matches) != 1:
    present = [f"{c.path.name} (d_sae {c.d_sae})" for c in found[layer]]
    problem = "no" if not matches else "several"
    raise SAENotFoundError(f"{root}: {problem} layer-{layer} SAE of width {size}; layer {layer} "
                           f"has {present}")
  return matches[0].path


@dataclasses.dataclass(frozen=True)
class _GS2Entry:
  """One `layer_{i}_width_{w}_l0_{label}` folder."""
  path: Path
  layer: int
  width: int
  label: str

  def config_l0(self) -> int | None:
    cfg = read_gemma_scope2_config(self.path)
    return None if cfg is None else cfg.get("l0")


def gemma_scope2_name(layer: int, width: str | int, l0: int | str) -> str:
  """The Gemma Scope 2 folder name, e.g. `layer_12_width_16k_l0_medium`."""
  return f"layer_{int(layer)}_width_{width_name(width)}_l0_{l0}"


def _gs2_root(path: Path) -> Path | None:
  """The folder holding Gemma Scope 2 SAE folders: `path/resid_post` or `path` itself."""
  for candidate in (path / GS2_SITE, path):
    if candidate.is_dir() and any(_GS2_DIR.match(p.name) for p in candidate.iterdir()):
      return candidate
  return None


def _gs2_entries(root: Path) -> dict[int, list[_GS2Entry]]:
  found: dict[int, list[_GS2Entry]] = {}
  for name in list_names(root):
    match = _GS2_DIR.match(name)
    if match and (root / name).is_dir():
      layer, width, label = match.groups()
      found.setdefault(int(layer), []).append(
          _GS2Entry(root / name, int(layer), width_size(width), label))
  return found


def _gs2_l0(l0, layer: int) -> int | str:
  if isinstance(l0, Mapping):
    if layer not in l0:
      raise ValueError(f"l0 mapping has no entry for layer {layer} (it has {sorted(l0)})")
    l0 = l0[layer]
  if isinstance(l0, bool) or not isinstance(l0, (int, str)):
    raise ValueError(f"l0={l0!r}: expected small, medium, big, an int, 'canonical' or a "
                     "{layer: l0} mapping")
  return l0


def _resolve_gs2(root: Path, found: dict[int, list[_GS2Entry]], layer: int, width: str | int,
                 l0) -> Path:
  if layer not in found:
    raise SAENotFoundError(f"{root}: no Gemma Scope 2 SAE for layer {layer}; layers present: "
                           f"{sorted(found)}")
  size = width_size(width)
  candidates = [e for e in found[layer] if e.width == size]
  if not candidates:
    widths = sorted({e.width for e in found[layer]})
    raise SAENotFoundError(f"{root}: no layer-{layer} SAE of width {width_name(size)}; layer "
                           f"{layer} has widths {[width_name(w) for w in widths]}")
  want = _gs2_l0(l0, layer)
  labels = [e.label for e in candidates]
  if want == "canonical":
    if len(candidates) != 1:
      raise SAENotFoundError(f"{root}: l0='canonical' takes a layer's only SAE of a width, but "
                             f"layer {layer} width {width_name(size)} has l0 {labels}; choose "
                             "one (small, medium, big or an int)")
    matches = candidates
  else:
    matches = [e for e in candidates if e.label == str(want)]
    if not matches and isinstance(want, int):  # a bucket folder whose config.json says l0=want
      matches = [e for e in candidates if e.config_l0() == want]
  if len(matches) != 1:
    problem = "no" if not matches else "several"
    raise SAENotFoundError(f"{root}: {problem} {gemma_scope2_name(layer, size, want)} "
                           f"(l0={l0!r}); layer {layer} width {width_name(size)} has l0 "
                           f"{labels}")
  return matches[0].path / GS2_PARAMS


def _hub_filename(repo_id: str, layer: int, width: str | int, l0) -> str:
  release = releases.for_hub_id(repo_id)
  if release is None or release.layout == releases.GEMMA_SCOPE:
    return (f"layer_{layer}/width_{width_name(width)}/average_l0_{_l0_for(l0, width, layer)}/"
            f"{NPZ_NAME}")
  want = _gs2_l0(l0, layer)
  if want == "canonical":
    raise ValueError(f"{repo_id}: Gemma Scope 2 has no canonical L0 table; pass l0=small, "
                     "medium, big or an int")
  return f"{GS2_SITE}/{gemma_scope2_name(layer, width, want)}/{GS2_PARAMS}"


def _hub_download(repo_id: str, layer: int, width: str | int, l0) -> Path:
  try:
    from huggingface_hub import hf_hub_download
  except ImportError as e:
    raise ImportError(f"{repo_id!r} is not a local path, and downloading it needs "
                      "huggingface_hub (pip install huggingface_hub)") from e
  filename = _hub_filename(repo_id, layer, width, l0)
  try:
    return Path(hf_hub_download(repo_id=repo_id, filename=filename))
  except Exception as e:  # offline, unknown repo or file: say what was tried, keep the cause
    raise SAENotFoundError(f"{repo_id!r} is no local path, and downloading {filename} from that "
                           f"hub repo failed: {type(e).__name__}: {e}") from e


def resolve_layers(root: str | os.PathLike, layers: Iterable[int], width: str | int = "16k",
                   l0: int | str | Mapping[int, int] = "canonical") -> list[Path]:
  """The file or SAELens directory to read for each layer, in order.

  `root`: a mirror of the Gemma Scope 1 HF layout (`layer_{i}/width_{w}/average_l0_{n}/
  params.npz`), of the Gemma Scope 2 one (`[resid_post/]layer_{i}_width_{w}_l0_{l0}/
  params.safetensors`), a folder of SAELens directories (matched by hook name and d_sae = width;
  they carry no L0, so `l0` is unused there), or a hub id such as `google/gemma-scope-2b-pt-res`
  or `google/gemma-scope-2-270m-pt` when no such path exists (files are downloaded into the HF
  cache). `l0`: an int, "canonical", a Gemma Scope 2 bucket (small, medium, big), or
  {layer: l0}.
  """
  layers = [int(i) for i in layers]
  path = Path(root)
  if not path.exists():
    if _HUB_ID.match(str(root)):
      return [_hub_download(str(root), i, width, l0) for i in layers]
    example = releases.canonical_release().hub_id
    raise SAENotFoundError(f"{root}: no such directory (nor a hub id like {example!r})")
  kind, where, found = _local_tree(path)
  if kind == "gs1":
    return [_resolve_hf_layout(where, i, width, l0) for i in layers]
  if kind == "gs2":
    return [_resolve_gs2(where, found, i, width, l0) for i in layers]
  return [_resolve_saelens(where, found, i, width) for i in layers]


def _local_tree(path: Path) -> tuple[str, Path, dict]:
  """(layout "gs1" / "gs2" / "saelens", the folder its SAEs are in, the Gemma Scope 2 or SAELens
  entries by layer) of the local tree at `path`."""
  if any(_GS1_LAYER.match(name) for name in list_names(path, "layer_")):
    return "gs1", path, {}
  gs2 = _gs2_root(path)
  if gs2 is not None:
    return "gs2", gs2, _gs2_entries(gs2)
  found = _saelens_dirs(path)
  if found:
    return "saelens", path, found
  raise SAENotFoundError(f"{path}: neither the Gemma Scope layout (layer_{{i}}/width_{{w}}/"
                         f"average_l0_{{n}}/{NPZ_NAME}), nor the Gemma Scope 2 one "
                         f"({GS2_SITE}/layer_{{i}}_width_{{w}}_l0_{{l0}}/{GS2_PARAMS}), nor "
                         f"SAELens directories (*/{SAELENS_CFG} with hook "
                         f"blocks.{{i}}.hook_resid_post); it has {list_names(path)}")


def held_widths(root: str | os.PathLike) -> dict[int, list[int]]:
  """{layer: the SAE widths the local tree at `root` holds for it, ascending}, from its folder
  and file names alone (what a tool picks its defaults from before loading anything)."""
  kind, where, found = _local_tree(Path(root))
  if kind == "gs1":
    return {int(name.split("_")[1]): sorted(width_size(m.group(1))
                                            for m in map(_GS1_WIDTH.match,
                                                         list_names(where / name, "width_")) if m)
            for name in list_names(where, "layer_")
            if _GS1_LAYER.match(name) and (where / name).is_dir()}
  if kind == "gs2":
    return {layer: sorted({e.width for e in entries}) for layer, entries in found.items()}
  return {layer: sorted({c.d_sae for c in configs}) for layer, configs in found.items()}


# ----------------------------------------------------------------------------- stacked loading

def _preallocate(shape, dtype, sharding) -> jax.Array:
  # Built on the device by a jitted zeros, so the full stack never exists on the host.
  if sharding is None:
    return jax.jit(lambda: jnp.zeros(shape, dtype))()
  return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)()


@functools.partial(jax.jit, donate_argnums=0)
def _set_layer(stacked: jax.Array, layer: jax.Array, index: jax.Array) -> jax.Array:
  # Donating `stacked` makes this an in-place write: no second copy of the stack.
  return jax.lax.dynamic_update_index_in_dim(stacked, layer.astype(stacked.dtype), index, 0)


def load_layers(root: str | os.PathLike, layers: Iterable[int], width: str | int = "16k",
                l0: int | str | Mapping[int, int] = "canonical", dtype=jnp.float32,
                sharding: Sharding = None, d_in: int | None = None) -> JumpReLUParams:
  """Stacked params (leaves `[len(layers), ...]`), entry j = layer `layers[j]`'s SAE.

  Sources as in `resolve_layers`. Layers are streamed: each is read, checked, cast to `dtype`
  and written into the preallocated stack (placed with `sharding`, which applies to the stacked
  leaves) before the next is read. An SAE whose width is not `width` (a `width_16k` folder
  holding 256 features) is refused: its recorded width would be wrong.
  """
  dtype = jnp.dtype(dtype)
  sources = resolve_layers(root, layers, width, l0)
  stacked: dict[str, jax.Array] = {}
  first: dict[str, tuple[int, ...]] = {}
  for index, source in enumerate(sources):
    arrays = read_checked(source, d_in)
    features = arrays["W_enc"].shape[1]
    if features != width_size(width):
      raise SAEFormatError(f"{source}: holds {features} features, but its place in the tree "
                           f"says width {width_name(width)} ({width_size(width)}); rename its "
                           f"folder for width {width_name(features)}")
    shapes = {k: arrays[k].shape for k in PARAM_NAMES}
    if not stacked:
      first = shapes
      stacked = {k: _preallocate((len(sources),) + shapes[k], dtype, leaf_sharding(sharding, k))
                 for k in PARAM_NAMES}
    elif shapes != first:
      raise SAEFormatError(f"{source}: shapes {shapes} differ from {sources[0]}'s {first}")
    for k in PARAM_NAMES:
      stacked[k] = _set_layer(stacked[k], arrays[k].astype(dtype, copy=False),
                              np.int32(index))
    del arrays
  return JumpReLUParams(**stacked)


# ----------------------------------------------------------------------------- saving

def _per_layer(stacked: JumpReLUParams, layers: Iterable[int] | None):
  singles = unstack(stacked)
  layers = list(range(len(singles))) if layers is None else [int(i) for i in layers]
  if len(layers) != len(singles):
    raise ValueError(f"{len(singles)} stacked SAEs but {len(layers)} layer indices {layers}")
  return zip(layers, singles)


def saelens_layer_files(stacked: JumpReLUParams, layers: Iterable[int] | None = None,
                        **kwargs) -> dict[str, bytes | str]:
  """A stack as one SAELens directory per layer, `blocks.{i}.hook_resid_post/`: {path under
  the root: contents}. kwargs go to `formats.saelens_files`."""
  return {f"{SAELENS_HOOK.format(layer=i)}/{name}": data for i, p in _per_layer(stacked, layers)
          for name, data in saelens_files(p, i, **kwargs).items()}


def save_saelens_layers(root: str | os.PathLike, stacked: JumpReLUParams,
                        layers: Iterable[int] | None = None, **kwargs) -> list[Path]:
  """`saelens_layer_files` written under `root` as one set (what `load_layers(root, ...)` reads
  back); returns the directories."""
  written = io.write_set(root, saelens_layer_files(stacked, layers, **kwargs))
  return list(dict.fromkeys(path.parent for path in written.values()))


def save_layers_tree(root: str | os.PathLike, stacked: JumpReLUParams, width: str | int = "16k",
                     l0s: int | Mapping[int, int] = 100,
                     layers: Iterable[int] | None = None) -> list[Path]:
  """A stack in the HF repo layout, `root/layer_{i}/width_{w}/average_l0_{n}/params.npz`, with
  n = l0s (one int) or l0s[i]. Layers default to 0..L-1. `width` must be the SAEs' own: a
  folder is never named for another width."""
  if width_size(width) != stacked.d_sae:
    raise ValueError(f"save_layers_tree: width={width!r} but the SAEs have {stacked.d_sae} "
                     "features")
  return [save_params_npz(Path(root) / f"layer_{i}" / f"width_{width_name(width)}" /
                          f"average_l0_{_l0_for(l0s, width, i)}" / NPZ_NAME, p)
          for i, p in _per_layer(stacked, layers)]


def gemma_scope2_layer_files(stacked: JumpReLUParams, layers: Iterable[int] | None = None,
                             l0s: int | Mapping[int, int] = 100,
                             model_name: str = "unknown") -> dict[str, bytes | str]:
  """A stack in the Gemma Scope 2 layout, `resid_post/layer_{i}_width_{w}_l0_{n}/`, w = the
  SAEs' width, n = l0s (one int or {layer: int}): {path under the root: contents}."""
  files = {}
  for i, p in _per_layer(stacked, layers):
    l0 = int(l0s[i] if isinstance(l0s, Mapping) else l0s)
    folder = f"{GS2_SITE}/{gemma_scope2_name(i, p.d_sae, l0)}"
    files.update({f"{folder}/{name}": data
                  for name, data in gemma_scope2_files(p, i, l0, model_name).items()})
  return files


def save_gemma_scope2_layers(root: str | os.PathLike, stacked: JumpReLUParams,
                             layers: Iterable[int] | None = None,
                             l0s: int | Mapping[int, int] = 100,
                             model_name: str = "unknown") -> list[Path]:
  """`gemma_scope2_layer_files` written under `root` as one set (what `load_layers(root, ...)`
  reads back); returns the SAE folders. Bucket-named folders (`l0_medium`) are
  `save_gemma_scope2` into a `gemma_scope2_name`."""
  written = io.write_set(root, gemma_scope2_layer_files(stacked, layers, l0s, model_name))
  return list(dict.fromkeys(path.parent for path in written.values()))
