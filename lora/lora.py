"""LoRA adapters as plain pytrees: configuration, initialisation, layer masks and merging.

An adapter is

    {"scale": alpha / rank,
     "layers": {module: {"a": [L, in, r], "b": [L, r, out]}}}

`in`/`out` are the module's flattened features (`layout.lora_dims`; HF's `[out, in]` weight
transposed): q in D out N*H, k/v in D out K*H, o in N*H out D, gate/up in D out F, down in F
out D, with head features n-major (index n*H + h) as in HF's q_proj/o_proj; on Gemma 4 also
its per-layer-embedding maps ple_gate (in D out P) and ple_proj (in P out D). The model knows
nothing of adapters: `project_hook(adapter)` is the `model.ProjectHook` that adds
`scale * (x A) B` to each adapted module's `x W` inside the block.

Gemma 4's layers differ in width (global layers' wider heads, KV-shared layers' wider MLP),
so `in`/`out` are the widest layer's: a layer uses the leading rows of A and columns of B that
its own features fill, and the rest stay exactly zero (never read, so never trained); KV-shared
layers have no k, v (their A and B stay zero). Its routed experts take no adapter: PEFT 0.21
reaches them only through `target_parameters` (one fused gate_up update per expert), which
`peft_io` does not read.

Every module keeps all L layers stacked so one `lax.scan` runs the model. Layers outside
`LoraConfig.layers` hold A = B = 0: their LoRA path is exactly zero, their gradients are exactly
zero (dA ~ B, dB ~ A), and `layer_mask` lets the optimiser zero their updates as well, so weight
decay or a restored optimiser state can never move them either.
"""
from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from xling_jax.model import layout
from xling_jax.model.config import ModelConfig
from xling_jax.model.transformer import Params, ProjectHook
from xling_jax.runtime import validate

LORA_MODULES = layout.CORE_LINEAR_MODULES  # the default: attention and MLP, every family
ALL_LORA_MODULES = layout.LINEAR_MODULES  # plus Gemma 4's per-layer-embedding maps

Adapter = dict  # {"scale": float, "layers": {module: {"a", "b"}}}


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """Which weights get a low-rank update, and its size.

  rank: r; alpha: the update is scaled by alpha / r (PEFT's `lora_alpha / r`).
  modules: a subset of q, k, v, o, gate, up, down (and ple_gate, ple_proj on a Gemma 4 with
  per-layer embeddings). layers: block indices, or None for all.
  seed: the PRNG seed of A when `init_adapter` is not given a key.
  """
  rank: int = 8
  alpha: float = 16.0
  modules: tuple[str, ...] = LORA_MODULES
  layers: tuple[int, ...] | None = None
  seed: int = 0

  def __post_init__(self):
    validate.fields(self)
    if self.rank < 1:
      raise ValueError(f"LoraConfig.rank must be >= 1, got {self.rank}")
    if not self.alpha > 0:
      raise ValueError(f"LoraConfig.alpha must be > 0, got {self.alpha}")
    unknown = [m for m in self.modules if m not in ALL_LORA_MODULES]
    if unknown or not self.modules or len(set(self.modules)) != len(self.modules):
      raise ValueError(f"LoraConfig.modules={self.modules!r}: expected a non-empty, duplicate-free "
                       f"subset of {ALL_LORA_MODULES}")
    # Canonical order, so equal subsets give equal (hashable, comparable) configs.
    object.__setattr__(self, "modules", tuple(m for m in ALL_LORA_MODULES if m in self.modules))
    if self.layers is not None:
      if not self.layers or len(set(self.layers)) != len(self.layers):
        raise ValueError(f"LoraConfig.layers={self.layers!r}: expected a non-empty, "
                         "duplicate-free tuple of block indices (or None for all)")
      object.__setattr__(self, "layers", tuple(sorted(int(l) for l in self.layers)))

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def active_layers(self, config: ModelConfig) -> tuple[int, ...]:
    """The adapted block indices, checked against the model's depth."""
    if self.layers is None:
      return tuple(range(config.n_layers))
    bad = [l for l in self.layers if not 0 <= l < config.n_layers]
    if bad:
      raise ValueError(f"LoraConfig.layers {bad} out of range for a {config.n_layers}-layer model")
    return self.layers


def module_dims(config: ModelConfig, module: str, layer: int | None = None) -> tuple[int, int]:
  """(in, out) flattened feature counts of a module's LoRA path on `layer` (None: the widest,
  the adapter's)."""
  return layout.lora_dims(config, module, layer)


def module_layers(config: ModelConfig, lora_config: LoraConfig, module: str) -> tuple[int, ...]:
  """The adapted blocks that have `module` (Gemma 4's KV-shared layers have no k, v)."""
  return tuple(l for l in lora_config.active_layers(config)
               if layout.has_module(config, module, l))


def unadapted_notes(config: ModelConfig, lora_config: LoraConfig) -> list[str]:
  """What a model has that `lora_config` cannot adapt, one sentence each: Gemma 4's routed
  experts (an MoE's gate, up, down are its dense MLP beside them)."""
  if not config.n_experts:
    return []
  mlp = [m for m in ("gate", "up", "down") if m in lora_config.modules]
  return [f"LoRA skips the {config.n_experts} routed experts of every layer (PEFT reaches them "
          "only through target_parameters, which our PEFT export does not write)"
          + (f"; {', '.join(mlp)} adapt the dense MLP beside them" if mlp else "") + "."]


def layer_mask(config: ModelConfig, lora_config: LoraConfig) -> np.ndarray:
  """[L] float32: 1 on adapted blocks, 0 elsewhere."""
  mask = np.zeros(config.n_layers, np.float32)
  mask[list(lora_config.active_layers(config))] = 1.0
  return mask


