"""Load and save Gemma Scope JumpReLU SAEs in the formats users have.

Sources, all read into `sae.jumprelu.JumpReLUParams`:
  * a Gemma Scope `params.npz` (keys W_enc, b_enc, threshold, W_dec, b_dec; read with
    `allow_pickle=False`);
  * an SAELens directory, `cfg.json` + `sae_weights.safetensors` (architecture "jumprelu",
    `metadata.hook_name` "blocks.{i}.hook_resid_post");
  * a Gemma Scope 2 directory, `params.safetensors` (float32, lowercase keys w_enc [d, W],
    w_dec [W, d], b_enc, b_dec, threshold) + an optional `config.json` (architecture
    "jump_relu", width, l0, hf_hook_point_in/out "model.layers.{i}.output", ...);
  * for the stacked all-layer form, a local mirror of the Gemma Scope 1 HF repo layout
    `layer_{i}/width_{w}/average_l0_{n}/params.npz`, of the Gemma Scope 2 one
    `[resid_post/]layer_{i}_width_{w}_l0_{small|medium|big|n}/params.safetensors` (what our
    trainer writes too), a directory holding one SAELens directory per layer, or a hub id,
    `google/gemma-scope-2b-pt-res` or `google/gemma-scope-2-{size}-{pt|it}` (downloaded through
    `huggingface_hub`, which is imported only then).

Widths are named as Gemma Scope names them: 16k = 2^14, 65k = 2^16, 262k = 2^18, 1m = 2^20 (and
32k, 131k, 524k); any other width by its number of features ("4096").

`l0="canonical"` resolves through `canonical_l0.json` (the SAELens "canonical" release: per width
and layer, the L0 closest to 100), kept as data next to this module. Gemma Scope 2 labels each
SAE by a target-L0 bucket (`small`, `medium`, `big`) or an integer: `l0` names one, an int also
matches a bucket whose config.json has that l0, and "canonical" there means the layer's only SAE
of that width.

Memory: `load_layers` streams. It preallocates the stacked arrays on the device (with the
requested sharding) and writes each layer into them in place (a jitted update whose stacked input
is donated), so the peak is the stacked arrays plus one layer, on host and device alike, never
two copies of the stack.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors import numpy as safetensors_numpy
from safetensors.numpy import save_file

from sae.jumprelu import PARAM_NAMES, JumpReLUParams, unstack
from xling_jax.runtime import io

REPO_ID = "google/gemma-scope-2b-pt-res"
NPZ_NAME = "params.npz"
SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
GS2_PARAMS = "params.safetensors"
GS2_CONFIG = "config.json"
GS2_SITE = "resid_post"  # the only Gemma Scope 2 site read here: residual-stream SAEs
# The cfg.json schema we write is SAELens 6's (metadata block); older versions read it through
# SAELens's own pre-6 conversion, so claiming 6.0.0 keeps SAELens from re-converting it.
SAELENS_FORMAT_VERSION = "6.0.0"
CANONICAL_L0_FILE = Path(__file__).with_name("canonical_l0.json")

_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_GS2_HUB_ID = re.compile(r"gemma-scope-2-")
_WIDTH = re.compile(r"^(\d+)([km]?)$")
_GS1_LAYER = re.compile(r"^layer_\d+$")
# Variants with a suffix (_seed_1, _affine) are other SAEs and are not matched.
_GS2_DIR = re.compile(r"^layer_(\d+)_width_(\d+[km]?)_l0_([a-z0-9]+)$")
# Gemma Scope's width names: the feature count in thousands, rounded down (2^20 is "1m").
_NAMED_WIDTHS = {f"{(1 << p) // 1000}k": 1 << p for p in range(14, 20)} | {"1m": 1 << 20}

Sharding = Any  # jax.sharding.Sharding, or a JumpReLUParams of them (one per leaf)


class SAEFormatError(ValueError):
  """A file exists but is not a usable JumpReLU SAE (keys, dtypes, shapes, architecture, pickle)."""


class SAENotFoundError(FileNotFoundError):
  """The requested SAE (path, layer, width or L0) is not there; the message lists what is."""


@dataclasses.dataclass(frozen=True)
class SAELensConfig:
  """What we use from an SAELens `cfg.json`. `layer` comes from `hook_name`
  (`blocks.{i}.hook_resid_post`), None for other hooks."""
  path: Path
  d_in: int
  d_sae: int
  hook_name: str | None
  layer: int | None
  apply_b_dec_to_input: bool
  model_name: str | None


# ----------------------------------------------------------------------------- reading

def read_saelens_cfg(directory: str | os.PathLike) -> SAELensConfig:
  """Parse and check `directory/cfg.json` (SAELens 6 layout, or the older flat one)."""
  path = Path(directory) / SAELENS_CFG
  if not path.is_file():
    raise SAENotFoundError(f"{path}: no SAELens cfg.json")
  try:
    cfg = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise SAEFormatError(f"{path}: not valid JSON ({e})") from e
  architecture = cfg.get("architecture")
  if architecture != "jumprelu":
    raise SAEFormatError(f"{path}: architecture {architecture!r}, expected 'jumprelu'")
  for key in ("d_in", "d_sae"):
    if not isinstance(cfg.get(key), int):
      raise SAEFormatError(f"{path}: {key} is {cfg.get(key)!r}, expected an integer")
  # Both change what encode computes; Gemma Scope uses neither.
  if cfg.get("normalize_activations") not in (None, "none", False):
    raise SAEFormatError(f"{path}: normalize_activations={cfg['normalize_activations']!r} is not "
                         "supported (expected 'none')")
  if cfg.get("reshape_activations") not in (None, "none"):
    raise SAEFormatError(f"{path}: reshape_activations={cfg['reshape_activations']!r} is not "
                         "supported (expected 'none')")
  metadata = cfg.get("metadata") or {}
  hook_name = metadata.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
  match = _HOOK.match(hook_name or "")
  return SAELensConfig(
      path=Path(directory), d_in=cfg["d_in"], d_sae=cfg["d_sae"], hook_name=hook_name,
      layer=int(match.group(1)) if match else None,
      # SAELens's default when the key is absent.
      apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
      model_name=metadata.get("model_name") or cfg.get("model_name"))


def _key(name: str) -> str:
  # Some Gemma Scope exports spell the matrices w_enc / w_dec (SAELens maps them the same way).
  return "W_" + name[2:] if name.startswith("w_") else name


def _read_npz(path: Path) -> dict[str, np.ndarray]:
  try:
    data = np.load(path, allow_pickle=False)
    if not isinstance(data, np.lib.npyio.NpzFile):
      raise SAEFormatError(f"{path}: a single array, expected an .npz archive of "
                           f"{', '.join(PARAM_NAMES)}")
    with data:
      return {_key(k): data[k] for k in data.files}
  except SAEFormatError:
    raise
  except ValueError as e:
    # numpy's answer to object arrays / pickles under allow_pickle=False.
    raise SAEFormatError(f"{path}: holds pickled (object) data, which is never loaded; "
                         f"re-save it with plain numeric arrays ({e})") from e


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
  if not path.is_file():
    raise SAENotFoundError(f"{path}: missing (an SAELens directory needs {SAELENS_WEIGHTS}, a "
                           f"Gemma Scope 2 one {GS2_PARAMS})")
  with safe_open(path, framework="np") as f:
    return {_key(k): f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def _check_arrays(arrays: Mapping[str, np.ndarray], source: Path, *, d_in: int | None,
                  d_sae: int | None = None) -> None:
  missing = [k for k in PARAM_NAMES if k not in arrays]
  if missing:
    raise SAEFormatError(f"{source}: missing {missing}; keys present: {sorted(arrays)}")
  for name in PARAM_NAMES:
    if not jnp.issubdtype(arrays[name].dtype, jnp.floating):
      raise SAEFormatError(f"{source}: {name} has dtype {arrays[name].dtype}, expected a float "
                           "dtype")
  if arrays["W_enc"].ndim != 2:
    raise SAEFormatError(f"{source}: W_enc has shape {arrays['W_enc'].shape}, expected [d, W]")
  d, width = arrays["W_enc"].shape
  expected = {"W_enc": (d, width), "b_enc": (width,), "threshold": (width,),
              "W_dec": (width, d), "b_dec": (d,)}
  wrong = [f"{k} {arrays[k].shape} (expected {v})" for k, v in expected.items()
           if arrays[k].shape != v]
  if wrong:
    raise SAEFormatError(f"{source}: inconsistent shapes: {'; '.join(wrong)}")
  if d_sae is not None and width != d_sae:
    raise SAEFormatError(f"{source}: W_enc {arrays['W_enc'].shape} has {width} features but "
                         f"cfg.json says d_sae={d_sae}")
  if d_in is not None and d != d_in:
    raise SAEFormatError(f"{source}: the SAE reads d_in={d} but the model's residual width is "
                         f"{d_in}")


def read_gemma_scope2_config(directory: str | os.PathLike) -> dict | None:
  """`directory/config.json` of a Gemma Scope 2 SAE, checked (None when absent: it is optional,
  as in SAELens's loader)."""
  path = Path(directory) / GS2_CONFIG
  if not path.is_file():
    return None
  try:
    cfg = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise SAEFormatError(f"{path}: not valid JSON ({e})") from e
  if cfg.get("architecture") != "jump_relu":
    raise SAEFormatError(f"{path}: architecture {cfg.get('architecture')!r}, expected "
                         "'jump_relu'")
  if cfg.get("affine_connection"):
    raise SAEFormatError(f"{path}: a transcoder with an affine skip connection, not a "
                         "residual-stream SAE")
  return cfg


def _read_checked(source: Path, d_in: int | None) -> dict[str, np.ndarray]:
  """Host arrays of one SAE (npz file, Gemma Scope 2 params.safetensors or SAELens directory),
  checked, in Gemma Scope's convention (an SAELens `apply_b_dec_to_input` is folded into
  b_enc; Gemma Scope 2 never subtracts b_dec)."""
  if source.name == GS2_PARAMS:
    width = (read_gemma_scope2_config(source.parent) or {}).get("width")
    arrays = _read_safetensors(source)
    _check_arrays(arrays, source, d_in=d_in)
    if width is not None and arrays["W_enc"].shape[1] != width:
      raise SAEFormatError(f"{source}: {arrays['W_enc'].shape[1]} features but {GS2_CONFIG} "
                           f"says width={width}")
    return arrays
  if source.is_dir():
    cfg = read_saelens_cfg(source)
    if d_in is not None and cfg.d_in != d_in:
      raise SAEFormatError(f"{source}: cfg.json d_in={cfg.d_in} but the model's residual width "
                           f"is {d_in}")
    arrays = _read_safetensors(source / SAELENS_WEIGHTS)
    _check_arrays(arrays, source, d_in=cfg.d_in, d_sae=cfg.d_sae)
    if cfg.apply_b_dec_to_input:
      # (x - b_dec) @ W_enc + b_enc == x @ W_enc + (b_enc - b_dec @ W_enc)
      work = np.promote_types(arrays["W_enc"].dtype, np.float32)
      folded = arrays["b_enc"].astype(work) - arrays["b_dec"].astype(work) @ arrays[
          "W_enc"].astype(work, copy=False)
      arrays["b_enc"] = folded.astype(arrays["b_enc"].dtype)
    return arrays
  arrays = _read_npz(source)
  _check_arrays(arrays, source, d_in=d_in)
  return arrays


def _source(path: Path) -> Path:
  """The file or directory `load` reads for `path`."""
  if path.is_dir():
    if (path / SAELENS_CFG).is_file():
      return path
    if (path / NPZ_NAME).is_file():
      return path / NPZ_NAME
    if (path / GS2_PARAMS).is_file():
      return path / GS2_PARAMS
    raise SAENotFoundError(f"{path}: holds neither {SAELENS_CFG} + {SAELENS_WEIGHTS} (SAELens) "
                           f"nor {NPZ_NAME} (Gemma Scope) nor {GS2_PARAMS} (Gemma Scope 2); it "
                           f"has {_names(path)}")
  if path.is_file():
    return path
  raise SAENotFoundError(f"{path}: no such file or directory")


def _leaf_sharding(sharding: Sharding, name: str):
  return getattr(sharding, name) if isinstance(sharding, JumpReLUParams) else sharding


def load(path: str | os.PathLike, dtype=jnp.float32, sharding: Sharding = None,
         d_in: int | None = None) -> JumpReLUParams:
  """One SAE from a `params.npz` file, a folder holding one, a Gemma Scope 2 folder
  (`params.safetensors` + `config.json`) or an SAELens directory.

  Leaves are cast to `dtype` on the host, then placed with `sharding` (one Sharding for every
  leaf, a JumpReLUParams of them, or None for the default device). `d_in` is the model's
  residual width, checked against the SAE's.
  """
  dtype = jnp.dtype(dtype)
  arrays = _read_checked(_source(Path(path)), d_in)
  return JumpReLUParams(**{
      k: jax.device_put(arrays[k].astype(dtype, copy=False), _leaf_sharding(sharding, k))
      for k in PARAM_NAMES})


# ----------------------------------------------------------------------------- layer selection

@functools.cache
def canonical_l0() -> dict[str, dict[int, int]]:
  """{width: {layer: average_l0}} from canonical_l0.json."""
  data = json.loads(CANONICAL_L0_FILE.read_text())
  return {w: {int(k): int(v) for k, v in table.items()} for w, table in data["widths"].items()}


def _width_name(width: str | int) -> str:
  """"16k" / "width_16k" / 16384 -> "16k", 65536 -> "65k", 4096 -> "4096" (the folder part)."""
  if isinstance(width, int):
    names = {size: name for name, size in _NAMED_WIDTHS.items()}
    return names.get(width, str(width))
  return width.removeprefix("width_")


def width_size(width: str | int) -> int:
  """"16k" -> 16384, "65k" -> 65536, "1m" -> 1048576, "4096" / 4096 -> 4096; another "Nk" is
  N * 1024."""
  if isinstance(width, int):
    return width
  name = _width_name(width)
  if name in _NAMED_WIDTHS:
    return _NAMED_WIDTHS[name]
  match = _WIDTH.match(name)
  if not match:
    raise ValueError(f"width {width!r}: expected e.g. '16k', '65k', '1m' or an integer")
  return int(match.group(1)) << {"": 0, "k": 10, "m": 20}[match.group(2)]


def _l0_for(l0: int | str | Mapping[int, int], width: str | int, layer: int) -> int:
  if isinstance(l0, Mapping):
    if layer not in l0:
      raise ValueError(f"l0 mapping has no entry for layer {layer} (it has {sorted(l0)})")
    return int(l0[layer])
  if l0 == "canonical":
    tables = canonical_l0()
    name = _width_name(width)
    if name not in tables or layer not in tables[name]:
      raise ValueError(f"no canonical L0 for layer {layer} at width {name!r} in "
                       f"{CANONICAL_L0_FILE.name} (widths: {sorted(tables)})")
    return tables[name][layer]
  if isinstance(l0, int):
    return l0
  raise ValueError(f"l0={l0!r}: expected an int, 'canonical' or a {{layer: l0}} mapping")


def _names(directory: Path, prefix: str = "") -> list[str]:
  """Entries of `directory` starting with `prefix`, numbers in numeric order."""
  def order(name):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]
  return sorted((p.name for p in directory.iterdir() if p.name.startswith(prefix)), key=order)


