"""Load Gemma-2 weights from HF safetensors or Kaggle/orbax checkpoints; save and reload our own.

Every loader streams: it reads one tensor at a time into a preallocated stacked host array,
moves each finished parameter to its device (optionally with a sharding) and drops the host copy,
so a 2B model never needs two full copies in host memory. Every error names the file, the
tensor and what was expected.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import numpy as np

from xling_jax import model as model_lib
from xling_jax.config import Gemma2Config, gemma2_2b

Params = dict[str, Any]
OUR_CONFIG_FILE = "xling_config.json"
OUR_PARAMS_DIR = "params"
_ORBAX_MARKERS = ("_METADATA", "_CHECKPOINT_METADATA", "checkpoint", "manifest.ocdbt")
NORM_NAMES = {  # ours -> (HF layer norm name, Kaggle norm name)
    "pre_attn_norm": ("input_layernorm", "pre_attention_norm"),
    "post_attn_norm": ("post_attention_layernorm", "post_attention_norm"),
    "pre_ffw_norm": ("pre_feedforward_layernorm", "pre_ffw_norm"),
    "post_ffw_norm": ("post_feedforward_layernorm", "post_ffw_norm"),
}


class CheckpointError(ValueError):
  """A checkpoint is missing, unreadable or disagrees with the model config."""


def _place(array: np.ndarray, sharding) -> jax.Array:
  out = jax.device_put(array, sharding) if sharding is not None else jax.device_put(array)
  return out


def _resolve_sharding(sharding, config: Gemma2Config):
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

  def __init__(self, config: Gemma2Config, dtype, sharding):
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
  """Reads tensors by name, keeping one open handle per shard."""

  def __init__(self, files: dict[str, Path]):
    self.files = files
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
    try:
      sl = handle.get_slice(name)
      shape = tuple(sl.get_shape())
      if expected_shape is not None and shape != tuple(expected_shape):
        raise CheckpointError(
            f"{path}: tensor {name} has shape {shape}, expected {tuple(expected_shape)}")
      if sl.get_dtype() == "BF16":
        # numpy has no bfloat16: reinterpret the raw bits through ml_dtypes.
        import ml_dtypes
        raw = _read_raw(path, name)
        return np.frombuffer(raw, ml_dtypes.bfloat16).reshape(shape)
      return handle.get_tensor(name)
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


def hf_layer_count(names) -> int:
  layers = {int(n.split(".")[2]) for n in names if n.startswith("model.layers.")}
  return max(layers) + 1 if layers else 0


def load_hf(directory: str | os.PathLike, config: Gemma2Config | None = None, *,
            dtype=None, sharding=None) -> tuple[Params, Gemma2Config]:
  directory = Path(directory)
  config_file = directory / "config.json"
  if config is None:
    if not config_file.exists():
      raise CheckpointError(f"{directory}: no config.json and no config given")
    config = Gemma2Config.from_hf_dict(json.loads(config_file.read_text()))
  files = _hf_tensor_files(directory)
  n_ckpt = hf_layer_count(files)
  if n_ckpt != config.n_layers:
    raise CheckpointError(
        f"{directory}: checkpoint has {n_ckpt} layers (model.layers.0..{n_ckpt - 1}) but the "
        f"config expects n_layers={config.n_layers}")
  reader = _SafetensorsReader(files)
  sharding = _resolve_sharding(sharding, config)
  c = config
  N, K, H, D, F = c.n_heads, c.n_kv_heads, c.head_dim, c.d_model, c.mlp_hidden
  builder = _StackedBuilder(c, dtype or c.param_dtype, sharding)

  embed = reader.get("model.embed_tokens.weight")
  if embed.ndim != 2 or embed.shape[1] != D or embed.shape[0] < c.vocab_size:
    raise CheckpointError(f"{files['model.embed_tokens.weight']}: tensor model.embed_tokens.weight "
                          f"has shape {embed.shape}, expected ({c.vocab_size}, {D})")
  builder.put("embed", embed[: c.vocab_size])
  del embed
  builder.put("final_norm", reader.get("model.norm.weight", (D,)))

  def attn(i, proj, shape):
    return reader.get(f"model.layers.{i}.self_attn.{proj}.weight", shape)

  def mlp(i, proj, shape):
    return reader.get(f"model.layers.{i}.mlp.{proj}.weight", shape)

  for ours, (hf_name, _) in NORM_NAMES.items():
    builder.put_layers(ours, lambda i, n=hf_name: reader.get(f"model.layers.{i}.{n}.weight", (D,)))
  builder.put_layers("q", lambda i: attn(i, "q_proj", (N * H, D)).reshape(N, H, D).transpose(0, 2, 1))
  builder.put_layers("k", lambda i: attn(i, "k_proj", (K * H, D)).reshape(K, H, D).transpose(0, 2, 1))
  builder.put_layers("v", lambda i: attn(i, "v_proj", (K * H, D)).reshape(K, H, D).transpose(0, 2, 1))
  builder.put_layers("o", lambda i: attn(i, "o_proj", (D, N * H)).reshape(D, N, H).transpose(1, 2, 0))
  builder.put_layers("gate", lambda i: mlp(i, "gate_proj", (F, D)).T)
  builder.put_layers("up", lambda i: mlp(i, "up_proj", (F, D)).T)
  builder.put_layers("down", lambda i: mlp(i, "down_proj", (D, F)).T)
  return builder.params, config


def save_hf(directory: str | os.PathLike, params: Params, config: Gemma2Config,
            max_shard_bytes: int | None = None) -> None:
  """Write params as an HF Gemma-2 directory (config.json + safetensors, sharded with an index
  when `max_shard_bytes` is set) that `Gemma2ForCausalLM.from_pretrained` reads."""
  from safetensors.numpy import save_file

  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  # safetensors writes the raw buffer: transposed views must be made contiguous first.
  tensors = {name: np.ascontiguousarray(t) for name, t in _hf_tensors(params, config)}
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


def _hf_tensors(params: Params, config: Gemma2Config) -> Iterator[tuple[str, np.ndarray]]:
  c = config
  N, K, H, D = c.n_heads, c.n_kv_heads, c.head_dim, c.d_model
  lay = {k: np.asarray(v) for k, v in params["layers"].items()}
  yield "model.embed_tokens.weight", np.asarray(params["embed"])
  yield "model.norm.weight", np.asarray(params["final_norm"])
  for i in range(c.n_layers):
    p = f"model.layers.{i}."
    for ours, (hf_name, _) in NORM_NAMES.items():
      yield p + hf_name + ".weight", lay[ours][i]
    yield p + "self_attn.q_proj.weight", lay["q"][i].transpose(0, 2, 1).reshape(N * H, D)
    yield p + "self_attn.k_proj.weight", lay["k"][i].transpose(0, 2, 1).reshape(K * H, D)
    yield p + "self_attn.v_proj.weight", lay["v"][i].transpose(0, 2, 1).reshape(K * H, D)
    yield p + "self_attn.o_proj.weight", lay["o"][i].transpose(2, 0, 1).reshape(D, N * H)
    yield p + "mlp.gate_proj.weight", lay["gate"][i].T
    yield p + "mlp.up_proj.weight", lay["up"][i].T
    yield p + "mlp.down_proj.weight", lay["down"][i].T


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


def infer_config_from_kaggle(flat: dict[str, Any], **overrides: Any) -> Gemma2Config:
  """Gemma-2 config from tensor shapes; fields shapes cannot show keep Gemma-2-2B's values."""
  n_layers = 1 + max(int(k.split("/")[1][len("layer_"):]) for k in flat if "/layer_" in k)
  q = np.shape(flat["transformer/layer_0/attn/q_einsum/w"])
  gating = np.shape(_kaggle_get(flat, "transformer/layer_0/mlp/gating_einsum"))
  vocab = np.shape(flat["transformer/embedder/input_embedding"])[0]
  fields = dict(n_layers=n_layers, n_heads=q[0], d_model=q[1], head_dim=q[2],
                n_kv_heads=np.shape(flat["transformer/layer_0/attn/kv_einsum/w"])[1],
                mlp_hidden=gating[2], query_pre_attn_scalar=int(q[2]),
                vocab_size=256000 if vocab == 256128 else vocab)
  fields.update(overrides)
  return gemma2_2b(**fields)