def init_adapter(config: ModelConfig, lora_config: LoraConfig,
                 key: jax.Array | None = None) -> Adapter:
  """A fresh adapter: A ~ U(-1/sqrt(in), 1/sqrt(in)) on adapted layers (PEFT's
  `kaiming_uniform_(a=sqrt(5))` for an `nn.Linear(in, r)`), B = 0, so it is an exact no-op.
  A and B are float32 whatever the model dtype: the update is small relative to W."""
  if key is None:
    key = jax.random.PRNGKey(lora_config.seed)
  return {"scale": lora_config.scale, "layers": _init_layers(config, lora_config, key)}


def _a_mask(config: ModelConfig, lora_config: LoraConfig, module: str) -> np.ndarray:
  """[L, in, 1]: 1 on the rows of A an adapted layer uses (its own in-features), else 0."""
  mask = np.zeros((config.n_layers, module_dims(config, module)[0], 1), np.float32)
  for layer in module_layers(config, lora_config, module):
    mask[layer, :module_dims(config, module, layer)[0]] = 1.0
  return mask


@partial(jax.jit, static_argnums=(0, 1))
def _init_layers(config: ModelConfig, lora_config: LoraConfig, key: jax.Array) -> dict:
  r, L = lora_config.rank, config.n_layers
  layers = {}
  for module, k in zip(lora_config.modules, jax.random.split(key, len(lora_config.modules))):
    d_in, d_out = module_dims(config, module)
    # PEFT's bound 1/sqrt(in), of each layer's own in-features.
    bound = np.asarray([1.0 / np.sqrt(module_dims(config, module, l)[0]
                                      if layout.has_module(config, module, l) else d_in)
                        for l in range(L)], np.float32)[:, None, None]
    a = jax.random.uniform(k, (L, d_in, r), jnp.float32, -bound, bound)
    a = a * jnp.asarray(_a_mask(config, lora_config, module))
    layers[module] = {"a": a, "b": jnp.zeros((L, r, d_out), jnp.float32)}
  return layers


def check_adapter(adapter: Adapter, config: ModelConfig) -> None:
  """Raise ValueError naming every module whose A/B shapes do not fit `config`."""
  problems = []
  for module, ab in adapter["layers"].items():
    d_in, d_out = module_dims(config, module)
    a, b = ab["a"].shape, ab["b"].shape
    if len(a) != 3 or len(b) != 3 or a[2] != b[1]:
      problems.append(f"{module}: a {a}, b {b} (expected [L, in, r] and [L, r, out])")
    elif a[:2] != (config.n_layers, d_in) or (b[0], b[2]) != (config.n_layers, d_out):
      problems.append(f"{module}: a {a}, b {b}, expected a [{config.n_layers}, {d_in}, r] "
                      f"and b [{config.n_layers}, r, {d_out}]")
  if problems:
    raise ValueError("adapter does not match the model config:\n  " + "\n  ".join(problems))


def _apply(module: str, x: jax.Array, y: jax.Array, layer_ab: dict, scale) -> jax.Array:
  """y + scale * (x A) B for an adapted module, on flattened features; y unchanged otherwise.
  x [B, T, ...], y [B, T, ...]."""
  ab = layer_ab.get(module)
  if ab is None:
    return y
  a, b = ab["a"].astype(x.dtype), ab["b"].astype(x.dtype)
  d_in, d_out = x.size // (x.shape[0] * x.shape[1]), y.size // (y.shape[0] * y.shape[1])
  if (d_in, d_out) != (a.shape[0], b.shape[1]):  # a Gemma 4 layer narrower than the widest
    a, b = a[:d_in], b[:, :d_out]
  # Tokens flattened to one axis: the gradients of A and B then contract a single axis, which
  # XLA's CPU GEMMs read in place; over [B, T] it transposed every layer's [B, T, 2048] MLP
  # cotangents first (a third of a LoRA step on the 2-core CPU).
  delta = (x.reshape(x.shape[0] * x.shape[1], -1) @ a) @ b * jnp.asarray(scale, x.dtype)
  return y + delta.reshape(y.shape)


def project_hook(adapter: Adapter | None) -> ProjectHook | None:
  """The adapter as the model's projection hook: `forward(..., hook=project_hook(adapter))`
  (None for no adapter)."""
  if adapter is None:
    return None
  return ProjectHook(apply=_apply, xs=adapter["layers"], consts=adapter["scale"])


def delta_weight(ab: dict, scale, module: str, config: ModelConfig,
                 layers: tuple[int, ...]) -> jax.Array:
  """scale * A @ B in float32 for `layers` (alike in shape), laid out like the module's
  stacked frozen weight of those layers."""
  d_in, d_out = module_dims(config, module, layers[0])
  idx = np.asarray(layers)
  flat = scale * jnp.einsum("lir,lro->lio", ab["a"][idx, :d_in].astype(jnp.float32),
                            ab["b"][idx, :, :d_out].astype(jnp.float32))  # [n, in, out]
  return layout.linear_from_features(flat, module, config, layers[0])


def merge(params: Params, adapter: Adapter, config: ModelConfig) -> Params:
  """Plain params with W + scale * A @ B folded into every adapted weight (float32 sum, cast
  back to W's dtype); applying the merged params equals applying the adapter."""
  merged = {**params, "layers": dict(params["layers"])}
  if "groups" in params:
    merged["groups"] = {name: dict(group) for name, group in params["groups"].items()}
  for module, ab in adapter["layers"].items():
    for path, layers in layout.stacks(layout.param(module), config):
      w = layout.get_path(params, path)
      delta = delta_weight(ab, adapter["scale"], module, config, layers)
      layout.set_path(merged, path, (w.astype(jnp.float32) + delta).astype(w.dtype))
  return merged