def _resolve_hf_layout(root: Path, layer: int, width: str | int, l0) -> Path:
  layer_dir = root / f"layer_{layer}"
  if not layer_dir.is_dir():
    raise SAENotFoundError(f"{root}: no SAE for layer {layer}; present: "
                           f"{_names(root, 'layer_')}")
  width_dir = layer_dir / f"width_{_width_name(width)}"
  if not width_dir.is_dir():
    raise SAENotFoundError(f"{layer_dir}: no width_{_width_name(width)}; present: "
                           f"{_names(layer_dir, 'width_')}")
  n = _l0_for(l0, width, layer)
  file = width_dir / f"average_l0_{n}" / NPZ_NAME
  if not file.is_file():
    raise SAENotFoundError(f"{width_dir}: no average_l0_{n}/{NPZ_NAME} (l0={l0!r}); present: "
                           f"{_names(width_dir, 'average_l0_')}")
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
  return f"layer_{int(layer)}_width_{_width_name(width)}_l0_{l0}"


def _gs2_root(path: Path) -> Path | None:
  """The folder holding Gemma Scope 2 SAE folders: `path/resid_post` or `path` itself."""
  for candidate in (path / GS2_SITE, path):
    if candidate.is_dir() and any(_GS2_DIR.match(p.name) for p in candidate.iterdir()):
      return candidate
  return None