def _kaggle_get(flat: dict, key: str):
  for candidate in (key + "/w", key):  # the nested layout drops the MLP's 'w' level
    if candidate in flat:
      return flat[candidate]
  raise KeyError(key)


def load_kaggle(directory: str | os.PathLike, config: Gemma2Config | None = None, *,
                dtype=None, sharding=None) -> tuple[Params, Gemma2Config]:
  directory = Path(directory)
  flat = _flatten_kaggle(_restore_orbax(directory))
  if "params" in {k.split("/")[0] for k in flat}:
    flat = {k[len("params/"):]: v for k, v in flat.items() if k.startswith("params/")}
  if "transformer/embedder/input_embedding" not in flat:
    raise CheckpointError(f"{directory}: tensor transformer/embedder/input_embedding is missing; "
                          f"not a Gemma Flax checkpoint (found {sorted(flat)[:5]} ...)")
  if config is None:
    config = infer_config_from_kaggle(flat)
  sharding = _resolve_sharding(sharding, config)
  c = config
  n_ckpt = 1 + max(int(k.split("/")[1][len("layer_"):]) for k in flat if "/layer_" in k)
  if n_ckpt != c.n_layers:
    raise CheckpointError(f"{directory}: checkpoint has {n_ckpt} layers (transformer/layer_0.."
                          f"{n_ckpt - 1}) but the config expects n_layers={c.n_layers}")
  N, K, H, D, F = c.n_heads, c.n_kv_heads, c.head_dim, c.d_model, c.mlp_hidden

  def take(key: str, shape: tuple[int, ...]) -> np.ndarray:
    try:
      value = flat.pop(key + "/w") if key + "/w" in flat else flat.pop(key)
    except KeyError:
      raise CheckpointError(f"{directory}: tensor {key} is missing (expected shape {shape})") from None
    if tuple(value.shape) != tuple(shape):
      raise CheckpointError(
          f"{directory}: tensor {key} has shape {tuple(value.shape)}, expected {tuple(shape)}")
    return value

  builder = _StackedBuilder(c, dtype or c.param_dtype, sharding)
  embed = flat.pop("transformer/embedder/input_embedding")
  if embed.ndim != 2 or embed.shape[1] != D or embed.shape[0] < c.vocab_size:
    raise CheckpointError(f"{directory}: tensor transformer/embedder/input_embedding has shape "
                          f"{embed.shape}, expected ({c.vocab_size} or more, {D})")
  builder.put("embed", embed[: c.vocab_size])  # drops the 128 padding rows of released checkpoints
  del embed
  builder.put("final_norm", take("transformer/final_norm/scale", (D,)))
  layer = "transformer/layer_{}/"
  for ours, (_, kaggle_name) in NORM_NAMES.items():
    builder.put_layers(ours, lambda i, n=kaggle_name: take(layer.format(i) + n + "/scale", (D,)))
  builder.put_layers("q", lambda i: take(layer.format(i) + "attn/q_einsum", (N, D, H)))
  kv_cache: dict[int, np.ndarray] = {}

  def kv(i, which):
    if i not in kv_cache:
      kv_cache[i] = take(layer.format(i) + "attn/kv_einsum", (2, K, D, H))
    return kv_cache.pop(i) [which] if which == 1 else kv_cache[i][which]

  builder.put_layers("k", lambda i: kv(i, 0))
  builder.put_layers("v", lambda i: kv(i, 1))
  builder.put_layers("o", lambda i: take(layer.format(i) + "attn/attn_vec_einsum", (N, H, D)))
  gating_cache: dict[int, np.ndarray] = {}

  def gating(i, which):
    if i not in gating_cache:
      gating_cache[i] = take(layer.format(i) + "mlp/gating_einsum", (2, D, F))
    return gating_cache.pop(i)[which] if which == 1 else gating_cache[i][which]

  builder.put_layers("gate", lambda i: gating(i, 0))
  builder.put_layers("up", lambda i: gating(i, 1))
  builder.put_layers("down", lambda i: take(layer.format(i) + "mlp/linear", (F, D)))
  return builder.params, config


