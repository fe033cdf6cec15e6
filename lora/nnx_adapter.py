"""A LoRA adapter as a Flax NNX module, for training with `nnx.Optimizer` next to
`xling_jax.nnx_model.GemmaModel` (which knows nothing of LoRA: it takes the adapter's `hook()`).

The module holds the plain adapter of `lora.lora` (`r` rank, `L` layers, `in`/`out` the
module's flattened features):

    adapter.layers[module]["a"]  [L, in, r]   nnx.Param, float32
    adapter.layers[module]["b"]  [L, r, out]  nnx.Param, float32
    adapter.scale                alpha / r    static

    lora = LoraAdapter.init(model.config, LoraConfig(rank=8, modules=("q", "v")))
    out = model(tokens, hook=lora.hook())
    optimizer = nnx.Optimizer(lora, tx, wrt=nnx.Param)   # only A and B are trained
"""
from __future__ import annotations

import jax
from flax import nnx

from lora.lora import Adapter, LoraConfig, init_adapter, project_hook
from xling_jax.model.config import ModelConfig
from xling_jax.model.transformer import ProjectHook


class LoraAdapter(nnx.Module):
  """`LoraAdapter(adapter)` wraps a plain adapter pytree ({"scale", "layers"}; e.g. from
  `peft_io.load_peft`) without copying it; `LoraAdapter.init` draws a fresh one."""

  def __init__(self, adapter: Adapter):
    self.scale = nnx.static(float(adapter["scale"]))
    self.layers = nnx.Dict({
        module: nnx.Dict({"a": nnx.Param(ab["a"]), "b": nnx.Param(ab["b"])})
        for module, ab in adapter["layers"].items()})

  @classmethod
  def init(cls, config: ModelConfig, lora_config: LoraConfig,
           key: jax.Array | None = None) -> LoraAdapter:
    """`lora.init_adapter(config, lora_config, key)`: A uniform on the adapted layers, B = 0
    (an exact no-op); key None uses `lora_config.seed`, as the functional trainer does."""
    return cls(init_adapter(config, lora_config, key))

  def to_adapter(self) -> Adapter:
    """The plain adapter pytree of the current values (for `peft_io.save_peft`, `lora.merge`,
    the functional objectives); the Params' own arrays, not copies."""
    return {"scale": self.scale,
            "layers": {module: {"a": ab["a"][...], "b": ab["b"][...]}
                       for module, ab in self.layers.items()}}

  def hook(self) -> ProjectHook:
    """`lora.project_hook` of the current values: `model(tokens, hook=adapter.hook())`."""
    return project_hook(self.to_adapter())