def _gs2_entries(root: Path) -> dict[int, list[_GS2Entry]]:
  found: dict[int, list[_GS2Entry]] = {}
  for name in _names(root):
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
    raise SAENotFoundError(f"{root}: no layer-{layer} SAE of width {_width_name(size)}; layer "
                           f"{layer} has widths {[_width_name(w) for w in widths]}")
  want = _gs2_l0(l0, layer)
  labels = [e.label for e in candidates]
  if want == "canonical":
    if len(candidates) != 1:
      raise SAENotFoundError(f"{root}: l0='canonical' takes a layer's only SAE of a width, but "
                             f"layer {layer} width {_width_name(size)} has l0 {labels}; choose "
                             "one (small, medium, big or an int)")
    matches = candidates
  else:
    matches = [e for e in candidates if e.label == str(want)]
    if not matches and isinstance(want, int):  # a bucket folder whose config.json says l0=want
      matches = [e for e in candidates if e.config_l0() == want]
  if len(matches) != 1:
    problem = "no" if not matches else "several"
    raise SAENotFoundError(f"{root}: {problem} {gemma_scope2_name(layer, size, want)} "
                           f"(l0={l0!r}); layer {layer} width {_width_name(size)} has l0 "
                           f"{labels}")
  return matches[0].path / GS2_PARAMS