def save_kaggle(directory: str | os.PathLike, params: Params, config: Gemma2Config,
                pad_vocab_to: int | None = None) -> None:
  """Write params in the released Gemma Flax flat layout (used by tests and converters)."""
  import orbax.checkpoint as ocp
  c = config
  lay = {k: np.asarray(v) for k, v in params["layers"].items()}
  embed = np.asarray(params["embed"])
  if pad_vocab_to is not None and pad_vocab_to > embed.shape[0]:
    embed = np.concatenate([embed, np.zeros((pad_vocab_to - embed.shape[0], c.d_model), embed.dtype)])
  flat: dict[str, dict[str, np.ndarray]] = {
      "transformer/embedder": {"input_embedding": embed},
      "transformer/final_norm": {"scale": np.asarray(params["final_norm"])},
  }
  for i in range(c.n_layers):
    p = f"transformer/layer_{i}/"
    for ours, (_, kaggle_name) in NORM_NAMES.items():
      flat[p + kaggle_name] = {"scale": lay[ours][i]}
    flat[p + "attn/q_einsum"] = {"w": lay["q"][i]}
    flat[p + "attn/kv_einsum"] = {"w": np.stack([lay["k"][i], lay["v"][i]])}
    flat[p + "attn/attn_vec_einsum"] = {"w": lay["o"][i]}
    flat[p + "mlp/gating_einsum"] = {"w": np.stack([lay["gate"][i], lay["up"][i]])}
    flat[p + "mlp/linear"] = {"w": lay["down"][i]}
  with ocp.PyTreeCheckpointer() as ckptr:
    ckptr.save(Path(directory).absolute(), flat)


