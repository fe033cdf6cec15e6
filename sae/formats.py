"""One JumpReLU SAE in or out, in the file formats users have; every reader returns host arrays
in Gemma Scope's convention (`sae.jumprelu.PARAM_NAMES`), every writer takes one SAE.

  * a Gemma Scope `params.npz` (keys W_enc, b_enc, threshold, W_dec, b_dec; read with
    `allow_pickle=False`);
  * an SAELens directory, `cfg.json` + `sae_weights.safetensors` (architecture "jumprelu",
    `metadata.hook_name` "blocks.{i}.hook_resid_post");
  * a Gemma Scope 2 directory, `params.safetensors` (float32, lowercase keys w_enc [d, W],
    w_dec [W, d], b_enc, b_dec, threshold) + an optional `config.json` (architecture
    "jump_relu", width, l0, hf_hook_point_in/out "model.layers.{i}.output", ...).

Safetensors files are read by the one reader, `xling_jax.checkpoints.safetensors_io`. Trees of
many layers (and hub ids) are `sae.trees`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import numpy as safetensors_numpy

from sae.jumprelu import PARAM_NAMES, JumpReLUParams
from xling_jax.checkpoints.safetensors_io import read_safetensors
from xling_jax.runtime import io
from xling_jax.runtime.errors import CheckpointError

NPZ_NAME = "params.npz"
SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
GS2_PARAMS = "params.safetensors"
GS2_CONFIG = "config.json"
# The cfg.json schema we write is SAELens 6's (metadata block); older versions read it through
# SAELens's own pre-6 conversion, so claiming 6.0.0 keeps SAELens from re-converting it.
SAELENS_FORMAT_VERSION = "6.0.0"
SAELENS_HOOK = "blocks.{layer}.hook_resid_post"  # the residual-stream hook SAELens names
GS2_HOOK = "model.layers.{layer}.output"         # the same point in Gemma Scope 2's HF terms

_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")

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
    if "pickle" in str(e):  # numpy's answer to object arrays under allow_pickle=False
      raise SAEFormatError(f"{path}: holds pickled (object) data, which is never loaded; "
                           f"re-save it with plain numeric arrays ({e})") from None
    raise _damaged_npz(path, e) from None
  except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
    raise _damaged_npz(path, e) from None


def _damaged_npz(path: Path, error: Exception) -> SAEFormatError:
  reason = str(error) or type(error).__name__
  return SAEFormatError(f"{path}: not a complete .npz archive ({reason}); a download that "
                        "stopped early leaves this: fetch the file again")


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
  if not path.is_file():
    raise SAENotFoundError(f"{path}: missing (an SAELens directory needs {SAELENS_WEIGHTS}, a "
                           f"Gemma Scope 2 one {GS2_PARAMS})")
  try:
    return {_key(k): v for k, v in read_safetensors(path).items()}
  except CheckpointError as e:
    raise SAEFormatError(str(e)) from e


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


def read_checked(source: Path, d_in: int | None) -> dict[str, np.ndarray]:
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


def source_of(path: Path) -> Path:
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
                           f"has {list_names(path)}")
  if path.is_file():
    return path
  raise SAENotFoundError(f"{path}: no such file or directory")


def leaf_sharding(sharding: Sharding, name: str):
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
  arrays = read_checked(source_of(Path(path)), d_in)
  return JumpReLUParams(**{
      k: jax.device_put(arrays[k].astype(dtype, copy=False), leaf_sharding(sharding, k))
      for k in PARAM_NAMES})


def list_names(directory: Path, prefix: str = "") -> list[str]:
  """Entries of `directory` starting with `prefix`, numbers in numeric order."""
  def order(name):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]
  return sorted((p.name for p in directory.iterdir() if p.name.startswith(prefix)), key=order)


# ----------------------------------------------------------------------------- writing

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
                 d_in: int | None = None, model_name: str = "unknown",
                 metadata: Mapping[str, Any] | None = None) -> Path:
  """Write one SAE as an SAELens directory (`cfg.json` + `sae_weights.safetensors`) that
  `sae_lens.SAE.load_from_disk` opens as a JumpReLUSAE hooked at `blocks.{layer}.hook_resid_post`.
  Weights keep their dtype; `model_name` is the model the SAE reads (as the caller knows it);
  `metadata` entries are added to cfg.json's metadata block."""
  io.write_set(directory, saelens_files(params, layer, d_in, model_name, metadata))
  return Path(directory)


def saelens_files(params: JumpReLUParams, layer: int, d_in: int | None = None,
                  model_name: str = "unknown",
                  metadata: Mapping[str, Any] | None = None) -> dict[str, bytes | str]:
  """What `save_saelens` writes, {file name: contents}, for a caller writing a larger set."""
  _single(params, "save_saelens")
  if d_in is not None and params.d_in != d_in:
    raise SAEFormatError(f"save_saelens: the SAE reads d_in={params.d_in} but d_in={d_in} "
                         "was given")
  weights = safetensors_numpy.save({k: np.ascontiguousarray(getattr(params, k))
                                    for k in PARAM_NAMES})
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
          "hook_name": SAELENS_HOOK.format(layer=layer),
          "hook_head_index": None,
          "prepend_bos": True,
          **(metadata or {}),
      },
  }
  return {SAELENS_WEIGHTS: weights, SAELENS_CFG: json.dumps(cfg, indent=2) + "\n"}


def save_gemma_scope2(directory: str | os.PathLike, params: JumpReLUParams, layer: int, l0: int,
                      model_name: str = "unknown") -> Path:
  """Write one SAE as a Gemma Scope 2 folder: `params.safetensors` (float32, lowercase keys
  w_enc, w_dec, b_enc, b_dec, threshold) and `config.json` (the released files' keys; `l0` is
  the SAE's target or measured L0), as one set."""
  io.write_set(directory, gemma_scope2_files(params, layer, l0, model_name))
  return Path(directory)


def gemma_scope2_files(params: JumpReLUParams, layer: int, l0: int,
                       model_name: str = "unknown") -> dict[str, bytes | str]:
  """What `save_gemma_scope2` writes, {file name: contents}, for a caller writing a larger
  set."""
  _single(params, "save_gemma_scope2")
  arrays = {k.lower(): np.ascontiguousarray(getattr(params, k), np.float32) for k in PARAM_NAMES}
  hook = GS2_HOOK.format(layer=int(layer))
  cfg = {"model_name": model_name, "architecture": "jump_relu", "hf_hook_point_in": hook,
         "hf_hook_point_out": hook, "width": params.d_sae, "l0": int(l0),
         "affine_connection": False, "type": "sae"}
  return {GS2_PARAMS: safetensors_numpy.save(arrays), GS2_CONFIG: io.json_text(cfg)}