def _hub_filename(repo_id: str, layer: int, width: str | int, l0) -> str:
  if not _GS2_HUB_ID.search(repo_id):
    return (f"layer_{layer}/width_{_width_name(width)}/average_l0_{_l0_for(l0, width, layer)}/"
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
    raise SAENotFoundError(f"{root}: no such directory (nor a hub id like {REPO_ID!r})")
  if any(_GS1_LAYER.match(name) for name in _names(path, "layer_")):
    return [_resolve_hf_layout(path, i, width, l0) for i in layers]
  gs2 = _gs2_root(path)
  if gs2 is not None:
    found = _gs2_entries(gs2)
    return [_resolve_gs2(gs2, found, i, width, l0) for i in layers]
  found = _saelens_dirs(path)
  if found:
    return [_resolve_saelens(path, found, i, width) for i in layers]
  raise SAENotFoundError(f"{root}: neither the Gemma Scope layout (layer_{{i}}/width_{{w}}/"
                         f"average_l0_{{n}}/{NPZ_NAME}), nor the Gemma Scope 2 one "
                         f"({GS2_SITE}/layer_{{i}}_width_{{w}}_l0_{{l0}}/{GS2_PARAMS}), nor "
                         f"SAELens directories (*/{SAELENS_CFG} with hook "
                         f"blocks.{{i}}.hook_resid_post); it has {_names(path)}")


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
  leaves) before the next is read.
  """
  dtype = jnp.dtype(dtype)
  sources = resolve_layers(root, layers, width, l0)
  stacked: dict[str, jax.Array] = {}
  first: dict[str, tuple[int, ...]] = {}
  for index, source in enumerate(sources):
    arrays = _read_checked(source, d_in)
    shapes = {k: arrays[k].shape for k in PARAM_NAMES}
    if not stacked:
      first = shapes
      stacked = {k: _preallocate((len(sources),) + shapes[k], dtype, _leaf_sharding(sharding, k))
                 for k in PARAM_NAMES}
    elif shapes != first:
      raise SAEFormatError(f"{source}: shapes {shapes} differ from {sources[0]}'s {first}")
    for k in PARAM_NAMES:
      stacked[k] = _set_layer(stacked[k], arrays[k].astype(dtype, copy=False),
                              np.int32(index))
    del arrays
  return JumpReLUParams(**stacked)


# ----------------------------------------------------------------------------- saving

def _single(params: JumpReLUParams, what: str) -> None:
  if params.W_enc.ndim != 2:
    raise ValueError(f"{what} writes one SAE; got W_enc {tuple(params.W_enc.shape)} (stacked?)")


def save_params_npz(path: str | os.PathLike, params: JumpReLUParams) -> Path:
  """Write one SAE as a Gemma Scope `params.npz` (float32, the format's dtype)."""
  _single(params, "save_params_npz")
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "wb") as f:  # a file object keeps numpy from appending ".npz"
    np.savez(f, **{k: np.asarray(getattr(params, k), np.float32) for k in PARAM_NAMES})
  return path


