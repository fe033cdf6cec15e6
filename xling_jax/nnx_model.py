"""A Flax NNX face for the functional model: `Gemma2` / `Gemma3` / `Gemma4` modules over
`model.forward`.

The module holds the parameter pytree of `model.py` as `nnx.Param`s, with the same names and
shapes (`L` layers, `D` d_model, `V` vocab; per-layer weights stacked on a leading `[L]`):

    model.embed        [V, D]
    model.final_norm   [D]
    model.layers[name] [L, ...]   (pre_attn_norm, q, k, v, o, gate, up, down, ...; see layout.py)
    model.groups[group][name] [L_g, ...]   Gemma 4: weights whose shape differs between layers
    model.ple_embed, ...          Gemma 4's other top-level weights, under their pytree names

and the `ModelConfig` as a static attribute. Calling it runs `model.forward` on those arrays:
the functional core stays the implementation (one `lax.scan` over the stacked layers, the
`ProjectHook` seam, the shardings the arrays were loaded with), so the module computes exactly
what `forward(model.params, model.config, ...)` does, eagerly or under `nnx.jit`.

    model = GemmaModel.from_pretrained("path/to/hf_dir")   # a Gemma2 or a Gemma3
    out = nnx.jit(lambda m, t: m(t))(model, tokens)        # out.logits [B, T, V]
"""
from __future__ import annotations

import os

import jax
from flax import nnx

from xling_jax import checkpoints
from xling_jax.model import transformer as model_lib
from xling_jax.model.config import ModelConfig
from xling_jax.model.transformer import ForwardOutput, Params, ProjectHook


class GemmaModel(nnx.Module):
  """A Gemma 2, 3 or 4 language model as an NNX module (see the module docstring).

  `GemmaModel(params, config)` wraps a plain parameter pytree without copying it. The
  constructors `from_pretrained` and `from_config` called on this base class return the
  subclass of the config's family; called on a subclass they insist on its family.
  """

  family: str | None = None  # the ModelConfig.family a subclass accepts; None: any

  def __init__(self, params: Params, config: ModelConfig):
    if self.family is not None and config.family != self.family:
      raise ValueError(f"{type(self).__name__} is a {self.family} model, but the config is "
                       f"family {config.family!r}; use {_FAMILY_CLASS[config.family].__name__} "
                       "or GemmaModel, which picks the class from the config")
    model_lib.check_params(params, config)
    self.config = nnx.static(config)
    for name in model_lib.param_shapes(config):
      if name == "layers":
        self.layers = nnx.Dict({key: nnx.Param(w) for key, w in params["layers"].items()})
      elif name == "groups":
        self.groups = nnx.Dict({group: nnx.Dict({key: nnx.Param(w) for key, w in ws.items()})
                                for group, ws in params["groups"].items()})
      else:
        setattr(self, name, nnx.Param(params[name]))

  @classmethod
  def _class_for(cls, config: ModelConfig) -> type[GemmaModel]:
    # The base class defers to the family's class; a subclass is checked in __init__.
    return _FAMILY_CLASS[config.family] if cls.family is None else cls

  @classmethod
  def from_pretrained(cls, path: str | os.PathLike, *, dtype=None) -> GemmaModel:
    """A checkpoint in any format `checkpoints.load_params` reads (HF directory, Kaggle/orbax,
    GGUF, `save_params` output, `gemma3-270m`); `dtype` casts the weights as there.
    Raises ValueError when called on a subclass whose family the checkpoint is not."""
    params, config = checkpoints.load_params(path, dtype=dtype)
    return cls._class_for(config)(params, config)

  @classmethod
  def from_config(cls, config: ModelConfig, rngs: nnx.Rngs | int = 0) -> GemmaModel:
    """Random weights from `model.init_params`, keyed by `rngs.params()` or by the int seed
    `rngs` (seed s gives `init_params(config, jax.random.PRNGKey(s))`)."""
    key = rngs.params() if isinstance(rngs, nnx.Rngs) else jax.random.PRNGKey(rngs)
    return cls._class_for(config)(model_lib.init_params(config, key), config)

  @property
  def params(self) -> Params:
    """The plain pytree `model.forward` takes: the Params' own arrays (tracers under a
    transform), not copies."""
    params = {}
    for name in model_lib.param_shapes(self.config):
      if name == "layers":
        params[name] = {key: w[...] for key, w in self.layers.items()}
      elif name == "groups":
        params[name] = {group: {key: w[...] for key, w in ws.items()}
                        for group, ws in self.groups.items()}
      else:
        params[name] = getattr(self, name)[...]
    return params

  def __call__(self, tokens: jax.Array, attention_mask: jax.Array | None = None, *,
               return_logits: bool = True, return_residuals: bool = True,
               hook: ProjectHook | None = None) -> ForwardOutput:
    """`model.forward(self.params, self.config, ...)`: tokens [B, T] int, attention_mask
    [B, T] (1 = real token; default all ones) -> ForwardOutput with logits [B, T, V] float32,
    residuals [L, B, T, D] (every block's raw output) and embeddings [B, T, D]. `hook` changes
    the linear maps (e.g. `LoraAdapter.hook()` from lora/nnx_adapter.py)."""
    return model_lib.forward(self.params, self.config, tokens, attention_mask,
                             return_logits=return_logits, return_residuals=return_residuals,
                             hook=hook)


class Gemma2(GemmaModel):
  """Gemma 2: alternating sliding-window and global layers, logit softcaps."""
  family = "gemma2"


class Gemma3(GemmaModel):
  """Gemma 3: five sliding-window layers per global one, qk-norm, no softcaps."""
  family = "gemma3"


class Gemma4(GemmaModel):
  """Gemma 4: global layers with wider heads (fewer KV heads, K = V on the larger models),
  norm scales applied as w, a layer scalar; per-layer embeddings and KV sharing (E2B, E4B),
  routed experts (26B-A4B)."""
  family = "gemma4"


_FAMILY_CLASS: dict[str, type[GemmaModel]] = {"gemma2": Gemma2, "gemma3": Gemma3,
                                              "gemma4": Gemma4}