# ----------------------------------------------------------------------------- our own format

def save_params(directory: str | os.PathLike, params: Params, config: Gemma2Config) -> None:
  """Our orbax format: `params/` (stacked layout) + `xling_config.json`."""
  import orbax.checkpoint as ocp
  directory = Path(directory).absolute()
  directory.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(directory / OUR_PARAMS_DIR, params, force=True)
  (directory / OUR_CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2))


def load_ours(directory: str | os.PathLike, config: Gemma2Config | None = None, *,
              dtype=None, sharding=None) -> tuple[Params, Gemma2Config]:
  import orbax.checkpoint as ocp
  directory = Path(directory).absolute()
  stored = Gemma2Config.from_dict(json.loads((directory / OUR_CONFIG_FILE).read_text()))
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
  """'hf', 'kaggle' or 'xling' for a checkpoint directory; raises for anything else."""
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f"checkpoint path {path} does not exist")
  if path.is_file():
    raise CheckpointError(f"{path}: expected a checkpoint directory (HF: config.json + "
                          "*.safetensors; Kaggle/orbax: an orbax directory)")
  if (path / OUR_CONFIG_FILE).exists():
    return "xling"
  if (path / "model.safetensors.index.json").exists() or any(path.glob("*.safetensors")):
    return "hf"
  if any((path / m).exists() for m in _ORBAX_MARKERS):
    return "kaggle"
  raise CheckpointError(
      f"{path}: not a recognised checkpoint: expected config.json + model.safetensors "
      "(or model-*-of-*.safetensors + model.safetensors.index.json), a Kaggle/orbax directory, "
      f"or a directory written by save_params; found {sorted(p.name for p in path.iterdir())[:10]}")


def load_params(path: str | os.PathLike, config: Gemma2Config | None = None, *,
                dtype=None, sharding=None) -> tuple[Params, Gemma2Config]:
  """Load Gemma-2 params from any supported checkpoint; returns (params, config).

  `config` overrides what the checkpoint says (and is checked against it); `dtype` defaults to
  `config.param_dtype`; `sharding` is one `jax.sharding.Sharding`, a params-shaped pytree of them,
  or a function of the resolved config returning either (see `sharding.config_param_shardings`).
  """
  loader = {"hf": load_hf, "kaggle": load_kaggle, "xling": load_ours}[detect_format(path)]
  params, config = loader(path, config, dtype=dtype, sharding=sharding)
  model_lib.check_params(params, config)
  return params, config