def save_saelens(directory: str | os.PathLike, params: JumpReLUParams, layer: int,
                 d_in: int | None = None, model_name: str = "gemma-2-2b",
                 metadata: Mapping[str, Any] | None = None) -> Path:
  """Write one SAE as an SAELens directory (`cfg.json` + `sae_weights.safetensors`) that
  `sae_lens.SAE.load_from_disk` opens as a JumpReLUSAE hooked at `blocks.{layer}.hook_resid_post`.
  Weights keep their dtype; `metadata` entries are added to cfg.json's metadata block."""
  _single(params, "save_saelens")
  if d_in is not None and params.d_in != d_in:
    raise SAEFormatError(f"save_saelens: the SAE reads d_in={params.d_in} but d_in={d_in} "
                         "was given")
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  save_file({k: np.ascontiguousarray(getattr(params, k)) for k in PARAM_NAMES},
            directory / SAELENS_WEIGHTS)
  cfg = {
      "architecture": "jumprelu",
      "d_in": params.d_in,
      "d_sae": params.d_sae,
      "dtype": jnp.dtype(params.dtype).name,
      "device": "cpu",
      "apply_b_dec_to_input": False,  # our encode never subtracts b_dec
      "normalize_activations": "none",
      "reshape_activations": "none",
      "metadata": {
          "sae_lens_version": SAELENS_FORMAT_VERSION,
          "model_name": model_name,
          "hook_name": f"blocks.{layer}.hook_resid_post",
          "hook_head_index": None,
          "prepend_bos": True,
          **(metadata or {}),
      },
  }
  (directory / SAELENS_CFG).write_text(json.dumps(cfg, indent=2) + "\n")
  return directory


def _per_layer(stacked: JumpReLUParams, layers: Iterable[int] | None):
  singles = unstack(stacked)
  layers = list(range(len(singles))) if layers is None else [int(i) for i in layers]
  if len(layers) != len(singles):
    raise ValueError(f"{len(singles)} stacked SAEs but {len(layers)} layer indices {layers}")
  return zip(layers, singles)


def save_saelens_layers(root: str | os.PathLike, stacked: JumpReLUParams,
                        layers: Iterable[int] | None = None, **kwargs) -> list[Path]:
  """A stack as one SAELens directory per layer, `root/blocks.{i}.hook_resid_post/`
  (what `load_layers(root, ...)` reads back). kwargs go to `save_saelens`."""
  return [save_saelens(Path(root) / f"blocks.{i}.hook_resid_post", p, i, **kwargs)
          for i, p in _per_layer(stacked, layers)]


def save_layers_tree(root: str | os.PathLike, stacked: JumpReLUParams, width: str | int = "16k",
                     l0s: int | Mapping[int, int] = 100,
                     layers: Iterable[int] | None = None) -> list[Path]:
  """A stack in the HF repo layout, `root/layer_{i}/width_{w}/average_l0_{n}/params.npz`, with
  n = l0s (one int) or l0s[i]. Layers default to 0..L-1."""
  return [save_params_npz(Path(root) / f"layer_{i}" / f"width_{_width_name(width)}" /
                          f"average_l0_{_l0_for(l0s, width, i)}" / NPZ_NAME, p)
          for i, p in _per_layer(stacked, layers)]


def save_gemma_scope2(directory: str | os.PathLike, params: JumpReLUParams, layer: int, l0: int,
                      model_name: str = "unknown") -> Path:
  """Write one SAE as a Gemma Scope 2 folder: `params.safetensors` (float32, lowercase keys
  w_enc, w_dec, b_enc, b_dec, threshold) and `config.json` (the released files' keys; `l0` is
  the SAE's target or measured L0). Each file is written atomically."""
  _single(params, "save_gemma_scope2")
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  arrays = {k.lower(): np.ascontiguousarray(getattr(params, k), np.float32) for k in PARAM_NAMES}
  io.write_bytes(directory / GS2_PARAMS, safetensors_numpy.save(arrays))
  hook = f"model.layers.{int(layer)}.output"
  cfg = {"model_name": model_name, "architecture": "jump_relu", "hf_hook_point_in": hook,
         "hf_hook_point_out": hook, "width": params.d_sae, "l0": int(l0),
         "affine_connection": False, "type": "sae"}
  io.write_json(directory / GS2_CONFIG, cfg)
  return directory


def save_gemma_scope2_layers(root: str | os.PathLike, stacked: JumpReLUParams,
                             layers: Iterable[int] | None = None,
                             l0s: int | Mapping[int, int] = 100,
                             model_name: str = "unknown") -> list[Path]:
  """A stack in the Gemma Scope 2 layout, `root/resid_post/layer_{i}_width_{w}_l0_{n}/` (what
  `load_layers(root, ...)` reads back): w = the SAEs' width, n = l0s (one int or {layer: int}).
  Bucket-named folders (`l0_medium`) are `save_gemma_scope2` into a `gemma_scope2_name`."""
  out = []
  for i, p in _per_layer(stacked, layers):
    l0 = int(l0s[i] if isinstance(l0s, Mapping) else l0s)
    out.append(save_gemma_scope2(Path(root) / GS2_SITE / gemma_scope2_name(i, p.d_sae, l0), p, i,
                                 l0, model_name))
  return out
